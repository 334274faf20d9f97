"""End to end: `ldu evaluate` on the debug recipe writes the report, CSV and MLflow runs, and a
second run with the same inputs reuses every cached stage."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from mlflow import MlflowClient

from continual_ldu.cli import main

REPO = Path(__file__).resolve().parents[2]
RECIPE = str(REPO / "recipes" / "eval_debug.yaml")


STATIC = str(REPO / "recipes" / "debug_static.yaml")


def methods_override(net: Path) -> str:
    return f"methods=[{{name: none, kind: none}}, {{name: ldu, kind: ldu, path: '{net}'}}]"


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory, ldu_cache) -> Path:
    """none vs a (debug-trained) static LDU net, each without purification and with JPEG."""
    static = tmp_path_factory.mktemp("static")
    assert main(["static", STATIC, f"run.output_dir={static}"]) == 0
    out = tmp_path_factory.mktemp("eval")
    overrides = [f"run.output_dir={out}", methods_override(static / "perturbation_net")]
    assert main(["evaluate", RECIPE, *overrides]) == 0
    (out / "net").write_text(str(static / "perturbation_net"))
    return out


def test_evaluate_writes_csv_rows(evaluation: Path):
    """One CSV row per concept x method x purification x attacker, numbers and skip reasons."""
    rows = list(csv.DictReader((evaluation / "metrics.csv").open()))
    assert len(rows) == 8
    assert {(r["concept"], r["method"], r["purification"]) for r in rows} == {
        (c, m, p)
        for c in ("astronaut", "hopper")
        for m in ("none", "ldu")
        for p in ("none", "jpeg")
    }
    ldu = [r for r in rows if r["method"] == "ldu"]
    assert all(36.0 <= float(r["psnr"]) for r in ldu)  # the budget, measured on the images
    assert all(r["lpips"].startswith("skipped: no weights") for r in rows)
    assert all(float(r["heldout_loss"]) > 0 for r in rows)
    clean = [r for r in rows if r["purification"] == "none" and r["method"] == "none"]
    assert all(float(r["heldout_loss_ratio"]) == 1.0 for r in clean)  # method none = the baseline


def test_evaluate_writes_self_contained_html(evaluation: Path):
    """The HTML report embeds its metrics table and image grids."""
    page = (evaluation / "report.html").read_text()
    assert "<table id='metrics'>" in page
    assert page.count("data:image/png;base64,") >= 8
    assert "skipped: no weights" in page
    assert "id='tradeoff'" in page  # two methods: the protection/imperceptibility plot


def test_evaluate_logs_nested_mlflow_runs(evaluation: Path):
    """One parent run and a nested run per cell, with metrics and skip tags."""
    client = MlflowClient(tracking_uri=f"sqlite:///{evaluation / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("continual_ldu_eval_debug")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and len(children) == 8
    assert all("heldout_loss" in c.data.metrics for c in children)
    assert all(c.data.tags["skipped.lpips"].startswith("skipped") for c in children)
    artifacts = {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    assert {"metrics.csv", "report.html"} <= artifacts


def test_evaluate_second_run_reuses_cache(evaluation: Path, capsys):
    """The same inputs again: every stage comes from the cache."""
    net = Path((evaluation / "net").read_text())
    overrides = [f"run.output_dir={evaluation}", methods_override(net)]
    assert main(["evaluate", RECIPE, *overrides]) == 0
    out = capsys.readouterr().out
    assert "stages reused 30, computed 0" in out
