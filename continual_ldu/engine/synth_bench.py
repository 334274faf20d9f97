"""``ldu bench synthfaces``: the evaluation harness on the SynthFaces world, end to end.

1. the world: the reference model (``model.pretrained: reference:default``, built on first use),
   the domain evaluators (trained on first use, cached) and the held-out identities, written as
   concepts (``set_A``/``set_B``/``set_C``); identities used to train protections are disjoint
   from the evaluated ones;
2. the world check: the share of the reference model's generations for pretraining captions that
   the face classifier calls faces, and, from the unprotected cells, the ISM of a personalized
   attacker's generations to its own identity against the other evaluated identities;
3. protections the bench trains itself (``train:``: static LDU with ``ldu static``'s pipeline,
   adaptive LDU with ``ldu train``), each cached in ``<run>/methods/<name>``;
4. ``ldu evaluate`` over methods x purifications x attackers, plus seconds per protected image;
5. ``metrics.csv``, ``report.html``, ``bench.md`` (the table, deltas against ``none``), one MLflow
   run, and, with ``report.benchmarks_md``, the table inside that file's SynthFaces section.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import statistics
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from continual_ldu.config import config_to_dict, dump_config, load_config
from continual_ldu.data.images import save_png
from continual_ldu.engine import checkpoint as ckpt
from continual_ldu.engine.eval_tracking import evaluate_and_report
from continual_ldu.evaluation.cache import tensor_digest
from continual_ldu.evaluation.harness import (
    EvalConfig,
    Evaluation,
    MethodSpec,
    load_set,
    protection_seconds,
    sample,
    sampling_pipeline,
)
from continual_ldu.evaluation.report import GROUP, summarize, tradeoff_plot
from continual_ldu.reference.evaluators import EvaluatorConfig, ensure_evaluators, load_evaluators
from continual_ldu.reference.synthfaces import (
    SynthFacesConfig,
    caption,
    heldout_images,
    make_identity,
    write_heldout_concepts,
)
from continual_ldu.seeding import seed_everything

# (file, x, y): ISM (lower protects more) against PSNR, and the attacker's held-out loss ratio
# (higher protects more) against SSIM, which weighs smooth changes less than PSNR does
TRADEOFF_PLOTS = (
    ("tradeoff.png", "psnr", "ism_synth"),
    ("tradeoff_heldout_ssim.png", "ssim", "heldout_loss_ratio"),
)
TABLE_METRICS = ("psnr", "ssim", "ism_synth", "fdfr_synth", "heldout_loss_ratio", "s_per_image")


@dataclass
class WorldConfig:
    """Which held-out identities are evaluated, and which train the protections."""

    num_concepts: int = 4  # evaluated: held-out identities 0 .. num_concepts-1
    train_first: int = 40  # protections train on held-out identities train_first ..
    train_count: int = 10  # .. train_first + train_count - 1 (every set: 12 images each)
    check_captions: int = 32  # pretraining captions for the detector rate of the world check
    check_steps: int = 25


@dataclass
class TrainSpec:
    """How the bench trains an LDU method before evaluating it (cached in <run>/methods/<name>):
    ``ldu static`` (kind static) or ``ldu train`` (kind adaptive) on ``recipe`` + ``overrides``."""

    kind: Literal["static", "adaptive"] = "static"
    recipe: str = "recipes/static_synthfaces.yaml"
    overrides: list[str] = field(default_factory=list)


@dataclass
class BenchMethodSpec(MethodSpec):
    """A harness method; an LDU method with ``train`` gets its net from the bench's training."""

    train: TrainSpec | None = None

    def validate(self) -> list[str]:
        return [] if self.kind == "ldu" and self.train else super().validate()


@dataclass
class BenchReportConfig:
    benchmarks_md: str | None = None  # e.g. BENCHMARKS.md: replace this report's section there
    section: str = "synthfaces"  # the marker of that section (one per kind of report)
    title: str = "SynthFaces benchmark"


def markers(section: str) -> tuple[str, str]:
    return f"<!-- bench:{section}:begin -->", f"<!-- bench:{section}:end -->"


@dataclass
class SynthBenchConfig(EvalConfig):
    """``ldu evaluate``'s config plus the world, the protections to train, and the report."""

    methods: list[BenchMethodSpec] = field(default_factory=lambda: [BenchMethodSpec()])
    world: WorldConfig = field(default_factory=WorldConfig)
    evaluators: EvaluatorConfig = field(default_factory=EvaluatorConfig)
    report: BenchReportConfig = field(default_factory=BenchReportConfig)

    def validate(self) -> list[str]:
        errors = []
        w = self.world
        if w.train_first < w.num_concepts and w.train_count:
            errors.append("world.train_first must be >= world.num_concepts (disjoint identities)")
        if w.num_concepts < 2:
            errors.append("world.num_concepts must be >= 2 (ISM is compared across identities)")
        return errors


# --- the world --------------------------------------------------------------------------------


def world_config(cfg: SynthBenchConfig, model_path: Path) -> SynthFacesConfig:
    """The SynthFaces world the reference model was built on (from its build_info.json)."""
    info = json.loads((model_path / "build_info.json").read_text(encoding="utf-8"))
    world = SynthFacesConfig(**info["config"]["data"])
    ev = cfg.evaluators
    if (ev.world_seed, ev.num_pretrain_identities) != (world.seed, world.num_pretrain_identities):
        raise ValueError(
            f"evaluators.world_seed / num_pretrain_identities ({ev.world_seed}, "
            f"{ev.num_pretrain_identities}) must be the reference model's world ({world.seed}, "
            f"{world.num_pretrain_identities}): the evaluators must not have seen held-out faces"
        )
    return world


def write_world(world: SynthFacesConfig, cfg: WorldConfig, root: Path) -> tuple[Path, Path]:
    """Evaluated concepts under ``root/concepts``; the protections' training images under
    ``root/train`` (every set of the training identities). Deterministic, written once."""
    concepts, train = root / "concepts", root / "train"
    stamp = root / "world.json"
    wanted = {"world": config_to_dict(world), "bench": config_to_dict(cfg)}
    if stamp.is_file() and json.loads(stamp.read_text(encoding="utf-8")) == wanted:
        return concepts, train
    write_heldout_concepts(replace(world, num_heldout_identities=cfg.num_concepts), concepts)
    for k in range(cfg.train_first, cfg.train_first + cfg.train_count):
        for name, images in heldout_images(world, k).items():
            for i, image in enumerate(images):
                save_png(np.asarray(image), train / f"id_{k:03d}_{name}_{i}.png")
    stamp.write_text(json.dumps(wanted), encoding="utf-8")
    return concepts, train


@torch.no_grad()
def detector_rate(
    cfg: SynthBenchConfig, world: SynthFacesConfig, evaluation: Evaluation, evaluators
) -> dict:
    """Share of the base model's generations for pretraining captions that are called faces."""
    model, w = evaluation.model, cfg.world
    pipe = sampling_pipeline(model)
    count = min(w.check_captions, world.num_pretrain_identities)
    prompts = [caption(make_identity(world.seed, i)) for i in range(count)]
    images = sample(pipe, prompts, cfg.data.resolution, cfg.generation, w.check_steps)
    probs = evaluators.face_probability(images.to(model.device))
    return {
        "detector_rate": float((probs >= 0.5).float().mean()),
        "mean_face_probability": float(probs.mean()),
        "num_generations": len(probs),
    }


def ism_gap(grids: list[dict], concepts: list[Path], evaluators, resolution: int) -> dict:
    """From the unprotected, unpurified cells: ISM of each attacker's generations to its own
    identity against the other evaluated identities (the world is learnable if own >> other)."""
    identities = {}
    for concept in concepts:
        ref = (load_set(concept / "set_A", resolution) + 1) / 2
        vector = evaluators.embed(ref).mean(0)
        identities[concept.name] = vector / vector.norm().clamp_min(1e-12)
    out = {}
    for grid in grids:
        if grid["method"] != "none" or grid["purification"] != "none":
            continue
        gens = evaluators.embed(((grid["generations"].float() + 1) / 2).clamp(0, 1))
        scores = {name: float((gens @ v).mean()) for name, v in identities.items()}
        own = scores.pop(grid["concept"])
        entry = out.setdefault(grid["attacker"], {"own": [], "other": []})
        entry["own"].append(own)
        entry["other"].extend(scores.values())
    return {
        attacker: {
            "ism_own": statistics.fmean(v["own"]),
            "ism_other": statistics.fmean(v["other"]),
            "gap": statistics.fmean(v["own"]) - statistics.fmean(v["other"]),
        }
        for attacker, v in out.items()
    }


# --- protections the bench trains ---------------------------------------------------------------


def train_protection(cfg: SynthBenchConfig, method: BenchMethodSpec, train_dir: Path) -> Path:
    """Train (or reuse) ``method``'s net; returns its perturbation_net folder.

    The training run uses the bench's model, resolution, trajectory and objective, so that the
    net is evaluated exactly as it was trained."""
    spec, out = method.train, cfg.out / "methods" / method.name
    res = cfg.data.resolution
    common = [
        f"run.output_dir={out}",
        f"model.pretrained={cfg.model.pretrained}",
        f"data.resolution={cfg.data.resolution}",
        f"run.seed={cfg.run.seed}",
    ]
    if spec.kind == "static":
        from continual_ldu.engine.static import StaticConfig, run_static

        net = out / "perturbation_net"
        if not (net / "config.json").is_file():
            static = load_config(
                StaticConfig,
                spec.recipe,
                [*common, f"data.train_dir={train_dir}", f"data.min_side={res}", *spec.overrides],
            )
            static.trajectory, static.objective = cfg.trajectory, method.objective(cfg.objective)
            run_static(static)
        return net
    from continual_ldu.engine.trainer import TrainConfig, Trainer

    train = load_config(
        TrainConfig,
        spec.recipe,
        [*common, "stream.source=folder", f"stream.path={train_dir}", f"stream.min_side={res}"]
        + spec.overrides,
    )
    train.trajectory, train.objective = cfg.trajectory, method.objective(cfg.objective)
    latest = ckpt.latest_checkpoint(out / "checkpoints")
    if latest is None or not (out / "done.json").is_file():
        Trainer(train).train()
        (out / "done.json").write_text("{}")
        latest = ckpt.latest_checkpoint(out / "checkpoints")
    return latest / "net"


def seconds_per_image(evaluation: Evaluation, method, images: torch.Tensor, reference) -> float:
    """Seconds per image of protecting ``images`` (clean ``reference`` set_A for the baselines
    that fit a surrogate) with ``method``: the time recorded in the protect stage, which the
    evaluation then reuses. A stage cached before timings were recorded is computed again
    (protection is deterministic under the run's seed, so what depends on it stays valid)."""
    if method.kind == "none":
        return 0.0
    key_b = tensor_digest(images)
    _, key = evaluation.protect(method, images, key_b, reference)
    folder = evaluation.cache.folder("protect", key)
    seconds = protection_seconds(folder)
    if seconds is None:
        shutil.rmtree(folder)
        evaluation.protect(method, images, key_b, reference)
        seconds = protection_seconds(folder)
    return seconds


# --- the table --------------------------------------------------------------------------------


def bench_table(rows: list[dict]) -> str:
    """Markdown: mean over concepts per cell, with ISM/FDFR changes against ``none``."""
    summary = summarize(rows)
    base = {(s["purification"], s["attacker"]): s for s in summary if s["method"] == "none"}

    def value(entry: dict, name: str) -> float | None:
        v = entry.get(name)
        return v[0] if isinstance(v, tuple) else None

    def fmt(v: float | None, digits: int = 3) -> str:
        return "n/a" if v is None else f"{v:.{digits}f}"

    header = [*GROUP, "PSNR", "SSIM", "ISM", "dISM", "FDFR", "dFDFR", "heldout ratio", "s/img"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in summary:
        b = base.get((s["purification"], s["attacker"]), {})
        ism, fdfr = value(s, "ism_synth"), value(s, "fdfr_synth")
        d_ism = (
            None if ism is None or value(b, "ism_synth") is None else ism - value(b, "ism_synth")
        )
        d_fdfr = (
            None
            if fdfr is None or value(b, "fdfr_synth") is None
            else fdfr - value(b, "fdfr_synth")
        )
        psnr = s.get("psnr")
        cells = [
            *(str(s[k]) for k in GROUP),
            "inf" if isinstance(psnr, str) else fmt(value(s, "psnr"), 2),
            fmt(value(s, "ssim")),
            fmt(ism),
            fmt(d_ism),
            fmt(fdfr, 2),
            fmt(d_fdfr, 2),
            fmt(value(s, "heldout_loss_ratio")),
            fmt(value(s, "s_per_image"), 3),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def update_benchmarks(path: Path, text: str, section: str, title: str) -> None:
    """Replace the marked ``section`` of ``path`` (appended under ``title`` when it is absent)."""
    begin, end = markers(section)
    block = f"{begin}\n{text.rstrip()}\n{end}"
    current = path.read_text(encoding="utf-8") if path.is_file() else ""
    if begin in current and end in current:
        pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
        current = pattern.sub(lambda _: block, current)
    else:
        current = f"{current.rstrip()}\n\n## {title} (`ldu bench synthfaces`)\n\n{block}"
    path.write_text(current.rstrip() + "\n", encoding="utf-8")


# --- the command --------------------------------------------------------------------------------


def run_bench(cfg: SynthBenchConfig) -> dict:
    """The whole bench; returns the summary that ``bench.json`` holds."""
    from continual_ldu.models.loading import load_model

    started = time.perf_counter()
    seed_everything(cfg.run.seed)
    cfg.out.mkdir(parents=True, exist_ok=True)
    model_path = Path(load_model(cfg.model).source)  # builds reference:NAME on first use
    world = world_config(cfg, model_path)
    cfg.data.resolution = world.resolution
    concepts_dir, train_dir = write_world(world, cfg.world, cfg.out / "world")
    cfg.data.concepts_dir = str(concepts_dir)
    cfg.data.concepts = [f"id_{k:03d}" for k in range(cfg.world.num_concepts)]
    evaluators_path = ensure_evaluators(cfg.evaluators)
    cfg.metrics.synth_evaluators_weights = str(evaluators_path)
    evaluators = load_evaluators(evaluators_path)
    for method in (m for m in cfg.methods if m.train):
        method.path = str(train_protection(cfg, method, train_dir))
    dump_config(cfg, cfg.out / "config.yaml")

    evaluation = Evaluation(cfg)
    check = detector_rate(cfg, world, evaluation, evaluators)
    probe = [load_set(concepts_dir / "id_000" / s, cfg.data.resolution) for s in ("set_B", "set_A")]
    timing = {
        m.name: seconds_per_image(evaluation, m, *probe)
        for m in tqdm(cfg.methods, desc="protect (timed, first identity)", unit="method")
    }
    rows, paths, run_id = evaluate_and_report(
        cfg,
        evaluation,
        cfg.report.title,
        extra=lambda row: {"s_per_image": timing[row["method"]]},
        tradeoff_y="ism_synth",
    )
    summary = summarize(rows)
    for name, x, y in TRADEOFF_PLOTS:  # protection against imperceptibility, per purification
        plot = tradeoff_plot(summary, x, y)
        if plot:
            (cfg.out / name).write_bytes(base64.b64decode(plot))
    concepts = [concepts_dir / name for name in cfg.data.concepts]
    gap = ism_gap(evaluation.grids, concepts, evaluators, world.resolution)
    table = bench_table(rows)
    summary = {
        "model": str(model_path),
        "evaluators": str(evaluators_path),
        "world_check": {
            "detector_rate": check["detector_rate"],
            "mean_face_probability": check["mean_face_probability"],
            "num_generations": check["num_generations"],
            "ism_gap": gap,
        },
        "seconds_per_image": timing,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "mlflow_run_id": run_id,
        **{k: str(v) for k, v in paths.items()},
    }
    (cfg.out / "bench.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    (cfg.out / "bench.md").write_text(bench_markdown(cfg, summary, table), encoding="utf-8")
    if cfg.report.benchmarks_md:
        r = cfg.report
        update_benchmarks(
            Path(r.benchmarks_md), bench_markdown(cfg, summary, table), r.section, r.title
        )
    return summary


def bench_markdown(cfg: SynthBenchConfig, summary: dict, table: str) -> str:
    check = summary["world_check"]
    gaps = "; ".join(
        f"{attacker}: own {g['ism_own']:.3f} vs other {g['ism_other']:.3f} (gap {g['gap']:.3f})"
        for attacker, g in check["ism_gap"].items()
    )
    return (
        f"Model `{cfg.model.pretrained}`, {cfg.world.num_concepts} held-out identities, "
        f"{cfg.generation.num_images_per_prompt} generations per prompt x "
        f"{len(cfg.generation.prompts)} prompts; protections trained on held-out identities "
        f"{cfg.world.train_first}-{cfg.world.train_first + cfg.world.train_count - 1}. "
        f"Wall time {summary['wall_seconds'] / 60:.1f} min.\n\n"
        f"World check: {check['detector_rate']:.0%} of {check['num_generations']} generations "
        f"for pretraining captions are faces to the face classifier; ISM of unprotected "
        f"attackers' generations to their own identity vs the others: {gaps or 'n/a'}.\n\n"
        "dISM / dFDFR: change against `none` under the same purification and attacker "
        "(protection lowers ISM and raises FDFR). PSNR/SSIM: protected vs clean set_B.\n\n" + table
    )
