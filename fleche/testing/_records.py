"""Store conformance, call records and names: records round trip, list, and bad names are refused.

Part of :class:`fleche.testing.StoreConformance`; see :mod:`fleche.testing`.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fleche.errors import CacheMiss
from fleche.store import ObjectStore
from fleche.testing._base import FID, ConformanceBase, digest_of

BAD_OIDS = [
    "",
    "abc",
    "0" * 31,
    "0" * 33,
    "A" * 32,
    "g" * 32,
    "../" + "0" * 29,
    "0" * 30 + "/x",
    " " + "0" * 31,
    123,
]
BAD_FUNCTION_IDS = ["", ".hidden", "..", "a/b", "a\\b", "a b", "x" * 201, "é", "a\x00b", 42]


class RecordConformance(ConformanceBase):
    """Call records (mutable, replaced whole) and the validation of every oid and function id."""

    # -- call records --------------------------------------------------------------

    def test_call_round_trip_and_replace(self, store: ObjectStore) -> None:
        digest = digest_of("call")
        assert not store.has_call(FID, digest)
        store.put_call(FID, digest, b"record v1")
        assert store.has_call(FID, digest)
        assert store.get_call(FID, digest) == b"record v1"
        store.put_call(FID, digest, b"record v2, longer")  # a rerun replaces the record
        assert store.get_call(FID, digest) == b"record v2, longer"
        assert list(store.iter_calls()) == [(FID, digest)]

    def test_get_call_missing_is_a_cache_miss(self, store: ObjectStore) -> None:
        digest = digest_of("no such call")
        with pytest.raises(CacheMiss) as info:
            store.get_call(FID, digest)
        assert isinstance(info.value, KeyError)
        assert FID in str(info.value) and digest in str(info.value)
        assert store.url in str(info.value)

    def test_find_call_is_none_on_a_miss(self, store: ObjectStore) -> None:
        digest = digest_of("find me")
        assert store.find_call(FID, digest) is None
        store.put_call(FID, digest, b"found")
        assert bytes(store.find_call(FID, digest) or b"") == b"found"

    def test_delete_call(self, store: ObjectStore) -> None:
        digest = digest_of("delete me")
        store.put_call(FID, digest, b"r")
        store.delete_call(FID, digest)
        assert not store.has_call(FID, digest)
        with pytest.raises(CacheMiss):
            store.get_call(FID, digest)
        store.delete_call(FID, digest)  # already gone: not an error

    def test_iter_calls_and_functions(self, store: ObjectStore) -> None:
        assert list(store.iter_functions()) == []
        assert list(store.iter_calls()) == []
        assert list(store.iter_calls("never.called")) == []
        calls = {("mod.f", digest_of(i)) for i in range(5)} | {("mod.g", digest_of("g"))}
        for fid, digest in calls:
            store.put_call(fid, digest, fid.encode())
        assert set(store.iter_functions()) == {"mod.f", "mod.g"}
        assert set(store.iter_calls()) == calls
        assert set(store.iter_calls("mod.g")) == {("mod.g", digest_of("g"))}
        assert len(list(store.iter_calls("mod.f"))) == 5

    def test_calls_and_objects_are_separate_namespaces(self, store: ObjectStore) -> None:
        oid = store.put(b"value")
        store.put_call(FID, oid, b"record")
        assert store.get(oid) == b"value"
        assert store.get_call(FID, oid) == b"record"
        assert list(store.iter_oids()) == [oid]

    def test_listing_skips_foreign_files(self, store: ObjectStore) -> None:
        oid = store.put(b"real")
        digest = digest_of("real call")
        store.put_call(FID, digest, b"real")
        junk = [
            "objects/zz/" + "0" * 30,
            "objects/ab/" + "0" * 29,
            "objects/ab/cd/" + "0" * 30,
            "objects/" + "0" * 32,
            "objects/ab/" + "0" * 30 + ".partial",
            "objects/AB/" + "0" * 30,
            "objects/README",
            "tmp/" + "0" * 32,
            "calls/.hidden/ab/" + "0" * 30,
            "calls/bad name/ab/" + "0" * 30,
            f"calls/{FID}/ab/" + "x" * 30,
        ]
        for rel in junk:
            self.write_raw(store, rel, b"junk")
        assert list(store.iter_oids()) == [oid]
        assert list(store.iter_functions()) == [FID]
        assert list(store.iter_calls()) == [(FID, digest)]

    # -- validation ----------------------------------------------------------------

    @pytest.mark.parametrize("bad", BAD_OIDS, ids=repr)
    def test_invalid_oid_is_a_value_error_naming_it(self, store: ObjectStore, bad: str) -> None:
        calls: list[Callable[[], object]] = [
            lambda: store.get(bad),
            lambda: store.exists(bad),
            lambda: store.delete(bad),
            lambda: store.size(bad),
            lambda: store.local_path(bad),
            lambda: store.put(b"x", oid=bad),
            lambda: store.quarantine(bad),
            lambda: store.get_call(FID, bad),
            lambda: store.has_call(FID, bad),
            lambda: store.put_call(FID, bad, b"x"),
            lambda: store.delete_call(FID, bad),
            lambda: store.quarantine(function_id=FID, digest=bad),
        ]
        for call in calls:
            with pytest.raises(ValueError, match="32 lowercase hex") as info:
                call()
            assert repr(bad) in str(info.value)
        assert not self.raw_files(store, "")

    @pytest.mark.parametrize("bad", BAD_FUNCTION_IDS, ids=repr)
    def test_invalid_function_id_is_a_value_error_naming_it(
        self, store: ObjectStore, bad: str
    ) -> None:
        digest = digest_of("x")
        calls: list[Callable[[], object]] = [
            lambda: store.put_call(bad, digest, b"x"),
            lambda: store.get_call(bad, digest),
            lambda: store.has_call(bad, digest),
            lambda: store.delete_call(bad, digest),
            lambda: list(store.iter_calls(bad)),
            lambda: store.quarantine(function_id=bad, digest=digest),
        ]
        for call in calls:
            with pytest.raises(ValueError, match="function id") as info:
                call()
            assert repr(bad) in str(info.value)

    def test_quarantine_needs_one_target(self, store: ObjectStore) -> None:
        with pytest.raises(ValueError):
            store.quarantine()
        with pytest.raises(ValueError):
            store.quarantine(digest_of(1), function_id=FID, digest=digest_of(2))
        with pytest.raises(ValueError):
            store.quarantine(function_id=FID)
