"""Build the SynthFaces reference model: a small Stable-Diffusion-shaped model pretrained offline.

Stages, each resumable (atomic checkpoints of its modules, optimizer, step, EMA and RNG every
``checkpoint_every`` steps; a rerun continues where the last one stopped and skips finished
stages):

1. ``vae``: an ``AutoencoderKL`` trained on SynthFaces pretraining images (MSE + L1 + KL); its
   scaling factor is then set to 1 / std of the latents of those images, as SD's was.
2. ``unet``: the CLIP text encoder and the text-conditioned UNet trained jointly, epsilon
   prediction on SD's scaled-linear schedule, on the frozen VAE's latents of the pretraining
   images with their training captions; the EMA weights are what is saved.

The result is written with ``StableDiffusionPipeline.save_pretrained`` (so ``load_model`` and a
stock ``StableDiffusionPipeline.from_pretrained`` read it) plus ``build_info.json`` (config, seed,
times, losses, held-out VAE reconstruction PSNR). Sizes in ``recipes/reference_default.yaml``
are the ones ``shared/SYNTHFACES.md`` measured (about 45 minutes on 2 CPU cores).

Run ``python -m continual_ldu.reference.build RECIPE [key=value ...]``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from filelock import FileLock
from tqdm.auto import tqdm
from transformers import CLIPTextModel

from continual_ldu.config import ConfigError, build_config, config_to_dict, load_config
from continual_ldu.engine import checkpoint as ckpt
from continual_ldu.models.loading import cache_root
from continual_ldu.models.tiny import build_tokenizer, clip_text_encoder, sd_training_scheduler
from continual_ldu.reference.synthfaces import (
    SynthFacesConfig,
    heldout_identity_index,
    iter_pretraining,
    make_identity,
    render,
)

__all__ = [
    "ReferenceConfig",
    "TextEncoderStageConfig",
    "UNetStageConfig",
    "VAEStageConfig",
    "build_reference",
    "ensure_reference",
    "reference_preset",
    "main",
]

STAGES = ("vae", "unet")
# Fields that do not change the built model: left out of the digest and the resume check.
NON_MODEL_KEYS = ("output_dir", "keep_build_state", "checkpoint_every", "num_threads")
STATE_FILE = "state.pt"
DONE_FILE = "done.json"
INFO_FILE = "build_info.json"


@dataclass
class VAEStageConfig:
    widths: tuple[int, ...] = (16, 32, 64)  # downscale 2 ** (len - 1)
    latent_channels: int = 8
    norm_groups: int = 8
    steps: int = 1650
    batch_size: int = 32
    lr: float = 1e-3
    l1_weight: float = 0.5
    kl_weight: float = 1e-6


@dataclass
class TextEncoderStageConfig:
    hidden: int = 128  # also the UNet's cross-attention width
    layers: int = 3
    heads: int = 4


@dataclass
class UNetStageConfig:
    widths: tuple[int, ...] = (64, 128, 128)
    attention_heads: int = 8
    norm_groups: int = 32
    steps: int = 1450
    batch_size: int = 64
    lr: float = 5e-4
    warmup_steps: int = 50
    ema_decay: float = 0.999


@dataclass
class ReferenceConfig:
    """Everything that determines the built model (hashed into the default output folder)."""

    data: SynthFacesConfig = field(default_factory=SynthFacesConfig)
    vae: VAEStageConfig = field(default_factory=VAEStageConfig)
    text: TextEncoderStageConfig = field(default_factory=TextEncoderStageConfig)
    unet: UNetStageConfig = field(default_factory=UNetStageConfig)
    seed: int = 0
    checkpoint_every: int = 200
    heldout_eval_identities: int = 8  # x 4 images each, for the VAE reconstruction PSNR
    output_dir: str = ""  # "" = <cache_root()>/reference-<hash of the rest>
    keep_build_state: bool = False  # keep <output_dir>.build (checkpoints) after success
    # torch CPU threads during the build; 0 = torch's default. On a shared machine use fewer
    # threads than free cores: oversubscribed OpenMP threads ran 5x slower than 1 thread.
    num_threads: int = 0

    def validate(self) -> list[str]:
        errors = [f"data: {e}" for e in self.data.validate()]
        for name, widths, groups in (
            ("vae", self.vae.widths, self.vae.norm_groups),
            ("unet", self.unet.widths, self.unet.norm_groups),
        ):
            if not widths or any(w % groups for w in widths):
                errors.append(f"{name}.widths must be non-empty multiples of {name}.norm_groups")
        if self.unet.widths and any(w % self.unet.attention_heads for w in self.unet.widths):
            errors.append("unet.widths must be multiples of unet.attention_heads")
        if self.text.hidden % self.text.heads:
            errors.append("text.hidden must be a multiple of text.heads")
        down = 2 ** (len(self.vae.widths) - 1 + len(self.unet.widths) - 1)
        if self.data.resolution % down:
            errors.append(f"data.resolution must be divisible by {down} (VAE x UNet downsampling)")
        for name, value in (
            ("vae.steps", self.vae.steps),
            ("unet.steps", self.unet.steps),
            ("unet.warmup_steps", self.unet.warmup_steps),
        ):
            if value < 0:
                errors.append(f"{name} must be >= 0, got {value}")
        for name, value in (
            ("vae.batch_size", self.vae.batch_size),
            ("unet.batch_size", self.unet.batch_size),
            ("checkpoint_every", self.checkpoint_every),
            ("heldout_eval_identities", self.heldout_eval_identities),
        ):
            if value < 1:
                errors.append(f"{name} must be >= 1, got {value}")
        if self.num_threads < 0:
            errors.append(f"num_threads must be >= 0, got {self.num_threads}")
        if self.heldout_eval_identities > self.data.num_heldout_identities:
            errors.append("heldout_eval_identities must be <= data.num_heldout_identities")
        if not 0.0 <= self.unet.ema_decay < 1.0:
            errors.append(f"unet.ema_decay must be in [0, 1), got {self.unet.ema_decay}")
        return errors

    def digest(self) -> str:
        """Hash of everything that determines the model (not where or how it is built)."""
        return hashlib.sha256(json.dumps(self.model_dict(), sort_keys=True).encode()).hexdigest()[
            :12
        ]

    def model_dict(self) -> dict:
        data = config_to_dict(self)
        for key in NON_MODEL_KEYS:
            data.pop(key)
        return data

    def resolved_output_dir(self) -> Path:
        if self.output_dir:
            return Path(self.output_dir)
        return cache_root() / f"reference-{self.digest()}"


# --- components -------------------------------------------------------------------------------


def _make_vae(cfg: ReferenceConfig) -> AutoencoderKL:
    v = cfg.vae
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=v.widths,
        down_block_types=("DownEncoderBlock2D",) * len(v.widths),
        up_block_types=("UpDecoderBlock2D",) * len(v.widths),
        layers_per_block=1,
        latent_channels=v.latent_channels,
        norm_num_groups=v.norm_groups,
        sample_size=cfg.data.resolution,
    )


def _make_text_encoder(cfg: ReferenceConfig) -> CLIPTextModel:
    t = cfg.text
    return clip_text_encoder(t.hidden, t.layers, t.heads, t.hidden * 4, t.hidden)


def _make_unet(cfg: ReferenceConfig) -> UNet2DConditionModel:
    u = cfg.unet
    n = len(u.widths)
    return UNet2DConditionModel(
        sample_size=cfg.data.resolution // 2 ** (len(cfg.vae.widths) - 1),
        in_channels=cfg.vae.latent_channels,
        out_channels=cfg.vae.latent_channels,
        block_out_channels=u.widths,
        layers_per_block=1,
        # SD's layout: cross-attention in all but the lowest-resolution block.
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        cross_attention_dim=cfg.text.hidden,
        attention_head_dim=u.attention_heads,
        norm_num_groups=u.norm_groups,
    )


# --- data ------------------------------------------------------------------------------------


def _to_tensor(images: Sequence) -> torch.Tensor:
    """PIL images -> uint8 tensor (N, 3, H, W)."""
    return torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in images])).permute(
        0, 3, 1, 2
    )


def _to_float(batch: torch.Tensor) -> torch.Tensor:
    return batch.float() / 127.5 - 1.0


def _pretraining_data(cfg: ReferenceConfig) -> tuple[torch.Tensor, list[str]]:
    images, captions = [], []
    total = cfg.data.num_pretrain_identities * cfg.data.images_per_pretrain_identity
    for image, text, _ in tqdm(
        iter_pretraining(cfg.data), total=total, desc="render", unit="img", dynamic_ncols=True
    ):
        images.append(image)
        captions.append(text)
    return _to_tensor(images), captions


def _heldout_images(cfg: ReferenceConfig) -> torch.Tensor:
    images = []
    for h in range(cfg.heldout_eval_identities):
        identity = make_identity(cfg.data.seed, heldout_identity_index(cfg.data, h))
        images += [render(identity, k, cfg.data.resolution, cfg.data.seed) for k in range(4)]
    return _to_tensor(images)


@torch.no_grad()
def _vae_psnr(vae: AutoencoderKL, images: torch.Tensor) -> float:
    vae.eval()
    x = _to_float(images)
    recon = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    mse = ((recon - x) / 2).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return float((10 * torch.log10(1 / mse)).mean())


# --- resumable stage loop ----------------------------------------------------------------------


def _on_checkpoint(stage: str, step: int) -> None:
    """Called after each committed checkpoint (tests patch it to simulate an interruption)."""


def _save_state(root: Path, step: int, state: dict) -> None:
    staging = ckpt.begin(root, step)
    torch.save(state, staging / STATE_FILE)
    ckpt.commit(root, step, keep_last=1)


def _load_state(root: Path) -> dict | None:
    latest = ckpt.latest_checkpoint(root) if root.is_dir() else None
    if latest is None:
        return None
    return torch.load(latest / STATE_FILE, map_location="cpu", weights_only=False)


def _lr_lambda(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _run_stage(
    name: str,
    work: Path,
    cfg: ReferenceConfig,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer,
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    total_steps: int,
    step_fn,
    ema: dict[str, torch.nn.Module] | None = None,
    ema_decay: float = 0.0,
) -> dict:
    """Train ``modules`` for ``total_steps`` steps of ``step_fn(generator) -> loss``, resuming."""
    root = work / name / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(cfg.seed * 1000 + STAGES.index(name))
    step, losses = 0, []
    state = _load_state(root)
    if state is not None:
        for key, module in modules.items():
            module.load_state_dict(state["modules"][key])
        for key, module in (ema or {}).items():
            module.load_state_dict(state["ema"][key])
        optimizer.load_state_dict(state["optimizer"])
        if lr_scheduler is not None:
            lr_scheduler.load_state_dict(state["lr_scheduler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        step, losses = state["step"], state["losses"]
    resumed_from = step
    started = time.time()
    for module in modules.values():
        module.train()
    bar = tqdm(
        total=total_steps, initial=step, desc=name, unit="step", dynamic_ncols=True, file=sys.stderr
    )
    while step < total_steps:
        loss = step_fn(generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for m in modules.values() for p in m.parameters()]
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if lr_scheduler is not None:
            lr_scheduler.step()
        step += 1
        if ema:
            decay = min(ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for key, shadow in ema.items():
                    for s, p in zip(shadow.parameters(), modules[key].parameters(), strict=True):
                        s.lerp_(p.detach(), 1 - decay)
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
        if step % cfg.checkpoint_every == 0 or step == total_steps:
            _save_state(
                root,
                step,
                {
                    "modules": {k: m.state_dict() for k, m in modules.items()},
                    "ema": {k: m.state_dict() for k, m in (ema or {}).items()},
                    "optimizer": optimizer.state_dict(),
                    "lr_scheduler": lr_scheduler.state_dict() if lr_scheduler else None,
                    "generator": generator.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "step": step,
                    "losses": losses,
                },
            )
            _on_checkpoint(name, step)
    bar.close()
    return {
        "steps": step,
        "resumed_from_step": resumed_from,
        "seconds_this_run": round(time.time() - started, 2),
        "loss_first": _window_mean(losses, first=True),
        "loss_last": _window_mean(losses, first=False),
        "losses": [round(x, 6) for x in losses],
    }


def _window_mean(losses: list[float], first: bool) -> float | None:
    if not losses:
        return None
    width = max(1, min(50, len(losses) // 5))
    window = losses[:width] if first else losses[-width:]
    return float(np.mean(window))


def _stage_done(work: Path, name: str) -> dict | None:
    path = work / name / DONE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _mark_done(work: Path, name: str, info: dict) -> None:
    ckpt.write_text_atomic(work / name / DONE_FILE, json.dumps(info, indent=1))


# --- stages ----------------------------------------------------------------------------------


def _vae_stage(cfg: ReferenceConfig, work: Path, images: torch.Tensor, run: int) -> AutoencoderKL:
    final = work / "vae" / "final"
    if _stage_done(work, "vae") is not None:
        return AutoencoderKL.from_pretrained(final)
    torch.manual_seed(cfg.seed)
    vae = _make_vae(cfg)
    v = cfg.vae
    optimizer = torch.optim.AdamW(vae.parameters(), lr=v.lr)

    def step_fn(generator: torch.Generator) -> torch.Tensor:
        idx = torch.randint(0, len(images), (v.batch_size,), generator=generator)
        x = _to_float(images[idx])
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        recon = vae.decode(z).sample
        return (
            F.mse_loss(recon, x)
            + v.l1_weight * F.l1_loss(recon, x)
            + v.kl_weight * posterior.kl().mean()
        )

    info = _run_stage("vae", work, cfg, {"vae": vae}, optimizer, None, v.steps, step_fn)
    vae.eval()
    with torch.no_grad():  # SD's recipe: scale latents of real data to unit variance
        sample = _to_float(images[: min(len(images), 512)])
        std = torch.cat([vae.encode(b).latent_dist.mean for b in sample.split(64)]).std()
    vae.register_to_config(scaling_factor=float(1.0 / std))
    vae.save_pretrained(final)
    info.update(run=run, scaling_factor=float(1.0 / std))
    _mark_done(work, "vae", info)
    return vae


@torch.no_grad()
def _latent_moments(vae: AutoencoderKL, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    means, stds = [], []
    for batch in tqdm(images.split(128), desc="encode", unit="batch", dynamic_ncols=True):
        dist = vae.encode(_to_float(batch)).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


def _unet_stage(
    cfg: ReferenceConfig,
    work: Path,
    vae: AutoencoderKL,
    images: torch.Tensor,
    captions: list[str],
    tokenizer,
    run: int,
) -> tuple[CLIPTextModel, UNet2DConditionModel]:
    final = work / "unet" / "final"
    if _stage_done(work, "unet") is not None:
        return (
            CLIPTextModel.from_pretrained(final / "text_encoder"),
            UNet2DConditionModel.from_pretrained(final / "unet"),
        )
    torch.manual_seed(cfg.seed + 1)
    text_encoder, unet = _make_text_encoder(cfg), _make_unet(cfg)
    ema = {"text_encoder": copy.deepcopy(text_encoder), "unet": copy.deepcopy(unet)}
    for module in ema.values():
        module.requires_grad_(False)
    u = cfg.unet
    scheduler = sd_training_scheduler()
    alphas = scheduler.alphas_cumprod.float()
    mean, std = _latent_moments(vae, images)
    scale = vae.config.scaling_factor
    ids = tokenizer(
        captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt"
    ).input_ids
    params = [*text_encoder.parameters(), *unet.parameters()]
    optimizer = torch.optim.AdamW(params, lr=u.lr)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(min(u.warmup_steps, max(1, u.steps // 10)), u.steps)
    )

    def step_fn(generator: torch.Generator) -> torch.Tensor:
        idx = torch.randint(0, len(mean), (u.batch_size,), generator=generator)
        latents = mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=generator)
        latents = latents * scale
        noise = torch.randn(latents.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(idx),), generator=generator)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        states = text_encoder(ids[idx])[0]
        return F.mse_loss(unet(noisy, t, encoder_hidden_states=states).sample, noise)

    info = _run_stage(
        "unet",
        work,
        cfg,
        {"text_encoder": text_encoder, "unet": unet},
        optimizer,
        lr_scheduler,
        u.steps,
        step_fn,
        ema=ema,
        ema_decay=u.ema_decay,
    )
    text_encoder, unet = ema["text_encoder"], ema["unet"]
    text_encoder.save_pretrained(final / "text_encoder")
    unet.save_pretrained(final / "unet")
    info.update(run=run)
    _mark_done(work, "unet", info)
    return text_encoder, unet


# --- driver ----------------------------------------------------------------------------------


# Named builds: ``model.pretrained: reference:<name>`` loads (building on first use) the model of
# ReferenceConfig(**PRESETS[name]). recipes/reference_<name>.yaml spells out the same values.
PRESETS: dict[str, dict] = {
    "default": {},
    "quick": {  # seconds: tiny widths, few steps, few identities, 32 px (tests, smoke runs)
        "data": {
            "resolution": 32,
            "num_pretrain_identities": 4,
            "images_per_pretrain_identity": 4,
            "num_heldout_identities": 2,
        },
        "vae": {
            "widths": [8, 16],
            "latent_channels": 4,
            "norm_groups": 4,
            "steps": 12,
            "batch_size": 8,
            "lr": 3.0e-3,
        },
        "text": {"hidden": 16, "layers": 1, "heads": 2},
        "unet": {
            "widths": [16, 16],
            "attention_heads": 4,
            "norm_groups": 8,
            "steps": 4,
            "batch_size": 4,
            "warmup_steps": 1,
        },
        "checkpoint_every": 2,
        "heldout_eval_identities": 2,
        "num_threads": 1,
    },
}
BUILD_MINUTES = {"default": "about 45 minutes on 2 CPU cores, a few on a GPU", "quick": "seconds"}


def reference_preset(name: str) -> ReferenceConfig:
    if name not in PRESETS:
        raise ConfigError([f"unknown reference model {name!r}; presets: {sorted(PRESETS)}"])
    return build_config(ReferenceConfig, PRESETS[name])


def ensure_reference(name: str) -> Path:
    """The built reference model of preset ``name``; built first (saying so) when missing."""
    cfg = reference_preset(name)
    out = cfg.resolved_output_dir()
    if (out / "model_index.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{out}.lock"):  # several ranks may ask at once: one builds
        if not (out / "model_index.json").is_file():
            print(
                f"reference:{name}: the SynthFaces reference model is not built yet; building it "
                f"now into {out} ({BUILD_MINUTES[name]}, once; resumable: if interrupted, run "
                "the same command again). For a quick run on the random tiny model use "
                "model.pretrained=builtin:tiny.",
                file=sys.stderr,
                flush=True,
            )
            build_reference(cfg)
    return out


def build_reference(cfg: ReferenceConfig) -> Path:
    """Build (or finish building) the reference model; return its diffusers folder."""
    errors = cfg.validate()
    if errors:
        raise ConfigError(errors)
    threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _build(cfg)
    finally:
        torch.set_num_threads(threads)


def _build(cfg: ReferenceConfig) -> Path:
    out = cfg.resolved_output_dir()
    if (out / "model_index.json").is_file():
        return out
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not a built reference model")
    work = Path(f"{out}.build")
    work.mkdir(parents=True, exist_ok=True)
    config_path = work / "config.json"
    config = config_to_dict(cfg)
    if config_path.is_file():
        if json.loads(config_path.read_text(encoding="utf-8")) != cfg.model_dict():
            raise ValueError(f"{work} holds a build of a different config; delete it to restart")
    else:
        ckpt.write_text_atomic(config_path, json.dumps(cfg.model_dict(), indent=1))
    runs_path = work / "runs"
    run = int(runs_path.read_text()) + 1 if runs_path.is_file() else 1
    ckpt.write_text_atomic(runs_path, str(run))
    started = time.time()

    images, captions = _pretraining_data(cfg)
    vae = _vae_stage(cfg, work, images, run)
    vae.requires_grad_(False)
    vae.eval()
    tokenizer = build_tokenizer(work / "vocab")
    text_encoder, unet = _unet_stage(cfg, work, vae, images, captions, tokenizer, run)

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=sd_training_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    staging = work / "model"
    shutil.rmtree(staging, ignore_errors=True)
    pipe.save_pretrained(staging)
    info = {
        "config": config,
        "digest": cfg.digest(),
        "seed": cfg.seed,
        "runs": run,
        "seconds_last_run": round(time.time() - started, 2),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "torch_threads": torch.get_num_threads(),
        "vae_heldout_psnr_db": round(_vae_psnr(vae, _heldout_images(cfg)), 3),
        "stages": {name: _stage_done(work, name) for name in STAGES},
    }
    (staging / INFO_FILE).write_text(json.dumps(info, indent=1), encoding="utf-8")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.rmdir()  # empty (checked above)
    os.replace(staging, out)
    if not cfg.keep_build_state:
        shutil.rmtree(work, ignore_errors=True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m continual_ldu.reference.build RECIPE [key=value ...]``: print the model path."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(
            "usage: python -m continual_ldu.reference.build RECIPE [key=value ...]\n"
            "Build the SynthFaces reference model (resumable); prints its folder."
        )
        return 0 if args else 2
    try:
        cfg = load_config(ReferenceConfig, args[0], args[1:])
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    path = build_reference(cfg)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
