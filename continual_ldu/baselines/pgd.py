"""Projected sign-gradient descent/ascent in pixel space: the engine every pixel-space peer runs on.

With images x in [0, 1], an L-inf radius eps and a step alpha (both given in x/255):
```
x'_0     = x (+ U(-eps, eps) with random_start)
x'_{k+1} = Proj_{|x' - x| <= eps, x' in [0, 1]} ( x'_k +/- alpha_k * sign(E_T grad L(T(x'_k))) )
```
``+`` ascends the peer's loss, ``-`` descends it (PhotoGuard, SDS-). ``E_T`` is expectation over
transformation (EOT): the gradient is averaged over ``eot_samples`` random draws of the listed
transforms (MetaCloak's Gaussian blur and horizontal flip). A mask (1 where pixels may change)
zeroes the perturbation elsewhere. ``quantize_to_budget`` then rounds the result to the 8-bit grid
and clips the difference in whole grey levels, so ``max |saved - x| * 255 <= eps`` holds exactly on
the saved PNG, not only before rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torchvision.transforms import functional as TF

EOT_TRANSFORMS = ("hflip", "gaussian_blur")

# (images in [0, 1], generator) -> scalar loss; its gradient drives the step, its value the trace.
LossFn = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]


@dataclass(frozen=True)
class PGDConfig:
    """One PGD run; budgets in x/255 of [0, 1] (a [-1, 1] repo's ``0.05`` is 6.375/255)."""

    eps: float
    step_size: float
    steps: int
    random_start: bool = False
    ascend: bool = True
    step_decay: bool = False  # alpha_k decays linearly to alpha/100 (PhotoGuard's schedule)
    eot_transforms: tuple[str, ...] = ()
    eot_samples: int = 1
    blur_kernel: int = 7  # odd side of the EOT Gaussian blur (sigma ~ U(0.1, 2), torchvision's)

    def step_at(self, step: int) -> float:
        """alpha_k on the [0, 1] scale."""
        alpha = self.step_size / 255
        if self.step_decay:
            alpha -= (alpha - alpha / 100) / self.steps * step
        return alpha


def random_transform(
    images: torch.Tensor, names: tuple[str, ...], generator: torch.Generator | None, kernel: int
) -> torch.Tensor:
    """One differentiable draw of the EOT transforms, applied in the listed order."""
    for name in names:
        if name == "hflip":  # torchvision's RandomHorizontalFlip(p=0.5) on the batch
            if float(torch.rand((), generator=generator)) < 0.5:
                images = images.flip(-1)
        elif name == "gaussian_blur":  # torchvision's GaussianBlur(kernel): sigma ~ U(0.1, 2.0)
            sigma = 0.1 + 1.9 * float(torch.rand((), generator=generator))
            images = TF.gaussian_blur(images, [kernel, kernel], [sigma, sigma])
        else:
            raise ValueError(f"unknown EOT transform {name!r}; use {EOT_TRANSFORMS}")
    return images


def project(
    adv: torch.Tensor, clean: torch.Tensor, eps: float, mask: torch.Tensor | None
) -> torch.Tensor:
    """Onto the L-inf ball of radius ``eps`` (on [0, 1]) around ``clean``, the mask and [0, 1]."""
    delta = (adv - clean).clamp(-eps, eps)
    if mask is not None:
        delta = delta * mask
    return (clean + delta).clamp(0, 1)


def pgd(
    clean: torch.Tensor,
    loss_fn: LossFn,
    cfg: PGDConfig,
    generator: torch.Generator | None = None,
    start: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    after_step: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, list[float]]:
    """Run ``cfg.steps`` projected sign steps from ``start`` (default ``clean``); returns the
    perturbed images (not yet on the 8-bit grid) and the loss before each step.

    ``loss.backward()`` (not ``autograd.grad``) is used so that a surrogate trained jointly with
    the images (CAAT) gets its parameter gradients from the same pass; ``after_step`` applies them.
    Frozen models accumulate nothing.
    """
    eps = cfg.eps / 255
    adv = (clean if start is None else start).detach().clone()
    if cfg.random_start:
        adv = adv + (torch.rand(adv.shape, generator=generator).to(adv) * 2 - 1) * eps
    adv = project(adv, clean, eps, mask)
    sign = 1.0 if cfg.ascend else -1.0
    trace = []
    for step in range(cfg.steps):
        adv.requires_grad_(True)
        losses = [
            loss_fn(
                random_transform(adv, cfg.eot_transforms, generator, cfg.blur_kernel), generator
            )
            for _ in range(cfg.eot_samples)
        ]
        loss = torch.stack(losses).mean()
        loss.backward()
        with torch.no_grad():
            moved = adv + sign * cfg.step_at(step) * adv.grad.sign()
            adv = project(moved, clean, eps, mask)
        trace.append(float(loss.detach()))
        if after_step is not None:
            after_step(step)
    return adv.detach(), trace


def quantize_to_budget(
    adv: torch.Tensor, clean: torch.Tensor, eps: float, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The published image on the 8-bit grid, within ``floor(eps)`` grey levels of ``clean``.

    Rounding alone could add half a level to a perturbation sitting on the ball's edge; clipping
    the integer difference makes ``max |saved - x| * 255 <= eps`` exact for the saved file. A masked
    pixel keeps the clean image's (rounded) value.
    """
    levels = math.floor(eps + 1e-6)
    clean_q = (clean * 255).round()
    delta = ((adv.clamp(0, 1) * 255).round() - clean_q).clamp(-levels, levels)
    if mask is not None:
        delta = delta * mask
    return (clean_q + delta).clamp(0, 255) / 255
