"""PhotoGuard's encoder attack (Salman et al., ICML 2023).

Source: MadryLab/photoguard (``demo/app.py``, ``notebooks/demo_simple_attack_img2img.ipynb``):
drive the VAE posterior mean of the image toward a target latent, minimising
``|| mu(x') - mu(target) ||_2``, with a uniform random start and a step that decays linearly to
1/100 of itself; the img2img notebook's eps 0.06 and step 0.02 on [-1, 1] are 7.65/255 and
2.55/255 here, 1000 steps. The target is a uniform grey image (the repository's
``Gray_Uniformity`` test card), or the zero latent with ``photoguard_target: zero``.
"""

from __future__ import annotations

import torch

from continual_ldu.baselines.base import Baseline


class PhotoGuard(Baseline):
    """min_x' || mu_E(x') - mu_E(grey) ||_2 (descent)."""

    DEFAULTS = {"eps": 7.65, "step_size": 2.55, "steps": 1000, "random_start": True}
    ascend = False
    step_decay = True

    def posterior_mean(self, images01: torch.Tensor) -> torch.Tensor:
        vae = self.model.vae
        return vae.encode((images01 * 2 - 1).to(vae.dtype)).latent_dist.mean.float()

    def attack(self, clean, generator, mask, reference) -> torch.Tensor:
        with torch.no_grad():
            target = self.posterior_mean(torch.full_like(clean, 0.5))
            if self.cfg.photoguard_target == "zero":
                target = torch.zeros_like(target)

        def loss(images01: torch.Tensor, _generator) -> torch.Tensor:
            return (self.posterior_mean(images01) - target).norm()

        return self.run_pgd(clean, loss, generator, mask)
