"""Contract tests for the baseline catalog (``continual_ldu.baselines.BASELINES``).

One table (``CASES``, in the style of peft's ``tests/testing_common.py``) drives every published
pixel-space protection through the same contract on the tiny model: the L-inf budget holds exactly
on the saved 8-bit PNG (and is reached), the loss the peer attacks moves its way over the PGD
steps (paired noise draws), the trace is as long as the plan the cost bench extrapolates from,
a seed fixes the output byte for byte, pixels outside a mask keep their values, and the shared
base model is never changed (the fine-tuning peers work on copies). Config tests follow.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import get_args

import numpy as np
import pytest
import torch
from PIL import Image

from continual_ldu.baselines import BASELINES, BaselineConfig, build_baseline
from continual_ldu.baselines.base import BaselineName
from continual_ldu.data.images import save_png, to_uint8
from continual_ldu.models.loading import ModelConfig, load_model
from continual_ldu.seeding import make_generator

SEED = 0
NUM_OBJECTIVE_DRAWS = 16  # paired (t, eps) draws that average the attacked loss
COMMON = {"eps": 16.0, "step_size": 2.0, "steps": 8}  # a few large steps: a clear signal fast
SURROGATE = {"num_rounds": 2, "steps": 4, "surrogate_steps": 2, "prior_preservation": False}


@dataclass(frozen=True)
class Case:
    """One catalog entry's row: config overrides (step counts cut for the tiny model) and whether
    it runs on a linear denoiser instead of the random UNet."""

    config: dict = field(default_factory=dict)
    denoiser: bool = False


# Every key of BASELINES needs a row. ASPL also runs the class-prior path (2 class images).
# SDS drops the UNet's Jacobian from the gradient, which is an ascent direction only for a
# denoiser-like UNet; on a random UNet it is noise, so the SDS rows run on LinearDenoiser.
CASES: dict[str, Case] = {
    "advdm": Case(),
    "fsmg": Case({"surrogate_steps": 3, "prior_preservation": False}),
    "aspl": Case(
        {**SURROGATE, "prior_preservation": True, "num_class_images": 2, "class_inference_steps": 2}
    ),
    "aspl_lora": Case(SURROGATE),
    "photoguard": Case(),
    "mist": Case(),
    "sds": Case(denoiser=True),
    "sds_minus": Case(denoiser=True),
    "pid": Case(),
    "metacloak": Case(
        {
            "num_rounds": 1,
            "steps": 2,
            "surrogate_steps": 3,
            "metacloak_interval": 2,
            "metacloak_advance_steps": 1,
            "prior_preservation": False,
        }
    ),
    "simac": Case({**SURROGATE, "simac_select_steps": 2}),
    "caat": Case(),
}


class LinearDenoiser(torch.nn.Module):
    """eps_theta(z_t) = k z_t: a UNet stand-in whose Jacobian is k I, so that score distillation's
    dropped Jacobian is exact and its gradient is the noise-matching loss's own direction."""

    def __init__(self, k: float = 0.5) -> None:
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(k), requires_grad=False)

    @property
    def device(self) -> torch.device:
        return self.k.device

    @property
    def dtype(self) -> torch.dtype:
        return self.k.dtype

    def forward(self, sample, timestep, encoder_hidden_states=None):
        return SimpleNamespace(sample=self.k * sample)


def make_config(name: str, **overrides) -> BaselineConfig:
    """The row's config for ``name``, checked by the schema's own validation."""
    if name not in CASES:
        pytest.fail(f"BASELINES[{name!r}] has no row in CASES: add one to test its contract")
    cfg = BaselineConfig(name=name, **{**COMMON, **CASES[name].config, **overrides})
    assert cfg.validate() == [], cfg.validate()
    return cfg


def snapshot(model) -> dict[str, torch.Tensor]:
    modules = {"unet": model.unet, "vae": model.vae, "text_encoder": model.text_encoder}
    return {
        f"{k}.{n}": v.detach().clone()
        for k, m in modules.items()
        for n, v in m.state_dict().items()
    }


MASK = torch.zeros(1, 1, 32, 32)
MASK[..., 8:24, 8:24] = 1  # the centre may change, the border must not
MASKED = {"eps": 3.5}  # a budget that every peer's 8 steps of 2/255 exhaust


class Runs:
    """Each row's model and its cached protect runs, plain and masked (shared by the checks)."""

    def __init__(self, path: Path, images: torch.Tensor) -> None:
        self.path, self.images, self.models, self.results = path, images, {}, {}

    def model(self, name: str):
        if name not in self.models:
            model = load_model(ModelConfig(pretrained=str(self.path), device="cpu"))
            if CASES[name].denoiser:
                model.unet = LinearDenoiser()
            self.models[name] = model
        return self.models[name]

    def protect(self, name: str, mask: torch.Tensor | None = None, **overrides):
        baseline = build_baseline(make_config(name, **overrides), self.model(name))
        return baseline, baseline.protect(self.images, make_generator(SEED), mask=mask)

    def cached(self, name: str):
        """(baseline, protected, the base model's weights before) of the plain run."""
        if name not in self.results:
            before = snapshot(self.model(name))
            self.results[name] = (*self.protect(name), before)
        return self.results[name]

    def masked(self, name: str) -> torch.Tensor:
        """The images protected with eps 3.5/255 inside ``MASK``."""
        if (name, "masked") not in self.results:
            self.results[name, "masked"] = self.protect(name, mask=MASK, **MASKED)[1]
        return self.results[name, "masked"]


@pytest.fixture(scope="module")
def runs(tiny_model_path: Path) -> Runs:
    from continual_ldu.data.images import load_folder, prepare, to_tensor

    demo = Path(__file__).resolve().parents[2] / "continual_ldu" / "assets" / "demo"
    loaded, _ = load_folder(demo)
    return Runs(tiny_model_path, to_tensor([prepare(item.image, 32) for item in loaded[:2]]))


@pytest.fixture(params=sorted(BASELINES))
def name(request) -> str:
    """Each catalog key in turn."""
    return request.param


def saved_levels(images: torch.Tensor, folder: Path) -> np.ndarray:
    """Save as PNGs, read back: the published 8-bit values, (B, H, W, 3) int."""
    arrays = []
    for i, array in enumerate(to_uint8(images)):
        path = save_png(array, folder / f"{i}.png")
        arrays.append(np.asarray(Image.open(path).convert("RGB"), dtype=np.int16))
    return np.stack(arrays)


# ----------------------------------------------------------------------------- the contract


def test_cases_table_covers_catalog_exactly() -> None:
    """The contract table, the registry and the config's Literal name the same baselines."""
    assert set(CASES) == set(BASELINES) == set(get_args(BaselineName))


def test_baseline_budget_exact_on_saved_png(name, runs, tmp_path) -> None:
    """With eps 3.5/255, the saved PNG differs from the clean one by at most 3 grey levels, and by
    exactly 3 somewhere: the budget holds on the file and is used."""
    protected = saved_levels(runs.masked(name), tmp_path)
    levels = np.abs(protected - saved_levels(runs.images, tmp_path / "clean"))
    assert levels.max() == 3


def test_baseline_moves_attacked_loss(name, runs) -> None:
    """The final PGD phase's loss, on paired draws, is higher on the protected images than on the
    clean ones (lower for the descending peers: PhotoGuard, SDS-)."""
    baseline, protected, _ = runs.cached(name)
    diffs = [
        baseline.last_objective(protected, make_generator(s))
        - baseline.last_objective(runs.images, make_generator(s))
        for s in range(NUM_OBJECTIVE_DRAWS)
    ]
    moved = statistics.mean(diffs) * (1 if baseline.ascend else -1)
    assert moved > 0, f"mean change {statistics.mean(diffs):+.6f} (ascend={baseline.ascend})"


def test_baseline_trace_matches_plan(name, runs) -> None:
    """One finite loss per PGD step, as many as ``planned_counts`` (the cost bench's basis)."""
    baseline, _, _ = runs.cached(name)
    planned = type(baseline).planned_counts(make_config(name), len(runs.images))
    assert len(baseline.last_trace) == planned["pgd_steps"] > 0
    assert all(np.isfinite(baseline.last_trace))
    assert planned["gradient_passes"] >= planned["pgd_steps"]


def test_baseline_is_deterministic_under_seed(name, runs) -> None:
    """Same seed, same inputs: a second run publishes byte-identical images."""
    _, first, _ = runs.cached(name)
    _, second = runs.protect(name)
    assert np.array_equal(to_uint8(first), to_uint8(second))


def test_baseline_respects_mask(name, runs) -> None:
    """Only the pixels the mask allows change on the saved image; some of them do change."""
    protected = runs.masked(name)
    changed = np.abs(to_uint8(protected).astype(int) - to_uint8(runs.images).astype(int)).max(-1)
    inside = MASK[0, 0].numpy().astype(bool)
    assert changed[:, ~inside].max() == 0
    assert changed[:, inside].max() > 0


def test_baseline_leaves_base_model_unchanged(name, runs) -> None:
    """The shared UNet, VAE and text encoder hold their weights (and stay frozen) after protect."""
    _, _, before = runs.cached(name)
    model = runs.model(name)
    after = snapshot(model)
    assert set(after) == set(before)
    assert [k for k in before if not torch.equal(before[k], after[k])] == []
    assert not any(p.requires_grad for p in model.text_encoder.parameters())
    assert not any(p.requires_grad for p in model.unet.parameters())


# --------------------------------------------------------------------------------- config


def test_defaults_are_the_peers_own() -> None:
    """Left at None, the budget, step and step count are each peer's published ones (x/255)."""
    published = {  # name: (eps, step_size, PGD steps in all)
        "advdm": (16.0, 1.0, 100),
        "fsmg": (6.375, 0.6375, 100),
        "aspl": (6.375, 0.6375, 50 * 6),
        "aspl_lora": (6.375, 0.5, 20 * 10),
        "photoguard": (7.65, 2.55, 1000),
        "mist": (16.0, 1.0, 100),
        "sds": (16.0, 1.0, 100),
        "sds_minus": (16.0, 1.0, 100),
        "pid": (12.75, 1.0, 1000),
        "metacloak": (11.0, 1.1, 4 * 6 * 100 * 6),
        "simac": (8.0, 0.6375, 50 * 6),
        "caat": (6.375, 0.6375, 250),
    }
    for name, (eps, step, steps) in published.items():
        cls = BASELINES[name]
        resolved = BaselineConfig(name=name).with_defaults(cls.defaults())
        assert (resolved.eps, resolved.step_size) == (eps, step), name
        assert cls.planned_counts(BaselineConfig(name=name), 4)["pgd_steps"] == steps, name


def test_config_rejects_knob_the_peer_lacks() -> None:
    """A knob the named peer does not have is an error naming it, not a silent no-op."""
    problems = BaselineConfig(name="advdm", num_rounds=3).validate()
    assert any("num_rounds is not a knob of advdm" in p for p in problems)
    with pytest.raises(ValueError, match="which baseline"):
        build_baseline(BaselineConfig(), model=None)


def test_config_rejects_bad_values() -> None:
    """Non-positive budgets and unknown EOT transforms are named."""
    problems = BaselineConfig(name="metacloak", eps=0, eot_transforms=["rotate"]).validate()
    assert any(p.startswith("eps") for p in problems)
    assert any("eot_transforms" in p for p in problems)
