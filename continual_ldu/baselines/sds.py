"""SDS(+) and SDS(-) (Xue et al., "Toward effective protection against diffusion-based mimicry
through score distillation", ICLR 2024).

Source: xavihart/Diff-Protect ``code/attacks.py`` (``Linf_PGD.pgd_sds``): the gradient of the
noise-matching loss skips the UNet's Jacobian, ``grad_x = (dz/dx)^T (eps_theta(z_t, t, c) - eps)``
(score distillation), so only the encoder is back-propagated: about half the memory and twice the
speed of AdvDM. ``g_mode '+'`` ascends, ``'-'`` descends (SDS-, the more natural-looking noise);
no random start; condition "a photo"; 16/255, step 1/255, 100 steps. The trace holds the
noise-matching MSE (Diff-Protect logs its L2 norm).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from continual_ldu.baselines.base import Baseline
from continual_ldu.seeding import seeded_randint, seeded_randn


class SDS(Baseline):
    """Score-distillation PGD, ascending the noise-matching loss (SDS+)."""

    DEFAULTS = {"eps": 16.0, "step_size": 1.0, "steps": 100, "prompt": "a photo"}

    def attack(self, clean, generator, mask, reference) -> torch.Tensor:
        states = self.text_states(self.cfg.prompt)
        unet, scheduler = self.model.unet, self.model.scheduler

        def loss(images01: torch.Tensor, gen) -> torch.Tensor:
            latents = self.encode(images01)
            with torch.no_grad():
                noise = seeded_randn(latents.shape, gen, latents)
                t = seeded_randint(
                    scheduler.config.num_train_timesteps, len(latents), gen, latents.device
                )
                noisy = scheduler.add_noise(latents, noise, t).to(unet.dtype)
                hidden = states.expand(len(latents), -1, -1)
                residual = unet(noisy, t, encoder_hidden_states=hidden).sample.float() - noise
            # Value: the noise-matching MSE; gradient: <residual, dz/dx> (the UNet is skipped).
            surrogate = (residual * latents).sum()
            return F.mse_loss(residual, torch.zeros_like(residual)) + surrogate - surrogate.detach()

        return self.run_pgd(clean, loss, generator, mask)


class SDSMinus(SDS):
    """SDS-: descends the noise-matching loss along the score-distillation gradient."""

    ascend = False
