"""SynthFaces: procedural cartoon identities, an offline world in which identity can be learned.

A personalization attacker (DreamBooth and friends) learns *a person* from a few photos. To test
protections against it without real faces or downloads we need a world with the same structure:
many identities, each with stable traits (face shape, skin, eyes, hair, glasses, ...) seen under
per-image nuisance (pose, expression, light, background). The feasibility study behind this
(``shared/SYNTHFACES.md``) measured that a tiny Stable-Diffusion-shaped model pretrained on
these faces makes a new identity recognisable after personalizing on 4 images.

Everything is a pure function of the seed: identity ``i``'s traits come from ``(seed, i)``, its
image ``k`` from ``(seed, i, k)``, and training captions from their own stream, so any single
image can be regenerated without generating those before it.

Identities ``0 .. num_pretrain_identities - 1`` are for pretraining the reference model
(:func:`iter_pretraining`); the held-out ones follow them (:func:`write_heldout_concepts`), so no
held-out identity is ever seen in pretraining.

Run ``python -m continual_ldu.reference.synthfaces OUT_DIR [--resolution 64] [--heldout 10]`` to
write held-out concepts and a contact sheet to look at.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from continual_ldu.config import ConfigError
from continual_ldu.data.images import save_png
from continual_ldu.reference.synthfaces_draw import draw_image, mix_rgb, sample_nuisance

__all__ = [
    "CAPTION_MIX",
    "EYE_COLOURS",
    "GENERIC_CAPTION",
    "HAIR_COLOURS",
    "HAIR_STYLES",
    "SET_NAMES",
    "SKIN_TONES",
    "Identity",
    "SynthFacesConfig",
    "attributes",
    "caption",
    "contact_sheet",
    "heldout_identity_index",
    "heldout_images",
    "iter_pretraining",
    "main",
    "make_identity",
    "render",
    "training_caption",
    "write_heldout_concepts",
]

RGB = tuple[int, int, int]

# Named anchors: the name goes into captions, the colour (plus jitter) onto the face. Names are
# distinct within a palette so a caption phrase ("red hair", "grey eyes") names one anchor.
SKIN_TONES: dict[str, RGB] = {
    "pale": (250, 222, 204),
    "fair": (238, 196, 164),
    "medium": (219, 168, 122),
    "olive": (190, 145, 98),
    "tan": (156, 106, 72),
    "dark": (96, 62, 44),
}
EYE_COLOURS: dict[str, RGB] = {
    "brown": (105, 62, 30),
    "blue": (58, 112, 205),
    "green": (58, 145, 72),
    "grey": (132, 142, 152),
}
HAIR_COLOURS: dict[str, RGB] = {
    "black": (28, 24, 24),
    "brown": (100, 64, 36),
    "blonde": (228, 196, 118),
    "red": (196, 78, 36),
    "auburn": (122, 46, 30),
    "grey": (152, 152, 150),
    "white": (236, 234, 228),
    "pink": (232, 120, 172),
}
# Style -> probability; about 10% bald, as in the study.
HAIR_STYLES: dict[str, float] = {"short": 0.3, "long": 0.25, "bob": 0.2, "bun": 0.15, "bald": 0.1}
_HAIR_PHRASES = {
    "short": "short {} hair",
    "long": "long {} hair",
    "bob": "bob cut {} hair",
    "bun": "{} hair in a bun",
}
_LIP_RED: RGB = (196, 72, 86)

# Independent random streams per purpose: a change to one never shifts the numbers of another.
_STREAM_IDENTITY, _STREAM_IMAGE, _STREAM_CAPTION = 1, 2, 3

GENERIC_CAPTION = "a photo of a person"
# Training caption mix: full caption, attribute subset, generic, empty (for classifier-free
# guidance). Cumulative thresholds on one uniform draw.
CAPTION_MIX = {"full": 0.65, "subset": 0.20, "generic": 0.05, "empty": 0.10}


@dataclass
class SynthFacesConfig:
    """How much of the world to generate; defaults are the splits the study found workable."""

    seed: int = 0
    resolution: int = 64  # 128 works too; faces are drawn at 2x and downsampled
    num_pretrain_identities: int = 300
    images_per_pretrain_identity: int = 24
    num_heldout_identities: int = 50
    images_per_set: int = 4  # per set_A / set_B / set_C of each held-out identity

    def validate(self) -> list[str]:
        errors = []
        if self.seed < 0:
            errors.append(f"seed must be >= 0 (numpy seeds are non-negative), got {self.seed}")
        if self.resolution < 32 or self.resolution % 8:
            errors.append(f"resolution must be a multiple of 8 and >= 32, got {self.resolution}")
        for name in (
            "num_pretrain_identities",
            "images_per_pretrain_identity",
            "num_heldout_identities",
            "images_per_set",
        ):
            if getattr(self, name) < 1:
                errors.append(f"{name} must be >= 1, got {getattr(self, name)}")
        return errors

    def check(self) -> SynthFacesConfig:
        """Raise :class:`ConfigError` listing every problem; return ``self`` when valid."""
        errors = self.validate()
        if errors:
            raise ConfigError(errors)
        return self


@dataclass(frozen=True)
class Identity:
    """The stable traits of one person; lengths are fractions of the image side."""

    index: int
    face_half_width: float  # 0.26-0.36
    face_half_height: float  # 0.34-0.42
    jaw: float  # 0 round .. 1 pointed chin
    skin_tone: str  # a SKIN_TONES name
    skin_rgb: RGB  # its anchor plus jitter
    eye_colour: str  # an EYE_COLOURS name
    eye_rgb: RGB
    eye_radius: float  # 0.030-0.055
    eye_spacing: float  # half the distance between the eyes, 0.09-0.15
    eye_aspect: float  # eye height / width, 0.55-1.0
    brow_thickness: float
    brow_slope: float  # > 0 lowers the inner ends
    brow_gap: float  # above the eye
    brow_length: float
    nose_length: float  # eye line to nose tip
    nose_width: float  # half-width at the nostrils
    mouth_width: float  # half-width
    mouth_height: float  # nose tip to the line between the lips
    lip_thickness: float
    lip_rgb: RGB
    hair_style: str  # a HAIR_STYLES name
    hair_colour: str  # a HAIR_COLOURS name (also the brows' and beard's colour when bald)
    hair_rgb: RGB
    hair_volume: float  # 0-1: how far the hair stands out from the head
    fringe: float  # 0 high forehead .. 1 fringe down towards the brows
    glasses: bool  # p = 0.3
    beard: bool  # p = 0.2
    mole: bool  # p = 0.35
    mole_x: float  # position, in face half-width / half-height units from the face centre
    mole_y: float
    ear_size: float  # relative, 0.8-1.25


def _stream(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def _jitter(rng: np.random.Generator, anchor: RGB, spread: float) -> RGB:
    r, g, b = (np.asarray(anchor) + rng.uniform(-spread, spread, size=3)).clip(0, 255).round()
    return int(r), int(g), int(b)


def _pick(rng: np.random.Generator, palette: dict[str, RGB], spread: float) -> tuple[str, RGB]:
    name = str(rng.choice(list(palette)))
    return name, _jitter(rng, palette[name], spread)


def _u(rng: np.random.Generator, low: float, high: float) -> float:
    return float(rng.uniform(low, high))


def _shape_traits(rng: np.random.Generator) -> dict[str, float]:
    """Face, eye, brow, nose and mouth geometry (every draw made unconditionally)."""
    return {
        "face_half_width": _u(rng, 0.26, 0.36),
        "face_half_height": _u(rng, 0.34, 0.42),
        "jaw": _u(rng, 0.0, 1.0),
        "eye_radius": _u(rng, 0.030, 0.055),
        "eye_spacing": _u(rng, 0.09, 0.15),
        "eye_aspect": _u(rng, 0.55, 1.0),
        "brow_thickness": _u(rng, 0.010, 0.022),
        "brow_slope": _u(rng, -0.3, 0.3),
        "brow_gap": _u(rng, 0.015, 0.04),
        "brow_length": _u(rng, 0.07, 0.12),
        "nose_length": _u(rng, 0.10, 0.16),
        "nose_width": _u(rng, 0.025, 0.05),
        "mouth_width": _u(rng, 0.06, 0.11),
        "mouth_height": _u(rng, 0.045, 0.075),
        "lip_thickness": _u(rng, 0.010, 0.024),
        "ear_size": _u(rng, 0.8, 1.25),
    }


def _colour_traits(rng: np.random.Generator) -> dict[str, Any]:
    skin_tone, skin_rgb = _pick(rng, SKIN_TONES, 10)
    eye_colour, eye_rgb = _pick(rng, EYE_COLOURS, 18)
    hair_colour, hair_rgb = _pick(rng, HAIR_COLOURS, 14)
    styles = list(HAIR_STYLES)
    hair_style = styles[int(rng.choice(len(styles), p=list(HAIR_STYLES.values())))]
    # Lips: the skin tinted red, by an amount that varies between people.
    lip_rgb = _jitter(rng, mix_rgb(skin_rgb, _LIP_RED, _u(rng, 0.3, 0.6)), 8)
    return {
        "skin_tone": skin_tone,
        "skin_rgb": skin_rgb,
        "eye_colour": eye_colour,
        "eye_rgb": eye_rgb,
        "hair_colour": hair_colour,
        "hair_rgb": hair_rgb,
        "hair_style": hair_style,
        "lip_rgb": lip_rgb,
        "hair_volume": _u(rng, 0.0, 1.0),
        "fringe": _u(rng, 0.0, 1.0),
    }


def _accessory_traits(rng: np.random.Generator) -> dict[str, Any]:
    side = 1.0 if rng.random() < 0.5 else -1.0
    return {
        "glasses": bool(rng.random() < 0.3),
        "beard": bool(rng.random() < 0.2),
        "mole": bool(rng.random() < 0.35),
        # On a cheek, clear of the nose: |x| 0.35-0.7 face half-widths.
        "mole_x": side * _u(rng, 0.35, 0.7),
        "mole_y": _u(rng, -0.05, 0.45),
    }


def make_identity(seed: int, index: int) -> Identity:
    """Identity ``index`` of the world with ``seed``: the same traits on every call."""
    rng = _stream(seed, _STREAM_IDENTITY, index)
    return Identity(
        index=index, **_shape_traits(rng), **_colour_traits(rng), **_accessory_traits(rng)
    )


def render(
    identity: Identity, image_index: int, resolution: int = 64, seed: int = 0
) -> Image.Image:
    """Image ``image_index`` of ``identity``: its traits under that image's own nuisance."""
    nuisance = sample_nuisance(_stream(seed, _STREAM_IMAGE, identity.index, image_index))
    return draw_image(identity, nuisance, resolution)


# --- captions --------------------------------------------------------------------------------


def attributes(identity: Identity) -> list[str]:
    """The caption phrases of ``identity``'s nameable traits, in canonical order."""
    if identity.hair_style == "bald":
        hair = "a bald head"  # no hair colour: it would name something the image cannot show
    else:
        hair = _HAIR_PHRASES[identity.hair_style].format(identity.hair_colour)
    phrases = [hair, f"{identity.eye_colour} eyes"]
    phrases += ["glasses"] * identity.glasses + ["a beard"] * identity.beard
    return [*phrases, f"{identity.skin_tone} skin"]


def _sentence(phrases: Sequence[str]) -> str:
    listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"{GENERIC_CAPTION} with {listed}"


def caption(identity: Identity, rng: np.random.Generator | None = None) -> str:
    """Full caption, e.g. "a photo of a person with bob cut red hair, green eyes, glasses and
    dark skin". With ``rng`` the phrase order is shuffled (so a text encoder cannot lean on
    positions); without it the order is canonical, as in held-out ``caption.txt`` files."""
    phrases = attributes(identity)
    if rng is not None:
        phrases = [phrases[i] for i in rng.permutation(len(phrases))]
    return _sentence(phrases)


def training_caption(identity: Identity, rng: np.random.Generator) -> str:
    """One pretraining caption, drawn from the mix in :data:`CAPTION_MIX`: the full caption, a
    random non-empty proper subset of its phrases, the generic caption, or "" (which teaches the
    unconditional prediction that classifier-free guidance needs)."""
    draw = rng.random()
    if draw < CAPTION_MIX["full"]:
        return caption(identity, rng)
    if draw < CAPTION_MIX["full"] + CAPTION_MIX["subset"]:
        phrases = attributes(identity)  # always >= 3 phrases: hair, eyes, skin
        keep = rng.permutation(len(phrases))[: int(rng.integers(1, len(phrases)))]
        return _sentence([phrases[i] for i in keep])
    if draw < 1.0 - CAPTION_MIX["empty"]:
        return GENERIC_CAPTION
    return ""


# --- data sets -------------------------------------------------------------------------------


def heldout_identity_index(cfg: SynthFacesConfig, heldout: int) -> int:
    """World index of held-out identity ``heldout``: after all pretraining identities."""
    return cfg.num_pretrain_identities + heldout


def iter_pretraining(cfg: SynthFacesConfig) -> Iterator[tuple[Image.Image, str, int]]:
    """Yield ``(image, training caption, identity index)`` for every pretraining image,
    identity by identity."""
    cfg.check()
    for index in range(cfg.num_pretrain_identities):
        identity = make_identity(cfg.seed, index)
        for image_index in range(cfg.images_per_pretrain_identity):
            rng = _stream(cfg.seed, _STREAM_CAPTION, index, image_index)
            image = render(identity, image_index, cfg.resolution, cfg.seed)
            yield image, training_caption(identity, rng), index


SET_NAMES = ("set_A", "set_B", "set_C")


def heldout_images(cfg: SynthFacesConfig, heldout: int) -> dict[str, list[Image.Image]]:
    """The images of held-out identity ``heldout`` per set; the sets use disjoint image
    indices (set_A 0..n-1, set_B n..2n-1, set_C 2n..3n-1 for n = images_per_set)."""
    identity = make_identity(cfg.seed, heldout_identity_index(cfg, heldout))
    n = cfg.images_per_set
    return {
        name: [render(identity, k, cfg.resolution, cfg.seed) for k in range(s * n, (s + 1) * n)]
        for s, name in enumerate(SET_NAMES)
    }


def write_heldout_concepts(cfg: SynthFacesConfig, folder: str | Path) -> list[Path]:
    """Write every held-out identity as an evaluation concept and return the concept folders:
    ``folder/id_XXX/set_{A,B,C}/img_KKK.png`` (KKK = image index) and ``folder/id_XXX/caption.txt``
    holding the full canonical caption. XXX counts held-out identities from 000."""
    cfg.check()
    concepts = []
    for heldout in range(cfg.num_heldout_identities):
        concept = Path(folder) / f"id_{heldout:03d}"
        for s, (name, images) in enumerate(heldout_images(cfg, heldout).items()):
            for k, image in enumerate(images):
                save_png(np.asarray(image), concept / name / f"img_{s * len(images) + k:03d}.png")
        identity = make_identity(cfg.seed, heldout_identity_index(cfg, heldout))
        (concept / "caption.txt").write_text(caption(identity) + "\n", encoding="utf-8")
        concepts.append(concept)
    return concepts


def contact_sheet(
    rows: Sequence[Sequence[Image.Image]], cell: int = 128, gap: int = 2
) -> Image.Image:
    """One image with a row per identity and a column per image, cells ``cell`` px square."""
    cols = max(len(row) for row in rows)
    sheet = Image.new("RGB", (cols * (cell + gap) + gap, len(rows) * (cell + gap) + gap), "white")
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            # NEAREST keeps the real pixels visible instead of smoothing them away.
            tile = image.resize((cell, cell), Image.Resampling.NEAREST)
            sheet.paste(tile, (gap + c * (cell + gap), gap + r * (cell + gap)))
    return sheet


# --- command line ----------------------------------------------------------------------------


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m continual_ldu.reference.synthfaces",
        description="Write SynthFaces held-out concepts and a contact sheet to look at.",
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--heldout", type=int, default=10, help="number of held-out identities")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images-per-set", type=int, default=4)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: held-out concepts plus ``contact_sheet.png`` (rows = identities)."""
    args = _parse_args(argv)
    cfg = SynthFacesConfig(
        seed=args.seed,
        resolution=args.resolution,
        num_heldout_identities=args.heldout,
        images_per_set=args.images_per_set,
    )
    try:
        concepts = write_heldout_concepts(cfg, args.out_dir)
    except ConfigError as err:
        print(err)
        return 2
    rows = [
        [im for ims in heldout_images(cfg, h).values() for im in ims] for h in range(args.heldout)
    ]
    cell = max(cfg.resolution, 128)  # small images enlarged so a person can see them
    sheet_path = args.out_dir / "contact_sheet.png"
    save_png(np.asarray(contact_sheet(rows, cell=cell)), sheet_path)
    print(f"wrote {len(concepts)} concepts and {sheet_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
