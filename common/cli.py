"""What the three CLIs share: options generated from a config's knobs, and one error exit.

Every CLI builds its config as `Cls.preset(name).override(**options)`; the options come
from the dataclass (`config_options`), so a knob's default and help are written once, in
its `knob()`.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from .config import Config


def _parser(f: dataclasses.Field) -> Callable[[str], Any] | None:
    if f.metadata.get("parse"):
        return f.metadata["parse"]
    if isinstance(f.default, tuple):
        kind = type(f.default[0]) if f.default else str
        return lambda s: tuple(kind(x.strip()) for x in s.split(",") if x.strip())
    return None


def _click_type(f: dataclasses.Field) -> Any:
    if f.metadata.get("choices"):
        return click.Choice(f.metadata["choices"])
    if isinstance(f.default, bool):
        return None
    if isinstance(f.default, (int, float)):
        return type(f.default)
    return str


def _preset_note(f: dataclasses.Field, presets: dict[str, dict[str, Any]]) -> str:
    notes = [f"{name}: {_show(p[f.name])}" for name, p in presets.items() if f.name in p]
    return f"; preset {', '.join(notes)}" if notes else ""


def _show(v: Any) -> str:
    return ",".join(map(str, v)) if isinstance(v, tuple) else str(v)


def config_options(cls: type[Config], presets: dict[str, dict[str, Any]] | None = None,
                   skip: tuple[str, ...] = ()) -> Callable:
    """Decorator adding one `--knob-name` option per CLI knob of `cls` (nested ones included).

    Every option defaults to None, which `Config.override` ignores, so the preset's value
    stands unless the user gives one; the help shows the default and what presets set.
    """
    presets = cls._presets() if presets is None else presets

    def decorate(func: Callable) -> Callable:
        for f in reversed(cls.leaf_fields()):
            if not f.metadata.get("cli", True) or f.name in skip:
                continue
            flag = f.name.replace("_", "-")
            help_text = f"{f.metadata.get('help', '')} [default: {_show(f.default)}{_preset_note(f, presets)}]"
            if isinstance(f.default, bool):
                func = click.option(f"--{flag}/--no-{flag}", f.name, default=None, help=help_text)(func)
                continue
            parse = _parser(f)
            callback = None if parse is None else _callback(parse)
            func = click.option(f"--{flag}", f.name, type=_click_type(f) if parse is None else str, default=None,
                                help=help_text, callback=callback)(func)
        return func

    return decorate


def _callback(parse: Callable[[str], Any]) -> Callable:
    def cb(ctx, param, value):
        if value is None:
            return None
        try:
            return parse(value)
        except ValueError as e:
            raise click.BadParameter(str(e)) from None
    return cb


def knob_values(cls: type[Config], options: dict[str, Any]) -> dict[str, Any]:
    """Split the knob options off a command's keyword arguments (removing them from `options`)."""
    names = cls.leaf_names()
    return {k: options.pop(k) for k in list(options) if k in names}


def fail(message: str, code: int = 1) -> NoReturn:
    """One-line error on stderr and a non-zero exit (plain text: rich would wrap a path mid-name)."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class OutPath(click.Path):
    """An output path option: an empty string is refused (it would mean the current folder,
    where a run or a cache would be written among whatever is there)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and not value.strip():
            self.fail("an empty path would write into the current folder; name the output folder", param, ctx)
        return super().convert(value, param, ctx)
