"""Min-max loop throughput: the adaptive trainer in one process, under DDP and under DeepSpeed.

For each mode, ``ldu train`` runs the recipe (default ``recipes/adaptive_tiny.yaml``) for
``--rounds`` rounds in a subprocess with a fresh temporary output dir and
``tracking.system_metrics=false``. Extra ``key=value`` arguments are passed on as recipe
overrides. The modes are:

  single      one process: ``python bench/minmax_throughput.py --child train RECIPE ...``
  ddp2        ``accelerate launch --config_file deploy/accelerate/cpu_ddp.yaml`` (2 processes)
  deepspeed2  ``accelerate launch --config_file deploy/accelerate/cpu_deepspeed_zero2.yaml``

Each launch gets a free ``--main_process_port``, so it does not clash with tests that use the
configs' fixed ports. Every training process runs this file with ``--child``. That calls
``continual_ldu.cli.main`` and then appends its rank, its torch thread count and its peak RSS
(VmHWM in /proc/self/status) to the file named by ``$LDU_BENCH_PEAK_FILE``.

Reported per mode:
  - wall s: the whole job, including start-up, model load, checkpoints and the launcher.
  - s/round: the mean ``round/round_seconds`` from metrics.jsonl, leaving out round 1 (warm-up).
  - rounds/s: 1 / s/round.
  - images/s: the mean ``round/items_per_second`` over the same rounds.
  - peak RSS: the highest VmHWM over the ranks.

A round is ``stream.batch_size`` images shared out across the ranks, so every mode does the same
global work per round. Before timing anything, an untimed ``loop.max_rounds=0`` run builds the
built-in model into ``$LDU_CACHE`` if it is not there yet. Children get ``OMP_WAIT_POLICY=PASSIVE``
and, when ``--threads`` is given, ``OMP_NUM_THREADS``. Other jobs slow the figures down, so the
load average is printed before and after the run.

Run from the repository root:
    HF_HUB_OFFLINE=1 LDU_CACHE=/tmp/ldu-bench-cache .venv/bin/python bench/minmax_throughput.py
    ... bench/minmax_throughput.py --modes single ddp2 --rounds 4 --json /tmp/minmax.json \\
        loop.k_min=2 loop.k_max=4
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve()
DEFAULT_RECIPE = REPO / "recipes" / "adaptive_tiny.yaml"
ACCELERATE = Path(sys.executable).with_name("accelerate")
MODES = {"single": None, "ddp2": "cpu_ddp.yaml", "deepspeed2": "cpu_deepspeed_zero2.yaml"}
PEAK_ENV = "LDU_BENCH_PEAK_FILE"
MIB_PER_KIB = 1 / 1024


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("overrides", nargs="*", help="recipe overrides, key.path=value")
    parser.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE)
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--rounds", type=int, default=3, help="loop.max_rounds (>= 2)")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for children")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per mode")
    parser.add_argument("--keep", action="store_true", help="keep the temporary run dirs")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument(
        "--child",
        nargs=argparse.REMAINDER,
        default=None,
        help="internal: run `ldu CHILD...` in this process, then record its peak RSS",
    )
    args = parser.parse_args(argv)
    if args.child is None and args.rounds < 2:
        parser.error("--rounds must be >= 2 (round 1 is left out as warm-up)")
    return args


# -- the child: one training process ---------------------------------------------------------


def proc_status_kib(field: str) -> int:
    """A ``kB`` field of /proc/self/status (e.g. VmHWM, the peak resident set size)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def run_child(ldu_args: list[str]) -> int:
    """``ldu ARGS`` in this process; then append rank, threads and VmHWM to $LDU_BENCH_PEAK_FILE."""
    import torch

    from continual_ldu.cli import main

    code = main(ldu_args)
    record = {
        "rank": int(os.environ.get("RANK", "0")),
        "torch_threads": torch.get_num_threads(),
        "vmhwm_kib": proc_status_kib("VmHWM"),
        "exit_code": code,
    }
    peak_file = os.environ.get(PEAK_ENV)
    if peak_file:
        with open(peak_file, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
    return code


# -- the parent: launch, time, read back ---------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_env(peak_file: Path, threads: int | None) -> dict[str, str]:
    env = {**os.environ, PEAK_ENV: str(peak_file), "OMP_WAIT_POLICY": "PASSIVE"}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("LDU_CACHE", "/tmp/ldu-bench-cache")
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def command(mode: str, ldu_args: list[str]) -> list[str]:
    """The command line that runs ``ldu ARGS`` through the child entry point in ``mode``."""
    config = MODES[mode]
    if config is None:
        return [sys.executable, str(SCRIPT), "--child", *ldu_args]
    config_file = str(REPO / "deploy" / "accelerate" / config)
    launcher = [str(ACCELERATE), "launch", "--config_file", config_file]
    port = ["--main_process_port", str(free_port())]
    return [*launcher, *port, str(SCRIPT), "--child", *ldu_args]


def train_args(args: argparse.Namespace, out: Path, rounds: int) -> list[str]:
    fixed = [f"run.output_dir={out}", f"loop.max_rounds={rounds}", "tracking.system_metrics=false"]
    return ["train", str(args.recipe), *args.overrides, *fixed]


def launch(cmd: list[str], env: dict[str, str], log: Path, timeout: float) -> float:
    """Run ``cmd`` from the repository root with output to ``log``; the wall seconds."""
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as handle:
        proc = subprocess.run(
            cmd, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout
        )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-4000:]
        raise SystemExit(f"{' '.join(cmd)}\nexited {proc.returncode}; log {log}:\n{tail}")
    return wall


def round_metrics(out: Path) -> list[dict]:
    """The ``round/...`` lines of ``metrics.jsonl``, in step order."""
    lines = (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    return sorted((r for r in rows if "round/round_seconds" in r), key=lambda r: r["step"])


def summarize(mode: str, wall: float, rounds: list[dict], peaks: list[dict]) -> dict:
    """One table row: timings after the warm-up round and the peak RSS over ranks."""
    timed = rounds[1:]
    if not timed:
        raise SystemExit(f"{mode}: only {len(rounds)} round(s) logged; need 2 or more")
    per_round = statistics.mean(r["round/round_seconds"] for r in timed)
    return {
        "mode": mode,
        "processes": len(peaks),
        "rounds": len(rounds),
        "wall_s": wall,
        "s_per_round": per_round,
        "rounds_per_s": 1.0 / per_round,
        "images_per_s": statistics.mean(r["round/items_per_second"] for r in timed),
        "peak_rss_mib": max(p["vmhwm_kib"] for p in peaks) * MIB_PER_KIB,
        "peak_rss_mib_by_rank": {p["rank"]: p["vmhwm_kib"] * MIB_PER_KIB for p in peaks},
        "torch_threads": max(p["torch_threads"] for p in peaks),
        "psnr_last": rounds[-1].get("round/psnr"),
    }


def run_mode(args: argparse.Namespace, mode: str, root: Path) -> dict:
    """Launch one mode into a fresh directory under ``root`` and summarize it."""
    work = Path(tempfile.mkdtemp(prefix=f"{mode}-", dir=root))
    out, peak_file = work / "run", work / "peak.jsonl"
    env = child_env(peak_file, args.threads)
    load_before = os.getloadavg()[0]
    cmd = command(mode, train_args(args, out, args.rounds))
    wall = launch(cmd, env, work / "log.txt", args.timeout)
    peaks = [json.loads(line) for line in peak_file.read_text().splitlines() if line.strip()]
    row = summarize(mode, wall, round_metrics(out), peaks)
    return {**row, "load1_before": load_before, "load1_after": os.getloadavg()[0]}


def prime_cache(args: argparse.Namespace, root: Path) -> float:
    """An untimed 0-round run: builds the built-in model into $LDU_CACHE if missing."""
    work = root / "prime"
    work.mkdir()
    env = child_env(work / "peak.jsonl", args.threads)
    cmd = command("single", train_args(args, work / "run", 0))
    return launch(cmd, env, work / "log.txt", args.timeout)


# -- report ---------------------------------------------------------------------------------------


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_facts() -> dict:
    import torch

    return {
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "accelerate": package_version("accelerate"),
        "deepspeed": package_version("deepspeed"),
        "python": sys.version.split()[0],
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }


def fmt_load(load: tuple[float, float, float]) -> str:
    return " ".join(f"{x:.2f}" for x in load)


def markdown_table(rows: list[dict]) -> str:
    head = (
        "| mode | processes | torch threads/proc | rounds | wall s | s/round | rounds/s | images/s "
        "| peak RSS MiB/proc (max over ranks) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['processes']} | {r['torch_threads']} | {r['rounds']} "
            f"| {r['wall_s']:.1f} | {r['s_per_round']:.2f} | {r['rounds_per_s']:.3f} "
            f"| {r['images_per_s']:.2f} | {r['peak_rss_mib']:.0f} |"
        )
    return "\n".join(lines)


def run_all(args: argparse.Namespace) -> list[dict]:
    """Prime the cache, then run each mode in its own directory under a temporary root."""
    root = Path(tempfile.mkdtemp(prefix="ldu-minmax-bench-"))
    try:
        print(f"priming the model cache: {prime_cache(args, root):.1f} s (untimed)", flush=True)
        rows = []
        for mode in args.modes:
            rows.append(run_mode(args, mode, root))
            print(f"{mode}: {rows[-1]['wall_s']:.1f} s wall", flush=True)
        return rows
    finally:
        if args.keep:
            print(f"run dirs kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        return run_child(args.child)
    facts, load_before = machine_facts(), os.getloadavg()
    print(f"machine: {facts}; load average before: {fmt_load(load_before)}", flush=True)
    if load_before[0] > 0.5:
        print("note: other jobs are running (1-min load average > 0.5); expect slower figures")
    started = time.perf_counter()
    rows = run_all(args)
    load_after, total = os.getloadavg(), time.perf_counter() - started
    print(f"\nload average after: {fmt_load(load_after)}; total {total:.0f} s\n")
    print(markdown_table(rows))
    if args.json is not None:
        report = {**facts, "load_before": load_before, "load_after": load_after, "rows": rows}
        report["total_s"] = total
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
