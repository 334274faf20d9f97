"""Drawing for SynthFaces: one cartoon face per (identity, per-image nuisance), with PIL shapes.

Kept apart from ``synthfaces.py`` so the public API there (traits, captions, data-set layout)
reads on its own. The only randomness here is :func:`sample_nuisance`, which takes its
generator from the caller; drawing itself is a pure function of its arguments.

All lengths in an :class:`~continual_ldu.reference.synthfaces.Identity` are fractions of the
image side; here they become pixels of a canvas drawn at twice the output resolution (the
LANCZOS downsample then anti-aliases PIL's hard-edged shapes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

if TYPE_CHECKING:  # only for annotations: synthfaces imports this module at run time
    from continual_ldu.reference.synthfaces import Identity

__all__ = ["Nuisance", "draw_image", "mix_rgb", "sample_nuisance"]

RGB = tuple[int, int, int]
Point = tuple[float, float]

# The face is drawn on a canvas this much larger than the image, so rotating, shrinking and
# shifting it never pulls an undrawn edge (below the shoulders, beside long hair) into view.
_MARGIN = 1.5
_SUPERSAMPLE = 2
_INK: RGB = (38, 28, 26)  # lash lines, pupils, glasses frames
_SCLERA: RGB = (246, 244, 238)


@dataclass(frozen=True)
class Nuisance:
    """Per-image variation that must not identify anyone: pose, expression, light, background."""

    shift: tuple[float, float]  # fraction of the image side, +-0.05
    scale: float  # 0.92-1.08
    rotation: float  # degrees, +-10
    feature_offset: float  # sideways shift of eyes/nose/mouth (fraction): a hint of head turn
    mouth_curve: float  # +1 smile .. -1 frown
    blink: bool
    gaze: float  # sideways iris offset, as a fraction of the eye radius
    gain: float  # overall brightness, 0.8-1.2
    light_angle: float  # radians: the direction in which the light gradient brightens
    light_slope: float  # brightness changes by +-this from one side of the image to the other
    background: tuple[RGB, RGB]  # the two ends of the background gradient
    background_angle: float  # radians
    shirt: RGB
    texture_seed: int  # seeds the blurred background noise


def _uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def _random_rgb(rng: np.random.Generator) -> RGB:
    r, g, b = rng.integers(20, 236, size=3)
    return int(r), int(g), int(b)


def sample_nuisance(rng: np.random.Generator) -> Nuisance:
    """Draw one image's nuisance; ranges as measured workable in ``shared/SYNTHFACES.md``."""
    return Nuisance(
        shift=(_uniform(rng, -0.05, 0.05), _uniform(rng, -0.05, 0.05)),
        scale=_uniform(rng, 0.92, 1.08),
        rotation=_uniform(rng, -10.0, 10.0),
        feature_offset=_uniform(rng, -0.04, 0.04),
        mouth_curve=_uniform(rng, -1.0, 1.0),
        blink=bool(rng.random() < 0.08),
        gaze=_uniform(rng, -0.25, 0.25),
        gain=_uniform(rng, 0.8, 1.2),
        light_angle=_uniform(rng, 0.0, 2 * math.pi),
        light_slope=_uniform(rng, 0.0, 0.25),
        background=(_random_rgb(rng), _random_rgb(rng)),
        background_angle=_uniform(rng, 0.0, 2 * math.pi),
        shirt=_random_rgb(rng),
        texture_seed=int(rng.integers(2**31)),
    )


# --- colours and masks ---------------------------------------------------------------------


def _shade(rgb: RGB, factor: float) -> RGB:
    r, g, b = (min(255, max(0, round(c * factor))) for c in rgb)
    return r, g, b


def mix_rgb(a: RGB, b: RGB, t: float) -> RGB:
    """``a`` moved a fraction ``t`` of the way towards ``b``."""
    r, g, bl = (round(x + (y - x) * t) for x, y in zip(a, b, strict=True))
    return r, g, bl


def _blank_mask(size: int) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    mask = Image.new("L", (size, size), 0)
    return mask, ImageDraw.Draw(mask)


def _intersect(*masks: Image.Image) -> Image.Image:
    out = masks[0]
    for mask in masks[1:]:
        out = ImageChops.darker(out, mask)  # pixel-wise min of 0/255 masks is their intersection
    return out


def _box(x: float, y: float, rx: float, ry: float) -> tuple[float, float, float, float]:
    return x - rx, y - ry, x + rx, y + ry


# --- layout ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    """Canvas pixel positions of one image's features (identity traits + feature offset)."""

    side: float  # the output image side, in canvas pixels
    cx: float  # face centre
    cy: float
    a: float  # face half-width / half-height
    b: float
    fx: float  # the feature midline: cx moved by the sideways feature offset
    eye_y: float
    eye_dx: float
    eye_r: float
    nose_tip: float
    mouth_y: float

    def px(self, fraction: float) -> float:
        return fraction * self.side


def _layout(ident: Identity, nuis: Nuisance, canvas: int, side: int) -> _Layout:
    cx, cy = canvas / 2, canvas / 2 + 0.03 * side  # a little low: the hair needs room above
    b = ident.face_half_height * side
    eye_y = cy - 0.12 * b
    nose_tip = eye_y + ident.nose_length * side
    return _Layout(
        side=side,
        cx=cx,
        cy=cy,
        a=ident.face_half_width * side,
        b=b,
        fx=cx + nuis.feature_offset * side,
        eye_y=eye_y,
        eye_dx=ident.eye_spacing * side,
        eye_r=ident.eye_radius * side,
        nose_tip=nose_tip,
        mouth_y=nose_tip + ident.mouth_height * side,
    )


# --- face, ears, neck, shoulders -------------------------------------------------------------


def _face_outline(ident: Identity, lay: _Layout, n: int = 96) -> list[Point]:
    """Ellipse whose lower half blends towards a pointed chin as ``jaw`` goes 0 -> 1."""
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    s, c = np.sin(t), np.cos(t)
    lower = np.clip(s, 0.0, 1.0)
    # 1 - s**1.5 meets the chin at a finite slope (a point); sqrt(1 - s^2) is the round ellipse.
    half = (1 - ident.jaw) * np.sqrt(1 - lower**2) + ident.jaw * (1 - lower**1.5)
    width = np.where(s > 0, np.sign(c) * half, c)
    return list(zip((lay.cx + lay.a * width).tolist(), (lay.cy + lay.b * s).tolist(), strict=True))


def _draw_ears(draw: ImageDraw.ImageDraw, ident: Identity, lay: _Layout) -> None:
    rx, ry = lay.px(0.035 * ident.ear_size), lay.px(0.06 * ident.ear_size)
    for sign in (-1, 1):
        x = lay.cx + sign * lay.a * 0.97
        draw.ellipse(_box(x, lay.eye_y + lay.px(0.03), rx, ry), fill=_shade(ident.skin_rgb, 0.93))
        inner = _box(x + sign * rx * 0.15, lay.eye_y + lay.px(0.03), rx * 0.45, ry * 0.6)
        draw.ellipse(inner, fill=_shade(ident.skin_rgb, 0.78))


def _draw_neck_and_shoulders(
    draw: ImageDraw.ImageDraw, ident: Identity, lay: _Layout, shirt: RGB
) -> None:
    # The neck sits in the chin's shadow; the shoulders' top edge reads as a crew neckline.
    half = 0.5 * lay.a
    draw.rectangle(
        (lay.cx - half, lay.cy, lay.cx + half, lay.cy + lay.b + lay.px(0.2)),
        fill=_shade(ident.skin_rgb, 0.82),
    )
    top = lay.cy + lay.b + lay.px(0.05)
    draw.ellipse((lay.cx - lay.px(0.62), top, lay.cx + lay.px(0.62), top + lay.px(0.7)), fill=shirt)


# --- hair ------------------------------------------------------------------------------------


def _hair_region(ident: Identity, lay: _Layout, canvas: int) -> Image.Image:
    """Everything the hair covers (behind and in front of the face), as a 0/255 mask."""
    mask, draw = _blank_mask(canvas)
    if ident.hair_style == "bald":
        return mask
    vol = ident.hair_volume
    cap_y, cap_h = lay.cy - 0.12 * lay.b, lay.b * (0.98 + 0.14 * vol)
    draw.ellipse(_box(lay.cx, cap_y, lay.a * (1.06 + 0.22 * vol), cap_h), fill=255)
    if ident.hair_style in ("short", "bun"):  # cut the cap off above the ears
        draw.rectangle((0, lay.cy - 0.2 * lay.b, canvas, canvas), fill=0)
    if ident.hair_style == "bun":
        r = lay.px(0.09 * (0.8 + 0.5 * vol))
        draw.ellipse(_box(lay.cx, cap_y - cap_h + 0.3 * r, r, r), fill=255)
    if ident.hair_style in ("bob", "long"):
        half = lay.a * ((1.1 + 0.25 * vol) if ident.hair_style == "bob" else (1.16 + 0.3 * vol))
        bottom = lay.cy + (0.55 * lay.b if ident.hair_style == "bob" else lay.b + lay.px(0.45))
        draw.rounded_rectangle(
            (lay.cx - half, cap_y, lay.cx + half, bottom), radius=lay.px(0.06), fill=255
        )
    return mask


def _above_hairline(ident: Identity, lay: _Layout, canvas: int) -> Image.Image:
    """Mask of the canvas above the hairline: lower in the middle with a fringe, and at the
    temples always, so the hair frames the forehead instead of sitting on it like a cap."""
    mask, draw = _blank_mask(canvas)
    xs = np.linspace(lay.cx - 1.2 * lay.a, lay.cx + 1.2 * lay.a, 33)
    top = lay.cy - lay.b * (0.70 - 0.28 * ident.fringe)
    ys = top + 0.3 * lay.b * ((xs - lay.cx) / lay.a) ** 2
    points = list(zip(xs.tolist(), ys.tolist(), strict=True))
    draw.polygon([(xs[0], 0.0), *points, (xs[-1], 0.0)], fill=255)
    return mask


def _paint(img: Image.Image, rgb: RGB, mask: Image.Image) -> None:
    img.paste(rgb, (0, 0, *mask.size), mask)


def _paint_hair(img: Image.Image, rgb: RGB, region: Image.Image, lay: _Layout) -> None:
    """Fill ``region`` with ``rgb`` plus darker arcs, so hair reads as hair, not a flat shape."""
    _paint(img, rgb, region)
    strands, draw = _blank_mask(region.size[0])
    width = max(1, round(lay.px(0.007)))
    # A fan of strands combed down from the crown; clipped to the region, they never cross.
    crown = (lay.cx, lay.cy - 1.3 * lay.b)
    reach = 4 * lay.b
    for angle in np.linspace(math.radians(8), math.radians(172), 27):
        end = (crown[0] + reach * math.cos(angle), crown[1] + reach * math.sin(angle))
        draw.line([crown, end], fill=255, width=width)
    _paint(img, _shade(rgb, 0.82), _intersect(strands, region))


# --- facial features -------------------------------------------------------------------------


def _draw_beard(img: Image.Image, ident: Identity, lay: _Layout, face: Image.Image) -> None:
    mask, draw = _blank_mask(face.size[0])
    xs = np.linspace(lay.cx - 1.1 * lay.a, lay.cx + 1.1 * lay.a, 33)
    # From just under the nose, rising towards the ears into sideburns.
    ys = lay.nose_tip + lay.px(0.012) - 0.45 * lay.b * ((xs - lay.cx) / lay.a) ** 2
    points = list(zip(xs.tolist(), ys.tolist(), strict=True))
    draw.polygon([*points, (xs[-1], face.size[1]), (xs[0], face.size[1])], fill=255)
    region = _intersect(mask, face)
    _paint_hair(img, _shade(ident.hair_rgb, 0.9), region, lay)


def _draw_nose(draw: ImageDraw.ImageDraw, ident: Identity, lay: _Layout, shift: float) -> None:
    # The nose sticks out, so a head turn moves it further sideways than the eyes.
    x, w, tip = lay.fx + 0.4 * shift * lay.side, ident.nose_width * lay.side, lay.nose_tip
    top = lay.eye_y + 0.3 * ident.nose_length * lay.side
    draw.polygon(
        [(x - 0.15 * w, top), (x - w, tip), (x + w, tip), (x + 0.15 * w, top)],
        fill=_shade(ident.skin_rgb, 0.9),
    )
    for sign in (-1, 1):
        draw.ellipse(
            _box(x + sign * 0.45 * w, tip - 0.12 * w, 0.28 * w, 0.18 * w),
            fill=_shade(ident.skin_rgb, 0.55),
        )


def _draw_eye(img: Image.Image, ident: Identity, lay: _Layout, x: float, nuis: Nuisance) -> None:
    r, ry, y = lay.eye_r, lay.eye_r * ident.eye_aspect, lay.eye_y
    draw = ImageDraw.Draw(img)
    lash = max(1, round(lay.px(0.009)))
    if nuis.blink:
        draw.arc(_box(x, y - 0.3 * ry, r, ry), 20, 160, fill=_INK, width=lash)
        return
    draw.ellipse(_box(x, y, r, ry), fill=_SCLERA)
    sclera, sdraw = _blank_mask(img.size[0])
    sdraw.ellipse(_box(x, y, r, ry), fill=255)
    iris, idraw = _blank_mask(img.size[0])
    ix, ri = x + nuis.gaze * r, 0.62 * r
    idraw.ellipse(_box(ix, y, ri, ri), fill=255)
    _paint(img, ident.eye_rgb, _intersect(iris, sclera))  # the lids hide the iris's edges
    draw.ellipse(_box(ix, y, 0.45 * ri, 0.45 * ri), fill=_INK)
    draw.ellipse(_box(ix - 0.3 * ri, y - 0.3 * ri, 0.15 * ri, 0.15 * ri), fill=_SCLERA)
    draw.arc(_box(x, y, r, ry), 190, 350, fill=_INK, width=lash)


def _draw_brows(draw: ImageDraw.ImageDraw, ident: Identity, lay: _Layout) -> None:
    # Brow colour follows the hair, darkened so blonde or white brows still show on pale skin.
    colour = mix_rgb(ident.hair_rgb, _INK, 0.35)
    half, thick = ident.brow_length * lay.side / 2, ident.brow_thickness * lay.side
    y = lay.eye_y - lay.eye_r * ident.eye_aspect - ident.brow_gap * lay.side
    for sign in (-1, 1):
        x = lay.fx + sign * lay.eye_dx
        inner, outer = x - sign * half, x + sign * half
        # Positive slope lowers the inner end (a stern look); the middle arches up a little.
        y_in, y_out, y_mid = y + ident.brow_slope * half, y - ident.brow_slope * half, y - thick
        draw.polygon(
            [
                (inner, y_in - thick),
                (x, y_mid - thick),
                (outer, y_out - 0.5 * thick),
                (outer, y_out + 0.2 * thick),
                (x, y_mid),
                (inner, y_in),
            ],
            fill=colour,
        )


def _draw_mouth(draw: ImageDraw.ImageDraw, ident: Identity, lay: _Layout, curve: float) -> None:
    half, lip = ident.mouth_width * lay.side, ident.lip_thickness * lay.side
    u = np.linspace(-1.0, 1.0, 21)
    xs = lay.fx + half * u
    # Centre line: a smile lowers the middle relative to the corners, a frown raises it.
    mid = lay.mouth_y + 0.3 * half * curve * (1 - u**2)
    bulge = np.sqrt(1 - u**2)
    upper = list(zip(xs.tolist(), (mid - 0.8 * lip * bulge).tolist(), strict=True))
    lower = list(zip(xs.tolist(), (mid + 1.1 * lip * bulge).tolist(), strict=True))
    draw.polygon(upper + lower[::-1], fill=ident.lip_rgb)
    line = list(zip(xs.tolist(), mid.tolist(), strict=True))
    draw.line(line, fill=_shade(ident.lip_rgb, 0.5), width=max(1, round(lay.px(0.007))))


def _draw_mole(draw: ImageDraw.ImageDraw, ident: Identity, lay: _Layout) -> None:
    x, y, r = lay.fx + ident.mole_x * lay.a, lay.cy + ident.mole_y * lay.b, lay.px(0.011)
    draw.ellipse(_box(x, y, r, r), fill=mix_rgb(ident.skin_rgb, (60, 35, 25), 0.75))


def _draw_glasses(draw: ImageDraw.ImageDraw, lay: _Layout) -> None:
    rim, width = max(1.6 * lay.eye_r, lay.px(0.06)), max(1, round(lay.px(0.012)))
    for sign in (-1, 1):
        x = lay.fx + sign * lay.eye_dx
        draw.ellipse(_box(x, lay.eye_y, rim, 0.85 * rim), outline=_INK, width=width)
        draw.line(
            [
                (x + sign * rim, lay.eye_y - 0.2 * rim),
                (lay.cx + sign * 0.98 * lay.a, lay.eye_y - 0.3 * rim),
            ],
            fill=_INK,
            width=width,
        )
    bridge_y = lay.eye_y - 0.25 * rim
    draw.line(
        [(lay.fx - lay.eye_dx + rim, bridge_y), (lay.fx + lay.eye_dx - rim, bridge_y)],
        fill=_INK,
        width=width,
    )


# --- composition -----------------------------------------------------------------------------


def _background(nuis: Nuisance, size: int) -> Image.Image:
    """Two-colour linear gradient plus blurred noise, so background is never a shortcut."""
    grid = (np.arange(size) + 0.5) / size - 0.5
    proj = grid[None, :] * math.cos(nuis.background_angle) + grid[:, None] * math.sin(
        nuis.background_angle
    )
    t = ((proj - proj.min()) / np.ptp(proj))[..., None]
    c0, c1 = (np.asarray(c, dtype=np.float32) for c in nuis.background)
    rng = np.random.default_rng(nuis.texture_seed)
    coarse = rng.normal(128.0, 40.0, size=(size // 8, size // 8, 3)).clip(0, 255)
    noise = Image.fromarray(coarse.astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
    noise = noise.filter(ImageFilter.GaussianBlur(size / 64))
    pixels = c0 * (1 - t) + c1 * t + 0.6 * (np.asarray(noise, dtype=np.float32) - 128.0)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def _draw_face(img: Image.Image, ident: Identity, lay: _Layout, nuis: Nuisance) -> None:
    """Paint the head back to front onto ``img`` (the square canvas)."""
    canvas, draw = img.size[0], ImageDraw.Draw(img)
    hair = _hair_region(ident, lay, canvas)
    _draw_ears(draw, ident, lay)
    _paint_hair(img, ident.hair_rgb, hair, lay)  # behind the head, framing it
    _draw_neck_and_shoulders(draw, ident, lay, nuis.shirt)
    face, face_draw = _blank_mask(canvas)
    face_draw.polygon(_face_outline(ident, lay), fill=255)
    _paint(img, ident.skin_rgb, face)
    if ident.beard:
        _draw_beard(img, ident, lay, face)
    if ident.mole:
        _draw_mole(draw, ident, lay)
    _draw_nose(draw, ident, lay, nuis.feature_offset)
    _draw_mouth(draw, ident, lay, nuis.mouth_curve)
    for sign in (-1, 1):
        _draw_eye(img, ident, lay, lay.fx + sign * lay.eye_dx, nuis)
    _draw_brows(draw, ident, lay)
    front = _intersect(hair, face, _above_hairline(ident, lay, canvas))
    _paint_hair(img, ident.hair_rgb, front, lay)
    if ident.glasses:
        _draw_glasses(draw, lay)


def _pose(canvas: Image.Image, nuis: Nuisance, side: int) -> Image.Image:
    """Crop the canvas to the image, shifted, scaled and rotated about the image centre."""
    theta, s = math.radians(nuis.rotation), nuis.scale
    cos, sin = math.cos(theta) / s, math.sin(theta) / s
    ox, oy = side / 2 + nuis.shift[0] * side, side / 2 + nuis.shift[1] * side
    mid = canvas.size[0] / 2
    # PIL's AFFINE maps each output pixel back to the canvas: in = mid + R^-1 (out - o) / s.
    coeffs = (cos, -sin, mid - cos * ox + sin * oy, sin, cos, mid - sin * ox - cos * oy)
    return canvas.transform(
        (side, side), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BICUBIC
    )


def _light(img: Image.Image, nuis: Nuisance) -> Image.Image:
    """Overall gain times a linear gradient reaching +-light_slope at the image's far sides."""
    size = img.size[0]
    grid = (np.arange(size) + 0.5) / size - 0.5
    cos, sin = math.cos(nuis.light_angle), math.sin(nuis.light_angle)
    proj = (grid[None, :] * cos + grid[:, None] * sin) * 2 / (abs(cos) + abs(sin))
    factor = (nuis.gain * (1 + nuis.light_slope * proj))[..., None]
    return Image.fromarray(
        (np.asarray(img, dtype=np.float32) * factor).clip(0, 255).astype(np.uint8)
    )


def draw_image(ident: Identity, nuis: Nuisance, resolution: int) -> Image.Image:
    """The RGB ``resolution`` x ``resolution`` image of ``ident`` under ``nuis``."""
    side = resolution * _SUPERSAMPLE
    canvas_size = round(side * _MARGIN)
    canvas = _background(nuis, canvas_size)
    _draw_face(canvas, ident, _layout(ident, nuis, canvas_size, side), nuis)
    image = _pose(canvas, nuis, side).resize((resolution, resolution), Image.Resampling.LANCZOS)
    return _light(image, nuis)
