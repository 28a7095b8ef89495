"""Typed configurations as the single home of defaults: dataclass fields → argparse options → back.

A pipeline's config is a dataclass whose fields are declared with :func:`option`; the field's
metadata (help, flag, choices, parser, group) generates the command line with :func:`add_arguments`,
:func:`from_args` builds the config back from the parsed namespace, and :func:`to_dict` /
:func:`from_dict` are what report files record and reload. No default is typed twice.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

_KEY = "iobs"  # metadata namespace of an option


def csv_list(text: str) -> list[str]:
    """'a,b,,c' → ['a', 'b', 'c'] (the parser of every comma-separated option)."""
    return [p.strip() for p in text.split(",") if p.strip()]


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    default_factory: Callable[[], Any] | None = None,
    flag: str | None = None,
    choices: Iterable[Any] | None = None,
    parse: Callable[[str], Any] | None = None,
    metavar: str | None = None,
    group: str | None = None,
    exclusive: str | None = None,
    positional: bool = False,
    cli: bool = True,
    cli_default: Any = dataclasses.MISSING,
):
    """A dataclass field that is also a command-line option.

    ``flag`` defaults to ``--field-name``; a bool field becomes a switch (``store_true`` when its
    default is False, ``--no-NAME`` / ``store_false`` when True). ``parse`` converts the string
    (default: the type of the default). ``group`` names an argparse argument group, ``exclusive`` a
    mutually exclusive group. ``cli_default`` is what argparse stores when the option is not given
    (e.g. None, so that the config can tell "not given" from a value); :func:`from_args` then leaves
    the field to its dataclass default. ``cli=False`` keeps a field off the command line.
    """
    meta = dict(help=help, flag=flag, choices=tuple(choices) if choices is not None else None, parse=parse)
    meta |= dict(metavar=metavar, group=group, exclusive=exclusive, positional=positional, cli=cli)
    meta["cli_default"] = cli_default
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata={_KEY: meta})
    return dataclasses.field(default=default, metadata={_KEY: meta})


def _options(cls) -> list[tuple[dataclasses.Field, dict]]:
    fields = [f for f in dataclasses.fields(cls) if _KEY in f.metadata]
    return [(f, f.metadata[_KEY]) for f in fields if f.metadata[_KEY]["cli"]]


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _help(meta: dict, default: Any) -> str:
    text = meta["help"]
    show = not (
        default is None or default is dataclasses.MISSING or isinstance(default, bool) or default == []
    )
    if show and "default" not in text:  # a switch's default is its flag's opposite: not shown
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        text = f"{text} (default {shown})" if text else f"default {shown}"
    return text.replace("%", "%%")


def _argparse_kwargs(f: dataclasses.Field, meta: dict) -> tuple[list[str], dict]:
    default = _default(f)
    kw: dict[str, Any] = {"help": _help(meta, default)}
    if meta["positional"]:
        kw["metavar"] = meta["metavar"] or f.name.upper()
        return [f.name], kw
    flag = meta["flag"] or "--" + f.name.replace("_", "-")
    kw["dest"] = f.name
    if isinstance(default, bool):
        if default:
            flag = meta["flag"] or "--no-" + f.name.replace("_", "-")
        kw["action"] = "store_false" if default else "store_true"
        return [flag], kw
    kw["default"] = default if meta["cli_default"] is dataclasses.MISSING else meta["cli_default"]
    parse = meta["parse"] or (type(default) if isinstance(default, (int, float, str)) else None)
    if parse is not None:
        kw["type"] = parse
    for key in ("choices", "metavar"):
        if meta[key] is not None:
            kw[key] = meta[key]
    return [flag], kw


def add_arguments(parser: argparse.ArgumentParser, cls, exclude: Iterable[str] = ()) -> None:
    """One option per :func:`option` field of ``cls`` (in field order), skipping ``exclude``."""
    groups: dict[str, Any] = {}
    exclusive: dict[str, Any] = {}
    skip = set(exclude)
    for f, meta in _options(cls):
        if f.name in skip:
            continue
        target = parser
        if meta["group"] is not None:
            if meta["group"] not in groups:
                groups[meta["group"]] = parser.add_argument_group(meta["group"])
            target = groups[meta["group"]]
        if meta["exclusive"] is not None:
            if meta["exclusive"] not in exclusive:
                exclusive[meta["exclusive"]] = target.add_mutually_exclusive_group()
            target = exclusive[meta["exclusive"]]
        flags, kw = _argparse_kwargs(f, meta)
        target.add_argument(*flags, **kw)


def from_args(cls, args: argparse.Namespace, **overrides):
    """``cls`` from a namespace parsed with :func:`add_arguments` (``overrides`` win).

    An option left at a ``cli_default`` other than the field's default is not passed, so the
    dataclass default applies.
    """
    kwargs = {}
    for f, meta in _options(cls):
        if not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        if meta["cli_default"] is not dataclasses.MISSING and value == meta["cli_default"]:
            continue
        kwargs[f.name] = value
    kwargs.update(overrides)
    return cls(**kwargs)


def to_dict(cfg) -> dict:
    """The config as plain JSON-able values (what a report records)."""
    return dataclasses.asdict(cfg)


def from_dict(cls, d: dict):
    """Inverse of :func:`to_dict`; an unknown key is an error that lists the allowed ones."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; allowed: {sorted(names)}")
    return cls(**d)
