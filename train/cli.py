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
import functools
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
    const: Any = None,
) -> Any:
    """A dataclass field with command-line details that its type and default cannot say.

    ``flags`` replaces the generated option name (e.g. ``("--overwrite", "--no-resume")``);
    ``append`` collects a repeated option into a list (``--layer 6 --layer 10``); ``help``
    overrides the field's docstring; ``nargs`` fixes the number of values of a list field
    (``--match-with BUNDLE STORE``), with ``const`` the value of a bare ``nargs="?"`` option;
    fields with the same ``one_of`` name form a group of which
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
            "const": const,
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
        node = _class_node(klass)
        body = node.body if node is not None else []
        for item, nxt in zip(body, body[1:]):
            if (
                isinstance(item, ast.AnnAssign)
                and isinstance(item.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[item.target.id] = " ".join(nxt.value.value.split())
    return docs


@functools.cache
def _module_classes(filename: str) -> dict[str, ast.ClassDef]:
    """The classes of a source file by qualified name, from one parse of the file.

    Why: ``inspect.getsource(cls)`` re-parses the whole module for every class; building the
    command line asks for some 60 classes, which cost 1.5-2.5 s of every ``saescope`` start.
    """
    tree = ast.parse(Path(filename).read_text(encoding="utf-8"))
    found: dict[str, ast.ClassDef] = {}

    def walk(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, ast.ClassDef):
                found.setdefault(prefix + node.name, node)
                walk(node.body, f"{prefix}{node.name}.")

    walk(tree.body, "")
    return found


def _class_node(klass: type) -> ast.ClassDef | None:
    """The ``class`` statement of ``klass`` (None when its source is not available)."""
    try:
        filename = inspect.getsourcefile(klass)
        if filename and "<locals>" not in klass.__qualname__:
            node = _module_classes(filename).get(klass.__qualname__)
            if node is not None:
                return node
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
    except (OSError, TypeError, SyntaxError, UnicodeDecodeError):
        return None
    first = tree.body[0] if tree.body else None
    return first if isinstance(first, ast.ClassDef) else None


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
    if meta.get("const") is not None:
        kw["const"] = meta["const"]
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
    parser.set_defaults(func=lambda args: run_step(run, config_from_args(cls, args)), step=name)
    return parser


# ------------------------------------------------------------------------ failed runs leave nothing
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError)


@dataclass
class RunOutputs:
    """What one step run created: folders that did not exist, config files it (over)wrote.

    Why: a run that fails on bad input must leave the file system as it found it, not a folder
    holding only ``<step>_config.json`` that a later run then trips over.
    """

    created: list[Path] = field(default_factory=list)
    configs: list[tuple[Path, bytes | None]] = field(default_factory=list)

    def note_folder(self, folder: Path) -> None:
        """Record the topmost missing ancestor of ``folder`` (call before creating it)."""
        top = None
        for p in [folder, *folder.parents]:
            if p.exists():
                break
            top = p
        if top is not None and top not in self.created:
            self.created.append(top)

    def note_file(self, path: Path) -> None:
        """Record a file's current bytes (None: absent) before this run writes it."""
        if any(p == path for p, _ in self.configs):
            return
        self.configs.append((path, path.read_bytes() if path.is_file() else None))

    def undo(self) -> list[Path]:
        """Restore overwritten configs and remove the folders this run created, when they
        hold nothing but those configs."""
        import shutil

        removed = []
        for path, old in reversed(self.configs):
            if any(c == path or c in path.parents for c in self.created):
                continue  # goes with its folder
            try:
                if old is None:
                    path.unlink(missing_ok=True)
                else:
                    path.write_bytes(old)
            except OSError:
                pass
        written = {path for path, _ in self.configs}
        for folder in reversed(self.created):
            if folder.exists() and self._holds_only(folder, written):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
        return removed

    @staticmethod
    def _holds_only(folder: Path, written: set[Path]) -> bool:
        """Whether ``folder`` holds nothing but the configs this run wrote (and empty folders).

        Why: a step that fails after real work (a pipeline whose extraction finished before
        its fit was refused) keeps that work, so a corrected re-run resumes from it.
        """
        return all(p in written for p in folder.rglob("*") if not p.is_dir())


_ACTIVE: list[RunOutputs] = []


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` is the user's to fix (bad input, missing file, Hub id not to be had)."""
    from saescope.core.hub_errors import classify

    return isinstance(err, USER_ERRORS) or classify(err) is not None


def run_step(run: Callable[[C], int | None], config: C) -> int | None:
    """``run(config)``; on a user error (``ValueError``, ``FileNotFoundError``,
    ``FileExistsError``) first take away what :func:`announce_config` created for this run.

    An interrupt or a crash keeps the outputs: an interrupted extraction resumes from them.
    """
    outputs = RunOutputs()
    _ACTIVE.append(outputs)
    try:
        return run(config)
    except Exception as err:
        if is_user_error(err):
            outputs.undo()
        raise
    finally:
        _ACTIVE.remove(outputs)


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
        path = out / (filename or f"{step}_config.json")
        for outputs in _ACTIVE[-1:]:
            outputs.note_folder(out)
            outputs.note_file(path)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, cfg, fsync=False)
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
    "run_step",
    "is_user_error",
    "RunOutputs",
    "USER_ERRORS",
    "OutOption",
    "ProgressOption",
    "TorchDeviceOption",
    "DeviceOption",
    "SeedOption",
]
