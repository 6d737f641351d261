"""Frozen-dataclass configs: `field=value` overrides from the command line, named presets, and
field rules declared next to the fields (`Rule`, `check_fields`).

A config class lists its rules in a table beside its fields, e.g.

    RULES: ClassVar[dict[str, Rule]] = {"learning_rate": real(0), "num_samples": count(1)}

and calls `check_fields(self, self.RULES)` in `validate()` (or `__post_init__`, to refuse bad
values at construction), so every bad value is named before any compute. A config class with a
`named(name)` classmethod can be set by name on the command line ("protocol.local_fit=authors").
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import typing
from typing import Any, Callable, Mapping, NamedTuple, Sequence, TypeVar

C = TypeVar("C")


class Rule(NamedTuple):
    """What one config field may hold: ok(value) -> bool, and `want`, the words for a good value."""

    ok: Callable[[Any], bool]
    want: str


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def count(minimum: int = 1) -> Rule:
    """An integer (not a bool, not a float) >= minimum."""
    return Rule(lambda v: _is_int(v) and v >= minimum, f"an integer >= {minimum}")


def counts(minimum: int = 0) -> Rule:
    """A non-empty tuple of integers >= minimum."""
    return Rule(lambda v: isinstance(v, tuple) and len(v) > 0 and all(_is_int(k) and k >= minimum for k in v),
                f"a non-empty tuple of integers >= {minimum}")


# layer widths: a tuple, possibly empty (no hidden layer), of integers >= 1
widths = Rule(lambda v: isinstance(v, tuple) and all(_is_int(k) and k >= 1 for k in v), "a tuple of integers >= 1")


def real(low: float = -math.inf, high: float = math.inf, *, low_closed: bool = False,
         high_closed: bool = False) -> Rule:
    """A finite number (int or float, not a bool) in the interval from low to high, open at each end
    unless that end is closed: real(0) is x > 0, real(0, 1) is 0 < x < 1."""
    def ok(v):
        if not isinstance(v, numbers.Real) or isinstance(v, bool) or not math.isfinite(v):
            return False
        return (v >= low if low_closed else v > low) and (v <= high if high_closed else v < high)

    if high == math.inf:
        want = f">= {low}" if low_closed else f"> {low}"
    else:
        want = f"in {'[' if low_closed else '('}{low}, {high}{']' if high_closed else ')'}"
    return Rule(ok, f"a finite number {want}")


def one_of(choices: Sequence[str]) -> Rule:
    """One of the named choices."""
    return Rule(lambda v: v in tuple(choices), f"one of {tuple(choices)}")


def check_fields(config: Any, rules: Mapping[str, Rule]) -> None:
    """Raise ValueError "<Class>.<field> must be <want>, got <value>" for the first field of
    `config` that breaks its rule."""
    for name, rule in rules.items():
        value = getattr(config, name)
        try:
            good = rule.ok(value)
        except TypeError:  # e.g. a string compared with a number
            good = False
        if not good:
            raise ValueError(f"{type(config).__name__}.{name} must be {rule.want}, got {value!r}")


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
        named = getattr(type(value), "named", None)
        if named is None:
            raise ValueError(f"config field {full!r} is a nested config; set one of its fields with a dot")
        try:
            return dataclasses.replace(config, **{field: named(text)})
        except ValueError as error:
            raise ValueError(f"{full}={text}: {error}") from None
    parsed = _parse(text, hints[field], full)
    try:
        return dataclasses.replace(config, **{field: parsed})
    except ValueError as error:  # a config that checks its fields at construction
        raise ValueError(f"{full}={text}: {error}") from None


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
