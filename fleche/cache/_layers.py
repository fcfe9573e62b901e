"""Layered caches: several caches read as one, nearest first.

``LayeredCache([local, team])`` is what ``cache(["~/.cache/fleche",
"s3://team/cache"])`` builds: a fast private cache in front of a shared, slower
one.  It presents the interface the decorator uses on a :class:`Cache`
(``get_record``, ``load_value``, ``put_value``, ``put_record``...), so
``@fleche`` neither knows nor cares that there are layers.

Why here and not as a store stacked over stores: a store moves opaque bytes
and cannot know which objects a call record points at.  The cache level does
(:func:`~fleche.cache.referenced_oids`), and that is what keeps every layer
valid at every instant: objects are copied into a layer before the record
that references them, exactly as a single cache writes them.

- Reads go down the layers; the first hit wins.  A hit in a lower layer is
  copied up (objects, then the record) into the first writable layer above it
  (into every writable layer above it with ``write="through"``), so the next
  hit costs no trip to the lower layer.
- Writes go to the first writable layer that works (``write="first"``) or to
  every writable layer (``write="through"``).  A read-only layer may sit
  anywhere: it is read, never written or copied into.
- A layer that fails (an ``OSError``: unreachable server, refused request,
  full disk) is skipped for ``retry_after`` seconds and the others carry on;
  one :class:`~fleche.errors.FlecheWarning` per layer says so, not one per
  call.  Skipping matters: an unreachable S3 endpoint costs seconds of
  retries, which must not be paid on every call.
- Deleting a record removes it from every writable layer; listing records
  merges the layers, the nearest copy of each call winning.

The layers themselves (opening, health, copying between them) are
:mod:`fleche.cache._layer_set`'s; this module holds the cache's interface.

The same fail-open serves a single store: :func:`open_cache` (what
``fleche.cache(url)`` and a named cache use) returns a
:class:`DeferredCache`, one layer that failed to open, when the store cannot
be reached or read, so that the program computes uncached instead of stopping.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar

from fleche import codec
from fleche.cache._cache import (
    Cache,
    MmapMode,
    encode_value,
    mmap_mode,
    put_encoded,
    referenced_oids,
)
from fleche.cache._layer_set import LayerSet, LayerSpec, _Layer
from fleche.errors import CacheMiss, CorruptObjectError, DecodeError
from fleche.store import BytesLike

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any

if TYPE_CHECKING:  # fleche.index loads when a cache opens one (sqlite3 off `import fleche`)
    from fleche.index import Index, LayeredIndex

WRITE_MODES = ("first", "through")
RETRY_AFTER = 60.0
"""Seconds a failed layer is left alone before it is tried again."""


class _StoreView:
    """What ``cache.store`` shows of a layered cache: a URL and read_only, for messages.

    A layered cache has no single store; code that wants one must pick a layer,
    so anything else is an AttributeError that says so rather than a silent
    operation on the first layer only.
    """

    def __init__(self, owner: LayeredCache) -> None:
        self._owner = owner

    @property
    def url(self) -> str:
        return self._owner.url

    @property
    def read_only(self) -> bool:
        return self._owner.read_only

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(
            f"{self._owner.url} is a layered cache and has no single store (no {name!r}): "
            "use .layers[i].store for one layer"
        )


class LayeredCache(LayerSet):
    """Several caches read as one, nearest first; see the module docstring for the rules.

    ``layers``: :class:`~fleche.cache.Cache` objects, or :class:`LayerSpec` for
    layers that may be unreachable when this is built.  ``write``: ``"first"``
    (the default: the first writable layer that works) or ``"through"`` (every
    writable layer).  ``retry_after``: seconds a failed layer is skipped.
    """

    stale_code: str | None = None  # as Cache.stale_code: a hit from any layer

    def __init__(
        self,
        layers: Sequence[Cache | LayerSpec],
        *,
        write: str = "first",
        name: str | None = None,
        retry_after: float = RETRY_AFTER,
    ) -> None:
        if write not in WRITE_MODES:
            raise ValueError(f"write={write!r}: choose 'first' or 'through'")
        if isinstance(retry_after, bool) or not isinstance(retry_after, (int, float)):
            raise ValueError(f"retry_after={retry_after!r}: expected seconds (a number >= 0)")
        if retry_after < 0:
            raise ValueError(f"retry_after={retry_after!r}: expected seconds (a number >= 0)")
        if isinstance(layers, (str, bytes)) or not layers:
            raise ValueError("a layered cache needs a list of at least one layer")
        self._layers: list[_Layer] = []
        for i, layer in enumerate(layers):
            if isinstance(layer, LayeredCache):
                raise TypeError(
                    f"layer {i + 1} ({layer.url}) is itself a layered cache: list its layers instead"
                )
            if isinstance(layer, Cache):
                self._layers.append(_Layer(i, layer.url, layer.read_only, cache=layer))
            elif isinstance(layer, LayerSpec):
                self._layers.append(_Layer(i, layer.url, layer.read_only, opener=layer.open))
            else:
                raise TypeError(
                    f"layer {i + 1} is a {type(layer).__name__}; expected a Cache or a LayerSpec"
                )
        self.write = write
        self.retry_after = float(retry_after)
        self.url = "layers(" + ", ".join(layer.url for layer in self._layers) + ")"
        self.name = name or self.url
        self._given_name = name
        self.store = _StoreView(self)
        self._warn_lock = threading.Lock()
        for each in self._layers:  # a bad URL fails now; an unreachable server degrades
            self._open(each)

    def __repr__(self) -> str:
        urls = [layer.url for layer in self._layers]
        return f"LayeredCache({urls!r}, write={self.write!r})"

    @property
    def read_only(self) -> bool:
        """True when no layer may be written (the decorator then stores nothing)."""
        return all(layer.read_only for layer in self._layers)

    @property
    def layers(self) -> tuple[Cache, ...]:
        """The cache of each layer, nearest first; OSError if one cannot be opened now."""
        out = []
        for layer in self._layers:
            cache = layer.cache or self._open(layer, force=True)
            if cache is None:
                raise OSError(f"{layer.label} cannot be opened now")
            out.append(cache)
        return tuple(out)

    # No index of its own: each layer's Cache keeps one for its store, the truth for its own
    # records. A query of a layered cache scans and merges the layers (iter_records), because
    # reading a listed call through get_record would copy it (and its result) up into the
    # nearest layer; merged_index() is the indexed equivalent for a reader that avoids that.
    index: None = None

    def merged_index(self) -> LayeredIndex:
        """Each readable layer's index (a scan for a layer without one), merged, each call once."""
        from fleche.index import LayeredIndex

        return LayeredIndex(lambda: [cache for _, cache in self._readable()])

    # -- records -------------------------------------------------------------------------

    def get_record(
        self, function_id: str, key: str, *, lazy: bool = False
    ) -> dict[str, Any] | None:
        """The nearest layer's record of a call (copied up when found below), or None.

        ``lazy`` applies to the first layer only: copying a record up needs
        its arguments (the objects they refer to come along).
        """
        for layer, cache in self._readable():
            try:
                rec = cache.get_record(function_id, key, lazy=lazy and not layer.index)
            except OSError as e:
                self._fault(layer, "read", e, reads=True)
                continue
            if rec is not None:
                if layer.index:
                    self._copy_up(layer, cache, function_id, key, rec)
                return rec
        return None

    def has_record(self, function_id: str, key: str) -> bool:
        for layer, cache in self._readable():
            try:
                if cache.has_record(function_id, key):
                    return True
            except OSError as e:
                self._fault(layer, "read", e, reads=True)
        return False

    def put_record(self, function_id: str, key: str, record: dict[str, Any]) -> None:
        """Write a record into the layer(s) that received its objects, never into one that lacks them.

        Layer faults are warned about, not raised: the value is the caller's
        and a cache that cannot keep it must not take it from them.
        """
        oids = referenced_oids(record)
        blobs: dict[str, BytesLike] = {}
        for layer, cache in self._writable():
            try:
                # Normally a no-op (put_value just wrote them here).  After a fault it
                # is what lets the next layer take the record: its objects come first.
                if not self._supply(layer, cache, oids, blobs):
                    continue
                cache.put_record(function_id, key, record)
            except OSError as e:
                self._fault(layer, "write", e, reads=False)
                continue
            if self.write == "first":
                return

    def delete_record(self, function_id: str, key: str) -> None:
        """Remove a call from every writable layer, failed ones included.

        An eviction that silently missed a layer would bring the result back
        when that layer recovers, so every writable layer is tried and
        OSError names those that could not be reached.  A read-only layer
        keeps its copy (and serves it again).
        """
        errors = []
        for layer in self._layers:
            if layer.read_only:
                continue
            try:
                cache = layer.cache or self._open(layer, force=True)
                if cache is None:
                    raise OSError("cannot be opened")
                cache.delete_record(function_id, key)
            except OSError as e:
                errors.append(f"{layer.label}: {e}")
        if errors:
            raise OSError(
                f"call {function_id}/{key} could not be removed from " + "; ".join(errors)
            )

    def iter_records(self, function_id: str | None = None) -> Iterator[dict[str, Any]]:
        """Every readable record, each call once: the nearest layer's copy wins."""
        seen: set[tuple[str, str]] = set()
        last = len(self._layers) - 1
        for layer, cache in self._readable():
            try:
                for fid, key in cache.store.iter_calls(function_id):
                    if (fid, key) in seen:
                        continue
                    rec = cache.get_record(fid, key)
                    if rec is None:
                        continue  # corrupt here (warned): a lower layer's copy may do
                    if layer.index != last:
                        seen.add((fid, key))
                    yield rec
            except OSError as e:
                self._fault(layer, "list", e, reads=True)

    # -- values --------------------------------------------------------------------------

    def put_value(self, value: Any) -> dict[str, Any]:
        """Encode a value once and store its object in the write layer(s); returns its reference.

        Encoded with the first writable layer's settings (serializer,
        compression, inline limit): the reference goes into one record shared
        by every layer, so there is one decision.  Layer faults warn, never
        raise; :class:`~fleche.errors.SerializationError` still does.
        """
        writers = self._writable()
        first = next(writers, None)
        encoder = first[1] if first else self._any_writable_cache()
        if encoder is not None:
            ref, enc = encoder.encode_value(value, defer=True)
        else:
            ref, enc = encode_value(value, defer=True)
        if enc is None:
            return ref
        if first is None:
            ref["oid"] = enc.oid
            return ref
        for layer, cache in _chain1(first, writers):
            try:
                put_encoded(cache.store, enc)  # array members first, then the value itself
            except OSError as e:
                self._fault(layer, "write", e, reads=False)
                continue
            for obj in enc.objects():
                layer.remember(obj.oid)
            if self.write == "first":
                break
        ref["oid"] = enc.oid
        return ref

    def _any_writable_cache(self) -> Cache | None:
        return next((la.cache for la in self._layers if not la.read_only and la.cache), None)

    def load_value(self, ref: dict[str, Any], *, mmap: MmapMode = False) -> Any:
        """Load a value from the nearest layer holding its object.

        A damaged copy in one layer (moved to its quarantine) does not make a
        miss when a lower layer has a good one; the good bytes are copied back
        into the damaged layer so its record points at a sound object again.
        An intact object that fails to decode (:class:`~fleche.errors.DecodeError`)
        is not tried again from another layer: every copy holds the same bytes,
        and a pickle that failed part way must not run its constructors twice.
        """
        if mmap is not False:
            mmap = mmap_mode(mmap)
        inline = ref.get("inline")
        if inline is not None:
            return codec.decode_payload(ref["ser"], inline, "inline value")
        oid = ref["oid"]
        damaged: list[tuple[_Layer, Cache]] = []
        error: CorruptObjectError | None = None
        for layer, cache in self._readable():
            try:
                if not damaged:
                    return cache.load_value(ref, mmap=mmap)
                blob = cache.store.get(oid)
                value = cache.decode_object(oid, blob)
            except CacheMiss:
                continue
            except DecodeError:
                raise
            except CorruptObjectError as e:
                error = e
                damaged.append((layer, cache))
                continue
            except OSError as e:
                self._fault(layer, "read", e, reads=True)
                continue
            self._repair(oid, blob, damaged, layer, error)
            return value
        if error is not None:
            raise error
        raise CacheMiss(f"object {oid} is in no layer of {self.url}")


def _chain1(
    first: tuple[_Layer, Cache], rest: Iterator[tuple[_Layer, Cache]]
) -> Iterator[tuple[_Layer, Cache]]:
    """``first`` then ``rest``, lazily: with write="first", later layers are opened only if needed."""
    yield first
    yield from rest


class DeferredCache(LayeredCache):
    """A cache whose store could not be opened (unreachable, unreadable): calls run uncached.

    What ``fleche.cache(url)`` (and a cache named in ``fleche.toml``) gives when
    the store's server is down or its directory cannot be read, so that the
    program carries on: one :class:`~fleche.errors.FlecheWarning`, then every
    call computes and stores nothing, and the store is tried again every
    ``retry_after`` seconds. Once it opens, this is that cache behind a
    one-layer :class:`LayeredCache` (its index included). A malformed URL or a
    missing bucket is no fault of the network: :func:`open_cache` raises those.
    """

    def __init__(
        self, spec: LayerSpec, *, name: str | None = None, retry_after: float = RETRY_AFTER
    ) -> None:
        super().__init__([spec], name=name, retry_after=retry_after)
        self.url = spec.url
        self.name = name or spec.url

    def __repr__(self) -> str:
        state = "open" if self._layers[0].cache is not None else "not opened"
        return f"DeferredCache({self.url!r}, {state})"

    @property
    def index(self) -> Index | None:  # type: ignore[override]
        """The opened cache's index (queries use it once the store is reachable), else None."""
        cache = self._layers[0].cache
        return cache.index if cache is not None else None

    @property
    def error(self) -> OSError | None:
        """Why the store could not be opened the last time it was tried (None once open)."""
        return self._layers[0].error


_STRICT: ContextVar[bool] = ContextVar("fleche_strict_open", default=False)


class _StrictOpen:
    """:func:`strict_open`'s block. A class, not a ``contextlib.contextmanager``: the
    ``fleche`` commands use it, and ``import fleche`` loads no contextlib (3 M instructions)."""

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        self._token = _STRICT.set(True)

    def __exit__(self, *exc: object) -> None:
        _STRICT.reset(self._token)


def strict_open() -> _StrictOpen:
    """In this block, :func:`open_cache` raises instead of deferring.

    For the ``fleche`` commands: a command works on a store, so one that
    cannot be opened is its error to report, not a reason to work on nothing.
    """
    return _StrictOpen()


def open_cache(
    url: str,
    opener: Callable[[], Cache],
    *,
    read_only: bool = False,
    name: str | None = None,
    retry_after: float = RETRY_AFTER,
) -> Cache | DeferredCache:
    """``opener()``, or a :class:`DeferredCache` (with one warning) when it raises ``OSError``.

    ``OSError`` is what an unreachable server, a refused login or request, or
    a directory that cannot be read raise; a ``ConfigError`` (a malformed URL,
    a missing bucket) propagates: no retry would fix it. So does every error
    inside :func:`strict_open`.
    """
    try:
        return opener()
    except OSError as first:
        if _STRICT.get():
            raise
        failed = [first]

        def again() -> Cache:
            if failed:  # the attempt just made: not repeated at once (a timeout costs seconds)
                raise failed.pop()
            return opener()

        return DeferredCache(LayerSpec(url, again, read_only), name=name, retry_after=retry_after)
