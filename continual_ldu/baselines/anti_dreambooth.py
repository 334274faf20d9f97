"""Anti-DreamBooth (Van Le et al., ICCV 2023): FSMG, ASPL, and ASPL with a LoRA surrogate.

Source: VinAIResearch/Anti-DreamBooth ``attacks/fsmg.py``, ``attacks/aspl.py``,
``attacks/aspl_lora.py`` and ``scripts/attack_with_{fsmg,aspl}.sh``. All three ascend a
DreamBooth surrogate's noise-matching loss for "a photo of sks person" by PGD with eps 0.05 and
step 5e-3 on [-1, 1] (6.375/255 and 0.6375/255 here); the surrogate is full DreamBooth (UNet and
text encoder, lr 5e-7, prior preservation with "a photo of person") fitted on the owner's clean
set A:

  FSMG       fit the surrogate on set A (1000 steps, batch 2), then 100 PGD steps against it.
  ASPL       50 rounds of: f' = copy(f); 3 steps of f' on clean set A; 6 PGD steps on set B
             against f'; 3 steps of f on the perturbed set B.
  aspl_lora  one LoRA surrogate (rank 4, lr 5e-6, UNet attention projections) trained in place:
             20 rounds of 10 steps on set A, 10 PGD steps (step 1/255 on [-1, 1] = 0.5/255),
             10 steps on the perturbed set B.

The surrogates are the project's own personalizers (``personalizers/dreambooth*.py``), which copy
the modules they train, so the shared base model is never changed. ``fit`` is the peers'
``train_one_epoch``: a fresh AdamW (weight decay 1e-2) per call, gradient-norm clipping at 1,
and the images taken in order (``dataset[step % n]``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from continual_ldu.baselines.base import Baseline, BaselineConfig, frozen
from continual_ldu.baselines.pgd import LossFn
from continual_ldu.personalizers import Personalizer, PersonalizerConfig
from continual_ldu.personalizers.dreambooth import DreamBooth, generate_class_images
from continual_ldu.personalizers.dreambooth_lora import DreamBoothLoRA

DREAMBOOTH_DEFAULTS: dict[str, object] = {
    "eps": 6.375,
    "step_size": 0.6375,
    "surrogate_lr": 5e-7,
    "surrogate_batch_size": 1,
    "train_text_encoder": True,
    "prior_preservation": True,
    "prompt": "a photo of sks person",
}


class SurrogateBaseline(Baseline):
    """A peer that attacks a fine-tuned surrogate fitted on the owner's clean images."""

    uses_reference = True

    def personalizer_config(self, **method: object) -> PersonalizerConfig:
        """The surrogate's recipe: the peer's prompt, class prior and method-specific fields."""
        c = self.cfg
        return PersonalizerConfig(
            instance_prompt=c.prompt,
            class_prompt=c.class_prompt,
            prior_loss_weight=c.prior_loss_weight,
            seed=c.seed,
            **method,
        )

    def surrogate(self, generator: torch.Generator | None) -> Personalizer:
        """A DreamBooth copy of the base UNet (and text encoder), with the class prior's latents."""
        pcfg = self.personalizer_config(
            name="dreambooth", train_text_encoder=self.cfg.train_text_encoder
        )
        personalizer = DreamBooth(self.model, pcfg)
        personalizer.class_latents = self.class_latents if self.cfg.prior_preservation else None
        return personalizer

    def prepare_prior(self, resolution: int) -> None:
        """Class-prior latents: the engine's cached ones, else generated here (in memory)."""
        c = self.cfg
        if not c.prior_preservation or self.class_latents is not None:
            return
        images = generate_class_images(
            self.model,
            c.class_prompt,
            c.num_class_images,
            c.class_inference_steps,
            c.seed,
            resolution,
        )
        self.class_latents = self.latents((images.to(self.model.device) + 1) / 2)

    @torch.no_grad()
    def latents(self, images01: torch.Tensor, chunk: int = 16) -> torch.Tensor:
        return torch.cat(
            [self.encode(images01[i : i + chunk]) for i in range(0, len(images01), chunk)]
        )

    def fit(
        self,
        personalizer: Personalizer,
        latents: torch.Tensor,
        num_steps: int,
        generator: torch.Generator | None,
        before_step: Callable[[int], None] | None = None,
    ) -> None:
        """``num_steps`` of the surrogate's DreamBooth loss (with the prior term where set)."""
        c = self.cfg
        params = personalizer.trainable_parameters()
        optimizer = torch.optim.AdamW(params, lr=c.surrogate_lr, weight_decay=1e-2)
        for step in range(num_steps):
            if before_step is not None:
                before_step(step)
            index = [
                (step * c.surrogate_batch_size + i) % len(latents)
                for i in range(c.surrogate_batch_size)
            ]
            loss = personalizer.training_loss(latents[index], generator)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()

    def pgd_loss(self, personalizer: Personalizer, clean: torch.Tensor) -> LossFn:
        """The surrogate's instance loss (fresh t and noise per call) on the images' latents."""
        return lambda images01, generator: personalizer.loss(self.encode(images01), generator)

    def attack(self, clean, generator, mask, reference) -> torch.Tensor:
        self.prepare_prior(clean.shape[-1])
        return self.alternate(clean, generator, mask, reference)

    def alternate(self, clean, generator, mask, reference) -> torch.Tensor:
        raise NotImplementedError


class FSMG(SurrogateBaseline):
    """Fully-trained Surrogate Model Guidance: PGD against DreamBooth fitted on set A."""

    DEFAULTS = {
        **DREAMBOOTH_DEFAULTS,
        "steps": 100,
        "surrogate_steps": 1000,
        "surrogate_batch_size": 2,
    }

    def alternate(self, clean, generator, mask, reference) -> torch.Tensor:
        surrogate = self.surrogate(generator)
        self.fit(surrogate, self.latents(reference), self.cfg.surrogate_steps, generator)
        with frozen(surrogate):
            return self.run_pgd(clean, self.pgd_loss(surrogate, clean), generator, mask)

    @classmethod
    def planned_counts(cls, cfg: BaselineConfig, num_images: int) -> dict[str, int]:
        c = cfg.with_defaults(cls.defaults())
        return {
            "pgd_steps": c.steps,
            "gradient_passes": c.steps * c.eot_samples + c.surrogate_steps,
        }


class ASPL(SurrogateBaseline):
    """Alternating Surrogate and Perturbation Learning."""

    DEFAULTS = {**DREAMBOOTH_DEFAULTS, "steps": 6, "num_rounds": 50, "surrogate_steps": 3}
    copy_surrogate = True  # f' = copy(f) each round (full DreamBooth); LoRA trains f in place

    def alternate(self, clean, generator, mask, reference) -> torch.Tensor:
        c, ref_latents = self.cfg, self.latents(reference)
        model = self.surrogate(generator)
        surrogate = self.surrogate(generator) if self.copy_surrogate else model
        adv = clean
        for _ in range(c.num_rounds):
            if surrogate is not model:
                surrogate.load_state_dict(model.state_dict())
            self.fit(surrogate, ref_latents, c.surrogate_steps, generator)
            with frozen(surrogate):
                adv = self.run_pgd(clean, self.pgd_loss(surrogate, clean), generator, mask, adv)
            self.fit(model, self.latents(adv), c.surrogate_steps, generator)
        return adv

    @classmethod
    def planned_counts(cls, cfg: BaselineConfig, num_images: int) -> dict[str, int]:
        c = cfg.with_defaults(cls.defaults())
        pgd_steps = c.num_rounds * c.steps
        passes = pgd_steps * c.eot_samples + 2 * c.num_rounds * c.surrogate_steps
        return {"pgd_steps": pgd_steps, "gradient_passes": passes}


class ASPLLoRA(ASPL):
    """ASPL with one LoRA surrogate on the UNet's attention projections (fits 24 GB)."""

    DEFAULTS = {
        **DREAMBOOTH_DEFAULTS,
        "step_size": 0.5,
        "steps": 10,
        "num_rounds": 20,
        "surrogate_steps": 10,
        "surrogate_lr": 5e-6,
        "train_text_encoder": False,
    }
    copy_surrogate = False

    def surrogate(self, generator: torch.Generator | None) -> Personalizer:
        pcfg = self.personalizer_config(name="dreambooth_lora", rank=self.cfg.lora_rank)
        # The adapters' Gaussian init draws from the global RNG: seed it from the generator
        # inside a forked RNG, so the result is fixed by the seed and nothing else is disturbed.
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        device = self.model.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            personalizer = DreamBoothLoRA(self.model, pcfg)
        personalizer.class_latents = self.class_latents if self.cfg.prior_preservation else None
        return personalizer
