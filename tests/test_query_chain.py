"""The original fleche's chainable query helpers on QueryResult: take, skip, filter, sorted,
unique, groupby, oldest, empty, any.

Each is tested on a cache without an index (memory, scanned) and with one (a local
directory), and take/skip are shown to be answered by the index: the records of
skipped calls are never read, and a stale row does not cost a call.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fleche import Cache, FlecheWarning, cache, fleche, tags
from fleche.query import QueryArgumentError, QueryResult
from fleche.records import QuerySpec


@fleche
def point(x, y=0, data=None):
    return x * 10 + y


def xs(q: Any) -> list[int]:
    return [c.arguments["x"] for c in q]


@pytest.fixture(params=["memory", "local"])
def filled(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """Ten calls x = 0..9, y = x % 3, created in order of x."""
    spec: Any = "memory://" if request.param == "memory" else Cache(tmp_path / "store")
    with cache(spec) as c:
        for i in range(10):
            point(i, i % 3)
        yield c


def test_take_and_skip_cut_the_listing_and_combine(filled: Any) -> None:
    q = point.query()
    every = xs(q)
    assert sorted(every) == list(range(10))
    assert xs(q.take(3)) == every[:3]
    assert xs(q.skip(7)) == every[7:]
    assert xs(q.skip(2).take(3)) == every[2:5]
    assert xs(q.take(5).skip(3)) == every[3:5]
    assert xs(q.take(0)) == [] and xs(q.skip(20)) == []
    assert q.skip(2).take(3).count() == 3 and q.take(4).count(verify=False) == 4
    assert q.skip(8).count(verify=False) == 2
    with pytest.raises(QueryArgumentError, match="expected a count"):
        q.take(-1)


def test_filter_sorted_unique_run_in_python_in_order(filled: Any) -> None:
    q = point.query()
    assert xs(q.sorted("x")) == list(range(10))
    assert xs(q.sorted("x", reverse=True).take(3)) == [9, 8, 7]
    assert xs(q.sorted(lambda c: -c.arguments["x"]).skip(8)) == [1, 0]
    assert xs(q.sorted()) == list(range(10))  # by created: oldest first
    assert xs(q.filter(lambda c: c.arguments["x"] % 2).sorted("x")) == [1, 3, 5, 7, 9]
    assert xs(q.sorted("x").filter(lambda c: c.result >= 60).take(2)) == [6, 7]
    assert [c.arguments["y"] for c in q.sorted("x").unique("y")] == [0, 1, 2]
    assert xs(q.sorted("x").unique(lambda c: c.arguments["x"] // 4)) == [0, 4, 8]
    with pytest.raises(QueryArgumentError, match="no argument 'z'"):
        list(q.sorted("z"))


def test_groupby_gives_a_query_per_value(filled: Any) -> None:
    groups = point.query().groupby("y")
    assert set(groups) == {0, 1, 2}
    assert sorted(xs(groups[0])) == [0, 3, 6, 9] and isinstance(groups[0], QueryResult)
    assert groups[1].count() == 3 and sorted(groups[2].results()) == [22, 52, 82]
    assert groups[0].evict() == 4  # a group is a query like any other
    assert point.query().count() == 6
    assert list(point.query().groupby(lambda c: c.arguments["x"] > 4)) in (
        [False, True],
        [True, False],
    )


def test_oldest_empty_any(filled: Any) -> None:
    q = point.query()
    assert q.oldest().arguments["x"] == 0
    assert q.latest().arguments["x"] == 9
    assert not q.empty() and q.filter(lambda c: False).empty()
    assert q.any() is not None and q.any().arguments["x"] in range(10)
    nothing = point.query(x=42)
    assert nothing.empty() and nothing.any() is None and nothing.oldest() is None


def test_unique_and_groupby_take_unhashable_keys(tmp_path: Path) -> None:
    with cache(tmp_path / "s"):
        for i in range(4):
            point(i, data=np.arange(i % 2 + 1))
        q = point.query()
        assert len(list(q.unique("data"))) == 2  # arrays: told apart by digest
        with pytest.raises(QueryArgumentError, match="cannot be dict keys"):
            q.groupby("data")
        with pytest.raises(QueryArgumentError, match="cannot be ordered"):
            list(q.sorted(lambda c: [c.arguments["x"]] if c.arguments["x"] else "a"))


# -- the index answers take and skip --------------------------------------------------------


def test_take_and_skip_read_only_the_records_they_return(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = Cache(tmp_path / "store")
    with cache(c):
        for i in range(50):
            point(i)
        assert c.index is not None
        read: list[str] = []
        real = Cache.get_record

        def counting(self: Cache, fid: str, key: str, **kw: Any) -> Any:
            read.append(key)
            return real(self, fid, key, **kw)

        monkeypatch.setattr(Cache, "get_record", counting)
        assert xs(point.query().skip(40).take(3)) == [9, 8, 7]  # newest first
        assert len(read) == 3
        read.clear()
        assert point.query().take(5).count() == 5 and read == []  # from the index
        assert point.query().take(5).count(verify=True) == 5 and len(read) == 5
        read.clear()
        assert point.query().skip(45).count(verify=False) == 5 and read == []


class ListedIndex:
    """An index listing the keys it was given (stale ones too), honouring ``limit``."""

    def __init__(self, keys: list[tuple[str, str]]) -> None:
        self.keys = keys
        self.limits: list[int | None] = []

    def search(
        self, spec: QuerySpec, *, limit: int | None = None, newest_first: bool = True
    ) -> Iterator[tuple[str, str]]:
        self.limits.append(limit)
        yield from self.keys[:limit]

    def count(self, spec: QuerySpec) -> int:
        return len(self.keys)

    def add(self, *args: Any) -> None:
        pass

    def remove(self, *args: Any) -> None:
        pass


def test_take_fills_up_past_stale_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c = Cache(tmp_path / "store")
    with cache(c):
        for i in range(6):
            point(i)
        fid = point.__fleche__.function_id
        keys = [(fid, point.digest(i)) for i in (5, 4, 3, 2, 1, 0)]
        point.evict(4)  # the index still lists it
        fake = ListedIndex(keys)
        monkeypatch.setattr(Cache, "index", property(lambda self: fake), raising=False)
        q = point.query().take(3)
        with pytest.warns(FlecheWarning, match="no longer matches"):
            assert xs(q) == [5, 3, 2]
        assert fake.limits == [3, None] and q.stale == 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FlecheWarning)
            assert xs(point.query().skip(1).take(2)) == [3, 2]  # the stale row was skipped
            assert xs(point.query().take(10)) == [5, 3, 2, 1, 0]


# -- transfer and table, as 0.22 called them -----------------------------------------------


def test_transfer_copies_calls_with_their_values(tmp_path: Path) -> None:
    big = np.arange(10_000.0)  # stored as an object, not inline
    with cache(tmp_path / "src") as src:
        point(1, data=big)
        point(2)
        q = point.query()
        target = Cache(tmp_path / "dst")
        assert q.transfer(target) == 2 and q.transfer(target) == 0  # present: left alone
        assert q.transfer(target, overwrite=True) == 2
    with cache(target):
        assert point.load(1, data=big) == 10 and point.load(2) == 20
        assert np.array_equal(point.call(1, data=big).arguments["data"], big)
        assert point.query(x=1).count() == 1  # the target's index heard of them
    with cache(src):
        assert point.query(x=2).transfer(Cache(tmp_path / "dst2"), pop=True) == 1
        assert not point.contains(2) and point.contains(1, data=big)


def test_table_takes_the_original_arguments(tmp_path: Path) -> None:
    pytest.importorskip("pandas")
    with cache(tmp_path / "s"):
        point(1, 2)
        df = point.query().table(arguments="x", results=True, shrink_keys=False)
        assert "x" in df.columns and "y" not in df.columns and list(df["result"]) == [12]
        assert {"x", "y"} <= set(point.query().table().columns)
        assert "x" not in point.query().table(arguments=()).columns


def test_an_empty_dict_asks_for_presence(filled: Any) -> None:
    """0.22's ``metadata={"tags": {}}``: the calls that have tags, whatever they are."""
    with tags(run=1):
        point(100)
    assert xs(point.query(metadata={"tags": {}})) == [100]
    assert point.query(metadata={"tags": {"run": 1}}).count() == 1
    assert point.query(metadata={}).count() == 11
