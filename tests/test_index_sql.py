"""The catalogue on every SQL backend: the same answers as ``QuerySpec.match``, exactly.

Backends: the standard library's SQLite (the default), SQLite through
SQLAlchemy, and a real PostgreSQL (``tools/services/postgres``; the tests skip,
saying why, when it cannot run). The property test throws random records and
random conditions at each and compares with the reference semantics of
:mod:`fleche.records._terms`, edge values included: ``2**53 + 1`` against ``2.0**53``,
``-0.0``, infinities, NaN, ``\\x00`` in strings, ``True`` against ``1``,
arguments stored by reference, odd metadata keys.
"""

from __future__ import annotations

import enum
import math
import secrets
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from services import need_module, need_service

from fleche import codec
from fleche.digest import digest_bytes
from fleche.index import Index, SqliteDb, open_index
from fleche.records import Q, QuerySpec
from fleche.store import LocalStore

BACKENDS = ["sqlite", "sqlalchemy-sqlite", "postgresql"]


@pytest.fixture(scope="session")
def _pg_session():
    from pg_server import postgres_service

    with postgres_service() as url:
        yield url


@pytest.fixture
def pg_url(_pg_session) -> str:
    """A fresh schema on the test PostgreSQL, as an SQLAlchemy URL; skips, saying why, without one."""
    if _pg_session.startswith("skip:"):
        need_service(f"no PostgreSQL on 127.0.0.1: {_pg_session[5:]}")
    need_module("psycopg")
    from pg_server import schema_url

    return schema_url(_pg_session)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Index:
    """An index with no store (it holds what it is given) on each backend."""
    if request.param == "sqlite":
        return Index(SqliteDb(str(tmp_path / "catalog.sqlite")))
    if request.param == "sqlalchemy-sqlite":
        need_module("sqlalchemy")
        from fleche.index import SqlAlchemyDb

        return Index(SqlAlchemyDb(f"sqlite+pysqlite:///{tmp_path / 'sa.sqlite'}"))
    url = request.getfixturevalue("pg_url")
    from fleche.index import SqlAlchemyDb

    return Index(SqlAlchemyDb(url))


def key() -> str:
    return secrets.token_hex(16)


def normalize(record: dict) -> dict:
    """The record as a store hands it back (msgpack: tuples become lists...)."""
    return codec.decode_record(codec.encode_record(record))


def record(fid: str = "m.f", version=1, created: float = 0.0, tags=None, **arguments) -> dict:
    meta = {"created": created, "host": "h"}
    if tags is not None:
        meta["tags"] = tags
    return normalize(
        {
            "fleche": 1,
            "function": fid,
            "module": fid.rpartition(".")[0],
            "qualname": fid.rpartition(".")[2],
            "version": version,
            "digest": "0" * 32,
            "arguments": arguments,
            "result": {"type": "builtins.int", "ser": 1, "inline": b"x"},
            "metadata": meta,
        }
    )


def ref(value) -> dict:
    """An argument stored by reference: its record keeps only the digest."""
    return {"type": "builtins.list", "digest": digest_bytes(value).hex(), "ser": 1, "inline": b""}


def fill(index: Index, records: list[dict]) -> dict[tuple[str, str], dict]:
    out = {}
    for rec in records:
        k = key()
        index.add(rec["function"], k, rec, 100)
        out[(rec["function"], k)] = rec
    index.flush()
    return out


def expected(records: dict[tuple[str, str], dict], spec: QuerySpec) -> set[tuple[str, str]]:
    return {fk for fk, rec in records.items() if spec.match(rec)}


# -- add / remove / search / count --------------------------------------------------------


def test_add_search_count_remove(backend: Index) -> None:
    recs = fill(
        backend,
        [
            record(created=1.0, n=1, alpha=0.1, label="a"),
            record(created=2.0, n=2, alpha=0.2, label="b"),
            record(created=3.0, n=3, alpha=0.1, label="c", tags={"project": "x"}),
            record("m.g", created=4.0, n=4, alpha=0.1, big=ref([1, 2])),
        ],
    )
    by_n = {rec["arguments"]["n"]: fk for fk, rec in recs.items()}
    alpha = QuerySpec(args={"alpha": Q.eq(0.1)})
    assert list(backend.search(alpha)) == [by_n[4], by_n[3], by_n[1]]  # newest first
    assert list(backend.search(alpha, newest_first=False, limit=2)) == [by_n[1], by_n[3]]
    assert backend.count(alpha) == 3
    assert backend.count(QuerySpec(function_ids=frozenset({"m.f"}), args={"n": Q.ge(2)})) == 2
    assert backend.count(QuerySpec(args={"big": Q.eq([1, 2])})) == 1  # by digest
    assert backend.count(QuerySpec(args={"big": Q.eq((1, 2))})) == 0  # a tuple is not a list
    assert backend.count(QuerySpec(args={"big": Q.gt(0)})) == 0  # no value to compare
    assert backend.count(QuerySpec(args={"label": Q.between("a", "b")})) == 2
    assert backend.count(QuerySpec(metadata={("tags", "project"): Q.eq("x")})) == 1
    assert backend.count(QuerySpec(names=frozenset({"g"}))) == 1
    assert backend.count(QuerySpec(version=Q.eq(1))) == 4
    assert backend.count(QuerySpec(version=Q.eq(1.0))) == 0  # exact, like the call key
    backend.remove(*by_n[3])
    assert backend.count(alpha) == 2
    assert backend.count(QuerySpec()) == 3


def test_a_rewritten_record_replaces_its_row(backend: Index) -> None:
    k = key()
    backend.add("m.f", k, record(n=1, tags={"run": 1}), 10)
    backend.add("m.f", k, record(n=1, tags={"run": 2}), 10)  # a rerun: same key
    backend.flush()
    assert backend.count(QuerySpec()) == 1
    assert backend.count(QuerySpec(metadata={("tags", "run"): Q.eq(2)})) == 1
    assert backend.count(QuerySpec(args={"n": Q.eq(1)})) == 1


def test_pages_and_limits(backend: Index) -> None:
    recs = fill(backend, [record(created=float(i % 7), n=i) for i in range(2500)])
    spec = QuerySpec(args={"n": Q.lt(2400)})
    got = list(backend.search(spec))
    assert len(got) == 2400 and len(set(got)) == 2400
    created = [recs[fk]["metadata"]["created"] for fk in got]
    assert created == sorted(created, reverse=True)
    assert list(backend.search(spec, limit=1500)) == got[:1500]
    tagged = QuerySpec(
        args={"n": Q.lt(2400)}, metadata={("created",): Q.ge(3)}
    )  # decided in Python
    assert backend.count(tagged) == sum(1 for fk in got if recs[fk]["metadata"]["created"] >= 3)


# -- the property: the index answers exactly what QuerySpec.match answers ------------------

INTS = [0, 1, -1, 2, 3, 7, 2**53, 2**53 + 1, -(2**53) - 1, 2**63 - 1, -(2**63), 10**18]
FLOATS = [0.0, -0.0, 0.1, 0.5, 1.0, 2.0, 2.5, -2.5, 1e300, -1e300, 5e-324, 2.0**53, 2.0**63]
FLOATS += [math.inf, -math.inf, math.nan]
STRS = ["", "a", "ab", "b", "B", "é", "z\x00", "\x00", "$x", "日本", "\U0001f600", "1"]
SCALARS = [None, True, False, *INTS, *FLOATS, *STRS, b"", b"ab", b"\x00"]

scalars = st.one_of(
    st.sampled_from(SCALARS),
    st.integers(-5, 5),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
)
orderable = st.one_of(
    st.sampled_from([b for b in SCALARS if type(b) in (int, float, str) and b == b]),
    st.integers(-5, 5),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    st.text(max_size=3),
)
lists = st.lists(st.integers(-2, 2), max_size=2)
arg_values = st.one_of(scalars, lists.map(ref))


@st.composite
def conditions(draw, operands=scalars):
    op = draw(st.sampled_from(["eq", "ne", "in", "lt", "le", "gt", "ge", "between"]))
    if op in ("eq", "ne"):
        return getattr(Q, op)(draw(st.one_of(operands, lists, lists.map(tuple))))
    if op == "in":
        return Q.in_(draw(st.lists(st.one_of(operands, lists), max_size=3)))
    if op == "between":
        return Q.between(draw(orderable), draw(orderable))
    return getattr(Q, op)(draw(orderable))


metadata_values = st.one_of(
    scalars,
    st.lists(st.integers(-2, 2), max_size=2),
    st.dictionaries(st.sampled_from(["a", "$b", 1]), st.integers(-2, 2), max_size=2),
)


@st.composite
def records(draw):
    fid = draw(st.sampled_from(["m.f", "m.g", "n.f"]))
    meta: dict = {"created": draw(st.one_of(st.floats(0, 100), st.integers(0, 100), scalars))}
    meta["tags"] = draw(
        st.dictionaries(st.sampled_from(["project", "k", "$odd", 3]), metadata_values, max_size=3)
    )
    if draw(st.booleans()):
        meta["$odd"] = draw(metadata_values)
    if draw(st.booleans()):
        meta['q"uote'] = draw(scalars)
    if draw(st.booleans()):
        meta["duration"] = draw(st.one_of(st.floats(0, 10), scalars))
    if draw(st.booleans()):
        meta["pid"] = draw(st.one_of(st.integers(-(1 << 63), (1 << 64) - 1), scalars))
    rec = {
        "fleche": 1,
        "function": fid,
        "module": fid.partition(".")[0],
        "qualname": fid.partition(".")[2],
        "digest": "0" * 32,
        "arguments": draw(st.dictionaries(st.sampled_from(["a", "b", "n"]), arg_values)),
        "result": {"type": "builtins.int", "ser": 1, "inline": b"x"},
        "metadata": meta,
    }
    if draw(st.booleans()):
        rec["version"] = draw(st.one_of(scalars, lists))
    return normalize(rec)


META_PATHS = [("created",), ("tags", "project"), ("tags", "k"), ("tags", "$odd"), ("$odd",)]
META_PATHS += [("tags",), ('q"uote',), ("missing",), ("tags", "project", "a")]
META_PATHS += [("duration",), ("pid",)]  # kept in typed columns when they are numbers


@st.composite
def specs(draw):
    def some(values):
        return draw(st.one_of(st.none(), st.frozensets(st.sampled_from(values), max_size=2)))

    return QuerySpec(
        function_ids=some(["m.f", "m.g", "n.f", "x.y"]),
        names=some(["f", "g"]),
        modules=some(["m", "n"]),
        version=draw(st.one_of(st.none(), conditions())),
        args=draw(
            st.dictionaries(st.sampled_from(["a", "b", "n", "zz"]), conditions(), max_size=2)
        ),
        metadata=draw(st.dictionaries(st.sampled_from(META_PATHS), conditions(), max_size=2)),
    )


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(recs=st.lists(records(), min_size=1, max_size=12), queries=st.lists(specs(), max_size=6))
def test_index_answers_like_query_spec_match(backend: Index, recs, queries) -> None:
    backend.db.reset()
    stored = fill(backend, recs)
    for spec in queries:
        want = expected(stored, spec)
        got = list(backend.search(spec))
        assert set(got) == want, spec
        assert len(got) == len(want)
        assert backend.count(spec) == len(want)
        assert list(backend.search(spec, limit=2)) == got[:2]


@settings(max_examples=200, deadline=None)
@given(value=arg_values, cond=conditions())
@example(value="", cond=Q.lt("z\x00"))  # found by hypothesis: a str bound the JSON cannot hold
@example(value=2**53 + 1, cond=Q.gt(2.0**53))
@example(value=2.0**53, cond=Q.lt(2**53 + 1))
@example(value=True, cond=Q.ge(1))
@example(value=-0.0, cond=Q.eq(0.0))
@example(value=-0.0, cond=Q.ne(0.0))  # plain arguments keep no digest but zeros (SQL: -0.0 = 0.0)
@example(value=0, cond=Q.in_([0.0, False]))
@example(value=1, cond=Q.eq(1.0))
@example(value=1.0, cond=Q.eq(1))
@example(value=True, cond=Q.eq(1))
@example(value=1, cond=Q.ne(True))
@example(value=2.5, cond=Q.ne(2.5))
@example(value="x" * 3000, cond=Q.eq("x" * 3000))
@example(value=ref("x" * 3000), cond=Q.eq("x" * 3000))  # a long str kept by reference
@example(value=ref("x" * 3000), cond=Q.ne("x" * 3000))
@example(value=ref([1]), cond=Q.in_(["x", [1]]))
@example(value=2**63, cond=Q.eq(2**63))  # beyond int64: by digest
@example(value=math.nan, cond=Q.eq(math.nan))
def test_one_value_one_condition_on_sqlite(value, cond) -> None:
    """Many more cases on the cheapest backend: one argument, one condition."""
    index = Index(SqliteDb(":memory:"))
    rec = record(x=value)
    fill(index, [rec])
    assert index.count(QuerySpec(args={"x": cond})) == int(QuerySpec(args={"x": cond}).match(rec))
    meta = QuerySpec(metadata={("tags", "v"): cond})
    rec2 = record(tags={"v": value if not isinstance(value, dict) else [1]})
    fill(index, [rec2])
    assert index.count(meta) == int(meta.match(rec2))


def test_an_operand_of_a_subclass_matches_as_its_digest_says() -> None:
    """Equality is by digest: an int, float or str subclass operand (an IntEnum, numpy's
    scalars) finds what ``QuerySpec.match`` finds, though plain arguments keep no digest."""
    index = Index(SqliteDb(":memory:"))

    class Small(enum.IntEnum):
        THREE = 3

    class Text(str):
        pass

    recs = [record(x=3), record(x=3.0), record(x="t"), record(x=True)]
    fill(index, recs)
    for operand in (Small.THREE, Text("t"), np.float64(3.0), np.int64(3)):
        for cond in (Q.eq(operand), Q.ne(operand), Q.in_([operand])):
            spec = QuerySpec(args={"x": cond})
            assert index.count(spec) == sum(spec.match(r) for r in recs), (operand, cond)


# -- concurrency on a shared catalogue ------------------------------------------------------


def test_concurrent_writers_of_the_same_calls(backend: Index) -> None:
    """Threads racing to catalogue the same calls end with one row each (last writer wins)."""
    keys = [key() for _ in range(60)]
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        other = Index(backend.db)  # its own buffer, the same database
        try:
            for k in keys:
                other.add("m.f", k, record(n=t), 10)
            other.flush()
            if other.stale:  # a fault only warns (and a warning filter is not per thread)
                errors.append(AssertionError(f"writer {t} met a fault"))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert backend.count(QuerySpec()) == len(keys)
    assert sum(backend.count(QuerySpec(args={"n": Q.eq(t)})) for t in range(4)) == len(keys)


def test_postgresql_index_of_a_local_store(pg_url: str, tmp_path: Path) -> None:
    """index = "postgresql://...": a team catalogue; writes land there, catch-up works the same."""
    from fleche import Cache, cache, fleche

    store = LocalStore(tmp_path / "store")
    c = Cache(store, index=pg_url)
    assert c.index is not None and c.index.db.dialect == "postgresql"

    @fleche
    def f(n, alpha=0.1):
        return n

    with cache(c):
        for n in range(20):
            f(n, alpha=0.1 if n % 2 else 0.2)
    assert c.index.count(QuerySpec(args={"alpha": Q.eq(0.1)})) == 10
    other = Cache(LocalStore(tmp_path / "store"), index=False)  # a writer without the index
    with cache(other):
        f(100)
    spec = QuerySpec(args={"n": Q.ge(100)})
    assert c.index.count(spec) == 1  # seen by the directory stamps
    report = c.index.rebuild()
    assert report.calls == 21 and report.rebuilt
    assert c.index.status()["backend"] == "postgresql"


def test_sql_urls(tmp_path: Path) -> None:
    from fleche.errors import ConfigError

    store = LocalStore(tmp_path / "s")
    idx = open_index(store, f"sqlite:///{tmp_path / 'x.sqlite'}")
    assert isinstance(idx.db, SqliteDb) and idx.location == str(tmp_path / "x.sqlite")
    with pytest.raises(ConfigError, match="mysql"):
        open_index(store, "mysql://u@h/db")
    with pytest.raises(ConfigError, match="expected true, false"):
        open_index(store, "not a url")
    from fleche.index import normalize_url

    assert normalize_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"


# -- pages, for fleche ui -----------------------------------------------------------------


def test_pages_are_ordered_by_any_column_and_never_overlap(backend: Index) -> None:
    """Index.page: one page of an ordered, filtered listing (fleche ui's tables), on every backend."""
    keys = {}
    for n in range(30):
        rec = record(created=1000.0 + n, tags={"run": n % 3}, n=n, label=f"x{(n * 7) % 30:02d}")
        rec["metadata"]["duration"] = float((n * 11) % 30)
        keys[n] = key()
        backend.add("m.f", keys[n], rec, 100 + n)
    backend.add("m.g", key(), record(fid="m.g", created=5000.0, n=1), 10)
    spec = QuerySpec(function_ids=frozenset(["m.f"]))

    def ns(rows: list[tuple[str, str]]) -> list[int]:
        by_key = {k: n for n, k in keys.items()}
        return [by_key[k] for _, k in rows]

    assert ns(backend.page(spec, limit=5)) == [29, 28, 27, 26, 25]  # newest first
    assert ns(backend.page(spec, order="size", descending=False, offset=3, limit=3)) == [3, 4, 5]
    assert ns(backend.page(spec, order="arg:n", descending=True, offset=25, limit=10)) == [
        4,
        3,
        2,
        1,
        0,
    ]
    by_label = ns(backend.page(spec, order="arg:label", descending=False, limit=None))
    assert by_label == sorted(range(30), key=lambda n: (n * 7) % 30)
    by_duration = ns(backend.page(spec, order="meta:duration", descending=False, limit=None))
    assert by_duration == sorted(range(30), key=lambda n: (n * 11) % 30)
    pages = [ns(backend.page(spec, order="arg:n", offset=o, limit=7)) for o in range(0, 30, 7)]
    assert sorted(n for page in pages for n in page) == list(range(30))  # disjoint, complete

    filtered = QuerySpec(
        function_ids=frozenset(["m.f"]), args={"n": Q.ge(10)}, metadata={("tags", "run"): Q.eq(0)}
    )
    assert ns(backend.page(filtered, order="arg:n", descending=False, offset=1, limit=3)) == [
        15,
        18,
        21,
    ]
    # told how many match, a page of many matches walks the calls in time order: same answer
    dense = QuerySpec(function_ids=frozenset(["m.f"]), args={"n": Q.ge(5)})
    for offset in (0, 4, 20):
        walked = backend.page(dense, offset=offset, limit=4, matches=25)
        assert walked == backend.page(dense, offset=offset, limit=4)
        assert ns(walked) == list(range(29 - offset, 25 - offset, -1))[: max(0, 25 - offset)]
    with pytest.raises(ValueError, match="order="):
        backend.page(spec, order="bogus")

    fns = backend.functions()
    assert [(f, n) for f, n, _, _ in fns] == [("m.f", 30), ("m.g", 1)]
    assert fns[0][3] == 1029.0 and fns[0][2] >= sum(100 + n for n in range(30))
    assert backend.created(spec) == [1000.0 + n for n in range(30)]
    before = backend.generation()
    backend.remove("m.f", keys[0])
    assert backend.generation() != before and backend.functions()[0][1] == 29


def test_a_listing_gives_back_the_records_it_was_given_on_every_backend(backend: Index) -> None:
    """Index.listing rebuilds a record (all but its result) from SQLite, SQLAlchemy and
    PostgreSQL alike, in the record's order; a call with an argument kept by reference is
    left for the caller to read (None)."""
    given = fill(
        backend,
        [
            record(created=1.0 + i, tags={"run": i}, z=i, a=-0.0, s="é", b=True, n=None)
            for i in range(3)
        ]
        + [record(created=9.0, version="v", x=ref([1, 2]))],
    )
    listed = list(backend.listing(QuerySpec(function_ids=frozenset(["m.f"]))))
    assert len(listed) == 4
    assert [r[:2] for r in listed if r[2] is None] == [
        k for k, rec in given.items() if rec["version"] == "v"
    ]
    for fid, k, rec in listed:
        if rec is None:
            continue
        want = {**given[(fid, k)], "digest": k}
        for field in ("fleche", "result"):
            want.pop(field)
        assert rec.keys() == want.keys()
        for field, value in want.items():  # -0.0, True, None and the order of maps included
            assert repr(rec[field]) == repr(value), field
