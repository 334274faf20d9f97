"""``resize``: scale down and back up (bicubic, antialiased), discarding fine detail."""

from __future__ import annotations

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from continual_ldu.purifications.base import Purification


def down_up(images: torch.Tensor, factor: float) -> torch.Tensor:
    """Bicubic resize to ``factor`` times the size (at least 1 px), then back to the original."""
    height, width = images.shape[-2:]
    small = [max(1, round(height * factor)), max(1, round(width * factor))]
    bicubic = InterpolationMode.BICUBIC
    # Antialiasing on the way down is what PIL and every image editor do; without it the
    # downscale aliases the perturbation instead of averaging it away.
    low = TF.resize(images.float(), small, interpolation=bicubic, antialias=True)
    return TF.resize(low, [height, width], interpolation=bicubic, antialias=True)


class Resize(Purification):
    """Down-up resizing, a standard low-cost purification.

    Parameters (``PurificationConfig``):
      - ``resize_factor``: the down-scale factor in (0, 1] (default 0.5, i.e. 512 -> 256 ->
        512). 1.0 is the identity up to the bicubic kernel's rounding.
    """

    def _apply(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return down_up(images, self.cfg.resize_factor)

    def describe(self) -> str:
        return f"resize(factor={self.cfg.resize_factor}, bicubic)"
