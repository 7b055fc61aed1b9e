"""Typed configuration: dataclasses filled from YAML files and dotted command-line overrides.

Every option lives in one dataclass field with its default; a YAML file or a ``section.key=value`` override
may set any of them. An unknown key is an error naming the closest valid key; a value of the wrong type is
an error naming the expected type. The resolved configuration is plain data (``to_dict``) and is printed by
``--dry-run`` and saved with every run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from .errors import UserError

T = TypeVar("T")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _closest(key: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(key, choices, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f" (valid keys: {', '.join(choices)})"


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin is list:
        (item,) = typing.get_args(tp)
        return f"list of {_type_name(item)}"
    if tp is bool:
        return "true or false"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against annotation ``tp`` (ints are accepted for floats); return the typed value."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, path)
            except UserError:
                continue
        raise UserError(f"{path} must be {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value in typing.get_args(tp):
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in typing.get_args(tp)], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UserError(f"{path} must be one of {_type_name(tp)}, got {value!r}{hint}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise UserError(f"{path} must be a {_type_name(tp)}, got {value!r}")
        return [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is type(None):
        if value is None:
            return None
        raise UserError(f"{path} must be null, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise UserError(f"{path} must be a mapping of options, got {value!r}")
        return from_dict(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{path} must be true or false, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is None:
            raise UserError(f"{path} must be a number, got {value!r}")
        if not math.isfinite(number):  # no option means anything at infinity or NaN
            raise UserError(f"{path} must be a finite number, got {value!r}")
        return number
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"{path} must be an integer, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise UserError(f"{path} must be a string, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a nested mapping; unknown keys and wrong types are UserErrors."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{prefix or 'the configuration'} must be a mapping of options, got {data!r}")
    hints = _field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            raise UserError(f"unknown config key {path!r}{_closest(str(key), names)}")
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """The configuration as plain nested data."""
    return dataclasses.asdict(config)


def all_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of dataclass ``cls`` (for error hints and documentation)."""
    keys = []
    hints = _field_types(cls)
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        path = f"{prefix}.{field.name}" if prefix else field.name
        tp = hints[field.name]
        if dataclasses.is_dataclass(tp):
            keys.extend(all_keys(tp, path))
        else:
            keys.append(path)
    return keys


def apply_overrides(config: T, overrides: list[str], prefix: str = "") -> T:
    """Apply ``a.b=value`` overrides (values parsed as YAML: numbers, true/false, null, lists).

    With ``prefix`` (e.g. ``"data"``), ``config`` is that section and keys are written ``data.key=value``.
    """
    data = to_dict(config)
    valid = all_keys(type(config), prefix)
    for override in overrides:
        if "=" not in override:
            raise UserError(f"override {override!r} must look like section.key=value")
        key, raw = override.split("=", 1)
        key = key.strip()
        if key not in valid:
            raise UserError(f"unknown config key {key!r}{_closest(key, valid)}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = data
        *parents, leaf = key.split(".")[len(prefix.split(".")) if prefix else 0 :]
        for part in parents:
            node = node[part]
        node[leaf] = value
    return from_dict(type(config), data, prefix)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing or malformed file is a UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise UserError(f"config file {str(path)!r} is not UTF-8 text (byte {error.start} cannot be decoded)") from None
    except OSError as error:
        raise UserError(f"config file {str(path)!r} cannot be read ({error.strerror or error})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"config file {str(path)!r} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {str(path)!r} must hold a mapping of sections, not {type(data).__name__}")
    return data


def dump_yaml(config: Any) -> str:
    """The configuration as YAML text (what --dry-run prints and runs save)."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)
