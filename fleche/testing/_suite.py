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

The tests come in parts, one module each: :mod:`fleche.testing._values`,
:mod:`fleche.testing._records`, :mod:`fleche.testing._format`, on
:mod:`fleche.testing._base`; quarantine, concurrency and lifecycle, which span
objects and records, are here.
"""

from __future__ import annotations

import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest

from fleche.errors import CacheMiss, FlecheWarning
from fleche.store import ObjectStore
from fleche.testing._base import FID, digest_of
from fleche.testing._format import FormatConformance
from fleche.testing._records import RecordConformance
from fleche.testing._values import ValueConformance


class StoreConformance(ValueConformance, RecordConformance, FormatConformance):
    """Every behavioural test of the store API, once; subclasses provide ``store``."""

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

    # -- reads check what they read ---------------------------------------------------

    def test_a_record_under_another_calls_name_is_a_miss(self, store: ObjectStore) -> None:
        """A record copied onto another call's name would serve the wrong result: refused."""
        from fleche.cache import Cache  # the store suite needs no cache otherwise

        c = Cache(store, index=False)
        one, two = digest_of("call 1"), digest_of("call 2")
        for key, result in ((one, 1), (two, 2)):
            record = {"fleche": 1, "function": FID, "digest": key, "arguments": {}}
            c.put_record(FID, key, {**record, "result": c.put_value(result), "metadata": {}})
        store.put_call(FID, one, bytes(store.get_call(FID, two)))  # as `cp` would
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            assert c.get_record(FID, one) is None
        said = [str(w.message) for w in seen if issubclass(w.category, FlecheWarning)]
        assert len(said) == 1 and "wrong name" in said[0], said
        assert not store.has_call(FID, one)
        assert len(self.raw_files(store, "quarantine")) == 1
        rec = c.get_record(FID, two)
        assert rec is not None and c.load_value(rec["result"]) == 2

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
