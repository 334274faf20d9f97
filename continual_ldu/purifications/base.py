"""What every purification shares: its config, the purify contract, and the identity (``none``).

A purification is what an attacker runs on protected images before personalizing a model on
them. Images are float tensors (B, 3, H, W) in [-1, 1]; ``Purification.purify`` checks that,
runs the method under ``torch.no_grad()``, and returns a tensor of the same shape, dtype and
device, clamped to [-1, 1]. Stochastic methods draw only from the ``generator`` they are given
(on the CPU, via :mod:`continual_ldu.seeding`), so a seed fixes the result on any device.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

if TYPE_CHECKING:
    from continual_ldu.models.loading import LatentDiffusionModel

PurificationName = Literal["none", "jpeg", "gaussian_blur", "resize", "diffpure", "noisy_upscale"]


@dataclass
class PurificationConfig:
    """One schema for the catalog; each method reads the fields it needs.

    Defaults follow the attack literature (see each method's docstring for the source):
    JPEG q75, a 5x5 Gaussian blur with sigma 1, a 0.5x down-up resize, DiffPure at
    t*/T = 0.1 with 15 DDIM steps, and Noisy Upscaling with sigma 0.05 on the [0, 1] scale.
    """

    name: PurificationName = "none"
    jpeg_quality: int = 75  # PIL quality, 1..100; the literature uses 75 and 50
    blur_kernel: int = 5  # odd side length of the Gaussian kernel, in pixels
    blur_sigma: float = 1.0  # the Gaussian's standard deviation, in pixels
    resize_factor: float = 0.5  # down-scale factor before scaling back up, in (0, 1]
    diffpure_strength: float = 0.1  # t*/T: how far the latents are noised before denoising
    diffpure_steps: int = 15  # DDIM steps from t* back to 0
    noise_sigma: float = 0.05  # Gaussian noise std on the [0, 1] pixel scale
    upscaler: str | None = None  # StableDiffusionUpscalePipeline folder or hub id; None: fallback
    prompt: str = ""  # text condition for diffpure's UNet and the upscaler

    def validate(self) -> list[str]:
        errors = []
        if not 1 <= self.jpeg_quality <= 100:
            errors.append(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        if self.blur_kernel < 1 or self.blur_kernel % 2 == 0:
            errors.append(f"blur_kernel must be a positive odd integer, got {self.blur_kernel}")
        if self.blur_sigma <= 0:
            errors.append(f"blur_sigma must be > 0, got {self.blur_sigma}")
        if not 0.0 < self.resize_factor <= 1.0:
            errors.append(f"resize_factor must be in (0, 1], got {self.resize_factor}")
        if not 0.0 < self.diffpure_strength <= 1.0:
            errors.append(f"diffpure_strength must be in (0, 1], got {self.diffpure_strength}")
        if self.diffpure_steps < 1:
            errors.append(f"diffpure_steps must be >= 1, got {self.diffpure_steps}")
        if self.noise_sigma < 0:
            errors.append(f"noise_sigma must be >= 0, got {self.noise_sigma}")
        if self.upscaler is not None and not self.upscaler.strip():
            errors.append("upscaler must be a folder or hub id, or null for the resize fallback")
        return errors


class Purification(ABC):
    """Base: ``purify`` enforces the image contract around the method's ``_apply``."""

    #: Whether this method needs the base ``LatentDiffusionModel`` (``build_purification(cfg,
    #: model)``). A method whose need depends on its config overrides ``requires_model`` and
    #: sets the instance's value from it.
    needs_model: bool = False

    def __init__(self, cfg: PurificationConfig, model: LatentDiffusionModel | None = None) -> None:
        if model is None and self.requires_model(cfg):
            raise ValueError(
                f"purification {cfg.name!r} needs the base model: pass model=<the loaded "
                "LatentDiffusionModel> (continual_ldu.models.loading.load_model), e.g. "
                "build_purification(cfg, model=model)"
            )
        self.cfg, self.model = cfg, model

    @classmethod
    def requires_model(cls, cfg: PurificationConfig) -> bool:
        """Whether building this method from ``cfg`` needs the base model."""
        return cls.needs_model

    def purify(
        self, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> the purified batch, same shape, dtype and device.

        ``generator`` (a CPU generator, see ``seeding.make_generator``) is the only source of
        randomness; ``None`` falls back to torch's global RNG and is not reproducible.
        """
        if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
            raise ValueError(
                f"purify expects a float (B, 3, H, W) tensor, got {images.dtype} "
                f"{tuple(images.shape)}"
            )
        with torch.no_grad():
            out = self._apply(images.detach(), generator)
        return out.to(images.device, images.dtype).clamp(-1.0, 1.0)

    @abstractmethod
    def _apply(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The method itself; the result may be on another device or slightly out of range."""

    @abstractmethod
    def describe(self) -> str:
        """A one-line name with the parameters that matter, for reports."""


class NoPurification(Purification):
    """``none``: the identity, the no-attack baseline that every other method is compared to."""

    def _apply(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return images.clone()

    def describe(self) -> str:
        return "none"
