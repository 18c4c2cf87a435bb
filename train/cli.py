"""A step's config dataclass *is* its command line: one source of truth for options and defaults.

Why: with a dataclass, an argparse block that repeats every field and a ``run()`` that copies
them across, a default lived in three places and drifted. Here a step declares one dataclass;
:func:`add_step` turns its fields into options (the field's docstring is the ``--help`` text, its
type and default give the argparse type, ``nargs``, flags and default), builds the dataclass from
the parsed arguments, prints and saves it (:func:`announce_config`), and runs the step with it.

Conventions, so that every step reads the same:

- a field ``batch_size`` is ``--batch-size``; a field without a default is a required option;
- ``bool`` fields that default to True get ``--no-<name>``, those that default to False
  ``--<name>``;
- ``list[X]`` fields take one or more values (``nargs="+"``); ``X | None`` is optional;
- ``typing.Literal[...]`` (or ``option(choices=...)``, a sequence or a callable that returns one,
  so registries are read when the parser is built) restricts the values;
- fields declared with ``option(cli=False)`` are for Python callers only;
- options shared by many steps are declared once, in the mixins below (:class:`OutOption`,
  :class:`ProgressOption`, :class:`DeviceOption`, :class:`SeedOption`), and inherited.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from saescope import __version__
from saescope.core.fileio import atomic_write_json

C = TypeVar("C")
_META = "saescope.cli"


def option(
    default: Any = MISSING,
    *,
    default_factory: Any = MISSING,
    flags: Sequence[str] = (),
    positional: bool = False,
    choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None,
    metavar: str | tuple[str, ...] | None = None,
    help: str | None = None,
    cli: bool = True,
    append: bool = False,
    nargs: int | str | None = None,
    one_of: str | None = None,
    exclusive: str | None = None,
) -> Any:
    """A dataclass field with command-line details that its type and default cannot say.

    ``flags`` replaces the generated option name (e.g. ``("--overwrite", "--no-resume")``);
    ``append`` collects a repeated option into a list (``--layer 6 --layer 10``); ``help``
    overrides the field's docstring; ``nargs`` fixes the number of values of a list field
    (``--match-with BUNDLE STORE``); fields with the same ``one_of`` name form a group of which
    exactly one must be given (``--store`` or ``--source``), and those with the same
    ``exclusive`` name a group of which at most one may be given (``--n-features`` or
    ``--features``).
    """
    meta = {
        _META: {
            "flags": tuple(flags),
            "positional": positional,
            "choices": choices,
            "metavar": metavar,
            "help": help,
            "cli": cli,
            "append": append,
            "nargs": nargs,
            "one_of": one_of,
            "exclusive": exclusive,
        }
    }
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (a string literal right below a field) of ``cls`` and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """(X, True) for ``X | None`` / ``Optional[X]``, else (tp, False)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _argument(f: dataclasses.Field, tp: Any, doc: str | None) -> tuple[list[str], dict[str, Any]]:
    """The ``add_argument`` call (flags, keyword arguments) for one dataclass field."""
    meta = f.metadata.get(_META, {})
    has_default = f.default is not MISSING or f.default_factory is not MISSING
    default = (
        f.default
        if f.default is not MISSING
        else (f.default_factory() if f.default_factory is not MISSING else None)
    )
    kw: dict[str, Any] = {"help": meta.get("help") or doc or ""}
    base, _ = _unwrap_optional(tp)
    if base is bool:
        flags = list(meta.get("flags") or [_flag_name(("no_" if default else "") + f.name)])
        kw.update(action="store_false" if default else "store_true", dest=f.name)
        if default:
            kw["help"] = f"{kw['help']} [on by default; {flags[0]} turns it off]".lstrip()
        return flags, kw
    choices = meta.get("choices")
    if callable(choices):
        choices = list(choices())
    if typing.get_origin(base) in (list, tuple, Sequence):
        (item,) = typing.get_args(base)[:1] or (str,)
        base = item
        kw["nargs"] = "+"
    if typing.get_origin(base) is Literal:
        choices = list(typing.get_args(base))
        base = type(choices[0])
    if meta.get("append"):
        kw["action"] = "append"
        kw.pop("nargs", None)
    if meta.get("nargs") is not None:
        kw["nargs"] = meta["nargs"]
    if base in (int, float, str) or base is Path:
        kw["type"] = base
    if choices is not None:
        kw["choices"] = choices
    if meta.get("metavar"):
        kw["metavar"] = meta["metavar"]
    if meta.get("positional"):
        if not has_default:
            return [f.name], kw
        kw["nargs"] = kw.get("nargs", "?")
        kw["default"] = default
        return [f.name], kw
    kw["dest"] = f.name
    if has_default:
        kw["default"] = default
        if default is not None and "default" not in kw["help"]:
            kw["help"] = f"{kw['help']} (default: {_show(default)})".lstrip()
    else:
        kw["required"] = True
    return list(meta.get("flags") or [_flag_name(f.name)]), kw


def _show(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def cli_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of config class ``cls`` that appear on the command line."""
    return [
        f for f in dataclasses.fields(cls) if f.metadata.get(_META, {}).get("cli", True) and f.init
    ]


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one option per command-line field of the dataclass ``cls`` to ``parser``."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    groups: dict[str, Any] = {}
    for f in cli_fields(cls):
        flags, kw = _argument(f, hints[f.name], docs.get(f.name))
        one_of = f.metadata.get(_META, {}).get("one_of")
        if one_of and one_of not in groups:
            groups[one_of] = parser.add_mutually_exclusive_group(required=True)
        exclusive = f.metadata.get(_META, {}).get("exclusive")
        if exclusive and exclusive not in groups:
            groups[exclusive] = parser.add_mutually_exclusive_group()
        group = one_of or exclusive
        (groups[group] if group else parser).add_argument(*flags, **kw)


def config_from_args(cls: type[C], args: argparse.Namespace) -> C:
    """The dataclass ``cls`` built from parsed arguments (only its command-line fields)."""
    return cls(**{f.name: getattr(args, f.name) for f in cli_fields(cls)})


def add_step(
    sub,
    name: str,
    cls: type[C],
    run: Callable[[C], int | None],
    *,
    help: str,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """Register step ``name``: its options are the fields of ``cls``; it calls ``run(config)``."""
    parser = sub.add_parser(
        name,
        help=help,
        description=description or help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser, cls)
    parser.set_defaults(func=lambda args: run(config_from_args(cls, args)), step=name)
    return parser


def jsonable(value: Any) -> Any:
    """Best-effort conversion of config values to JSON (paths to str, tuples to lists)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if hasattr(value, "value") and not isinstance(value, (int, float, str)):  # enums
        return value.value
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def resolved_config(config: Any, step: str) -> dict:
    """The config after defaults, as a JSON-able dict with the step name and library version."""
    cfg = (
        jsonable(config)
        if dataclasses.is_dataclass(config)
        else {k: jsonable(v) for k, v in sorted(vars(config).items()) if k != "func"}
    )
    return {**dict(sorted(cfg.items())), "step": step, "saescope_version": __version__}


def announce_config(
    config: Any, step: str, out_dir: str | Path | None, filename: str | None = None
) -> dict:
    """Print the resolved config and save it beside the outputs as ``<step>_config.json``.

    Why: a run must be reproducible from its folder alone, whatever defaults were in force.
    """
    cfg = resolved_config(config, step)
    print(f"[{step}] resolved config:", file=sys.stderr)
    print(json.dumps(cfg, indent=2), file=sys.stderr)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / (filename or f"{step}_config.json"), cfg, fsync=False)
    return cfg


# ------------------------------------------------------------------------ shared options
@dataclass(kw_only=True)
class OutOption:
    out: str
    """output folder"""


@dataclass(kw_only=True)
class ProgressOption:
    progress: bool = True
    """show progress bars"""


@dataclass(kw_only=True)
class TorchDeviceOption:
    """Just ``--device``: for steps that leave torch's thread count alone."""

    device: str = "cpu"
    """torch device for the step's heavy work (cpu, cuda, cuda:1, ...)"""


@dataclass(kw_only=True)
class DeviceOption(TorchDeviceOption):
    threads: int | None = None
    """CPU threads for torch (default: torch's own choice)"""


@dataclass(kw_only=True)
class SeedOption:
    seed: int = 0
    """random seed (sampling, shuffling, initialisation)"""


__all__ = [
    "option",
    "field_docs",
    "add_config_arguments",
    "config_from_args",
    "add_step",
    "cli_fields",
    "jsonable",
    "resolved_config",
    "announce_config",
    "OutOption",
    "ProgressOption",
    "TorchDeviceOption",
    "DeviceOption",
    "SeedOption",
]
