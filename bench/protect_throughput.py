"""Protection throughput: images/s, ms per image and peak memory of the per-image protect path.

What is timed is what ``ldu protect`` does to each batch apart from file I/O, under
``torch.no_grad()``: ``Protector.prepare`` (encode, invert, reference decode), the forward pass
(rho, denoise, decode) and ``enforce_budget`` (8-bit quantisation and the bisection that pulls
over-budget images back). Inputs are the recipe's ``data.train_dir`` photos, cycled to fill each
batch. The base model is the recipe's model (the built-in tiny SD-shaped model by default), built
with ``model.tiny.sample_size`` equal to each resolution; rho is a PerturbationNet with the recipe's
widths, randomly initialised, with its zero head replaced by a seeded small normal init so that the
output differs from the input and the budget check does its real work. The trajectory must need no
fitted model (``ddim`` or ``noise``).

Each (resolution, batch size) setting runs ``--warmup`` untimed iterations, then ``--iters`` timed
ones. Peak memory is measured over the timed iterations: on CUDA ``torch.cuda.max_memory_allocated``
after ``reset_peak_memory_stats``; on CPU the process's peak RSS (VmHWM in /proc/self/status, reset
per setting by writing 5 to /proc/self/clear_refs; freed heap is trimmed first). The delta column is
that peak above the memory in use just before the timed iterations (model, net and inputs loaded).

Run from the repository root (the recipe's data path is relative; ``make bench`` runs the defaults):
    HF_HUB_OFFLINE=1 LDU_CACHE=/tmp/ldu-bench-cache .venv/bin/python bench/protect_throughput.py
    ... bench/protect_throughput.py --batch-sizes 1 8 --resolutions 64 256 --iters 2 \\
        --json /tmp/throughput.json net.widths=[64,128,256,512] net.bottleneck=1024
Other jobs on the machine slow it down; the load average is printed before and after the run.
On a busy small CPU machine torch's spinning OpenMP threads lose far more than their share:
``--threads 1`` (or ``OMP_WAIT_POLICY=PASSIVE``) gives steadier figures there.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import re
import statistics
import time
from pathlib import Path

import torch

from continual_ldu.config import load_config
from continual_ldu.data.images import load_folder, prepare, to_tensor
from continual_ldu.engine.static import StaticConfig, build_protector
from continual_ldu.method.protector import Protector, enforce_budget
from continual_ldu.models.loading import LatentDiffusionModel, load_model, resolve_device
from continual_ldu.models.perturbation_net import PerturbationNet
from continual_ldu.seeding import make_generator

DEFAULT_RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "static_tiny.yaml"
MIB = 2**20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("overrides", nargs="*", help="recipe overrides, key.path=value")
    parser.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--iters", type=int, default=2, help="timed iterations per setting")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations per setting")
    parser.add_argument("--head-std", type=float, default=0.05, help="std of rho's head init")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.iters < 1 or args.warmup < 0 or (args.threads is not None and args.threads < 1):
        parser.error("--iters and --threads must be >= 1, --warmup >= 0")
    return args


def load_bench_config(recipe: Path, overrides: list[str], resolution: int) -> StaticConfig:
    """The recipe plus overrides, with the data and the tiny model at ``resolution``."""
    sized = [f"data.resolution={resolution}", f"model.tiny.sample_size={resolution}"]
    cfg = load_config(StaticConfig, recipe, [*overrides, *sized])
    if cfg.trajectory.name == "flow":
        raise SystemExit("trajectory.name=flow needs a fitted flow model; use ddim or noise")
    if cfg.objective.budget == "lpips":
        raise SystemExit("objective.budget=lpips needs LPIPS weights; use mse or linf")
    return cfg


def build_net(
    cfg: StaticConfig, channels: int, device: torch.device, seed: int, std: float
) -> PerturbationNet:
    """rho with the recipe's widths; random body, seeded small normal head (not the zero init)."""
    torch.manual_seed(seed)
    net = PerturbationNet(channels, cfg.net.widths, cfg.net.bottleneck)
    generator = make_generator(seed + 1)
    torch.nn.init.normal_(net.head.weight, 0.0, std, generator=generator)
    torch.nn.init.normal_(net.head.bias, 0.0, std, generator=generator)
    return net.to(device).eval()


def load_batch(cfg: StaticConfig, batch: int, device: torch.device) -> torch.Tensor:
    """``batch`` images of ``data.train_dir`` at ``data.resolution`` (cycled), in [-1, 1]."""
    loaded, _ = load_folder(Path(cfg.data.train_dir), cfg.data.min_side, cfg.data.max_pixels)
    if not loaded:
        raise SystemExit(f"data.train_dir: no usable images in {cfg.data.train_dir}")
    picked = [loaded[i % len(loaded)].image for i in range(batch)]
    return to_tensor([prepare(image, cfg.data.resolution) for image in picked]).to(device)


@torch.no_grad()
def protect_once(protector: Protector, images: torch.Tensor, cfg: StaticConfig) -> int:
    """prepare + forward + enforce_budget; returns how many images were pulled back."""
    prepared = protector.prepare(images, make_generator(cfg.run.seed))
    protected, _ = protector(prepared)
    o = cfg.objective
    _, scales = enforce_budget(images, protected, o.budget, o.budget_value)
    return int((scales < 1.0).sum())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rss_kib(field: str) -> int:
    """A memory line of /proc/self/status (VmRSS, VmHWM) in KiB."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE).group(1))


def reset_peak(device: torch.device) -> int:
    """Start a peak-memory window; returns the bytes in use at its start."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    try:  # give freed heap back to the OS, so reused pages count in the new peak
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)
    except OSError:
        print("note: cannot reset VmHWM; the peak columns are the process's lifetime peak")
    return rss_kib("VmRSS") * 1024


def read_peak(device: torch.device) -> int:
    """Peak bytes since ``reset_peak``: CUDA allocated, or the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return rss_kib("VmHWM") * 1024


def measure(
    protector: Protector, images: torch.Tensor, cfg: StaticConfig, args: argparse.Namespace
) -> dict:
    """Warm up, then time ``args.iters`` protection calls of the batch ``images``."""
    device, batch = images.device, len(images)
    for _ in range(args.warmup):
        protect_once(protector, images, cfg)
    start_bytes, seconds, pulled = reset_peak(device), [], 0
    for _ in range(args.iters):
        sync(device)
        started = time.perf_counter()
        pulled += protect_once(protector, images, cfg)
        sync(device)
        seconds.append(time.perf_counter() - started)
    peak = read_peak(device)
    median = statistics.median(seconds)
    return {
        "resolution": cfg.data.resolution,
        "batch_size": batch,
        "iters": args.iters,
        "images_per_s": batch / median,
        "ms_per_image": 1000 * median / batch,
        "ms_per_image_min": 1000 * min(seconds) / batch,
        "ms_per_image_max": 1000 * max(seconds) / batch,
        "peak_mib": peak / MIB,
        "peak_delta_mib": (peak - start_bytes) / MIB,
        "pulled_back": pulled / (batch * args.iters),
    }


def bench_resolution(args: argparse.Namespace, resolution: int) -> list[dict]:
    """All batch sizes at one resolution, on one model built for it."""
    cfg = load_bench_config(args.recipe, args.overrides, resolution)
    model: LatentDiffusionModel = load_model(cfg.model)
    channels = int(model.vae.config.latent_channels)
    net = build_net(cfg, channels, model.device, args.seed, args.head_std)
    protector = build_protector(cfg, model, net)
    rows = []
    for batch in args.batch_sizes:
        row = measure(protector, load_batch(cfg, batch, model.device), cfg, args)
        print(f"  {resolution}px batch {batch}: {row['images_per_s']:.2f} images/s", flush=True)
        rows.append(row)
    return rows


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    return f"CPU ({found.group(1) if found else platform.processor() or 'unknown'})"


def memory_metric(device: torch.device) -> str:
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated; delta = above memory_allocated before timing"
    return "process peak RSS (VmHWM); delta = above VmRSS before timing"


def run_info(args: argparse.Namespace, cfg: StaticConfig, device: torch.device) -> dict:
    """Everything a reader needs to place the numbers."""
    t = cfg.trajectory
    return {
        "device": device_name(device),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "recipe": str(args.recipe),
        "overrides": args.overrides,
        "model": cfg.model.pretrained,
        "dtype": cfg.model.dtype,
        "trajectory": f"{t.name}, {t.num_steps} steps, {t.fixed_point_iters} fixed-point iters",
        "net": f"widths {list(cfg.net.widths)}, bottleneck {cfg.net.bottleneck}",
        "budget": f"{cfg.objective.budget} {cfg.objective.budget_value:.3g}",
        "warmup": args.warmup,
        "iters": args.iters,
        "timing": "median timed iteration / batch size (min-max over the timed iterations)",
        "memory": memory_metric(device),
    }


def warn_if_loaded(info: dict) -> None:
    """Other jobs on a small CPU machine make OpenMP threads spin; say so before timing."""
    load, cores = info["load_average_before"][0], info["cpu_count"] or 1
    if not info["device"].startswith("CPU") or load < 0.5 * cores:
        return
    print(
        f"note: load average {load:.2f} on {cores} cores before the run: other jobs are running, "
        "so these figures are contended. Busy machines slow torch's OpenMP threads far more than "
        "their share; --threads 1 or OMP_WAIT_POLICY=PASSIVE gives steadier figures.",
        flush=True,
    )


def markdown(info: dict, rows: list[dict]) -> str:
    """The run's settings as a list, then one table row per setting."""
    lines = [f"- {key}: {value}" for key, value in info.items()]
    lines += [
        "",
        "| resolution | batch | images/s | ms/image (min-max) | peak MiB | peak delta MiB "
        "| pulled back |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['resolution']} | {r['batch_size']} | {r['images_per_s']:.2f} "
            f"| {r['ms_per_image']:.1f} ({r['ms_per_image_min']:.1f}-{r['ms_per_image_max']:.1f}) "
            f"| {r['peak_mib']:.0f} | {r['peak_delta_mib']:.0f} | {r['pulled_back']:.0%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    first = load_bench_config(args.recipe, args.overrides, args.resolutions[0])
    info = run_info(args, first, resolve_device(first.model.device))
    warn_if_loaded(info)
    started = time.perf_counter()
    rows = [row for res in args.resolutions for row in bench_resolution(args, res)]
    info["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    info["wall_s"] = round(time.perf_counter() - started, 1)
    print(markdown(info, rows))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"info": info, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
