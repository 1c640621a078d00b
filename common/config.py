"""The config base every stage's config derives from.

A config is a frozen dataclass of knobs. Each knob is written once, with `knob()`: its
default, its help text and (where it needs one) its choices or its parser live in the
field, and the CLIs build their options from there (`common/cli.py`). A config may nest
configs by concern (`TrainConfig` holds a model, an optimiser, ... config); `override`
reaches nested fields by their (unique) name, so `cfg.override(lr=0.01)` sets
`cfg.optim.lr`.

    cfg = SomeConfig.preset("tiny").override(**cli_options)   # every CLI, every stage
    cfg.to_dict()                                             # what a run writes beside its outputs

A number knob states its range in its `knob()` (`at_least`, `above`, `at_most`, `below`,
and `length` for a tuple): the base `__post_init__` checks every value against it, and a
float is always finite, so no CLI and no saved config can pass a NaN or a negative count.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T", bound="Config")


def knob(default: Any, help: str, *, choices: tuple[str, ...] | None = None,
         parse: Callable[[str], Any] | None = None, shape: bool = False, cli: bool = True,
         at_least: float | None = None, above: float | None = None, at_most: float | None = None,
         below: float | None = None, length: int | None = None) -> Any:
    """A config field: `help` and `choices` become the CLI option's; `parse` turns the option's
    text into the value (default: by the default's type, tuples comma-separated); `shape`
    marks what a checkpoint's weights depend on; `cli=False` keeps it off the command line.
    A number (or each number of a tuple) must lie in the range the bounds give; a tuple
    must hold `length` values."""
    bounds = {"at_least": at_least, "above": above, "at_most": at_most, "below": below}
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "parse": parse,
                                                        "shape": shape, "cli": cli, "length": length,
                                                        "bounds": {k: v for k, v in bounds.items() if v is not None}})


_BOUND_TEXT = {"at_least": ">= {}", "above": "> {}", "at_most": "<= {}", "below": "< {}"}
_BOUND_OK = {"at_least": lambda v, b: v >= b, "above": lambda v, b: v > b,
             "at_most": lambda v, b: v <= b, "below": lambda v, b: v < b}


def flag(name: str) -> str:
    """A knob's command-line option, the name every range message uses."""
    return "--" + name.replace("_", "-")


def check_knob(f: dataclasses.Field, value: Any) -> None:
    """Raise ValueError, naming the option, if `value` breaks the knob's declared range or length."""
    meta = f.metadata
    if not meta or value is None or isinstance(value, (str, bool, Config)):
        return
    values = value if isinstance(value, tuple) else (value,)
    shown = ",".join(map(str, values))
    if meta.get("length") is not None and len(values) != meta["length"]:
        raise ValueError(f"{flag(f.name)}: needs {meta['length']} comma-separated values, got {len(values)} ({shown})")
    bounds = meta.get("bounds", {})
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{flag(f.name)}: {v} is not a finite number")
        if not all(_BOUND_OK[k](v, b) for k, b in bounds.items()):
            want = " and ".join(_BOUND_TEXT[k].format(b) for k, b in bounds.items())
            raise ValueError(f"{flag(f.name)} must be {want}, got {shown}")


def differences(a: dict, b: dict, skip: set[str] | frozenset[str] = frozenset()) -> dict[str, tuple[Any, Any]]:
    """The keys whose values differ between two flat dicts (a key missing on one side is
    None there), but those in `skip`: {key: (a's, b's)}."""
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k) and k not in skip}


def worded(diff: dict[str, tuple[Any, Any]], a: str, b: str) -> str:
    """`differences` in one line: "key: A x vs B y, ..." (a, b: what the two sides are)."""
    return ", ".join(f"{k}: {a} {x} vs {b} {y}" for k, (x, y) in diff.items())


def digest(payload: dict) -> str:
    """Stable short hash of a JSON-able dict (caches and resume checks)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Config:
    def __post_init__(self) -> None:
        """Every knob within its declared range (subclasses call this first)."""
        for f in dataclasses.fields(self):
            check_knob(f, getattr(self, f.name))

    @classmethod
    def preset(cls: type[T], name: str) -> T:
        presets = cls._presets()
        if name not in presets:
            raise ValueError(f"unknown {cls.__name__} preset {name!r}; choose from {sorted(presets)}")
        return cls().override(**presets[name])

    @classmethod
    def _presets(cls) -> dict[str, dict[str, Any]]:
        return {"default": {}}

    @classmethod
    def preset_names(cls) -> tuple[str, ...]:
        return tuple(cls._presets())

    def override(self: T, **fields: Any) -> T:
        """A copy with the given fields replaced, nested ones by name; None values (unset
        CLI options) are ignored."""
        fields = {k: v for k, v in fields.items() if v is not None}
        own = {f.name for f in dataclasses.fields(self)}
        changes = {k: fields.pop(k) for k in list(fields) if k in own}
        for name, sub in self._subconfigs().items():
            mine = {k: fields.pop(k) for k in list(fields) if k in sub.leaf_names()}
            if mine:
                changes[name] = sub.override(**mine)
        if fields:
            raise ValueError(f"{type(self).__name__} has no field(s) {sorted(fields)}")
        return dataclasses.replace(self, **changes)

    def _subconfigs(self) -> dict[str, Config]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if isinstance(getattr(self, f.name), Config)}

    @classmethod
    def leaf_fields(cls) -> list[dataclasses.Field]:
        """Every knob, nested configs' included (depth first, in declaration order)."""
        hints = typing.get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):
            sub = hints[f.name]
            if isinstance(sub, type) and issubclass(sub, Config):
                out += sub.leaf_fields()
            else:
                out.append(f)
        return out

    @classmethod
    def leaf_names(cls) -> set[str]:
        return {f.name for f in cls.leaf_fields()}

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[T], d: dict[str, Any]) -> T:
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {}
        for k, v in d.items():
            if k not in names:
                raise ValueError(f"{cls.__name__}: unknown field {k!r} in saved config")
            sub = hints[k]
            if isinstance(sub, type) and issubclass(sub, Config):
                kw[k] = sub.from_dict(v)
            else:
                kw[k] = _tuples(v)
        return cls(**kw)


def _plain(v: Any) -> Any:
    if isinstance(v, Config):
        return v.to_dict()
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    return v


def _tuples(v: Any) -> Any:
    return tuple(_tuples(x) for x in v) if isinstance(v, list) else v
