"""Protection cost of every pixel-space baseline against LDU: s/image, images/s, peak memory.

All methods run side by side in one process, on the same base model, batch and resolution:

- ``ldu``: what ``ldu protect`` does per batch with a trained net (``Protector.prepare``, the
  forward pass, ``enforce_budget``; rho random with a small normal head, as in
  ``protect_throughput.py``). Training rho is a one-off cost and is not part of this figure.
- each baseline of ``continual_ldu.baselines.BASELINES``: ``Baseline.protect`` on the batch (the
  batch is also the clean reference set of the peers that fit a surrogate), with the peer's own
  budget and step, and its step counts multiplied by ``--steps-scale``. Only the outer loop
  counts are scaled (``SCALED``: PGD steps, or rounds, pool and fitting steps), so the inner
  structure (ASPL's 3 + 6 steps a round, MetaCloak's 6-step unrolls) stays as published. Class
  images for prior preservation are generated once, outside the timing (the peers cache them).

Per method: ``--warmup`` untimed runs, then ``--iters`` timed ones; the s/image column is the
median run over the batch size. Peak memory: CUDA ``max_memory_allocated`` over the timed runs,
or on CPU the process's peak RSS (VmHWM, reset per method). With ``--steps-scale`` < 1 the table
also gives an *extrapolation* to the peer's default step counts: the measured time multiplied by
the ratio of gradient passes (``Baseline.planned_counts``: PGD steps x EOT samples + surrogate
steps) of the default plan to the scaled one. It assumes a constant cost per pass and is labelled
as such. The ratio columns divide by LDU's measured s/image.

``--full-size`` builds a Stable-Diffusion-1.5-shaped model with random weights (UNet 320/640/1280/
1280 with cross-attention 768, VAE 128/256/512/512, CLIP-L-shaped text encoder; no download) and
uses the paper's rho widths (64/128/256/512, bottleneck 1024), so the same figures can be taken
at real scale on a GPU:
    HF_HUB_OFFLINE=1 .venv/bin/python bench/protect_cost.py --threads 1 --steps-scale 0.02
    .venv/bin/python bench/protect_cost.py --full-size --device cuda --resolution 512 \\
        --batch-size 4 --steps-scale 0.1 --methods ldu aspl advdm --json /tmp/cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protect_throughput import (  # noqa: E402  (the sibling bench's measuring helpers)
    MIB,
    build_net,
    device_name,
    load_batch,
    load_bench_config,
    protect_once,
    read_peak,
    reset_peak,
    sync,
    warn_if_loaded,
)

from continual_ldu.baselines import BASELINES, BaselineConfig, build_baseline  # noqa: E402
from continual_ldu.engine.static import StaticConfig, build_protector  # noqa: E402
from continual_ldu.models.loading import (  # noqa: E402
    DTYPES,
    LatentDiffusionModel,
    builtin_tiny_path,
    load_model,
    resolve_device,
)
from continual_ldu.models.tiny import TinyModelConfig, clip_text_encoder  # noqa: E402
from continual_ldu.personalizers import generate_class_images  # noqa: E402
from continual_ldu.seeding import make_generator  # noqa: E402

DEFAULT_RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "static_tiny.yaml"
PAPER_NET = ["net.widths=[64,128,256,512]", "net.bottleneck=1024"]
# The outer loop counts that --steps-scale shrinks, per baseline.
SCALED: dict[str, tuple[str, ...]] = {
    "advdm": ("steps",),
    "fsmg": ("steps", "surrogate_steps"),
    "aspl": ("num_rounds",),
    "aspl_lora": ("num_rounds",),
    "photoguard": ("steps",),
    "mist": ("steps",),
    "sds": ("steps",),
    "sds_minus": ("steps",),
    "pid": ("steps",),
    "metacloak": ("num_rounds", "surrogate_steps", "metacloak_interval"),
    "simac": ("num_rounds", "simac_select_steps"),
    "caat": ("steps",),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("overrides", nargs="*", help="recipe overrides for LDU, key.path=value")
    parser.add_argument("--methods", nargs="+", default=["ldu", *BASELINES])
    parser.add_argument("--resolution", type=int, default=None, help="default 64, 512 full-size")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps-scale", type=float, default=1.0, help="fraction of step counts")
    parser.add_argument("--full-size", action="store_true", help="SD-1.5-shaped random model")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per method")
    parser.add_argument("--iters", type=int, default=1, help="timed runs per method")
    parser.add_argument("--class-images", type=int, default=4, help="prior images, made once")
    parser.add_argument("--recipe", type=Path, default=DEFAULT_RECIPE)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.methods) - {"ldu", *BASELINES})
    if unknown or "ldu" not in args.methods:
        parser.error(f"--methods must include ldu; unknown {unknown}; known: ldu {list(BASELINES)}")
    if not 0 < args.steps_scale <= 1 or args.iters < 1 or args.warmup < 0:
        parser.error("--steps-scale must be in (0, 1], --iters >= 1, --warmup >= 0")
    args.resolution = args.resolution or (512 if args.full_size else 64)
    return args


def sd15_shaped_model(device: torch.device, dtype: torch.dtype) -> LatentDiffusionModel:
    """Stable Diffusion 1.5's component shapes with seeded random weights; tokenizer and
    scheduler (SD's scaled-linear 1000 steps) come from the tiny model's folder."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # diffusers' SD defaults
    blocks = 4
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
        scaling_factor=0.18215,
    )
    text_encoder = clip_text_encoder(768, 12, 12, 3072, 768)
    tiny = builtin_tiny_path(TinyModelConfig())
    tokenizer = CLIPTokenizer.from_pretrained(tiny, subfolder="tokenizer")
    scheduler = DDPMScheduler.from_pretrained(tiny, subfolder="scheduler")
    for module in (unet, vae, text_encoder):
        module.to(dtype)
    model = LatentDiffusionModel(vae, unet, text_encoder, tokenizer, scheduler, "sd15-shaped")
    return model.to(device)


def scaled_config(name: str, scale: float) -> BaselineConfig:
    """The peer's defaults with its outer loop counts multiplied by ``scale`` (at least 1)."""
    full = BaselineConfig(name=name).with_defaults(BASELINES[name].defaults())
    counts = {k: max(1, round(getattr(full, k) * scale)) for k in SCALED[name]}
    return BaselineConfig(name=name, **counts)


def timed(run, device: torch.device, batch: int, args: argparse.Namespace) -> dict:
    """Warm up, then time ``args.iters`` calls of ``run``; per-image seconds and peak memory."""
    for _ in range(args.warmup):
        run()
    start_bytes, seconds = reset_peak(device), []
    for _ in range(args.iters):
        sync(device)
        started = time.perf_counter()
        run()
        sync(device)
        seconds.append(time.perf_counter() - started)
    peak = read_peak(device)
    per_image = statistics.median(seconds) / batch
    return {
        "s_per_image": per_image,
        "images_per_s": 1 / per_image,
        "peak_mib": peak / MIB,
        "peak_delta_mib": (peak - start_bytes) / MIB,
    }


def bench_ldu(cfg: StaticConfig, model, images: torch.Tensor, args) -> dict:
    channels = int(model.vae.config.latent_channels)
    net = build_net(cfg, channels, model.device, args.seed, 0.05)
    net = net if model.dtype == torch.float32 else net.to(model.dtype)
    protector = build_protector(cfg, model, net)
    row = timed(lambda: protect_once(protector, images, cfg), model.device, len(images), args)
    return {"method": "ldu", "plan": f"rho {list(cfg.net.widths)}, {cfg.trajectory.name}", **row}


def bench_baseline(name: str, model, images: torch.Tensor, prior, args) -> dict:
    cls, cfg = BASELINES[name], scaled_config(name, args.steps_scale)
    baseline = build_baseline(cfg, model)
    if baseline.needs_class_latents:
        baseline.class_latents = prior

    def run() -> None:
        baseline.protect(images, make_generator(args.seed), reference=images)

    row = timed(run, model.device, len(images), args)
    plan = cls.planned_counts(cfg, len(images))
    full = cls.planned_counts(BaselineConfig(name=name), len(images))
    factor = full["gradient_passes"] / plan["gradient_passes"]
    scaled = ", ".join(f"{k} {getattr(baseline.cfg, k)}" for k in SCALED[name])
    return {
        "method": name,
        "plan": f"{scaled}: {plan['pgd_steps']} PGD steps, {plan['gradient_passes']} passes",
        "default_plan": f"{full['pgd_steps']} PGD steps, {full['gradient_passes']} passes",
        "eps_255": baseline.cfg.eps,
        "extrapolated_s_per_image": row["s_per_image"] * factor,
        **row,
    }


@torch.no_grad()
def class_prior(model, resolution: int, count: int) -> torch.Tensor:
    """A few class-prior latents for the peers' prior term (its cost per step does not depend on
    how many there are)."""
    images = generate_class_images(model, "a photo of person", count, 2, 0, resolution)
    return model.encode(images.to(model.device)).float()


def run_info(args: argparse.Namespace, cfg: StaticConfig, device: torch.device) -> dict:
    return {
        "device": device_name(device),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
        "model": "SD-1.5-shaped, random weights" if args.full_size else cfg.model.pretrained,
        "dtype": args.dtype,
        "resolution": args.resolution,
        "batch_size": args.batch_size,
        "steps_scale": args.steps_scale,
        "warmup": args.warmup,
        "iters": args.iters,
        "ldu": f"{cfg.trajectory.name} {cfg.trajectory.num_steps} steps, budget "
        f"{cfg.objective.budget}; rho widths {list(cfg.net.widths)}",
        "memory": "CUDA max_memory_allocated" if device.type == "cuda" else "peak RSS (VmHWM)",
    }


def markdown(info: dict, rows: list[dict]) -> str:
    ldu = next(r["s_per_image"] for r in rows if r["method"] == "ldu")
    lines = [f"- {key}: {value}" for key, value in info.items()]
    lines += [
        "",
        "| method | eps/255 | measured plan | s/image | images/s | peak MiB (delta) | x LDU "
        "| default plan | s/image at default (extrapolated) | x LDU (extrapolated) |",
        "|---|---:|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        extra = r.get("extrapolated_s_per_image")
        tail = f"| {r['default_plan']} | {extra:.3g} | {extra / ldu:,.0f} |" if extra else "| | | |"
        lines.append(
            f"| {r['method']} | {r.get('eps_255', '')} | {r['plan']} | {r['s_per_image']:.4g} "
            f"| {r['images_per_s']:.3g} | {r['peak_mib']:.0f} ({r['peak_delta_mib']:.0f}) "
            f"| {r['s_per_image'] / ldu:,.1f} {tail}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    overrides = [*args.overrides, f"model.dtype={args.dtype}", f"model.device={args.device}"]
    cfg = load_bench_config(
        args.recipe, overrides + (PAPER_NET if args.full_size else []), args.resolution
    )
    device = resolve_device(args.device)
    model = (
        sd15_shaped_model(device, DTYPES[args.dtype]) if args.full_size else load_model(cfg.model)
    )
    info = run_info(args, cfg, device)
    warn_if_loaded(info)
    images = load_batch(cfg, args.batch_size, device)
    prior = None
    if any(BASELINES[m].DEFAULTS.get("prior_preservation") for m in args.methods if m != "ldu"):
        prior = class_prior(model, args.resolution, args.class_images)
    started, rows = time.perf_counter(), []
    for method in args.methods:
        if method == "ldu":
            row = bench_ldu(cfg, model, images, args)
        else:
            row = bench_baseline(method, model, images, prior, args)
        print(f"  {method}: {row['s_per_image']:.4g} s/image ({row['plan']})", flush=True)
        rows.append(row)
    info["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    info["wall_s"] = round(time.perf_counter() - started, 1)
    print(markdown(info, rows))
    ratio = {r["method"]: r for r in rows}
    if "aspl" in ratio:
        a, ldu = ratio["aspl"], ratio["ldu"]["s_per_image"]
        print(
            f"\nASPL / LDU per-image time: x{a['s_per_image'] / ldu:,.1f} measured "
            f"({a['plan']}); x{a['extrapolated_s_per_image'] / ldu:,.0f} extrapolated to ASPL's "
            f"defaults ({a['default_plan']}, linear in gradient passes)"
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"info": info, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
