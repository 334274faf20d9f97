"""G_rho: encode -> invert -> shift -> denoise -> decode, and the 8-bit budget promise.

``output="decode"`` is the paper's x' = decode(z0'); its fidelity is capped by the VAE.
``output="residual"`` is x' = x + decode(z0') - decode(z0_hat), with z0_hat the unshifted
trajectory's result: with rho = 0 it returns x exactly, so the budget measures only the
protective change, which is still shaped by the latent trajectory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from continual_ldu.method.objectives import distance


@dataclass
class Prepared:
    """What the protector precomputes without gradients for a batch of clean images."""

    clean: torch.Tensor  # x in [-1, 1]
    start: torch.Tensor  # z_T = Phi^invert(E(x))
    reference: torch.Tensor | None  # decode(z0_hat), the unshifted output (residual mode)


class Protector:
    """The protection map around a base model, a trajectory and a perturbation net."""

    def __init__(self, model, trajectory, perturbation_net, output: str = "residual") -> None:
        self.model, self.trajectory, self.net, self.output = (
            model,
            trajectory,
            perturbation_net,
            output,
        )

    @torch.no_grad()
    def prepare(self, images: torch.Tensor, generator: torch.Generator | None = None) -> Prepared:
        """Encode and invert once; these do not depend on rho, so training can cache them."""
        start = self.trajectory.invert(self.model.encode(images), generator)
        reference = None
        if self.output == "residual":
            reference = self.model.decode(self.trajectory.denoise(start)).float()
        return Prepared(images, start, reference)

    def shifted_latents(self, prepared: Prepared) -> torch.Tensor:
        """z0' = Phi^denoise(z_T + rho(z_T)), differentiable in rho."""
        dtype = next(self.net.parameters()).dtype  # works for DDP-wrapped nets too
        return self.trajectory.denoise(self.net(prepared.start.to(dtype)))

    def compose(self, prepared: Prepared, latents: torch.Tensor) -> torch.Tensor:
        """x' from z0' (unclamped, in [-1, 1] units)."""
        decoded = self.model.decode(latents).float()
        if self.output == "residual":
            return prepared.clean + decoded - prepared.reference
        return decoded

    def __call__(self, prepared: Prepared) -> tuple[torch.Tensor, torch.Tensor]:
        """(x', z0') for a prepared batch."""
        latents = self.shifted_latents(prepared)
        return self.compose(prepared, latents), latents


def quantize(images: torch.Tensor) -> torch.Tensor:
    """Round [-1, 1] images to the 8-bit grid exactly as saving to PNG does, back in [-1, 1]."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


def enforce_budget(
    clean: torch.Tensor,
    protected: torch.Tensor,
    kind: str,
    budget: float,
    lpips_fn=None,
    num_bisections: int = 16,
) -> tuple[torch.Tensor, np.ndarray]:
    """Keep the promise on the saved 8-bit file: pull each over-budget image back toward x.

    Returns the quantised images and each image's factor ``a`` in x + a (x' - x) (1.0 where the
    budget already held). ``a`` is the largest value that a bisection finds inside the budget on
    the *quantised* image; since a = 0 gives x itself (x is 8-bit), a solution always exists.
    """
    clean_q = quantize(clean)
    out = quantize(protected)
    scales = np.ones(len(clean))
    over = distance(out, clean_q, kind, lpips_fn) > budget
    for i in torch.nonzero(over).flatten().tolist():
        x, delta = clean_q[i : i + 1], protected[i : i + 1] - clean_q[i : i + 1]
        low, high = 0.0, 1.0
        for _ in range(num_bisections):
            mid = (low + high) / 2
            inside = distance(quantize(x + mid * delta), x, kind, lpips_fn).item() <= budget
            low, high = (mid, high) if inside else (low, mid)
        out[i : i + 1], scales[i] = quantize(x + low * delta), low
    return out, scales
