"""Shared fixtures: offline, seeded, tiny. The tiny model is built once per session."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
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


# A real `mlflow server` on loopback, shared by the tracking and training tests.


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float) -> None:
    """Poll /health until it answers; fail with the server's output if it dies or hangs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"mlflow server not healthy after {timeout}s:\n{log.read_text()}")


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real tracking server (sqlite backend, proxied artifacts); killed at teardown."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port, log = _free_port(), root / "server.log"
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_cli), "server", "--workers", "1", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--backend-store-uri", f"sqlite:///{root / 'db'}"]
    cmd += ["--serve-artifacts", "--artifacts-destination", str(root / "artifacts")]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(log, "wb") as out:  # its own session, so teardown can kill uvicorn's workers too
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(proc, url, log, timeout=120)
        yield url
    finally:
        _kill_group(proc)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return
