"""docs/migration.md's "Name by name" tables, row by row: what a row claims, a check runs.

The tables list every public name of the original fleche (0.22) and what it is
here. A row marked works / differs / moved / warns must have a check in CHECKS
(keyed by its first cell, as written), and the check must pass; a row marked
*left out* names what must indeed be absent (ABSENT); *below* rows point at
sections other work owns and are only checked to point somewhere. A check
for a row that no longer exists fails too, so the tables and this file move together.
Only the tables under "### Name by name" are read: sections added after it
(SshCache, configuration files, importing) are theirs.
"""

from __future__ import annotations

import importlib
import re
import socket
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import fleche
from fleche import Cache, FlecheWarning, cache

DOC = Path(__file__).resolve().parent.parent / "docs" / "migration.md"
SECTION = "### Name by name"
TESTED = {"works", "differs", "moved", "warns"}
STATUSES = TESTED | {"left out", "below"}


def rows() -> list[tuple[str, str, str, str]]:
    """(0.22, here, status, notes) of every row of the tables in the section."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    start = lines.index(SECTION)
    out = []
    for line in lines[start + 1 :]:
        if re.match(r"#{1,3} ", line):
            break  # the next section at the same level or above: not ours
        if not line.startswith("|") or set(line) <= set("|- "):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if cells[0] == "0.22":
            continue  # a header
        assert len(cells) == 4, f"a row of migration.md has {len(cells)} cells: {line}"
        out.append((cells[0], cells[1], cells[2], cells[3]))
    return out


def resolve(dotted: str) -> Any:
    """``fleche.a.b``: import the longest module prefix, then get the attributes."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def absent(dotted: str) -> bool:
    try:
        resolve(dotted)
    except (ImportError, AttributeError):
        return True
    return False


# -- what a check uses ---------------------------------------------------------------------


@fleche.fleche
def square(x: int, verbose: bool = False) -> int:
    return x * x


TMP: list[str] = []  # this test's tmp_path, for the checks (which take no arguments)


@pytest.fixture(autouse=True)
def tmp(tmp_path: Path) -> Any:
    TMP[:] = [str(tmp_path)]
    with cache("memory://"):
        yield


def active_filled(n: int = 5) -> Any:
    """A local cache (with an index) holding square(0..n-1), active until the with block ends."""
    c = cache(Cache(Path(TMP[0]) / f"filled-{n}"))
    for i in range(n):
        square(i)
    return c


# -- one check per row: the key is the row's first cell ----------------------------------------


def _package_cache() -> None:
    assert fleche.cache() is fleche.active_cache()


def _cache_with(tmp: str = "") -> None:
    with cache(Path(TMP[0]) / "a") as c:
        assert fleche.cache() is c
    token = cache("memory://")  # without with: in force until undone
    assert fleche.cache().url == "memory://"
    token.__exit__(None, None, None)


def _cache_stack() -> None:
    with cache(Path(TMP[0]) / "under"):
        square(3)
        with cache("memory://", stack=True) as c:
            assert isinstance(c, fleche.LayeredCache) and square.contains(3)
            square(4)
        assert not square.contains(4)  # written to the new cache in front


def _meta() -> None:
    from fleche.metadata import Runtime

    with fleche.meta(Runtime()):
        square(1)
    assert set(square.call(1).metadata) == {"created", "duration", "finished", "cpu"}


def _tags() -> None:
    with fleche.tags(project="p"):
        square(2)
    assert square.call(2).metadata["tags"] == {"project": "p"}
    with pytest.raises(TypeError, match="tag values must be"):
        fleche.tags(x=[1, 2])


def _project() -> None:
    with fleche.project("paper"):
        square(5)
    assert square.query(metadata={"tags": {"project": "paper"}}).count() == 1


def _bound_wrapper() -> None:
    with cache(Path(TMP[0]) / "b") as c:
        bound = fleche.BoundWrapper.bind(square)
    assert bound(6) == 36
    with cache(c):
        assert square.contains(6)


def _ignored() -> None:
    @fleche.fleche
    def f(x: int, log: fleche.Ignored[bool] = False) -> int:
        return x

    assert f.digest(1, True) == f.digest(1, False)


def _required() -> None:
    runs = []

    @fleche.fleche
    def f(x: int, seed: fleche.Required[int | None] = None) -> int:
        runs.append(x)
        return x

    with pytest.warns(FlecheWarning, match="required"):
        f(1)
    f(1, seed=2)
    f(1, seed=2)
    assert runs == [1, 1]


def _wrap_executor() -> None:
    with ThreadPoolExecutor(1) as ex:
        fleche.wrap_executor(ex)
        with cache(Path(TMP[0]) / "w"):
            assert ex.submit(square, 7).result(timeout=30) == 49
            hit = ex.submit(square, 7)
            assert isinstance(hit, Future) and hit.done() and hit.result() == 49


def _digest_module() -> None:
    import fleche.digest

    assert fleche.digest.digest(1) == fleche.digest.digest(1)


def _state() -> None:
    for name in ("cache", "meta", "tags", "project", "BoundWrapper", "active_cache"):
        assert callable(getattr(fleche, name))
    assert absent("fleche.state")


def _wrapper() -> None:
    assert callable(fleche.fleche) and fleche.Ignored and fleche.Required
    assert absent("fleche.wrapper")


def _executor() -> None:
    assert callable(fleche.wrap_executor) and absent("fleche.executor")


def _version() -> None:
    @fleche.fleche(version=1)
    def v1(x: int) -> int:
        return x

    v2 = fleche.fleche(version=2)(v1.__wrapped__)
    assert v1.digest(1) != v2.digest(1)
    assert fleche.fleche(version=2, hash_version=False)(v1.__wrapped__).digest(1) == fleche.fleche(
        version=3, hash_version=False
    )(v1.__wrapped__).digest(1)


def _hash_flags() -> None:
    a = fleche.fleche(hash_module=False)(square.__wrapped__)
    assert a.digest(1) != square.digest(1)
    assert fleche.fleche(hash_version=True)(square.__wrapped__).digest(1) == square.digest(1)


def _hash_code() -> None:
    assert fleche.fleche(hash_code=True)(square.__wrapped__).digest(1) != square.digest(1)


def _ignore() -> None:
    quiet = fleche.fleche(ignore=["verbose"])(square.__wrapped__)
    assert quiet.digest(1, True) == quiet.digest(1, False)


def _require() -> None:
    def draw(n: int, seed: int | None = None) -> int:
        return n

    needs = fleche.fleche(require="seed")(draw)
    with pytest.warns(FlecheWarning, match="required"):
        needs(1)
    assert not needs.contains(1)
    needs(1, seed=2)
    assert needs.contains(1, seed=2)

    def seeded(n: int, seed: int = 0) -> int:
        return n

    defaulted = fleche.fleche(require="seed")(seeded)
    defaulted(1)  # the default is not None: cached (0.22 wanted it passed)
    assert defaulted.contains(1)


def _isolate() -> None:
    import os

    @fleche.fleche(isolate=True)
    def where(x: int) -> str:
        return os.getcwd()

    assert where(1) != os.getcwd()


def _meta_arg() -> None:
    from fleche.metadata import Git, Tags

    @fleche.fleche(meta=(Git(), Tags({"stage": "fit"})), metadata=["runtime"])
    def fit(x: int) -> int:
        return x

    fit(1)
    md = fit.call(1).metadata
    assert md["tags"] == {"stage": "fit"} and "duration" in md and "host" not in md


def _none_cached() -> None:
    runs = []

    @fleche.fleche
    def nothing(x: int) -> None:
        runs.append(x)

    nothing(1)
    nothing(1)
    assert runs == [1] and nothing.contains(1)


def _closures() -> None:
    def make(n: int) -> Any:
        @fleche.fleche
        def add(x: int) -> int:
            return x + n

        return add

    assert make(1)(1) == 2 and make(2)(1) == 3  # not each other's results
    assert make(1).digest(1) != make(2).digest(1)


def _futures() -> None:
    with ThreadPoolExecutor(1) as ex:

        @fleche.fleche(ignore="ex")
        def later(ex: ThreadPoolExecutor, x: int) -> Future[int]:
            return ex.submit(lambda: x * 3)

        fut = later(ex, 2)
        assert isinstance(fut, Future) and fut.result(timeout=30) == 6
        for _ in range(3000):
            if later.contains(ex, 2):
                break
            __import__("time").sleep(0.001)
        assert later(ex, 2) == 6


def _call() -> None:
    c = square.call(99)
    assert c.stored is False and c.arguments == {"x": 99, "verbose": False}
    with pytest.raises(KeyError):
        _ = c.result
    with pytest.raises(fleche.CallNotStored):
        _ = c.result


def _digest_helper() -> None:
    d = square.digest(3)
    assert isinstance(d, str) and len(d) == 32 and int(d, 16) >= 0


def _load_contains() -> None:
    assert not square.contains(8)
    with pytest.raises(KeyError):
        square.load(8)
    square(8)
    assert square.contains(8) and square.load(8) == 64


def _query_helper() -> None:
    with active_filled():
        assert square.query(x=None).count() == 5
        assert square.query(x=fleche.Q.gt(2)).count() == 2
        assert square.query(3).count() == 1


def _rerun() -> None:
    square(9)
    assert square.rerun(9) == 81


def _bind() -> None:
    with ThreadPoolExecutor(1) as ex, cache(Path(TMP[0]) / "bind") as c:
        assert ex.submit(square.bind(10)).result(timeout=30) == 100
    with cache(c):
        assert square.contains(10)


def _fleche_namespace() -> None:
    for helper in ("call", "digest", "query", "load", "contains", "rerun", "bind"):
        assert callable(getattr(square.fleche, helper))
    assert square.fleche.digest(1) == square.digest(1)


def _wrapped() -> None:
    assert square.__wrapped__(4) == 16 and not square.contains(4)


def _call_attributes() -> None:
    square(11, verbose=True)
    c = square.call(11, verbose=True)
    assert (c.name, c.module) == ("square", __name__)
    assert c.version is None and c.arguments["x"] == 11 and c.result == 121
    assert "created" in c.metadata and c.code_digest is not None


def _to_lookup_key() -> None:
    square(12)
    assert square.call(12).to_lookup_key() == square.digest(12)


def _fetch() -> None:
    square(13)
    c = square.call(13).fetch()
    assert c is not None and c.result == 169


def _metadata_views() -> None:
    square(14)
    md = square.call(14).metadata
    assert md["runtime"]["walltime"] == md["duration"]
    assert md["environment"]["hostname"] == socket.gethostname()


def _call_classes() -> None:
    assert fleche.Call is importlib.import_module("fleche.records").Call
    assert absent("fleche.call.LazyCall")


def _query_call() -> None:
    with active_filled():
        assert fleche.query(name="square", x=2).only().result == 4
        assert fleche.query(module=__name__, metadata={}).count() == 5
    assert absent("fleche.call.QueryCall")


def _query_iterator() -> None:
    from fleche.query import QueryIterator

    assert QueryIterator is fleche.QueryResult
    with active_filled():
        q = square.query()
        assert isinstance(q, QueryIterator) and q.count() == q.count() == 5


def _count_results() -> None:
    with active_filled():
        assert square.query().count() == 5
        assert sorted(square.query().results()) == [0, 1, 4, 9, 16]


def _only() -> None:
    with active_filled():
        assert square.query(x=3).only().result == 9
        with pytest.raises(LookupError, match="found 5 calls"):
            square.query().only()


def _any_empty() -> None:
    with active_filled():
        assert square.query().any() is not None and not square.query().empty()
        assert square.query(x=50).any() is None and square.query(x=50).empty()


def _take_skip() -> None:
    with active_filled():
        q = square.query()
        xs = [c.arguments["x"] for c in q]
        assert [c.arguments["x"] for c in q.skip(1).take(2)] == xs[1:3]


def _filter() -> None:
    with active_filled():
        assert square.query().filter(lambda c: c.result > 5).count() == 2


def _sorted() -> None:
    with active_filled():
        assert [c.arguments["x"] for c in square.query().sorted("x", reverse=True)] == [
            4,
            3,
            2,
            1,
            0,
        ]
        assert [c.arguments["x"] for c in square.query().sorted()] == [0, 1, 2, 3, 4]


def _unique_groupby() -> None:
    with active_filled():
        q = square.query()
        assert len(list(q.unique(lambda c: c.arguments["x"] % 2))) == 2
        groups = q.groupby(lambda c: c.arguments["x"] % 2)
        assert groups[0].count() == 3 and groups[1].count() == 2


def _latest_oldest() -> None:
    with active_filled():
        assert square.query().latest().arguments["x"] == 4
        assert square.query().oldest().arguments["x"] == 0
    assert square.query(x=77).latest() is None and square.query(x=77).oldest() is None


def _evict() -> None:
    with active_filled():
        assert square.query(x=fleche.Q.lt(2)).evict() == 2 and square.query().count() == 3


def _transfer() -> None:
    target = Cache(Path(TMP[0]) / "target")
    with active_filled():
        assert square.query().transfer(target) == 5
    with cache(target):
        assert square.load(4) == 16


def _table() -> None:
    pytest.importorskip("pandas")
    with active_filled():
        df = square.query().table(arguments="x", results=True, shrink_keys=True)
        assert sorted(df["x"]) == [0, 1, 2, 3, 4] and "verbose" not in df.columns
        assert sorted(df["result"]) == [0, 1, 4, 9, 16] and "digest" in df.columns


def _tags_query() -> None:
    with fleche.tags(project="x"):
        square(20)
    assert square.query(metadata={"tags": {"project": "x"}}).count() == 1


def _tags_present() -> None:
    square(21)
    with fleche.tags(run=1):
        square(22)
    assert [c.arguments["x"] for c in square.query(metadata={"tags": {}})] == [22]


def _runtime_query() -> None:
    square(23)
    assert square.query(metadata={"runtime": {"walltime": fleche.Q.ge(0)}}).count() == 1
    assert square.query(metadata={"duration": fleche.Q.ge(0)}).count() == 1


def _digest_fn() -> None:
    import fleche.digest as fd

    assert len(fd.digest((1, "a"))) == 32 and fd.digest(1) != fd.digest(1.0)


def _digest_type() -> None:
    from fleche.digest import Digest, digest

    d = Digest(digest(5))
    assert isinstance(d, str) and d == digest(5) and not hasattr(d, "expand")


def _digest_length() -> None:
    import fleche.digest as fd

    assert fd.DIGEST_LENGTH == len(fd.digest(None)) == 32


def _indigestible() -> None:
    import threading

    from fleche.digest import Indigestible, digest

    assert Indigestible is fleche.UnhashableArgumentError
    with pytest.raises(Indigestible, match="lock"):
        digest(threading.Lock())


class _Ext:
    def __init__(self, data: Any) -> None:
        self.data = data
        self.handle = __import__("threading").Lock()


def _hooks() -> None:
    import fleche.digest as fd

    fd.add_hook(fd.Hook(_Ext, lambda e: fd.digest(("_Ext", e.data))))
    try:
        assert fd.digest(_Ext(1)) == fd.digest(_Ext(1)) != fd.digest(_Ext(2))
        assert _Ext in [h.type for h in fd.get_hooks()]
        with pytest.warns(FlecheWarning, match="skipped"):
            fd.add_hook((list, len))
    finally:
        fd.unregister(_Ext)


def _get_hooks() -> None:
    import fleche.digest as fd

    fd.add_hook((_Ext, lambda e: e.data))
    try:
        assert any(h.type is _Ext for h in fd.get_hooks())
    finally:
        fd.unregister(_Ext)


def _entry_points() -> None:
    import fleche.digest as fd

    assert fd.load_entry_points() >= 0  # plugins are loaded for real in test_digest_hooks.py


def _digest_class() -> None:
    import fleche.digest as fd

    assert fd.digest_class(int) == fd.digest(int) != fd.digest_class(float)


class _Own:
    def __init__(self, name: str) -> None:
        self.name = name
        self.handle = __import__("threading").Lock()

    def __digest__(self) -> str:
        return self.name


def _digest_method() -> None:
    import fleche.digest as fd

    assert fd.digest(_Own("a")) == fd.digest(_Own("a")) != fd.digest(_Own("b"))


def _function_digest() -> None:
    import threading

    import fleche.digest as fd

    def make(conn: Any, table: str) -> Any:
        def run(x: int) -> tuple[int, str]:
            return x, table

        run.__digest__ = lambda: ("run", table)  # type: ignore[attr-defined]
        return run

    one, same, other = make(threading.Lock(), "a"), make(threading.Lock(), "a"), make(None, "b")
    assert fd.digest(one) == fd.digest(same) != fd.digest(other)
    cached = fleche.fleche(one)  # the lock it captures has no digest: its __digest__ stands in
    assert cached(1) == (1, "a") and fleche.fleche(same).contains(1)


def _runtime() -> None:
    from fleche.metadata import Runtime

    assert Runtime().name == "runtime"
    _meta()


def _environment() -> None:
    from fleche.metadata import Environment

    with fleche.meta(Environment()):
        square(30)
    md = square.call(30).metadata
    assert md["host"] == md["environment"]["hostname"] and "duration" not in md


def _git() -> None:
    from fleche.metadata import Git

    with fleche.meta(Git()):
        square(31)
    assert set(square.call(31).metadata) <= {"created", "git"}


def _tags_provider() -> None:
    from fleche.metadata import Tags

    with fleche.meta(Tags({"a": 1}), stack=True):
        square(32)
    assert square.call(32).metadata["tags"] == {"a": 1}


def _metadata_base() -> None:
    from fleche.metadata import MetaData

    class Mine(MetaData):
        name = "mine"

    with pytest.warns(FlecheWarning, match="Mine has no counterpart here"):
        fleche.fleche(meta=[Mine()])(square.__wrapped__)


def _configurable() -> None:
    from fleche.metadata import CONFIGURABLE, configurable

    assert set(CONFIGURABLE) == {"Runtime", "Environment", "Git"} and callable(configurable)
    fleche.fleche(meta=["Runtime"])(square.__wrapped__)


def _caches() -> None:
    c = fleche.Cache(Path(TMP[0]) / "c1")
    with cache(c):
        square(1)
        assert square.contains(1)
    assert absent("fleche.caches")


def _cache_stack_class() -> None:
    under = fleche.Cache(Path(TMP[0]) / "under2")
    with cache(under):
        square(2)
    with cache(fleche.LayeredCache([fleche.Cache("memory://"), under])):
        assert square.contains(2)


def _cache_query() -> None:
    with active_filled() as c:
        assert fleche.query(name="square").count() == 5
    assert fleche.query(name="square", cache=c, x=1).only().result == 1


def _cache_table() -> None:
    pytest.importorskip("pandas")
    with active_filled():
        assert len(fleche.query().table()) == 5


def _cache_keys() -> None:
    with active_filled():
        assert square.call(2).result == 4 and square.contains(2)
        square.evict(2)
        assert not square.contains(2)
        assert fleche.query(square, x=3).only().digest == square.digest(3)


def _cache_gc() -> None:
    from click.testing import CliRunner

    from fleche.cli import main

    out = CliRunner().invoke(main, ["gc", "--help"])
    assert out.exit_code == 0 and "gc" in out.output


def _read_only() -> None:
    with cache(Path(TMP[0]) / "ro"):
        square(3)
    with cache(Path(TMP[0]) / "ro", read_only=True) as c:
        assert c.read_only and square.contains(3)
        square(4)  # computed, not stored
        assert not square.contains(4)


def _size_limited() -> None:
    from click.testing import CliRunner

    from fleche.cli import main

    out = CliRunner().invoke(main, ["gc", "--help"])
    assert out.exit_code == 0 and "--max-size" in out.output


def _refreshing() -> None:
    _rerun()


def _security() -> None:
    from fleche.codec._sign import ENV  # the variable signed stores read their keys from

    assert ENV == "FLECHE_SECRET_KEY" and issubclass(fleche.SignatureError, fleche.FlecheError)


CHECKS: dict[str, Callable[[], None]] = {
    "`fleche.__version__`": lambda: None if isinstance(fleche.__version__, str) else pytest.fail(),
    "`fleche.fleche`": lambda: None if square(3) == 9 else pytest.fail(),
    "`fleche.cache()`": _package_cache,
    "`fleche.cache(c)`": _cache_with,
    "`fleche.cache(c, stack=True)`": _cache_stack,
    "`fleche.meta(*providers, stack=False)`": _meta,
    "`fleche.tags(**kw)`": _tags,
    "`fleche.project(name)`": _project,
    "`fleche.BoundWrapper`": _bound_wrapper,
    "`fleche.Ignored`": _ignored,
    "`fleche.Required`": _required,
    "`fleche.wrap_executor`": _wrap_executor,
    "`fleche.digest`": _digest_module,
    "`fleche.state`": _state,
    "`fleche.wrapper`": _wrapper,
    "`fleche.executor`": _executor,
    "`version=`": _version,
    "`hash_version=`, `hash_module=`": _hash_flags,
    "`hash_code=`": _hash_code,
    "`ignore=`": _ignore,
    "`require=`": _require,
    "`isolate=`": _isolate,
    "`meta=`": _meta_arg,
    "a result of `None`": _none_cached,
    "a closure's captured variables": _closures,
    "a returned `concurrent.futures.Future`": _futures,
    "`f.call(...)`": _call,
    "`f.digest(...)`": _digest_helper,
    "`f.load(...)`, `f.contains(...)`": _load_contains,
    "`f.query(*args, metadata={...}, **kwargs)`": _query_helper,
    "`f.rerun(...)`": _rerun,
    "`f.bind(*args, **kwargs)`": _bind,
    "`f.fleche`": _fleche_namespace,
    "`f.__wrapped__`": _wrapped,
    "`Call.name`, `.module`, `.version`, `.arguments`, `.result`, `.metadata`, `.code_digest`": (
        _call_attributes
    ),
    "`call.to_lookup_key()`": _to_lookup_key,
    "`LazyCall.fetch()`": _fetch,
    '`call.metadata["runtime"]`, `["environment"]`': _metadata_views,
    "`fleche.call.Call`, `fleche.call.LazyCall`": _call_classes,
    "`fleche.call.QueryCall`, `cache().query(QueryCall(...))`": _query_call,
    "`fleche.query.QueryIterator`": _query_iterator,
    "`.count()`, `.results()`": _count_results,
    "`.only()`": _only,
    "`.any()`, `.empty()`": _any_empty,
    "`.take(n)`, `.skip(n)`": _take_skip,
    "`.filter(predicate)`": _filter,
    "`.sorted(key=None, reverse=False)`": _sorted,
    "`.unique(key)`, `.groupby(key)`": _unique_groupby,
    "`.latest()`, `.oldest()`": _latest_oldest,
    "`.evict()`": _evict,
    "`.transfer(target, pop=False, overwrite=False)`": _transfer,
    "`.table(arguments=(), results=False, shrink_keys=True)`": _table,
    '`metadata={"tags": {"project": "x"}}`': _tags_query,
    '`metadata={"tags": {}}`': _tags_present,
    '`metadata={"runtime": {"walltime": ...}}`': _runtime_query,
    "`fleche.digest.digest(x)`": _digest_fn,
    "`fleche.digest.Digest`": _digest_type,
    "`fleche.digest.DIGEST_LENGTH`": _digest_length,
    "`fleche.digest.Indigestible`": _indigestible,
    "`fleche.digest.Hook`, `fleche.digest.add_hook`": _hooks,
    "`fleche.digest.get_hooks()`": _get_hooks,
    "`fleche.digest.load_entry_points()`": _entry_points,
    "`fleche.digest.digest_class(cls)`": _digest_class,
    "`__digest__` method": _digest_method,
    "`func.__digest__ = ...` on a function": _function_digest,
    "`fleche.metadata.Runtime`": _runtime,
    "`fleche.metadata.Environment`": _environment,
    "`fleche.metadata.Git`": _git,
    "`fleche.metadata.Tags`": _tags_provider,
    "`fleche.metadata.MetaData`": _metadata_base,
    "`fleche.metadata.CONFIGURABLE`, `configurable`": _configurable,
    "`fleche.caches.Cache(values, calls)`, `fleche.caches.BaseCache`": _caches,
    "`fleche.caches.CacheStack`, `cache().push(c)`": _cache_stack_class,
    '`cache().query(...)`, `cache().query(name="add")`': _cache_query,
    "`cache().table()`": _cache_table,
    "`cache().load(key)`, `cache().contains(key)`, `cache().evict(key)`": _cache_keys,
    "`cache().gc()`": _cache_gc,
    "`fleche.caches.ReadOnlyCache`": _read_only,
    "`fleche.caches.SizeLimitedCache`": _size_limited,
    "`fleche.caches.RefreshingCache`": _refreshing,
    "`fleche.security`, `FLECHE_SECRET_KEY`": _security,
}

ABSENT: dict[str, tuple[str, ...]] = {
    "`fleche.D`": ("fleche.D",),
    "`fleche.call.DigestedCall`, `PreparedCall`, `FunctionProfile`": (
        "fleche.call.DigestedCall",
        "fleche.call.PreparedCall",
        "fleche.call.FunctionProfile",
    ),
    "`fleche.caches.CachePool`, `FilteredCache`, `Rejected`": (
        "fleche.caches.CachePool",
        "fleche.caches.FilteredCache",
        "fleche.caches.Rejected",
    ),
    "`fleche.storage` (`ValuePickleFile`, `CallMemory`, `Sql`, bagofholding, destructuring...)": (
        "fleche.storage",
    ),
}


def test_the_tables_are_well_formed() -> None:
    found = rows()
    assert len(found) >= 70, "the tables were not found, or lost rows"
    firsts = [r[0] for r in found]
    assert len(firsts) == len(set(firsts)), "a name has two rows"
    for first, here, status, notes in found:
        assert status in STATUSES, f"{first}: unknown status {status!r}"
        if status in {"differs", "warns", "left out"}:
            assert notes, f"{first} is {status}: the row must say why"
        if status == "moved":
            assert here not in ("", "none", "the same"), f"{first} moved: where to?"
        if status == "below":
            assert re.search(r"\(#[a-z-]+\)", notes), f"{first}: which section covers it?"


@pytest.mark.parametrize("row", rows(), ids=lambda r: r[0][:60])
def test_each_row_does_what_it_says(row: tuple[str, str, str, str]) -> None:
    first, _, status, _ = row
    if status in TESTED:
        assert first in CHECKS, f"{first} claims {status!r} but has no check here"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", fleche.StaleCodeWarning)
            CHECKS[first]()
    elif status == "left out":
        assert first in ABSENT, f"{first} is left out: list what must be absent"
        for name in ABSENT[first]:
            assert absent(name), f"{name} exists, but the table says it is left out"


def test_fleche_d_says_why_it_is_not_offered() -> None:
    with pytest.raises(AttributeError, match=r"fleche.D .* is not offered.*f.load"):
        fleche.D("ab12")  # type: ignore[attr-defined]
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        fleche.nothing  # type: ignore[attr-defined]  # noqa: B018


def test_every_check_has_its_row() -> None:
    firsts = {r[0] for r in rows()}
    stale = sorted((set(CHECKS) | set(ABSENT)) - firsts)
    assert not stale, f"checks for rows that are not in docs/migration.md: {stale}"


def test_the_count_of_original_names_that_work() -> None:
    """The count the issue asks for: rows that work (with or without a difference)."""
    found = rows()
    working = [r for r in found if r[2] in TESTED]
    left_out = [r for r in found if r[2] == "left out"]
    assert len(working) == len(CHECKS) and len(left_out) == len(ABSENT)
