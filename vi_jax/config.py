"""Frozen-dataclass configs and `field=value` overrides from the command line."""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Sequence, TypeVar

C = TypeVar("C")


def _parse(text: str, kind: Any, field: str) -> Any:
    origin = typing.get_origin(kind)
    if origin is tuple:
        (item_kind, *_) = typing.get_args(kind)
        items = [s for s in text.split(",") if s.strip()]
        return tuple(_parse(s.strip(), item_kind, field) for s in items)
    if kind is bool:
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"{field}: expected a boolean (true/false), got {text!r}")
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{field}: expected {kind.__name__}, got {text!r}") from None


def apply_overrides(config: C, assignments: Sequence[str]) -> C:
    """config with each "field=value" applied, parsed by the field's annotated type.

    Tuples are comma-separated ("hidden=200,200"; "hidden=" for an empty tuple); a field of a
    nested config is named with a dot ("vae.latent_dim=4").
    """
    for assignment in assignments:
        path, sep, text = assignment.partition("=")
        if not sep:
            raise ValueError(f"override {assignment!r} is not of the form field=value")
        config = _set(config, path.strip().split("."), text.strip(), path.strip())
    return config


def _set(config: C, path: list[str], text: str, full: str) -> C:
    hints = typing.get_type_hints(type(config))
    names = [f.name for f in dataclasses.fields(config)]
    field = path[0]
    if field not in names:
        raise ValueError(f"unknown config field {full!r}; fields: {names}")
    value = getattr(config, field)
    if len(path) > 1:
        if not dataclasses.is_dataclass(value):
            raise ValueError(f"config field {field!r} has no sub-fields (in {full!r})")
        return dataclasses.replace(config, **{field: _set(value, path[1:], text, full)})
    if dataclasses.is_dataclass(value):
        raise ValueError(f"config field {full!r} is a nested config; set one of its fields with a dot")
    return dataclasses.replace(config, **{field: _parse(text, hints[field], full)})


def from_dict(cls: type[C], values: dict) -> C:
    """Rebuild a (possibly nested) config dataclass from `dataclasses.asdict` output (JSON).

    A field missing from `values` takes its default (a result of an older version that lacked
    it); a key that is no field is a ValueError: the values were written by other code."""
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {unknown}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        kind, value = hints[f.name], values[f.name]
        if dataclasses.is_dataclass(kind):
            value = from_dict(kind, value)
        elif typing.get_origin(kind) is tuple:
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)
