"""AdvDM (Liang et al., ICML 2023): PGD that maximises the LDM's noise-matching loss.

Source: psyker-team/mist (``mode='advdm'``) and xavihart/Diff-Protect ``code/diff_mist.py``: the
semantic loss of the frozen base model, a fresh (t, eps) draw per step (Monte Carlo over t),
condition "a photo", advertorch's ``LinfPGDAttack`` with a random start; 16/255, step 1/255,
100 steps.
"""

from __future__ import annotations

import torch

from continual_ldu.baselines.base import Baseline


class AdvDM(Baseline):
    """max_x' E_{t, eps} || eps_theta(z_t(E(x')), t, c) - eps ||^2 with the base model theta."""

    DEFAULTS = {
        "eps": 16.0,
        "step_size": 1.0,
        "steps": 100,
        "random_start": True,
        "prompt": "a photo",
    }

    def attack(self, clean, generator, mask, reference) -> torch.Tensor:
        return self.run_pgd(clean, self.base_noise_loss(self.cfg.prompt), generator, mask)
