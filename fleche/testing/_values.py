"""Store conformance, values: ``put``/``get`` and friends, streaming, ``put_later``.

Part of :class:`fleche.testing.StoreConformance`; see :mod:`fleche.testing`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleche.errors import CacheMiss, ReadOnlyStoreError
from fleche.store import BytesLike, ObjectStore
from fleche.testing._base import ConformanceBase, digest_of


class ValueConformance(ConformanceBase):
    """Objects: content-addressed, immutable, written whole or streamed, named before or after."""

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

    def test_replace_rewrites_an_existing_object_only(self, store: ObjectStore) -> None:
        oid = digest_of("replaced")
        store.put(b"unsigned", oid=oid)
        store.replace(oid, [b"signed ", b"bytes"])  # parts, back to back
        assert store.get(oid) == b"signed bytes"
        assert list(store.iter_oids()) == [oid]
        absent = digest_of("never stored")
        with pytest.raises(CacheMiss, match=absent):
            store.replace(absent, b"x")
        assert not store.exists(absent)  # replacing creates nothing

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
