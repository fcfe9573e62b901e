"""Queries: f.query(...) and fleche.query(...) on memory, local, S3 (moto) and layered caches.

The matching rules are fleche.records._terms' (tested in test_terms.py); here: that every
query form reaches them on every kind of cache, what QueryResult offers, and that
an index, when a cache has one, is never trusted over the records.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from services import need_module

import fleche as fl
from fleche import Cache, FlecheError, FlecheWarning, Q, cache, fleche, project, tags
from fleche.query import MissingDependencyError, QueryArgumentError, QueryError, Ref
from fleche.records import QuerySpec

BIG = np.arange(5_000.0)  # 40 kB: stored as a separate object, not inline


@fleche
def simulate(n, alpha=0.1, data=None, label="a"):
    return n * alpha


@fleche(version=2)
def features(n, scale=1.0):
    return [n] * 3


# -- caches -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server() -> Iterator[Any]:
    need_module("moto", reason="moto (the S3 test server) is not installed")
    from s3_server import MotoS3

    server = MotoS3()
    yield server
    server.stop()


@pytest.fixture(params=["memory", "local", "s3", "layered"])
def any_cache(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """The active cache, one of each kind; layered is local in front of local."""
    if request.param == "memory":
        spec: Any = "memory://"
        options: dict[str, Any] = {}
    elif request.param == "local":
        spec, options = tmp_path / "store", {}
    elif request.param == "s3":
        server = request.getfixturevalue("s3_server")
        spec, options = f"s3://{server.new_bucket()}/cache", server.options()
    else:
        spec, options = [tmp_path / "near", tmp_path / "far"], {}
    with cache(spec, **options) as c:
        yield c


def populate() -> float:
    """Six calls of simulate and two of features; returns a time between the two batches."""
    with project("paper"), tags(run=1):
        simulate(1)  # alpha 0.1
        simulate(2, alpha=0.2)
        simulate(3, alpha=0.25, label="b")
    time.sleep(0.01)
    middle = time.time()
    time.sleep(0.01)
    with tags(run=2):
        simulate(4, alpha=0.5, data=BIG)
        simulate(5, 0.1, (1, 2))
        simulate(6, alpha=1)  # an int, not a float
    features(1)
    features(2, scale=2.0)
    return middle


def ns(found: Any) -> list[int]:
    return sorted(c.arguments["n"] for c in found)


# -- every query form, on every cache ----------------------------------------------------


def test_query_forms(any_cache: Any) -> None:
    middle = populate()
    assert ns(simulate.query()) == [1, 2, 3, 4, 5, 6]
    assert ns(simulate.query(alpha=0.1)) == [1, 5]
    assert ns(simulate.query(n=None, alpha=0.1)) == [1, 5]  # None: any value
    assert ns(simulate.query(5)) == [5]  # positional arguments bind like a call
    assert ns(simulate.query(5, 0.1)) == [5]
    assert ns(simulate.query(None, 0.2)) == [2]
    assert ns(simulate.query(alpha=1)) == [6]  # exact and type-aware: 1 is not 1.0
    assert ns(simulate.query(alpha=1.0)) == []
    # conditions: ranges on floats (and ints), sets, inequality
    assert ns(simulate.query(alpha=Q.gt(0.2))) == [3, 4, 6]
    assert ns(simulate.query(alpha=Q.between(0.1, 0.25))) == [1, 2, 3, 5]
    assert ns(simulate.query(alpha=Q.lt(0.2), n=Q.ge(2))) == [5]
    assert ns(simulate.query(n=Q.in_([1, 3, 99]))) == [1, 3]
    assert ns(simulate.query(label=Q.ne("a"))) == [3]
    # by-reference arguments (an array, a tuple) match by equality, never by order
    assert ns(simulate.query(data=BIG.copy())) == [4]
    assert ns(simulate.query(data=BIG + 1)) == []
    assert ns(simulate.query(data=(1, 2))) == [5]
    assert ns(simulate.query(data=[1, 2])) == []  # a list is not a tuple
    assert ns(simulate.query(data=Q.eq(None))) == [1, 2, 3, 6]
    assert ns(simulate.query(data=Q.gt(0))) == []
    # metadata: tags (nested), conditions on scalars
    assert ns(simulate.query(metadata={"tags": {"project": "paper"}})) == [1, 2, 3]
    assert ns(simulate.query(metadata={"tags": {"run": Q.ge(2)}})) == [4, 5, 6]
    assert ns(simulate.query(alpha=0.1, metadata={"tags": {"run": 2}})) == [5]
    assert ns(simulate.query(metadata={"created": Q.gt(middle)})) == [4, 5, 6]
    assert ns(simulate.query(metadata={"tags": {"nope": None}})) == [1, 2, 3, 4, 5, 6]
    # the other function's calls never show
    assert ns(features.query()) == [1, 2]
    assert [c.result for c in features.query(scale=2.0)] == [[2, 2, 2]]


def test_query_result_methods(any_cache: Any) -> None:
    populate()
    q = simulate.query(alpha=0.1)
    assert q.count() == 2 and bool(q)
    assert not simulate.query(n=99) and simulate.query(n=99).count() == 0
    latest = q.latest()
    assert latest is not None and latest.arguments["n"] == 5
    assert simulate.query(n=99).latest() is None
    only = simulate.query(n=4).only()
    assert isinstance(only, fl.Call) and only.digest == simulate.digest(4, alpha=0.5, data=BIG)
    np.testing.assert_array_equal(only.arguments["data"], BIG)
    with pytest.raises(QueryError, match="found 2 calls; narrow the query"):
        q.only()
    with pytest.raises(QueryError, match="found none") as e:
        simulate.query(n=99).only()
    assert isinstance(e.value, FlecheError) and isinstance(e.value, LookupError)
    assert sorted(q.results()) == [0.1, pytest.approx(0.5)]
    # iterable again, and seeing new calls
    assert len(list(q)) == 2 and len(list(q)) == 2
    simulate(7, 0.1)
    assert q.count() == 3
    # evict removes exactly the matches
    assert simulate.query(alpha=Q.gt(0.2)).evict() == 3
    assert ns(simulate.query()) == [1, 2, 5, 7]
    assert not simulate.contains(3, alpha=0.25, label="b")
    assert simulate.query(alpha=Q.gt(0.2)).evict() == 0
    assert ns(features.query()) == [1, 2]


def test_table(any_cache: Any) -> None:
    pd = pytest.importorskip("pandas")
    populate()
    df = simulate.query().table()
    assert isinstance(df, pd.DataFrame) and len(df) == 6
    assert list(df.columns[:5]) == ["digest", "n", "alpha", "data", "label"]
    assert list(df["n"]) == [6, 5, 4, 3, 2, 1]  # newest first
    assert {"created", "duration", "cpu", "host", "tags.project", "tags.run"} <= set(df.columns)
    row = df.set_index("n")
    assert row.loc[1, "digest"] == simulate.digest(1)
    assert row.loc[5, "data"] == (1, 2)  # small references are decoded from the record
    ref = row.loc[4, "data"]
    assert isinstance(ref, Ref) and ref.type == "numpy.ndarray" and ref.size > 40_000
    assert row.loc[1, "tags.project"] == "paper" and pd.isna(row.loc[6, "tags.project"])
    full = simulate.query(n=4).table(values=True, results=True)
    np.testing.assert_array_equal(full.loc[0, "data"], BIG)
    assert full.loc[0, "result"] == pytest.approx(2.0)
    across = fl.query(name=["simulate", "features"]).table()
    assert {"function", "version"} <= set(across.columns) and len(across) == 8
    assert simulate.query(n=99).table().empty


def test_table_without_pandas(monkeypatch: pytest.MonkeyPatch) -> None:
    with cache("memory://"):
        simulate(1)
        monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now raises ImportError
        with pytest.raises(MissingDependencyError, match="needs pandas.*pip install pandas"):
            simulate.query().table()


def test_metadata_columns_named_like_arguments_are_prefixed() -> None:
    pytest.importorskip("pandas")

    @fleche
    def where(host):
        return host

    with cache("memory://"):
        where("mine")
        df = where.query().table()
    assert df.loc[0, "host"] == "mine" and df.loc[0, "metadata.host"] != "mine"


# -- across functions ---------------------------------------------------------------------


def test_query_across_functions(any_cache: Any) -> None:
    populate()

    def names(q: Any) -> list[tuple[str, Any]]:
        return sorted((c.name, c.arguments["n"]) for c in q)

    assert len(list(fl.query())) == 8
    assert names(fl.query(name="features")) == [("features", 1), ("features", 2)]
    assert names(fl.query(n=2)) == [("features", 2), ("simulate", 2)]
    assert names(fl.query(module=__name__, n=Q.ge(6))) == [("simulate", 6)]
    assert list(fl.query(module="elsewhere")) == []
    assert names(fl.query(version=2)) == [("features", 1), ("features", 2)]
    assert names(fl.query(version=Q.ne(2), n=1)) == [("simulate", 1)]
    assert names(fl.query(scale=2.0)) == [("features", 2)]  # a call without it never matches
    assert names(fl.query(metadata={"tags": {"project": "paper"}}, n=Q.lt(3))) == [
        ("simulate", 1),
        ("simulate", 2),
    ]
    assert names(fl.query(features, n=1)) == [("features", 1)]
    fid = simulate.__fleche__.function_id
    assert fl.query(fid).count() == 6 and fl.query([fid, features]).count() == 8
    assert fl.query(name="simulate", alpha=0.1).latest().arguments["n"] == 5
    assert fl.query(name="features").evict() == 2
    assert ns(features.query()) == []


def test_query_across_functions_in_another_cache(tmp_path: Path) -> None:
    with cache(tmp_path / "a"):
        simulate(1)
    with cache("memory://"):
        assert fl.query(name="simulate").count() == 0
        assert fl.query(name="simulate", cache=tmp_path / "a").count() == 1


def test_arguments_named_like_query_keywords() -> None:
    @fleche
    def named(name, version):
        return name

    with cache("memory://"):
        named("x", 1)
        named("y", 1)
        assert [c.result for c in fl.query(arguments={"name": "y", "version": 1})] == ["y"]
        assert named.query(name="x").count() == 1  # f.query has no such keywords


def test_functions_keyed_without_module_and_methods() -> None:
    @fleche(hash_module=False)
    def moved(x):
        return x

    class Model:
        @fleche
        def fit(self, x):
            return x

        def __fleche_digest__(self):
            return "model"

    with cache("memory://"):
        moved(1)
        Model().fit(2)
        qual = moved.__fleche__.qualname
        assert [c.result for c in fl.query(name=qual)] == [1]
        assert [c.result for c in fl.query(name=Model.fit.__fleche__.qualname)] == [2]


def test_long_qualnames_are_found_by_name() -> None:
    """A function id cut to 200 characters still matches its name (the pre-filter keeps it)."""

    def f(x):
        return x

    f.__qualname__ = "q" * 300
    g = fleche(f)
    with cache("memory://"):
        g(1)
        assert len(g.__fleche__.function_id) == 200
        assert fl.query(name="q" * 300).count() == 1


# -- bad queries --------------------------------------------------------------------------


def test_wrong_argument_names_say_the_valid_ones() -> None:
    with cache("memory://"):
        with pytest.raises(
            QueryArgumentError, match=r"\['beta'\].*\['n', 'alpha', 'data', 'label'\]"
        ):
            simulate.query(beta=1)
        with pytest.raises(TypeError):  # still a TypeError, as before
            simulate.query(1, 2, 3, 4, 5)
        with pytest.raises(QueryArgumentError, match="metadata="):
            simulate.query(metadata=["tags"])
        with pytest.raises(QueryArgumentError, match="function id"):
            fl.query(42)
        with pytest.raises(QueryArgumentError, match="name="):
            fl.query(name=[1])
        with pytest.raises(TypeError, match="Q.eq/Q.in_"):
            simulate.query(alpha=Q.gt([1]))

    @fleche(ignore="verbose")
    def quiet(x, verbose=False):
        return x

    with pytest.raises(QueryArgumentError, match="ignored"):
        quiet.query(verbose=True)


def test_f_query_sees_only_its_own_version() -> None:
    def make(version: int) -> Any:
        def step(x):
            return (version, x)

        return fleche(version=version)(step)

    v1, v2 = make(1), make(2)
    with cache("memory://"):
        v1(1)
        v1(2)
        v2(1)
        assert [c.result for c in v2.query()] == [(2, 1)]  # the calls v2 can hit
        assert v1.query().count() == 2
        assert fl.query(v2).count() == 3  # every version, unless asked
        assert fl.query(v2, version=1).count() == 2
        unversioned = fleche(version=3, hash_version=False)(v1.__wrapped__)
        assert unversioned.query().count() == 3  # the version is not part of its key


# -- laziness -----------------------------------------------------------------------------


def test_iterating_loads_no_values(monkeypatch: pytest.MonkeyPatch) -> None:
    with cache("memory://") as c:
        simulate(4, data=BIG)
        simulate(5)
        loads: list[Any] = []
        real = c.load_value
        monkeypatch.setattr(c, "load_value", lambda ref: loads.append(ref) or real(ref))
        q = simulate.query()
        assert loads == []
        calls = list(q)
        assert q.count() == 2 and loads == []
        assert loads == []
        assert {c.arguments["n"] for c in calls} == {4, 5}  # touching arguments loads them
        assert len(loads) == 1  # the array; n, alpha and label are in the record itself
        assert sorted(q.results()) == [0.4, 0.5] and len(loads) == 3


# -- an index -----------------------------------------------------------------------------


class FakeIndex:
    """Stands in for fleche.index: answers with the keys it was given, newest first, stale or not."""

    def __init__(self, keys: list[tuple[str, str]]) -> None:
        self.keys = keys
        self.asked: list[QuerySpec] = []
        self.removed: list[tuple[str, str]] = []

    def search(
        self, spec: QuerySpec, *, limit: int | None = None, newest_first: bool = True
    ) -> Iterator[tuple[str, str]]:
        self.asked.append(spec)
        yield from self.keys[:limit]

    def count(self, spec: QuerySpec) -> int:
        return len(self.keys)

    def add(self, function_id: str, key: str, record: dict[str, Any], size: int) -> None:
        pass  # the cache keeps its index up to date on writes: this one stays as it was told

    def remove(self, function_id: str, key: str) -> None:
        self.removed.append((function_id, key))


def test_a_stale_index_never_returns_a_wrong_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = Cache(tmp_path / "store")
    with cache(c):
        populate()
        fid = simulate.__fleche__.function_id
        gone = simulate.digest(2, alpha=0.2)
        simulate.evict(2, alpha=0.2)
        # what an index behind the store could say about alpha=0.1: a right call, one
        # evicted since, one that never matched, and another right one
        listed = [
            (fid, simulate.digest(5, 0.1, (1, 2))),
            (fid, gone),
            (fid, simulate.digest(3, alpha=0.25, label="b")),
            (fid, simulate.digest(1)),
        ]
        fake = FakeIndex(listed)
        monkeypatch.setattr(Cache, "index", property(lambda self: fake), raising=False)
        q = simulate.query(alpha=0.1)
        with pytest.warns(FlecheWarning, match="no longer matches; skipped") as seen:
            assert ns(q) == [1, 5]
        assert len(seen) == 1 and q.stale == 2
        assert fake.asked[-1].function_ids == frozenset([fid])
        assert fake.asked[-1].args == {"alpha": Q.eq(0.1)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FlecheWarning)
            assert q.count(verify=True) == 2  # verified: every listed record read and checked
            assert q.count() == 4  # the index's word: no record read
            assert q.latest().arguments["n"] == 5  # the first verified, in the index's order
            fake.keys = listed[1:3]
            assert q.latest() is None and not q
            with pytest.raises(QueryError, match="found none"):
                q.only()
            fake.keys = listed
            assert q.evict() == 2  # only the verified calls go
            assert {k for _, k in fake.removed} >= {listed[0][1], listed[3][1]}
        assert not simulate.contains(1) and simulate.contains(3, alpha=0.25, label="b")


# -- layered caches -----------------------------------------------------------------------


def test_layered_query_reads_every_layer_once(tmp_path: Path) -> None:
    near, far = tmp_path / "near", tmp_path / "far"
    with cache(far):
        simulate(1)
        simulate(2, alpha=0.2)
    with cache([near, far]):
        assert simulate(1) == 0.1  # a hit below, copied up: now in both layers
        simulate(3)  # near only
        assert ns(simulate.query()) == [1, 2, 3]
        assert ns(fl.query(name="simulate", alpha=0.1)) == [1, 3]
        assert simulate.query(alpha=0.1).evict() == 2
    with cache(near):
        assert ns(simulate.query()) == []  # 1 (copied up) and 3 evicted
    with cache(far):
        assert ns(simulate.query()) == [2]  # 1 evicted below too
