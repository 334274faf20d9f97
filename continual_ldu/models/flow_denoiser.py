"""The ``flow`` trajectory's model: a few-step latent rectified-flow velocity field.

Trained on the owner's latents with the rectified-flow objective: for z_t = (1 - t) z_0 + t eps,
regress v(z_t, t) onto eps - z_0. Inversion and denoising are Euler steps on one grid, so
``denoise(invert(z_0)) ~ z_0`` when the shift is zero. The network is a stock diffusers
``UNet2DModel`` (time-conditioned, unconditional), saved with ``save_pretrained``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel

from continual_ldu.seeding import seeded_rand, seeded_randn


@dataclass
class FlowConfig:
    """The flow model's size and its fitting schedule."""

    widths: tuple[int, ...] = (32, 64)
    num_train_steps: int = 300
    lr: float = 1e-3
    batch_size: int = 8

    def validate(self) -> list[str]:
        return [] if self.num_train_steps >= 0 else ["num_train_steps must be >= 0"]


def build_flow_model(latent_channels: int, latent_size: int, cfg: FlowConfig) -> UNet2DModel:
    """A small time-conditioned UNet for the velocity field."""
    return UNet2DModel(
        sample_size=latent_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        block_out_channels=cfg.widths,
        layers_per_block=1,
        down_block_types=("DownBlock2D",) * len(cfg.widths),
        up_block_types=("UpBlock2D",) * len(cfg.widths),
        norm_num_groups=8,
    )


def velocity(model: UNet2DModel, latents: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """v(z_t, t) with t in [0, 1] (the UNet's timestep embedding sees t * 1000)."""
    t = torch.as_tensor(t, device=latents.device, dtype=latents.dtype)
    t = t.expand(latents.shape[0]) if t.ndim == 0 else t
    return model(latents, t * 1000).sample


def flow_matching_loss(
    model: UNet2DModel, latents: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Rectified-flow loss ||v(z_t, t) - (eps - z_0)||^2 with t ~ U[0, 1]."""
    noise = seeded_randn(latents.shape, generator, latents)
    t = seeded_rand(latents.shape[0], generator, latents)
    noisy = (1 - t[:, None, None, None]) * latents + t[:, None, None, None] * noise
    return F.mse_loss(velocity(model, noisy, t), noise - latents)
