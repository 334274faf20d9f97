"""Evaluators for the SynthFaces world: an identity embedding and a face / non-face classifier.

Real face metrics (dlib, ArcFace, RetinaFace) know nothing of cartoon faces, so the synthetic
world brings its own, trained only on pretraining identities (never on held-out ones):

- :class:`IdentityNet`: a VGG-style CNN (widths 32-64-128-256, two 3x3 convs per stage, global
  average pooling) giving an L2-normalised 128-d embedding, trained with a CosFace head
  (s = 30, m = 0.35) under shift / JPEG / colour augmentation. ``shared/SYNTHFACES.md`` measured
  0.996 held-out verification accuracy for this recipe in about 4 minutes on 2 cores.
- :class:`FaceClassifier`: a small CNN giving the probability that an image shows a face,
  trained on renders (faces) against patch-shuffled renders and background-only renders (the
  identity net alone is no detector: shuffled patches still pass a similarity threshold).

Both train deterministically on the CPU from images rendered on the fly by
:func:`~continual_ldu.reference.synthfaces.render`. ``ISMSynth`` and ``FDFRSynth`` in
``continual_ldu.metrics.synthfaces`` load them from the folder written by
:func:`save_evaluators`.

Run ``python -m continual_ldu.reference.evaluators OUT_DIR [--quick]`` to train both, print
their held-out accuracies and save them.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from continual_ldu.config import ConfigError
from continual_ldu.reference import synthfaces as sf
from continual_ldu.reference.synthfaces_draw import _background, _light, _pose, sample_nuisance

__all__ = [
    "CONFIG_FILE",
    "FACE_FILE",
    "IDENTITY_FILE",
    "EvaluatorConfig",
    "Evaluators",
    "FaceClassifier",
    "IdentityNet",
    "ensure_evaluators",
    "evaluators_dir",
    "face_classifier_accuracy",
    "heldout_batch",
    "jpeg",
    "load_evaluators",
    "main",
    "patch_shuffle",
    "render_background",
    "save_evaluators",
    "shift",
    "train_evaluators",
    "train_face_classifier",
    "train_identity_net",
    "verification_accuracy",
]

CONFIG_FILE = "config.json"
IDENTITY_FILE = "identity_net.safetensors"
FACE_FILE = "face_classifier.safetensors"
SHUFFLE_GRIDS = (2, 4, 8)
LAYOUT_GRID = 4  # the face classifier keeps a 4 x 4 map of where its features are  # patch-shuffled negatives cut the image into g x g patches


@dataclass
class EvaluatorConfig:
    """Sizes and training of both evaluators; the defaults are the study's recipe."""

    seed: int = 0  # training randomness (initialisation, batches, augmentation)
    world_seed: int = 0  # the SynthFaces world (SynthFacesConfig.seed)
    resolution: int = 64
    num_pretrain_identities: int = 300  # the world's pretraining split (held-out ones follow)
    # identity net
    num_identities: int = 300  # pretraining identities trained on (<= num_pretrain_identities)
    images_per_identity: int = 24
    widths: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    embedding_dim: int = 128
    epochs: int = 5
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 5e-4
    cosface_scale: float = 30.0
    cosface_margin: float = 0.35
    # face classifier
    face_widths: list[int] = field(default_factory=lambda: [16, 32, 64])
    face_images: int = 2400  # renders (positives); as many negatives
    face_epochs: int = 2
    face_lr: float = 2e-3
    # held-out evaluation
    eval_identities: int = 50
    eval_images_per_identity: int = 8

    @classmethod
    def quick(cls, **overrides: Any) -> EvaluatorConfig:
        """A tiny preset for tests and smoke runs (about 10 s on 2 cores)."""
        preset: dict[str, Any] = {
            "num_identities": 60,
            "images_per_identity": 10,
            "widths": [8, 16, 32, 64],
            "embedding_dim": 32,
            "epochs": 6,
            "batch_size": 50,
            "face_widths": [8, 16, 32],
            "face_images": 400,
            "face_epochs": 3,
            "eval_identities": 20,
            "eval_images_per_identity": 6,
        }
        return cls(**{**preset, **overrides})

    def validate(self) -> list[str]:
        errors = []
        if self.seed < 0 or self.world_seed < 0:
            errors.append("seed and world_seed must be >= 0")
        if self.resolution < 32 or self.resolution % 8:
            errors.append(f"resolution must be a multiple of 8 and >= 32, got {self.resolution}")
        if not 2 <= self.num_identities <= self.num_pretrain_identities:
            errors.append("num_identities must lie in [2, num_pretrain_identities]")
        for name in (
            "images_per_identity",
            "embedding_dim",
            "epochs",
            "batch_size",
            "face_images",
            "face_epochs",
        ):
            if getattr(self, name) < 1:
                errors.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.eval_identities < 2 or self.eval_images_per_identity < 2:
            errors.append("eval_identities and eval_images_per_identity must be >= 2")
        if not self.widths or not self.face_widths:
            errors.append("widths and face_widths must not be empty")
        if self.lr <= 0 or self.face_lr <= 0:
            errors.append("lr and face_lr must be > 0")
        return errors

    def check(self) -> EvaluatorConfig:
        errors = self.validate()
        if errors:
            raise ConfigError(errors)
        return self

    def world(self) -> sf.SynthFacesConfig:
        """The SynthFaces world these evaluators belong to."""
        return sf.SynthFacesConfig(
            seed=self.world_seed,
            resolution=self.resolution,
            num_pretrain_identities=self.num_pretrain_identities,
            num_heldout_identities=self.eval_identities,
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvaluatorConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# --- networks --------------------------------------------------------------------------------


def _conv(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


class IdentityNet(nn.Module):
    """VGG-style CNN: per width two 3x3 conv-BN-ReLU, 2x2 max-pool between stages, global
    average pooling, a linear layer to ``embedding_dim``; the output is L2-normalised.

    Input: (B, 3, H, W) floats in [0, 1] (any size; trained at the world's resolution).
    """

    def __init__(self, widths: Sequence[int] = (32, 64, 128, 256), embedding_dim: int = 128):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for i, width in enumerate(widths):
            if i:
                layers.append(nn.MaxPool2d(2))
            layers += _conv(cin, width) + _conv(width, width)
            cin = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, embedding_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.features(images * 2 - 1).mean(dim=(2, 3))
        return F.normalize(self.head(x), dim=1)


class FaceClassifier(nn.Module):
    """Small CNN: per width one 3x3 conv-BN-ReLU and a 2x2 max-pool, average pooling to a 4 x 4
    grid (kept, not averaged away: where things are tells a face from shuffled patches), one
    logit. ``forward`` returns the face probability (sigmoid), ``logits`` the logit."""

    def __init__(self, widths: Sequence[int] = (16, 32, 64)):
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for width in widths:
            layers += [*_conv(cin, width), nn.MaxPool2d(2)]
            cin = width
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(LAYOUT_GRID), nn.Flatten())
        self.head = nn.Linear(cin * LAYOUT_GRID**2, 1)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images * 2 - 1)).squeeze(1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(images))


@dataclass
class Evaluators:
    """Both trained nets with the config they were trained under (both in eval mode)."""

    identity_net: IdentityNet
    face_classifier: FaceClassifier
    config: EvaluatorConfig

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.identity_net(_fit(images, self.config.resolution))

    @torch.no_grad()
    def face_probability(self, images: torch.Tensor) -> torch.Tensor:
        return self.face_classifier(_fit(images, self.config.resolution))


def _fit(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Resize (antialiased bilinear) to the trained resolution when needed."""
    if images.shape[-2:] == (resolution, resolution):
        return images
    return F.interpolate(
        images, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False
    ).clamp(0, 1)


# --- data ------------------------------------------------------------------------------------


def _to_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    arrays = np.stack([np.asarray(im, dtype=np.uint8) for im in images])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 255


def render_background(identity_index: int, image_index: int, resolution: int, seed: int):
    """The background, pose and light of render ``(identity_index, image_index)`` without the
    person: a non-face with exactly the real renders' backgrounds."""
    nuis = sample_nuisance(sf._stream(seed, sf._STREAM_IMAGE, identity_index, image_index))
    side = resolution * 2
    canvas = _background(nuis, round(side * 1.5))
    image = _pose(canvas, nuis, side).resize((resolution, resolution), Image.Resampling.LANCZOS)
    return _light(image, nuis)


def patch_shuffle(images: torch.Tensor, grid: int, generator: torch.Generator) -> torch.Tensor:
    """Cut each image into ``grid`` x ``grid`` patches and put them back in a random order."""
    b, c, h, w = images.shape
    ph, pw = h // grid, w // grid
    patches = images[:, :, : ph * grid, : pw * grid].reshape(b, c, grid, ph, grid, pw)
    patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(b, grid * grid, c, ph, pw)
    out = torch.stack([p[torch.randperm(grid * grid, generator=generator)] for p in patches])
    out = out.reshape(b, grid, grid, c, ph, pw).permute(0, 3, 1, 4, 2, 5)
    result = images.clone()
    result[:, :, : ph * grid, : pw * grid] = out.reshape(b, c, ph * grid, pw * grid)
    return result


def jpeg(images: torch.Tensor, quality: int = 75) -> torch.Tensor:
    """Each image through a JPEG encode / decode at ``quality`` (PIL)."""
    out = []
    for array in (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy():
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, "JPEG", quality=quality)
        buffer.seek(0)
        out.append(Image.open(buffer).convert("RGB"))
    return _to_tensor(out)


def shift(images: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Translate by (dx, dy) pixels, filling with the replicated border."""
    pad = max(abs(dx), abs(dy))
    if pad == 0:
        return images
    h, w = images.shape[-2:]
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    return padded[:, :, pad - dy : pad - dy + h, pad - dx : pad - dx + w]


def _pretraining_images(cfg: EvaluatorConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Every training render as uint8 (N, 3, H, W) with identity labels (N,)."""
    images, labels = [], []
    for index in range(cfg.num_identities):
        identity = sf.make_identity(cfg.world_seed, index)
        for k in range(cfg.images_per_identity):
            images.append(np.asarray(sf.render(identity, k, cfg.resolution, cfg.world_seed)))
            labels.append(index)
    array = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return array, torch.tensor(labels)


def heldout_batch(cfg: EvaluatorConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out renders (never trained on): ``eval_images_per_identity`` images of each of
    ``eval_identities`` held-out identities, as [0, 1] floats with held-out labels."""
    world = cfg.world()
    images, labels = [], []
    for heldout in range(cfg.eval_identities):
        identity = sf.make_identity(cfg.world_seed, sf.heldout_identity_index(world, heldout))
        for k in range(cfg.eval_images_per_identity):
            images.append(sf.render(identity, k, cfg.resolution, cfg.world_seed))
            labels.append(heldout)
    return _to_tensor(images), torch.tensor(labels)


def _augment(batch: torch.Tensor, rng: np.random.Generator, g: torch.Generator) -> torch.Tensor:
    """Shift up to 4 px, colour jitter (gain, per-channel tint, contrast), JPEG q 40-95 on
    about a third of the batch."""
    b = len(batch)
    out = torch.empty_like(batch)
    for i in range(b):
        dx, dy = (int(v) for v in rng.integers(-4, 5, size=2))
        out[i] = shift(batch[i : i + 1], dx, dy)[0]
    gain = torch.empty(b, 1, 1, 1).uniform_(0.8, 1.2, generator=g)
    tint = torch.empty(b, 3, 1, 1).uniform_(0.92, 1.08, generator=g)
    contrast = torch.empty(b, 1, 1, 1).uniform_(0.8, 1.2, generator=g)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = ((out - mean) * contrast + mean) * gain * tint
    out = out.clamp(0, 1)
    chosen = np.flatnonzero(rng.random(b) < 0.35)
    if len(chosen):
        quality = int(rng.integers(40, 96))
        out[chosen] = jpeg(out[chosen], quality)
    return out


def _log(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


# --- training --------------------------------------------------------------------------------


def train_identity_net(cfg: EvaluatorConfig, progress: bool = True) -> IdentityNet:
    """Train :class:`IdentityNet` with a CosFace head on the pretraining identities; seeded,
    deterministic on the CPU. Returns the net in eval mode."""
    cfg.check()
    start = time.perf_counter()
    images, labels = _pretraining_images(cfg)
    _log(
        progress,
        f"identity net: rendered {len(images)} images in {time.perf_counter() - start:.1f} s",
    )
    torch.manual_seed(cfg.seed)
    net = IdentityNet(cfg.widths, cfg.embedding_dim)
    classes = nn.Parameter(F.normalize(torch.randn(cfg.num_identities, cfg.embedding_dim), dim=1))
    params = [*net.parameters(), classes]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, len(images) // cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=total, pct_start=0.15
    )
    g = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng([cfg.seed, 1])
    net.train()
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(images), generator=g)
        losses, correct = [], 0
        for step in range(steps_per_epoch):
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            x = _augment(images[idx].float() / 255, rng, g)
            y = labels[idx]
            cos = net(x) @ F.normalize(classes, dim=1).T
            margin = F.one_hot(y, cfg.num_identities) * cfg.cosface_margin
            loss = F.cross_entropy(cfg.cosface_scale * (cos - margin), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            correct += int((cos.argmax(1) == y).sum())
        _log(
            progress,
            f"identity net: epoch {epoch + 1}/{cfg.epochs} loss {np.mean(losses):.3f} "
            f"train acc {correct / (steps_per_epoch * cfg.batch_size):.3f} "
            f"({time.perf_counter() - start:.0f} s)",
        )
    return net.eval()


def _face_data(cfg: EvaluatorConfig, heldout: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Faces (label 1) and as many non-faces (label 0): half patch-shuffled renders, half
    background-only renders, of pretraining identities (or, with ``heldout``, held-out ones).
    Image indices are drawn from 10**6, so most images are not those of the identity split."""
    world = cfg.world()
    n = cfg.eval_identities * cfg.eval_images_per_identity if heldout else cfg.face_images
    rng = np.random.default_rng([cfg.seed, 2, int(heldout)])
    g = torch.Generator().manual_seed(cfg.seed + 7919 * (1 + int(heldout)))

    def draw() -> tuple[int, int]:
        if heldout:
            index = sf.heldout_identity_index(world, int(rng.integers(cfg.eval_identities)))
        else:
            index = int(rng.integers(cfg.num_pretrain_identities))
        return index, int(rng.integers(10**6))

    def face(index: int, k: int) -> Image.Image:
        return sf.render(sf.make_identity(cfg.world_seed, index), k, cfg.resolution, cfg.world_seed)

    positives = _to_tensor([face(*draw()) for _ in range(n)])
    to_shuffle = _to_tensor([face(*draw()) for _ in range(n - n // 2)])
    grids = rng.choice(SHUFFLE_GRIDS, size=len(to_shuffle))
    shuffled = [patch_shuffle(to_shuffle[i : i + 1], int(gr), g) for i, gr in enumerate(grids)]
    backgrounds = [
        render_background(*draw(), cfg.resolution, cfg.world_seed) for _ in range(n // 2)
    ]
    negatives = torch.cat([*shuffled, _to_tensor(backgrounds)]) if backgrounds else shuffled[0]
    images = torch.cat([positives, negatives])
    labels = torch.cat([torch.ones(len(positives)), torch.zeros(len(negatives))])
    return images, labels


def train_face_classifier(cfg: EvaluatorConfig, progress: bool = True) -> FaceClassifier:
    """Train :class:`FaceClassifier` on renders vs patch-shuffled and background-only renders
    of pretraining identities; seeded, deterministic on the CPU. Returns it in eval mode."""
    cfg.check()
    start = time.perf_counter()
    images, labels = _face_data(cfg)
    _log(progress, f"face classifier: {len(images)} images in {time.perf_counter() - start:.1f} s")
    torch.manual_seed(cfg.seed + 1)
    net = FaceClassifier(cfg.face_widths)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.face_lr, weight_decay=5e-4)
    g = torch.Generator().manual_seed(cfg.seed + 1)
    rng = np.random.default_rng([cfg.seed, 3])
    steps_per_epoch = max(1, len(images) // cfg.batch_size)
    net.train()
    for epoch in range(cfg.face_epochs):
        order = torch.randperm(len(images), generator=g)
        losses = []
        for step in range(steps_per_epoch):
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            x = _augment(images[idx], rng, g)
            loss = F.binary_cross_entropy_with_logits(net.logits(x), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        _log(
            progress,
            f"face classifier: epoch {epoch + 1}/{cfg.face_epochs} loss {np.mean(losses):.3f} "
            f"({time.perf_counter() - start:.0f} s)",
        )
    return net.eval()


# --- evaluation ------------------------------------------------------------------------------


@torch.no_grad()
def _embed(net: IdentityNet, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    net.eval()
    return torch.cat([net(images[i : i + batch]) for i in range(0, len(images), batch)])


def _best_balanced_accuracy(scores: np.ndarray, same: np.ndarray) -> float:
    """Max over thresholds of (TPR + TNR) / 2: same-identity pairs scoring above the threshold,
    different-identity pairs at or below it."""
    order = np.argsort(-scores, kind="stable")
    same_sorted = same[order]
    n_pos, n_neg = same_sorted.sum(), (~same_sorted).sum()
    tp = np.concatenate([[0], np.cumsum(same_sorted)])
    fp = np.concatenate([[0], np.cumsum(~same_sorted)])
    return float(((tp / n_pos) + (1 - fp / n_neg)).max() / 2)


def verification_accuracy(net: IdentityNet, cfg: EvaluatorConfig, probe: str = "clean") -> float:
    """Verification on held-out identities: every pair (gallery image i, probe image j != i) is
    "same" or "different" person; the accuracy (balanced over the two) at the best cosine
    threshold. ``probe``: "clean", "jpeg" (probes JPEG'ed at q75) or "shift" (probes moved
    2 px right and 2 px down)."""
    images, labels = heldout_batch(cfg)
    if probe == "clean":
        probes = images
    elif probe == "jpeg":
        probes = jpeg(images, 75)
    elif probe == "shift":
        probes = shift(images, 2, 2)
    else:
        raise ValueError(f"probe must be clean, jpeg or shift, got {probe!r}")
    sims = (_embed(net, images) @ _embed(net, probes).T).numpy()
    same = (labels[:, None] == labels[None, :]).numpy()
    off_diagonal = ~np.eye(len(images), dtype=bool)
    return _best_balanced_accuracy(sims[off_diagonal], same[off_diagonal])


@torch.no_grad()
def face_classifier_accuracy(net: FaceClassifier, cfg: EvaluatorConfig) -> float:
    """Accuracy at 0.5 on held-out renders vs their patch-shuffled and background-only
    non-faces (balanced classes)."""
    images, labels = _face_data(cfg, heldout=True)
    net.eval()
    probs = torch.cat([net(images[i : i + 256]) for i in range(0, len(images), 256)])
    return float(((probs >= 0.5).float() == labels).float().mean())


# --- saving ----------------------------------------------------------------------------------


def save_evaluators(
    folder: str | Path,
    identity_net: IdentityNet,
    face_classifier: FaceClassifier,
    cfg: EvaluatorConfig,
    results: dict[str, float] | None = None,
) -> Path:
    """Write both nets (safetensors) and ``config.json`` (the config, plus measured results)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in identity_net.state_dict().items()}, folder / IDENTITY_FILE
    )
    save_file(
        {k: v.contiguous() for k, v in face_classifier.state_dict().items()}, folder / FACE_FILE
    )
    payload = {"config": asdict(cfg), "results": results or {}}
    (folder / CONFIG_FILE).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return folder


def load_evaluators(folder: str | Path, device: str | torch.device = "cpu") -> Evaluators:
    """Both nets, in eval mode, from a folder written by :func:`save_evaluators`."""
    from safetensors.torch import load_file

    folder = Path(folder)
    missing = [n for n in (CONFIG_FILE, IDENTITY_FILE, FACE_FILE) if not (folder / n).exists()]
    if missing:
        raise FileNotFoundError(f"{folder}: missing evaluator files {missing}")
    data = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    cfg = EvaluatorConfig.from_dict(data["config"])
    identity_net = IdentityNet(cfg.widths, cfg.embedding_dim)
    identity_net.load_state_dict(load_file(folder / IDENTITY_FILE, device=str(device)))
    face_classifier = FaceClassifier(cfg.face_widths)
    face_classifier.load_state_dict(load_file(folder / FACE_FILE, device=str(device)))
    return Evaluators(identity_net.to(device).eval(), face_classifier.to(device).eval(), cfg)


def evaluators_dir(cfg: EvaluatorConfig) -> Path:
    """Where :func:`ensure_evaluators` caches the nets of ``cfg``: ``<cache>/synth-evaluators-<hash>``."""
    from continual_ldu.models.loading import cache_root

    digest = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest()[:12]
    return cache_root() / f"synth-evaluators-{digest}"


def train_evaluators(cfg: EvaluatorConfig, folder: str | Path, progress: bool = True) -> Path:
    """Train both nets, measure them on held-out identities, and save them with the results."""
    cfg.check()
    start = time.perf_counter()
    identity_net = train_identity_net(cfg, progress)
    identity_s = time.perf_counter() - start
    start = time.perf_counter()
    face_classifier = train_face_classifier(cfg, progress)
    face_s = time.perf_counter() - start
    results = {
        f"verification_{probe}": verification_accuracy(identity_net, cfg, probe)
        for probe in ("clean", "jpeg", "shift")
    }
    results["face_classifier_accuracy"] = face_classifier_accuracy(face_classifier, cfg)
    results["identity_train_s"] = round(identity_s, 1)
    results["face_train_s"] = round(face_s, 1)
    _log(
        progress,
        "held-out verification accuracy: clean {verification_clean:.3f}, JPEG q75 "
        "{verification_jpeg:.3f}, 2-px shift {verification_shift:.3f}; face classifier "
        "accuracy {face_classifier_accuracy:.3f}; trained in {identity_train_s:.0f} s + "
        "{face_train_s:.0f} s".format(**results),
    )
    staging = Path(f"{folder}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    save_evaluators(staging, identity_net, face_classifier, cfg, results)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(staging, folder)
    return Path(folder)


def ensure_evaluators(cfg: EvaluatorConfig, progress: bool = True) -> Path:
    """The cached evaluators of ``cfg``, trained first if they are missing (and saying so)."""
    folder = evaluators_dir(cfg)
    if not (folder / CONFIG_FILE).is_file():
        _log(progress, f"SynthFaces evaluators not found in {folder}: training them now (once)")
        train_evaluators(cfg, folder, progress)
    return folder


# --- command line ----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m continual_ldu.reference.evaluators",
        description="Train the SynthFaces identity net and face classifier, report, and save.",
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--quick", action="store_true", help="tiny preset (seconds)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--world-seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="identity-net epochs")
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {"seed": args.seed, "world_seed": args.world_seed}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    cfg = EvaluatorConfig.quick(**overrides) if args.quick else EvaluatorConfig(**overrides)
    try:
        cfg.check()
    except ConfigError as err:
        print(err)
        return 2
    folder = train_evaluators(cfg, args.out_dir)
    print(f"saved to {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
