"""PID, prompt-independent defense (Li et al., ICML 2024): attack only the VAE encoder.

Source: PKU-ML/Diffusion-PID-Protection ``PID.py`` / ``PID.sh``: ``attack_type add-log`` pushes
the posterior's log-variance and mean away from the clean image's,
``L = MSE(log var(x'), log var(x)) + MSE(mu(x'), mu(x))``, ascended from a uniform random start;
12.75/255, step 1/255, 1000 steps. No text, no UNet: the protection holds whatever the prompt.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from continual_ldu.baselines.base import Baseline


class PID(Baseline):
    """max_x' ||log sigma^2(x') - log sigma^2(x)||^2 + ||mu(x') - mu(x)||^2 (means over elements)."""

    DEFAULTS = {"eps": 12.75, "step_size": 1.0, "steps": 1000, "random_start": True}

    def posterior(self, images01: torch.Tensor):
        return self.model.vae.encode((images01 * 2 - 1).to(self.model.vae.dtype)).latent_dist

    def attack(self, clean, generator, mask, reference) -> torch.Tensor:
        with torch.no_grad():
            target = self.posterior(clean)
            mean, logvar = target.mean.float(), target.logvar.float()

        def loss(images01: torch.Tensor, _generator) -> torch.Tensor:
            posterior = self.posterior(images01)
            return F.mse_loss(posterior.logvar.float(), logvar) + F.mse_loss(
                posterior.mean.float(), mean
            )

        return self.run_pgd(clean, loss, generator, mask)
