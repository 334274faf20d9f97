"""Mist, fused mode (Liang & Wu, 2023; psyker-team/mist).

Source: psyker-team/mist and its accelerated port xavihart/Diff-Protect ``code/diff_mist.py``
(``mode='mist'``): advertorch's targeted ``LinfPGDAttack`` (random start) minimises
``||E(x') - E(y)||^2_sum - rate * L_sem(x')``: the semantic loss is AdvDM's, the textural loss
pulls the encoder latent toward that of a fixed target pattern y, ``rate = 1e4``; condition
"a photo"; 16/255, step 1/255, 100 steps. Mist ships its own pattern (``MIST.png``); without
that file, a seeded high-contrast procedural texture stands in for it (``target_pattern``).
"""

from __future__ import annotations

import torch

from continual_ldu.baselines.advdm import AdvDM
from continual_ldu.baselines.base import mse_sum


def target_pattern(like: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A fixed, busy texture in [0, 1] shaped like ``like``: colour stripes over a checkerboard."""
    _, _, h, w = like.shape
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    checker = ((y // 8 + x // 8) % 2).float()
    generator = torch.Generator().manual_seed(seed)
    phases = torch.rand(3, generator=generator) * 6.28
    stripes = torch.stack([torch.sin((x + y) / 3.0 + p) for p in phases]) * 0.5 + 0.5
    pattern = 0.6 * stripes + 0.4 * checker
    return pattern.expand(len(like), -1, -1, -1).to(like)


class Mist(AdvDM):
    """max_x' rate * L_sem(x') - ||E(x') - E(pattern)||^2_sum, with AdvDM's defaults."""

    def attack(self, clean, generator, mask, reference) -> torch.Tensor:
        semantic = self.base_noise_loss(self.cfg.prompt)
        with torch.no_grad():
            target = self.encode(target_pattern(clean))
        rate = self.cfg.mist_semantic_weight

        def loss(images01: torch.Tensor, gen) -> torch.Tensor:
            textural = mse_sum(self.encode(images01), target[: len(images01)])
            return rate * semantic(images01, gen) - textural

        return self.run_pgd(clean, loss, generator, mask)
