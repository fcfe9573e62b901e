"""Listings answered from the index: ``list(f.query())`` and ``.table()`` build calls from the
catalogue without reading records, exactly as reading them would, and never give a wrong value.

The catalogue holds plain arguments (int, float, str, bool, None), the version, the
metadata, module, qualname and code digest of every call; a call with any other
argument is read from the store. ``result`` and ``record`` are always the store's.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fleche import Cache, cache, fleche, tags
from fleche.errors import CallNotStored
from fleche.records import ListedCall
from fleche.store import LocalStore


@fleche
def plain(a, b=0.5, c="x", d=None, e=True):
    return [a, b, c, d, e]


@fleche(version="v2")
def versioned(z, y):
    return z - y


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Keys of every record file read from a local store from now on."""
    read: list[str] = []
    real = LocalStore.find_call

    def counting(self: LocalStore, fid: str, key: str) -> Any:
        read.append(key)
        return real(self, fid, key)

    monkeypatch.setattr(LocalStore, "find_call", counting)
    return read


ODD = [
    (0, 0.0, "", None, True),
    (1, -0.0, "é ü \U0001f600", False, False),  # -0.0: SQLite keeps it as 0
    (-(2**63), math.inf, "long " * 20, 3, None),
    (5, 0.75, "\ud800", None, None),  # a lone surrogate: kept by reference, read
    (2**63, 1e-300, "x", 2.5, True),  # beyond int64: not in a typed column, read
    (7, math.nan, "y", None, True),  # NaN: not in a typed column, read
    (8, 0.25, "z", [1, 2], True),  # a list: read
    (9, 0.5, "w", np.arange(3.0), True),  # an array (by digest or reference): read
]


def _fields(call: Any) -> tuple[Any, ...]:
    return (
        call.name,
        call.module,
        repr(call.version),
        call.digest,
        call.function_id,
        call.code_digest,
        repr(dict(call.metadata)),
        repr(call.arguments),
        list(call.arguments),
    )


def test_a_listing_reads_no_record_and_gives_what_reading_them_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with cache(Cache(tmp_path / "store")), tags(project="p", n=1.5):
        for args in ODD:
            plain(*args)
        versioned(3, 1)
        versioned(y=1, z=4)  # the record keeps the signature's order
        assert plain.query().count() == len(ODD)  # caught up
        assert versioned.query().count() == 2
        read = _count_reads(monkeypatch)
        listed = list(plain.query()) + list(versioned.query())
        from_index = [c for c in listed if isinstance(c, ListedCall)]
        # the calls with plain values only (3 of ODD, and NaN's: the row keeps the record's
        # bytes of plain arguments; both versioned ones) came from the index
        assert sorted(c.arguments["a"] for c in from_index if c.name == "plain") == [
            -(2**63),
            0,
            1,
            7,
        ]
        assert len(from_index) == 6
        assert len(read) == len(listed) - len(from_index)  # only the others were read
        read.clear()
        verified = list(plain.query().calls(verify=True)) + list(
            versioned.query().calls(verify=True)
        )
        assert len(read) == len(verified)
        assert [_fields(c) for c in listed] == [_fields(c) for c in verified]
        read.clear()
        # values come from the store, when asked for, as the record's
        for c, v in zip(listed, verified, strict=True):
            nan = any(type(x) is float and math.isnan(x) for x in c.arguments.values())
            if isinstance(c, ListedCall) and not nan:  # NaN equals nothing, nor a call with one
                assert c == v and v == c  # a ListedCall equals the Call its record gives
            assert repr(c.result) == repr(v.result)
            assert repr(c.record) == repr(v.record)
        assert len(read) == len(from_index)  # one record read per ListedCall touched
        assert listed[0] != listed[1] and listed[0] != "a call"


def test_minus_zero_comes_back_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with cache(Cache(tmp_path / "store")):
        plain(1, -0.0)
        plain(2, 0.0)
        plain(3, 0)
        plain.query().count()  # caught up
        read = _count_reads(monkeypatch)
        calls = {c.arguments["a"]: c for c in plain.query()}
        assert read == []
        assert math.copysign(1, calls[1].arguments["b"]) == -1.0
        assert math.copysign(1, calls[2].arguments["b"]) == 1.0
        assert type(calls[2].arguments["b"]) is float and type(calls[3].arguments["b"]) is int


def test_a_value_changed_under_the_index_is_never_returned_wrong(tmp_path: Path) -> None:
    c = Cache(tmp_path / "store")
    with cache(c):
        plain(1)
        plain(2)
        plain.query().count()
        listed = {call.arguments["a"]: call for call in plain.query()}
        assert all(isinstance(call, ListedCall) for call in listed.values())
        # after the listing: call 1's record is rewritten with another result (what a
        # rerun by another process does), and call 2 is evicted
        rec = c.get_record(listed[1].function_id, listed[1].digest)
        assert rec is not None
        rec["result"] = c.put_value("rewritten")
        c.put_record(listed[1].function_id, listed[1].digest, rec)
        c.delete_record(listed[1].function_id, listed[2].digest)
        assert listed[1].result == "rewritten"  # the store's value, not the one listed
        with pytest.raises(CallNotStored, match="gone from the store"):
            _ = listed[2].result
        with pytest.raises(CallNotStored):
            _ = listed[2].record


def test_table_answers_from_the_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pandas")
    with cache(Cache(tmp_path / "store")), tags(run=1):
        for i in range(5):
            plain(i, c=f"s{i}")
        plain(9, b=np.arange(4.0))  # read from the store
        plain.query().count()
        read = _count_reads(monkeypatch)
        df = plain.query().table()
        assert len(read) == 1
        read.clear()
        ref = plain.query().table(verify=True)
        assert len(read) == 6
    assert list(df.columns) == list(ref.columns)
    assert df.drop(columns=["b"]).equals(ref.drop(columns=["b"]))
    assert [repr(x) for x in df["b"]] == [repr(x) for x in ref["b"]]


def test_a_signed_cache_lists_from_its_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The catalogue is not signed: a signed cache's calls are read, and their signatures checked."""
    with cache(Cache(tmp_path / "store", secret_key="k" * 32)):
        plain(1)
        plain.query().count()
        read = _count_reads(monkeypatch)
        (call,) = plain.query()
        assert not isinstance(call, ListedCall) and len(read) == 1


def test_nested_shared_metadata_is_listed_exactly_and_each_call_owns_its_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Metadata that calls share with maps and lists inside (a ``git`` map, say) is built
    from the index, equal to the records', and one call's copy is not another's."""
    c = Cache(tmp_path / "store")
    cfg = {"a": [1, {"b": 2.5}], "c": "x"}
    with cache(c):
        for a in range(3):
            plain(a)
        for call in list(plain.query().calls(verify=True)):  # as a provider of maps writes them
            rec = c.get_record(call.function_id, call.digest)
            assert rec is not None
            rec["metadata"]["cfg"] = cfg
            c.put_record(call.function_id, call.digest, rec)
        plain.query().count()  # caught up
        read = _count_reads(monkeypatch)
        listed = list(plain.query())
        assert read == [] and all(isinstance(call, ListedCall) for call in listed)
        verified = list(plain.query().calls(verify=True))
        assert [_fields(call) for call in listed] == [_fields(call) for call in verified]
        assert listed[0].metadata["cfg"] == cfg
        listed[0].metadata["cfg"]["a"][1]["b"] = "changed"
        listed[0].metadata["cfg"]["a"].append(3)
        assert listed[1].metadata["cfg"] == cfg
        assert [_fields(call) for call in plain.query()] == [_fields(call) for call in verified]


def test_plain_arguments_are_listed_with_their_exact_types_and_found_by_equality(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The row's copy of the plain arguments gives back 1, 1.0 and True, 0 and -0.0, long
    strs and NaN as the record holds them; queries on them still tell them apart."""
    values = [1, 1.0, True, 0, -0.0, 0.0, False, "s" * 100, math.nan, None, 2**62]
    with cache(Cache(tmp_path / "store")):
        for v in values:
            plain(v)
        plain.query().count()  # caught up
        read = _count_reads(monkeypatch)
        listed = list(plain.query())
        assert read == [] and all(isinstance(c, ListedCall) for c in listed)
        got = sorted(repr((type(c.arguments["a"]), c.arguments["a"])) for c in listed)
        assert got == sorted(repr((type(v), v)) for v in values)
        verified = list(plain.query().calls(verify=True))
        assert [_fields(c) for c in listed] == [_fields(c) for c in verified]
        for v in values:
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue  # a=None asks nothing of a; NaN equals nothing
            found = [c.arguments["a"] for c in plain.query(a=v)]
            assert [repr((type(x), x)) for x in found] == [repr((type(v), v))]


def test_a_listed_call_is_built_field_by_field_and_behaves_as_a_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each field of a listed call is read from its catalogue row when first asked for and
    kept: set, fetched and copied as a :class:`Call`'s, and one call's values are its own."""
    import copy

    with cache(Cache(tmp_path / "store")), tags(run=1):
        plain(1)
        plain(2, c="y")
        plain.query().count()  # caught up
        read = _count_reads(monkeypatch)
        first, second = plain.query()
        assert isinstance(first, ListedCall) and read == []
        assert (first.arguments, second.arguments["c"]) == (
            {"a": 2, "b": 0.5, "c": "y", "d": None, "e": True},
            "x",
        )
        first.metadata["tags"]["run"] = 2  # its own copy: the next listing is the catalogue's
        assert next(iter(plain.query())).metadata["tags"] == {"run": 1}
        first.metadata = {"set": True}  # a field takes an assignment, as Call's does
        assert first.metadata == {"set": True}
        same = copy.copy(second)
        assert same.arguments == second.arguments and same.digest == second.digest
        assert read == []
        assert second.fetch() is second and len(read) == 1
        assert copy.copy(second).result == [1, 0.5, "x", None, True] and len(read) == 1
        assert same == second and len(read) == 2  # equality compares the records
        assert "digest=" in repr(same) and same.digest == second.digest


def test_a_catalogue_row_that_cannot_be_decoded_gives_the_records_values(
    tmp_path: Path,
) -> None:
    """Plain arguments or metadata the row does not give back exactly (a damaged row) are
    the record's: read from the store when the field is first used, never a wrong value."""
    import sqlite3

    c = Cache(tmp_path / "store")
    with cache(c):
        plain(1, c="z")
        plain(2)
        plain.query().count()  # caught up
        assert c.index is not None
        c.index.close()
        with sqlite3.connect(c.index.location) as con:
            con.execute("UPDATE fleche_calls SET args = x'c1', metadata = '[1]'")
        listed = sorted(plain.query(), key=lambda call: call.digest)
        verified = sorted(plain.query().calls(verify=True), key=lambda call: call.digest)
        assert [_fields(call) for call in listed] == [_fields(call) for call in verified]
        assert sorted(call.arguments["a"] for call in listed) == [1, 2]


def test_a_catalogue_failing_midway_through_a_listing_gives_each_call_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages given before a fault are not given again by the store's scan that follows it."""
    import sqlite3
    import warnings

    from fleche.index import SqliteDb
    from fleche.index import _index as index_module

    monkeypatch.setattr(index_module, "PAGE", 2)
    monkeypatch.setattr(index_module, "PAGE_MAX", 2, raising=False)
    with cache(Cache(tmp_path / "store")):
        for a in range(7):
            plain(a)
        assert plain.query().count() == 7  # caught up
        real, reads = SqliteDb.read, []

        def failing(self: SqliteDb, sql: str, params: Any = None) -> Any:
            if "ORDER BY c.created" in sql:
                reads.append(sql)
                if len(reads) > 1:  # the second page of calls
                    raise sqlite3.OperationalError("disk I/O error")
            return real(self, sql, params)

        monkeypatch.setattr(SqliteDb, "read", failing)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            listed = list(plain.query())
        assert sorted(call.arguments["a"] for call in listed) == list(range(7))
        assert sum(isinstance(call, ListedCall) for call in listed) == 2  # the first page
