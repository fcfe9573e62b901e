"""The package's layers point one way (docs/architecture.md).

An AST walk over ``fleche/``: every import, at the top of a module or inside a
function, is an edge. The test fails when

- a layer imports a higher one, or a layer of its own rank (peers stay apart);
- a module reaches into another subpackage past its face (``fleche.store._local``
  rather than ``fleche.store``), or imports a ``_private`` name from another
  subpackage;
- modules import each other, directly or around a cycle (imports under
  ``if TYPE_CHECKING:`` never run, so they count for the direction of layers
  but not for cycles).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "fleche"

# From the bottom: a layer may import only layers of a lower rank.
RANKS: dict[str, int] = {
    "errors": 0,
    "_version": 0,
    "render": 1,
    "digest": 1,
    "store": 1,
    "codec": 2,
    "records": 3,
    "index": 4,
    "cache": 5,
    "config": 6,
    "query": 7,
    "decorator": 8,
    "parallel": 9,
    "sync": 9,
    "upkeep": 9,
    "remote": 9,
    "testing": 9,
    "migrate": 9,
    "ui": 10,  # over upkeep (its query terms, verify, gc): above rank 9, below the CLI
    "cli": 11,
    "__init__": 12,
    "__main__": 12,
    "metadata": 12,  # the original fleche's fleche.metadata: its provider names, from records
}


@dataclass(frozen=True)
class Edge:
    source: str  # dotted module, e.g. fleche.store._local
    target: str  # dotted module imported
    names: tuple[str, ...]
    line: int
    type_only: bool


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def layer(module: str) -> str:
    """The layer a module belongs to: its subpackage, or the top-level module's name."""
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for stmt in node.body:
                inside.update(id(n) for n in ast.walk(stmt))
    return inside


def edges(known: dict[str, Path]) -> list[Edge]:
    found: list[Edge] = []
    for source, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        type_only = _type_checking_nodes(tree)
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            targets: list[tuple[str, tuple[str, ...]]] = []
            if isinstance(node, ast.Import):
                targets = [(a.name, ()) for a in node.names if a.name.split(".")[0] == "fleche"]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = source.split(".")
                    base = base[: len(base) - node.level + (1 if is_package else 0)]
                    mod = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    mod = node.module or ""
                if mod.split(".")[0] != "fleche":
                    continue
                for a in node.names:
                    sub = f"{mod}.{a.name}"
                    # `from fleche import codec` imports the module fleche.codec
                    targets.append((sub, ()) if sub in known else (mod, (a.name,)))
            for target, names in targets:
                found.append(Edge(source, target, names, node.lineno, id(node) in type_only))
    return found


KNOWN = modules()
EDGES = edges(KNOWN)


def _where(e: Edge) -> str:
    return f"{KNOWN[e.source].relative_to(PACKAGE.parent)}:{e.line}"


def test_the_walk_sees_the_package() -> None:
    assert "fleche.store" in KNOWN and "fleche.cli" in KNOWN
    assert any(e.source == "fleche" and e.target == "fleche.decorator" for e in EDGES)
    # every layer the package has is ranked
    assert {layer(m) for m in KNOWN} <= set(RANKS), {layer(m) for m in KNOWN} - set(RANKS)


def test_layers_import_only_lower_layers() -> None:
    upward = [
        f"{_where(e)}: {layer(e.source)} (rank {RANKS[layer(e.source)]}) imports "
        f"{e.target} (rank {RANKS[layer(e.target)]})"
        for e in EDGES
        if layer(e.source) != layer(e.target) and RANKS[layer(e.target)] >= RANKS[layer(e.source)]
    ]
    assert upward == []


def test_other_layers_are_reached_through_their_face() -> None:
    private = []
    for e in EDGES:
        src, dst = layer(e.source), layer(e.target)
        if src == dst or (dst in ("errors", "_version") and e.target.count(".") == 1):
            continue
        if e.target.count(".") > 1:
            private.append(f"{_where(e)}: {e.source} imports {e.target} (past the face)")
        for name in e.names:
            if name.startswith("_") and not name.startswith("__"):
                private.append(f"{_where(e)}: {e.source} imports {e.target}.{name}")
    assert private == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), and self-loops."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_itself_around_a_cycle() -> None:
    graph: dict[str, set[str]] = {m: set() for m in KNOWN}
    for e in EDGES:
        if not e.type_only and e.target in KNOWN and e.target != e.source:
            graph[e.source].add(e.target)
        # importing a submodule runs its package's face first
        parts = e.target.split(".")
        for i in range(2, len(parts)):
            pkg = ".".join(parts[:i])
            if (
                not e.type_only
                and pkg in KNOWN
                and pkg != e.source
                and not e.source.startswith(pkg + ".")
            ):
                graph[e.source].add(pkg)
    assert _cycles(graph) == []


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": set()}, []),
        ({"a": {"a"}}, [["a"]]),
    ],
)
def test_the_cycle_finder_finds_cycles(
    graph: dict[str, set[str]], expected: list[list[str]]
) -> None:
    assert _cycles(graph) == expected
