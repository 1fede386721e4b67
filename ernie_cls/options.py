"""Stage options declared once: each stage's config dataclass is the flag list of its `ernie-cls` subcommand.

A field becomes `--field-name` with the field's default, its type read from the annotation, and its help from
`metadata={"help": ...}` (`opt()` below writes that). Metadata may also name `flag` (another flag name),
`choices`, `parse` (a str -> value function), `positional`, or `cli=False` (set by the command, not a flag). So a
default lives in one place, and a renamed field cannot be dropped silently: `config_from` passes every field.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any


def opt(default: Any = dataclasses.MISSING, help: str = "", **meta: Any) -> Any:
    """A dataclass field with CLI metadata; mutable defaults (list, dict) are copied per instance."""
    meta["help"] = help
    if isinstance(default, list | dict):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def comma_list(item: Callable[[str], Any]) -> Callable[[str], list]:
    def parse(value: str) -> list:
        try:
            return [item(x.strip()) for x in value.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"use comma-separated {item.__name__} values, e.g. 1,8,32") from None

    parse.__name__ = f"list of {item.__name__}"
    return parse


def _base(annotation: Any) -> Any:
    """`int | None` -> int; other annotations unchanged."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _parser_for(annotation: Any) -> Callable[[str], Any]:
    base = _base(annotation)
    if typing.get_origin(base) is list:
        return comma_list(typing.get_args(base)[0])
    if base in (int, float, str):
        return base
    raise TypeError(f"no command-line form for {annotation!r}: give the field a `parse` in its metadata")


def add_options(parser: argparse.ArgumentParser, config: type, exclude: tuple[str, ...] = (), **overrides: Any) -> None:
    """Add one flag per field of `config` (a dataclass) but those in `exclude` (a command that does not read them);
    `overrides` replace a field's default for this command. Fields with a `group` in their metadata go into an
    argument group of that title (shown apart in --help)."""
    hints = typing.get_type_hints(config)
    groups: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        meta = dict(f.metadata)
        if not meta.get("cli", True) or f.name in exclude:
            continue
        target = parser
        if meta.get("group"):
            target = groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        default = overrides.get(f.name, f.default if f.default is not dataclasses.MISSING else None)
        if f.default_factory is not dataclasses.MISSING and f.name not in overrides:
            default = f.default_factory()
        kwargs: dict[str, Any] = {"help": meta.get("help") or None, "dest": f.name}
        base = _base(hints[f.name])
        if base is bool:  # off by default: --flag; on or unset by default: --flag/--no-flag
            kwargs["action"] = "store_true" if f.default is False else argparse.BooleanOptionalAction
            kwargs["default"] = default
        else:
            kwargs.update(type=meta.get("parse") or _parser_for(hints[f.name]), default=default)
            if "choices" in meta:
                kwargs["choices"] = meta["choices"]
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if meta.get("positional"):
            kwargs.pop("dest")
            if not required:
                kwargs["nargs"] = "?"
            target.add_argument(f.name, **kwargs)
            continue
        kwargs["required"] = required and f.name not in overrides
        target.add_argument(meta.get("flag") or "--" + f.name.replace("_", "-"), **kwargs)


def config_from(config: type, args: argparse.Namespace, exclude: tuple[str, ...] = (), **values: Any) -> Any:
    """The config from the parsed flags (every CLI field not in `exclude`, which keep their defaults) and the
    command's own `values` (the cli=False fields). A field without its flag is an error, never silently dropped."""
    fields = [f for f in dataclasses.fields(config) if f.metadata.get("cli", True) and f.name not in exclude]
    return config(**{f.name: getattr(args, f.name) for f in fields}, **values)
