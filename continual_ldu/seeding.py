"""Seeded randomness that gives the same numbers on every device and batch layout."""

from __future__ import annotations

import random

import numpy as np
import torch


def make_generator(seed: int) -> torch.Generator:
    """A CPU generator: draws are made on the CPU and moved, so CUDA and CPU runs agree."""
    return torch.Generator("cpu").manual_seed(seed)


def seeded_randn(
    shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None, like: torch.Tensor
) -> torch.Tensor:
    """Standard normal noise drawn from ``generator`` on the CPU, placed like ``like``."""
    return torch.randn(tuple(shape), generator=generator).to(like.device, like.dtype)


def seeded_rand(n: int, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """Uniform [0, 1) draws, as ``seeded_randn``."""
    return torch.rand(n, generator=generator).to(like.device, like.dtype)


def seeded_randint(
    high: int, n: int, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """Integers in [0, high), as ``seeded_randn``."""
    return torch.randint(0, high, (n,), generator=generator).to(device)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (weights initialised in code depend on it)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
