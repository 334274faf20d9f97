"""End to end through the ``ldu`` CLI: the static pipeline's files, the budget, bad inputs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from continual_ldu.cli import main
from continual_ldu.data.images import load_folder, prepare, to_tensor, to_uint8
from continual_ldu.method.objectives import mse_to_psnr

REPO = Path(__file__).resolve().parents[2]
DEBUG = str(REPO / "recipes" / "debug_static.yaml")
DEMO = REPO / "continual_ldu" / "assets" / "demo"


def run_cli(*args: str) -> int:
    return main(list(args))


@pytest.fixture(scope="module")
def static_run(tmp_path_factory, ldu_cache) -> Path:
    """One debug run of the whole static pipeline, shared by the checks below."""
    out = tmp_path_factory.mktemp("static")
    assert run_cli("static", DEBUG, f"run.output_dir={out}") == 0
    return out


def saved_psnr(saved: Path, original: Path, resolution: int) -> float:
    """PSNR of a saved PNG against its original, computed independently of the summary."""
    loaded = next(i for i in load_folder(original.parent)[0] if i.path == original)
    clean = to_uint8(to_tensor([prepare(loaded.image, resolution)]))[0].astype(np.float64)
    protected = np.asarray(Image.open(saved).convert("RGB"), dtype=np.float64)
    return mse_to_psnr(float((((protected - clean) / 255) ** 2).mean()))


def test_static_cli_writes_every_artifact(static_run: Path):
    """The run folder holds the surrogate, rho, the metrics, PNGs under the original names."""
    expected = [
        "config.yaml",
        "training/metrics.jsonl",
        "surrogate/learned_embeds.safetensors",
        "perturbation_net/config.json",
        "perturbation_net/diffusion_pytorch_model.safetensors",
        "protected/summary.json",
        "protected/config.yaml",
    ]
    missing = [name for name in expected if not (static_run / name).is_file()]
    assert not missing
    names = sorted(p.stem for p in (static_run / "protected").glob("*.png"))
    assert names == sorted(p.stem for p in DEMO.glob("*.png"))
    records = [
        json.loads(line)
        for line in (static_run / "training" / "metrics.jsonl").read_text().splitlines()
    ]
    assert (
        records[-1]["round/items_seen"] == 24 and sum("generator_loss" in r for r in records) == 4
    )


def test_static_summary_matches_saved_files(static_run: Path):
    """summary.json's PSNR is the PSNR of the file on disk, and meets the budget."""
    summary = json.loads((static_run / "protected" / "summary.json").read_text())
    assert summary["num_protected"] == 24 and summary["num_skipped"] == 0
    for record in summary["images"][:6]:
        measured = saved_psnr(Path(record["output"]), DEMO / record["name"], 32)
        if record["psnr"] is None:
            assert measured == float("inf")
        else:
            assert measured == pytest.approx(record["psnr"], abs=1e-6)
            assert measured >= 36.0


def test_protect_pulls_back_to_budget(static_run: Path, tmp_path: Path):
    """An unconstrained net overshoots; the saved files are pulled back to the PSNR budget."""
    out = tmp_path / "run"
    args = [
        f"run.output_dir={out}",
        "objective.lambda_mode=fixed",
        "objective.lambda_init=0.0",  # no budget term in training: the net may overshoot
        "net.lr=0.05",
        "net.num_steps=6",
        "objective.budget_psnr_db=45.0",
    ]
    assert run_cli("static", DEBUG, *args) == 0
    summary = json.loads((out / "protected" / "summary.json").read_text())
    assert summary["num_pulled_back"] > 0
    assert all(r["psnr"] is None or r["psnr"] >= 45.0 for r in summary["images"])
    pulled = [r for r in summary["images"] if r["pulled_back"]]
    assert all(0.0 <= r["budget_scale"] < 1.0 for r in pulled)


def make_bad_folder(folder: Path) -> dict[str, str]:
    """A folder with good, convertible and broken files; returns the expected skips."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)).save(folder / "good.png")
    Image.fromarray(rng.integers(0, 255, (70, 70), dtype=np.uint8)).save(folder / "gray.png")
    rgba = rng.integers(0, 255, (72, 72, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
    Image.new("CMYK", (90, 90), (10, 200, 30, 0)).save(folder / "cmyk.jpg")
    (folder / "broken.jpg").write_bytes(
        b"\xff\xd8\xff" + bytes(rng.integers(0, 255, 500, dtype=np.uint8))
    )
    (folder / "notes.txt").write_text("not an image")
    Image.new("RGB", (40, 30)).save(folder / "tiny.png")
    return {"broken.jpg": "corrupt", "notes.txt": "not an image", "tiny.png": "too small"}


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_protect_bad_inputs_skipped_and_reported(static_run: Path, tmp_path: Path):
    """Bad files are skipped with a reason, the rest protected, exit code 3, input untouched."""
    inputs = make_bad_folder(tmp_path / "inputs")
    before = digest(tmp_path / "inputs")
    out = tmp_path / "protected"
    code = run_cli(
        "protect",
        DEBUG,
        f"run.output_dir={static_run}",
        f"protect.input_dir={tmp_path / 'inputs'}",
        f"protect.output_dir={out}",
    )
    assert code == 3
    summary = json.loads((out / "summary.json").read_text())
    skipped = {Path(s["path"]).name: s["reason"] for s in summary["skipped"]}
    assert set(skipped) == set(inputs)
    for name, word in inputs.items():
        assert word in skipped[name], skipped[name]
    assert sorted(p.name for p in out.glob("*.png")) == [
        "alpha.png",
        "cmyk.png",
        "good.png",
        "gray.png",
    ]
    assert digest(tmp_path / "inputs") == before


def test_cli_config_errors_name_every_key(tmp_path: Path, capsys):
    """Bad keys fail before any work, in one message naming each of them."""
    out = tmp_path / "never"
    code = run_cli(
        "static",
        DEBUG,
        f"run.output_dir={out}",
        "net.num_stepz=3",
        "trajectory.num_steps=9",
        "objective.budget=l2",
    )
    assert code == 2
    err = capsys.readouterr().err
    for key in ("net.num_stepz", "trajectory", "num_steps", "objective.budget"):
        assert key in err
    assert not out.exists()
