"""Model-intrinsic protection: the attacker's own noise-matching loss on held-out clean images.

An attacker that personalized on protected images and learned the identity anyway fits clean,
held-out images of the subject about as well as an attacker trained on clean images; one that
was fooled does not. The harness divides this value by the clean-trained attacker's value on the
same latents and noise, so a ratio above 1 means the protection kept the identity out.
"""

from __future__ import annotations

import torch
from torch import nn

from continual_ldu.method.objectives import personalization_loss
from continual_ldu.metrics.base import Metric, MetricResult, summarize
from continual_ldu.seeding import make_generator


def _heldout_losses(
    personalizer,
    latents: torch.Tensor,
    scheduler=None,
    generator: torch.Generator | None = None,
    num_samples: int = 1,
) -> torch.Tensor:
    """Per-latent L_pers of the personalizer's instance prompt, in eval mode, without grad."""
    scheduler = scheduler if scheduler is not None else personalizer.base.scheduler
    modules = list(personalizer.modules()) if isinstance(personalizer, nn.Module) else []
    was_training = [m.training for m in modules]
    for module in modules:
        module.training = False
    try:
        with torch.no_grad():
            predict = personalizer.predict_noise_for(personalizer.prompt)
            return personalization_loss(
                predict, latents, scheduler, generator, num_samples, reduction="none"
            )
    finally:
        for module, mode in zip(modules, was_training, strict=True):
            module.training = mode


def heldout_attacker_loss(
    personalizer,
    latents: torch.Tensor,
    scheduler=None,
    generator: torch.Generator | None = None,
    num_samples: int = 1,
) -> float:
    """Mean L_pers of ``personalizer`` on held-out clean ``latents`` (no grad, eval mode).

    ``personalization_loss`` with the personalizer's conditioned noise prediction for its
    instance prompt; ``scheduler`` defaults to the personalizer's base model's. Pass the same
    seeded ``generator`` for the attacker under test and the clean-trained reference, so both
    see the same (t, eps) draws; their ratio is the intrinsic protection score.
    """
    return float(_heldout_losses(personalizer, latents, scheduler, generator, num_samples).mean())


class HeldoutAttackerLoss(Metric):
    """The attacker's loss on held-out clean latents; higher protects more (harness: divide by
    the clean-trained attacker's value on the same draws).

    ``compute(personalizer, latents, generator=None, scheduler=None)``: mean over latents of
    ``heldout_attacker_loss`` with ``metrics.heldout_num_samples`` (t, eps) draws each, from a
    generator seeded with ``metrics.heldout_seed`` unless one is given (spread: std over
    latents). Source: ``continual_ldu.method.objectives.personalization_loss``. Weights: none
    (the attacker's own).
    """

    name = "heldout_loss"
    kind = "intrinsic"
    higher_is_better = True

    def _compute(
        self,
        personalizer,
        latents: torch.Tensor,
        generator: torch.Generator | None = None,
        scheduler=None,
    ) -> MetricResult:
        generator = generator if generator is not None else make_generator(self.cfg.heldout_seed)
        losses = _heldout_losses(
            personalizer, latents, scheduler, generator, self.cfg.heldout_num_samples
        )
        return summarize(losses, num_samples=self.cfg.heldout_num_samples)
