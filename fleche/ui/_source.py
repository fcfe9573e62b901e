"""What the page shows, asked of a store's caches: functions, pages of calls, one call, health.

A :class:`Source` holds one :class:`~fleche.cache.Cache` per layer (one for a
plain cache). A layered cache is shown layer by layer: reading a record
through a :class:`~fleche.cache.LayeredCache` copies it into the nearest
layer, and a viewer must not write. Each layer's index answers the questions
(a page of calls is one SQL query with ``LIMIT``/``OFFSET``, whatever the
store's size); a layer without an index (a memory store) is scanned.

Unless ``write`` is asked for, every layer's store is opened read-only, so
not even a damaged file met while reading is moved to ``quarantine/``.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from fleche import codec
from fleche.cache import Cache, LayeredCache, strict_open
from fleche.config import CacheLike, ImplicitCache, default_cache, resolve
from fleche.errors import CorruptObjectError, FlecheError
from fleche.index import Index
from fleche.records import QuerySpec
from fleche.upkeep import VerifyReport, parse_filter, verify

PAGE_SIZE = 50
"""Calls a page of the table shows unless the address asks for another number (at most 500)."""
MEMO = 32
"""Answers (counts, function lists, filtered orders) a server keeps while the index is unchanged."""
ORDERS = ("created", "size", "result")
"""Orders every table offers besides its arguments (``arg:NAME``) and metadata (``meta:KEY``)."""


_T = TypeVar("_T")


def open_caches(spec: CacheLike | None, *, write: bool = False) -> list[Cache]:
    """The cache of each layer of ``spec`` (a URL, path, cache name or cache; None: the default).

    Refuses the implicit in-memory cache (nothing configured): it is empty and
    lives in this process only. Without ``write`` every store is set read-only.
    """
    with strict_open():
        cache = default_cache() if spec is None else resolve(spec)
    if isinstance(cache, ImplicitCache) or (
        spec is None and isinstance(cache, Cache) and cache.store.in_memory
    ):
        raise FlecheError(
            "no cache chosen: pass -s URL|NAME, set FLECHE_CACHE, or name a default cache "
            "in fleche.toml (see 'fleche config')"
        )
    layers = list(cache.layers) if isinstance(cache, LayeredCache) else [cache]
    if not write:
        for layer in layers:
            layer.store.read_only = True
    return layers


@dataclass(frozen=True)
class FunctionRow:
    """One function of a store as the first page lists it."""

    function: str
    calls: int
    bytes: int
    last: float | None


@dataclass
class CallPage:
    """One page of a function's calls: the records shown and how many match in all."""

    function: str
    total: int
    offset: int
    limit: int
    records: list[dict[str, Any]]
    arguments: list[str]
    metadata_keys: list[str]
    missing: int = 0
    """Calls the index listed that are gone from the store (removed behind its back)."""
    scanned: bool = False
    """True when no index answered: every record of the function was read."""


@dataclass
class VerifyRun:
    """What the last ``verify`` started from the page found, and when."""

    report: VerifyReport
    finished: float


@dataclass
class Source:
    """The caches a page reads, one per layer, and what the server remembers about them."""

    layers: list[Cache]
    write: bool = False
    trust: bool = False
    verified: dict[int, VerifyRun] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _verify_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _answers: OrderedDict[tuple[Any, ...], Any] = field(default_factory=OrderedDict, repr=False)

    def __post_init__(self) -> None:
        # Set once, never toggled per request: a loader in safe mode refuses every pickle.
        for i, cache in enumerate(self.layers):
            cache.safe = not self.trusted(i)

    def layer(self, i: int) -> Cache:
        """Layer ``i`` (0 is the nearest); LookupError for one that does not exist."""
        if not 0 <= i < len(self.layers):
            raise LookupError(f"no layer {i}")
        return self.layers[i]

    def trusted(self, i: int) -> bool:
        """Whether pickled values of layer ``i`` may be unpickled: ``--trust``, or a signed store."""
        return self.trust or self.layer(i).signer is not None

    # -- functions --------------------------------------------------------------------------

    def functions(self, i: int) -> list[FunctionRow]:
        """Every function of layer ``i`` with its calls, bytes and newest call, by name."""
        cache = self.layer(i)
        index = cache.index
        if index is not None:
            try:
                generation = index.generation()
                found = self._memo(("functions", i, generation), index.functions)
                return [FunctionRow(*row) for row in found]
            except FlecheError:
                pass  # a failed catalogue: read the store instead
        rows = []
        for fid in sorted(set(cache.store.iter_functions())):
            calls, size, last = 0, 0, None
            for _, rec in _records(cache, fid):
                calls += 1
                size += _result_size(rec.get("result"))
                created = _created(rec)
                if created is not None:
                    last = created if last is None else max(last, created)
            rows.append(FunctionRow(fid, calls, size, last))
        return rows

    # -- a page of calls --------------------------------------------------------------------

    def page(
        self,
        i: int,
        function: str,
        text: str = "",
        *,
        order: str = "created",
        descending: bool = True,
        offset: int = 0,
        limit: int = PAGE_SIZE,
    ) -> CallPage:
        """Page ``offset // limit`` of ``function``'s calls matching the filter ``text``.

        ``text`` holds ``fleche query``'s terms (:func:`fleche.upkeep.parse_filter`):
        a ParseError says what is wrong with it. ``order`` as :meth:`Index.page`.
        """
        cache = self.layer(i)
        args, meta = parse_filter(text)
        spec = QuerySpec(function_ids=frozenset([function]), args=args, metadata=meta)
        index = cache.index
        keys: list[tuple[str, str]] | None = None
        total = 0
        if index is not None:
            try:
                keys, total = self._indexed_page(
                    i, index, spec, text, order, descending, offset, limit
                )
            except FlecheError:
                keys = None
        records: list[dict[str, Any]] = []
        missing = 0
        if keys is not None:
            for fid, key in keys:
                rec = _read(cache, fid, key)
                if rec is None or not spec.match(rec):
                    missing += 1
                else:
                    records.append(rec)
        else:
            found = [rec for _, rec in _records(cache, function) if spec.match(rec)]
            found.sort(key=_sort_key(order), reverse=descending)
            total = len(found)
            records = found[offset : offset + limit]
        names: list[str] = []
        keys_meta: list[str] = []
        for rec in records:
            arguments = rec.get("arguments")
            for name in arguments if isinstance(arguments, dict) else ():
                if name not in names:
                    names.append(str(name))
            for key, _ in flatten(rec.get("metadata")):
                if key not in keys_meta:
                    keys_meta.append(key)
        return CallPage(
            function, total, offset, limit, records, names, keys_meta, missing, keys is None
        )

    def _indexed_page(
        self,
        i: int,
        index: Index,
        spec: QuerySpec,
        text: str,
        order: str,
        descending: bool,
        offset: int,
        limit: int,
    ) -> tuple[list[tuple[str, str]], int]:
        """One page and the count of all matches, from the index.

        What does not change while the catalogue does not (its :meth:`Index.generation`)
        is remembered: the count of a filter, and the whole ordered list of matches of a
        filter with metadata terms (which Python decides, reading every candidate's
        metadata), so the next page of the same table costs one query, not a walk.
        """
        generation = index.generation()
        fid = next(iter(spec.function_ids or ()), "")
        if spec.metadata:
            key = ("all", i, fid, text, order, descending, generation)
            found = self._memo(
                key,
                lambda: index.page(spec, order=order, descending=descending, offset=0, limit=None),
            )
            return found[offset : offset + limit], len(found)
        total = self._memo(("count", i, fid, text, generation), lambda: index.count(spec))
        keys = index.page(
            spec, order=order, descending=descending, offset=offset, limit=limit, matches=total
        )
        return keys, total

    def forget(self) -> None:
        """Drop every remembered answer (they are also dropped when the index changes)."""
        with self._lock:
            self._answers.clear()

    def _memo(self, key: tuple[Any, ...], compute: Callable[[], _T]) -> _T:
        with self._lock:
            if key in self._answers:
                self._answers.move_to_end(key)
                return cast("_T", self._answers[key])
        value = compute()
        with self._lock:
            self._answers[key] = value
            while len(self._answers) > MEMO:
                self._answers.popitem(last=False)
        return value

    # -- one call ---------------------------------------------------------------------------

    def call(self, i: int, function: str, key: str) -> tuple[dict[str, Any], int]:
        """The decoded record of one call and its size in bytes as stored.

        KeyError when it is not in the store; CorruptObjectError when it is damaged
        (or, in a signed store, not signed with one of its keys).
        """
        cache = self.layer(i)
        blob = cache.store.get_call(function, key)
        rec = codec.decode_record(
            blob,
            f"call record {function}/{key} in {cache.store.url}",
            signer=cache.signer,
            name=(function, key),
        )
        return rec, len(blob)

    # -- health -----------------------------------------------------------------------------

    def stored_times(self, i: int) -> list[float]:
        """When each call of layer ``i`` was stored, oldest first (for the timeline)."""
        cache = self.layer(i)
        index = cache.index
        if index is not None:
            try:
                generation = index.generation()
                return self._memo(("times", i, generation), lambda: index.created(QuerySpec()))
            except FlecheError:
                pass
        times = []
        for fid in set(cache.store.iter_functions()):
            for _, rec in _records(cache, fid):
                created = _created(rec)
                if created is not None:
                    times.append(created)
        return sorted(times)

    def run_verify(self, i: int) -> VerifyRun:
        """``fleche verify`` of layer ``i``, read-only (no repair), remembered for the page."""
        cache = self.layer(i)
        with self._verify_lock:  # one at a time: it reads the whole store
            report = verify(cache.store, repair=False, signer=cache.signer)
            run = VerifyRun(report, time.time())
            self.verified[i] = run
        return run


# -- helpers ------------------------------------------------------------------------------


def _read(cache: Cache, fid: str, key: str) -> dict[str, Any] | None:
    try:
        blob = cache.store.get_call(fid, key)
        return codec.decode_record(blob, signer=cache.signer, name=(fid, key))
    except (KeyError, FileNotFoundError, CorruptObjectError):
        return None


def _records(cache: Cache, fid: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every readable record of ``fid`` (a scan: what a store without an index offers)."""
    for f, key in list(cache.store.iter_calls(fid)):
        rec = _read(cache, f, key)
        if rec is not None:
            yield key, rec


def _created(rec: Mapping[str, Any]) -> float | None:
    meta = rec.get("metadata")
    created = meta.get("created") if isinstance(meta, dict) else None
    if isinstance(created, (int, float)) and not isinstance(created, bool):
        return float(created)
    return None


def _result_size(ref: Any) -> int:
    if not isinstance(ref, dict):
        return 0
    inline = ref.get("inline")
    if isinstance(inline, (bytes, bytearray, memoryview)):
        return memoryview(inline).nbytes
    size = ref.get("size")
    return size if isinstance(size, int) and not isinstance(size, bool) else 0


def flatten(meta: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested metadata as ``("tags.project", value)`` pairs."""
    if not isinstance(meta, dict):
        return
    for key, value in meta.items():
        if isinstance(value, dict) and value:
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def lookup(meta: Any, path: str) -> Any:
    """The metadata value at a dotted ``path``, or None."""
    for key in path.split("."):
        if not isinstance(meta, dict):
            return None
        meta = meta.get(key)
    return meta


def _orderable(value: Any) -> tuple[int, Any]:
    """A value's place in a sort as the index orders it: numbers, then strings, then the rest."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value) if not (isinstance(value, float) and math.isnan(value)) else (2, 0)
    if isinstance(value, str):
        return (1, value)
    return (2, 0)


def _sort_key(order: str) -> Any:
    """The Python sort key of a scanned page, matching what the index orders by."""
    if order.startswith("arg:"):
        name = order[4:]
        return lambda rec: _orderable((rec.get("arguments") or {}).get(name))
    if order.startswith("meta:"):
        path = order[5:]
        return lambda rec: _orderable(lookup(rec.get("metadata"), path))
    if order == "result":
        return lambda rec: _result_size(rec.get("result"))
    if order in ("created", "size"):  # a scan knows no record sizes: their time instead
        return lambda rec: _created(rec) or 0.0
    raise ValueError(f"order={order!r}: expected created, size, result, arg:NAME or meta:KEY")
