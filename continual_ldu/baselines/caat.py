"""CAAT, cross-attention adversarial training (Xu et al., CVPR 2024).

Source: CO2-cityao/CAAT ``CAAT.py`` and ``scripts/train_CAAT.sh``: Custom-Diffusion-style
surrogate parameters, the key and value projections of every cross-attention layer (``attn2``),
initialised from the base UNet; each of 250 steps runs one forward/backward of the noise-matching
loss for "a photo of a person", steps the images up by sign-PGD (eps 0.05, alpha 5e-3 on [-1, 1]:
6.375/255 and 0.6375/255 here) and the K/V weights down with AdamW (lr 1e-5, weight decay 1e-2,
gradient-norm clipping at 1). The K/V weights live on a copy of the UNet.
"""

from __future__ import annotations

import copy

import torch

from continual_ldu.baselines.base import Baseline
from continual_ldu.method.objectives import personalization_loss


class CAAT(Baseline):
    """Joint min over cross-attention K/V, max over the images, of one noise-matching loss."""

    DEFAULTS = {
        "eps": 6.375,
        "step_size": 0.6375,
        "steps": 250,
        "surrogate_lr": 1e-5,
        "prompt": "a photo of a person",
    }

    def attack(self, clean, generator, mask, reference) -> torch.Tensor:
        unet = copy.deepcopy(self.model.unet).float().requires_grad_(False)
        params = [
            p
            for name, module in unet.named_modules()
            if name.endswith("attn2")
            for p in (module.to_k.weight, module.to_v.weight)
        ]
        if not params:
            raise ValueError("caat needs a UNet with cross-attention (attn2) layers")
        for p in params:
            p.requires_grad_(True)
        optimizer = torch.optim.AdamW(params, lr=self.cfg.surrogate_lr, weight_decay=1e-2)
        states = self.text_states(self.cfg.prompt).float()

        def predict(noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return unet(
                noisy.float(), t, encoder_hidden_states=states.expand(len(noisy), -1, -1)
            ).sample

        def loss(images01: torch.Tensor, gen) -> torch.Tensor:
            return personalization_loss(predict, self.encode(images01), self.model.scheduler, gen)

        def update(step: int) -> None:  # the K/V step on the gradients of the same backward pass
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return self.run_pgd(clean, loss, generator, mask, after_step=update)
