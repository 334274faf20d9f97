"""Safe image loading for folders of user images, with documented bad-input rules.

Every input file either loads as an 8-bit RGB ``PIL.Image`` (with notes that list each
conversion applied) or is reported as skipped with a reason that names the problem.
Input files are only ever opened read-only; nothing here writes next to them.

Skip rules, checked in this order:

1. not a regular file / not an image extension -> ``not an image file (extension .txt)``
2. the header cannot be parsed                 -> ``corrupt or truncated: <PIL message>``
3. header size over ``max_pixels``             -> ``too large: N pixels > max_pixels M; ...``
   (checked before any pixel is decoded, so a decompression bomb costs only its header)
4. shortest side under ``min_side``            -> ``too small: WxH, the shortest side must be >= S``
5. the pixel data cannot be decoded            -> ``corrupt or truncated: <PIL message>``
6. the pixel mode cannot be converted to RGB   -> ``unsupported image mode <mode>``
"""

from __future__ import annotations

import io
import os
import stat
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MIN_SIDE",
    "IMAGE_EXTENSIONS",
    "ImageSkipped",
    "LoadedImage",
    "Skipped",
    "iter_folder",
    "load_folder",
    "load_image",
    "load_image_bytes",
    "prepare",
    "save_png",
    "scan_folder",
    "to_tensor",
    "to_uint8",
]

#: File name extensions (lower case, with the dot, as ``Path.suffix`` gives them) accepted
#: as images. Anything else in a folder is reported as skipped, not silently ignored.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
)

DEFAULT_MIN_SIDE = 64
DEFAULT_MAX_PIXELS = 40_000_000

# Pillow identifies files by content, not by name, and some of its plugins hand data to
# external programs (EPS runs Ghostscript). Only the decoders behind IMAGE_EXTENSIONS may
# run. Multi-picture JPEGs (MPO, many phone photos) come through the JPEG factory; naming
# "MPO" here would fail on Pillow versions that register no opener under that name.
_ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "DIB", "TIFF", "GIF")

_EXIF_ORIENTATION = 0x0112
_TIFF_BITS_PER_SAMPLE = 258
_WHITE = (255, 255, 255)


class ImageSkipped(ValueError):
    """An input file that cannot be used as an image; ``reason`` says why."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason

    def __reduce__(self) -> tuple[type[ImageSkipped], tuple[Path, str]]:
        # The default exception pickling passes only the message to __init__, which would
        # break sending this error across DataLoader worker processes.
        return (type(self), (self.path, self.reason))


@dataclass
class Skipped:
    """A file of a scanned folder that was not loaded, and why."""

    path: Path
    reason: str


@dataclass
class LoadedImage:
    """An image loaded as 8-bit RGB, with the conversions that were applied to it."""

    path: Path
    name: str  # path relative to the scanned folder (POSIX form); used as the output name
    image: Image.Image
    notes: list[str] = field(default_factory=list)


def load_image(
    path: Path,
    min_side: int = DEFAULT_MIN_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    name: str | None = None,
) -> LoadedImage:
    """Load one file as an 8-bit RGB image, or raise ``ImageSkipped`` naming the problem.

    ``name`` defaults to the file name; ``load_folder`` passes the path relative to the folder.
    """
    path = Path(path)
    _check_is_image_file(path)
    notes: list[str] = []
    try:
        fh = open(path, "rb")  # read-only: the input is never modified
    except OSError as exc:  # permissions, a file that vanished since the scan
        raise ImageSkipped(path, f"unreadable: {exc.strerror or exc}") from exc
    with fh:
        image = _decode(fh, path, min_side, max_pixels, notes)
    return LoadedImage(
        path=path, name=name if name is not None else path.name, image=image, notes=notes
    )


def load_image_bytes(
    data: bytes,
    name: str,
    min_side: int = DEFAULT_MIN_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> LoadedImage:
    """Decode in-memory bytes (a tar member, a dataset cell) by the same rules as ``load_image``.

    Rule 1 looks at ``name``'s extension alone, as there is no file to stat; a name without an
    extension (a dataset cell with no file name) is judged by its content. ``path`` is ``name``.
    """
    path = Path(name)
    ext = path.suffix.lower()
    if ext and ext not in IMAGE_EXTENSIONS:
        raise ImageSkipped(path, f"not an image file (extension {ext})")
    notes: list[str] = []
    image = _decode(io.BytesIO(data), path, min_side, max_pixels, notes)
    return LoadedImage(path=path, name=name, image=image, notes=notes)


def scan_folder(folder: Path, recursive: bool = True) -> list[Path]:
    """List every non-hidden file in ``folder``, sorted by relative path.

    All files are listed, not only image extensions, so that stray files get reported as
    skipped instead of vanishing. Hidden files and folders (``.DS_Store``, ``.git``) are left
    out, and linked folders are not followed, so a link loop cannot make the scan endless.
    """
    folder = _check_folder(folder)
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        # Pruning in place is how os.walk is told not to descend into these.
        dirs[:] = [] if not recursive else [d for d in dirs if not d.startswith(".")]
        found.extend(Path(root) / f for f in files if not f.startswith("."))
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def iter_folder(
    folder: Path,
    min_side: int = DEFAULT_MIN_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    recursive: bool = True,
) -> Iterator[LoadedImage | Skipped]:
    """Lazily yield a ``LoadedImage`` or a ``Skipped`` for each file of ``folder``."""
    # Scanning here rather than inside the generator makes a missing folder fail at the call,
    # not at the first iteration somewhere else.
    folder = _check_folder(folder)
    paths = scan_folder(folder, recursive=recursive)

    def generate() -> Iterator[LoadedImage | Skipped]:
        for path in paths:
            rel = path.relative_to(folder).as_posix()
            try:
                yield load_image(path, min_side=min_side, max_pixels=max_pixels, name=rel)
            except ImageSkipped as exc:
                yield Skipped(path=path, reason=exc.reason)

    return generate()


def load_folder(
    folder: Path,
    min_side: int = DEFAULT_MIN_SIDE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    recursive: bool = True,
) -> tuple[list[LoadedImage], list[Skipped]]:
    """Load every image of ``folder``; return the loaded images and the skipped files."""
    loaded: list[LoadedImage] = []
    skipped: list[Skipped] = []
    for item in iter_folder(folder, min_side=min_side, max_pixels=max_pixels, recursive=recursive):
        (loaded if isinstance(item, LoadedImage) else skipped).append(item)
    return loaded, skipped


def prepare(image: Image.Image, resolution: int) -> Image.Image:
    """Resize so the shorter side is ``resolution`` (LANCZOS), then center-crop a square.

    The arithmetic mirrors torchvision's ``Resize(resolution)`` + ``CenterCrop(resolution)``,
    which the published protection baselines use, so crops line up pixel for pixel.
    """
    if resolution <= 0:
        raise ValueError(f"resolution must be positive, got {resolution}")
    w, h = image.size
    short, long = (w, h) if w <= h else (h, w)
    # torchvision truncates the long side (int(), not round()).
    new_long = int(resolution * long / short)
    new_size = (resolution, new_long) if w <= h else (new_long, resolution)
    if new_size != image.size:
        image = image.resize(new_size, Image.Resampling.LANCZOS)
    nw, nh = image.size
    left = int(round((nw - resolution) / 2.0))
    top = int(round((nh - resolution) / 2.0))
    return image.crop((left, top, left + resolution, top + resolution))


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """Stack same-size RGB images into a float32 tensor (B, 3, H, W) in [-1, 1]."""
    if not images:
        raise ValueError("to_tensor needs at least one image")
    sizes = {im.size for im in images}
    if len(sizes) != 1:
        raise ValueError(f"images differ in size {sorted(sizes)}; run prepare() on each first")
    modes = {im.mode for im in images}
    if modes != {"RGB"}:
        raise ValueError(f"images must be RGB, got modes {sorted(modes)}; use load_image()")
    arr = np.stack([np.asarray(im, dtype=np.uint8) for im in images])  # B,H,W,3
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Convert a (B, 3, H, W) tensor in [-1, 1] to (B, H, W, 3) uint8, as a PNG stores it."""
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected a (B, 3, H, W) tensor, got shape {tuple(x.shape)}")
    x = x.detach().to(device="cpu", dtype=torch.float32)
    # NaN survives clamp and casts to an arbitrary byte; a silent garbage image is worse than
    # an error pointing at the step that produced it.
    if torch.isnan(x).any():
        raise ValueError("tensor contains NaN; the image cannot be saved")
    x = ((x.clamp(-1.0, 1.0) + 1.0) * 127.5).round()
    return x.to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def save_png(array_uint8: np.ndarray, path: Path) -> Path:
    """Write an (H, W, 3) uint8 array as a PNG, atomically; create parent folders."""
    arr = np.asarray(array_uint8)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 array, got {arr.dtype} {arr.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target then rename: a crash or a full disk leaves either the old file
    # or the new one, never a half-written PNG that a later run would treat as done. The tmp
    # name is hidden so that scan_folder never picks it up.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            Image.fromarray(np.ascontiguousarray(arr)).save(fh, format="PNG")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# --- internals -------------------------------------------------------------------------


def _check_folder(folder: Path) -> Path:
    folder = Path(folder)
    if not folder.exists():
        raise ValueError(
            f"image folder {folder} does not exist; create it and put the images to protect "
            "in it, or point the recipe at an existing folder"
        )
    if not folder.is_dir():
        raise ValueError(f"{folder} is a file, not a folder; give the folder that holds the images")
    return folder


def _check_is_image_file(path: Path) -> None:
    ext = path.suffix.lower()
    if ext not in IMAGE_EXTENSIONS:
        shown = f"extension {ext}" if ext else "no extension"
        raise ImageSkipped(path, f"not an image file ({shown})")
    try:
        st = path.stat()
    except OSError as exc:
        raise ImageSkipped(path, f"unreadable: {exc.strerror or exc}") from exc
    # A FIFO or device named x.png would block or stream forever on read.
    if not stat.S_ISREG(st.st_mode):
        raise ImageSkipped(path, "not an image file (not a regular file)")


def _too_large(path: Path, pixels: int, max_pixels: int) -> ImageSkipped:
    return ImageSkipped(
        path,
        f"too large: {pixels} pixels > max_pixels {max_pixels}; "
        "raise data.max_pixels if this image is trusted",
    )


def _pillow_bomb(path: Path, exc: Exception) -> ImageSkipped:
    # Pillow's hard limit fires inside Image.open, before the header size reaches us.
    return ImageSkipped(
        path,
        f"too large: {exc} (Pillow's decompression-bomb guard); raise data.max_pixels and "
        "PIL.Image.MAX_IMAGE_PIXELS if this image is trusted",
    )


def _decode(
    fh: BinaryIO, path: Path, min_side: int, max_pixels: int, notes: list[str]
) -> Image.Image:
    """Open from ``fh``, check the header size, decode, and convert to 8-bit RGB."""
    with warnings.catch_warnings():
        # Our own max_pixels check below replaces Pillow's soft warning; its hard error
        # (at twice Image.MAX_IMAGE_PIXELS) still fires and is reported as too large.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(fh, formats=_ALLOWED_FORMATS)
        except Image.DecompressionBombError as exc:
            raise _pillow_bomb(path, exc) from exc
        except Exception as exc:
            # Pillow's plugins raise many types on malformed headers (SyntaxError,
            # struct.error, IndexError, ...); all of them mean "cannot be decoded".
            raise ImageSkipped(path, f"corrupt or truncated: {exc}") from exc

        w, h = im.size
        if w * h > max_pixels:  # from the header only: no pixel has been decoded yet
            raise _too_large(path, w * h, max_pixels)
        if min(w, h) < min_side:
            raise ImageSkipped(path, f"too small: {w}x{h}, the shortest side must be >= {min_side}")

        if getattr(im, "is_animated", False):
            # is_animated only peeks at the second frame; n_frames would scan the whole file.
            kind = "animated" if im.format in ("GIF", "PNG", "WEBP") else "multi-frame"
            notes.append(f"{kind}: first frame used")
        try:
            im.seek(0)
            im.load()
        except Image.DecompressionBombError as exc:  # some formats size frames on load
            raise _pillow_bomb(path, exc) from exc
        except Exception as exc:
            raise ImageSkipped(path, f"corrupt or truncated: {exc}") from exc

    im = _apply_exif_orientation(im, notes)
    out = _to_rgb8(im, path, notes)
    # Detach from the decoder and its (soon closed) file; convert() may return `im` itself.
    return out.copy() if out is im else out


def _apply_exif_orientation(im: Image.Image, notes: list[str]) -> Image.Image:
    try:
        orientation = im.getexif().get(_EXIF_ORIENTATION)
    except Exception:  # a broken EXIF block should not cost the whole image
        notes.append("EXIF unreadable, orientation not applied")
        return im
    if orientation in (None, 1):
        return im
    rotated = ImageOps.exif_transpose(im)
    if rotated is None:  # only in_place=True returns None; keeps the type checker honest
        return im
    notes.append("EXIF orientation applied")
    return rotated


def _to_rgb8(im: Image.Image, path: Path, notes: list[str]) -> Image.Image:
    """Convert any supported mode to 8-bit RGB, noting what was done."""
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        gray = _scale_high_depth(im, notes)
        notes.append("grayscale expanded to RGB")
        return gray.convert("RGB")
    if mode == "1":
        notes.append("1-bit black and white expanded to RGB")
        return im.convert("RGB")
    if mode == "CMYK":
        notes.append("converted from CMYK")
        return im.convert("RGB")
    if mode == "P":
        notes.append("palette converted to RGB")
    elif mode in ("L", "LA", "La"):
        notes.append("grayscale expanded to RGB")
    elif mode not in ("RGB", "RGBA", "RGBa", "PA"):
        try:
            out = im.convert("RGB")
        except (ValueError, OSError) as exc:
            raise ImageSkipped(path, f"unsupported image mode {mode}") from exc
        notes.append(f"converted from {mode}")
        return out

    # has_transparency_data covers alpha bands and a tRNS/transparency entry on P, L and RGB;
    # going through RGBA is the one route that honours all of them.
    if im.has_transparency_data:
        rgba = im.convert("RGBA")
        alpha_min = rgba.getchannel("A").getextrema()[0]
        if alpha_min < 255:
            notes.append("alpha composited on white")
        else:
            notes.append("opaque alpha channel dropped")
        canvas = Image.new("RGB", rgba.size, _WHITE)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return im if mode == "RGB" else im.convert("RGB")


def _scale_high_depth(im: Image.Image, notes: list[str]) -> Image.Image:
    """Map a 16-bit, 32-bit integer or float grayscale image to 8-bit ``L`` by its depth.

    Pillow's own ``convert("L")`` clips such values at 255, which turns most 16-bit photos
    white; scaling keeps the picture.
    """
    a = np.asarray(im)
    if im.mode.startswith("I;16"):
        bits = 16
    elif im.mode == "I":
        bits = _declared_bits(im) or (16 if int(a.max(initial=0)) <= 0xFFFF else 32)
    else:
        bits = 0  # float
    if bits and int(a.min(initial=0)) >= 0:
        # Pillow's mode I is signed 32-bit, so a 32-bit file can reach 2**31 - 1 at most.
        top = (1 << min(bits, 31)) - 1
        # Integer arithmetic with round-half-up; 65535 -> 255 and 257*k -> k exactly.
        scaled = (a.astype(np.uint64) * 255 + top // 2) // top
        notes.append(f"{bits}-bit scaled to 8-bit")
    else:
        f = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(f.min(initial=0.0)), float(f.max(initial=0.0))
        if bits == 0 and lo >= 0.0 and hi <= 1.0:
            scaled = np.rint(f * 255.0)  # the usual [0, 1] float convention
            notes.append("32-bit float scaled to 8-bit")
        else:
            # No fixed range to scale by (signed integers, floats outside [0, 1]): stretch
            # the actual range, and say so since absolute levels are lost.
            span = hi - lo if hi > lo else 1.0
            scaled = np.rint((f - lo) / span * 255.0)
            notes.append(
                f"{'float' if bits == 0 else 'signed integer'} range "
                f"[{lo:g}, {hi:g}] stretched to 8-bit"
            )
    return Image.fromarray(scaled.astype(np.uint8))


def _declared_bits(im: Image.Image) -> int | None:
    """Bit depth stated by the file for a mode ``I`` image, where the format records one."""
    tags = getattr(im, "tag_v2", None)  # TIFF
    if tags is not None:
        bits = tags.get(_TIFF_BITS_PER_SAMPLE)
        if isinstance(bits, tuple):
            bits = bits[0] if bits else None
        if isinstance(bits, int) and 1 <= bits <= 32:
            return bits
    if im.format == "PNG":  # PNG integer grayscale beyond 8 bits is always 16-bit
        return 16
    return None
