"""The objective: L(rho) = -L_pers(z0'; surrogate) + lambda * relu(d(x', x) / budget - 1).

``personalization_loss`` (L_pers) is the diffusion noise-matching loss that every personalizer
minimises and the protection maximises. The budget hinge is written relative to the budget
(``d / budget - 1``) so that lambda is dimensionless: lambda = 1 means "one unit of L_pers per
budget overrun", whatever the budget's units; the paper's raw-MSE hinge with lambda = 1 barely
binds at MSE budgets near 1e-3, which is why it needed a post-hoc clamp. Dual ascent
(``lambda <- max(0, lambda + lr_dual * (d / budget - 1))``) meets the budget without tuning.
Budgets are given in the units people compare: PSNR in dB, L-inf in x/255 of [0, 1], LPIPS.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from continual_ldu.seeding import seeded_randint, seeded_randn

NoisePredictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class ObjectiveConfig:
    """The Lagrangian's terms and the imperceptibility budget."""

    output: Literal["residual", "decode"] = "residual"
    roundtrip: bool = False  # L_pers on encode(x') (what the attacker encodes) or on z0'
    budget: Literal["mse", "linf", "lpips"] = "mse"
    budget_psnr_db: float = 36.0  # mse budget, as PSNR on [0, 1]; 36 dB ~ the paper's (8/255)^2
    budget_linf: float = 8.0  # in x/255 of [0, 1]
    budget_lpips: float = 0.05
    lpips_weights: str | None = None  # a torchvision AlexNet state dict; no download at run time
    lambda_mode: Literal["fixed", "dual"] = "dual"
    lambda_init: float = 1.0
    lr_dual: float = 0.05
    num_noise_samples: int = 1  # Monte-Carlo samples of (t, eps) per step

    def validate(self) -> list[str]:
        errors = []
        if self.budget == "lpips" and not self.lpips_weights:
            errors.append(
                "lpips_weights: budget=lpips needs a path to AlexNet weights "
                "(torchvision alexnet state dict); none is downloaded at run time"
            )
        if self.budget_psnr_db <= 0 or self.budget_linf <= 0 or self.budget_lpips <= 0:
            errors.append("budgets must be positive")
        if self.lambda_init < 0 or self.lr_dual < 0:
            errors.append("lambda_init and lr_dual must be >= 0")
        return errors

    @property
    def budget_value(self) -> float:
        """The budget in the units of ``distance``: MSE on [0,1], L-inf on [0,1], or LPIPS."""
        if self.budget == "mse":
            return psnr_to_mse(self.budget_psnr_db)
        return self.budget_linf / 255 if self.budget == "linf" else self.budget_lpips


def psnr_to_mse(psnr_db: float) -> float:
    """MSE on [0, 1] images that gives this PSNR."""
    return 10 ** (-psnr_db / 10)


def mse_to_psnr(mse: float) -> float:
    """PSNR in dB of an MSE on [0, 1] images (inf for identical images)."""
    return math.inf if mse <= 0 else -10 * math.log10(mse)


def personalization_loss(
    predict_noise: NoisePredictor,
    latents: torch.Tensor,
    scheduler,
    generator: torch.Generator | None = None,
    num_samples: int = 1,
    reduction: str = "mean",
) -> torch.Tensor:
    """L_pers = E_{t,eps} ||eps_theta(sqrt(abar_t) z + sqrt(1 - abar_t) eps, t) - eps||^2.

    ``predict_noise(noisy, t)`` is the personalizer's conditioned UNet; t is uniform over the
    scheduler's training steps, as in the diffusers DreamBooth and TI examples.
    """
    losses = []
    for _ in range(num_samples):
        noise = seeded_randn(latents.shape, generator, latents)
        t = seeded_randint(
            scheduler.config.num_train_timesteps, len(latents), generator, latents.device
        )
        noisy = scheduler.add_noise(latents, noise, t)
        error = F.mse_loss(predict_noise(noisy, t).float(), noise.float(), reduction="none")
        losses.append(error.flatten(1).mean(1))
    per_item = torch.stack(losses).mean(0)
    return per_item.mean() if reduction == "mean" else per_item


def distance(
    protected: torch.Tensor,
    clean: torch.Tensor,
    kind: str,
    lpips_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Per-image d(x', x) for images in [-1, 1]: MSE or L-inf on the [0, 1] scale, or LPIPS."""
    diff = (protected - clean) / 2  # [-1, 1] -> [0, 1] units
    if kind == "mse":
        return diff.pow(2).flatten(1).mean(1)
    if kind == "linf":
        return diff.abs().flatten(1).amax(1)
    if lpips_fn is None:
        raise ValueError("budget=lpips needs an LPIPS network (objective.lpips_weights)")
    return lpips_fn(protected, clean).flatten()


def budget_penalty(dist: torch.Tensor, budget: float) -> torch.Tensor:
    """mean_i relu(d_i / budget - 1): zero inside the budget, linear outside."""
    return F.relu(dist / budget - 1).mean()


def lagrangian(pers_loss: torch.Tensor, penalty: torch.Tensor, lam: float) -> torch.Tensor:
    """What the perturbation net minimises: -L_pers + lambda * penalty."""
    return -pers_loss + lam * penalty


def dual_update(lam: float, dist: torch.Tensor, budget: float, lr_dual: float) -> float:
    """Dual ascent on lambda from the batch's mean relative overrun."""
    overrun = float((dist / budget).mean()) - 1
    return max(0.0, lam + lr_dual * overrun)


def build_lpips(weights_path: str, device: torch.device):
    """LPIPS(alex) with the AlexNet backbone read from a local state dict, no download."""
    import lpips  # heavy import, only when asked for

    net = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    features = {
        k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")
    }
    slices = [net.net.slice1, net.net.slice2, net.net.slice3, net.net.slice4, net.net.slice5]
    for sl in slices:
        sl.load_state_dict(
            {k: v for k, v in features.items() if k.split(".")[0] in sl._modules}, strict=False
        )
    net.requires_grad_(False)
    return net.eval().to(device)
