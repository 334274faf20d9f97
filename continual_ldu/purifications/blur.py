"""``gaussian_blur``: a separable Gaussian low-pass filter (torchvision's ``gaussian_blur``)."""

from __future__ import annotations

import torch
from torchvision.transforms import functional as TF

from continual_ldu.purifications.base import Purification


class GaussianBlur(Purification):
    """Gaussian blur, which removes the high-frequency part of an adversarial perturbation.

    Parameters (``PurificationConfig``):
      - ``blur_kernel``: odd kernel side in pixels (default 5).
      - ``blur_sigma``: standard deviation in pixels (default 1.0).
    Gaussian blur is one of the pre-processing purifications in protection robustness studies
    (e.g. Van Le et al., "Anti-DreamBooth", ICCV 2023). Small kernels are the useful range:
    large ones destroy the detail the attacker wants to learn. Borders are reflect-padded.
    """

    def _apply(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        kernel, sigma = self.cfg.blur_kernel, self.cfg.blur_sigma
        return TF.gaussian_blur(images.float(), kernel_size=[kernel, kernel], sigma=[sigma, sigma])

    def describe(self) -> str:
        return f"gaussian_blur(kernel={self.cfg.blur_kernel}, sigma={self.cfg.blur_sigma})"
