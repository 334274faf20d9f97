"""MetaCloak (Liu et al., CVPR 2024): ASPL-style meta-learning over a pool of surrogates, with EOT.

Source: liuyixin-louis/MetaCloak ``robust_facecloak/attacks/algs/metacloak.py``,
``attacks/worker/robust_pgd_worker.py`` and ``script/{methods_config,sub/gen/metacloak}.sh``:

  pool   = states of one DreamBooth surrogate (UNet + text encoder, lr 5e-7, prior preservation)
           during 1000 steps of training on the clean images, kept at step 0 and every 200 steps
  repeat 4 trials: for each pool state: load it, then 200 / 2 times:
           6 PGD steps against it through EOT (Gaussian blur k=7 with sigma ~ U(0.1, 2), then a
           random horizontal flip), then 2 surrogate steps on the perturbed images

with radius 11 and step 1.1 on the 0..255 scale (11/255, 1.1/255 here), no random start. The
released script fits the pool on the images being protected; here it is fitted on the owner's
clean reference set, which defaults to those images.
"""

from __future__ import annotations

import torch

from continual_ldu.baselines.anti_dreambooth import DREAMBOOTH_DEFAULTS, SurrogateBaseline
from continual_ldu.baselines.base import BaselineConfig, frozen


class MetaCloak(SurrogateBaseline):
    """max over x' of the EOT loss against surrogates re-initialised from a pool of stages."""

    DEFAULTS = {
        **DREAMBOOTH_DEFAULTS,
        "eps": 11.0,
        "step_size": 1.1,
        "steps": 6,
        "num_rounds": 4,
        "surrogate_steps": 1000,
        "eot_transforms": ["gaussian_blur", "hflip"],
        "blur_kernel": 7,
        "metacloak_interval": 200,
        "metacloak_advance_steps": 2,
    }

    def alternate(self, clean, generator, mask, reference) -> torch.Tensor:
        c = self.cfg
        surrogate, pool = self.surrogate(generator), []

        def keep(step: int) -> None:  # the released code's step_wise_save schedule
            if step == 0 or (step + 1) % c.metacloak_interval == 0:
                pool.append(
                    {k: v.detach().cpu().clone() for k, v in surrogate.state_dict().items()}
                )

        self.fit(surrogate, self.latents(reference), c.surrogate_steps, generator, keep)
        adv = clean
        for _ in range(c.num_rounds):
            for state in pool:
                surrogate.load_state_dict(state)
                for _ in range(c.metacloak_interval // c.metacloak_advance_steps):
                    with frozen(surrogate):
                        loss = self.pgd_loss(surrogate, clean)
                        adv = self.run_pgd(clean, loss, generator, mask, adv)
                    self.fit(surrogate, self.latents(adv), c.metacloak_advance_steps, generator)
        return adv

    @staticmethod
    def pool_size(cfg: BaselineConfig) -> int:
        steps, every = cfg.surrogate_steps, cfg.metacloak_interval
        return len({s for s in range(steps) if s == 0 or (s + 1) % every == 0})

    @classmethod
    def planned_counts(cls, cfg: BaselineConfig, num_images: int) -> dict[str, int]:
        c = cfg.with_defaults(cls.defaults())
        unrolls = (
            c.num_rounds * cls.pool_size(c) * (c.metacloak_interval // c.metacloak_advance_steps)
        )
        pgd_steps = unrolls * c.steps
        passes = pgd_steps * c.eot_samples + c.surrogate_steps + unrolls * c.metacloak_advance_steps
        return {"pgd_steps": pgd_steps, "gradient_passes": passes}
