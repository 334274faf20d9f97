"""Unit tests for continual_ldu.engine.tracking: live MLflow logging, buffering, replay."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from continual_ldu.engine.tracking import (
    BUFFER_DIR,
    BUFFER_FILE,
    METRICS_FILE,
    Tracker,
    TrackingConfig,
    replay_buffer,
)

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens, connections are refused
HTTP_ENV = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")


# ----------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, already migrated MLflow sqlite store: creating one costs ~5 s of migrations."""
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def run_dir(tmp_path: Path, template_db: Path) -> Path:
    """A run directory whose default local store (mlflow.db) is a copy of the template."""
    path = tmp_path / "run"
    path.mkdir()
    shutil.copy(template_db, path / "mlflow.db")
    return path


@pytest.fixture
def cfg() -> TrackingConfig:
    """Local store, no system metrics thread (one test covers that)."""
    return TrackingConfig(system_metrics=False)


@pytest.fixture(autouse=True)
def restore_http_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tracker sets MLflow's HTTP settings process-wide; undo that after each test."""
    for name in HTTP_ENV:
        if name in os.environ:
            monkeypatch.setenv(name, os.environ[name])
        else:
            monkeypatch.delenv(name, raising=False)


def client_for(run_dir: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")


def started(cfg: TrackingConfig, run_dir: Path, **params: object) -> Tracker:
    tracker = Tracker(cfg, run_dir)
    assert tracker.start(params or {"lr": 0.1}, None) is not None
    return tracker


def offline_tracker(tmp_path: Path) -> Tracker:
    """A tracker whose server refuses connections, after a start, metrics, an image, an end."""
    tracker = Tracker(TrackingConfig(uri=UNREACHABLE), tmp_path / "run")
    tracker.start({"lr": 0.1}, None)
    tracker.log_metrics({"loss": 1.0}, step=0)
    tracker.log_metrics({"loss": 0.5}, step=1)
    tracker.log_image(np.zeros((8, 8, 3), np.uint8), "protected", step=1)
    tracker.end()
    return tracker


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


# ----------------------------------------------------------------------------------------------
# Config


def test_tracking_config_validate_accepts_defaults() -> None:
    """The defaults are valid."""
    assert TrackingConfig().validate() == []


def test_tracking_config_validate_reports_bad_values() -> None:
    """Non-positive image interval and timeouts are reported, one line each."""
    bad = TrackingConfig(experiment="", log_images_every=0, request_timeout_seconds=0)
    assert len(bad.validate()) == 3


# ----------------------------------------------------------------------------------------------
# Live logging to the local sqlite store


def test_tracker_start_creates_run_in_local_store(cfg: TrackingConfig, run_dir: Path) -> None:
    """With no uri, the run lands in <run_dir>/mlflow.db under the configured experiment."""
    run_id = started(cfg, run_dir).run_id
    run = client_for(run_dir).get_run(run_id)
    assert client_for(run_dir).get_experiment(run.info.experiment_id).name == "continual_ldu"
    assert run.info.artifact_uri.startswith((run_dir / "mlartifacts").as_uri())


def test_tracker_logs_params_as_strings(cfg: TrackingConfig, run_dir: Path) -> None:
    """Params are logged with their values as strings."""
    tracker = started(cfg, run_dir, lr=0.1, widths=(64, 128))
    params = client_for(run_dir).get_run(tracker.run_id).data.params
    assert params == {"lr": "0.1", "widths": "(64, 128)"}


def test_tracker_logs_metric_history_with_steps(cfg: TrackingConfig, run_dir: Path) -> None:
    """Each log_metrics call adds a point at its step."""
    tracker = started(cfg, run_dir)
    tracker.log_metrics({"loss": 1.0, "psnr": 30.0}, step=0)
    tracker.log_metrics({"loss": 0.5}, step=3)
    assert history(client_for(run_dir), tracker.run_id, "loss") == [(0, 1.0), (3, 0.5)]


def test_tracker_writes_metrics_jsonl(cfg: TrackingConfig, run_dir: Path) -> None:
    """metrics.jsonl gets one line per call with step, time and the values."""
    tracker = started(cfg, run_dir)
    tracker.log_metrics({"loss": 1.0}, step=0)
    tracker.log_metrics({"loss": 0.5}, step=1)
    lines = [json.loads(x) for x in (run_dir / METRICS_FILE).read_text().splitlines()]
    assert [(x["step"], x["loss"]) for x in lines] == [(0, 1.0), (1, 0.5)]
    assert all(isinstance(x["time"], float) for x in lines)


def test_tracker_logs_image_as_artifact(cfg: TrackingConfig, run_dir: Path) -> None:
    """An image is stored under images/ with its name and step in the file name."""
    tracker = started(cfg, run_dir)
    tracker.log_image(np.full((8, 8, 3), 0.5, np.float32), "protected/0", step=2)
    names = [a.path for a in client_for(run_dir).list_artifacts(tracker.run_id, "images")]
    assert any("protected" in n and "step+2+" in n and n.endswith(".png") for n in names), names


def test_tracker_logs_config_yaml_and_artifacts(
    cfg: TrackingConfig, run_dir: Path, tmp_path: Path
) -> None:
    """The config YAML goes to the artifact root; a folder goes under its artifact path."""
    (tmp_path / "config.yaml").write_text("seed: 0\n")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "net.bin").write_bytes(b"weights")
    tracker = Tracker(cfg, run_dir)
    tracker.start({"seed": 0}, tmp_path / "config.yaml")
    tracker.log_artifacts(tmp_path / "ckpt", "checkpoints/round_1")
    client = client_for(run_dir)
    assert "config.yaml" in [a.path for a in client.list_artifacts(tracker.run_id)]
    paths = [a.path for a in client.list_artifacts(tracker.run_id, "checkpoints/round_1")]
    assert paths == ["checkpoints/round_1/net.bin"]


def test_tracker_register_model_creates_version(
    cfg: TrackingConfig, run_dir: Path, tmp_path: Path
) -> None:
    """register_model uploads the folder and adds a model version sourced from the run."""
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "net.bin").write_bytes(b"weights")
    tracker = started(cfg, run_dir)
    tracker.register_model(tmp_path / "net", "rho")
    tracker.register_model(tmp_path / "net", "rho")  # an existing name gets a new version
    versions = client_for(run_dir).search_model_versions("name='rho'")
    assert sorted(v.version for v in versions) == [1, 2]
    assert all(v.run_id == tracker.run_id and v.source.endswith("models/rho") for v in versions)


def test_tracker_end_marks_run_finished(cfg: TrackingConfig, run_dir: Path) -> None:
    """end() closes the run with the given status."""
    tracker = started(cfg, run_dir)
    tracker.end("KILLED")
    assert client_for(run_dir).get_run(tracker.run_id).info.status == "KILLED"


def test_tracker_resume_appends_to_same_run(cfg: TrackingConfig, run_dir: Path) -> None:
    """A tracker given run_id reopens that run and its metrics continue the history."""
    first = started(cfg, run_dir)
    first.log_metrics({"loss": 1.0}, step=0)
    first.end()
    second = Tracker(cfg, run_dir, run_id=first.run_id)
    assert second.start({"lr": 0.1}, None) == first.run_id
    second.log_metrics({"loss": 0.5}, step=1)
    client = client_for(run_dir)
    assert history(client, first.run_id, "loss") == [(0, 1.0), (1, 0.5)]
    assert client.get_run(first.run_id).info.status == "RUNNING"


def test_tracker_drops_rejected_record_and_stays_live(cfg: TrackingConfig, run_dir: Path) -> None:
    """A record MLflow refuses (invalid metric name) is dropped; later calls still go live."""
    tracker = started(cfg, run_dir)
    tracker.log_metrics({"bad!name": 1.0}, step=0)
    tracker.log_metrics({"loss": 1.0}, step=0)
    assert history(client_for(run_dir), tracker.run_id, "loss") == [(0, 1.0)]
    assert not (run_dir / BUFFER_FILE).exists()


def test_tracker_system_metrics_start_and_stop(run_dir: Path) -> None:
    """With system metrics on, start and end still return promptly and the run finishes."""
    tracker = Tracker(TrackingConfig(), run_dir)
    t0 = time.monotonic()
    tracker.start({"lr": 0.1}, None)
    tracker.end()
    assert time.monotonic() - t0 < 30
    assert client_for(run_dir).get_run(tracker.run_id).info.status == "FINISHED"


def test_tracker_ui_hint_local_names_store_and_artifacts(
    cfg: TrackingConfig, run_dir: Path
) -> None:
    """For the local store the hint is an `mlflow ui` command on the run dir's db and artifacts."""
    hint = started(cfg, run_dir).ui_hint()
    assert hint.startswith(f"mlflow ui --backend-store-uri sqlite:///{run_dir.resolve()}/mlflow.db")
    assert f"--default-artifact-root {run_dir.resolve()}/mlartifacts" in hint


# ----------------------------------------------------------------------------------------------
# Unreachable server: buffering and replay


def test_tracker_unreachable_server_never_raises_and_is_fast(tmp_path: Path) -> None:
    """Against a refused port every call returns quickly without raising."""
    t0 = time.monotonic()
    tracker = offline_tracker(tmp_path)
    assert time.monotonic() - t0 < 15
    assert tracker.run_id is None


def test_tracker_unreachable_server_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One warning names the URI and the buffer; later failures of the same outage are quiet."""
    with caplog.at_level(logging.WARNING, logger="continual_ldu.engine.tracking"):
        tracker = offline_tracker(tmp_path)
    failures = [r.getMessage() for r in caplog.records if "Training continues" in r.getMessage()]
    assert len(failures) == 1
    assert UNREACHABLE in failures[0] and str(tracker.run_dir / BUFFER_FILE) in failures[0]


def test_tracker_unreachable_server_writes_metrics_and_buffer(tmp_path: Path) -> None:
    """metrics.jsonl is written anyway, and every call is buffered in order, images as files."""
    tracker = offline_tracker(tmp_path)
    assert len((tracker.run_dir / METRICS_FILE).read_text().splitlines()) == 2
    records = [json.loads(x) for x in (tracker.run_dir / BUFFER_FILE).read_text().splitlines()]
    ops = [r["op"] for r in records]
    assert ops == ["run", "params", "metrics", "metrics", "image", "end"]
    assert (tracker.run_dir / records[4]["path"]).is_file()
    assert records[4]["path"].startswith(BUFFER_DIR)


def test_tracker_truncates_long_params(tmp_path: Path) -> None:
    """Param values are cut to MLflow's 6000-char limit (seen in the buffer, before any store)."""
    tracker = Tracker(TrackingConfig(uri=UNREACHABLE), tmp_path)
    tracker.start({"prompt": "x" * 7000}, None)
    records = [json.loads(x) for x in (tmp_path / BUFFER_FILE).read_text().splitlines()]
    assert records[1]["params"] == {"prompt": "x" * 6000}


def test_tracker_unreachable_sets_fail_fast_http_env(tmp_path: Path) -> None:
    """An http(s) uri turns off MLflow's own retries and caps the request timeout."""
    Tracker(TrackingConfig(uri=UNREACHABLE, request_timeout_seconds=2.5), tmp_path).start({}, None)
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "3"


def test_replay_buffer_sends_buffered_calls(tmp_path: Path, template_db: Path) -> None:
    """replay_buffer puts the buffered run into another store and removes the buffer."""
    tracker = offline_tracker(tmp_path)
    shutil.copy(template_db, tmp_path / "other.db")
    uri = f"sqlite:///{tmp_path / 'other.db'}"
    assert replay_buffer(tracker.run_dir, uri) == 5
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("continual_ldu").experiment_id])
    assert history(client, run.info.run_id, "loss") == [(0, 1.0), (1, 0.5)]
    assert run.info.status == "FINISHED" and run.data.params == {"lr": "0.1"}
    assert not (tracker.run_dir / BUFFER_FILE).exists()
    assert not (tracker.run_dir / BUFFER_DIR).exists()


def test_tracker_reconnects_and_replays_in_order(
    cfg: TrackingConfig, tmp_path: Path, template_db: Path
) -> None:
    """When the store comes back, the run is created on that retry and the buffer replayed."""
    blocker = tmp_path / "store"
    blocker.write_text("a file where the store's folder should be")  # the store cannot open
    cfg.uri, cfg.retry_seconds = f"sqlite:///{blocker / 'mlflow.db'}", 0.0
    tracker = Tracker(cfg, tmp_path / "run")
    assert tracker.start({"lr": 0.1}, None) is None
    tracker.log_metrics({"loss": 1.0}, step=0)
    blocker.unlink()
    blocker.mkdir()
    shutil.copy(template_db, blocker / "mlflow.db")
    tracker.log_metrics({"loss": 0.5}, step=1)
    client = MlflowClient(cfg.uri)
    assert history(client, tracker.run_id, "loss") == [(0, 1.0), (1, 0.5)]
    assert client.get_run(tracker.run_id).data.params == {"lr": "0.1"}
    assert not (tracker.run_dir / BUFFER_FILE).exists()


def test_tracker_start_replays_leftover_buffer(
    cfg: TrackingConfig, tmp_path: Path, template_db: Path
) -> None:
    """A buffer left by an earlier process in the run dir is replayed when a tracker starts."""
    old = offline_tracker(tmp_path)
    shutil.copy(template_db, old.run_dir / "mlflow.db")
    new = started(cfg, old.run_dir)
    client = client_for(old.run_dir)
    runs = client.search_runs([client.get_experiment_by_name("continual_ldu").experiment_id])
    (replayed,) = [r for r in runs if r.info.run_id != new.run_id]
    assert history(client, replayed.info.run_id, "loss") == [(0, 1.0), (1, 0.5)]
    assert not (old.run_dir / BUFFER_FILE).exists()


def test_tracker_disabled_writes_nothing(cfg: TrackingConfig, tmp_path: Path) -> None:
    """enabled=False (non-zero ranks): every method is a no-op and the run dir stays empty."""
    (tmp_path / "ckpt").mkdir()
    tracker = Tracker(cfg, tmp_path / "run", enabled=False)
    assert tracker.start({"lr": 0.1}, None) is None
    tracker.log_metrics({"loss": 1.0}, step=0)
    tracker.log_image(np.zeros((4, 4), np.uint8), "x", step=0)
    tracker.log_artifacts(tmp_path / "ckpt", "ckpt")
    tracker.register_model(tmp_path / "ckpt", "rho")
    tracker.flush()
    tracker.end()
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------
# Integration: a real `mlflow server` on loopback


def _rest(url: str, endpoint: str, **query: str) -> dict:
    full = f"{url}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}"
    with urllib.request.urlopen(full, timeout=30) as resp:
        return json.loads(resp.read())


def test_tracker_logs_to_mlflow_server(mlflow_server: str, tmp_path: Path) -> None:
    """Params, metrics and an image logged through the server read back over REST."""
    cfg = TrackingConfig(uri=mlflow_server, system_metrics=False, request_timeout_seconds=30)
    tracker = Tracker(cfg, tmp_path / "run")
    run_id = tracker.start({"lr": 0.1}, None)
    tracker.log_metrics({"loss": 1.0}, step=0)
    tracker.log_metrics({"loss": 0.5}, step=1)
    tracker.log_image(np.zeros((8, 8, 3), np.uint8), "protected", step=1)
    tracker.end()
    run = _rest(mlflow_server, "runs/get", run_id=run_id)["run"]
    assert run["info"]["status"] == "FINISHED"
    assert {"key": "lr", "value": "0.1"} in run["data"]["params"]
    points = _rest(mlflow_server, "metrics/get-history", run_id=run_id, metric_key="loss")
    assert [(int(m["step"]), m["value"]) for m in points["metrics"]] == [(0, 1.0), (1, 0.5)]
    client = MlflowClient(tracking_uri=mlflow_server)
    (png,) = [a.path for a in client.list_artifacts(run_id, "images") if a.path.endswith(".png")]
    assert Path(client.download_artifacts(run_id, png, str(tmp_path))).stat().st_size > 0
    assert (
        tracker.ui_hint()
        == f"{mlflow_server}/#/experiments/{run['info']['experiment_id']}/runs/{run_id}"
    )


def test_tracker_registers_model_on_server(mlflow_server: str, tmp_path: Path) -> None:
    """register_model works against a server, whose artifact URIs are mlflow-artifacts:/."""
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "net.bin").write_bytes(b"weights")
    cfg = TrackingConfig(uri=mlflow_server, system_metrics=False, request_timeout_seconds=30)
    tracker = Tracker(cfg, tmp_path / "run")
    run_id = tracker.start({"lr": 0.1}, None)
    tracker.register_model(tmp_path / "net", "rho_server")
    found = _rest(mlflow_server, "model-versions/search", filter="name='rho_server'")
    assert [v["run_id"] for v in found["model_versions"]] == [run_id]
