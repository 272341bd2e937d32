"""Typed settings: frozen dataclasses, filled from YAML presets and `key=value`.

A wrong key or a value of the wrong type is a UserError naming the key,
raised before any work starts.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from .errors import UserError


def parse_assignments(items: list[str] | None, what: str = "--set") -> dict[str, Any]:
    """Parse ['a=1', 'b.c=x'] into {'a': 1, 'b.c': 'x'}; values are YAML scalars."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"{what} {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise UserError(f"{what} {item!r}: empty key")
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else ""
        except (yaml.YAMLError, ValueError, TypeError, RecursionError):  # e.g. "2020-13-45", "!!int x"
            out[key] = raw
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {str(p)!r} not found")
    try:
        data = yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError, ValueError, TypeError, RecursionError, OSError) as e:
        # YAML's constructors raise ValueError/TypeError on values such as "2020-13-45" or "!!int x"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f"config file {str(p)!r} is not valid YAML: {first}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {str(p)!r} must hold a mapping of settings")
    return data


def _coerce(value: Any, tp: Any, name: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in get_args(tp):
            raise UserError(f"setting {name!r}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, name)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0] if errors else f"setting {name!r}: bad value {value!r}")
    if origin in (list, tuple):
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [value] if not isinstance(value, str) else [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"setting {name!r}: expected a list, got {value!r}")
        args = get_args(tp)
        inner = args[0] if args else Any
        items = [_coerce(v, inner, name) for v in value]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"setting {name!r}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise UserError(f"setting {name!r}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"setting {name!r}: expected a number, got {value!r}")
        if value != value or value in (float("inf"), float("-inf")):
            raise UserError(f"setting {name!r}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise UserError(f"setting {name!r}: expected a string, got {value!r}")
        return str(value)
    return value


def build(cls: type, overrides: dict[str, Any] | None = None, where: str = "") -> Any:
    """Make a settings object of dataclass `cls`, checking every key and value."""
    overrides = dict(overrides or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - fields)
    prefix = f"{where}: " if where else ""
    if unknown:
        raise UserError(
            f"{prefix}unknown setting {unknown[0]!r}; valid: {', '.join(sorted(fields))}"
        )
    values = {k: _coerce(v, hints[k], k) for k, v in overrides.items()}
    try:
        obj = cls(**values)
    except (TypeError, ValueError) as e:
        raise UserError(f"{prefix}{e}")
    check = getattr(obj, "check", None)
    if check is not None:
        check()
    return obj


def as_dict(obj: Any) -> dict[str, Any]:
    d = dataclasses.asdict(obj)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def split_prefixed(values: dict[str, Any], prefixes: list[str]) -> dict[str, dict[str, Any]]:
    """Split {'train.lr': 1, 'defense.gamma': 2, 'x': 3} by prefix; no prefix -> ''."""
    out: dict[str, dict[str, Any]] = {p: {} for p in prefixes}
    out.setdefault("", {})
    for k, v in values.items():
        head, _, tail = k.partition(".")
        if tail and head in out:
            out[head][tail] = v
        else:
            out[""][k] = v
    return out
