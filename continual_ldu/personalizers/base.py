"""What every personalizer shares: its config, the conditioned noise prediction, and the loss.

A personalizer is the attacker's fine-tuning method (and the owner's surrogate of it). It holds
the modules it changes and exposes the noise-matching loss on a batch of latents; the engine owns
the optimizer. Defaults follow the diffusers example recipes (``examples/textual_inversion``,
``examples/dreambooth``): the per-method learning rate applies when ``lr`` is left empty.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from continual_ldu.method.objectives import personalization_loss

DEFAULT_LR = {"textual_inversion": 5e-4, "dreambooth_lora": 1e-4, "dreambooth": 5e-6}


@dataclass
class PersonalizerConfig:
    """One schema for the catalog; each method reads the fields it needs."""

    name: Literal["textual_inversion", "dreambooth_lora", "dreambooth"] = "textual_inversion"
    num_steps: int = 500
    lr: float | None = None  # None: the method's diffusers-example default (DEFAULT_LR)
    batch_size: int = 1
    weight_decay: float = 1e-2
    instance_prompt: str = "a photo of {token} person"
    token: str = "sks"  # DreamBooth's rare identifier
    placeholder_token: str = "<sks>"  # Textual Inversion's new token
    initializer_token: str = "person"
    rank: int = 4
    lora_alpha: int | None = None  # None: equal to rank, as the diffusers example
    target_modules: list[str] = field(default_factory=lambda: ["to_k", "to_q", "to_v", "to_out.0"])
    train_text_encoder: bool = False
    prior_preservation: bool = False
    class_prompt: str = "a photo of a person"
    num_class_images: int = 100
    class_inference_steps: int = 25
    prior_loss_weight: float = 1.0
    seed: int = 0

    def validate(self) -> list[str]:
        errors = []
        if "{token}" not in self.instance_prompt:
            errors.append("instance_prompt must contain '{token}' where the identifier goes")
        if self.num_steps < 0 or self.batch_size < 1 or self.rank < 1:
            errors.append("num_steps must be >= 0, batch_size and rank >= 1")
        if self.prior_preservation and self.name != "dreambooth":
            errors.append("prior_preservation is only used by name=dreambooth")
        return errors

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.name]


class Personalizer(nn.Module):
    """Base: a (possibly fine-tuned) UNet conditioned on the instance prompt's text states."""

    def __init__(self, model, cfg: PersonalizerConfig) -> None:
        super().__init__()
        self.base, self.cfg = model, cfg
        self.unet = model.unet
        self.text_encoder = None  # None: the base model's (frozen) text encoder
        self.class_latents: torch.Tensor | None = None

    @property
    def prompt(self) -> str:
        return self.cfg.instance_prompt.format(token=self.cfg.token)

    def prompt_states(self, prompts: list[str]) -> torch.Tensor:
        """Cross-attention states for prompts, through this personalizer's text path."""
        return self.base.encode_prompt(prompts, self.text_encoder)

    def predict_noise_for(self, prompt: str):
        """eps_theta(noisy, t; prompt) as a function, differentiable in ``noisy``."""

        def predict(noisy: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            states = self.prompt_states([prompt]).expand(len(noisy), -1, -1)
            return self.unet(noisy.to(self.unet.dtype), t, encoder_hidden_states=states).sample

        return predict

    def loss(
        self, latents: torch.Tensor, generator: torch.Generator | None = None, num_samples: int = 1
    ) -> torch.Tensor:
        """L_pers on ``latents`` for the instance prompt (what the max step maximises)."""
        predict = self.predict_noise_for(self.prompt)
        return personalization_loss(predict, latents, self.base.scheduler, generator, num_samples)

    def training_loss(
        self, latents: torch.Tensor, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """The attacker's objective: instance loss, plus the prior term where it applies."""
        instance = self.loss(latents, generator)
        if self.class_latents is None:
            return {"loss": instance, "instance": instance}
        index = torch.randint(0, len(self.class_latents), (len(latents),), generator=generator)
        prior = personalization_loss(
            self.predict_noise_for(self.cfg.class_prompt),
            self.class_latents[index].to(latents.device),
            self.base.scheduler,
            generator,
        )
        total = instance + self.cfg.prior_loss_weight * prior
        return {"loss": total, "instance": instance, "prior": prior}

    def forward(
        self,
        latents: torch.Tensor,
        generator: torch.Generator | None = None,
        objective: str = "training",
        num_samples: int = 1,
    ) -> dict[str, torch.Tensor]:
        """``training_loss`` (the attacker's step), or the instance ``loss`` (what rho maximises).

        DDP and DeepSpeed wrap ``forward``, and ``torch.func.functional_call`` swaps parameters
        around it, so both losses are reachable through here.
        """
        if objective == "instance":
            return {"loss": self.loss(latents, generator, num_samples)}
        return self.training_loss(latents, generator)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]
