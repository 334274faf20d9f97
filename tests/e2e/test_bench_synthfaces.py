"""`ldu bench synthfaces` end to end on the fast variant of the world (reference:quick, 32 px,
quick evaluators, a static LDU net of a few steps): it builds what is missing, trains the
protection, evaluates, and writes the table, report, MLflow run and the BENCHMARKS.md section."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from mlflow import MlflowClient
from PIL import Image

from continual_ldu.cli import main
from continual_ldu.engine.synth_bench import markers, update_benchmarks

REPO = Path(__file__).resolve().parents[2]
RECIPE = str(REPO / "recipes" / "bench_synthfaces_debug.yaml")


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench")
    md = out / "BENCHMARKS.md"
    md.write_text("# Benchmarks\n\nkept text\n")
    assert (
        main(["bench", "synthfaces", RECIPE, f"run.output_dir={out}", f"report.benchmarks_md={md}"])
        == 0
    )
    return out


def test_bench_builds_the_world_and_trains_the_protection(bench: Path, ldu_cache: Path):
    assert list(ldu_cache.glob("reference-*/model_index.json")), (
        "reference:quick built on first use"
    )
    assert list(ldu_cache.glob("synth-evaluators-*/config.json")), "evaluators trained on first use"
    concepts = sorted(p.name for p in (bench / "world" / "concepts").iterdir())
    assert concepts == ["id_000", "id_001"]
    train = sorted(p.name for p in (bench / "world" / "train").iterdir())
    assert len(train) == 2 * 12 and train[0].startswith("id_002_")  # disjoint identities
    assert (bench / "methods" / "static_ldu" / "perturbation_net" / "config.json").is_file()


def test_bench_table_rows_and_timing(bench: Path):
    rows = list(csv.DictReader((bench / "metrics.csv").open()))
    cells = {(r["concept"], r["method"], r["purification"]) for r in rows}
    assert len(rows) == len(cells) == 2 * 2 * 2
    for row in rows:
        assert 0.0 <= float(row["fdfr_synth"]) <= 1.0
        assert abs(float(row["ism_synth"])) <= 1.0 + 1e-5  # a cosine (float32)
        speed = float(row["s_per_image"])
        assert speed == 0.0 if row["method"] == "none" else speed > 0.0
    summary = json.loads((bench / "bench.json").read_text())
    # s/img is what the protect stage recorded for the first identity, protection work only
    recorded = [
        json.loads(p.read_text()) for p in (bench / "cache" / "protect").glob("*/timing.json")
    ]
    assert len(recorded) == 2 and all(t["images"] == 4 for t in recorded)  # static_ldu x 2 ids
    assert summary["seconds_per_image"]["static_ldu"] in {t["seconds"] / 4 for t in recorded}
    check = summary["world_check"]
    assert check["num_generations"] == 4 and 0.0 <= check["detector_rate"] <= 1.0
    gap = check["ism_gap"]["dreambooth_lora"]
    assert math.isclose(gap["gap"], gap["ism_own"] - gap["ism_other"])
    table = (bench / "bench.md").read_text()
    methods = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")]
    assert methods[1:] == ["none", "none", "static_ldu", "static_ldu"]  # after the header row
    assert "World check" in table
    plot = Image.open(bench / "tradeoff_heldout_ssim.png")  # a panel per purification: wide
    assert plot.size[0] > plot.size[1]
    # against PSNR only where a protection changed the saved images (finite PSNR)
    changed = any(math.isfinite(float(r["psnr"])) for r in rows if r["method"] != "none")
    assert (bench / "tradeoff.png").is_file() == changed


def test_bench_logs_mlflow_and_updates_benchmarks_md(bench: Path):
    client = MlflowClient(tracking_uri=f"sqlite:///{bench / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("continual_ldu_bench_debug")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 + 8  # the parent and one nested run per cell
    md = (bench / "BENCHMARKS.md").read_text()
    assert md.startswith("# Benchmarks\n\nkept text\n") and md.count(markers("synthfaces")[0]) == 1
    assert "| static_ldu | jpeg | dreambooth_lora |" in md


def test_update_benchmarks_replaces_only_its_section(tmp_path: Path):
    path = tmp_path / "B.md"
    begin, end = markers("a")
    path.write_text(f"# B\n\nbefore\n\n{begin}\nold table\n{end}\n\nafter\n")
    update_benchmarks(path, "new table", "a", "A")
    update_benchmarks(path, "newer table", "a", "A")
    update_benchmarks(path, "table b", "b", "Section B")  # another section is appended
    text = path.read_text()
    assert "old table" not in text and "new table\n" not in text
    assert text.count("newer table") == 1 and "before" in text and "after\n" in text
    assert text.endswith(
        f"## Section B (`ldu bench synthfaces`)\n\n{markers('b')[0]}\ntable b\n{markers('b')[1]}\n"
    )
