"""Unit tests for continual_ldu.config: schema-from-dataclasses, YAML recipes, overrides."""

# Deliberately postponed annotations: the loader must resolve string hints via get_type_hints.
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from continual_ldu.config import (
    ConfigError,
    config_to_dict,
    dump_config,
    flatten_config,
    load_config,
    parse_overrides,
)

# Example schema. Module level (not inside tests) so get_type_hints can resolve the names.


@dataclass
class OptimArgs:
    lr: float = 1e-3
    betas: tuple[float, ...] = (0.9, 0.999)
    schedule: Literal["constant", "cosine"] = "constant"


@dataclass
class ModelArgs:
    name: str = "tiny"
    widths: list[int] = field(default_factory=lambda: [32, 64])
    dropout: float | None = None


@dataclass
class AttackArgs:
    num_steps: int = 2
    eps: float = 0.05

    def validate(self) -> list[str]:
        if not 1 <= self.num_steps <= 4:
            return [f"num_steps must be in 1..4, got {self.num_steps}"]
        return []


@dataclass
class TrainArgs:
    seed: int = 0
    use_ema: bool = False
    out_dir: Path = Path("runs")
    model: ModelArgs = field(default_factory=ModelArgs)
    optim: OptimArgs = field(default_factory=OptimArgs)
    # Field default differs from AttackArgs' own default on purpose (see partial-mapping test).
    attack: AttackArgs = field(default_factory=lambda: AttackArgs(num_steps=3))
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class NeedsName:
    name: str


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str, overrides: tuple[str, ...] = ()) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(TrainArgs, write(tmp_path / "r.yaml", text), overrides)
    return info.value


def test_load_config_builds_nested_dataclass_from_yaml(tmp_path: Path) -> None:
    """A recipe's nested mappings become nested dataclass instances with its values."""
    recipe = write(tmp_path / "r.yaml", "seed: 7\nmodel:\n  name: big\n  widths: [8, 16]\n")
    cfg = load_config(TrainArgs, recipe)
    assert isinstance(cfg.model, ModelArgs)
    assert (cfg.seed, cfg.model.name, cfg.model.widths) == (7, "big", [8, 16])


def test_load_config_without_recipe_gives_defaults() -> None:
    """No recipe and no overrides yields the schema's defaults."""
    assert load_config(TrainArgs) == TrainArgs()


def test_load_config_override_wins_over_recipe(tmp_path: Path) -> None:
    """A key=value override replaces the recipe's value for that key."""
    recipe = write(tmp_path / "r.yaml", "optim:\n  lr: 0.1\n")
    assert load_config(TrainArgs, recipe, ["optim.lr=0.5"]).optim.lr == 0.5


def test_load_config_reports_every_problem_in_one_error(tmp_path: Path) -> None:
    """Two unknown keys and one bad type all appear in a single ConfigError."""
    err = error_of(tmp_path, "bogus: 1\nmodel:\n  zzz: 2\n  name: 3\n")
    assert len(err.problems) == 3
    for key in ("bogus", "model.zzz", "model.name"):
        assert any(p.startswith(f"{key}:") for p in err.problems), key
    assert str(err).count("\n") == 3  # header plus one line per problem


def test_load_config_suggests_closest_key_for_typo(tmp_path: Path) -> None:
    """An unknown key close to a real one names the real one."""
    err = error_of(tmp_path, "optim:\n  lrr: 0.1\n")
    assert "did you mean 'optim.lr'?" in str(err)


def test_load_config_literal_rejects_value_outside_choices(tmp_path: Path) -> None:
    """A Literal field refuses a value that is not one of its choices."""
    err = error_of(tmp_path, "optim:\n  schedule: linear\n")
    assert err.problems == ["optim.schedule: must be one of 'constant', 'cosine'; got 'linear'"]


def test_load_config_validate_messages_carry_dotted_path(tmp_path: Path) -> None:
    """Messages from a nested dataclass's validate() are prefixed with its dotted path."""
    err = error_of(tmp_path, "attack:\n  num_steps: 7\n")
    assert err.problems == ["attack: num_steps must be in 1..4, got 7"]


def test_load_config_validate_runs_despite_unknown_key(tmp_path: Path) -> None:
    """An unknown key does not hide validate() messages from the same dataclass."""
    err = error_of(tmp_path, "attack:\n  num_steps: 9\n  nope: 1\n")
    assert len(err.problems) == 2


def test_load_config_extends_merges_base_under_recipe(tmp_path: Path) -> None:
    """A recipe's `extends` base is loaded first and deep-merged beneath the recipe."""
    (tmp_path / "base").mkdir()
    write(tmp_path / "base" / "b.yaml", "seed: 1\noptim:\n  lr: 0.2\n  schedule: cosine\n")
    recipe = write(tmp_path / "r.yaml", "extends: base/b.yaml\noptim:\n  lr: 0.3\n")
    cfg = load_config(TrainArgs, recipe)
    assert (cfg.seed, cfg.optim.lr, cfg.optim.schedule) == (1, 0.3, "cosine")


def test_load_config_extends_cycle_is_error(tmp_path: Path) -> None:
    """Recipes that extend each other raise instead of recursing forever."""
    write(tmp_path / "a.yaml", "extends: b.yaml\n")
    write(tmp_path / "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(TrainArgs, tmp_path / "a.yaml")


def test_dump_config_round_trips_through_load(tmp_path: Path) -> None:
    """dump_config output loads back into an equal config."""
    cfg = TrainArgs(seed=5, out_dir=Path("x/y"), optim=OptimArgs(lr=1e-10, betas=(0.5, 0.6)))
    cfg.tags["who"] = "me"
    path = dump_config(cfg, tmp_path / "sub" / "cfg.yaml")
    assert load_config(TrainArgs, path) == cfg


def test_dump_config_leaves_no_temp_file(tmp_path: Path) -> None:
    """The atomic write leaves only the target file in its directory."""
    dump_config(TrainArgs(), tmp_path / "cfg.yaml")
    assert [p.name for p in tmp_path.iterdir()] == ["cfg.yaml"]


def test_load_config_missing_recipe_names_file(tmp_path: Path) -> None:
    """A recipe path that does not exist raises ConfigError naming that path."""
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(TrainArgs, tmp_path / "nope.yaml")


def test_load_config_bad_yaml_names_file(tmp_path: Path) -> None:
    """Unparseable YAML raises ConfigError naming the file and line."""
    err = error_of(tmp_path, "seed: [1,\n")
    assert "r.yaml" in str(err) and "line" in str(err)


def test_load_config_missing_required_field_is_error(tmp_path: Path) -> None:
    """A field without a default must be set by the recipe."""
    with pytest.raises(ConfigError, match="name: required value is missing"):
        load_config(NeedsName, write(tmp_path / "r.yaml", "{}\n"))


def test_load_config_partial_mapping_keeps_field_default(tmp_path: Path) -> None:
    """Setting one nested key keeps the others from the field's default instance."""
    cfg = load_config(TrainArgs, write(tmp_path / "r.yaml", "attack:\n  eps: 0.1\n"))
    assert (cfg.attack.num_steps, cfg.attack.eps) == (3, 0.1)


def test_load_config_bool_rejects_string(tmp_path: Path) -> None:
    """A bool field does not accept a string such as 'yes'."""
    err = error_of(tmp_path, "use_ema: 'yes'\n")
    assert err.problems == ["use_ema: expected bool, got str 'yes'"]


def test_load_config_int_rejects_bool(tmp_path: Path) -> None:
    """An int field does not take true as 1."""
    assert error_of(tmp_path, "seed: true\n").problems == ["seed: expected int, got bool True"]


def test_load_config_float_accepts_int(tmp_path: Path) -> None:
    """An int given to a float field is accepted and stored as a float."""
    lr = load_config(TrainArgs, write(tmp_path / "r.yaml", "optim:\n  lr: 1\n")).optim.lr
    assert lr == 1.0 and isinstance(lr, float)


def test_load_config_reads_exponent_without_dot_as_float(tmp_path: Path) -> None:
    """`1e-4` is a float, not the string PyYAML's YAML 1.1 rules would give."""
    recipe = write(tmp_path / "r.yaml", "optim:\n  lr: 1e-4\n")
    assert load_config(TrainArgs, recipe).optim.lr == 1e-4


def test_load_config_tuple_field_from_yaml_list(tmp_path: Path) -> None:
    """A YAML list given to a tuple[X, ...] field becomes a tuple."""
    cfg = load_config(TrainArgs, write(tmp_path / "r.yaml", "optim:\n  betas: [0.1, 0.2]\n"))
    assert cfg.optim.betas == (0.1, 0.2)


def test_load_config_list_item_error_names_index(tmp_path: Path) -> None:
    """A bad list item is reported with its index in the key path."""
    err = error_of(tmp_path, "model:\n  widths: [8, x]\n")
    assert err.problems == ["model.widths[1]: expected int, got str 'x'"]


def test_load_config_optional_accepts_null() -> None:
    """An `X | None` field takes null and X alike."""
    assert load_config(TrainArgs, overrides=["model.dropout=null"]).model.dropout is None
    assert load_config(TrainArgs, overrides=["model.dropout=0.5"]).model.dropout == 0.5


def test_load_config_dict_field_checks_values() -> None:
    """A dict[str, X] field checks each value against X."""
    with pytest.raises(ConfigError, match=r"tags\.a: expected str, got int 1"):
        load_config(TrainArgs, overrides=["tags={a: 1}"])


def test_load_config_path_field_from_string() -> None:
    """A Path field accepts a string and converts it."""
    assert load_config(TrainArgs, overrides=["out_dir=a/b"]).out_dir == Path("a/b")


def test_parse_overrides_parses_values_as_yaml() -> None:
    """Override values get YAML types: int, float, bool, list, null."""
    items = ["a=3", "b=0.5", "c=true", "d=[64,128]", "e=null", "f=text"]
    assert parse_overrides(items) == {
        "a": 3, "b": 0.5, "c": True, "d": [64, 128], "e": None, "f": "text",
    }  # fmt: skip


def test_parse_overrides_nests_dotted_keys() -> None:
    """Dotted keys become nested mappings."""
    assert parse_overrides(["a.b.c=1", "a.b.d=2"]) == {"a": {"b": {"c": 1, "d": 2}}}


def test_parse_overrides_rejects_items_without_equals() -> None:
    """Every override lacking `=` is named in one ConfigError."""
    with pytest.raises(ConfigError) as info:
        parse_overrides(["seed", "ok=1", "lr"])
    assert [p.split("'")[1] for p in info.value.problems] == ["seed", "lr"]


def test_config_to_dict_gives_plain_nested_dict() -> None:
    """Nested dataclasses become dicts, tuples lists, paths strings."""
    data = config_to_dict(TrainArgs())
    assert data["optim"]["betas"] == [0.9, 0.999]
    assert data["out_dir"] == "runs" and isinstance(data["model"], dict)


def test_flatten_config_gives_dotted_keys() -> None:
    """flatten_config keys nested values by their dotted path."""
    flat = flatten_config(TrainArgs())
    assert flat["optim.lr"] == 1e-3 and flat["model.widths"] == [32, 64]
    assert flat["tags"] == {} and "optim" not in flat
