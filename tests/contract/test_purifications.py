"""Contract tests for the purification catalog (``continual_ldu.purifications.PURIFICATIONS``).

One table (``CASES``, in the style of peft's ``tests/testing_common.py``) drives every catalog
entry through the same contract: same shape and dtype out, values in [-1, 1], determinism under
a seeded generator, a non-empty ``describe()``, and a change to the image for everything but
``none``. Method-specific tests follow: JPEG quality ordering, blur's loss of high frequencies,
the resize identity, DiffPure's strength ordering and its missing-model error, and Noisy
Upscaling's fallback and (with a tiny upscaler written to disk) its real pipeline path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import get_args

import pytest
import torch

from continual_ldu.purifications import (
    PURIFICATIONS,
    Purification,
    PurificationConfig,
    build_purification,
)
from continual_ldu.purifications.base import PurificationName
from continual_ldu.seeding import make_generator

SEED = 1234


@dataclass(frozen=True)
class Case:
    """One catalog entry's row: config overrides, whether it draws noise, whether it needs a model."""

    config: dict = field(default_factory=dict)
    stochastic: bool = False
    needs_model: bool = False


# Every key of PURIFICATIONS needs a row. diffpure runs 3 DDIM steps instead of the recipe's 15
# to keep the suite fast on two cores; the contract does not depend on the step count.
# noisy_upscale runs its resize fallback here (no upscaler weights offline);
# test_noisy_upscale_runs_configured_upscaler covers the pipeline path with a tiny upscaler.
CASES: dict[str, Case] = {
    "none": Case(),
    "jpeg": Case(config={"jpeg_quality": 75}),
    "gaussian_blur": Case(config={"blur_kernel": 5, "blur_sigma": 1.0}),
    "resize": Case(config={"resize_factor": 0.5}),
    "diffpure": Case(
        config={"diffpure_strength": 0.1, "diffpure_steps": 3}, stochastic=True, needs_model=True
    ),
    "noisy_upscale": Case(config={"noise_sigma": 0.05}, stochastic=True),
}


def make_config(name: str, **overrides) -> PurificationConfig:
    """The row's config for ``name``, checked by the schema's own validation."""
    if name not in CASES:
        pytest.fail(f"PURIFICATIONS[{name!r}] has no row in CASES: add one to test its contract")
    cfg = PurificationConfig(name=name, **{**CASES[name].config, **overrides})
    assert cfg.validate() == [], cfg.validate()
    return cfg


def make(name: str, request: pytest.FixtureRequest, **overrides) -> Purification:
    """Build the row's purification, loading the tiny model only for rows that need one."""
    cfg = make_config(name, **overrides)
    needs = PURIFICATIONS[name].requires_model(cfg)
    return build_purification(cfg, request.getfixturevalue("tiny_model") if needs else None)


def run(purification: Purification, images: torch.Tensor, seed: int = SEED) -> torch.Tensor:
    return purification.purify(images, make_generator(seed))


def total_variation(images: torch.Tensor) -> float:
    """Mean absolute difference between neighbouring pixels: high-frequency energy."""
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().mean()
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().mean()
    return float(dx + dy)


@pytest.fixture(params=sorted(PURIFICATIONS))
def name(request: pytest.FixtureRequest) -> str:
    """Each catalog key in turn."""
    return request.param


@pytest.fixture(params=sorted(set(PURIFICATIONS) - {"none"}))
def changing_name(request: pytest.FixtureRequest) -> str:
    """Each catalog key except the identity."""
    return request.param


@pytest.fixture
def saturated(images32: torch.Tensor) -> torch.Tensor:
    """The demo batch with its first image replaced by a +-1 checkerboard (worst for overshoot)."""
    checker = (torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2 * 2.0 - 1.0
    out = images32.clone()
    out[0] = checker.expand(3, -1, -1)
    return out


# ----------------------------------------------------------------------------- the contract


def test_cases_table_covers_catalog_exactly() -> None:
    """The contract table has one row per PURIFICATIONS key, and no stale rows."""
    assert set(CASES) == set(PURIFICATIONS)


def test_config_names_match_catalog() -> None:
    """PurificationConfig.name's Literal lists exactly the catalog's keys."""
    assert set(get_args(PurificationName)) == set(PURIFICATIONS)


def test_purification_needs_model_matches_table(name: str) -> None:
    """The class attribute needs_model says what the table says."""
    make_config(name)  # fails loudly if the row is missing
    assert PURIFICATIONS[name].needs_model is CASES[name].needs_model


def test_purification_preserves_shape_and_dtype(name, request, images32) -> None:
    """The output has the input's shape, dtype and device."""
    out = run(make(name, request), images32)
    assert (out.shape, out.dtype, out.device) == (images32.shape, images32.dtype, images32.device)


def test_purification_output_in_range(name, request, saturated) -> None:
    """The output stays in [-1, 1], even for a saturated checkerboard."""
    out = run(make(name, request), saturated)
    assert float(out.min()) >= -1.0 and float(out.max()) <= 1.0


def test_purification_is_deterministic_under_seed(name, request, images32) -> None:
    """Two runs with generators of the same seed give identical outputs."""
    purification = make(name, request)
    assert torch.equal(run(purification, images32), run(purification, images32))


def test_purification_draws_from_generator(name, request, images32) -> None:
    """Stochastic methods give different outputs for different seeds; the others ignore it."""
    purification = make(name, request)
    same = torch.equal(run(purification, images32, 0), run(purification, images32, 1))
    assert same is not CASES[name].stochastic


def test_purification_describe_names_method(name, request) -> None:
    """describe() is a non-empty line that starts with the catalog key."""
    text = make(name, request).describe()
    assert text.startswith(name) and "\n" not in text


def test_purification_changes_image(changing_name, request, images32) -> None:
    """Every method but none moves the image (mean absolute difference > 1e-3)."""
    out = run(make(changing_name, request), images32)
    assert float((out - images32).abs().mean()) > 1e-3


def test_build_purification_rejects_invalid_config() -> None:
    """An invalid field raises ValueError naming that field."""
    with pytest.raises(ValueError, match="blur_kernel"):
        build_purification(PurificationConfig(name="gaussian_blur", blur_kernel=4))


# ----------------------------------------------------------------------------- per method


def test_none_is_identity(images32) -> None:
    """none returns the input exactly."""
    assert torch.equal(run(build_purification(PurificationConfig(name="none")), images32), images32)


def test_jpeg_higher_quality_changes_less(images32) -> None:
    """JPEG at quality 95 moves the image less than at quality 10."""
    errors = {}
    for quality in (95, 10):
        purification = build_purification(make_config("jpeg", jpeg_quality=quality))
        errors[quality] = float((run(purification, images32) - images32).abs().mean())
    assert errors[95] < errors[10]


def test_gaussian_blur_lowers_total_variation(images32) -> None:
    """Blurring lowers the total variation (high-frequency energy) of the batch."""
    out = run(build_purification(make_config("gaussian_blur")), images32)
    assert total_variation(out) < 0.8 * total_variation(images32)


def test_resize_factor_one_is_near_identity(images32) -> None:
    """resize with factor 1.0 leaves the image unchanged up to float rounding."""
    out = run(build_purification(make_config("resize", resize_factor=1.0)), images32)
    torch.testing.assert_close(out, images32, atol=1e-4, rtol=0)


def test_diffpure_larger_strength_moves_more(tiny_model, images32) -> None:
    """Noising to t*/T = 0.5 moves the image further from its VAE round trip than to 0.1."""
    # The tiny model's random VAE alone moves the image a lot, so the diffusion part is
    # measured against the plain encode-decode round trip.
    with torch.no_grad():
        roundtrip = tiny_model.decode(tiny_model.encode(images32)).clamp(-1.0, 1.0)
    moved = {}
    for strength in (0.1, 0.5):
        purification = build_purification(
            make_config("diffpure", diffpure_strength=strength), tiny_model
        )
        moved[strength] = float((run(purification, images32) - roundtrip).abs().mean())
    assert moved[0.1] < moved[0.5]


def test_diffpure_without_model_raises_naming_argument() -> None:
    """Building diffpure without a model raises ValueError that says to pass model=."""
    with pytest.raises(ValueError, match="diffpure.*model="):
        build_purification(make_config("diffpure"))


def test_noisy_upscale_without_upscaler_describes_fallback() -> None:
    """Without an upscaler, describe() names the resize fallback and the noise sigma."""
    text = build_purification(make_config("noisy_upscale")).describe()
    assert text == "noisy_upscale(sigma=0.05, upscaler=resize-fallback)"


def test_noisy_upscale_with_upscaler_without_model_raises() -> None:
    """An upscaler is placed on the base model's device, so building without a model fails."""
    cfg = make_config("noisy_upscale", upscaler="some/upscaler")
    with pytest.raises(ValueError, match="noisy_upscale.*model="):
        build_purification(cfg)


def test_noisy_upscale_runs_configured_upscaler(tiny_model, tmp_path) -> None:
    """A configured upscaler is loaded from disk and returns the input's shape, in range."""
    folder = save_tiny_upscaler(tiny_model, tmp_path / "upscaler")
    purification = build_purification(
        make_config("noisy_upscale", upscaler=str(folder)), tiny_model
    )
    images = torch.rand(1, 3, 16, 16, generator=make_generator(0)) * 2 - 1
    out = run(purification, images)
    assert out.shape == images.shape and float(out.abs().max()) <= 1.0
    assert purification.describe().endswith(f"upscaler={folder})")


def save_tiny_upscaler(model, folder: Path) -> Path:
    """A seeded random StableDiffusionUpscalePipeline (x4 VAE, 7-channel UNet), saved to disk."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableDiffusionUpscalePipeline,
        UNet2DConditionModel,
    )

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=4,
        in_channels=7,  # 4 latent channels + the 3-channel low-resolution image
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=model.text_encoder.config.hidden_size,
        attention_head_dim=4,
        norm_num_groups=8,
        num_class_embeds=100,  # the noise_level embedding
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 16),  # three blocks: the x4 upscaling decoder
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        norm_num_groups=8,
        scaling_factor=0.08333,
    )
    pipeline = StableDiffusionUpscalePipeline(
        vae=vae,
        text_encoder=model.text_encoder,
        tokenizer=model.tokenizer,
        unet=unet,
        low_res_scheduler=DDPMScheduler(),
        scheduler=DDIMScheduler(),
    )
    pipeline.save_pretrained(folder)
    return folder
