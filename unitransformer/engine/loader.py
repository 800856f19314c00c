"""Typed configs from YAML files and dotted command-line overrides, validated field by field.

The loader is generic over dataclasses: nested dataclasses, ``Literal``, tuples, lists,
``Optional``, and int/float/bool/str. Every key is checked against the dataclass fields, so a
misspelled key is an error naming it and its closest valid spelling (never silently ignored).
YAML is read with ``safe_load`` only: a config can never execute code.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from unitransformer.engine.config import ConfigError, ConfigValueError

__all__ = [
    "config_diff",
    "config_from_dict",
    "config_to_dict",
    "defaults_of",
    "flatten",
    "load_config",
    "parse_overrides",
    "read_yaml",
]

C = TypeVar("C")
_MISSING = object()


def read_yaml(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    """Reads a YAML mapping and the line number of every (dotted) key in it.

    Returns:
        The mapping, and ``{"optim.lr": 7, ...}`` (1-based lines) for error messages.

    Raises:
        ConfigError: The file is missing, is not valid YAML, or is not a mapping.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{path}{where}: invalid YAML ({problem})") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of keys to values, got {type(data).__name__}"
        )
    lines: dict[str, int] = {}
    _key_lines(node, "", lines)
    return data, lines


def _key_lines(node: yaml.Node, prefix: str, out: dict[str, int]) -> None:
    # Walks the composed node tree (which keeps source positions) alongside the loaded data.
    if not isinstance(node, yaml.MappingNode):
        return
    for key_node, value_node in node.value:
        key = f"{prefix}{key_node.value}"
        out[key] = key_node.start_mark.line + 1
        _key_lines(value_node, key + ".", out)


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """Parses ``["optim.lr=3e-4", "train.compile=true"]`` into (dotted key, YAML value) pairs.

    Raises:
        ConfigError: An override is not of the form ``key=value``.
    """
    pairs = []
    for text in overrides:
        key, sep, raw = text.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {text!r}: expected key=value, e.g. optim.lr=3e-4")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw  # Not YAML: keep the raw string and let the field's type judge it.
        pairs.append((key.strip(), value))
    return pairs


def load_config(config_cls: type[C], path: str | Path | None, overrides: list[str] = ()) -> C:
    """Builds a ``config_cls`` from a YAML file (or defaults) and dotted overrides.

    Args:
        config_cls: The task's top-level config dataclass.
        path: A YAML file whose keys mirror the dataclass fields; None starts from defaults.
        overrides: ``key=value`` strings applied on top of the file, in order.

    Raises:
        ConfigError: With the file (and line) or override, the key, and what was expected.
    """
    data, lines = read_yaml(path) if path is not None else ({}, {})
    source = str(path) if path is not None else "config"
    lines.update(apply_overrides(config_cls, data, overrides))
    return config_from_dict(config_cls, data, source=source, lines=lines)


def apply_overrides(
    config_cls: type, data: dict[str, Any], overrides: Sequence[str], allowed: Sequence[str] = ()
) -> dict[str, str]:
    """Sets dotted ``key=value`` overrides in the config mapping ``data``, in place.

    Args:
        config_cls: The dataclass ``data`` will build; every key must name one of its fields.
        data: The mapping read from a YAML file or a run's saved config.
        overrides: ``key=value`` strings, applied in order.
        allowed: If given, only these keys and the keys under them may be overridden (``evaluate``
            may change how a trained model is scored, never what was trained).

    Returns:
        Where each overridden key came from, for `config_from_dict`'s error messages.

    Raises:
        ConfigError: A malformed override, an unknown key, or a key outside ``allowed``.
    """
    lines = {}
    for key, value in parse_overrides(list(overrides)):
        where = f"override {key!r}"
        if allowed and not any(key == a or key.startswith(f"{a}.") for a in allowed):
            raise ConfigError(
                f"{where}: only these keys can be overridden here: {', '.join(allowed)}"
            )
        _check_key(config_cls, key, where)
        _set_dotted(data, key, value)
        lines[key] = where  # Errors in this value point at the override.
    return lines


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    for part in parents:
        child = data.get(part)
        if not isinstance(child, dict):
            child = data[part] = {}
        data = child
    data[last] = value


def _check_key(config_cls: type, key: str, where: str) -> None:
    """Raises a `ConfigError` with the closest valid key when ``key`` names no field."""
    cls: Any = config_cls
    parts = key.split(".")
    for i, part in enumerate(parts):
        names = _field_types(cls) if dataclasses.is_dataclass(cls) else {}
        if part not in names:
            # Suggest at the level that went wrong: 'trian.max_steps' -> 'train'.
            prefix = ".".join(parts[:i])
            valid = [f"{prefix}.{n}" if prefix else n for n in names]
            if not valid:
                raise ConfigError(f"{where}: {prefix!r} has no sub-keys")
            raise _unknown_key(where, ".".join(parts[: i + 1]), valid)
        cls = _dataclass_in(names[part])


def _unknown_key(where: str, key: str, valid: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(sorted(valid))}"
    return ConfigError(f"{where}: unknown key {key!r} ({hint})")


def _field_types(cls: type) -> dict[str, Any]:
    # get_type_hints resolves the string annotations of `from __future__ import annotations`.
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _dataclass_in(tp: Any) -> Any:
    """The dataclass inside ``tp`` (itself, or the X of ``X | None``), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in _union_args(tp) or ():
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _union_args(tp: Any) -> tuple[Any, ...] | None:
    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        return typing.get_args(tp)
    return None


def config_from_dict(
    config_cls: type[C],
    data: dict[str, Any],
    source: str = "config",
    lines: dict[str, int | str] | None = None,
    prefix: str = "",
) -> C:
    """Converts a plain mapping into ``config_cls``, checking every key, type and range.

    Args:
        config_cls: A dataclass type.
        data: Keys mirroring the dataclass fields; absent keys keep their defaults.
        source: Names the origin in messages (a file path).
        lines: Line number of each dotted key in ``source``, if known.
        prefix: Dotted path of ``config_cls`` within the top-level config.

    Raises:
        ConfigError: Unknown key (with the closest valid one), wrong type, or out of range.
    """
    lines = lines or {}
    types_ = _field_types(config_cls)
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        where = _where(source, lines, path)
        if key not in types_:
            raise _unknown_key(where, path, [f"{prefix}{n}" for n in types_])
        kwargs[key] = _convert(types_[key], value, path, source, lines)
    try:
        return config_cls(**kwargs)
    except ConfigValueError as e:
        path = f"{prefix}{e.key}"
        raise ConfigError(
            f"{_where(source, lines, path)}: {path}={e.value!r} is out of range "
            f"(expected {e.expected})"
        ) from None
    except TypeError as e:  # A field without a default that the file did not give.
        raise ConfigError(f"{source}: section {prefix or 'top level'!r}: {e}") from None


def _where(source: str, lines: dict[str, int | str], path: str) -> str:
    line = lines.get(path)
    if isinstance(line, str):  # An override, named as such.
        return line
    return f"{source} line {line}" if line else source


def _convert(tp: Any, value: Any, path: str, source: str, lines: dict[str, int | str]) -> Any:
    """Checks ``value`` against the annotation ``tp`` and converts it (lists to tuples...)."""

    def fail(expected: str) -> ConfigError:
        return ConfigError(
            f"{_where(source, lines, path)}: {path}={value!r} has the wrong type "
            f"(expected {expected})"
        )

    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise fail(f"a mapping of {tp.__name__} fields")
        return config_from_dict(tp, value, source, lines, prefix=path + ".")
    if tp is Any:
        return value
    union = _union_args(tp)
    if union is not None:
        if value is None and type(None) in union:
            return None
        errors = []
        for arg in (a for a in union if a is not type(None)):
            try:
                return _convert(arg, value, path, source, lines)
            except ConfigError as e:
                errors.append(e)
        raise errors[0] if len(errors) == 1 else fail(_describe(tp))
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        if value in args and type(value) in {type(a) for a in args}:
            return value
        raise fail("one of " + ", ".join(repr(a) for a in args))
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise fail(_describe(tp))
        if origin is list or (len(args) == 2 and args[1] is Ellipsis):
            items = [_convert(args[0], v, path, source, lines) for v in value] if args else value
            return list(items) if origin is list else tuple(items)
        if len(value) != len(args):
            raise fail(_describe(tp))
        return tuple(_convert(a, v, path, source, lines) for a, v in zip(args, value, strict=True))
    return _convert_scalar(tp, value, fail)


def _convert_scalar(tp: Any, value: Any, fail: Any) -> Any:
    # bool is an int subclass in Python, but `depth: true` is a mistake, not 1.
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail("true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail("an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # PyYAML reads "3e-4" (no dot) as a string; accept what Python reads as a number.
            try:
                return float(value)
            except ValueError:
                pass
        raise fail("a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail("a string")
    raise ConfigError(f"unsupported config field type {tp!r}")  # A bug in a config class.


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0])}"
        return f"a list of {len(args)} values (" + ", ".join(_describe(a) for a in args) + ")"
    if origin is list:
        return f"a list of {_describe(args[0])}" if args else "a list"
    if _union_args(tp) is not None:
        return " or ".join("null" if a is type(None) else _describe(a) for a in _union_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def config_to_dict(config: Any) -> dict[str, Any]:
    """A YAML-ready plain mapping of a config (tuples become lists), that loads back equal."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(config)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1}}`` -> ``{"optim.lr": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_diff(a: dict[str, Any], b: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose values differ between two config mappings: ``{key: (a, b)}``.

    A key missing on one side shows as ``"<absent>"``.
    """
    fa, fb = flatten(a), flatten(b)
    return {
        k: (fa.get(k, "<absent>"), fb.get(k, "<absent>"))
        for k in sorted(set(fa) | set(fb))
        if fa.get(k, _MISSING) != fb.get(k, _MISSING)
    }


def defaults_of(config_cls: type) -> dict[str, Any]:
    """The defaults of ``config_cls`` as a mapping; empty if some field has no default."""
    try:
        return config_to_dict(config_cls())
    except TypeError:
        return {}
