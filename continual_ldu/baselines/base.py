"""What every pixel-space baseline shares: its config, the ``protect`` contract, loss helpers.

A baseline takes images in [-1, 1] (the repo's convention), works on [0, 1] internally, and
returns the published images on the 8-bit grid within its L-inf budget (``pgd.quantize_to_budget``).
Every knob of :class:`BaselineConfig` left at ``None`` takes the peer's own default (the class's
``DEFAULTS``, which cite the peer's repository), so ``BaselineConfig(name="aspl")`` is ASPL as
published, and a test or a CPU bench overrides only the step counts.

After ``protect``, ``last_trace`` holds the attacked loss before every PGD step (all rounds), and
``last_objective(images)`` evaluates the loss of the final PGD phase (with its final surrogate) on
any images: ``ascend`` says whether the peer drives it up or down.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

from continual_ldu.baselines.pgd import EOT_TRANSFORMS, LossFn, PGDConfig, pgd, quantize_to_budget
from continual_ldu.method.objectives import personalization_loss

BaselineName = Literal[
    "advdm",
    "fsmg",
    "aspl",
    "aspl_lora",
    "photoguard",
    "mist",
    "sds",
    "sds_minus",
    "pid",
    "metacloak",
    "simac",
    "caat",
]


@dataclass
class BaselineConfig:
    """One schema for the catalog. ``None`` = the peer's default; budgets in x/255 of [0, 1]."""

    name: BaselineName | None = None  # None only where the owner sets it (protect.method)
    eps: float | None = None  # L-inf radius, x/255
    step_size: float | None = None  # PGD step, x/255
    steps: int | None = None  # PGD steps (per round / per unroll for alternating peers)
    random_start: bool | None = None
    eot_transforms: list[str] | None = None  # of pgd.EOT_TRANSFORMS, applied in order
    eot_samples: int | None = None
    blur_kernel: int | None = None
    prompt: str | None = None  # the condition the peer attacks
    num_rounds: int | None = None  # ASPL-style alternations (MetaCloak: trials over the pool)
    surrogate_steps: int | None = None  # surrogate fine-tuning steps (per round, or FSMG's fit)
    surrogate_lr: float | None = None
    surrogate_batch_size: int | None = None
    train_text_encoder: bool | None = None
    prior_preservation: bool | None = None  # DreamBooth's class-prior term in surrogate training
    class_prompt: str = "a photo of person"
    num_class_images: int = 200
    class_inference_steps: int = 25
    prior_loss_weight: float = 1.0
    lora_rank: int = 4  # aspl_lora
    mist_semantic_weight: float = 1e4  # Mist's fusion "rate": semantic vs textural loss
    photoguard_target: Literal["gray", "zero"] = "gray"
    metacloak_interval: int | None = None  # surrogate pool snapshot interval, steps
    metacloak_advance_steps: int | None = None  # surrogate steps between unrolled PGD calls
    simac_select_steps: int = 50  # greedy timestep-selection iterations per image
    simac_delta_t: int = 20  # half-width of the timestep window dropped per iteration
    simac_min_timesteps: int = 100  # selection stops once this many timesteps remain
    simac_feature_weight: float = 1.0  # weight of the decoder feature-interference term
    seed: int = 0  # class-image generation

    def validate(self) -> list[str]:
        errors = []
        if self.eps is not None and self.eps <= 0:
            errors.append("eps must be > 0 (x/255 of [0, 1])")
        if self.step_size is not None and self.step_size <= 0:
            errors.append("step_size must be > 0 (x/255 of [0, 1])")
        counts = ("steps", "num_rounds", "surrogate_steps", "metacloak_advance_steps")
        errors += [f"{k} must be >= 0" for k in counts if (getattr(self, k) or 0) < 0]
        unknown = sorted(set(self.eot_transforms or ()) - set(EOT_TRANSFORMS))
        if unknown:
            errors.append(f"eot_transforms: unknown {unknown}; use some of {list(EOT_TRANSFORMS)}")
        if self.blur_kernel is not None and (self.blur_kernel < 1 or self.blur_kernel % 2 == 0):
            errors.append("blur_kernel must be a positive odd integer")
        if (self.eot_samples or 1) < 1 or (self.surrogate_batch_size or 1) < 1:
            errors.append("eot_samples and surrogate_batch_size must be >= 1")
        if (self.metacloak_interval or 1) < 1:
            errors.append("metacloak_interval must be >= 1")
        return errors + self.unused_knobs()

    def unused_knobs(self) -> list[str]:
        """Peer knobs set for a peer that has no such knob (a silent no-op otherwise)."""
        if self.name is None:
            return []
        from continual_ldu.baselines import BASELINES  # the catalog imports this module

        known = set(BASELINES[self.name].defaults())
        return [
            f"{f.name} is not a knob of {self.name} (its knobs: {', '.join(sorted(known))})"
            for f in dataclasses.fields(self)
            if f.default is None and f.name != "name" and getattr(self, f.name) is not None
            if f.name not in known
        ]

    def prior_settings(self) -> dict[str, object]:
        """What the class-prior latents depend on (the engine's cache key)."""
        keys = ("class_prompt", "num_class_images", "class_inference_steps", "seed")
        return {k: getattr(self, k) for k in keys}

    def with_defaults(self, defaults: dict[str, object]) -> BaselineConfig:
        """A copy with every ``None`` knob in ``defaults`` replaced by the peer's default."""
        return dataclasses.replace(
            self, **{k: v for k, v in defaults.items() if getattr(self, k) is None}
        )


# Engine-level knobs every PGD peer accepts; a peer's DEFAULTS override them.
PGD_DEFAULTS: dict[str, object] = {
    "random_start": False,
    "eot_transforms": [],
    "eot_samples": 1,
    "blur_kernel": 7,
}


class Baseline:
    """Base: ``protect`` wraps the peer's ``attack`` (on [0, 1]) with the 8-bit budget promise."""

    DEFAULTS: ClassVar[dict[str, object]] = {}
    ascend: ClassVar[bool] = True  # the direction the peer drives its attacked loss
    uses_reference: ClassVar[bool] = False  # trains a surrogate on the owner's clean set A
    step_decay: ClassVar[bool] = False

    def __init__(self, model, cfg: BaselineConfig) -> None:
        self.model = model
        self.cfg = cfg.with_defaults(self.defaults())
        self.class_latents: torch.Tensor | None = None  # prior latents; the engine caches them
        self.last_trace: list[float] = []
        self._last_loss: LossFn | None = None

    @classmethod
    def defaults(cls) -> dict[str, object]:
        return {**PGD_DEFAULTS, **cls.DEFAULTS}

    @property
    def needs_class_latents(self) -> bool:
        return bool(self.cfg.prior_preservation)

    def protect(
        self,
        images: torch.Tensor,
        generator: torch.Generator | None = None,
        mask: torch.Tensor | None = None,
        reference: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Protected copies of [-1, 1] ``images`` on the 8-bit grid, within ``eps`` of them.

        ``mask`` (1 where pixels may change; (B or 1, 1, H, W)) confines the perturbation;
        ``reference`` is the owner's clean set for peers that fit a surrogate (default: ``images``).
        """
        device = self.model.device
        clean = ((images.detach().float().to(device) + 1) / 2).clamp(0, 1)
        ref = clean if reference is None else ((reference.float().to(device) + 1) / 2).clamp(0, 1)
        mask = None if mask is None else (mask.to(device) > 0.5).float()
        self.last_trace, self._last_loss = [], None
        with torch.enable_grad():
            adv = self.attack(clean, generator, mask, ref)
        return quantize_to_budget(adv, clean, self.cfg.eps, mask) * 2 - 1

    def attack(
        self,
        clean: torch.Tensor,
        generator: torch.Generator | None,
        mask: torch.Tensor | None,
        reference: torch.Tensor,
    ) -> torch.Tensor:
        """The peer's algorithm on [0, 1] images; returns the (unrounded) perturbed images."""
        raise NotImplementedError

    def pgd_config(self) -> PGDConfig:
        c = self.cfg
        return PGDConfig(
            eps=c.eps,
            step_size=c.step_size,
            steps=c.steps,
            random_start=c.random_start,
            ascend=self.ascend,
            step_decay=self.step_decay,
            eot_transforms=tuple(c.eot_transforms),
            eot_samples=c.eot_samples,
            blur_kernel=c.blur_kernel,
        )

    def run_pgd(
        self,
        clean: torch.Tensor,
        loss_fn: LossFn,
        generator: torch.Generator | None,
        mask: torch.Tensor | None,
        start: torch.Tensor | None = None,
        after_step=None,
    ) -> torch.Tensor:
        """One PGD phase; appends to ``last_trace`` and remembers ``loss_fn`` as the objective."""
        adv, trace = pgd(clean, loss_fn, self.pgd_config(), generator, start, mask, after_step)
        self.last_trace += trace
        self._last_loss = loss_fn
        return adv

    @torch.no_grad()
    def last_objective(self, images: torch.Tensor, generator: torch.Generator | None) -> float:
        """The final PGD phase's loss on [-1, 1] ``images`` (paired draws via ``generator``)."""
        if self._last_loss is None:
            raise ValueError("last_objective needs a protect() call with at least one PGD step")
        return float(self._last_loss((images.float().to(self.model.device) + 1) / 2, generator))

    @classmethod
    def planned_counts(cls, cfg: BaselineConfig, num_images: int) -> dict[str, int]:
        """PGD steps (the trace's length) and gradient passes (forward + backward through the
        attacked network, incl. EOT samples and surrogate steps) that ``cfg`` asks for."""
        c = cfg.with_defaults(cls.defaults())
        return {"pgd_steps": c.steps, "gradient_passes": c.steps * c.eot_samples}

    # -- shared pieces ------------------------------------------------------------------------

    def encode(self, images01: torch.Tensor) -> torch.Tensor:
        """Scaled VAE latents (posterior mean) of [0, 1] images, differentiable."""
        return self.model.encode(images01 * 2 - 1).float()

    @torch.no_grad()
    def text_states(self, prompt: str) -> torch.Tensor:
        return self.model.encode_prompt([prompt])

    def base_noise_loss(self, prompt: str) -> LossFn:
        """The base model's noise-matching loss L_pers (t uniform) on the images' latents."""
        states = self.text_states(prompt)

        def predict(noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            hidden = states.expand(len(noisy), -1, -1)
            return self.model.unet(
                noisy.to(self.model.dtype), t, encoder_hidden_states=hidden
            ).sample

        def loss(images01: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
            return personalization_loss(
                predict, self.encode(images01), self.model.scheduler, generator
            )

        return loss


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Switch off a surrogate's trainable parameters for a PGD phase (no wasted weight grads)."""
    trainable = [p for p in module.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


def mse_sum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Summed squared error (Mist's ``MSELoss(reduction='sum')``)."""
    return F.mse_loss(a.float(), b.float(), reduction="sum")
