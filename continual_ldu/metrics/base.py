"""What every metric shares: its result, its config, and the class it derives from.

Three kinds of metric, by what they are given:

- ``fidelity``: imperceptibility, ``compute(protected, clean)`` on the same images before and
  after protection; ``higher_is_better`` means "more imperceptible".
- ``protection``: ``compute(generations, reference)``, the attacker's generations after it
  personalized on protected images against the clean reference set (set_A);
  ``higher_is_better`` means "protects more".
- ``intrinsic``: read from the attacker's model itself (``intrinsic.py``); same direction.

Images are (B, 3, H, W) float tensors in [0, 1]. A metric whose weights are not configured
returns ``MetricResult(value=None, skipped="skipped: no weights (set metrics.<key>)")`` and never
a number; nothing is downloaded at run time. Heavy libraries (dlib, onnxruntime, brisque, CLIP)
are imported inside the classes, when a metric first runs.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch

Kind = Literal["fidelity", "protection", "intrinsic"]
KINDS: tuple[str, ...] = ("fidelity", "protection", "intrinsic")
FACE_DETECTORS: tuple[str, ...] = ("retinaface", "mtcnn")


@dataclass
class MetricResult:
    """One metric's answer: ``value`` with its ``spread``, or ``skipped`` with the reason.

    ``spread`` is the sample standard deviation over the images the value averages (None when
    the value is not a mean over images, or there is one image). ``extra`` holds counts and
    secondary numbers (e.g. how many generations had no face).
    """

    value: float | None
    spread: float | None = None
    skipped: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.skipped is not None and self.value is not None:
            raise ValueError(f"a skipped result carries no value (got {self.value!r})")
        if self.skipped is None and self.value is None:
            raise ValueError("a result without a value must say why it was skipped")
        if self.value is not None:
            self.value = float(self.value)

    @classmethod
    def skip(cls, reason: str, **extra: Any) -> MetricResult:
        return cls(value=None, skipped=reason, extra=extra)

    @property
    def ok(self) -> bool:
        """True when the result holds a number."""
        return self.skipped is None


def _all_metric_names() -> list[str]:
    from continual_ldu.metrics import METRICS  # the catalog imports this module

    return list(METRICS)


@dataclass
class MetricsConfig:
    """Which metrics to run and where their weights are; every path is local, none downloaded.

    A metric whose weights field is empty reports ``skipped: no weights (set metrics.<field>)``.
    """

    names: list[str] = field(default_factory=_all_metric_names)
    # torchvision AlexNet state dict (only ``features.*`` is read); LPIPS' linear heads ship
    # inside the ``lpips`` package.
    lpips_weights: str | None = None
    # torch-fidelity's FID Inception-v3 state dict (pt_inception-2015-12-05-6726825d.pth).
    fid_inception_weights: str | None = None
    # An insightface ArcFace ONNX model on 112x112 aligned RGB faces, input (x - 127.5) / 127.5
    # (e.g. buffalo_l's w600k_r50.onnx, antelopev2's glintr100.onnx).
    arcface_weights: str | None = None
    # CLIP for CLIP-IQA, CLIP-IQAC and SDS: an OpenAI-format checkpoint file (JIT archive or
    # state dict, e.g. ViT-B-32.pt) or a transformers CLIPModel directory with its tokenizer.
    clip_weights: str | None = None
    # LIQE's checkpoint (LIQE.pt): a fine-tuned OpenAI CLIP ViT-B/32 state dict.
    liqe_weights: str | None = None
    # The SynthFaces evaluators folder (identity net + face classifier) written by
    # ``python -m continual_ldu.reference.evaluators OUT_DIR``, for ism_synth and fdfr_synth.
    synth_evaluators_weights: str | None = None
    face_detector: Literal["retinaface", "mtcnn"] = "retinaface"
    subject: str = "face"  # the class word in CLIP-IQAC's and SDS's prompts
    heldout_num_samples: int = 8  # (t, eps) draws per latent for the held-out attacker loss
    heldout_seed: int = 0

    def validate(self) -> list[str]:
        from continual_ldu.metrics import METRICS

        errors = [
            f"names: unknown metric {n!r} (known: {sorted(METRICS)})"
            for n in self.names
            if n not in METRICS
        ]
        if self.face_detector not in FACE_DETECTORS:
            errors.append(f"face_detector must be one of {FACE_DETECTORS}")
        for key in weights_keys():
            path = getattr(self, key)
            if path is not None and not Path(path).exists():
                errors.append(f"{key}: {path} does not exist")
        if self.heldout_num_samples < 1:
            errors.append("heldout_num_samples must be >= 1")
        return errors


def weights_keys() -> list[str]:
    """The MetricsConfig fields that name weights."""
    return [f.name for f in fields(MetricsConfig) if f.name.endswith("_weights")]


class Metric(ABC):
    """Base of the catalog. Subclasses set the class attributes and implement ``_compute``.

    ``compute`` returns the skip result when ``weights_key`` names an empty config field and
    otherwise calls ``_compute``; models are loaded lazily, on the first call, onto ``device``.
    """

    name: ClassVar[str]
    kind: ClassVar[Kind]
    weights_key: ClassVar[str | None] = None  # the MetricsConfig field naming its weights
    higher_is_better: ClassVar[bool]  # fidelity: more imperceptible; else: protects more

    def __init__(self, cfg: MetricsConfig | None = None, device: str | torch.device = "cpu"):
        self.cfg = cfg if cfg is not None else MetricsConfig(names=[])
        self.device = torch.device(device)

    @property
    def weights_path(self) -> str | None:
        return getattr(self.cfg, self.weights_key) if self.weights_key else None

    def skip_reason(self) -> str | None:
        """Why this metric cannot run as configured, or None."""
        if self.weights_key and not self.weights_path:
            return f"skipped: no weights (set metrics.{self.weights_key})"
        return None

    def compute(self, *args: Any, **kwargs: Any) -> MetricResult:
        reason = self.skip_reason()
        if reason is not None:
            return MetricResult.skip(reason)
        return self._compute(*args, **kwargs)

    @abstractmethod
    def _compute(self, *args: Any, **kwargs: Any) -> MetricResult: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, kind={self.kind!r})"


def weights_file(path: str, key: str) -> Path:
    """The configured weights path, which must exist (a wrong path fails loudly, never skips)."""
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise FileNotFoundError(f"metrics.{key}: {resolved} does not exist")
    return resolved


def check_images(images: torch.Tensor, what: str) -> torch.Tensor:
    """Validate a (B, 3, H, W) float batch in [0, 1]; return it as float32."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
        raise ValueError(f"{what}: expected a (B, 3, H, W) tensor, got {shape}")
    if not images.is_floating_point():
        raise ValueError(f"{what}: expected floats in [0, 1], got {images.dtype}")
    if len(images) == 0:
        raise ValueError(f"{what}: empty batch")
    low, high = float(images.min()), float(images.max())
    if low < -1e-4 or high > 1 + 1e-4:
        raise ValueError(f"{what}: values must lie in [0, 1], got [{low:.3f}, {high:.3f}]")
    return images.float().clamp(0, 1)


def check_pair(protected: torch.Tensor, clean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two batches of the same images, before and after protection."""
    protected, clean = check_images(protected, "protected"), check_images(clean, "clean")
    if protected.shape != clean.shape:
        raise ValueError(f"protected {tuple(protected.shape)} != clean {tuple(clean.shape)}")
    return protected, clean


def to_uint8_hwc(images: torch.Tensor) -> list[np.ndarray]:
    """[0, 1] (B, 3, H, W) -> contiguous uint8 (H, W, 3) RGB arrays, rounded."""
    arrays = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return [np.ascontiguousarray(a) for a in arrays.permute(0, 2, 3, 1).cpu().numpy()]


def summarize(values: Sequence[float] | torch.Tensor, **extra: Any) -> MetricResult:
    """Mean of per-image values, with their sample standard deviation as the spread."""
    array = np.asarray(
        values.detach().cpu().double() if isinstance(values, torch.Tensor) else values,
        dtype=np.float64,
    ).ravel()
    if array.size == 0:
        raise ValueError("no values to summarize")
    mean = float(array.mean())
    # no spread for one image, or around an infinite value (the inf PSNR of an unchanged image)
    spread = float(array.std(ddof=1)) if array.size > 1 and math.isfinite(mean) else None
    return MetricResult(value=mean, spread=spread, extra={"n": int(array.size), **extra})
