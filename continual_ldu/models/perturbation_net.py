"""rho: the latent perturbation network that shifts the start of the trajectory.

The paper's network is a small UNet on latents: DoubleConv encoder widths 64/128/256/512, a
1024-wide bottleneck and a 1x1 head (~35 M parameters at 4 latent channels). Unlike the released
code it is *residual with a zero-initialised head*: ``shift(z_T) = z_T + rho(z_T)`` starts as the
identity, so training starts from the plain reconstruction. It is a diffusers ``ModelMixin`` so
``save_pretrained``/``from_pretrained`` write and read safetensors plus ``config.json``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


def _groups(channels: int) -> int:
    """GroupNorm groups: batch-size independent, so protection at batch 1 equals batch 16."""
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


class DoubleConv(nn.Sequential):
    """(conv 3x3 -> GroupNorm -> SiLU) twice, as in the paper's UNet."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.GroupNorm(_groups(out_channels), out_channels),
            nn.SiLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            nn.GroupNorm(_groups(out_channels), out_channels),
            nn.SiLU(),
        )


class PerturbationNet(ModelMixin, ConfigMixin):
    """rho(z_T): a residual latent UNet whose 1x1 head starts at zero."""

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 4,
        widths: tuple[int, ...] = (64, 128, 256, 512),
        bottleneck: int = 1024,
    ) -> None:
        super().__init__()
        self.down = nn.ModuleList()
        channels = latent_channels
        for width in widths:
            self.down.append(DoubleConv(channels, width))
            channels = width
        self.middle = DoubleConv(channels, bottleneck)
        self.up = nn.ModuleList()
        self.up_convs = nn.ModuleList()
        channels = bottleneck
        for width in reversed(widths):
            self.up.append(nn.ConvTranspose2d(channels, width, 2, stride=2))
            self.up_convs.append(DoubleConv(2 * width, width))
            channels = width
        self.head = nn.Conv2d(channels, latent_channels, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def delta(self, latents: torch.Tensor) -> torch.Tensor:
        """rho(z_T): the latent shift (zero while the head is zero)."""
        size = 2 ** len(self.down)
        height, width = latents.shape[-2:]
        # Pad to a multiple of the total downsampling so any latent size works.
        padded = F.pad(latents, (0, -width % size, 0, -height % size), mode="replicate")
        skips, h = [], padded
        for block in self.down:
            h = block(h)
            skips.append(h)
            h = F.max_pool2d(h, 2)
        h = self.middle(h)
        for upsample, block in zip(self.up, self.up_convs, strict=True):
            h = block(torch.cat([upsample(h), skips.pop()], dim=1))
        return self.head(h)[..., :height, :width]

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """shift(z_T) = z_T + rho(z_T)."""
        return latents + self.delta(latents)
