"""The SynthFaces reference-model builder: builds, loads, samples, resumes (quick recipe, seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from continual_ldu.config import load_config
from continual_ldu.reference import build
from continual_ldu.reference.build import ReferenceConfig, build_reference
from continual_ldu.reference.synthfaces import caption, make_identity

REPO = Path(__file__).resolve().parents[2]
QUICK = REPO / "recipes" / "reference_quick.yaml"


class Interrupted(RuntimeError):
    pass


def _quick(out: Path, *overrides: str) -> ReferenceConfig:
    return load_config(ReferenceConfig, QUICK, [f"output_dir={out}", *overrides])


def test_quick_build_loads_and_samples(tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    from continual_ldu.models.loading import ModelConfig, load_model

    out = build_reference(_quick(tmp_path / "ref"))
    assert (out / "model_index.json").is_file()
    assert not Path(f"{out}.build").exists()  # build state removed after success
    info = json.loads((out / "build_info.json").read_text())
    vae = info["stages"]["vae"]
    assert vae["loss_last"] < vae["loss_first"]
    assert np.isfinite(info["vae_heldout_psnr_db"])
    assert info["seed"] == 0 and info["config"]["data"]["resolution"] == 32

    model = load_model(ModelConfig(pretrained=str(out), device="cpu"))
    assert model.vae.config.latent_channels == 4
    assert model.vae.config.scaling_factor != 0.18215  # calibrated on SynthFaces latents

    pipe = StableDiffusionPipeline.from_pretrained(
        str(out), safety_checker=None, requires_safety_checker=False
    )
    prompt = caption(make_identity(0, 0))
    image = pipe(
        prompt,
        num_inference_steps=2,
        height=32,
        width=32,
        generator=torch.Generator().manual_seed(0),
    ).images[0]
    assert image.size == (32, 32)

    assert build_reference(_quick(tmp_path / "ref")) == out  # built: returns at once


def test_interrupted_build_resumes_without_redoing_the_vae(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def stop_in_unet(stage: str, step: int) -> None:
        if stage == "unet":
            raise Interrupted(step)

    cfg = _quick(tmp_path / "ref")
    monkeypatch.setattr(build, "_on_checkpoint", stop_in_unet)
    with pytest.raises(Interrupted):
        build_reference(cfg)
    work = Path(f"{tmp_path / 'ref'}.build")
    assert (work / "vae" / "done.json").is_file()
    assert not (work / "unet" / "done.json").exists()
    assert not (tmp_path / "ref" / "model_index.json").exists()

    monkeypatch.undo()
    out = build_reference(cfg)
    info = json.loads((out / "build_info.json").read_text())
    assert info["runs"] == 2
    assert info["stages"]["vae"]["run"] == 1  # finished in the first run, skipped in the second
    unet = info["stages"]["unet"]
    assert unet["run"] == 2
    assert unet["resumed_from_step"] == cfg.checkpoint_every
    assert unet["steps"] == cfg.unet.steps
    assert len(unet["losses"]) == cfg.unet.steps


def test_resume_refuses_a_different_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def stop(stage: str, step: int) -> None:
        raise Interrupted(step)

    monkeypatch.setattr(build, "_on_checkpoint", stop)
    with pytest.raises(Interrupted):
        build_reference(_quick(tmp_path / "ref"))
    monkeypatch.undo()
    with pytest.raises(ValueError, match="different config"):
        build_reference(_quick(tmp_path / "ref", "vae.steps=13"))


def test_default_recipe_matches_the_measured_sizes() -> None:
    cfg = load_config(ReferenceConfig, REPO / "recipes" / "reference_default.yaml")
    assert cfg.vae.widths == (16, 32, 64) and cfg.vae.latent_channels == 8
    assert cfg.unet.widths == (64, 128, 128) and cfg.text.hidden == 128
    assert cfg.data.num_pretrain_identities == 300
    assert cfg.digest() == ReferenceConfig().digest()  # the recipe spells out the defaults
