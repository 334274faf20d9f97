"""Two-process runs on CPU (gloo): DDP and DeepSpeed ZeRO-2 each complete 2 rounds and resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEBUG = REPO / "recipes" / "debug_adaptive.yaml"
ACCELERATE = Path(sys.executable).with_name("accelerate")


def launch(config: str, out: Path, rounds: int) -> str:
    """``accelerate launch`` the debug recipe with a deploy/accelerate config; return the output."""
    args = [
        str(ACCELERATE),
        "launch",
        "--config_file",
        str(REPO / "deploy" / "accelerate" / config),
        "-m",
        "continual_ldu.cli",
        "train",
        str(DEBUG),
        f"run.output_dir={out}",
        f"loop.max_rounds={rounds}",
        "tracking.system_metrics=false",
    ]
    proc = subprocess.run(
        args, cwd=REPO, env={**os.environ}, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout + proc.stderr


def ledger_positions(out: Path) -> list[int]:
    positions = []
    for rank in (0, 1):
        for line in (out / "stream" / f"ledger-rank-{rank}.jsonl").read_text().splitlines():
            positions += json.loads(line)["positions"]
    return sorted(positions)


@pytest.mark.parametrize("config", ["cpu_ddp.yaml", "cpu_deepspeed_zero2.yaml"])
def test_two_process_run_completes_and_resumes(config: str, tmp_path: Path, ldu_cache):
    """2 ranks finish 2 rounds, then resume to a third; every stream item is trained once."""
    out = tmp_path / "run"
    launch(config, out, rounds=2)
    state = json.loads((out / "checkpoints" / "round-000002" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["items_seen"] == 16
    assert {p.name for p in (out / "checkpoints" / "round-000002").glob("rank-*.pt")} == {
        "rank-0.pt",
        "rank-1.pt",
    }
    output = launch(config, out, rounds=3)
    assert "resumed from" in output and "round-000002" in output
    assert ledger_positions(out) == list(range(24))
    if "deepspeed" in config:  # the attacker's ZeRO-2 optimizer shards, one per rank
        shards = sorted(
            p.name
            for p in (out / "checkpoints" / "round-000003" / "attacker").glob("zero_pp_rank_*")
        )
        assert len(shards) == 2
