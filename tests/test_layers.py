"""The code base's shape, checked from the source so that a change that breaks it fails CI.

- one import root: every project import goes through ``saescope.``; nothing edits ``sys.path``;
- layers run one way: ``core`` <- ``train`` <- ``apps``; ``bench``, ``tests`` and ``spaces`` on top;
- no import cycles between modules (lazy, function-level imports count too: they are how a cycle
  hides);
- every package folder is listed in ``pyproject.toml`` (a wheel only ships listed packages);
- small modules and functions (a newcomer reads a module in one sitting).
"""

from __future__ import annotations

import ast
import re
import sys
from collections import defaultdict
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"core": 0, "train": 1, "apps": 2}  # a layer imports only from layers of lower rank
# apps load and present artefacts; they may build one artefact themselves: the offline default
# bundle (and the tiny diffusion demo) on first start, through these train modules only.
APPS_MAY_USE_TRAIN = {"saescope.train.default_bundle", "saescope.train.diffusion"}
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 120


def _python_files(*tops: str) -> list[Path]:
    return sorted(p for top in tops for p in (ROOT / top).rglob("*.py"))


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(["saescope", *parts]) if parts[0] in LAYERS else ".".join(parts)


MODULES = {_module_name(p): p for p in _python_files(*LAYERS)}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of every import in ``path``, module-level or lazy."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return found


def _project_module(name: str) -> str | None:
    """The project module that ``name`` (a module or a name inside one) resolves to."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for mod, path in MODULES.items():
        for _, name in _imports(path):
            target = _project_module(name)
            if target and target != mod and not mod.startswith(target + "."):
                graph[mod].add(target)
    return graph


def _layer(module: str) -> str:
    return module.split(".")[1]


def test_one_import_root_and_no_sys_path_edits() -> None:
    bare = re.compile(r"^\s*(?:from|import)\s+(core|train|apps)(?:\.|\s|$)", re.M)
    problems = []
    for path in _python_files("core", "train", "apps", "bench", "tests", "spaces", "saescope"):
        text = path.read_text()
        rel = path.relative_to(ROOT)
        problems += [
            f"{rel}: bare import of '{m.group(1)}' (use saescope.{m.group(1)})"
            for m in bare.finditer(text)
        ]
        if path.name != Path(__file__).name and re.search(
            r"sys\.path\.(insert|append)|sys\.path\s*=", text
        ):
            problems.append(f"{rel}: edits sys.path")
    assert not problems, "\n".join(problems)


def test_layers_import_one_way() -> None:
    problems = []
    for mod, path in MODULES.items():
        for line, name in _imports(path):
            top = name.split(".")[0]
            if top == "bench":
                problems.append(
                    f"{path.relative_to(ROOT)}:{line} imports {name} (bench is not "
                    "part of the library)"
                )
                continue
            target = _project_module(name)
            if not target:
                continue
            src, dst = _layer(mod), _layer(target)
            where = f"{path.relative_to(ROOT)}:{line}"
            if LAYERS[dst] > LAYERS[src]:
                problems.append(
                    f"{where} ({src}) imports {target} ({dst}): layers run core <- train <- apps"
                )
            elif src == "apps" and dst == "train" and target not in APPS_MAY_USE_TRAIN:
                problems.append(
                    f"{where} (apps) imports {target}: apps use train only to build "
                    f"the default artefacts ({sorted(APPS_MAY_USE_TRAIN)})"
                )
    assert not problems, "\n".join(sorted(set(problems)))


def test_no_import_cycles() -> None:
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in list(MODULES):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_every_package_is_listed_in_pyproject() -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(cfg["packages"])
    found = {_module_name(p) for p in _python_files(*LAYERS) if p.name == "__init__.py"} | {
        "saescope"
    }
    assert found == listed, (
        f"missing from pyproject: {sorted(found - listed)}; "
        f"listed but absent: {sorted(listed - found)}"
    )
    for pkg, folder in cfg["package-dir"].items():
        assert (ROOT / folder / "__init__.py").is_file(), (pkg, folder)


def test_modules_and_functions_stay_small() -> None:
    problems = []
    for path in _python_files("core", "train", "apps", "bench", "tests", "spaces"):
        text = path.read_text()
        rel = path.relative_to(ROOT)
        if text.count("\n") > MAX_MODULE_LINES:
            problems.append(f"{rel}: {text.count(chr(10))} lines (max {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    problems.append(
                        f"{rel}:{node.lineno} {node.name}: {n} lines (max {MAX_FUNCTION_LINES})"
                    )
    assert not problems, "\n".join(problems)


def test_the_version_is_defined_once() -> None:
    hits = [
        p.relative_to(ROOT)
        for p in _python_files("core", "train", "apps", "saescope")
        if re.search(r"^__version__\s*=", p.read_text(), re.M)
    ]
    assert hits == [Path("saescope/__init__.py")], hits
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert not re.search(r'^version\s*=\s*"', pyproject, re.M), (
        "version is read from saescope/__init__.py"
    )
