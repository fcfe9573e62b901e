"""Data flows one way: decorator → call → cache → codec → store. No module reaches up.

Each module has a layer; it may import modules of lower layers, and of its own
layer only within its family (``store`` with ``store_local``, ``digest`` with
``digest_numpy``...).  A new module must be given a layer here.
"""

import ast
from pathlib import Path

import fleche

LAYERS = {
    "errors": 0,
    "_version": 0,
    "render": 0.5,  # tables of calls, charts, whether to draw a bar: imports nothing of fleche
    "store": 1,
    "digest": 1,
    "codec": 2,
    "terms": 2,  # query conditions: digest below it; the index and the query API use it
    "testing": 2,
    "index": 2.5,  # the catalogue of records: store, codec, terms below it; cache keeps one
    "cache": 3,
    "remote": 3,  # the remote-cache server: store and codec below it, nothing above
    "config": 4,
    "sync": 4,  # store, codec, errors and cache.referenced_oids; the CLI calls it
    "metadata": 5,
    "call": 5,
    "lease": 5,  # single-flight leases: store below it; the decorator calls it
    "query": 5.5,  # QueryResult over cache, call, terms (and an index, through cache.index)
    "decorator": 6,
    "executor": 7,  # wrap_executor, map, tasks bound to a cache; executor_dask imports Dask
    "upkeep": 7,  # verify, gc, stats, lookups: store, codec, cache, call; decorator's function_id
    "cli": 8,
    "__init__": 9,
    "__main__": 10,
}
PACKAGE = Path(fleche.__file__).parent


def family(name: str) -> str:
    return name if name in LAYERS else name.split("_")[0]


def fleche_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fleche"):
            parts = node.module.split(".")
            if len(parts) > 1:
                found.add(parts[1])
            else:  # from fleche import x
                found.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "fleche" and len(parts) > 1:
                    found.add(parts[1])
    return found


def test_every_module_has_a_layer():
    missing = [p.stem for p in PACKAGE.glob("*.py") if family(p.stem) not in LAYERS]
    assert not missing, f"give these modules a layer in tests/test_layers.py: {missing}"


def test_no_module_imports_upward():
    bad = []
    for path in PACKAGE.glob("*.py"):
        me = family(path.stem)
        for dep in fleche_imports(path):
            dep_family = family(dep)
            if dep_family not in LAYERS:
                continue  # a name imported from the package, e.g. __version__
            if LAYERS[dep_family] > LAYERS[me] or (
                LAYERS[dep_family] == LAYERS[me] and dep_family != me
            ):
                bad.append(f"{path.stem} imports {dep}")
    assert not bad, bad
