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


def main(folder: Path = DEMO_FOLDER) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for name, photo in sources().items():
        for index, image in enumerate(crops(photo, rng, PER_SOURCE)):
            image.save(folder / f"{name}_{index}.png")
    print(f"wrote {len(list(folder.glob('*.png')))} images to {folder}")


if __name__ == "__main__":
    main()
