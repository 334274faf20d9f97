"""The metric catalog: imperceptibility (protected vs clean), protection (the attacker's
generations vs the clean reference set) and the attacker's intrinsic held-out loss.

``METRICS`` maps each name to its class; ``build_metrics(cfg)`` instantiates ``cfg.names``.
Importing this package is cheap: dlib, onnxruntime, brisque, CLIP and torchmetrics are imported
when a metric first runs. See ``base.py`` for the result type and the directions.
"""

from __future__ import annotations

import torch

from continual_ldu.metrics.base import Metric, MetricResult, MetricsConfig
from continual_ldu.metrics.faces import FDFR, ArcFaceISM, DlibISM
from continual_ldu.metrics.fidelity import FID, LPIPS, MSSSIM, PSNR, SSIM, FIDGenerations
from continual_ldu.metrics.intrinsic import HeldoutAttackerLoss, heldout_attacker_loss
from continual_ldu.metrics.quality import BRISQUE, CLIPIQA, CLIPIQAC, LIQE, SDS
from continual_ldu.metrics.synthfaces import FDFRSynth, ISMSynth

METRICS: dict[str, type[Metric]] = {
    "psnr": PSNR,
    "ssim": SSIM,
    "ms_ssim": MSSSIM,
    "lpips": LPIPS,
    "fid": FID,
    "fid_generations": FIDGenerations,
    "ism": DlibISM,
    "ism_arcface": ArcFaceISM,
    "fdfr": FDFR,
    "brisque": BRISQUE,
    "clip_iqa": CLIPIQA,
    "clip_iqac": CLIPIQAC,
    "sds": SDS,
    "liqe": LIQE,
    "heldout_loss": HeldoutAttackerLoss,
    "ism_synth": ISMSynth,
    "fdfr_synth": FDFRSynth,
}


def build_metrics(cfg: MetricsConfig, device: str | torch.device = "cpu") -> list[Metric]:
    """The configured metrics, in ``cfg.names`` order; an unknown name or bad field raises."""
    errors = cfg.validate()
    if errors:
        raise ValueError("metrics config: " + "; ".join(errors))
    return [METRICS[name](cfg, device) for name in cfg.names]


__all__ = [
    "METRICS",
    "Metric",
    "MetricResult",
    "MetricsConfig",
    "build_metrics",
    "heldout_attacker_loss",
]
