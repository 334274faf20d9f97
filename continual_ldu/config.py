"""Typed configuration: dataclasses are the schema, a YAML recipe gives values, overrides win.

Modelled on facebookresearch/lingua's ``args.py`` but without OmegaConf: we build the nested
dataclass ourselves so every problem (unknown key, wrong type, failed ``validate()``) is collected
and reported in a single :class:`ConfigError` instead of failing on the first one.

Precedence, lowest to highest: dataclass defaults < ``extends:`` base recipe < recipe < overrides.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import functools
import os
import re
import tempfile
import types
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

__all__ = [
    "ConfigError",
    "build_config",
    "config_to_dict",
    "dump_config",
    "flatten_config",
    "load_config",
    "parse_overrides",
]

T = TypeVar("T")

# Marks a value that failed to build; its error is already recorded, so parents just propagate it.
_INVALID: Any = object()
_UNION_TYPES = (Union, types.UnionType)
# Types that accept more than their own instances, and how the accepted value is converted.
_ACCEPTS: dict[type, tuple[type, ...]] = {float: (int, float), Path: (str, PurePath)}
_CONVERT: dict[type, Any] = {float: float, Path: Path}


class ConfigError(ValueError):
    """Invalid configuration; ``problems`` holds one line per bad key, all of them."""

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        count = len(self.problems)
        header = f"{count} config problem{'s' if count != 1 else ''}:"
        super().__init__("\n".join([header, *(f"  - {p}" for p in self.problems)]))


# ----------------------------------------------------------------------------------------------
# YAML reading


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` as a float.

    PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent, so the ubiquitous
    ``lr: 1e-4`` would silently become the string ``"1e-4"``.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _yaml_load(text: str) -> Any:
    """Parse YAML text safely (no arbitrary objects), with YAML 1.2-style exponent floats."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader subclasses SafeLoader


def _yaml_problem(err: yaml.YAMLError) -> str:
    """One-line description of a YAML error (str(err) spans several lines)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    if mark is None:
        return problem
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"


def _read_yaml(path: Path) -> dict[str, Any]:
    """Read one recipe file as a mapping; every failure names the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"recipe file not found: {path}") from None
    except OSError as err:
        raise ConfigError(f"cannot read recipe {path}: {err.strerror or err}") from None
    try:
        data = _yaml_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"recipe {path}: invalid YAML: {_yaml_problem(err)}") from None
    if data is None:  # an empty file is an empty recipe, not an error
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path}: top level must be a mapping, got {_describe(data)}")
    return data


def _load_recipe(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a recipe and, recursively, the recipe it ``extends`` (merged underneath it)."""
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise ConfigError(f"recipe {path}: 'extends' forms a cycle: {cycle}")
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"recipe {path}: 'extends' must be a file path, got {_describe(parent)}")
    # Relative to the recipe, not the working directory, so recipes can be run from anywhere.
    base = _load_recipe(path.parent / parent, (*chain, resolved))
    return _deep_merge(base, data)


def _deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``top`` over ``base``: mappings merge key by key, anything else (lists too) replaces."""
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# ----------------------------------------------------------------------------------------------
# Overrides


def _parse_override(item: str, problems: list[str]) -> tuple[list[str], Any] | None:
    """Split ``a.b=value`` into its key path and YAML-parsed value, or record why it is bad."""
    key, sep, text = item.partition("=")
    keys = [k.strip() for k in key.split(".")]
    if not sep or not all(keys):
        problems.append(f"override {item!r}: expected the form key.path=value")
        return None
    try:
        return keys, _yaml_load(text)
    except yaml.YAMLError as err:
        problems.append(f"override {item!r}: value is not valid YAML: {_yaml_problem(err)}")
        return None


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Turn ``["a.b=3", "c=[1,2]"]`` into the nested dict ``{"a": {"b": 3}, "c": [1, 2]}``.

    Values are parsed as YAML so numbers, booleans, lists and ``null`` get their natural types.
    Later items win; every malformed item is reported in one :class:`ConfigError`.
    """
    if isinstance(items, str):  # a lone string would be iterated character by character
        raise TypeError("parse_overrides expects a sequence of 'key=value' strings, not a str")
    tree: dict[str, Any] = {}
    problems: list[str] = []
    for item in items:
        parsed = _parse_override(item, problems)
        if parsed is not None:
            _set_nested(tree, *parsed)
    if problems:
        raise ConfigError(problems)
    return tree


def _set_nested(tree: dict[str, Any], keys: list[str], value: Any) -> None:
    """Set ``tree[k0][k1]... = value``; a non-mapping in the way is replaced (last one wins)."""
    node = tree
    for key in keys[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[keys[-1]] = value


# ----------------------------------------------------------------------------------------------
# Building the dataclass tree


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def _where(path: str) -> str:
    return path or "<top level>"


def _describe(value: Any) -> str:
    """Short ``type value`` text for error messages."""
    if value is None:
        return "null"
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _type_name(tp: Any) -> str:
    """Readable name of a type hint, without ``typing.`` and module prefixes."""
    if tp is type(None):
        return "null"
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return f"Literal[{', '.join(map(repr, args))}]"
    if origin in _UNION_TYPES:
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{getattr(origin, '__name__', origin)}[{inner}]"
    return getattr(tp, "__name__", repr(tp))


def _fail(errors: list[str], path: str, tp: Any, value: Any, hint: str = "") -> Any:
    errors.append(f"{_where(path)}: expected {_type_name(tp)}, got {_describe(value)}{hint}")
    return _INVALID


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    # get_type_hints resolves string annotations, so `from __future__ import annotations` works.
    return get_type_hints(cls)


def _build(tp: Any, value: Any, path: str, errors: list[str]) -> Any:
    """Check ``value`` against type hint ``tp`` and convert it; on failure record and return
    ``_INVALID`` so the caller can keep going and collect sibling errors too."""
    if tp is Any or tp is object:
        return value
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, path, errors)
    origin = get_origin(tp)
    if origin is Literal:
        return _build_literal(tp, value, path, errors)
    if origin in _UNION_TYPES:
        return _build_union(tp, value, path, errors)
    if (origin or tp) in (list, tuple):
        return _build_sequence(tp, value, path, errors)
    if (origin or tp) is dict:
        return _build_mapping(tp, value, path, errors)
    return _build_scalar(tp, value, path, errors)


def _build_scalar(tp: Any, value: Any, path: str, errors: list[str]) -> Any:
    if not isinstance(tp, type):
        raise TypeError(f"config schema: unsupported type hint {tp!r} at {_where(path)}")
    if tp is type(None):
        return None if value is None else _fail(errors, path, tp, value)
    # bool is a subclass of int, but `steps: true` is a mistake, not the number 1.
    is_stray_bool = isinstance(value, bool) and tp is not bool
    if is_stray_bool or not isinstance(value, _ACCEPTS.get(tp, (tp,))):
        quote = tp is str and isinstance(value, (int, float, bool))
        return _fail(errors, path, tp, value, " (quote it to keep it as text)" if quote else "")
    convert = _CONVERT.get(tp)
    return convert(value) if convert else value


def _build_literal(tp: Any, value: Any, path: str, errors: list[str]) -> Any:
    allowed = get_args(tp)
    # Compare types too, so Literal[1] does not accept True.
    if any(value == a and type(value) is type(a) for a in allowed):
        return value
    errors.append(f"{_where(path)}: must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return _INVALID


def _build_union(tp: Any, value: Any, path: str, errors: list[str]) -> Any:
    args = get_args(tp)
    if value is None and type(None) in args:
        return None
    arms = [a for a in args if a is not type(None)]
    if len(arms) == 1:  # Optional[X]: report X's own, more precise error
        return _build(arms[0], value, path, errors)
    for arm in arms:  # first arm that accepts the value wins, in declaration order
        scratch: list[str] = []
        built = _build(arm, value, path, scratch)
        if not scratch:
            return built
    return _fail(errors, path, tp, value)


def _item_types(tp: Any, count: int) -> list[Any] | None:
    """Type of each item of a list/tuple hint of ``count`` items; None if the length is wrong."""
    origin, args = get_origin(tp) or tp, get_args(tp)
    if not args:
        return [Any] * count
    if origin is list or (len(args) == 2 and args[1] is Ellipsis):
        return [args[0]] * count
    fixed = [] if args == ((),) else list(args)  # tuple[()] is the empty tuple
    return fixed if len(fixed) == count else None


def _build_sequence(tp: Any, value: Any, path: str, errors: list[str]) -> Any:
    if not isinstance(value, (list, tuple)):
        return _fail(errors, path, tp, value)
    item_types = _item_types(tp, len(value))
    if item_types is None:
        return _fail(errors, path, tp, value, f" ({len(value)} items)")
    items = [
        _build(t, v, f"{path}[{i}]", errors)
        for i, (t, v) in enumerate(zip(item_types, value, strict=True))
    ]
    if any(item is _INVALID for item in items):
        return _INVALID
    return (get_origin(tp) or tp)(items)


def _build_mapping(tp: Any, value: Any, path: str, errors: list[str]) -> Any:
    if not isinstance(value, Mapping):
        return _fail(errors, path, tp, value)
    key_type, value_type = get_args(tp) or (Any, Any)
    out = {}
    for key, item in value.items():
        sub = _join(path, key)
        out[_build(key_type, key, sub, errors)] = _build(value_type, item, sub, errors)
    if _INVALID in out or any(v is _INVALID for v in out.values()):
        return _INVALID
    return out


def _field_default(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _over_default(field: dataclasses.Field[Any], raw: Any) -> Any:
    """A partial mapping for a dataclass field fills in the field's own default instance, not the
    nested class's defaults, so ``field(default_factory=lambda: Opt(lr=3e-4))`` keeps ``lr``."""
    if not isinstance(raw, Mapping):
        return raw
    default = _field_default(field)
    if dataclasses.is_dataclass(default) and not isinstance(default, type):
        return _deep_merge(config_to_dict(default), raw)
    return raw


def _check_unknown(cls: type, data: Mapping[Any, Any], path: str, errors: list[str]) -> None:
    """Record each key that is not a field, suggesting the closest field name."""
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    for key in data:
        if key in names:
            continue
        close = difflib.get_close_matches(str(key), names, n=1)
        fix = (
            f"did you mean '{_join(path, close[0])}'?"
            if close
            else f"remove it (known keys: {', '.join(names)})"
        )
        errors.append(f"{_join(path, key)}: unknown key for {cls.__name__}; {fix}")


def _check_missing(cls: type, data: Mapping[Any, Any], path: str, errors: list[str]) -> bool:
    """Record each field without a default that ``data`` does not set; True if any."""
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.init and f.name not in data and _field_default(f) is dataclasses.MISSING
    ]
    errors.extend(f"{_join(path, name)}: required value is missing; set it" for name in missing)
    return bool(missing)


def _build_dataclass(cls: type, value: Any, path: str, errors: list[str]) -> Any:
    if isinstance(value, cls):  # already built (e.g. passed programmatically)
        return value
    if not isinstance(value, Mapping):
        return _fail(errors, path, cls, value, " (a mapping of its fields)")
    # Unknown keys are reported but do not stop the build, so validate() still gets to speak.
    _check_unknown(cls, value, path, errors)
    missing = _check_missing(cls, value, path, errors)
    hints = _hints(cls)
    kwargs = {
        f.name: _build(hints[f.name], _over_default(f, value[f.name]), _join(path, f.name), errors)
        for f in dataclasses.fields(cls)
        if f.init and f.name in value
    }
    if missing or any(v is _INVALID for v in kwargs.values()):
        return _INVALID
    return _instantiate(cls, kwargs, path, errors)


def _instantiate(cls: type, kwargs: dict[str, Any], path: str, errors: list[str]) -> Any:
    """Construct ``cls`` and run its optional ``validate()``, recording messages under ``path``."""
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as err:  # e.g. a __post_init__ check
        errors.append(f"{_where(path)}: {err}")
        return _INVALID
    validate = getattr(obj, "validate", None)
    messages = validate() if callable(validate) else None
    errors.extend(f"{path}: {m}" if path else str(m) for m in messages or ())
    return obj


# ----------------------------------------------------------------------------------------------
# Public API


def _require_schema(schema: Any) -> None:
    if not (isinstance(schema, type) and dataclasses.is_dataclass(schema)):
        raise TypeError(f"config schema must be a dataclass type, got {schema!r}")


def build_config(schema: type[T], data: Mapping[str, Any]) -> T:
    """Build and validate a ``schema`` instance from a plain nested mapping."""
    _require_schema(schema)
    errors: list[str] = []
    cfg = _build(schema, data, "", errors)
    if errors:
        raise ConfigError(errors)
    return cfg


def load_config(
    schema: type[T], recipe: str | Path | None = None, overrides: Sequence[str] = ()
) -> T:
    """Load ``schema`` from a YAML ``recipe`` (optional) plus ``key.path=value`` overrides.

    Raises :class:`ConfigError` listing every unknown key, type mismatch and ``validate()`` message.
    """
    _require_schema(schema)
    data = _load_recipe(Path(recipe)) if recipe is not None else {}
    data = _deep_merge(data, parse_overrides(overrides))
    return build_config(schema, data)


def _plain(value: Any) -> Any:
    """Recursively convert dataclasses/tuples/paths to YAML- and JSON-friendly builtins."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # init=False fields are derived, and loading them back would be an unknown key.
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    return value


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass instance (tuples become lists, paths strings)."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"expected a dataclass instance, got {cfg!r}")
    return _plain(cfg)


def dump_config(cfg: Any, path: str | Path) -> Path:
    """Write ``cfg`` as YAML that :func:`load_config` reads back; atomic, so a crash mid-write
    never leaves a truncated recipe behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(config_to_dict(cfg), sort_keys=False, allow_unicode=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; a dumped config is meant to be shared
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def flatten_config(cfg: Any) -> dict[str, object]:
    """Dotted-key view, e.g. ``{"optim.lr": 0.001}``, for flat stores such as MLflow params."""
    return _flatten(config_to_dict(cfg), "")


def _flatten(data: Mapping[str, Any], prefix: str) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in data.items():
        dotted = _join(prefix, key)
        if isinstance(value, Mapping) and value:  # an empty mapping stays a leaf, not dropped
            out.update(_flatten(value, dotted))
        else:
            out[dotted] = value
    return out
