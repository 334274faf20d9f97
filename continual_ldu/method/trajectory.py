"""Phi^invert and Phi^denoise: the few-step trajectory that the perturbation shifts.

Every map here denoises by affine steps ``z_k = a_k * z_{k+1} + b_k * f(z_{k+1}, s_{k+1})``:
  - ``ddim``: f is the base UNet's eps prediction with the empty prompt; a_k, b_k are DDIM's.
  - ``flow``: f is a rectified-flow velocity; a_k = 1, b_k = -(s_{k+1} - s_k) (Euler).
  - ``noise``: the released code's stochastic forward noising to strength * T, then DDIM down.
Deterministic inversion solves each step backwards by fixed-point iteration,
``z_{k+1} <- (z_k - b_k f(z_{k+1})) / a_k``, started from the usual explicit guess (f at z_k).
Plain DDIM inversion is the zero-iteration case; a few iterations make denoise(invert(z)) ~ z.
Gradients flow through ``denoise`` (optionally checkpointed per step); ``invert`` is no-grad.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch.utils.checkpoint import checkpoint

from continual_ldu.models.flow_denoiser import FlowConfig, velocity
from continual_ldu.seeding import seeded_randn

Field = Callable[[torch.Tensor, float], torch.Tensor]


@dataclass
class TrajectoryConfig:
    """Which trajectory map to use and its step grid."""

    name: Literal["ddim", "flow", "noise"] = "ddim"
    num_steps: int = 1
    strength: float = 0.5  # the trajectory ends at noise level strength * T
    fixed_point_iters: int = 4
    gradient_checkpointing: bool = False
    flow: FlowConfig = field(default_factory=FlowConfig)

    def validate(self) -> list[str]:
        errors = []
        if not 1 <= self.num_steps <= 4:
            errors.append(f"num_steps must be in 1..4 (few-step trajectory), got {self.num_steps}")
        if not 0.0 < self.strength <= 1.0:
            errors.append(f"strength must be in (0, 1], got {self.strength}")
        if self.fixed_point_iters < 0:
            errors.append("fixed_point_iters must be >= 0")
        return errors


class AffineTrajectory:
    """A few-step trajectory of affine steps around a learned field (see the module docstring)."""

    def __init__(
        self,
        field_fn: Field,
        times: list[float],
        coefficients: list[tuple[float, float]],
        fixed_point_iters: int = 4,
        gradient_checkpointing: bool = False,
    ) -> None:
        assert len(times) == len(coefficients) + 1
        self.field_fn, self.times, self.coefficients = field_fn, times, coefficients
        self.fixed_point_iters = fixed_point_iters
        self.gradient_checkpointing = gradient_checkpointing

    def _step_down(self, z: torch.Tensor, k: int) -> torch.Tensor:
        a, b = self.coefficients[k]
        return a * z + b * self.field_fn(z, self.times[k + 1])

    def denoise(self, latents: torch.Tensor) -> torch.Tensor:
        """Phi^denoise: z_T -> z_0, differentiable in ``latents``."""
        z = latents
        for k in reversed(range(len(self.coefficients))):
            if self.gradient_checkpointing and torch.is_grad_enabled():
                z = checkpoint(self._step_down, z, k, use_reentrant=False)
            else:
                z = self._step_down(z, k)
        return z

    @torch.no_grad()
    def invert(
        self, latents: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Phi^invert: z_0 -> z_T, deterministic, solving each denoising step backwards."""
        z = latents
        for k, (a, b) in enumerate(self.coefficients):
            target = z
            z = (target - b * self.field_fn(target, self.times[k])) / a
            for _ in range(self.fixed_point_iters):
                z = (target - b * self.field_fn(z, self.times[k + 1])) / a
        return z


class NoisingTrajectory(AffineTrajectory):
    """The released code's map: random forward noising to strength * T, then DDIM down."""

    def __init__(self, *args, end_alpha_bar: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.end_alpha_bar = end_alpha_bar

    @torch.no_grad()
    def invert(
        self, latents: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        noise = seeded_randn(latents.shape, generator, latents)
        return self.end_alpha_bar**0.5 * latents + (1 - self.end_alpha_bar) ** 0.5 * noise


def ddim_grid(alphas_cumprod: torch.Tensor, strength: float, num_steps: int):
    """DDIM timesteps 0 < t_1 < ... < t_n = strength * (T - 1), and each step's (a_k, b_k)."""
    num_train = len(alphas_cumprod)
    end = round(strength * (num_train - 1))
    times = [round(end * k / num_steps) for k in range(num_steps + 1)]
    # The clean end of the trajectory has alpha_bar = 1 exactly (z_0 is the data latent).
    abar = [1.0] + [float(alphas_cumprod[t]) for t in times[1:]]
    coefficients = []
    for k in range(num_steps):
        low, high = abar[k], abar[k + 1]
        a = (low / high) ** 0.5
        b = (1 - low) ** 0.5 - (low * (1 - high) / high) ** 0.5
        coefficients.append((a, b))
    return [float(t) for t in times], coefficients, abar[-1]


def unet_eps_field(unet, empty_prompt_states: torch.Tensor) -> Field:
    """The base UNet's noise prediction under the empty prompt, as a trajectory field."""

    def field_fn(z: torch.Tensor, t: float) -> torch.Tensor:
        states = empty_prompt_states.expand(z.shape[0], -1, -1)
        timestep = torch.full((z.shape[0],), t, device=z.device)
        return unet(z.to(unet.dtype), timestep, encoder_hidden_states=states).sample.to(z.dtype)

    return field_fn


def build_trajectory(cfg: TrajectoryConfig, model, flow_model=None) -> AffineTrajectory:
    """Construct the named trajectory around a loaded base model (and a fitted flow model)."""
    common = {
        "fixed_point_iters": cfg.fixed_point_iters,
        "gradient_checkpointing": cfg.gradient_checkpointing,
    }
    if cfg.name == "flow":
        if flow_model is None:
            raise ValueError("trajectory.name=flow needs a fitted flow model (run the flow stage)")
        times = [cfg.strength * k / cfg.num_steps for k in range(cfg.num_steps + 1)]
        coefficients = [(1.0, -(times[k + 1] - times[k])) for k in range(cfg.num_steps)]
        field_fn = lambda z, s: velocity(flow_model, z, s)  # noqa: E731
        return AffineTrajectory(field_fn, times, coefficients, **common)
    with torch.no_grad():
        empty = model.encode_prompt([""])
    field_fn = unet_eps_field(model.unet, empty)
    times, coefficients, end_abar = ddim_grid(
        model.scheduler.alphas_cumprod, cfg.strength, cfg.num_steps
    )
    if cfg.name == "noise":
        return NoisingTrajectory(field_fn, times, coefficients, end_alpha_bar=end_abar, **common)
    return AffineTrajectory(field_fn, times, coefficients, **common)
