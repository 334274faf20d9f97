"""Contract tests for the personalizer catalog (``continual_ldu.personalizers.PERSONALIZERS``).

One table (``CASES``, in the style of peft's ``tests/testing_common.py``) drives every catalog
entry through the same contract: a finite scalar loss, training that changes the trainable
parameters and lowers the loss on a fixed batch with fixed noise, an exact save/load round
trip, a base UNet that training never touches, and seeded determinism. Method-specific tests
follow: Textual Inversion's single changed row, the LoRA's effect on a stock diffusers pipeline,
and DreamBooth's prior-preservation sum. The engine owns the optimizer, so the tests build one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from continual_ldu.models.loading import ModelConfig, load_model
from continual_ldu.personalizers import (
    PERSONALIZERS,
    Personalizer,
    PersonalizerConfig,
    build_personalizer,
    generate_class_images,
)
from continual_ldu.seeding import make_generator, seed_everything

NOISE_SEED = 1234  # the fixed (t, eps) draw shared by the before/after evaluations
NUM_IMAGES = 2  # images per batch: enough for a batch, small enough to stay fast on 2 cores


@dataclass(frozen=True)
class Case:
    """One catalog entry's row: config overrides and the (deliberately large) training lr."""

    config: dict = field(default_factory=dict)
    lr: float = 1e-2
    steps: int = 3


# Every key of PERSONALIZERS needs a row; the lrs are far above the recipes' defaults so that a
# few steps move the parameters visibly. Full DreamBooth trains ~1M weights, so 1e-2 overshoots
# within three steps on the tiny model; 1e-3 is still 200x its default.
CASES: dict[str, Case] = {
    "textual_inversion": Case(),
    "dreambooth_lora": Case(config={"rank": 4}),
    "dreambooth": Case(config={"train_text_encoder": True}, lr=1e-3),
}


def make_config(name: str, **overrides) -> PersonalizerConfig:
    """The row's config for ``name``, checked by the schema's own validation."""
    if name not in CASES:
        pytest.fail(f"PERSONALIZERS[{name!r}] has no row in CASES: add one to test its contract")
    cfg = PersonalizerConfig(name=name, seed=0, **{**CASES[name].config, **overrides})
    assert cfg.validate() == [], cfg.validate()
    return cfg


def fresh_model(path: Path):
    """A second, independent copy of the tiny model (so two personalizers never share one)."""
    return load_model(ModelConfig(pretrained=str(path), device="cpu"))


def latents_of(model, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.encode(images[:NUM_IMAGES])


def fixed_loss(personalizer: Personalizer, latents: torch.Tensor) -> torch.Tensor:
    """The instance loss on a fixed (t, eps) draw."""
    with torch.no_grad():
        return personalizer.loss(latents, make_generator(NOISE_SEED))


def train(personalizer: Personalizer, latents: torch.Tensor, case: Case) -> None:
    """A few AdamW steps on the training loss, with the same noise draw every step."""
    optimizer = torch.optim.AdamW(personalizer.trainable_parameters(), lr=case.lr)
    for _ in range(case.steps):
        optimizer.zero_grad()
        personalizer.training_loss(latents, make_generator(NOISE_SEED))["loss"].backward()
        optimizer.step()


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed_keys(before: dict[str, torch.Tensor], module: torch.nn.Module) -> list[str]:
    after = module.state_dict()
    if set(after) != set(before):
        return sorted(set(after) ^ set(before))
    return [k for k in before if not torch.equal(before[k], after[k])]


@pytest.fixture(params=sorted(PERSONALIZERS))
def name(request) -> str:
    """Each catalog key in turn."""
    return request.param


# ----------------------------------------------------------------------------- the contract


def test_cases_table_covers_catalog_exactly() -> None:
    """The contract table has one row per PERSONALIZERS key, and no stale rows."""
    assert set(CASES) == set(PERSONALIZERS)


def test_personalizer_loss_is_finite_scalar(name, tiny_model, images32) -> None:
    """The loss on encoded images is a finite 0-d tensor that backpropagates to the trainables."""
    personalizer = build_personalizer(make_config(name), tiny_model)
    loss = personalizer.loss(latents_of(tiny_model, images32), make_generator(NOISE_SEED))
    assert loss.ndim == 0
    assert torch.isfinite(loss)
    assert personalizer.trainable_parameters(), "nothing to train"
    assert loss.requires_grad


def test_personalizer_training_changes_parameters_and_lowers_loss(
    name, tiny_model, images32
) -> None:
    """A few AdamW steps change every trainable tensor and lower the fixed-noise loss."""
    personalizer = build_personalizer(make_config(name), tiny_model)
    latents = latents_of(tiny_model, images32)
    params = personalizer.trainable_parameters()
    before_params = [p.detach().clone() for p in params]
    before = fixed_loss(personalizer, latents)

    train(personalizer, latents, CASES[name])

    unchanged = [
        i for i, (p, b) in enumerate(zip(params, before_params, strict=True)) if torch.equal(p, b)
    ]
    assert not unchanged, f"{len(unchanged)}/{len(params)} trainable tensors did not move"
    after = fixed_loss(personalizer, latents)
    assert after < before, f"loss went {before.item():.6f} -> {after.item():.6f}"


def test_personalizer_save_load_reproduces_loss(
    name, tiny_model, tiny_model_path, images32, tmp_path
) -> None:
    """A fresh personalizer that loads the saved folder gives bit-identical losses."""
    cfg = make_config(name)
    personalizer = build_personalizer(cfg, tiny_model)
    latents = latents_of(tiny_model, images32)
    train(personalizer, latents, CASES[name])
    personalizer.save(tmp_path / "saved")
    trained = fixed_loss(personalizer, latents)

    other_model = fresh_model(tiny_model_path)
    other = build_personalizer(cfg, other_model)
    other_latents = latents_of(other_model, images32)
    assert not torch.equal(fixed_loss(other, other_latents), trained), "training was a no-op"
    other.load(tmp_path / "saved")

    assert torch.equal(fixed_loss(other, other_latents), trained)


def test_personalizer_training_leaves_base_unet_unchanged(name, tiny_model, images32) -> None:
    """Construction and training never write to the shared base UNet (nor, in training, the text encoder)."""
    unet_before = snapshot(tiny_model.unet)
    personalizer = build_personalizer(make_config(name), tiny_model)
    text_before = snapshot(tiny_model.text_encoder)  # TI adds its row at construction, by design

    train(personalizer, latents_of(tiny_model, images32), CASES[name])

    assert changed_keys(unet_before, tiny_model.unet) == []
    assert changed_keys(text_before, tiny_model.text_encoder) == []
    assert not any(p.requires_grad for p in tiny_model.unet.parameters())


def test_personalizer_is_deterministic_under_seed(name, tiny_model_path, images32) -> None:
    """Same seed, same data: two independent runs give identical weights and losses."""
    cfg = make_config(name)
    runs = []
    for _ in range(2):
        model = fresh_model(tiny_model_path)
        seed_everything(cfg.seed)
        personalizer = build_personalizer(cfg, model)
        latents = latents_of(model, images32)
        train(personalizer, latents, CASES[name])
        params = [p.detach().clone() for p in personalizer.trainable_parameters()]
        runs.append((params, fixed_loss(personalizer, latents)))

    (params_a, loss_a), (params_b, loss_b) = runs
    assert len(params_a) == len(params_b)
    assert all(torch.equal(a, b) for a, b in zip(params_a, params_b, strict=True))
    assert torch.equal(loss_a, loss_b)


# ----------------------------------------------------------------------- Textual Inversion


def test_textual_inversion_sync_changes_only_placeholder_row(tiny_model, images32) -> None:
    """After training and sync_embedding, only the placeholder's row of the token table moved."""
    personalizer = build_personalizer(make_config("textual_inversion"), tiny_model)
    table = tiny_model.text_encoder.get_input_embeddings().weight
    before = table.detach().clone()

    train(personalizer, latents_of(tiny_model, images32), CASES["textual_inversion"])
    personalizer.sync_embedding()

    rows = (table != before).any(dim=1).nonzero().flatten().tolist()
    assert rows == [personalizer.token_id]
    assert torch.equal(table[personalizer.token_id], personalizer.embedding.detach())


def test_textual_inversion_save_writes_single_placeholder_key(tiny_model, tmp_path) -> None:
    """learned_embeds.safetensors holds exactly one key, the placeholder, with its (1, dim) row."""
    from safetensors.torch import load_file

    cfg = make_config("textual_inversion")
    personalizer = build_personalizer(cfg, tiny_model)
    personalizer.save(tmp_path)

    tensors = load_file(str(tmp_path / "learned_embeds.safetensors"))
    assert list(tensors) == [cfg.placeholder_token]
    assert torch.equal(tensors[cfg.placeholder_token], personalizer.embedding.detach()[None])


# -------------------------------------------------------------------------- DreamBooth-LoRA


def stock_pipeline(path: Path):
    """A stock diffusers pipeline on the tiny model's folder, as a user would load it."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        str(path), safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_dreambooth_lora_saved_weights_change_stock_pipeline(
    tiny_model, tiny_model_path, images32, tmp_path
) -> None:
    """A trained, saved LoRA loads into a stock StableDiffusionPipeline and changes its images."""
    personalizer = build_personalizer(make_config("dreambooth_lora"), tiny_model)
    train(personalizer, latents_of(tiny_model, images32), CASES["dreambooth_lora"])
    personalizer.save(tmp_path / "lora")
    pipe = stock_pipeline(tiny_model_path)

    def generate():
        return pipe(
            personalizer.prompt,
            num_inference_steps=2,
            height=32,
            width=32,
            output_type="np",
            generator=torch.Generator("cpu").manual_seed(0),
        ).images

    plain = generate()
    pipe.load_lora_weights(tmp_path / "lora")
    with_lora = generate()

    assert with_lora.shape == plain.shape
    assert abs(with_lora - plain).max() > 1e-4


def test_dreambooth_lora_stock_pipeline_matches_personalizer_scale(
    tiny_model, tiny_model_path, images32, tmp_path
) -> None:
    """With lora_alpha != rank, the stock pipeline's LoRA UNet predicts what the personalizer's does."""
    personalizer = build_personalizer(make_config("dreambooth_lora", lora_alpha=8), tiny_model)
    latents = latents_of(tiny_model, images32)
    train(personalizer, latents, CASES["dreambooth_lora"])
    personalizer.save(tmp_path / "lora")
    pipe = stock_pipeline(tiny_model_path)
    pipe.load_lora_weights(tmp_path / "lora")

    t = torch.tensor([500] * len(latents))
    with torch.no_grad():
        states = tiny_model.encode_prompt([personalizer.prompt] * len(latents))
        ours = personalizer.unet(latents, t, encoder_hidden_states=states).sample
        theirs = pipe.unet(latents, t, encoder_hidden_states=states).sample
        base = tiny_model.unet(latents, t, encoder_hidden_states=states).sample

    assert (ours - base).abs().max() > 1e-4, "the trained LoRA is a no-op"
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------- DreamBooth


def test_dreambooth_prior_loss_is_weighted_sum(tiny_model, images32) -> None:
    """With class latents, loss = instance + prior_loss_weight * prior."""
    cfg = make_config("dreambooth", prior_preservation=True, prior_loss_weight=0.5)
    personalizer = build_personalizer(cfg, tiny_model)
    class_images = generate_class_images(tiny_model, cfg.class_prompt, 2, 2, 0, 32)
    personalizer.class_latents = latents_of(tiny_model, class_images)

    with torch.no_grad():
        terms = personalizer.training_loss(
            latents_of(tiny_model, images32), make_generator(NOISE_SEED)
        )

    assert set(terms) == {"loss", "instance", "prior"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in terms.values())
    assert terms["prior"] > 0
    expected = terms["instance"] + cfg.prior_loss_weight * terms["prior"]
    assert torch.allclose(terms["loss"], expected, rtol=0, atol=1e-6)
