"""Bad-input rules of continual_ldu.data.images, on a folder of deliberately awkward files."""

from __future__ import annotations

import hashlib
import io
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from continual_ldu.data.images import (
    IMAGE_EXTENSIONS,
    ImageSkipped,
    LoadedImage,
    Skipped,
    iter_folder,
    load_folder,
    load_image,
    prepare,
    save_png,
    scan_folder,
    to_tensor,
    to_uint8,
)

# The fixture's oversized image is 12000x12000; this limit rejects it by the header alone.
TEST_MAX_PIXELS = 10_000_000

GOOD = {
    "valid.png",
    "gray.png",
    "rgba.png",
    "cmyk.jpg",
    "gray16.png",
    "exif_rotated.jpg",
    "palette.png",
    "sub/inside.png",
}
BAD = {"corrupt.jpg", "truncated.png", "notes.txt", "tiny.png", "oversized.png"}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_bytes(width: int, height: int, bit_depth: int, color_type: int, idat: bytes) -> bytes:
    """A PNG written by hand, so that its header can claim any size at little memory cost."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _bilevel_png(side: int) -> bytes:
    """A valid all-black 1-bit PNG of side x side; zeros compress to a few kilobytes."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    return _png_bytes(side, side, 1, 0, idat)


def _noise_rgb(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _exif_rotated_jpeg(path: Path) -> None:
    """100x80 stored pixels, red block top-left, EXIF orientation 6 (display rotated 90 CW)."""
    im = Image.new("RGB", (100, 80), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(path, "JPEG", quality=95, exif=exif.tobytes())


@pytest.fixture
def bad_folder(tmp_path: Path) -> Path:
    """A folder holding every kind of awkward input the loader documents."""
    root = tmp_path / "inputs"
    (root / "sub").mkdir(parents=True)
    (root / ".hidden_dir").mkdir()

    _noise_rgb(100, 80).save(root / "valid.png")
    (root / "corrupt.jpg").write_bytes(np.random.default_rng(1).bytes(4096))
    buf = io.BytesIO()
    _noise_rgb(128, 128, seed=2).save(buf, "PNG")
    (root / "truncated.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (root / "notes.txt").write_text("not an image\n")
    Image.new("L", (100, 80), 100).save(root / "gray.png")

    rgba = Image.new("RGBA", (100, 80), (0, 0, 255, 255))
    rgba.paste((0, 0, 0, 0), (0, 0, 50, 80))  # left half fully transparent
    rgba.save(root / "rgba.png")

    Image.new("CMYK", (100, 80), (0, 255, 255, 0)).save(root / "cmyk.jpg", quality=95)

    # Columns of 0, 257*128 and 65535: clipping would make the last two both 255.
    gray16 = np.zeros((80, 100), dtype=np.uint16)
    gray16[:, 40:70] = 257 * 128
    gray16[:, 70:] = 65535
    Image.fromarray(gray16).save(root / "gray16.png")

    _exif_rotated_jpeg(root / "exif_rotated.jpg")
    _noise_rgb(40, 30, seed=3).save(root / "tiny.png")
    (root / "oversized.png").write_bytes(_bilevel_png(12000))

    pal = Image.new("P", (100, 80), 0)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 6))
    pal.paste(1, (50, 0, 100, 80))  # right half green, left half index 0 = transparent
    pal.save(root / "palette.png", transparency=0)

    _noise_rgb(90, 90, seed=4).save(root / "sub" / "inside.png")
    (root / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    _noise_rgb(90, 90, seed=5).save(root / ".hidden_dir" / "ignored.png")
    return root


def _snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    return {
        p.relative_to(folder).as_posix(): (
            hashlib.sha256(p.read_bytes()).hexdigest(),
            p.stat().st_mtime_ns,
        )
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _skip_reason(path: Path, **kwargs: int) -> str:
    with pytest.raises(ImageSkipped) as info:
        load_image(path, **kwargs)
    assert info.value.path == path
    return info.value.reason


def _assert_rgb8(loaded: LoadedImage, size: tuple[int, int]) -> None:
    assert loaded.image.mode == "RGB"
    assert loaded.image.size == size
    assert np.asarray(loaded.image).dtype == np.uint8


# --- skip rules ------------------------------------------------------------------------


def test_image_extensions_cover_documented_formats() -> None:
    """The accepted extensions are the eight documented ones, lower case with a dot."""
    assert IMAGE_EXTENSIONS == {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


def test_load_image_skips_text_file_by_extension(bad_folder: Path) -> None:
    """A .txt file is skipped as not an image, naming its extension."""
    assert _skip_reason(bad_folder / "notes.txt") == "not an image file (extension .txt)"


def test_load_image_skips_random_bytes_as_corrupt(bad_folder: Path) -> None:
    """Random bytes named .jpg are skipped as corrupt."""
    assert _skip_reason(bad_folder / "corrupt.jpg").startswith("corrupt or truncated: ")


def test_load_image_skips_truncated_png_as_corrupt(bad_folder: Path) -> None:
    """Half a PNG has a valid header but is skipped when its pixels cannot be decoded."""
    reason = _skip_reason(bad_folder / "truncated.png")
    assert reason.startswith("corrupt or truncated: ")
    assert "truncated" in reason.removeprefix("corrupt or truncated: ").lower()


def test_load_image_skips_tiny_image_with_its_size(bad_folder: Path) -> None:
    """A 40x30 image is skipped with its size and the minimum side."""
    reason = _skip_reason(bad_folder / "tiny.png")
    assert reason == "too small: 40x30, the shortest side must be >= 64"


def test_load_image_min_side_is_configurable(bad_folder: Path) -> None:
    """Lowering min_side lets the 40x30 image through."""
    assert load_image(bad_folder / "tiny.png", min_side=30).image.size == (40, 30)


def test_load_image_skips_oversized_image_with_pixel_count(bad_folder: Path) -> None:
    """A 12000x12000 image is skipped as too large, with the count, the limit and the fix."""
    reason = _skip_reason(bad_folder / "oversized.png", max_pixels=TEST_MAX_PIXELS)
    assert reason == (
        "too large: 144000000 pixels > max_pixels 10000000; "
        "raise data.max_pixels if this image is trusted"
    )


def test_load_image_checks_size_before_decoding(tmp_path: Path) -> None:
    """A header-only PNG claiming 5000x5000 is rejected as too large, not as corrupt."""
    path = tmp_path / "header_only.png"
    path.write_bytes(_png_bytes(5000, 5000, 8, 2, b""))  # no pixel data at all
    assert _skip_reason(path, max_pixels=TEST_MAX_PIXELS).startswith(
        "too large: 25000000 pixels > max_pixels 10000000"
    )


def test_load_image_reports_pillow_bomb_guard_as_too_large(tmp_path: Path) -> None:
    """A header claiming 20000x20000 trips Pillow's own guard and is reported as too large."""
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_bytes(20000, 20000, 8, 2, b""))
    reason = _skip_reason(path, max_pixels=10**9)
    assert reason.startswith("too large: ")
    assert "MAX_IMAGE_PIXELS" in reason


def test_load_image_refuses_formats_outside_the_allowlist(tmp_path: Path) -> None:
    """A non-allowlisted format (ICO) renamed to .png is not decoded."""
    path = tmp_path / "icon.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(path, format="ICO")
    assert _skip_reason(path).startswith("corrupt or truncated: ")


def test_image_skipped_survives_pickling(tmp_path: Path) -> None:
    """ImageSkipped keeps its path and reason through pickle (DataLoader workers)."""
    err = pickle.loads(pickle.dumps(ImageSkipped(tmp_path / "a.png", "too small: 1x1")))
    assert (err.path, err.reason) == (tmp_path / "a.png", "too small: 1x1")
    assert isinstance(err, ValueError)


# --- conversions -----------------------------------------------------------------------


def test_load_image_keeps_valid_rgb_unchanged(bad_folder: Path) -> None:
    """A plain RGB PNG loads pixel for pixel, with no notes."""
    loaded = load_image(bad_folder / "valid.png")
    _assert_rgb8(loaded, (100, 80))
    assert loaded.notes == []
    assert loaded.name == "valid.png"
    assert np.array_equal(np.asarray(loaded.image), np.asarray(_noise_rgb(100, 80)))


def test_load_image_expands_grayscale(bad_folder: Path) -> None:
    """An L image becomes RGB with three equal channels and a note."""
    loaded = load_image(bad_folder / "gray.png")
    _assert_rgb8(loaded, (100, 80))
    assert loaded.notes == ["grayscale expanded to RGB"]
    assert loaded.image.getpixel((10, 10)) == (100, 100, 100)


def test_load_image_composites_alpha_on_white(bad_folder: Path) -> None:
    """Transparent RGBA pixels become white; opaque ones keep their colour."""
    loaded = load_image(bad_folder / "rgba.png")
    _assert_rgb8(loaded, (100, 80))
    assert loaded.notes == ["alpha composited on white"]
    assert loaded.image.getpixel((10, 10)) == (255, 255, 255)
    assert loaded.image.getpixel((90, 10)) == (0, 0, 255)


def test_load_image_converts_cmyk(bad_folder: Path) -> None:
    """A CMYK JPEG of pure red loads as (approximately) red RGB, with a note."""
    loaded = load_image(bad_folder / "cmyk.jpg")
    _assert_rgb8(loaded, (100, 80))
    assert loaded.notes == ["converted from CMYK"]
    r, g, b = loaded.image.getpixel((50, 40))
    assert r > 240 and g < 15 and b < 15


def test_load_image_scales_16bit_by_depth(bad_folder: Path) -> None:
    """16-bit values are divided by 257 (65535 -> 255, 32896 -> 128), not clipped."""
    with Image.open(bad_folder / "gray16.png") as raw:
        assert raw.mode == "I;16"  # guards the fixture: this really is a 16-bit image
    loaded = load_image(bad_folder / "gray16.png")
    _assert_rgb8(loaded, (100, 80))
    assert loaded.notes == ["16-bit scaled to 8-bit", "grayscale expanded to RGB"]
    px = [loaded.image.getpixel((x, 5)) for x in (0, 50, 90)]
    assert px == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]


def test_load_image_scales_32bit_int_tiff_by_declared_depth(tmp_path: Path) -> None:
    """A 32-bit integer TIFF is scaled by its depth: 2**30 -> 128 and 2**31 - 1 -> 255."""
    path = tmp_path / "deep.tif"
    arr = np.zeros((70, 70), dtype=np.int32)
    arr[:, 35:] = 2**30
    arr[:, 60:] = 2**31 - 1
    Image.fromarray(arr).save(path)
    loaded = load_image(path)
    _assert_rgb8(loaded, (70, 70))
    assert loaded.notes[0] == "32-bit scaled to 8-bit"
    px = [loaded.image.getpixel((x, 5)) for x in (0, 50, 65)]
    assert px == [(0, 0, 0), (128, 128, 128), (255, 255, 255)]


def test_load_image_applies_exif_orientation(bad_folder: Path) -> None:
    """Orientation 6 swaps width and height and moves the top-left block to the top-right."""
    loaded = load_image(bad_folder / "exif_rotated.jpg")
    _assert_rgb8(loaded, (80, 100))
    assert loaded.notes == ["EXIF orientation applied"]
    r, g, b = loaded.image.getpixel((75, 5))
    assert r > 200 and b < 60
    assert loaded.image.getpixel((5, 5))[2] > 200  # the former top-left is now blue


def test_load_image_resolves_palette_transparency(bad_folder: Path) -> None:
    """Palette pixels marked transparent become white; others keep their palette colour."""
    loaded = load_image(bad_folder / "palette.png")
    _assert_rgb8(loaded, (100, 80))
    assert loaded.notes == ["palette converted to RGB", "alpha composited on white"]
    assert loaded.image.getpixel((10, 10)) == (255, 255, 255)
    assert loaded.image.getpixel((90, 10)) == (0, 255, 0)


def test_load_image_takes_first_frame_of_animated_gif(tmp_path: Path) -> None:
    """An animated GIF loads its first frame, with a note."""
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (64, 64), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    loaded = load_image(path)
    _assert_rgb8(loaded, (64, 64))
    assert "animated: first frame used" in loaded.notes
    assert loaded.image.getpixel((5, 5)) == (255, 0, 0)


def test_load_image_result_outlives_the_file(tmp_path: Path) -> None:
    """The loaded image is fully in memory: usable after the source file is deleted."""
    path = tmp_path / "gone.png"
    _noise_rgb(70, 70).save(path)
    loaded = load_image(path)
    path.unlink()
    assert loaded.image.resize((8, 8)).size == (8, 8)


# --- folders ---------------------------------------------------------------------------


def test_scan_folder_lists_all_visible_files_sorted(bad_folder: Path) -> None:
    """Every non-hidden file is listed, sorted, including non-images and subfolders."""
    names = [p.relative_to(bad_folder).as_posix() for p in scan_folder(bad_folder)]
    assert names == sorted(GOOD | BAD)


def test_scan_folder_non_recursive_skips_subfolders(bad_folder: Path) -> None:
    """With recursive=False only the top level is listed."""
    names = {p.name for p in scan_folder(bad_folder, recursive=False)}
    assert "inside.png" not in names and "valid.png" in names


def test_scan_folder_missing_folder_names_it(tmp_path: Path) -> None:
    """A missing folder raises ValueError that names the folder and what to do."""
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match=r"nope.*does not exist; create it"):
        scan_folder(missing)


def test_iter_folder_missing_folder_fails_at_call(tmp_path: Path) -> None:
    """iter_folder raises for a missing folder when called, before any iteration."""
    with pytest.raises(ValueError, match="does not exist"):
        iter_folder(tmp_path / "nope")


def test_load_folder_splits_good_and_bad(bad_folder: Path) -> None:
    """All convertible images load and every bad file is reported, nothing lost."""
    loaded, skipped = load_folder(bad_folder, max_pixels=TEST_MAX_PIXELS)
    assert len(loaded) == len(GOOD) and len(skipped) == len(BAD)
    assert {item.name for item in loaded} == GOOD
    assert {s.path.relative_to(bad_folder).as_posix() for s in skipped} == BAD
    assert all(item.image.mode == "RGB" for item in loaded)


def test_load_folder_reasons_name_each_problem(bad_folder: Path) -> None:
    """Each skipped file's reason starts with the problem documented for it."""
    _, skipped = load_folder(bad_folder, max_pixels=TEST_MAX_PIXELS)
    reasons = {s.path.name: s.reason for s in skipped}
    assert reasons["notes.txt"].startswith("not an image file")
    assert reasons["corrupt.jpg"].startswith("corrupt or truncated")
    assert reasons["truncated.png"].startswith("corrupt or truncated")
    assert reasons["tiny.png"].startswith("too small: 40x30")
    assert reasons["oversized.png"].startswith("too large: 144000000 pixels")


def test_iter_folder_yields_in_scan_order(bad_folder: Path) -> None:
    """iter_folder yields one LoadedImage or Skipped per scanned file, in order."""
    items = list(iter_folder(bad_folder, max_pixels=TEST_MAX_PIXELS))
    assert all(isinstance(i, LoadedImage | Skipped) for i in items)
    assert [i.path for i in items] == scan_folder(bad_folder)


def test_load_folder_leaves_inputs_untouched(bad_folder: Path) -> None:
    """Loading changes no input file: same sha256 and mtime, no new files."""
    before = _snapshot(bad_folder)
    load_folder(bad_folder, max_pixels=TEST_MAX_PIXELS)
    assert _snapshot(bad_folder) == before


# --- tensors, prepare and saving -------------------------------------------------------


def test_to_uint8_round_trips_every_byte_value() -> None:
    """to_uint8(to_tensor(img)) gives back every 8-bit value exactly."""
    arr = np.arange(256 * 3, dtype=np.uint16).reshape(16, 16, 3).astype(np.uint8)
    arr = np.ascontiguousarray(arr[:, :, ::-1])
    x = to_tensor([Image.fromarray(arr)])
    assert x.shape == (1, 3, 16, 16) and x.dtype == torch.float32
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert np.array_equal(to_uint8(x)[0], arr)


def test_to_uint8_clamps_out_of_range() -> None:
    """Values beyond [-1, 1] clamp to 0 and 255."""
    x = torch.tensor([-3.0, 5.0]).view(1, 1, 1, 2).expand(1, 3, 1, 2)
    assert to_uint8(x)[0, 0].tolist() == [[0, 0, 0], [255, 255, 255]]


def test_to_uint8_rejects_nan() -> None:
    """A NaN tensor raises instead of writing arbitrary bytes."""
    with pytest.raises(ValueError, match="NaN"):
        to_uint8(torch.full((1, 3, 2, 2), float("nan")))


def test_to_tensor_rejects_mixed_sizes() -> None:
    """Images of different sizes cannot be stacked and say how to fix it."""
    with pytest.raises(ValueError, match="prepare"):
        to_tensor([Image.new("RGB", (4, 4)), Image.new("RGB", (4, 5))])


@pytest.mark.parametrize("size", [(100, 80), (80, 100), (512, 512), (40, 300)])
def test_prepare_gives_requested_square(size: tuple[int, int]) -> None:
    """prepare returns a resolution x resolution image whatever the input aspect."""
    assert prepare(_noise_rgb(*size), 64).size == (64, 64)


def test_prepare_crops_the_center() -> None:
    """A wide image keeps its middle: the red centre stripe survives, the blue edges go."""
    im = Image.new("RGB", (300, 100), (0, 0, 255))
    im.paste((255, 0, 0), (100, 0, 200, 100))
    out = prepare(im, 100)
    assert out.getpixel((0, 50)) == (255, 0, 0) and out.getpixel((99, 50)) == (255, 0, 0)


def test_save_png_writes_atomically_into_new_folders(tmp_path: Path) -> None:
    """save_png creates parent folders, writes a readable PNG and leaves no tmp file."""
    arr = np.asarray(_noise_rgb(20, 10))
    target = tmp_path / "a" / "b" / "out.png"
    save_png(arr, target)
    with Image.open(target) as im:
        assert np.array_equal(np.asarray(im), arr)
    assert [p.name for p in target.parent.iterdir()] == ["out.png"]


def test_save_png_keeps_old_file_when_writing_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that dies half-way leaves the old target intact and no tmp file behind."""
    target = tmp_path / "out.png"
    target.write_bytes(b"old")

    def half_write(self: Image.Image, fp: io.BufferedWriter, *args: object, **kw: object) -> None:
        fp.write(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", half_write)
    with pytest.raises(OSError, match="disk full"):
        save_png(np.zeros((4, 4, 3), dtype=np.uint8), target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]
