"""A tiny, seeded, Stable-Diffusion-shaped model built in code (the project's debug flavour).

Same component classes and folder layout as SD 1.x (VAE, CLIP text encoder with the real CLIP
tokenizer, text-conditioned UNet, scaled-linear scheduler), a few hundred kilobytes to a few
megabytes of random weights, written with ``save_pretrained`` so that the ordinary loader, and a
stock ``StableDiffusionPipeline``, read it back like any hub model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from continual_ldu.models.clip_vocab import write_clip_tokenizer_files

BOS_ID, EOS_ID = 49406, 49407  # CLIP's <|startoftext|>, <|endoftext|>


@dataclass
class TinyModelConfig:
    """Sizes of the tiny model; the defaults give ~2 M parameters (most in the token table)."""

    seed: int = 0
    sample_size: int = 64  # pixels; the VAE downsamples by 2 ** (len(vae_widths) - 1)
    vae_widths: tuple[int, ...] = (32, 64)
    latent_channels: int = 4
    unet_widths: tuple[int, ...] = (32, 64)
    text_hidden: int = 32
    text_layers: int = 2
    text_heads: int = 4
    cross_attention_dim: int = 32
    extra: dict[str, int] = field(default_factory=dict)

    def validate(self) -> list[str]:
        errors = []
        if self.sample_size % 2 ** (len(self.vae_widths) + len(self.unet_widths) - 2):
            errors.append("sample_size must be divisible by the VAE and UNet downsampling")
        return errors


def sd_training_scheduler() -> DDPMScheduler:
    """SD 1.x's training schedule: 1000 scaled-linear steps, epsilon prediction."""
    return DDPMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        clip_sample=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def clip_text_encoder(
    hidden: int, layers: int, heads: int, intermediate: int, projection_dim: int
) -> CLIPTextModel:
    """A randomly initialised CLIP text encoder over the real CLIP vocabulary and special ids."""
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=EOS_ID + 1,
            hidden_size=hidden,
            intermediate_size=intermediate,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=77,
            bos_token_id=BOS_ID,
            eos_token_id=EOS_ID,
            pad_token_id=EOS_ID,
            projection_dim=projection_dim,
        )
    )


def build_tiny_components(cfg: TinyModelConfig) -> dict[str, object]:
    """Build seeded random SD-shaped components (the diffusers ``get_dummy_components`` idea)."""
    torch.manual_seed(cfg.seed)
    unet = UNet2DConditionModel(
        sample_size=cfg.sample_size // 2 ** (len(cfg.vae_widths) - 1),
        in_channels=cfg.latent_channels,
        out_channels=cfg.latent_channels,
        block_out_channels=cfg.unet_widths,
        layers_per_block=1,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (len(cfg.unet_widths) - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (len(cfg.unet_widths) - 1) + ("UpBlock2D",),
        cross_attention_dim=cfg.cross_attention_dim,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=cfg.vae_widths,
        down_block_types=("DownEncoderBlock2D",) * len(cfg.vae_widths),
        up_block_types=("UpDecoderBlock2D",) * len(cfg.vae_widths),
        latent_channels=cfg.latent_channels,
        norm_num_groups=8,
        sample_size=cfg.sample_size,
    )
    vae.register_to_config(scaling_factor=calibrate_scaling_factor(vae, cfg.sample_size, cfg.seed))
    text_encoder = clip_text_encoder(
        cfg.text_hidden,
        cfg.text_layers,
        cfg.text_heads,
        cfg.text_hidden * 2,
        cfg.cross_attention_dim,
    )
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "scheduler": sd_training_scheduler(),
    }


def build_tokenizer(folder: Path) -> CLIPTokenizer:
    """The real CLIP tokenizer, from the vocabulary shipped in open-clip-torch."""
    write_clip_tokenizer_files(folder)
    # from_pretrained reads vocab.json + merges.txt under transformers 4 and 5 alike.
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)


@torch.no_grad()
def calibrate_scaling_factor(vae: AutoencoderKL, sample_size: int, seed: int) -> float:
    """1 / std of the latents of smooth random images, as SD's factor was chosen for its VAE.

    With unit-variance latents the diffusion schedule means what it says for the tiny model too.
    """
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(16, 3, sample_size // 8, sample_size // 8, generator=generator)
    images = torch.nn.functional.interpolate(coarse, size=sample_size, mode="bilinear") * 2 - 1
    return float(1.0 / vae.encode(images).latent_dist.mean.std())


def save_tiny_model(cfg: TinyModelConfig, folder: Path) -> Path:
    """Build the tiny model and write it in diffusers layout to ``folder`` (atomically)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=folder.parent))
    try:
        tokenizer = build_tokenizer(staging / "vocab")
        pipe = StableDiffusionPipeline(
            **build_tiny_components(cfg),
            tokenizer=tokenizer,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.save_pretrained(staging / "model")
        os.replace(staging / "model", folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder
