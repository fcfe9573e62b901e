"""Reads check what they read (issue #16, items 1, 4 and 8).

- A call record is served only under the name it describes: a record copied
  onto another call's name is a miss (one warning, moved aside, recomputed)
  on every path that reads records.
- ``@fleche(mmap=True)`` checks the content hash of the file it maps: a
  damaged mapped file is a miss; ``mmap="unverified"`` is the explicit opt-out.
- A pickled payload that fails part way is unpickled once per load, never
  retried (its constructors may have side effects).
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fleche import Cache, CacheMiss, ConfigError, FlecheWarning, LayeredCache, cache, fleche
from fleche.codec._registry import SPLIT_MIN
from fleche.errors import CorruptObjectError
from fleche.parallel import map as executor_map
from fleche.parallel import wrap_executor
from fleche.store import LocalStore, ObjectStore, open_store
from fleche.upkeep import scan, verify

BIG = 20_000  # bytes: above the 4 KiB inline limit, so a result is an object of its own


@pytest.fixture(params=["memory", "local"])
def active(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cache]:
    spec = "memory://" if request.param == "memory" else tmp_path / "store"
    with cache(spec) as c:
        yield c


def ours(seen: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in seen if issubclass(w.category, FlecheWarning)]


def quarantined(store: ObjectStore) -> int:
    return len(scan(store).quarantine)


def misname(c: Cache, f: Any, onto: Any, source: Any) -> None:
    """Copy the record of ``f(source)`` onto the name of ``f(onto)``, as ``cp`` would."""
    fid = f.__fleche__.function_id
    good, other = f.digest(onto), f.digest(source)
    if isinstance(c.store, LocalStore):
        root = Path(c.store.root) / "calls" / fid
        shutil.copyfile(root / other[:2] / other[2:], root / good[:2] / good[2:])
    else:
        c.store.put_call(fid, good, bytes(c.store.get_call(fid, other)))


# -- 1. a record is served only under its own name --------------------------------------------


@pytest.mark.loose_records  # its point is a record file under calls/
@pytest.mark.parametrize("size", ["inline", "object"])
def test_a_record_copied_onto_another_call_is_a_miss(active: Cache, size: str) -> None:
    calls: list[int] = []

    @fleche
    def h(x: int) -> Any:
        calls.append(x)
        return {"x": x} if size == "inline" else bytes([x]) * BIG

    def right(x: int) -> Any:
        return {"x": x} if size == "inline" else bytes([x]) * BIG

    h(1)
    h(2)
    misname(active, h, onto=1, source=2)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert h(1) == right(1)
    said = ours(seen)
    assert len(said) == 1 and "wrong name" in said[0], said
    assert calls == [1, 2, 1]
    assert quarantined(active.store) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert h(1) == right(1) and h(2) == right(2)
    assert calls == [1, 2, 1]


def _readers(h: Any, c: Cache) -> dict[str, Any]:
    fid = h.__fleche__.function_id

    def load() -> None:
        with pytest.raises(CacheMiss):
            h.load(1)

    def call() -> None:
        assert h.call(1).stored is False
        with pytest.raises(CacheMiss):
            _ = h.call(1).result

    def get_record() -> None:
        assert c.get_record(fid, h.digest(1)) is None
        assert c.get_record(fid, h.digest(1), lazy=True) is None

    def query() -> None:
        assert [k.arguments["x"] for k in h.query()] == [2]
        assert list(h.query(1)) == []

    def iter_records() -> None:
        assert [r["digest"] for r in c.iter_records(fid)] == [h.digest(2)]

    return {f.__name__: f for f in (load, call, get_record, query, iter_records)}


@pytest.mark.loose_records  # its point is a record file under calls/
@pytest.mark.parametrize("reader", ["load", "call", "get_record", "query", "iter_records"])
def test_every_reader_refuses_a_misnamed_record(active: Cache, reader: str) -> None:
    @fleche
    def h(x: int) -> int:
        return x * 10

    h(1)
    h(2)
    misname(active, h, onto=1, source=2)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _readers(h, active)[reader]()
    said = ours(seen)
    if reader == "query" and active.index is not None and not said:
        # the index noticed the changed file and left it out, as any unreadable record;
        # the next call reads it
        with pytest.warns(FlecheWarning, match="wrong name"):
            assert h(1) == 10
    else:
        assert len(said) == 1 and "wrong name" in said[0], said
        assert quarantined(active.store) == 1
    assert h(1) == 10 and h(2) == 20


def test_a_record_without_its_name_is_a_miss(active: Cache) -> None:
    @fleche
    def h(x: int) -> int:
        return x

    h(1)
    fid, key = h.__fleche__.function_id, h.digest(1)
    rec = active.get_record(fid, key)
    assert rec is not None
    for field in ("function", "digest"):
        damaged = dict(rec)
        del damaged[field]
        active.put_record(fid, key, damaged)
        with pytest.warns(FlecheWarning, match="wrong name"):
            assert active.get_record(fid, key) is None


def test_layered_cache_serves_the_good_copy_below_a_misnamed_one(tmp_path: Path) -> None:
    calls: list[int] = []

    @fleche
    def h(x: int) -> int:
        calls.append(x)
        return x * 10

    top, bottom = Cache("memory://"), Cache(tmp_path / "bottom")
    with cache(bottom):
        h(1)
    layered = LayeredCache([top, bottom])
    with cache(layered):
        h(2)  # into the top layer
        assert h(1) == 10  # copied up
    misname(top, h, onto=1, source=2)
    with cache(layered), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert h(1) == 10
    said = ours(seen)
    assert len(said) == 1 and "wrong name" in said[0], said
    assert calls == [1, 2]  # served by the bottom layer, not recomputed
    assert quarantined(top.store) == 1
    assert top.get_record(h.__fleche__.function_id, h.digest(1)) is not None  # copied up again


@pytest.mark.loose_records  # its point is a record file under calls/
def test_verify_reports_and_repairs_a_misnamed_record(active: Cache) -> None:
    @fleche
    def h(x: int) -> int:
        return x

    h(1)
    h(2)
    misname(active, h, onto=1, source=2)
    fid = h.__fleche__.function_id
    report = verify(active.store)
    assert [f.name for f in report.corrupt_records] == [f"{fid}/{h.digest(1)}"]
    assert "wrong name" in report.corrupt_records[0].reason
    verify(active.store, repair=True)
    assert verify(active.store).ok and quarantined(active.store) == 1


@pytest.mark.loose_records  # its point is a record file under calls/
def test_the_index_leaves_a_misnamed_record_out(tmp_path: Path) -> None:
    @fleche
    def h(x: int) -> int:
        return x

    with cache(tmp_path / "s") as c:
        h(1)
        h(2)
        misname(c, h, onto=1, source=2)
    fresh = Cache(tmp_path / "s", index=f"sqlite:///{tmp_path / 'fresh.db'}")
    assert fresh.index is not None
    report = fresh.index.rebuild(fresh.store)
    assert report.unreadable == 1 and report.added == 1


# -- 4. a mapped file is checked --------------------------------------------------------------


def noise(n: int, seed: int = 0) -> np.ndarray:
    """Random int64 over their whole range: incompressible, so stored raw and mapped."""
    return np.random.default_rng(seed).integers(-(2**63), 2**63 - 1, n, dtype=np.int64)


def _value(kind: str) -> Any:
    if kind == "numpy":
        return noise(100_000)
    if kind == "tree":
        return {"a": noise(10_000), "b": [noise(5_000, 1)], "n": 3}
    if kind == "member":  # a large member stored as an object of its own, and mapped
        return {"big": noise(SPLIT_MIN // 8 + 1), "n": 3}
    if kind == "arrow":
        return pd.DataFrame({"x": noise(100_000), "y": noise(100_000, 2)})
    raise AssertionError(kind)


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, pd.DataFrame):
        return bool(a.equals(b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, np.ndarray):
        return bool(np.array_equal(a, b))
    return bool(a == b)


def _objects(c: Cache, rec: dict[str, Any]) -> list[Path]:
    ref = rec["result"]
    oids = list(ref.get("children") or []) or [ref["oid"]]
    return [Path(str(c.store.local_path(o))) for o in oids]


def _flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # a payload byte: the header and the length still check
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("kind", ["numpy", "tree", "member", "arrow"])
def test_a_damaged_mapped_file_is_a_miss_and_recomputed(tmp_path: Path, kind: str) -> None:
    if kind == "arrow":
        pytest.importorskip("pyarrow")
    calls: list[str] = []

    @fleche(mmap=True)
    def make(k: str) -> Any:
        calls.append(k)
        return _value(k)

    with cache(tmp_path / "s") as c:
        make(kind)
        rec = c.get_record(make.__fleche__.function_id, make.digest(kind))
        assert rec is not None
        for path in _objects(c, rec):
            _flip_middle(path)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            got = make(kind)
        assert _equal(got, _value(kind))
        said = ours(seen)
        assert len(said) == 1 and "integrity" in said[0], said
        assert calls == [kind, kind]
        assert quarantined(c.store) >= 1
        assert _equal(make(kind), _value(kind)) and calls == [kind, kind]


def test_load_value_with_mmap_raises_on_a_damaged_file_and_moves_it_aside(tmp_path: Path) -> None:
    c = Cache(tmp_path / "s")
    ref = c.put_value(noise(100_000))
    path = Path(str(c.store.local_path(ref["oid"])))
    _flip_middle(path)
    with pytest.raises(CorruptObjectError, match="integrity"):
        c.load_value(ref, mmap=True)
    assert not path.exists() and quarantined(c.store) == 1


@pytest.mark.parametrize("mode", [True, "unverified"])
def test_a_mapped_file_under_another_objects_name_is_refused(tmp_path: Path, mode: Any) -> None:
    c = Cache(tmp_path / "s")
    a, b = c.put_value(noise(100_000)), c.put_value(noise(100_000, 1))
    shutil.copyfile(str(c.store.local_path(b["oid"])), str(c.store.local_path(a["oid"])))
    with pytest.raises(CorruptObjectError, match=f"not {a['oid']}"):
        c.load_value(a, mmap=mode)


def test_unverified_mmap_skips_only_the_hash(tmp_path: Path) -> None:
    """The documented opt-out: header, length and name are checked, the bytes are not read."""

    @fleche(mmap="unverified")
    def make(n: int) -> np.ndarray:
        return noise(n)

    with cache(tmp_path / "s") as c:
        a = make(100_000)
        rec = c.get_record(make.__fleche__.function_id, make.digest(100_000))
        assert rec is not None
        (path,) = _objects(c, rec)
        _flip_middle(path)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = make(100_000)
        assert not got.flags.writeable and not np.array_equal(got, a)  # what was asked for
        with pytest.raises(CorruptObjectError, match="integrity"):
            make.load(100_000, mmap=True)  # verified: the damage is seen


@pytest.mark.parametrize("bad", ["yes", "verified", 2, None, 1.0])
def test_the_mmap_option_is_validated(tmp_path: Path, bad: Any) -> None:
    with pytest.raises(ConfigError, match="mmap"):
        fleche(mmap=bad)(lambda x: x)

    @fleche
    def f(x: int) -> np.ndarray:
        return noise(x)

    with cache(tmp_path / "s") as c:
        f(10_000)
        with pytest.raises(ConfigError, match="mmap"):
            f.load(10_000, mmap=bad)
        rec = c.get_record(f.__fleche__.function_id, f.digest(10_000))
        assert rec is not None
        with pytest.raises(ConfigError, match="mmap"):
            c.load_value(rec["result"], mmap=bad)


# -- 8. a pickle that fails part way is unpickled once ----------------------------------------

REBUILT: list[int] = []
FAIL = [False]


class Fragile:
    """Rebuilt by :func:`_rebuild`, which counts its calls; the last member fails while FAIL."""

    def __init__(self, i: int, last: bool = False) -> None:
        self.i, self.last = i, last

    def __reduce__(self) -> Any:
        return _rebuild, (self.i, self.last)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Fragile) and other.i == self.i


def _rebuild(i: int, last: bool) -> Fragile:
    REBUILT.append(i)
    if last and FAIL[0]:
        raise RuntimeError("the constructor failed part way")
    return Fragile(i, last)


def fragile(size: str) -> list[Any]:
    out: list[Any] = [Fragile(0), Fragile(1), Fragile(2, last=True)]
    if size == "object":
        out.insert(0, np.random.default_rng(0).bytes(BIG))
    return out


@pytest.fixture
def failing() -> Iterator[list[int]]:
    REBUILT.clear()
    FAIL[0] = False
    yield REBUILT
    FAIL[0] = False


def _reloads(f: Any, size: str, failing: list[int], *, warns: bool = True) -> None:
    FAIL[0] = True
    failing.clear()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert f(size) == fragile(size)
    said = ours(seen)
    if warns:  # one warning per function and kind of fault
        assert len(said) == 1 and "part way" in said[0], said
    assert failing == [0, 1, 2], failing  # each constructor once: the load was not retried


@pytest.mark.parametrize("size", ["inline", "object"])
@pytest.mark.parametrize("single_flight", [False, True])
def test_a_failing_pickle_is_unpickled_once_per_call(
    active: Cache, size: str, single_flight: bool, failing: list[int]
) -> None:
    @fleche(single_flight=single_flight)
    def f(s: str) -> list[Any]:
        return fragile(s)

    f(size)
    _reloads(f, size, failing)


@pytest.mark.parametrize("size", ["inline", "object"])
def test_load_unpickles_a_failing_pickle_once(active: Cache, size: str, failing: list[int]) -> None:
    @fleche
    def f(s: str) -> list[Any]:
        return fragile(s)

    f(size)
    FAIL[0] = True
    failing.clear()
    with pytest.raises(CorruptObjectError, match="part way"):
        f.load(size)
    assert failing == [0, 1, 2]


def test_a_layered_cache_does_not_retry_a_failing_pickle_in_the_next_layer(
    tmp_path: Path, failing: list[int]
) -> None:
    @fleche
    def f(s: str) -> list[Any]:
        return fragile(s)

    layered = LayeredCache([Cache("memory://"), Cache(tmp_path / "b")], write="through")
    with cache(layered):
        f("object")  # its object in both layers
        _reloads(f, "object", failing)


def test_a_read_only_store_unpickles_a_failing_pickle_once_per_call(
    tmp_path: Path, failing: list[int]
) -> None:
    @fleche
    def f(s: str) -> list[Any]:
        return fragile(s)

    with cache(tmp_path / "s"):
        f("inline")
        f("object")
    with cache(open_store(tmp_path / "s", read_only=True)):
        for size in ("inline", "object"):
            _reloads(f, size, failing, warns=size == "inline")
            _reloads(f, size, failing, warns=False)  # nothing could be moved aside: once a call


def _stored_then_failing(failing: list[int]) -> Any:
    """A cached function whose stored "inline" result now fails part way through unpickling."""

    @fleche
    def f(s: str) -> list[Any]:
        return fragile(s)

    f("inline")
    FAIL[0] = True
    failing.clear()
    return f


def test_an_executor_does_not_unpickle_again_in_its_worker(
    active: Cache, failing: list[int]
) -> None:
    f = _stored_then_failing(failing)
    with ThreadPoolExecutor(1) as pool, pytest.warns(FlecheWarning, match="part way"):
        wrap_executor(pool)
        assert pool.submit(f, "inline").result() == fragile("inline")
    assert failing == [0, 1, 2], failing


def test_an_executor_map_does_not_unpickle_again_in_its_worker(
    active: Cache, failing: list[int]
) -> None:
    f = _stored_then_failing(failing)
    with ThreadPoolExecutor(1) as pool, pytest.warns(FlecheWarning, match="part way"):
        got = executor_map(f, ["inline", "inline"], executor=pool, progress=False)
    assert got == [fragile("inline")] * 2
    assert failing == [0, 1, 2], failing  # probed once; the twin shares the one computation


def test_a_damaged_member_fails_before_its_pickle_is_decoded(
    tmp_path: Path, failing: list[int]
) -> None:
    """A layered cache serves the good copy below without running the constructors twice."""
    member = np.random.default_rng(0).random(SPLIT_MIN // 8 + 1)  # an object of its own
    calls: list[str] = []

    @fleche
    def f(s: str) -> list[Any]:
        calls.append(s)
        return [*fragile("inline"), member]

    top = Cache(tmp_path / "top")
    with cache(LayeredCache([top, Cache(tmp_path / "bottom")], write="through")):
        f("x")
        rec = top.get_record(f.__fleche__.function_id, f.digest("x"))
        assert rec is not None
        (child,) = rec["result"]["children"]
        path = Path(str(top.store.local_path(child)))
        data = bytearray(path.read_bytes())
        data[-1] ^= 0x01
        path.write_bytes(bytes(data))
        failing.clear()
        with pytest.warns(FlecheWarning, match="integrity check.*from layer 2"):
            got = f("x")
    assert got[:3] == fragile("inline") and np.array_equal(got[3], member)
    assert calls == ["x"]  # served by the bottom layer
    assert failing == [0, 1, 2], failing
