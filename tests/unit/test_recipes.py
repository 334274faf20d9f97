"""Every shipped recipe and stream definition parses against its schema (litgpt's config hub test)."""

from __future__ import annotations

from pathlib import Path

import pytest

from continual_ldu.config import load_config
from continual_ldu.data.streams.base import load_stream_config
from continual_ldu.engine.static import StaticConfig
from continual_ldu.engine.synth_bench import SynthBenchConfig
from continual_ldu.engine.trainer import TrainConfig
from continual_ldu.evaluation.harness import EvalConfig
from continual_ldu.reference.build import PRESETS, ReferenceConfig, reference_preset

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
STREAMS = sorted((REPO / "streams").glob("*.yaml"))
SCHEMAS = {
    "static": StaticConfig,
    "debug_static": StaticConfig,
    "adaptive": TrainConfig,
    "debug_adaptive": TrainConfig,
    "eval": EvalConfig,
    "reference": ReferenceConfig,
    "bench": SynthBenchConfig,
    "baseline": StaticConfig,
}


def schema_for(recipe: Path) -> type:
    """The schema a recipe's name selects; a recipe no prefix matches fails here."""
    for prefix, schema in sorted(SCHEMAS.items(), key=lambda kv: -len(kv[0])):
        if recipe.stem.startswith(prefix):
            return schema
    raise AssertionError(
        f"{recipe.name}: no schema for this recipe name; add its prefix to SCHEMAS"
    )


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_parses(recipe: Path):
    """The recipe loads with no unknown key or bad value."""
    load_config(schema_for(recipe), recipe)


@pytest.mark.parametrize("stream", STREAMS, ids=lambda p: p.name)
def test_stream_definition_parses(stream: Path):
    """The stream definition loads as a StreamConfig."""
    load_stream_config(stream)


def test_recipes_exist():
    """The default recipes the README names are shipped."""
    names = {p.name for p in RECIPES}
    assert {"adaptive_tiny.yaml", "static_tiny.yaml", "debug_adaptive.yaml"} <= names


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_reference_recipe_is_its_preset(name: str):
    """`model.pretrained: reference:<name>` builds exactly what recipes/reference_<name>.yaml does."""
    recipe = load_config(ReferenceConfig, REPO / "recipes" / f"reference_{name}.yaml")
    assert recipe.digest() == reference_preset(name).digest()


def test_model_spec_names_its_presets():
    """A mistyped built-in or reference model fails before any work, naming what exists."""
    from continual_ldu.config import ConfigError
    from continual_ldu.models.loading import ModelConfig

    for spec, hint in (
        ("reference:big", "reference:default, reference:quick"),
        ("builtin:x", "builtin:tiny"),
    ):
        with pytest.raises(ConfigError, match=hint):
            load_config(ModelConfig, None, [f"pretrained={spec}"])
    assert (
        load_config(ModelConfig, None, ["pretrained=reference:quick"]).pretrained
        == "reference:quick"
    )
