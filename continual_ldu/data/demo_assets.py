"""Regenerate the bundled demo images: ``python -m continual_ldu.data.demo_assets``.

Seeded crops of the public-domain photos that ship with scikit-image (``astronaut``, ``coffee``,
``chelsea``, ``rocket``, ...) and matplotlib (``grace_hopper.jpg``), 96 x 96 PNGs, so the demo
and the tests need no download. The committed files are the output of this module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 96
PER_SOURCE = 3
DEMO_FOLDER = Path(__file__).resolve().parents[1] / "assets" / "demo"
CONCEPTS_FOLDER = Path(__file__).resolve().parents[1] / "assets" / "eval_concepts"
CONCEPTS = ("astronaut", "hopper")  # two faces: the debug evaluation's concepts
SET_SIZE = 2


def sources() -> dict[str, np.ndarray]:
    """The photos, as RGB uint8 arrays."""
    import matplotlib.cbook
    from skimage import data

    with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as handle:
        hopper = np.asarray(Image.open(handle).convert("RGB"))
    photos = {"hopper": hopper}
    for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina"):
        photos[name] = getattr(data, name)()
    photos["camera"] = np.stack([data.camera()] * 3, axis=-1)
    return photos


def crops(photo: np.ndarray, rng: np.random.Generator, count: int) -> list[Image.Image]:
    """Random square crops covering 40-90% of the short side, resized to SIZE."""
    height, width = photo.shape[:2]
    out = []
    for _ in range(count):
        side = int(min(height, width) * rng.uniform(0.4, 0.9))
        top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        crop = Image.fromarray(photo[top : top + side, left : left + side])
        out.append(crop.resize((SIZE, SIZE), Image.Resampling.LANCZOS))
    return out


def write_concepts(folder: Path, photos: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    """``<concept>/set_A`` and ``set_B``: disjoint crops of one photo, in the harness's layout."""
    for name in CONCEPTS:
        images = crops(photos[name], rng, 2 * SET_SIZE)
        for split, part in (("set_A", images[:SET_SIZE]), ("set_B", images[SET_SIZE:])):
            (folder / name / split).mkdir(parents=True, exist_ok=True)
            for index, image in enumerate(part):
                image.save(folder / name / split / f"{name}_{index}.png")


def main(folder: Path = DEMO_FOLDER) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for name, photo in sources().items():
        for index, image in enumerate(crops(photo, rng, PER_SOURCE)):
            image.save(folder / f"{name}_{index}.png")
    print(f"wrote {len(list(folder.glob('*.png')))} images to {folder}")
    write_concepts(CONCEPTS_FOLDER, sources(), np.random.default_rng(1))
    print(f"wrote the evaluation concepts {CONCEPTS} to {CONCEPTS_FOLDER}")


if __name__ == "__main__":
    main()
