"""End to end: a pixel-space baseline through ``ldu protect`` (same files and summary as LDU's,
budget measured on the saved PNGs) and through ``ldu evaluate`` (a cached ``kind: baseline``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from continual_ldu.cli import main
from continual_ldu.data.images import load_folder, prepare, to_tensor, to_uint8
from continual_ldu.method.objectives import mse_to_psnr

REPO = Path(__file__).resolve().parents[2]
RECIPE = str(REPO / "recipes" / "baseline_aspl_tiny.yaml")
EVAL = str(REPO / "recipes" / "eval_debug.yaml")
DEMO = REPO / "continual_ldu" / "assets" / "demo"


@pytest.fixture(scope="module")
def aspl_run(tmp_path_factory, ldu_cache) -> Path:
    """``ldu protect`` with the ASPL recipe on the demo photos, set A given as a folder."""
    out = tmp_path_factory.mktemp("aspl")
    reference = REPO / "continual_ldu" / "assets" / "eval_concepts" / "astronaut" / "set_A"
    code = main(["protect", RECIPE, f"run.output_dir={out}", f"protect.reference_dir={reference}"])
    assert code == 0
    return out / "protected"


def clean_levels(name: str) -> np.ndarray:
    loaded = next(i for i in load_folder(DEMO)[0] if i.name == name)
    return to_uint8(to_tensor([prepare(loaded.image, 32)]))[0].astype(np.int16)


def test_baseline_protect_writes_ldu_outputs(aspl_run: Path):
    """The PNGs under the original names, summary.json and config.yaml, as ``ldu protect`` does."""
    assert sorted(p.name for p in aspl_run.glob("*.png")) == sorted(
        p.name for p in DEMO.glob("*.png")
    )
    assert (aspl_run / "config.yaml").is_file()
    summary = json.loads((aspl_run / "summary.json").read_text())
    assert summary["num_protected"] == 24 and summary["num_skipped"] == 0
    assert summary["num_pulled_back"] == 0
    assert summary["budget"] == {"kind": "linf", "linf_255": 6.375}
    assert summary["method"]["name"] == "aspl" and summary["method"]["eps"] == 6.375


def test_baseline_summary_budget_measured_on_files(aspl_run: Path):
    """Each record's x/255 and PSNR are those of the file on disk; x/255 stays within 6.375."""
    summary = json.loads((aspl_run / "summary.json").read_text())
    for record in summary["images"][:8]:
        saved = np.asarray(Image.open(record["output"]).convert("RGB"), dtype=np.int16)
        diff = saved - clean_levels(record["name"])
        assert np.abs(diff).max() == record["linf_255"] <= 6
        assert mse_to_psnr(float(((diff / 255) ** 2).mean())) == pytest.approx(record["psnr"])
    assert summary["max_linf_255"] == 6  # 10 steps of 0.6375/255 reach the budget


def test_baseline_protect_config_errors(tmp_path: Path, capsys):
    """An unknown method and a knob the named peer lacks fail before any work (exit 2)."""
    out = tmp_path / "never"
    assert main(["protect", RECIPE, f"run.output_dir={out}", "protect.method=nope"]) == 2
    assert "neither 'ldu' nor one of" in capsys.readouterr().err
    assert main(["protect", RECIPE, f"run.output_dir={out}", "protect.method=pid"]) == 2
    assert "num_rounds is not a knob of pid" in capsys.readouterr().err
    assert not out.exists()


METHODS = (
    "methods=[{name: none, kind: none}, {name: aspl, kind: baseline, baseline: {name: aspl, "
    "num_rounds: 1, steps: 4, surrogate_steps: 1, prior_preservation: false}}]"
)


def test_evaluate_runs_baseline_and_reuses_cache(tmp_path: Path, ldu_cache, capsys):
    """``kind: baseline`` is evaluated like any method (within its budget, by measured PSNR), and
    a second run reuses its cached protect stage."""
    overrides = [
        f"run.output_dir={tmp_path}",
        METHODS,
        "purifications=[{name: none}]",
        "metrics.names=[psnr, ssim, heldout_loss]",
    ]
    assert main(["evaluate", EVAL, *overrides]) == 0
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    aspl = [r for r in rows if r["method"] == "aspl"]
    assert len(aspl) == 2  # two concepts x one purification x one attacker
    assert all(36.0 < float(r["psnr"]) < 60.0 for r in aspl)  # changed, within 6.375/255
    protect_stages = list((tmp_path / "cache" / "protect").iterdir())
    assert len(protect_stages) == 2  # one per concept (method none is not a stage)
    capsys.readouterr()
    assert main(["evaluate", EVAL, *overrides]) == 0
    assert ", computed 0;" in capsys.readouterr().out
