"""The purification catalog: what an attacker runs on protected images before personalizing."""

from __future__ import annotations

from typing import TYPE_CHECKING

from continual_ldu.purifications.base import NoPurification, Purification, PurificationConfig
from continual_ldu.purifications.blur import GaussianBlur
from continual_ldu.purifications.diffpure import DiffPure
from continual_ldu.purifications.jpeg import JpegCompression
from continual_ldu.purifications.noisy_upscale import NoisyUpscale
from continual_ldu.purifications.resize import Resize

if TYPE_CHECKING:
    from continual_ldu.models.loading import LatentDiffusionModel

PURIFICATIONS: dict[str, type[Purification]] = {
    "none": NoPurification,
    "jpeg": JpegCompression,
    "gaussian_blur": GaussianBlur,
    "resize": Resize,
    "diffpure": DiffPure,
    "noisy_upscale": NoisyUpscale,
}


def build_purification(
    cfg: PurificationConfig, model: LatentDiffusionModel | None = None
) -> Purification:
    """Validate ``cfg`` and instantiate the named purification.

    ``model`` is the base ``LatentDiffusionModel``; it may be None unless
    ``PURIFICATIONS[cfg.name].requires_model(cfg)``, in which case a ValueError says to pass it.
    """
    problems = cfg.validate()
    if problems:
        raise ValueError(f"invalid purification config: {'; '.join(problems)}")
    # Each class checks that it got the model it needs, so direct construction fails the same way.
    return PURIFICATIONS[cfg.name](cfg, model)


__all__ = ["PURIFICATIONS", "Purification", "PurificationConfig", "build_purification"]
