"""The package's folders in layers: imports only go down, and no two sub-packages import each other.

Read from the source with ``ast``, so imports inside functions count as much as
those at the top of a module (a lazy import is still a dependency, only hidden).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = "napari_segen"
SRC = Path(__file__).resolve().parents[1] / "src" / PACKAGE

# Low to high. A module may import from its own unit, from its layer's other units
# (as long as that makes no cycle), and from any layer below; never from above.
LAYERS: list[set[str]] = [
    {PACKAGE, "utils", "_compat"},  # the root (__version__), helpers, work-arounds
    {"data"},
    {"models"},
    {"inference"},  # prediction, sliding window, objects, uncertainty
    {"metrics"},  # scores, and evaluating a model (which predicts)
    {"training"},
    {"synthesis"},
    {"cli", "widgets", "_reader", "_writer", "_sample_data"},  # for users and napari
]
LAYER = {unit: i for i, units in enumerate(LAYERS) for unit in units}
CORE = set().union(*LAYERS[1:-1])
GUI_PACKAGES = {"napari", "qtpy", "magicgui", "PyQt5", "PyQt6", "PySide2", "PySide6", "superqt"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:]) if "." in name else Path()
    return (SRC / rel).with_suffix(".py").is_file() or (SRC / rel / "__init__.py").is_file()


def _unit(module: str) -> str:
    """The sub-package or top-level module that ``module`` belongs to (the root is itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every import in ``path``, at any depth."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                # `from . import fcn` imports the module napari_segen.models.fcn
                sub = f"{target}.{alias.name}"
                found.append((node.lineno, sub if _is_module(sub) else target))
    return found


def _edges() -> dict[tuple[str, str], list[str]]:
    """Imports between different units: ``{(from, to): ["file:line", ...]}``."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(SRC.rglob("*.py")):
        src = _unit(_module_name(path))
        for line, target in _imports(path):
            if target.split(".")[0] != PACKAGE:
                continue
            dst = _unit(target)
            if dst != src:
                edges[(src, dst)].append(f"{path.relative_to(SRC)}:{line}")
    return edges


def _cycles(edges) -> list[list[str]]:
    """The strongly connected components with more than one unit (Tarjan)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def test_every_unit_has_a_layer():
    units = {_unit(_module_name(p)) for p in SRC.rglob("*.py")}
    assert units - set(LAYER) == set(), "add the new folders/modules to LAYERS"


def test_imports_only_go_down_the_layers():
    upward = [
        f"{a} (layer {LAYER[a]}) -> {b} (layer {LAYER[b]}) at {', '.join(where)}"
        for (a, b), where in sorted(_edges().items())
        if a in LAYER and b in LAYER and LAYER[a] < LAYER[b]
    ]
    assert not upward, "imports from a lower folder up to a higher one:\n" + "\n".join(upward)


def test_no_import_cycle_between_subpackages():
    edges = _edges()
    cycles = _cycles(edges)
    detail = [
        f"{' <-> '.join(c)}: "
        + "; ".join(f"{a}->{b} at {edges[a, b][0]}" for a in c for b in c if (a, b) in edges)
        for c in cycles
    ]
    assert not cycles, "sub-packages importing each other:\n" + "\n".join(detail)


@pytest.mark.parametrize("leaf", ["models/registry.py", "_compat.py"])
def test_leaves_import_nothing_from_the_package(leaf):
    """The model registry and the compat work-arounds are imported by others, never the reverse."""
    bad = [
        f"{leaf}:{line} imports {target}"
        for line, target in _imports(SRC / leaf)
        if target.split(".")[0] == PACKAGE
    ]
    assert not bad, "\n".join(bad)


def test_core_never_imports_qt_or_napari():
    """Not even lazily: the core runs in scripts, the CLI and workers without a GUI."""
    bad = [
        f"{p.relative_to(SRC)}:{line} imports {target}"
        for p in sorted(SRC.rglob("*.py"))
        if _unit(_module_name(p)) in CORE
        for line, target in _imports(p)
        if target.split(".")[0] in GUI_PACKAGES
    ]
    assert not bad, "\n".join(bad)
