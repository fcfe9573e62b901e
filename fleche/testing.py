"""The behaviour every ``ObjectStore`` backend must have, as one reusable pytest class.

A backend's test module subclasses ``StoreConformance`` and supplies a fresh,
empty, writable store::

    class TestS3Store(StoreConformance):
        @pytest.fixture
        def store(self, s3_server):
            return open_store(f"s3://bucket/{uuid4().hex}", endpoint_url=s3_server)

Override ``reopen`` when a second handle on the same root needs more than
``ObjectStore(store.fs, store.root)``. The tests reach into the store's files
only through ``store.fs`` and ``store.root``, so they run unchanged on any
fsspec filesystem. Requires pytest and hypothesis (the ``tests`` extra).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from typing import Any

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleche._version import __version__
from fleche.errors import CacheMiss, ReadOnlyStoreError, StoreFormatError
from fleche.store import BytesLike, ObjectStore

__all__ = ["StoreConformance", "digest_of"]

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
FID = "pkg.module.simulate"


def digest_of(value: object) -> str:
    """A valid 32-hex digest, deterministic in ``value``."""
    return xxhash.xxh3_128_hexdigest(repr(value).encode())


class StoreConformance:
    """Every behavioural test of the store API, once; subclasses provide ``store``."""

    @pytest.fixture
    def store(self) -> ObjectStore:
        raise NotImplementedError("a StoreConformance subclass must define a `store` fixture")

    def reopen(self, store: ObjectStore, *, read_only: bool = False) -> ObjectStore:
        """A second, independent handle on ``store``'s root."""
        return ObjectStore(store.fs, store.root, read_only=read_only, durable=store.durable)

    # -- raw access to the files, bypassing the store ------------------------

    @staticmethod
    def raw_path(store: ObjectStore, rel: str) -> str:
        return f"{store.root}/{rel}"

    def write_raw(self, store: ObjectStore, rel: str, data: bytes) -> None:
        path = self.raw_path(store, rel)
        store.fs.makedirs(path.rpartition("/")[0], exist_ok=True)
        store.fs.pipe_file(path, data)

    def raw_exists(self, store: ObjectStore, rel: str) -> bool:
        try:
            store.fs.info(self.raw_path(store, rel))
        except FileNotFoundError:
            return False
        return True

    def raw_files(self, store: ObjectStore, rel: str) -> list[str]:
        try:
            return list(store.fs.find(self.raw_path(store, rel)))
        except FileNotFoundError:
            return []

    # -- values ----------------------------------------------------------------

    def test_put_get_round_trip(self, store: ObjectStore) -> None:
        oid = store.put(b"hello")
        assert oid == xxhash.xxh3_128_hexdigest(b"hello")
        assert store.get(oid) == b"hello"
        assert store.exists(oid)
        assert store.size(oid) == 5

    @pytest.mark.parametrize("kind", [bytearray, memoryview])
    def test_put_accepts_buffers(self, store: ObjectStore, kind: type) -> None:
        oid = store.put(kind(b"buffer"))
        assert oid == xxhash.xxh3_128_hexdigest(b"buffer")
        assert store.get(oid) == b"buffer"

    def test_put_parts_written_back_to_back(self, store: ObjectStore) -> None:
        parts: list[BytesLike] = [b"head:", bytearray(b"middle:"), memoryview(b"..tail")[2:], b""]
        oid = store.put(parts)
        assert oid == xxhash.xxh3_128_hexdigest(b"head:middle:tail")
        assert store.get(oid) == b"head:middle:tail"

    def test_put_does_not_keep_a_reference_to_a_mutable_buffer(self, store: ObjectStore) -> None:
        buf = bytearray(b"before")
        oid = store.put(buf)
        buf[:] = b"after!"
        assert store.get(oid) == b"before"

    def test_put_empty_value(self, store: ObjectStore) -> None:
        oid = store.put(b"")
        assert store.get(oid) == b""
        assert store.size(oid) == 0
        assert store.put([]) == oid

    def test_put_with_given_oid(self, store: ObjectStore) -> None:
        oid = digest_of("given")
        assert store.put(b"payload", oid=oid) == oid
        assert store.get(oid) == b"payload"

    def test_put_is_idempotent_and_objects_immutable(self, store: ObjectStore) -> None:
        oid = digest_of("immutable")
        assert store.put(b"first", oid=oid) == oid
        assert store.put(b"second", oid=oid) == oid  # exists: nothing written
        assert store.get(oid) == b"first"
        assert list(store.iter_oids()) == [oid]

    def test_put_rejects_str(self, store: ObjectStore) -> None:
        with pytest.raises(TypeError):
            store.put("text")  # type: ignore[arg-type]

    def test_get_missing_is_a_cache_miss_naming_oid_and_store(self, store: ObjectStore) -> None:
        oid = digest_of("absent")
        with pytest.raises(CacheMiss) as info:
            store.get(oid)
        assert isinstance(info.value, KeyError)
        assert oid in str(info.value)
        assert store.url in str(info.value)
        with pytest.raises(CacheMiss, match=oid):
            store.size(oid)
        assert not store.exists(oid)

    def test_delete(self, store: ObjectStore) -> None:
        oid = store.put(b"doomed")
        store.delete(oid)
        assert not store.exists(oid)
        with pytest.raises(CacheMiss):
            store.get(oid)
        store.delete(oid)  # already gone: not an error
        assert store.put(b"doomed") == oid  # and it can come back
        assert store.get(oid) == b"doomed"

    def test_iter_oids(self, store: ObjectStore) -> None:
        assert list(store.iter_oids()) == []
        oids = {store.put(str(i).encode()) for i in range(20)}
        assert set(store.iter_oids()) == oids
        assert sorted(store.iter_oids()) == sorted(oids)  # no duplicates

    def test_local_path_is_none_or_the_object_file(self, store: ObjectStore) -> None:
        oid = store.put(b"on disk?")
        path = store.local_path(oid)
        if path is not None:
            with open(path, "rb") as f:
                assert f.read() == b"on disk?"

    # One inherited test runs in several classes (differing executors) on a store
    # shared by all examples (function-scoped fixture): both are fine for
    # content-addressed puts, where every example is independent of the others.
    @settings(
        max_examples=30,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.differing_executors,
        ],
    )
    @given(parts=st.lists(st.binary(max_size=300), max_size=5))
    def test_put_parts_property(self, store: ObjectStore, parts: list[bytes]) -> None:
        joined = b"".join(parts)
        oid = store.put(parts)
        assert oid == xxhash.xxh3_128_hexdigest(joined)
        assert store.get(oid) == joined

    def test_large_value(self, store: ObjectStore) -> None:
        data = os.urandom(20 * 2**20)
        view = memoryview(data)
        oid = store.put([view[: 7 * 2**20], view[7 * 2**20 : 13 * 2**20], view[13 * 2**20 :]])
        assert oid == xxhash.xxh3_128_hexdigest(data)
        assert store.size(oid) == len(data)
        assert store.get(oid) == data

    # -- streaming: put_stream / open_read ----------------------------------------

    def test_put_stream_round_trip(self, store: ObjectStore) -> None:
        # over 16 MiB, so S3 sends more than one part; chunks of odd sizes, one empty
        chunks = [os.urandom(3 << 20), b"", os.urandom((15 << 20) + 7), os.urandom(1000)]
        data = b"".join(chunks)
        oid = xxhash.xxh3_128_hexdigest(data)
        consumed: list[int] = []

        def produce() -> Iterator[bytes]:
            for i, c in enumerate(chunks):
                consumed.append(i)
                yield c

        assert store.put_stream(produce(), oid=oid) == oid
        assert consumed == [0, 1, 2, 3]
        assert store.size(oid) == len(data)
        assert store.get(oid) == data
        with store.open_read(oid) as f:
            got = bytearray()
            while piece := f.read(1 << 20):
                got += piece
        assert got == data
        with store.open_read(oid) as f:
            buf = bytearray(len(data))
            view, n = memoryview(buf), 0
            while n < len(buf) and (k := f.readinto(view[n : n + (3 << 20)])):
                n += k
            assert n == len(data) and buf == data
            assert f.read(1) == b""

    def test_put_stream_small_and_empty(self, store: ObjectStore) -> None:
        chunks: list[BytesLike] = [b"a", memoryview(b"bc"), bytearray(b"d")]
        oid = store.put_stream(iter(chunks), oid=digest_of("s"))
        assert store.get(oid) == b"abcd"
        empty = store.put_stream(iter([]), oid=digest_of("empty"))
        assert store.get(empty) == b""
        with store.open_read(empty) as f:
            assert f.read() == b""

    def test_put_stream_keeps_an_existing_object(self, store: ObjectStore) -> None:
        oid = digest_of("first")
        store.put(b"first", oid=oid)
        store.put_stream(iter([b"second"]), oid=oid)
        assert store.get(oid) == b"first"

    def test_put_stream_failure_leaves_no_object(self, store: ObjectStore) -> None:
        oid = digest_of("broken stream")

        def produce() -> Iterator[bytes]:
            yield os.urandom(1 << 20)
            raise RuntimeError("the producer failed")

        with pytest.raises(RuntimeError, match="producer failed"):
            store.put_stream(produce(), oid=oid)
        assert not store.exists(oid)
        with pytest.raises(CacheMiss):
            store.get(oid)

    # -- put_later: the name arrives while the bytes are written --------------------

    @staticmethod
    def _named_later(
        head: bytes, body: bytes, tail: bytes = b""
    ) -> tuple[Future[tuple[str, bytes, bytes]], str]:
        name: Future[tuple[str, bytes, bytes]] = Future()
        oid = xxhash.xxh3_128_hexdigest(head + body + tail)
        threading.Timer(0.01, name.set_result, ((oid, head, tail),)).start()
        return name, oid

    def test_put_later_writes_header_first_in_the_file(self, store: ObjectStore) -> None:
        head, body, tail = os.urandom(32), os.urandom((17 << 20) + 5), os.urandom(32)
        name, oid = self._named_later(head, body, tail)
        view = memoryview(body)
        assert store.put_later(name, [view[:100], view[100:]], header_size=32) == oid
        assert store.get(oid) == head + body + tail
        name, oid = self._named_later(os.urandom(32), b"no trailer")
        store.put_later(name, [b"no trailer"], header_size=32)
        assert bytes(store.get(oid)).endswith(b"no trailer")

    def test_put_produced_writes_what_produce_writes(self, store: ObjectStore) -> None:
        pieces = [os.urandom(3 << 20), memoryview(os.urandom(1000)), b"", bytearray(b"end")]
        head, tail = os.urandom(32), os.urandom(32)
        oid = xxhash.xxh3_128_hexdigest(head + b"".join(bytes(p) for p in pieces) + tail)
        name: Future[tuple[str, bytes, bytes]] = Future()

        def produce(write: Any) -> None:
            for p in pieces:
                write(p)
            name.set_result((oid, head, tail))  # known once everything was written

        assert store.put_produced(produce, name, header_size=32) == oid
        assert store.get(oid) == head + b"".join(bytes(p) for p in pieces) + tail

    def test_put_produced_failure_leaves_no_object(self, store: ObjectStore) -> None:
        name: Future[tuple[str, bytes, bytes]] = Future()

        def produce(write: Any) -> None:
            write(os.urandom(1 << 20))
            raise RuntimeError("the serializer failed")

        with pytest.raises(RuntimeError, match="serializer failed"):
            store.put_produced(produce, name, header_size=32)
        assert list(store.iter_oids()) == []

    def test_put_later_keeps_an_existing_object(self, store: ObjectStore) -> None:
        head, body = b"H" * 32, os.urandom(9 << 20)
        name, oid = self._named_later(head, body)
        store.put(b"already here", oid=oid)  # the name is taken (by design: first wins)
        assert store.put_later(name, [body], header_size=32) == oid
        assert store.get(oid) == b"already here"

    def test_put_later_failed_name_leaves_no_object(self, store: ObjectStore) -> None:
        name: Future[tuple[str, bytes, bytes]] = Future()
        name.set_exception(RuntimeError("hashing failed"))
        with pytest.raises(RuntimeError, match="hashing failed"):
            store.put_later(name, [os.urandom(1 << 20)], header_size=32)
        assert list(store.iter_oids()) == []

    def test_put_later_wrong_header_size_is_refused(self, store: ObjectStore) -> None:
        name: Future[tuple[str, bytes, bytes]] = Future()
        name.set_result((digest_of("short header"), b"tiny", b""))
        with pytest.raises(ValueError, match="header"):
            store.put_later(name, [b"body"], header_size=32)
        assert list(store.iter_oids()) == []

    def test_put_later_on_read_only_is_refused(self, store: ObjectStore) -> None:
        ro = self.reopen(store, read_only=True)
        name: Future[tuple[str, bytes, bytes]] = Future()
        name.set_result((digest_of("ro later"), bytes(32), b""))
        with pytest.raises(ReadOnlyStoreError):
            ro.put_later(name, [b"x"], header_size=32)

    def test_open_read_missing_is_a_cache_miss(self, store: ObjectStore) -> None:
        oid = digest_of("nothing to read")
        with pytest.raises(CacheMiss, match=oid):
            store.open_read(oid)
        with pytest.raises(ValueError, match="32 lowercase hex"):
            store.open_read("nope")

    def test_put_stream_on_read_only_is_refused(self, store: ObjectStore) -> None:
        ro = self.reopen(store, read_only=True)
        with pytest.raises(ReadOnlyStoreError):
            ro.put_stream(iter([b"x"]), oid=digest_of("ro"))

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

    # -- quarantine -----------------------------------------------------------------

    def test_quarantine_object(self, store: ObjectStore) -> None:
        oid = store.put(b"corrupt?")
        store.quarantine(oid)
        assert not store.exists(oid)
        with pytest.raises(CacheMiss):
            store.get(oid)
        assert list(store.iter_oids()) == []
        store.quarantine(oid)  # already gone: not an error
        store.put(b"corrupt?")
        store.quarantine(oid)  # a second time keeps both copies
        kept = self.raw_files(store, "quarantine")
        assert len(kept) == 2
        assert all(store.fs.cat_file(p) == b"corrupt?" for p in kept)

    def test_quarantine_call(self, store: ObjectStore) -> None:
        digest = digest_of("bad record")
        store.put_call(FID, digest, b"garbage")
        store.quarantine(function_id=FID, digest=digest)
        assert not store.has_call(FID, digest)
        with pytest.raises(CacheMiss):
            store.get_call(FID, digest)
        assert list(store.iter_calls()) == []
        (kept,) = self.raw_files(store, "quarantine")
        assert store.fs.cat_file(kept) == b"garbage"

    # -- concurrency ------------------------------------------------------------------

    def test_threads_writing_the_same_objects(self, store: ObjectStore) -> None:
        values = [os.urandom(1000 + i) for i in range(32)]
        start = threading.Barrier(8)

        def work(_: int) -> list[str]:
            start.wait()
            return [store.put(v) for v in values]

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(work, range(8)))
        assert all(r == results[0] for r in results)
        assert set(store.iter_oids()) == set(results[0])
        assert all(store.get(o) == v for o, v in zip(results[0], values, strict=True))

    def test_threads_replacing_one_record_never_show_a_partial_one(
        self, store: ObjectStore
    ) -> None:
        digest = digest_of("contended")
        versions = {bytes([i]) * (20_000 + i) for i in range(8)}
        start = threading.Barrier(10)
        seen: list[bytes] = []

        def write(data: bytes) -> None:
            start.wait()
            for _ in range(20):
                store.put_call(FID, digest, data)

        def read(_: object) -> None:
            start.wait()
            for _ in range(100):
                try:
                    seen.append(bytes(store.get_call(FID, digest)))
                except CacheMiss:
                    pass

        with ThreadPoolExecutor(10) as pool:
            futures = [pool.submit(write, v) for v in versions]
            futures += [pool.submit(read, None) for _ in range(2)]
            for f in futures:
                f.result()
        assert store.get_call(FID, digest) in versions
        assert set(seen) <= versions
        assert list(store.iter_calls()) == [(FID, digest)]

    def test_threads_writing_different_keys(self, store: ObjectStore) -> None:
        def work(i: int) -> tuple[str, str]:
            store.put_call(f"mod.f{i % 3}", digest_of(i), str(i).encode())
            return store.put(str(i).encode()), f"mod.f{i % 3}"

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(work, range(64)))
        assert len(set(store.iter_oids())) == 64
        assert len(list(store.iter_calls())) == 64
        assert store.info()["format"] == 1

    # -- lifecycle --------------------------------------------------------------------

    def test_url_and_repr(self, store: ObjectStore) -> None:
        assert isinstance(store.url, str) and store.url
        assert store.url in repr(store)
        assert store.read_only is False

    def test_close_and_context_manager(self, store: ObjectStore) -> None:
        with store as s:
            oid = s.put(b"x")
        store.close()
        store.close()
        assert self.reopen(store).get(oid) == b"x"
