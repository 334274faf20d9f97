"""The personalizer catalog: the attacker's fine-tuning methods, one file each."""

from __future__ import annotations

from continual_ldu.personalizers.base import Personalizer, PersonalizerConfig
from continual_ldu.personalizers.dreambooth import DreamBooth, generate_class_images
from continual_ldu.personalizers.dreambooth_lora import DreamBoothLoRA
from continual_ldu.personalizers.textual_inversion import TextualInversion

PERSONALIZERS: dict[str, type[Personalizer]] = {
    "textual_inversion": TextualInversion,
    "dreambooth_lora": DreamBoothLoRA,
    "dreambooth": DreamBooth,
}


def build_personalizer(cfg: PersonalizerConfig, model) -> Personalizer:
    """Instantiate the named personalizer around a loaded base model."""
    return PERSONALIZERS[cfg.name](model, cfg)


__all__ = [
    "PERSONALIZERS",
    "Personalizer",
    "PersonalizerConfig",
    "build_personalizer",
    "generate_class_images",
]
