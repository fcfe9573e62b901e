"""Answers without a catalogue: a scan of the store, and the merge of several layers' answers.

:func:`scan` reads every record and tests it with ``QuerySpec.match``: what
an index answers in SQL, the slow way. An index falls back on it when its
database fails, and a layer without an index (memory) is answered by it.
:class:`LayeredIndex` merges the answers of a layered cache's layers, newest
first, each call once.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator

from fleche import codec
from fleche.errors import CorruptObjectError
from fleche.index._fresh import RefreshReport, list_functions, read_blobs
from fleche.records import QuerySpec
from fleche.store import ObjectStore

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any

if TYPE_CHECKING:
    from fleche.index._index import Index


def scan(
    store: ObjectStore, spec: QuerySpec, *, limit: int | None = None, newest_first: bool = True
) -> Iterator[tuple[float, str, str]]:
    """``(created, function_id, key)`` of the matching records, read one by one from ``store``.

    What an index answers in SQL, the slow way: the fallback when the index
    fails, and the reference the tests compare it with. Damaged records are skipped.
    """
    fids = sorted(spec.function_ids) if spec.function_ids is not None else list_functions(store)
    found = []
    for fid in fids:
        for key, blob in read_blobs(store, fid, [k for _, k in store.iter_calls(fid)]):
            if blob is None:
                continue
            try:
                rec = codec.decode_record(blob, name=(fid, key))
            except CorruptObjectError:
                continue
            if spec.match(rec):
                meta = rec.get("metadata")
                created: Any = meta.get("created") if isinstance(meta, dict) else None
                t = float(created) if type(created) in (int, float) else 0.0
                found.append((t, fid, key))
    found.sort(key=lambda r: (r[0], r[1], r[2]), reverse=newest_first)
    return iter(found[:limit] if limit is not None else found)


class LayeredIndex:
    """Queries over the layers of a layered cache: each layer's index, merged, nearest copy first.

    A layer without an index (a memory layer) is scanned. ``layers`` returns the
    caches that can be read now (a failed layer is skipped, like reads skip it).
    A call present in several layers (copied up by a hit) is listed once.
    """

    def __init__(self, layers: Callable[[], list[Any]]) -> None:
        self._layers = layers

    def _sources(
        self, spec: QuerySpec, newest_first: bool
    ) -> list[Iterator[tuple[float, str, str]]]:
        out = []
        for cache in self._layers():
            index = getattr(cache, "index", None)
            if index is not None:
                out.append(index.rows(spec, newest_first=newest_first))
            else:
                out.append(scan(cache.store, spec, newest_first=newest_first))
        return out

    def rows(
        self, spec: QuerySpec, *, limit: int | None = None, newest_first: bool = True
    ) -> Iterator[tuple[float, str, str]]:
        seen: set[tuple[str, str]] = set()
        merged = heapq.merge(
            *self._sources(spec, newest_first), key=lambda r: r[0], reverse=newest_first
        )
        for row in merged:
            if row[1:] in seen:
                continue
            seen.add(row[1:])
            yield row
            if limit is not None and len(seen) >= limit:
                return

    def search(
        self, spec: QuerySpec, *, limit: int | None = None, newest_first: bool = True
    ) -> Iterator[tuple[str, str]]:
        return ((f, k) for _, f, k in self.rows(spec, limit=limit, newest_first=newest_first))

    def count(self, spec: QuerySpec) -> int:
        return sum(1 for _ in self.rows(spec, newest_first=False))

    def _indexes(self) -> list[Index]:
        return [c.index for c in self._layers() if getattr(c, "index", None) is not None]

    def refresh(self, store: ObjectStore | None = None) -> RefreshReport:
        """Refresh every layer's index from its own store."""
        report = RefreshReport()
        for index in self._indexes():
            report.merge(index.refresh())
        return report

    def rebuild(self, store: ObjectStore | None = None) -> RefreshReport:
        report = RefreshReport()
        for index in self._indexes():
            report.merge(index.rebuild())
        return report

    def flush(self) -> None:
        for index in self._indexes():
            index.flush()
