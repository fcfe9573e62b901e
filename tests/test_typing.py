"""The public API type-checks under ``mypy --strict`` from a user's side (fleche ships py.typed).

One mypy run (session fixture) checks three small user modules:

* ``uses.py``: ordinary use of the public API; it must have no error at all.
* ``helpers.py``: the helpers a decorated function gains (``.digest``, ``.load``...).
* ``wrong.py``: mistakes, each marked ``# E: <code>`` on its line; mypy must report
  exactly those (so a signature that silently became ``Any`` fails this test).
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

api = pytest.importorskip("mypy.api")

USES = """
from __future__ import annotations

import concurrent.futures
import os

import fleche
from fleche import Cache, Call, ObjectStore, Q, QueryResult, SyncResult, cache, open_store


@fleche.fleche
def square(x: int) -> int:
    return x * x


@fleche.fleche(version=2, ignore="verbose", hash_code=True)
def scaled(x: float, factor: float = 2.0, verbose: bool = False) -> float:
    return x * factor


def main(root: str) -> None:
    store: ObjectStore = open_store(os.path.join(root, "a"), create=True)
    c: Cache = Cache(store, compression_level=3, serializer="auto")
    cache(c)  # as a statement: active for the rest of this context
    n: int = square(3)
    y: float = scaled(1.5, factor=3.0)
    with cache(os.path.join(root, "b")):
        n += square(4)
    with fleche.tags(run="t1"), fleche.project("demo"):
        y += scaled(2.0)
    found: QueryResult = fleche.query(square, cache=c, x=Q.gt(1))
    for call in found:
        name: str = call.name
        print(name, call.arguments, call.result, call.metadata.get("created"))
    latest: Call | None = found.latest()
    count: int = found.count()
    q = fleche.query(name="scaled", metadata={"tags": {"run": "t1"}}, x=Q.between(0, 9))
    print(latest, count, list(q), Q.in_([1, 2]), Q.eq(3), Q.ne(None))
    done: SyncResult = fleche.sync(store, os.path.join(root, "copy"), dry_run=True)
    copied: list[str] = done.transferred
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        ex = fleche.wrap_executor(pool)
        future: concurrent.futures.Future[int] = ex.submit(square, 4)
        m: int = future.result()
    print(n, y, copied, m, fleche.__version__)
"""

HELPERS = """
from __future__ import annotations

import fleche
from fleche import Call, Q, QueryResult


@fleche.fleche
def square(x: int) -> int:
    return x * x


@fleche.fleche(version=2)
def scaled(x: float, factor: float = 2.0) -> float:
    return x * factor


def main() -> None:
    d: str = square.digest(3)
    hit: bool = square.contains(3)
    v: int = square.load(3)
    record: Call = square.call(3)
    found: QueryResult = square.query(x=Q.between(1, 5))
    again: int = square.rerun(3)
    square.evict(3)
    print(d, hit, v, record, found, again, scaled.digest(1.0, factor=3.0))
"""

WRONG = """
from __future__ import annotations

import fleche
from fleche import Cache, open_store


@fleche.fleche
def square(x: int) -> int:
    return x * x


def main() -> None:
    open_store(3)  # E: arg-type
    store = open_store("memory://")
    Cache(store, compression_level="high")  # E: arg-type
    square("three")  # E: arg-type
    s: str = square(2)  # E: assignment
    fleche.sync(store, "memory://x", workers="8")  # E: arg-type
    fleche.Q.in_(3)  # E: arg-type
    print(s)
"""

_LINE = re.compile(r"^(?P<path>.+?\.py):(?P<line>\d+): error: .*\[(?P<code>[\w-]+)\]$")


@pytest.fixture(scope="session")
def mypy_errors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[tuple[int, str, str]]]:
    """``{file: [(line, code, message), ...]}`` from one ``mypy --strict`` over the three modules."""
    root = tmp_path_factory.mktemp("typing")
    for name, text in (("uses.py", USES), ("helpers.py", HELPERS), ("wrong.py", WRONG)):
        (root / name).write_text(textwrap.dedent(text).lstrip())
    # A config of its own: the repository's mypy.ini is for checking fleche itself.
    config = root / "mypy.ini"
    config.write_text("[mypy]\nstrict = True\n")
    out, err, status = api.run(
        [
            "--config-file",
            str(config),
            "--cache-dir",
            str(tmp_path_factory.getbasetemp() / "mypy-cache"),
            "--no-error-summary",
            "--show-error-codes",
            "--hide-error-context",
            str(root / "uses.py"),
            str(root / "helpers.py"),
            str(root / "wrong.py"),
        ]
    )
    assert status in (0, 1), f"mypy crashed ({status}):\n{out}{err}"
    errors: dict[str, list[tuple[int, str, str]]] = {}
    for line in out.splitlines():
        m = _LINE.match(line)
        path = Path(m["path"]).resolve() if m else None  # mypy shortens paths under its cwd
        if m and path is not None and path.parent == root.resolve():
            errors.setdefault(path.name, []).append((int(m["line"]), m["code"], line))
        elif ": error:" in line:  # an error outside the three modules: fleche itself
            errors.setdefault("<other>", []).append((0, "", line))
    return errors


def test_public_api_type_checks_under_strict(mypy_errors: dict[str, list[tuple[int, str, str]]]):
    reported = mypy_errors.get("uses.py", []) + mypy_errors.get("<other>", [])
    assert not reported, "\n".join(msg for _, _, msg in reported)


def test_mistakes_are_reported(mypy_errors: dict[str, list[tuple[int, str, str]]]):
    lines = textwrap.dedent(WRONG).lstrip().splitlines()
    expected = {
        (i, m[1]) for i, text in enumerate(lines, 1) if (m := re.search(r"# E: ([\w-]+)$", text))
    }
    assert len(expected) >= 5
    got = {(line, code) for line, code, _ in mypy_errors.get("wrong.py", [])}
    assert got == expected, "\n".join(msg for _, _, msg in mypy_errors.get("wrong.py", []))


def test_decorated_function_helpers_type_check(
    mypy_errors: dict[str, list[tuple[int, str, str]]],
):
    reported = mypy_errors.get("helpers.py", [])
    assert not reported, "\n".join(msg for _, _, msg in reported)


def test_package_ships_py_typed():
    import fleche

    assert (Path(fleche.__file__).parent / "py.typed").is_file()
