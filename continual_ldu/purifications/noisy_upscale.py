"""``noisy_upscale``: Gaussian noise, then a x4 diffusion upscaler back to the input size."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from continual_ldu.purifications.base import Purification, PurificationConfig
from continual_ldu.purifications.resize import down_up
from continual_ldu.seeding import seeded_randn

if TYPE_CHECKING:
    from diffusers import StableDiffusionUpscalePipeline

    from continual_ldu.models.loading import LatentDiffusionModel

SCALE = 4  # the Stable Diffusion x4 upscaler's factor
FALLBACK = "resize-fallback"
BICUBIC = InterpolationMode.BICUBIC


class NoisyUpscale(Purification):
    """Noisy Upscaling (Hönig et al., "Adversarial Perturbations Cannot Reliably Protect Artists
    From Generative AI", 2024): add Gaussian noise, then run a x4 diffusion upscaler.

    The noise masks the perturbation and the upscaler, which is trained to remove noise while
    it adds detail, removes both. To return the input size, the noisy image is first
    downscaled by 4 (bicubic, antialiased) and the upscaler brings it back.

    Parameters (``PurificationConfig``):
      - ``noise_sigma``: the noise std on the [0, 1] pixel scale (default 0.05; the paper's
        range is 0.05-0.1). On the [-1, 1] tensors here it is applied as 2 * sigma.
      - ``upscaler``: a local folder or hub id of a diffusers ``StableDiffusionUpscalePipeline``
        (``stabilityai/stable-diffusion-x4-upscaler``), loaded with ``from_pretrained`` onto the
        base model's device and dtype; it runs with the pipeline's own defaults (75 steps,
        guidance 9, noise_level 20). ``None`` uses a plain bicubic x4 instead and says so in
        ``describe()`` ("upscaler=resize-fallback"): a weaker stand-in, not the paper's method.
      - ``prompt``: the upscaler's text prompt (default "").
    Needs the base model only when an upscaler is configured (for its device and dtype).
    """

    def __init__(self, cfg: PurificationConfig, model: LatentDiffusionModel | None = None) -> None:
        super().__init__(cfg, model)
        self.needs_model = self.requires_model(cfg)
        self.pipeline = load_upscaler(cfg.upscaler, model) if cfg.upscaler is not None else None

    @classmethod
    def requires_model(cls, cfg: PurificationConfig) -> bool:
        return cfg.upscaler is not None

    def _apply(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        noise = seeded_randn(images.shape, generator, images)
        noisy = (images + 2.0 * self.cfg.noise_sigma * noise).clamp(-1.0, 1.0)
        if self.pipeline is None:
            return down_up(noisy, 1.0 / SCALE)
        return self._upscale(noisy, generator)

    def _upscale(self, noisy: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        height, width = noisy.shape[-2:]
        small = [max(1, height // SCALE), max(1, width // SCALE)]
        low = TF.resize(noisy.float(), small, interpolation=BICUBIC, antialias=True)
        # The pipeline takes and returns [0, 1] tensors (VaeImageProcessor's convention).
        low = ((low.clamp(-1.0, 1.0) + 1.0) / 2.0).to(self.pipeline.device, self.pipeline.dtype)
        prompts = [self.cfg.prompt] * len(low)
        up = self.pipeline(prompt=prompts, image=low, generator=generator, output_type="pt").images
        if tuple(up.shape[-2:]) != (height, width):  # sides that were not multiples of 4
            up = TF.resize(up.float(), [height, width], interpolation=BICUBIC)
        return up * 2.0 - 1.0

    def describe(self) -> str:
        upscaler = self.cfg.upscaler if self.cfg.upscaler is not None else FALLBACK
        return f"noisy_upscale(sigma={self.cfg.noise_sigma}, upscaler={upscaler})"


def load_upscaler(source: str, model: LatentDiffusionModel) -> StableDiffusionUpscalePipeline:
    """``StableDiffusionUpscalePipeline.from_pretrained(source)`` on the base model's device."""
    from diffusers import StableDiffusionUpscalePipeline  # heavy; only when one is configured

    pipeline = StableDiffusionUpscalePipeline.from_pretrained(source, torch_dtype=model.dtype)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(model.device)
