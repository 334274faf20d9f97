"""Load a Stable-Diffusion-family latent diffusion model with the ordinary diffusers calls.

``pretrained`` is a local folder in diffusers layout, a hub id (``runwayml/stable-diffusion-v1-5``;
resolved by ``from_pretrained``, so ``HF_HUB_OFFLINE=1`` and a warm cache work as usual), or
``builtin:tiny`` for the project's seeded tiny model, built once into the cache folder.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from filelock import FileLock
from transformers import CLIPTextModel, CLIPTokenizer

from continual_ldu.models.tiny import TinyModelConfig, save_tiny_model

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
BUILTIN_PREFIX = "builtin:"
REFERENCE_PREFIX = "reference:"  # reference:default / reference:quick, the SynthFaces models
REFERENCE_PRESETS = ("default", "quick")


@dataclass
class ModelConfig:
    """Which base model to load and how."""

    pretrained: str = "builtin:tiny"
    revision: str | None = None
    variant: str | None = None
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    device: str = "auto"  # "auto" picks cuda when available
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)

    def validate(self) -> list[str]:
        if self.pretrained.startswith(BUILTIN_PREFIX) and self.pretrained != "builtin:tiny":
            return [f"pretrained: unknown built-in model {self.pretrained!r}; use 'builtin:tiny'"]
        preset = self.pretrained.removeprefix(REFERENCE_PREFIX)
        if self.pretrained.startswith(REFERENCE_PREFIX) and preset not in REFERENCE_PRESETS:
            known = ", ".join(REFERENCE_PREFIX + name for name in REFERENCE_PRESETS)
            return [f"pretrained: unknown reference model {self.pretrained!r}; use one of {known}"]
        return []


def cache_root() -> Path:
    """Where built-in models live: ``$LDU_CACHE`` or ``~/.cache/continual_ldu``."""
    return Path(os.environ.get("LDU_CACHE", Path.home() / ".cache" / "continual_ldu"))


def resolve_device(device: str) -> torch.device:
    """Map ``auto`` to cuda when present, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def builtin_tiny_path(cfg: TinyModelConfig) -> Path:
    """Build the tiny model on first use; the folder name hashes its config."""
    digest = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest()[:12]
    folder = cache_root() / f"tiny-sd-{digest}"
    if (folder / "model_index.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    # Several ranks may ask at once: one builds, the others wait and then read it.
    with FileLock(str(folder) + ".lock"):
        if not (folder / "model_index.json").is_file():
            save_tiny_model(cfg, folder)
    return folder


class LatentDiffusionModel:
    """The frozen base model: VAE, text encoder, tokenizer, UNet and its noise schedule."""

    def __init__(
        self,
        vae: AutoencoderKL,
        unet: UNet2DConditionModel,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        scheduler: DDPMScheduler,
        source: str = "",
    ) -> None:
        self.vae, self.unet, self.text_encoder = vae, unet, text_encoder
        self.tokenizer, self.scheduler, self.source = tokenizer, scheduler, source
        for module in (vae, unet, text_encoder):
            module.requires_grad_(False)
            module.eval()
        # Read the latent scale from the VAE's config: never a hard-coded 0.18215.
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(getattr(vae.config, "shift_factor", None) or 0.0)

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def vae_scale(self) -> int:
        """Pixels per latent cell."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> scaled latents (posterior mean, so deterministic)."""
        mean = self.vae.encode(images.to(self.vae.dtype)).latent_dist.mean
        return (mean - self.shift_factor) * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [-1, 1] (not clamped, so gradients stay informative)."""
        latents = latents / self.scaling_factor + self.shift_factor
        return self.vae.decode(latents.to(self.vae.dtype)).sample

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """Prompts -> padded CLIP input ids on the model's device."""
        return self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)

    def encode_prompt(self, prompts: list[str], text_encoder: CLIPTextModel | None = None):
        """Prompts -> the UNet's cross-attention states (``text_encoder`` may be a fine-tuned copy)."""
        encoder = text_encoder if text_encoder is not None else self.text_encoder
        return encoder(self.tokenize(prompts))[0]

    def to(self, device: torch.device | str) -> LatentDiffusionModel:
        for module in (self.vae, self.unet, self.text_encoder):
            module.to(device)
        return self


def load_model(cfg: ModelConfig) -> LatentDiffusionModel:
    """Load every component from a folder or hub id with the ordinary ``from_pretrained`` calls."""
    source = cfg.pretrained
    if source.startswith(BUILTIN_PREFIX):
        source = str(builtin_tiny_path(cfg.tiny))
    elif source.startswith(REFERENCE_PREFIX):
        from continual_ldu.reference.build import ensure_reference

        source = str(ensure_reference(source.removeprefix(REFERENCE_PREFIX)))
    elif source.startswith((".", "/", "~")) and not Path(source).expanduser().is_dir():
        raise ValueError(f"model.pretrained: folder {source} does not exist")
    dtype, device = DTYPES[cfg.dtype], resolve_device(cfg.device)
    common = {"revision": cfg.revision, "variant": cfg.variant}
    vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype, **common)
    unet = UNet2DConditionModel.from_pretrained(
        source, subfolder="unet", torch_dtype=dtype, **common
    )
    text_encoder = CLIPTextModel.from_pretrained(
        source, subfolder="text_encoder", torch_dtype=dtype, **common
    )
    tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", revision=cfg.revision)
    scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler", revision=cfg.revision)
    model = LatentDiffusionModel(vae, unet, text_encoder, tokenizer, scheduler, source=source)
    return model.to(device)
