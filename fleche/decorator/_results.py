"""Reading and writing a cached function's calls, failing open: :class:`ResultIO`.

A hit is one record read and its result decoded (:meth:`ResultIO.lookup`); a
miss's result is written value first, then the record that points at it
(:meth:`ResultIO.store`). Every record keeps the digest of the code that computed
it: a hit computed by other code is served with a warning, served, or recomputed
(:meth:`ResultIO.stale`). A store that cannot be read or written, a corrupt
object or a result that cannot be serialized never costs the caller their
result: one :class:`~fleche.errors.FlecheWarning` per function and kind of
fault says what went wrong, and a cache whose reads failed is skipped for
:data:`~fleche.cache._layers.RETRY_AFTER` seconds.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from fleche.cache import RETRY_AFTER, MmapMode, type_name
from fleche.config import AnyCache
from fleche.errors import (
    CacheMiss,
    CorruptObjectError,
    FlecheError,
    FlecheWarning,
    ForeignKeyMiss,
    SerializationError,
    StaleCodeWarning,
    warn_user,
)
from fleche.records import ALL_METADATA, META, Choice, PendingCall, collect_metadata, is_clear

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any

# Hits, misses and stores at DEBUG: logging.getLogger("fleche").setLevel("DEBUG"). On the hit
# path, the isEnabledFor check costs 30-70 ns of a ~5 µs hit when logging is off (docs/usage.md).
# The logger keeps the name docs/usage.md gives it: "fleche.decorator", where @fleche lives.
_DEBUG = 10  # logging.DEBUG


class _NoLogging:
    """The logger's stand-in until the process imports :mod:`logging` (~5 ms ``import fleche`` skips).

    Before that import nobody can have asked for DEBUG, so the answer is no; the
    first check after it puts the real logger in ``_log``, and from then on hits
    pay exactly the real ``isEnabledFor``.
    """

    __slots__ = ()

    def isEnabledFor(self, level: int) -> bool:
        logging = sys.modules.get("logging")
        if logging is None:
            return False
        global _log
        _log = logging.getLogger("fleche.decorator")
        return bool(_log.isEnabledFor(level))


_log: Any = _NoLogging()

# Caches whose reads failed (a server down, a refused read): id -> (time.monotonic() until
# which they are skipped, the cache). Every call then does not wait for the client's retries
# again (an S3 client takes ~6 s to give up on one request) before computing. By object, not
# by URL: private memory stores all have the URL memory://.
_DOWN: dict[int, tuple[float, Any]] = {}


def _down(cache: Any) -> bool:
    entry = _DOWN.get(id(cache))
    if entry is None or entry[1] is not cache:
        return False
    if time.monotonic() < entry[0]:
        return True
    _DOWN.pop(id(cache), None)  # time to try it again
    return False


class Undecodable:
    """What a lookup answers (as its value, with hit False) when a stored result failed to load.

    Looking the call up again within the same call (single-flight's second
    look, an executor's worker) skips that result instead of decoding it
    again: a pickle that failed part way has run some of its constructors.
    """

    __slots__ = ("key", "ref")

    def __init__(self, key: str, ref: dict[str, Any]) -> None:
        self.key = key
        self.ref = ref

    def __repr__(self) -> str:
        return f"Undecodable({self.key!r})"


def _utf8(text: str) -> bool:
    """Whether ``text`` can be stored in clear (UTF-8): not with lone surrogates ("a\\udcff")."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


class ResultIO:
    """The cache reads and writes of :class:`fleche.decorator.CachedFunction`, which sets these:"""

    function_id: str
    qualname: str
    module: str
    mmap: MmapMode
    metadata: frozenset[str] | None
    meta_choice: Choice | None  # @fleche(meta=...): the original fleche's providers
    func: Callable[..., Any]
    code_func: Callable[..., Any] | None  # the Python function whose source it runs, if any
    stale_code: str | None
    code_now: str | None
    _code_known: bool
    _decorated_ns: int
    _record_head: dict[str, Any]
    _warned: set[str]

    # -- warnings ------------------------------------------------------------------------

    def warn_once(
        self, kind: str, message: str, category: type[FlecheWarning] = FlecheWarning
    ) -> None:
        """One warning per function and kind of fault: a loop of failures says it once."""
        if kind not in self._warned:
            self._warned.add(kind)
            warn_user(f"fleche: {self.qualname}: {message}", category)

    # -- code ----------------------------------------------------------------------------

    def running_code(self) -> str | None:
        """The digest of the running code (None: unknown), which every record keeps."""
        if not self._code_known:
            from fleche.digest import code_digest_since  # once per function

            code = self.code_func
            self.code_now = None if code is None else code_digest_since(code, self._decorated_ns)
            self._record_head["code"] = self.code_now
            self._code_known = True
        return self.code_now

    def stale(self, cache: AnyCache, key: str, stored: Any) -> bool:
        """A hit's record says other code computed it: True when it is to be recomputed.

        Else it is served, with one :class:`StaleCodeWarning` per function unless the
        choice (the function's ``stale_code``, else its cache's) is ``"serve"``.
        """
        now = self.running_code()
        if now is None or stored == now:  # unknown code; or the first hit, of the same code
            return False
        choice = self.stale_code or cache.stale_code or "warn"
        if choice == "recompute":
            if _log.isEnabledFor(_DEBUG):
                _log.debug("stale %s %s in %s: recomputing", self.function_id, key, cache.url)
            return True
        if choice == "warn":
            name = getattr(self.func, "__name__", self.qualname)
            self.warn_once(
                "stale",
                f"served a result computed by other code: the function's code changed since "
                f"the result was stored (code {str(stored)[:12]} then, {now[:12]} now). If "
                f"the change alters results, bump version= (or decorate with hash_code=True "
                f"to key results by code) or recompute with {name}.rerun(...); "
                f'stale_code="recompute" (in @fleche or fleche.toml) recomputes such hits, '
                f'stale_code="serve" serves them without this warning',
                StaleCodeWarning,
            )
        return False

    # -- lookups (fail open) -------------------------------------------------------------

    def lookup(
        self, cache: AnyCache, key: str, refused: Undecodable | None = None
    ) -> tuple[bool, Any]:
        """(True, result) on a hit; (False, None) on a miss or any fault reading the cache.

        (False, :class:`Undecodable`) when the stored result failed to load:
        pass it as ``refused`` to look again without loading that result again.
        """
        ref = None
        try:
            rec = cache.get_record(self.function_id, key, lazy=True)
            if rec is None:
                if _log.isEnabledFor(_DEBUG):
                    _log.debug("miss %s %s in %s", self.function_id, key, cache.url)
                return False, None
            ref = rec["result"]
            if refused is not None and refused.key == key and refused.ref == ref:
                return False, refused  # it failed moments ago, in this call: not again
            code = rec.get("code")  # the code that computed it (None in older records)
            if code is not None and code != self.code_now and self.stale(cache, key, code):
                return False, None
            value = cache.load_value(ref, mmap=self.mmap) if self.mmap else cache.load_value(ref)
            if _log.isEnabledFor(_DEBUG):
                _log.debug("hit %s %s in %s", self.function_id, key, cache.url)
            return True, value
        except ForeignKeyMiss:  # another key's value, left alone: the cache warned, once per key
            pass
        except CacheMiss:
            self.warn_once(
                "dangling", f"the record of call {key} points at a missing object; recomputing"
            )
        except (CorruptObjectError, SerializationError) as e:
            self.warn_once("unreadable", f"{e}; recomputing")
            if ref is not None:
                return False, Undecodable(key, ref)
        except OSError as e:
            # one warning per store fault, read or write: a server that is down says it once
            _DOWN[id(cache)] = (time.monotonic() + RETRY_AFTER, cache)
            self.warn_once(
                f"io:{cache.url}",
                f"cannot read {cache.url} ({e}); recomputing, without it for {RETRY_AFTER:g} s",
            )
        return False, None

    def skipped(self, cache: AnyCache) -> bool:
        """True (after one warning) while the cache is skipped: it failed a read moments ago."""
        if not _DOWN or not _down(cache):
            return False
        self.warn_once(f"io:{cache.url}", f"{cache.url} failed moments ago; computing uncached")
        return True

    # -- storing -------------------------------------------------------------------------

    def record(
        self,
        cache: AnyCache,
        call: PendingCall,
        result_ref: dict[str, Any],
        started: float,
        duration: float,
        cpu: float | None = None,
    ) -> dict[str, Any]:
        arguments: dict[str, Any] = {}
        for (name, value), d in zip(call.items, call.digests, strict=True):
            if is_clear(value) and (type(value) is not str or _utf8(value)):
                arguments[name] = value
                continue
            try:
                ref = cache.put_value(value)
            except SerializationError:
                ref = {"type": type_name(value)}  # the key is still exact; the value is not kept
            ref["digest"] = d.hex()
            arguments[name] = ref
        if not self._code_known:
            self.running_code()
        rec = self._record_head.copy()  # the fields that are the same for every call
        rec["digest"] = call.key
        rec["arguments"] = arguments
        rec["result"] = result_ref
        chosen = self.metadata
        if chosen is None:
            ctx = META.get()  # fleche.meta(...) in force: it replaces or adds to the cache's
            if ctx is not None and ctx[1]:
                chosen = ctx[0].groups
            else:
                chosen = getattr(cache, "metadata_groups", ALL_METADATA)
                if ctx is not None:
                    chosen = chosen | ctx[0].groups
        own = self.meta_choice  # @fleche(meta=...): added, with its tags, to every call
        if own is not None:
            chosen = chosen | own.groups
        meta = rec["metadata"] = collect_metadata(started, duration, cpu, chosen, self.module)
        if own is not None and own.tags:
            meta["tags"] = {**meta.get("tags", {}), **own.tags}
        return rec

    def store(
        self,
        cache: AnyCache,
        call: PendingCall,
        result: Any,
        started: float,
        duration: float,
        cpu: float | None = None,
    ) -> None:
        """Write the value, then the record that points at it; warn (never raise) on faults."""
        key = call.key
        debug = _log.isEnabledFor(_DEBUG)
        if cache.read_only or (_DOWN and _down(cache)):
            if debug:
                _log.debug(
                    "not stored %s %s: %s is read-only or down", self.function_id, key, cache.url
                )
            return
        try:
            t0 = time.perf_counter() if debug else 0.0
            ref = cache.put_value(result)
            rec = self.record(cache, call, ref, started, duration, cpu)
            cache.put_record(self.function_id, key, rec)
            if debug:
                from fleche.render import format_duration, format_size

                inline = ref.get("inline")
                where = "inline" if inline is not None else f"as object {ref.get('oid')}"
                size = len(inline) if inline is not None else ref.get("size")
                _log.debug(
                    "stored %s %s in %s: %s %s %s; computed in %s, stored in %s",
                    self.function_id,
                    key,
                    cache.url,
                    ref.get("type"),
                    format_size(size),
                    where,
                    format_duration(duration),
                    format_duration(time.perf_counter() - t0),
                )
        except SerializationError as e:
            self.warn_once(f"serialize:{type(result).__qualname__}", f"{e}; returned uncached")
        except (OSError, FlecheError) as e:
            self.warn_once(
                f"io:{cache.url}", f"cannot write to {cache.url} ({e}); returned uncached"
            )
