"""End to end: the min-max loop's files, MLflow run, exact resume, signals, tracking outages."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from continual_ldu.config import load_config
from continual_ldu.engine.trainer import TrainConfig, Trainer

REPO = Path(__file__).resolve().parents[2]
DEBUG = REPO / "recipes" / "debug_adaptive.yaml"
LOSS_KEYS = ("attacker_loss", "generator_loss", "personalization_loss", "lambda")


def config(out: Path, *overrides: str) -> TrainConfig:
    return load_config(TrainConfig, DEBUG, [f"run.output_dir={out}", *overrides])


def loss_trace(out: Path) -> dict[int, dict[str, float]]:
    """Per step, the last logged value of each loss (a resumed run re-logs the crashed steps)."""
    trace: dict[int, dict[str, float]] = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        losses = {k: record[k] for k in LOSS_KEYS if k in record}
        if losses:
            trace.setdefault(record["step"], {}).update(losses)
    return trace


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, ldu_cache) -> Path:
    """The debug recipe: 3 rounds of 8 images, 2 attacker + 2 generator steps each."""
    out = tmp_path_factory.mktemp("uninterrupted")
    result = Trainer(config(out)).train()
    assert result["rounds"] == 3 and result["items_seen"] == 24
    return out


def test_train_writes_exact_checkpoint_files(uninterrupted: Path):
    """keep_last=2 leaves the last two checkpoints, each with every piece of state."""
    root = uninterrupted / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "round-000002", "round-000003"]
    assert (root / "latest").read_text() == "round-000003"
    files = sorted(
        str(p.relative_to(root / "round-000003"))
        for p in (root / "round-000003").rglob("*")
        if p.is_file()
    )
    assert files == [
        "attacker/pytorch_lora_weights.safetensors",
        "attacker_optimizer.pt",
        "config.yaml",
        "net/config.json",
        "net/diffusion_pytorch_model.safetensors",
        "net_optimizer.pt",
        "pool.safetensors",
        "rank-0.pt",
        "replay-rank-0.safetensors",
        "trainer_state.json",
    ]
    state = json.loads((root / "round-000003" / "trainer_state.json").read_text())
    assert state["round"] == 3 and state["step_min"] == 6 and state["step_max"] == 6


def test_train_metrics_lines(uninterrupted: Path):
    """Each round logs its 2 attacker steps, 2 generator steps and one round summary."""
    lines = [json.loads(x) for x in (uninterrupted / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 15
    assert sum("attacker_loss" in x for x in lines) == 6
    assert sum("generator_loss" in x for x in lines) == 6
    rounds = [x for x in lines if "round/psnr" in x]
    assert len(rounds) == 3 and rounds[-1]["round/items_seen"] == 24


def test_train_mlflow_run_reads_back(uninterrupted: Path):
    """The local MLflow store holds the run: params, metric history, image grids, the model."""
    client = MlflowClient(tracking_uri=f"sqlite:///{uninterrupted / 'mlflow.db'}")
    state = json.loads(
        (uninterrupted / "checkpoints" / "round-000003" / "trainer_state.json").read_text()
    )
    run = client.get_run(state["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["loop.k_min"] == "2"
    history = client.get_metric_history(run.info.run_id, "attacker_loss")
    assert [m.step for m in history] == [1, 2, 5, 6, 9, 10]
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    assert sum(p.endswith(".png") for p in images) == 3
    rounds = [a.path for a in client.list_artifacts(run.info.run_id, "rounds")]
    assert "rounds/round-000003" in rounds
    versions = client.search_model_versions("name='continual_ldu_perturbation_net'")
    assert any(v.run_id == run.info.run_id for v in versions)


def test_train_protected_images_written(uninterrupted: Path):
    """Every stream item is published once as a PNG under its key."""
    protected = sorted(p.name for p in (uninterrupted / "protected").glob("*.png"))
    assert len(protected) == 24


class Crash(RuntimeError):
    pass


def test_train_resume_after_crash_reproduces_losses(
    uninterrupted: Path, tmp_path: Path, monkeypatch
):
    """Killed in round 3 and resumed: the same per-step losses, each item trained once."""
    out = tmp_path / "crashed"
    original, calls = Trainer.max_step, {"n": 0}

    def crashing(self, prepared, bar):
        calls["n"] += 1
        if calls["n"] == 6:  # round 3's second generator step: after round 2's checkpoint
            raise Crash
        return original(self, prepared, bar)

    monkeypatch.setattr(Trainer, "max_step", crashing)
    with pytest.raises(Crash):
        Trainer(config(out)).train()
    monkeypatch.setattr(Trainer, "max_step", original)
    assert (out / "checkpoints" / "latest").read_text() == "round-000002"
    Trainer(config(out)).train()
    assert loss_trace(out) == loss_trace(uninterrupted)
    ledger = [
        json.loads(x) for x in (out / "stream" / "ledger-rank-0.jsonl").read_text().splitlines()
    ]
    positions = [p for line in ledger for p in line["positions"]]
    manifest = [
        json.loads(x)["position"]
        for x in (out / "stream" / "manifest.jsonl").read_text().splitlines()
    ]
    assert sorted(positions) == sorted(manifest) == list(range(24))


def test_train_unreachable_tracking_still_finishes(tmp_path: Path):
    """With the tracking server down the job trains on, writes metrics.jsonl and a buffer."""
    out = tmp_path / "offline"
    result = Trainer(config(out, "tracking.uri=http://127.0.0.1:9", "loop.max_rounds=1")).train()
    assert result["rounds"] == 1
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 5
    assert (out / "tracking_buffer.jsonl").is_file()


def rest(url: str, endpoint: str, **query: str) -> dict:
    full = f"{url}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(full, timeout=30) as resp:
        return json.loads(resp.read())


def test_train_logs_to_real_mlflow_server(mlflow_server: str, tmp_path: Path):
    """Against `mlflow server` on loopback: the run, its metrics and an image read over REST."""
    out = tmp_path / "served"
    cfg = config(
        out,
        f"tracking.uri={mlflow_server}",
        "loop.max_rounds=1",
        "tracking.request_timeout_seconds=30",
    )
    run_id = Trainer(cfg).train()["run_id"]
    run = rest(mlflow_server, "runs/get", run_id=run_id)["run"]
    assert run["info"]["status"] == "FINISHED"
    points = rest(mlflow_server, "metrics/get-history", run_id=run_id, metric_key="generator_loss")
    assert [int(m["step"]) for m in points["metrics"]] == [3, 4]
    listing = rest(mlflow_server, "artifacts/list", run_id=run_id, path="images")
    assert any(f["path"].endswith(".png") for f in listing.get("files", []))


def test_train_sigterm_commits_checkpoint_and_exits_zero(tmp_path: Path):
    """SIGTERM mid-run: the step finishes, a checkpoint is committed, the exit code is 0."""
    out = tmp_path / "signalled"
    args = [
        sys.executable,
        "-m",
        "continual_ldu.cli",
        "train",
        str(DEBUG),
        f"run.output_dir={out}",
        "loop.max_rounds=null",
        "stream.idle_timeout_seconds=null",
        "loop.k_max=50",
    ]
    proc = subprocess.Popen(
        args, cwd=REPO, env={**os.environ}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 180
    while (
        not (out / "metrics.jsonl").is_file()
        or "generator_loss" not in (out / "metrics.jsonl").read_text()
    ):
        assert proc.poll() is None, proc.stdout.read().decode()
        assert time.monotonic() < deadline, "no generator step within 180 s"
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, output.decode()[-2000:]
    assert (out / "checkpoints" / "latest").read_text() == "round-000001"
    state = json.loads((out / "checkpoints" / "round-000001" / "trainer_state.json").read_text())
    assert 1 <= state["step_max"] < 50
