"""The layers of a layered cache: how each is opened, its health, the copies between them.

:class:`LayerSet` is the base of :class:`fleche.cache._layers.LayeredCache`. A
layer (:class:`LayerSpec` says how to open one that may be unreachable) is
opened when first reached; one that fails (an ``OSError``) is skipped for
``retry_after`` seconds, with one warning; ``_readable`` and ``_writable`` list
the layers to use now. Objects move between layers before the records that
reference them, verified on the way, and a damaged copy is replaced by a good
one from another layer. The rules of reads and writes are in
:mod:`fleche.cache._layers`, which holds the cache's interface.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from fleche import codec
from fleche.cache._cache import Cache, referenced_oids
from fleche.errors import CacheMiss, CorruptObjectError, warn_user
from fleche.store import BytesLike

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any

# Objects known to be in a layer (written or seen there by this process): the
# record written next checks here before asking the store.  Bounded; forgetting
# only costs an existence check.
_KNOWN_MAX = 65536


class LayerSpec:
    """How to open one layer, for a layer that may be unreachable when the cache is built.

    ``open`` is called at once; if it raises ``OSError`` (a server down, a
    network gone) the layer starts out failed and is opened again after
    ``retry_after``, like a layer that fails later.  ``read_only`` must say
    what the opened cache will say, so writes can be planned without opening.

    Compared, hashed, printed and unpacked as the named tuple it was; a plain class
    because ``typing.NamedTuple`` builds its class at import (~2 ms).
    """

    __slots__ = ("open", "read_only", "url")

    def __init__(self, url: str, open: Callable[[], Cache], read_only: bool = False) -> None:
        self.url = url
        self.open = open
        self.read_only = read_only

    def __iter__(self) -> Iterator[Any]:
        return iter((self.url, self.open, self.read_only))

    def __repr__(self) -> str:
        return f"LayerSpec(url={self.url!r}, open={self.open!r}, read_only={self.read_only!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LayerSpec):
            return NotImplemented
        return tuple(self) == tuple(other)

    def __hash__(self) -> int:
        return hash(tuple(self))


class _Layer:
    """One layer: its cache (once opened) and its health."""

    __slots__ = (
        "cache",
        "error",
        "index",
        "known",
        "label",
        "lock",
        "opener",
        "read_down",
        "read_only",
        "url",
        "warned",
        "write_down",
    )

    def __init__(
        self,
        index: int,
        url: str,
        read_only: bool,
        cache: Cache | None = None,
        opener: Callable[[], Cache] | None = None,
    ) -> None:
        self.index = index
        self.url = url
        self.label = (
            f"layer {index + 1} ({url})"  # counted from 1 in messages, like the toml tables
        )
        self.read_only = read_only
        self.cache = cache
        self.opener = opener
        self.lock = threading.Lock()
        self.known: set[str] = set()
        # time.monotonic() before which the layer is skipped; a read failure
        # stops writes too (an unreachable server fails both), not the reverse
        # (a full disk can still serve hits).
        self.read_down = 0.0
        self.write_down = 0.0
        self.warned = False
        self.error: OSError | None = None  # why it last failed to open

    def remember(self, oid: str) -> None:
        if len(self.known) >= _KNOWN_MAX:
            self.known.clear()
        self.known.add(oid)

    def has_object(self, oid: str) -> bool:
        """Whether object ``oid`` is in this layer; OSError when the layer cannot say."""
        if oid in self.known:
            return True
        assert self.cache is not None
        if self.cache.store.exists(oid):
            self.remember(oid)
            return True
        return False


class LayerSet:
    """A layered cache's layers, nearest first, and what it does with them below its interface.

    Its state is set by the cache's constructor: the layers, ``write``,
    ``retry_after``, the name given (for warnings) and the lock of the warnings.
    """

    _layers: list[_Layer]
    write: str
    retry_after: float
    _given_name: str | None
    _warn_lock: threading.Lock

    # -- health --------------------------------------------------------------------------

    def _open(self, layer: _Layer, *, force: bool = False) -> Cache | None:
        """The layer's cache, opening it if needed; None while it cannot be opened."""
        if layer.cache is not None:
            return layer.cache
        if not force and time.monotonic() < layer.read_down:
            return None
        with layer.lock:
            if layer.cache is None:
                assert layer.opener is not None
                try:
                    layer.cache = layer.opener()
                except OSError as e:
                    layer.error = e
                    self._fault(layer, "open", e, reads=True)
                    return None
                layer.error = None
                # the opened cache knows best: never plan writes into a read-only store
                layer.read_only = layer.read_only or layer.cache.read_only
        return layer.cache

    def _fault(self, layer: _Layer, action: str, error: BaseException, *, reads: bool) -> None:
        """Skip a failed layer for ``retry_after`` seconds; warn the first time only."""
        until = time.monotonic() + self.retry_after
        layer.write_down = until
        if reads:
            layer.read_down = until
        with self._warn_lock:
            first, layer.warned = not layer.warned, True
        if first:
            skipped = "skipped" if reads else "not written"
            of = f" of cache {self._given_name!r}" if self._given_name else ""
            if len(self._layers) == 1:  # a single store that cannot be used (fail open)
                what = (
                    f"open the cache {layer.url}" if action == "open" else f"{action} {layer.url}"
                )
                warn_user(
                    f"fleche: cannot {what}{of}: {error}; computing uncached ({skipped} for "
                    f"{self.retry_after:g} s at a time while it fails, then tried again; this "
                    "warning is not repeated)"
                )
                return
            warn_user(
                f"fleche: {layer.label}{of} failed to {action}: {error}; using the other "
                f"layers ({skipped} for {self.retry_after:g} s at a time while it fails; "
                "this warning is not repeated)"
            )

    def _readable(self) -> Iterator[tuple[_Layer, Cache]]:
        """Layers to read, nearest first, failed ones skipped (opened as reached)."""
        for layer in self._layers:
            if layer.read_down and time.monotonic() < layer.read_down:
                continue
            cache = self._open(layer)
            if cache is not None:
                yield layer, cache

    def _writable(self, above: int | None = None) -> Iterator[tuple[_Layer, Cache]]:
        """Writable layers (above layer ``above`` only, when given), failed ones skipped."""
        for layer in self._layers[:above]:
            if layer.read_only:
                continue
            if layer.write_down and time.monotonic() < layer.write_down:
                continue
            cache = self._open(layer)
            if cache is not None:
                yield layer, cache

    # -- copying between layers ----------------------------------------------------------

    def _fetch(self, layer: _Layer, cache: Cache, oid: str) -> BytesLike | None:
        """The verified bytes of object ``oid`` in a source layer, or None (nothing is copied then)."""
        try:
            blob = cache.store.get(oid)
            codec.unframe(blob, f"object {oid} in {cache.url}", expect=oid)
        except (CacheMiss, CorruptObjectError):
            return None  # loading it will find out and say so; copying it would spread the fault
        except OSError as e:
            self._fault(layer, "read", e, reads=True)
            return None
        return blob

    def _supply(
        self,
        layer: _Layer,
        target: Cache,
        oids: list[str],
        blobs: dict[str, BytesLike],
        source: tuple[_Layer, Cache] | None = None,
    ) -> bool:
        """Put each object of ``oids`` into ``layer`` unless it is there; False if one cannot be had.

        Bytes come from ``source`` or else from any other layer holding them
        (those known to, first), verified, and are kept in ``blobs`` for the
        next target.  OSError from writing ``layer`` is the caller's to handle.
        """
        for oid in oids:
            if layer.has_object(oid):
                continue
            blob = blobs.get(oid)
            if blob is None:
                if source is not None:
                    candidates = [source]
                else:
                    candidates = [(la, c) for la, c in self._readable() if la is not layer]
                    candidates.sort(key=lambda lc: oid not in lc[0].known)
                fetched: Iterator[BytesLike] = filter(
                    None, (self._fetch(la, c, oid) for la, c in candidates)
                )
                blob = next(fetched, None)
                if blob is None:
                    return False
                blobs[oid] = blob
            target.store.put(blob, oid=oid)
            layer.remember(oid)
        return True

    def _copy_up(
        self, source: _Layer, cache: Cache, function_id: str, key: str, rec: dict[str, Any]
    ) -> None:
        """Copy a hit found in a lower layer into the writable layer(s) above: objects, then record."""
        oids = referenced_oids(rec)
        blobs: dict[str, BytesLike] = {}
        for layer, target in self._writable(above=source.index):
            try:
                if not self._supply(layer, target, oids, blobs, (source, cache)):
                    return  # the source lacks an object (or it is damaged): loading will say so
                target.put_record(function_id, key, rec)
            except OSError as e:
                self._fault(layer, "write", e, reads=False)
                continue
            if self.write == "first":
                return

    def _repair(
        self,
        oid: str,
        blob: BytesLike,
        damaged: list[tuple[_Layer, Cache]],
        source: _Layer,
        error: CorruptObjectError | None,
    ) -> None:
        """Put good bytes back where a damaged copy was quarantined; say what happened."""
        fixed = []
        for layer, cache in damaged:
            if layer.read_only:
                continue
            try:
                cache.store.put(blob, oid=oid)
            except OSError as e:
                self._fault(layer, "write", e, reads=False)
                continue
            layer.remember(oid)
            fixed.append(layer.label)
        where = ", ".join(la.label for la, _ in damaged)
        done = f"; the good copy was put back into {', '.join(fixed)}" if fixed else ""
        warn_user(
            f"fleche: {error}; loaded object {oid} from {source.label} instead of {where}{done}"
        )
