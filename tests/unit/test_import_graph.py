"""The package's import graph, computed from the source: no cycle, and every import points down.

The layer order is docs/design.md's ("The map"): a module may import its own subpackage and
the layers below it, never one above. Every import counts, also those inside functions and
under TYPE_CHECKING: each is a dependency a reader has to follow.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "usagestatsd"

# Lowest first. `collector` and `demo` are programs of their own beside the daemon's
# `service` and `cli`: the daemon never imports the collector; only `cli` starts the demo.
LAYERS = (
    "__init__",
    "base",
    "contract",
    "config",
    "facts",
    "consent",
    "store",
    "cycle",
    "service",
    "setup",
    "collector",
    "demo",
    "cli",
    "__main__",
)
# Run by Ray's own Python as a standalone file: it imports nothing of the package.
STANDALONE = {"usagestatsd.provider"}
MAX_TOP_LEVEL_MODULES = 10


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
    return ".".join(parts[:-1] if path.name == "__init__.py" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that `name` imports (a package stands for its __init__)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    modules = all_modules()
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def layer_of(module: str) -> str:
    return module.split(".")[1] if "." in module else "__init__"


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_graph_sees_the_package() -> None:
    edges = graph()
    assert "usagestatsd.cli.commands" in edges
    assert edges["usagestatsd.cli.commands"], "the command line imports nothing?"


def test_no_import_cycle() -> None:
    assert find_cycle(graph()) is None, " -> ".join(find_cycle(graph()) or [])


def test_the_top_level_holds_at_most_ten_modules() -> None:
    top = sorted(p.name for p in PACKAGE_DIR.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def test_every_subpackage_has_a_place_in_the_layer_order() -> None:
    placed = {layer_of(m) for m in graph() if m not in STANDALONE}
    assert placed <= set(LAYERS), sorted(placed - set(LAYERS))


def test_every_import_points_down() -> None:
    upward = [
        f"{source} ({layer_of(source)}) imports {target} ({layer_of(target)})"
        for source, targets in graph().items()
        if source not in STANDALONE
        for target in sorted(targets)
        if LAYERS.index(layer_of(target)) > LAYERS.index(layer_of(source))
    ]
    assert upward == []


def test_the_provider_stands_alone() -> None:
    edges = graph()
    assert all(edges[m] == set() for m in STANDALONE)
