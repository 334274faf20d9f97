"""Shared fixtures: offline, seeded, tiny. The tiny model is built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
DEMO_IMAGES = REPO / "continual_ldu" / "assets" / "demo"


@pytest.fixture(scope="session", autouse=True)
def ldu_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built-in models go to a per-session cache, never the user's home."""
    cache = tmp_path_factory.mktemp("ldu-cache")
    os.environ["LDU_CACHE"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def tiny_model_path(ldu_cache: Path) -> Path:
    """The seeded tiny SD-shaped model, written in diffusers layout."""
    from continual_ldu.models.loading import builtin_tiny_path
    from continual_ldu.models.tiny import TinyModelConfig

    return builtin_tiny_path(TinyModelConfig())


@pytest.fixture
def tiny_model(tiny_model_path: Path):
    """A freshly loaded tiny model (function scope: personalizers may add tokens to it)."""
    from continual_ldu.models.loading import ModelConfig, load_model

    return load_model(ModelConfig(pretrained=str(tiny_model_path), device="cpu"))


@pytest.fixture
def images32():
    """Four demo photos at 32 px as a [-1, 1] batch."""
    from continual_ldu.data.images import load_folder, prepare, to_tensor

    loaded, _ = load_folder(DEMO_IMAGES)
    return to_tensor([prepare(item.image, 32) for item in loaded[:4]])
