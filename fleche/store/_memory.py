"""An in-memory store, private to its instance (or shared by name in one process).

fsspec's ``MemoryFileSystem`` keeps its files in a class-level dict and caches
instances, so every ``memory://`` in a process sees the same files: two caches
(or two tests) would silently share results. ``MemoryStore`` gives each store
its own dict instead.
"""

from __future__ import annotations

import threading
from typing import Any

from fsspec.implementations.memory import MemoryFileSystem

from fleche.store._base import ObjectStore


class PrivateMemoryFileSystem(MemoryFileSystem):  # type: ignore[misc]
    """A ``MemoryFileSystem`` whose files belong to this instance alone."""

    cachable = False  # fsspec would otherwise hand back one shared instance

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.store: dict[str, Any] = {}
        self.pseudo_dirs: list[str] = [""]
        # Newer fsspec: pickle (e.g. to a worker) copies the files instead of
        # reattaching to the global dict. Older fsspec ignores the attribute.
        self.global_store = False
        self.create_lock = threading.Lock()  # see MemoryStore._write_new

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        # The base class scans every key for a directory prefix before looking
        # the file up: O(n) per exists/size. Files are the common case here.
        name = self._strip_protocol(path)
        f = self.store.get(name)
        if f is not None:
            return {"name": name, "size": f.size, "type": "file", "created": f.created}
        info: dict[str, Any] = super().info(path, **kwargs)
        return info


_named: dict[str, PrivateMemoryFileSystem] = {}
_named_lock = threading.Lock()


def _named_fs(name: str) -> PrivateMemoryFileSystem:
    with _named_lock:
        fs = _named.get(name)
        if fs is None:
            fs = _named[name] = PrivateMemoryFileSystem()
        return fs


class MemoryStore(ObjectStore):
    """A store in this process's memory: for tests, notebooks and scratch caches.

    ``MemoryStore()`` (``memory://``) is always fresh and private.
    ``MemoryStore("name")`` (``memory://name``) shares its files with every
    other store of that name in this process, for the life of the process, so
    a named cache selected twice in a session finds its results again.
    ``fs=`` opens another handle (e.g. read-only) on an existing store's files.
    ``durable`` is accepted and means nothing here.
    """

    in_memory = True
    pack_rescan = 0.0  # a miss looks at packs/ again: one stat here, so always

    def __init__(
        self,
        name: str | None = None,
        *,
        read_only: bool = False,
        durable: bool = False,
        fs: PrivateMemoryFileSystem | None = None,
    ) -> None:
        self.name = name
        if fs is None:
            fs = _named_fs(name) if name else PrivateMemoryFileSystem()
        super().__init__(fs, "", read_only=read_only, durable=durable)

    def _make_url(self) -> str:
        return f"memory://{self.name or ''}"

    def _ensure_dir(self, path: str) -> None:
        pass  # files imply their directories; pseudo-dirs are a list scanned per write

    def _exists(self, path: str) -> bool:
        return self.fs._strip_protocol(path) in self.fs.store

    def _write_new(self, path: str, data: bytes) -> bool:
        # fsspec's memory filesystem checks for the name, then commits on close: two
        # threads could both create. One lock per filesystem makes create-only hold
        # (leases rely on it) for every store sharing these files.
        with self.fs.create_lock:
            return super()._write_new(path, data)
