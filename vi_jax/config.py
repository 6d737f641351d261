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

    Tuples are comma-separated ("hidden=200,200"; "hidden=" for an empty tuple).
    """
    hints = typing.get_type_hints(type(config))
    names = [f.name for f in dataclasses.fields(config)]
    changes = {}
    for assignment in assignments:
        field, sep, text = assignment.partition("=")
        field = field.strip()
        if not sep:
            raise ValueError(f"override {assignment!r} is not of the form field=value")
        if field not in names:
            raise ValueError(f"unknown config field {field!r}; fields: {names}")
        changes[field] = _parse(text.strip(), hints[field], field)
    return dataclasses.replace(config, **changes)
