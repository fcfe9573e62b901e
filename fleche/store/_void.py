"""A store that keeps nothing: ``void://``, the original fleche's reserved cache ``"void"``.

Every write is accepted and dropped, every read misses: a cache over it runs
every call, ``contains`` is always False and ``load`` raises ``CacheMiss`` (a
``KeyError``). It exists so that caching can be switched off without touching
code (``with cache("void"):``, ``FLECHE_CACHE=void``, or a ``fleche.toml``
whose default is ``"void"``), as 0.22 allowed. Nothing is written anywhere:
it has no filesystem, no marker, no index (``in_memory`` keeps the index off).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from fleche.store._base import BytesLike, ObjectStore, ReadableFile, new_marker


class VoidStore(ObjectStore):
    """The store of ``void://``: writes vanish, reads miss."""

    in_memory = True  # no other process could see it, and no index is kept for it
    supports_packs = False  # nothing is kept, so nothing is ever packed

    def __init__(self, *, read_only: bool = False, durable: bool = False) -> None:
        super().__init__(None, "void", read_only=read_only, durable=durable)

    def _make_url(self) -> str:
        return "void://"

    def _load_marker(self) -> dict[str, Any] | None:
        return new_marker()  # never None: so no write of a marker is ever attempted

    def _read(self, path: str) -> BytesLike:
        raise FileNotFoundError(path)

    def _read_ends(self, path: str, n: int) -> tuple[BytesLike, BytesLike]:
        raise FileNotFoundError(path)

    def _write(self, path: str, parts: Sequence[BytesLike]) -> None:
        pass

    def _write_new(self, path: str, data: bytes) -> bool:
        return True  # a lease is always granted: every caller computes, as it would anyway

    def _write_stream(self, path: str, chunks: Iterable[BytesLike]) -> None:
        for _ in chunks:  # a producer may do its work as it is read: let it finish
            pass

    def _open_read(self, path: str) -> ReadableFile:
        raise FileNotFoundError(path)

    def _exists(self, path: str) -> bool:
        return False

    def _size(self, path: str) -> int:
        raise FileNotFoundError(path)

    def _remove(self, path: str) -> None:
        raise FileNotFoundError(path)

    def _move(self, src: str, dst: str) -> None:
        pass

    def _ensure_dir(self, path: str) -> None:
        pass

    def _list_dirs(self, path: str) -> Iterator[str]:
        return iter(())

    def _list_fanout(self, path: str) -> Iterator[str]:
        return iter(())

    def _packs_stamp(self) -> object:
        return 0  # never changes: there is never a pack

    def _list_pack_files(self) -> dict[str, tuple[int, float | None]]:
        return {}

    def local_path(self, oid: str) -> str | None:
        return None
