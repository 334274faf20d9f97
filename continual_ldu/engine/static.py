"""The static pipeline (the paper): fit the surrogate, train rho against it, protect.

Stages and what each writes under ``run.output_dir``:
  fit_surrogate  surrogate/   TI embedding or LoRA (diffusers formats) or DreamBooth folders
  fit_flow       flow/        the ``flow`` trajectory's velocity model (only for that trajectory)
  train_net      perturbation_net/  rho's safetensors + config.json; metrics.jsonl
  protect        protected/   PNGs under the original names; summary.json
Every stage writes the resolved config as ``config.yaml`` beside its outputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from continual_ldu.baselines import BASELINES, BaselineConfig, build_baseline
from continual_ldu.config import config_to_dict, dump_config
from continual_ldu.data.images import load_folder, prepare, to_tensor
from continual_ldu.data.streams import StreamConfig
from continual_ldu.engine import checkpoint as ckpt
from continual_ldu.engine.protect import BaselineProtector, protect_folder, write_summary
from continual_ldu.engine.rounds import class_latents, encode_batched
from continual_ldu.engine.tracking import TrackingConfig
from continual_ldu.engine.trainer import (
    CheckpointConfig,
    GeneratorConfig,
    LoopConfig,
    TrainConfig,
    Trainer,
)
from continual_ldu.engine.trainer import DataConfig as TrainDataConfig
from continual_ldu.engine.trainer import RunConfig as TrainRunConfig
from continual_ldu.method.objectives import (
    ObjectiveConfig,
)
from continual_ldu.method.protector import Protector
from continual_ldu.method.trajectory import TrajectoryConfig, build_trajectory
from continual_ldu.models.flow_denoiser import build_flow_model, flow_matching_loss
from continual_ldu.models.loading import LatentDiffusionModel, ModelConfig, load_model
from continual_ldu.models.perturbation_net import PerturbationNet
from continual_ldu.personalizers import (
    Personalizer,
    PersonalizerConfig,
    build_personalizer,
)
from continual_ldu.seeding import make_generator, seed_everything

STATIC_ROUND_SIZE = 1_000_000  # every owner image in the one round (the stream's last, partial one)


@dataclass
class RunConfig:
    output_dir: str = "runs/static"
    seed: int = 0


@dataclass
class DataConfig:
    """The owner's clean images and how they are read."""

    train_dir: str = "continual_ldu/assets/demo"
    resolution: int = 64
    min_side: int = 64
    max_pixels: int = 40_000_000

    def validate(self) -> list[str]:
        return [] if self.resolution >= 8 else ["resolution must be >= 8"]


@dataclass
class NetConfig:
    """rho's widths (the paper: 64/128/256/512, bottleneck 1024) and its training."""

    widths: tuple[int, ...] = (64, 128, 256, 512)
    bottleneck: int = 1024
    num_steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.0
    log_every: int = 10


@dataclass
class ProtectConfig:
    """How ``ldu protect`` publishes a folder: with the trained LDU net, or a pixel baseline."""

    input_dir: str | None = None  # None: data.train_dir
    output_dir: str | None = None  # None: <run.output_dir>/protected
    batch_size: int = 8
    method: str = "ldu"  # "ldu", or a baseline of continual_ldu.baselines.BASELINES (e.g. aspl)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)  # its knobs (None: peer's)
    reference_dir: str | None = None  # clean set A for surrogate baselines; None: each batch

    def validate(self) -> list[str]:
        if self.method == "ldu":
            return []
        if self.method not in BASELINES:
            return [f"method: {self.method!r} is neither 'ldu' nor one of {', '.join(BASELINES)}"]
        if self.baseline.name not in (None, self.method):
            return [f"baseline.name {self.baseline.name!r} contradicts method {self.method!r}"]
        # The sub-config checks its values itself; the knobs depend on the method named here.
        return [f"baseline.{p}" for p in self.baseline_config().unused_knobs()]

    def baseline_config(self) -> BaselineConfig:
        return dataclasses.replace(self.baseline, name=self.method)


@dataclass
class StaticConfig:
    """The root config of the static method."""

    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trajectory: TrajectoryConfig = field(default_factory=TrajectoryConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    surrogate: PersonalizerConfig = field(default_factory=PersonalizerConfig)
    net: NetConfig = field(default_factory=NetConfig)
    protect: ProtectConfig = field(default_factory=ProtectConfig)

    @property
    def out(self) -> Path:
        return Path(self.run.output_dir)


def load_clean_images(
    cfg: StaticConfig, device: torch.device, folder: str | None = None
) -> torch.Tensor:
    """The owner's training images (or ``folder``'s) as a [-1, 1] batch; skips are reported."""
    folder, key = (
        (folder, "protect.reference_dir") if folder else (cfg.data.train_dir, "data.train_dir")
    )
    loaded, skipped = load_folder(Path(folder), cfg.data.min_side, cfg.data.max_pixels)
    for item in skipped:
        print(f"skipped {item.path}: {item.reason}")
    if not loaded:
        raise ValueError(f"{key}: no usable images in {folder}")
    return to_tensor([prepare(item.image, cfg.data.resolution) for item in loaded]).to(device)


def optimize(
    params: list[torch.nn.Parameter],
    loss_fn,
    num_steps: int,
    lr: float,
    weight_decay: float,
    desc: str,
) -> list[float]:
    """A plain AdamW loop with a progress bar; returns the loss trace."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    trace = []
    bar = tqdm(range(num_steps), desc=desc, unit="step", dynamic_ncols=True)
    for step in bar:
        loss = loss_fn(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        trace.append(loss.item())
        bar.set_postfix(loss=f"{trace[-1]:.4f}")
    return trace


def build_surrogate(cfg: StaticConfig, model: LatentDiffusionModel) -> Personalizer:
    personalizer = build_personalizer(cfg.surrogate, model)
    if cfg.surrogate.prior_preservation:
        personalizer.class_latents = class_latents(
            cfg.out / "class_latents.pt", cfg.surrogate, model, cfg.data.resolution
        )
    return personalizer


def fit_surrogate(cfg: StaticConfig, model: LatentDiffusionModel | None = None) -> Personalizer:
    """Stage 1: fit the surrogate personalizer on the clean images; save it."""
    model = model or load_model(cfg.model)
    seed_everything(cfg.run.seed)  # after loading: a first build of builtin:tiny draws from it
    cfg.out.mkdir(parents=True, exist_ok=True)
    latents = encode_batched(model, load_clean_images(cfg, model.device))
    personalizer = build_surrogate(cfg, model)
    generator, s = make_generator(cfg.run.seed), cfg.surrogate

    def step_loss(step: int) -> torch.Tensor:
        index = torch.randint(0, len(latents), (s.batch_size,), generator=generator)
        return personalizer.training_loss(latents[index], generator)["loss"]

    trace = optimize(
        personalizer.trainable_parameters(),
        step_loss,
        s.num_steps,
        s.learning_rate,
        s.weight_decay,
        f"surrogate ({s.name})",
    )
    personalizer.save(cfg.out / "surrogate")
    write_json(cfg.out / "surrogate" / "trace.json", {"loss": trace})
    dump_config(cfg, cfg.out / "config.yaml")
    return personalizer


def fit_flow(cfg: StaticConfig, model: LatentDiffusionModel, latents: torch.Tensor):
    """The ``flow`` trajectory's model, fitted on the owner's latents (cached in the run)."""
    folder = cfg.out / "flow"
    if (folder / "config.json").is_file():
        from diffusers import UNet2DModel

        return UNet2DModel.from_pretrained(folder).to(model.device).requires_grad_(False)
    fc = cfg.trajectory.flow
    flow = build_flow_model(latents.shape[1], latents.shape[-1], fc).to(model.device)
    generator = make_generator(cfg.run.seed + 1)

    def step_loss(step: int) -> torch.Tensor:
        index = torch.randint(0, len(latents), (fc.batch_size,), generator=generator)
        return flow_matching_loss(flow, latents[index], generator)

    optimize(list(flow.parameters()), step_loss, fc.num_train_steps, fc.lr, 0.0, "flow model")
    flow.save_pretrained(folder)
    return flow.eval().requires_grad_(False)


def build_protector(
    cfg: StaticConfig, model: LatentDiffusionModel, net: PerturbationNet
) -> Protector:
    """The protection map for this config (with the run's fitted flow model, if it needs one)."""
    flow = None
    if cfg.trajectory.name == "flow":
        if not (cfg.out / "flow" / "config.json").is_file():
            raise ValueError(f"trajectory.name=flow: no fitted flow model in {cfg.out / 'flow'}")
        flow = fit_flow(cfg, model, None)  # reads the cached model
    trajectory = build_trajectory(cfg.trajectory, model, flow)
    return Protector(model, trajectory, net, cfg.objective.output)


def static_train_config(cfg: StaticConfig) -> TrainConfig:
    """The min-max engine's config for the static method: k_min = 0, one round, fixed surrogate.

    The owner's images arrive as one round; rho takes ``net.num_steps`` generator steps on
    random subsets of ``net.batch_size`` images against the pre-fitted surrogate.
    """
    return TrainConfig(
        run=TrainRunConfig(output_dir=str(cfg.out / "training"), seed=cfg.run.seed, resume="never"),
        model=cfg.model,
        data=TrainDataConfig(resolution=cfg.data.resolution),
        stream=StreamConfig(
            source="folder",
            path=cfg.data.train_dir,
            batch_size=STATIC_ROUND_SIZE,
            idle_timeout_seconds=0.0,
            poll_seconds=0.05,
            min_side=cfg.data.min_side,
            max_pixels=cfg.data.max_pixels,
        ),
        trajectory=cfg.trajectory,
        objective=cfg.objective,
        attacker=cfg.surrogate,
        generator=GeneratorConfig(
            cfg.net.widths, cfg.net.bottleneck, cfg.net.lr, cfg.net.weight_decay
        ),
        loop=LoopConfig(
            k_min=0,
            k_max=cfg.net.num_steps,
            max_rounds=1,
            replay_size=0,
            replay_per_step=0,
            pool_size=0,
            attacker_init=str(cfg.out / "surrogate"),
            generator_batch_size=cfg.net.batch_size,
        ),
        checkpoint=CheckpointConfig(every_rounds=1, keep_last=1),
        tracking=TrackingConfig(
            experiment="continual_ldu_static", register_model=None, system_metrics=False
        ),
    )


def train_net(cfg: StaticConfig, model: LatentDiffusionModel | None = None) -> Path:
    """Stage 2: the min-max engine with k_min = 0 trains rho against the frozen surrogate."""
    if not (cfg.out / "surrogate").is_dir():
        raise ValueError(
            f"no fitted surrogate in {cfg.out / 'surrogate'}: run `ldu fit-surrogate` first"
        )
    flow = None
    if cfg.trajectory.name == "flow":
        model = model or load_model(cfg.model)
        flow = fit_flow(cfg, model, encode_batched(model, load_clean_images(cfg, model.device)))
    train_cfg = static_train_config(cfg)
    Trainer(train_cfg, flow_model=flow).train()
    latest = ckpt.latest_checkpoint(train_cfg.out / "checkpoints")
    target = cfg.out / "perturbation_net"
    shutil.copytree(latest / "net", target, dirs_exist_ok=True)
    dump_config(cfg, cfg.out / "config.yaml")
    return target


def protect(cfg: StaticConfig, model: LatentDiffusionModel | None = None) -> dict:
    """Stage 3: one forward pass per image over ``protect.input_dir``; PNGs and summary.json."""
    model = model or load_model(cfg.model)
    if cfg.protect.method != "ldu":
        return protect_with_baseline(cfg, model)
    folder = cfg.out / "perturbation_net"
    if not (folder / "config.json").is_file():
        raise ValueError(f"no trained perturbation net in {folder}: run `ldu train-net` first")
    net = PerturbationNet.from_pretrained(folder).to(model.device).eval()
    protector = build_protector(cfg, model, net)
    output_dir = Path(cfg.protect.output_dir or cfg.out / "protected")
    summary = protect_folder(
        protector,
        Path(cfg.protect.input_dir or cfg.data.train_dir),
        output_dir,
        cfg.data.resolution,
        cfg.objective.budget,
        cfg.objective.budget_value,
        cfg.protect.batch_size,
        cfg.data.min_side,
        cfg.data.max_pixels,
        cfg.run.seed,
    )
    write_summary(summary, output_dir / "summary.json")
    dump_config(cfg, output_dir / "config.yaml")
    return summary


def protect_with_baseline(cfg: StaticConfig, model: LatentDiffusionModel) -> dict:
    """``ldu protect`` with ``protect.method=<baseline>``: the same PNGs and summary as LDU's.

    The folder loop's budget check gets half a grey level of slack over the baseline's whole
    levels (k/255 is not exact in float32); the summary states the budget as configured and
    measures ``linf_255`` and PSNR on every saved file.
    """
    baseline = build_baseline(cfg.protect.baseline_config(), model)
    seed_everything(cfg.run.seed)
    if baseline.needs_class_latents:
        baseline.class_latents = baseline_class_latents(cfg, baseline.cfg, model)
    reference = None
    if cfg.protect.reference_dir:
        reference = load_clean_images(cfg, model.device, cfg.protect.reference_dir)
    output_dir = Path(cfg.protect.output_dir or cfg.out / "protected")
    summary = protect_folder(
        BaselineProtector(baseline, reference),
        Path(cfg.protect.input_dir or cfg.data.train_dir),
        output_dir,
        cfg.data.resolution,
        "linf",
        (math.floor(baseline.cfg.eps + 1e-6) + 0.5) / 255,
        cfg.protect.batch_size,
        cfg.data.min_side,
        cfg.data.max_pixels,
        cfg.run.seed,
    )
    summary["budget"] = {"kind": "linf", "linf_255": baseline.cfg.eps}
    summary["method"] = config_to_dict(baseline.cfg)
    write_summary(summary, output_dir / "summary.json")
    dump_config(cfg, output_dir / "config.yaml")
    return summary


def baseline_class_latents(cfg: StaticConfig, prior, model: LatentDiffusionModel) -> torch.Tensor:
    """A baseline's class-prior latents, generated once per prior setting and cached in the run."""
    key = json.dumps([prior.prior_settings(), cfg.data.resolution], sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    path = cfg.out / f"baseline_class_latents_{digest}.pt"
    return class_latents(path, prior, model, cfg.data.resolution)


def run_static(cfg: StaticConfig) -> dict:
    """All three stages on one loaded model."""
    model = load_model(cfg.model)
    fit_surrogate(cfg, model)
    train_net(cfg, model)
    return protect(cfg, model)


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
