"""``jpeg``: a real 8-bit JPEG encode/decode round trip through PIL, in memory, per image."""

from __future__ import annotations

import io

import torch
from PIL import Image

from continual_ldu.data.images import to_tensor, to_uint8
from continual_ldu.purifications.base import Purification


def jpeg_roundtrip(image: Image.Image, quality: int) -> Image.Image:
    """Encode ``image`` as JPEG at ``quality`` with PIL's defaults and decode it again."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


class JpegCompression(Purification):
    """JPEG compression, the cheapest purification an attacker can apply.

    Parameters (``PurificationConfig``):
      - ``jpeg_quality``: PIL's quality setting (default 75). Quality 75 and 50 are the usual
        settings in robustness evaluations of image protections (JPEG is among the
        purifications in Van Le et al., "Anti-DreamBooth", ICCV 2023, and in Hönig et al.,
        "Adversarial Perturbations Cannot Reliably Protect Artists From Generative AI", 2024).

    The image is quantised to 8 bits first, as a saved PNG would be, and PIL's default chroma
    subsampling applies, as it does for anyone calling ``Image.save(..., quality=q)``.
    """

    def _apply(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        quality = self.cfg.jpeg_quality
        decoded = [jpeg_roundtrip(Image.fromarray(a), quality) for a in to_uint8(images)]
        return to_tensor(decoded)

    def describe(self) -> str:
        return f"jpeg(quality={self.cfg.jpeg_quality})"
