"""What every part of the store conformance suite stands on: the fixture, raw file access.

:class:`ConformanceBase` declares the ``store`` fixture a backend's test class
supplies, ``reopen`` (a second handle on the same root) and helpers that reach
the store's files through ``store.fs`` and ``store.root`` only, bypassing the
store. :data:`FID` and :func:`digest_of` name calls in the tests. The parts
(:mod:`fleche.testing._values`, :mod:`fleche.testing._records`,
:mod:`fleche.testing._format`) build on it; :class:`fleche.testing.StoreConformance`
joins them.
"""

from __future__ import annotations

import pytest
import xxhash

from fleche.store import ObjectStore

FID = "pkg.module.simulate"


def digest_of(value: object) -> str:
    """A valid 32-hex digest, deterministic in ``value``."""
    return xxhash.xxh3_128_hexdigest(repr(value).encode())


class ConformanceBase:
    """The ``store`` fixture and raw access to its files; subclasses provide ``store``."""

    @pytest.fixture
    def store(self) -> ObjectStore:
        """A fresh, empty, writable store of the backend under test: a subclass's to give.

        Not abstract on purpose: pytest silently skips abstract classes, so a
        test class that forgot the fixture would pass by running nothing.
        """
        pytest.fail(
            f"{type(self).__name__} runs the store conformance suite but defines no `store` "
            "fixture: add `@pytest.fixture def store(self, tmp_path): return <a fresh store>`"
        )

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
