"""Store conformance, the store as a whole: read-only handles and ``fleche.json``.

Part of :class:`fleche.testing.StoreConformance`; see :mod:`fleche.testing`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime

import pytest

from fleche._version import __version__
from fleche.errors import CacheMiss, ReadOnlyStoreError, StoreFormatError
from fleche.store import ObjectStore
from fleche.testing._base import FID, ConformanceBase, digest_of


class FormatConformance(ConformanceBase):
    """Read-only handles write nothing; the format marker is written once and checked on open."""

    # -- read-only -------------------------------------------------------------------

    def test_read_only_reads_but_refuses_writes(self, store: ObjectStore) -> None:
        oid = store.put(b"shared")
        digest = digest_of("ro")
        store.put_call(FID, digest, b"record")
        ro = self.reopen(store, read_only=True)
        assert ro.read_only
        assert ro.get(oid) == b"shared"
        assert ro.get_call(FID, digest) == b"record"
        assert list(ro.iter_oids()) == [oid]
        writes: list[Callable[[], object]] = [
            lambda: ro.put(b"new"),
            lambda: ro.put(b"shared"),  # even when it exists: the caller asked to write
            lambda: ro.delete(oid),
            lambda: ro.put_call(FID, digest, b"new"),
            lambda: ro.delete_call(FID, digest),
        ]
        for write in writes:
            with pytest.raises(ReadOnlyStoreError) as info:
                write()
            assert ro.url in str(info.value)
        ro.quarantine(oid)  # does nothing on a read-only store
        ro.quarantine(function_id=FID, digest=digest)
        assert store.get(oid) == b"shared"
        assert store.get_call(FID, digest) == b"record"

    def test_read_only_on_an_empty_root_writes_nothing(self, store: ObjectStore) -> None:
        ro = self.reopen(store, read_only=True)
        assert not ro.exists(digest_of(0))
        with pytest.raises(CacheMiss):
            ro.get_call(FID, digest_of(0))
        assert list(ro.iter_oids()) == []
        assert list(ro.iter_calls()) == []
        assert ro.info() == {}
        assert not self.raw_files(store, "")

    # -- fleche.json -----------------------------------------------------------------

    def test_marker_written_at_first_write_only(self, store: ObjectStore) -> None:
        assert not store.has_call(FID, digest_of(1))
        with pytest.raises(CacheMiss):
            store.get(digest_of(1))
        assert not self.raw_exists(store, "fleche.json")  # reads never write
        store.put(b"first")
        raw = store.fs.cat_file(self.raw_path(store, "fleche.json"))
        marker = json.loads(raw)
        assert marker["format"] == 1
        assert marker["digest"] == "xxh3-128"
        assert marker["fleche"] == __version__
        datetime.fromisoformat(marker["created"])
        assert store.info() == marker

    def test_marker_is_create_only(self, store: ObjectStore) -> None:
        store.put(b"first")
        marker = store.info()
        self.write_raw(store, "fleche.json", json.dumps({**marker, "note": "keep"}).encode())
        other = self.reopen(store)
        other.put(b"second")
        other.put_call(FID, digest_of(2), b"r")
        assert other.info()["note"] == "keep"
        assert json.loads(store.fs.cat_file(self.raw_path(store, "fleche.json")))["note"] == "keep"

    def test_info_creates_the_marker(self, store: ObjectStore) -> None:
        assert store.info()["format"] == 1
        assert self.raw_exists(store, "fleche.json")
        assert self.reopen(store, read_only=True).info() == store.info()

    def test_newer_format_refused(self, store: ObjectStore) -> None:
        store.put(b"x")
        self.write_raw(
            store, "fleche.json", json.dumps({"format": 2, "digest": "xxh3-128"}).encode()
        )
        for read_only in (False, True):
            with pytest.raises(StoreFormatError, match="upgrade fleche") as info:
                self.reopen(store, read_only=read_only)
            assert "format 2" in str(info.value) and "format 1" in str(info.value)

    @pytest.mark.parametrize(
        "raw", [b"{not json", b"[]", b'{"format": "1"}', b'{"digest": "xxh3-128"}', b"\xff"]
    )
    def test_malformed_marker_refused(self, store: ObjectStore, raw: bytes) -> None:
        self.write_raw(store, "fleche.json", raw)
        with pytest.raises(StoreFormatError, match=r"fleche\.json"):
            self.reopen(store)

    def test_other_digest_refused(self, store: ObjectStore) -> None:
        self.write_raw(store, "fleche.json", b'{"format": 1, "digest": "sha256"}')
        with pytest.raises(StoreFormatError, match="sha256"):
            self.reopen(store)

    def test_hot_path_touches_one_file(self, store: ObjectStore) -> None:
        digest = digest_of("hot")
        store.put_call(FID, digest, b"warm")
        counts: dict[str, int] = {}
        for name in ("_read", "_write", "_write_new", "_exists", "_ensure_dir"):
            original = getattr(store, name)

            def counted(
                *args: object, _name: str = name, _original: Callable[..., object] = original
            ) -> object:
                counts[_name] = counts.get(_name, 0) + 1
                return _original(*args)

            setattr(store, name, counted)
        for _ in range(3):
            assert store.get_call(FID, digest) == b"warm"
        assert counts == {"_read": 3}  # no marker read, no stat
        counts.clear()
        for _ in range(3):
            store.put_call(FID, digest, b"again")
        assert counts.get("_write") == 3 and "_read" not in counts and "_write_new" not in counts
