"""The adaptive continual min-max trainer (the static method is the same loop with k_min = 0).

    for each round r, batch B_r from the stream:
        prepared  = G.prepare(B_r)                         # encode + invert, no grad
        published = budget(quantize(G_rho(B_r))).detach()  # what the owner publishes
        repeat k_min:  theta <- theta - lr * grad L_pers(theta; published_r u replayed published)
        repeat k_max:  rho <- rho - lr * grad [ -L_pers(theta, pool; G_rho(B_r u replay))
                                                 + lambda * relu(d / budget - 1) ]
                       lambda <- max(0, lambda + lr_dual * (d / budget - 1))   (dual mode)
        replay.add(B_r); pool.add(theta); log; checkpoint
The attacker theta is carried over between rounds (reset only if ``loop.reset_attacker``). In the
max step its parameters are frozen (requires_grad off) but differentiated through. New uploads are
published at once with the current rho (one forward pass), before the round trains on them: start
from a trained rho (``loop.generator_init``) so that the first round is protected too.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from continual_ldu.config import dump_config, flatten_config
from continual_ldu.data.images import prepare, to_tensor
from continual_ldu.data.streams import StreamConfig, build_stream
from continual_ldu.engine import checkpoint as ckpt
from continual_ldu.engine.distributed import AttackerRunner, Distributed, DistributedConfig
from continual_ldu.engine.replay import ReplayBuffer, SnapshotPool
from continual_ldu.engine.rounds import (
    RunState,
    class_latents,
    encode_batched,
    image_grid,
    published_fidelity,
    read_checkpoint,
    save_published,
    write_checkpoint,
)
from continual_ldu.engine.signals import StopFlag
from continual_ldu.engine.tracking import Tracker, TrackingConfig
from continual_ldu.method.objectives import (
    ObjectiveConfig,
    budget_penalty,
    distance,
    lagrangian,
)
from continual_ldu.method.protector import Prepared, Protector, enforce_budget
from continual_ldu.method.trajectory import TrajectoryConfig, build_trajectory
from continual_ldu.models.loading import ModelConfig, load_model
from continual_ldu.models.perturbation_net import PerturbationNet
from continual_ldu.personalizers import PersonalizerConfig, build_personalizer
from continual_ldu.seeding import make_generator, seed_everything


@dataclass
class RunConfig:
    output_dir: str = "runs/adaptive"
    seed: int = 0
    resume: str = "auto"  # auto: continue from checkpoints/latest if present; never: start fresh


@dataclass
class DataConfig:
    resolution: int = 64


@dataclass
class GeneratorConfig:
    """rho's widths and optimizer."""

    widths: tuple[int, ...] = (64, 128, 256, 512)
    bottleneck: int = 1024
    lr: float = 1e-4
    weight_decay: float = 0.0


@dataclass
class LoopConfig:
    """The alternation and the continual safeguards."""

    k_min: int = 2  # attacker steps per round (0: the static method)
    k_max: int = 4  # generator steps per round
    max_rounds: int | None = None  # None: until the stream ends
    attacker_batch_size: int = 4
    replay_size: int = 64  # items kept for replay
    replay_per_step: int = 4  # replayed items mixed into each step's batch
    pool_size: int = 2  # past attacker snapshots rho must also defeat
    pool_weight: float = 0.5
    reset_attacker: bool = False
    attacker_init: str | None = None  # a fitted surrogate folder (static: k_min = 0)
    generator_batch_size: int | None = None  # cap on items per generator step (random subset)
    generator_init: str | None = None  # a trained rho folder (e.g. static LDU's perturbation_net)
    log_every_steps: int = 1

    def validate(self) -> list[str]:
        errors = []
        if self.k_min < 0 or self.k_max < 0:
            errors.append("k_min and k_max must be >= 0")
        if self.k_min == 0 and self.k_max > 0 and self.attacker_init is None:
            errors.append("k_min=0 trains against a fixed attacker: set loop.attacker_init")
        return errors


@dataclass
class CheckpointConfig:
    every_rounds: int = 1
    keep_last: int = 2


@dataclass
class TrainConfig:
    """The root config of ``ldu train``."""

    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)
    trajectory: TrajectoryConfig = field(default_factory=TrajectoryConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    attacker: PersonalizerConfig = field(
        default_factory=lambda: PersonalizerConfig(name="dreambooth_lora", lr=1e-4)
    )
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    @property
    def out(self) -> Path:
        return Path(self.run.output_dir)


class Trainer:
    """Owns every side effect of a min-max run; the algorithm lives in ``continual_ldu.method``."""

    def __init__(self, cfg: TrainConfig, flow_model=None) -> None:
        """``flow_model``: the fitted velocity field that ``trajectory.name=flow`` needs."""
        self.cfg, self.dist = cfg, Distributed(cfg.distributed)
        self.flow_model = flow_model
        # Rank 0 first: it builds a built-in model on first use (transformers' save_pretrained
        # writes weights only on rank 0 of a process group), the others then read it.
        with self.dist.accelerator.main_process_first():
            self.model = load_model(cfg.model).to(self.dist.device)
        # Seed after loading: building a built-in model on first use draws from the global RNG.
        seed_everything(cfg.run.seed)
        self.stop = StopFlag().install()
        self.state = RunState(lam=cfg.objective.lambda_init)
        self.generator = make_generator(cfg.run.seed * 1000 + self.dist.rank)
        self._build_players()
        self.replay = ReplayBuffer(cfg.loop.replay_size)
        self.pool = SnapshotPool(cfg.loop.pool_size)
        self.stream = build_stream(
            cfg.stream, cfg.out, self.dist.rank, self.dist.world_size, agree=self.dist.broadcast
        )
        self.tracker: Tracker | None = None  # opened once the run id is known (resume)
        self.pending_positions: list[int] = []  # trained since the last committed checkpoint

    def _build_players(self) -> None:
        cfg = self.cfg
        channels = self.model.unet.config.in_channels
        g = cfg.generator
        net = PerturbationNet(channels, g.widths, g.bottleneck)
        if cfg.loop.generator_init:  # a round's images are published with the current rho,
            # so a fresh rho (zero head) publishes round 1 unprotected; a trained one does not.
            net = PerturbationNet.from_pretrained(cfg.loop.generator_init)
        net = net.to(self.dist.device)
        optimizer = torch.optim.AdamW(net.parameters(), lr=g.lr, weight_decay=g.weight_decay)
        self.net, self.net_optimizer = self.dist.prepare_generator(net, optimizer)
        trajectory_cfg = cfg.trajectory
        trajectory_cfg.gradient_checkpointing |= cfg.distributed.gradient_checkpointing
        trajectory = build_trajectory(trajectory_cfg, self.model, self.flow_model)
        self.protector = Protector(self.model, trajectory, self.net, cfg.objective.output)
        self.attacker = build_personalizer(cfg.attacker, self.model)
        if cfg.attacker.prior_preservation:
            self.attacker.class_latents = class_latents(
                cfg.out / "class_latents.pt", cfg.attacker, self.model, cfg.data.resolution
            )
        self.attacker_params = self.attacker.trainable_parameters()
        if cfg.loop.attacker_init:
            self.attacker.load(Path(cfg.loop.attacker_init))
        # What reset_attacker returns to: the initial (or pre-fitted) attacker.
        self.attacker_start = [p.detach().clone() for p in self.attacker_params]
        if cfg.loop.reset_attacker and self.dist.uses_deepspeed:
            raise ValueError(
                "loop.reset_attacker is not supported under DeepSpeed (ZeRO keeps "
                "its own master weights); use the DDP launch config"
            )
        self.runner = AttackerRunner(
            self.dist, self.attacker, cfg.attacker.learning_rate, cfg.attacker.weight_decay
        )

    # -- the loop --------------------------------------------------------------------------

    def train(self) -> dict:
        """Run rounds until the stream ends, ``max_rounds`` is reached or a stop signal."""
        self._resume_or_start()
        loop = self.cfg.loop
        bar = tqdm(
            desc="rounds",
            unit="round",
            disable=not self.dist.is_main,
            dynamic_ncols=True,
            initial=self.state.round,
            total=loop.max_rounds,
        )
        while loop.max_rounds is None or self.state.round < loop.max_rounds:
            items = self.stream.next_batch()
            if items is None or self.stop_agreed():
                break
            self.train_round(items, bar)
            self.state.round += 1
            bar.update(1)
            stopping = self.stop_agreed()
            if self.state.round % self.cfg.checkpoint.every_rounds == 0 or stopping:
                self.save_checkpoint()
            if stopping:
                break
        bar.close()
        return self.finish()

    def train_round(self, items, bar) -> None:
        """One round: publish, inner min (attacker), outer max (generator), bookkeeping.

        A stop signal ends the round after the running step; the round still counts as trained
        (its items are not re-read), so the checkpoint that follows stays exactly-once.
        """
        started = time.perf_counter()
        if not items:  # this rank's share was all quarantined: nothing new to publish here
            raise ValueError(
                f"round {self.state.round}: rank {self.dist.rank} received no usable item; use a "
                "stream.batch_size of at least 2 x the number of processes"
            )
        clean = to_tensor([prepare(item.image, self.cfg.data.resolution) for item in items])
        prepared = self.protector.prepare(clean.to(self.dist.device), self.generator)
        published = self.publish(prepared, items)
        self.replay.add(prepared, encode_batched(self.model, published))
        if self.cfg.loop.reset_attacker:
            self.reset_attacker()
        self.run_steps(prepared, bar)
        self.pool.add(self.attacker)
        self.pending_positions += [item.position for item in items]
        self.state.items_seen = self.stream.state_dict()["cursor"]  # positions, over all ranks
        self.round_metrics(prepared, published, len(items), time.perf_counter() - started, bar)

    def run_steps(self, prepared: Prepared, bar) -> None:
        """k_min attacker steps, then k_max generator steps; a stop signal ends them early."""
        steps = [self.min_step] * self.cfg.loop.k_min
        steps += [lambda b: self.max_step(prepared, b)] * self.cfg.loop.k_max
        for step in steps:
            step(bar)
            if self.stop_agreed():
                return

    def stop_agreed(self) -> bool:
        """Whether to stop now, agreed by every rank at the same point: a signal may reach the
        ranks a step apart, and a rank that stopped alone would leave the others waiting in a
        collective (the all-reduce of the next step, or the checkpoint's barrier)."""
        if self.dist.any(self.stop.requested is not None) and not self.stop.requested:
            self.stop.requested = "a stop signal on another rank"
        return self.stop.requested is not None

    @torch.no_grad()
    def reset_attacker(self) -> None:
        """A fresh attacker each round (``loop.reset_attacker``): initial weights, no moments."""
        for param, start in zip(self.attacker_params, self.attacker_start, strict=True):
            param.copy_(start)
        self.runner.optimizer.state.clear()

    def min_step(self, bar) -> None:
        """Inner min: the attacker fine-tunes on what has been published (detached)."""
        batch = self.replay.sample(self.cfg.loop.attacker_batch_size, self.generator)
        latents = batch["published"].to(self.dist.device)
        losses = self.runner.step(latents, self.generator)
        self.state.step_min += 1
        self.log_step({"attacker_loss": losses["loss"].item()}, "min", bar)

    def max_step(self, prepared: Prepared, bar) -> None:
        """Outer max: rho against the frozen (but differentiated-through) attacker and pool."""
        o, budget = self.cfg.objective, self.cfg.objective.budget_value
        batch = self.mix_replay(prepared)
        protected, shifted = self.protector(batch)
        target = self.model.encode(protected) if o.roundtrip else shifted
        attacker = self.attacker
        for p in self.attacker_params:  # frozen, but differentiated through
            p.requires_grad_(False)
        pers = self.pool_loss(attacker, target)
        dist = distance(protected, batch.clean, o.budget)
        loss = lagrangian(pers, budget_penalty(dist, budget), self.state.lam)
        self.net_optimizer.zero_grad(set_to_none=True)
        self.dist.backward_generator(loss)
        self.net_optimizer.step()
        for p in self.attacker_params:
            p.requires_grad_(True)
        ratio = self.dist.mean(float((dist.detach() / budget).mean()))
        if o.lambda_mode == "dual":
            self.state.lam = max(0.0, self.state.lam + o.lr_dual * (ratio - 1))
        self.state.step_max += 1
        self.log_step(
            {
                "generator_loss": loss.item(),
                "personalization_loss": pers.item(),
                "budget_ratio": ratio,
                "lambda": self.state.lam,
            },
            "max",
            bar,
        )

    def pool_loss(self, attacker, target: torch.Tensor) -> torch.Tensor:
        """L_pers against the current attacker, mixed with one sampled past snapshot."""
        n = self.cfg.objective.num_noise_samples
        pers = attacker.loss(target, self.generator, n)
        if len(self.pool) == 0 or self.cfg.loop.pool_weight <= 0:
            return pers
        index = int(torch.randint(0, len(self.pool), (1,), generator=self.generator))
        past = self.pool.loss_against(attacker, index, target, self.generator, n)
        w = self.cfg.loop.pool_weight
        return (pers + w * past) / (1 + w)

    def mix_replay(self, prepared: Prepared) -> Prepared:
        """The round's batch plus replayed earlier items (the owner must not forget them)."""
        old = self.replay.sample(self.cfg.loop.replay_per_step, self.generator)
        parts = [prepared] + (
            [Prepared(old["clean"], old["start"], old.get("reference"))] if old else []
        )
        device = self.dist.device
        clean, start = (
            torch.cat([getattr(p, k).to(device) for p in parts]) for k in ("clean", "start")
        )
        reference = None
        if prepared.reference is not None:
            reference = torch.cat([p.reference.to(device) for p in parts])
        batch = Prepared(clean, start, reference)
        cap = self.cfg.loop.generator_batch_size
        if cap is not None and len(clean) > cap:
            index = torch.randperm(len(clean), generator=self.generator)[:cap].to(device)
            batch = Prepared(
                clean[index], start[index], None if reference is None else reference[index]
            )
        return batch

    @torch.no_grad()
    def publish(self, prepared: Prepared, items) -> torch.Tensor:
        """The protected images as they will be saved (8-bit, budget kept); written to disk."""
        protected, _ = self.protector(prepared)
        o = self.cfg.objective
        published, _ = enforce_budget(prepared.clean, protected, o.budget, o.budget_value)
        save_published(published, items, self.cfg.out / "protected")
        return published

    # -- bookkeeping -----------------------------------------------------------------------

    def log_step(self, metrics: dict[str, float], phase: str, bar) -> None:
        step = self.state.step_min + self.state.step_max
        if self.dist.is_main:  # the tracker also writes every call to metrics.jsonl
            self.tracker.log_metrics({"round": float(self.state.round), **metrics}, step)
            shown = {"step": step, **{k: f"{v:.4f}" for k, v in metrics.items()}}
            bar.set_postfix(shown, refresh=False)

    def round_metrics(self, prepared, published, count: int, seconds: float, bar) -> None:
        fidelity = published_fidelity(published, prepared.clean)
        metrics = {
            **fidelity,
            "lambda": self.state.lam,
            "items_seen": self.state.items_seen,
            "items_per_second": count * self.dist.world_size / seconds,
            "round_seconds": seconds,
        }
        step = self.state.step_min + self.state.step_max
        if self.dist.is_main:
            self.tracker.log_metrics({f"round/{k}": v for k, v in metrics.items()}, step)
            bar.set_postfix(
                {"items/s": f"{metrics['items_per_second']:.2f}", "psnr": f"{metrics['psnr']:.1f}"},
                refresh=False,
            )
            if self.tracker.wants_images(self.state.round):
                grid = image_grid(prepared.clean, published)
                self.tracker.log_image(grid, "round_grid", self.state.round)

    def _resume_or_start(self) -> None:
        root = self.cfg.out / "checkpoints"
        latest = ckpt.latest_checkpoint(root) if self.cfg.run.resume == "auto" else None
        if latest is not None:
            self.load_checkpoint(latest)
        self.tracker = Tracker(
            self.cfg.tracking, self.cfg.out, enabled=self.dist.is_main, run_id=self.state.run_id
        )
        if self.dist.is_main:
            self.cfg.out.mkdir(parents=True, exist_ok=True)
            dump_config(self.cfg, self.cfg.out / "config.yaml")
            self.state.run_id = self.tracker.start(
                flatten_config(self.cfg), self.cfg.out / "config.yaml"
            )
        self.dist.barrier()

    def save_checkpoint(self) -> Path:
        """Every rank writes its part into the staging directory; rank 0 commits."""
        root, r = self.cfg.out / "checkpoints", self.state.round
        self.state.run_id = self.tracker.run_id if self.dist.is_main else None
        if self.dist.is_main:
            ckpt.begin(root, r)
        self.dist.barrier()
        staging = ckpt.staging_dir(root, r)
        write_checkpoint(self, staging)
        self.dist.barrier()
        path = root / ckpt.checkpoint_name(r)
        if self.dist.is_main:
            path = ckpt.commit(root, r, self.cfg.checkpoint.keep_last)
        self.dist.barrier()
        self.append_ledger(path.name)
        if self.dist.is_main:
            self.tracker.log_artifacts(path / "net", f"rounds/{path.name}/net")
            self.tracker.log_artifacts(path / "attacker", f"rounds/{path.name}/attacker")
        self.dist.barrier()
        return path

    def append_ledger(self, checkpoint_name: str) -> None:
        """Record which stream positions this rank trained on, once they are committed.

        ``stream/ledger-rank-K.jsonl`` lets anyone check that every item was trained exactly
        once up to the last committed checkpoint (positions of a crashed round are not here).
        """
        path = self.cfg.out / "stream" / f"ledger-rank-{self.dist.rank}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        line = {"checkpoint": checkpoint_name, "positions": self.pending_positions}
        with path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")
        self.pending_positions = []

    def load_checkpoint(self, path: Path) -> None:
        read_checkpoint(self, path)
        if self.dist.is_main:
            print(f"resumed from {path} (round {self.state.round})")

    def finish(self) -> dict:
        out = self.cfg.out
        if self.dist.is_main:
            final = ckpt.latest_checkpoint(out / "checkpoints")
            if final is not None and self.cfg.tracking.register_model:
                self.tracker.register_model(final / "net", self.cfg.tracking.register_model)
            self.tracker.end()
            print(
                f"run: {out} | checkpoints: {out / 'checkpoints'} | protected images: "
                f"{out / 'protected'} | MLflow UI: {self.tracker.ui_hint()}"
            )
        self.stop.restore()
        return {
            "rounds": self.state.round,
            "items_seen": self.state.items_seen,
            "run_id": self.state.run_id,
            "stopped_by": self.stop.requested,
        }
