"""The index: a queryable catalogue of a store's call records, and never the truth.

:class:`Index` owns the database (:mod:`fleche.index._db`) and its lock, turns a
fault into one warning and a stale mark, and buffers the ``add``/``remove`` of
records written through a cache: a miss pays microseconds, not a commit.
Buffered writes are flushed before every query and at exit; a forked child drops
the ones it inherited (its parent flushes them).  Before a query it catches up
with the store (:mod:`fleche.index._fresh` says what changed), then answers from
SQL (:mod:`fleche.index._sqlgen`).
"""

from __future__ import annotations

import atexit
import functools
import gc
import itertools
import json
import math
import operator
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator

import msgpack
import xxhash

from fleche import codec
from fleche.digest import digest_bytes
from fleche.errors import ConfigError, CorruptObjectError, warn_user
from fleche.index._db import CatalogReset, Db, IndexFault, SqliteDb, Tx, is_busy
from fleche.index._fresh import (
    PACK_STAMP,
    RefreshReport,
    fan_listing,
    fan_mtimes,
    inflight_state,
    is_local,
    is_memory,
    list_function,
    list_functions,
    moved_unchanged,
    read_records,
    record_stamp,
    settled,
)
from fleche.index._layers import scan
from fleche.index._sqlgen import compile_spec
from fleche.index._sqlrows import (
    FN,
    FN_NAME,
    FUNCTION,
    KEY,
    NUMBERS,
    VOLATILE,
    Row,
    call_row,
    decode_metadata,
    own_metadata,
)
from fleche.index._where import default_location, sqlite_with_fallback
from fleche.index._write import (
    BATCH,
    chunks,
    delete,
    drop_function,
    placeholders,
    upsert_postgresql,
    upsert_sqlite,
)
from fleche.records import NOT_LISTED, ListedCall, ListedRow, Metadata, QuerySpec
from fleche.store import ObjectStore, is_function_id

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any, TypeVar

Progress = Callable[[str, int, int], None]
"""``progress(phase, done, total)``, as ``fleche.cli.progress_bar`` draws it."""

if TYPE_CHECKING:
    _T = TypeVar("_T")

REMOTE_MAX_AGE = 300.0
"""Seconds a listing of a remote store is trusted: records written there by other
machines show up in queries after at most this long (or ``fleche index refresh``)."""
PENDING_MAX = 256  # buffered writes before a flush
PAGE = 1000  # rows fetched per query page
PAGE_MAX = 16_000
"""Rows per page a listing grows to (doubling from :data:`PAGE`): a first call comes after
one small page, a million after a few statements, each built with the cyclic garbage
collector paused (see :meth:`Index._listed_rows`)."""
ANALYZE_FROM = 1000  # rows from which the planner gets statistics
PENDING_AGE = 1.0  # seconds the oldest buffered write may wait for the next one
BULK_FROM = 10_000
BULK_BATCH = 5_000
"""Rows per transaction in a bulk catch-up: fewer commits, each writing the pages it touched
to the -wal file once (at 500, a first catch-up of 100k calls wrote every page many times)."""
"""New rows from which a catch-up drops the secondary indexes and sorts them afterwards
(when they are at least as many as the rows already catalogued; see ``Index._bulk``)."""
LOCKED_RETRY = 60.0
"""Seconds a catalogue found locked (past its busy timeout) is left alone: queries read the
store meanwhile, and writes wait for the refresh that follows, so no call waits on that lock
again and again."""


# -- every live catalogue: flushed at exit, reset in a forked child ------------------------

_LIVE: weakref.WeakSet[Index] = weakref.WeakSet()


@atexit.register
def _flush_all() -> None:
    """Buffered writes reach the catalogue before the interpreter exits (best effort)."""
    for index in list(_LIVE):
        index.flush()


def _after_fork() -> None:
    """In a forked child: fresh locks (another thread may have held them), no inherited writes.

    The parent flushes its own buffered writes; the child would only repeat them.
    """
    for index in list(_LIVE):
        index._lock = threading.RLock()
        index._pending_lock = threading.Lock()
        index._pending = []
        index.db.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


POST_COLUMNS = (
    "c.metadata, c.created, c.m_duration, c.m_finished, c.m_cpu, c.m_pid, c.meta, "
    "(SELECT sm.metadata FROM fleche_meta sm WHERE sm.id = c.meta)"
)
"""What a metadata condition decided in Python reads of a call row: its own metadata (as
``own_metadata`` takes it), its ``fleche_meta`` id and that row's shared JSON."""


_POST = ", c.metadata, c.meta, {shared}, c.m_duration, c.m_finished, c.m_cpu, c.m_pid"
"""Row columns 4-10 of a page with metadata decided in Python or built into records: the
call's own metadata (as ``own_metadata`` takes it), its ``fleche_meta`` id and, for a
condition decided in Python, that row's shared JSON (a listing reads each such row once)."""
_SHARED = "(SELECT m.metadata FROM fleche_meta m WHERE m.id = c.meta)"
_FULL = ", c.v_digest, c.v_i, c.v_f, c.v_s, c.args"
"""Row columns 11-15 of a page built into records: the version's digest and typed value,
and the arguments when all are plain (msgpack, see ``plain_arguments``)."""
if TYPE_CHECKING:  # an alias for annotations only (typing's Any is not loaded at run time)
    _Context = tuple[Any, Any, Any, list[Any], list[Any], Any, bool, Any]
"""A ``fleche_meta`` row as a listing uses it: module, qualname, code, argument names,
metadata keys, shared metadata (decoded), whether a shallow copy of that is a copy
(scalars only), and the template of :func:`_template` (or None)."""
_OWN = ("created", "duration", "finished", "cpu", "pid")
_FUNCTION, _KEY = operator.itemgetter(2), operator.itemgetter(3)  # of a listing's call row
if TYPE_CHECKING:
    Idents = Iterable[tuple[str, str]]
    """The ``(function_id, key)`` of a page's calls (see :meth:`Index._answered`)."""


def _template(
    keys: list[Any], shared: Any
) -> tuple[dict[str, Any], tuple[bool, ...], tuple[tuple[str, Callable[[Any], Any]], ...]] | None:
    """A call's metadata before its own values, for calls whose own values are all in
    typed columns: ``(dict in the record's key order, which of _OWN it has, the keys
    whose values are containers, each with how to copy it)``, or None.

    Only when the keys are strs that the shared part and :data:`_OWN` account for
    exactly. The containers (a ``git`` map, say) are copied per call with
    :func:`_tree_copy`: each call gets metadata of its own to change.
    """
    if type(shared) is not dict or not all(type(k) is str for k in keys):
        return None
    own = [k for k in keys if k in VOLATILE]
    rest = [k for k in keys if k not in VOLATILE]
    if len(rest) != len(shared) or any(k not in shared for k in rest):
        return None
    nested = tuple(
        (k, dict.copy if _flat_map(shared[k]) else _tree_copy)
        for k in rest
        if type(shared[k]) not in _SCALARS
    )
    return {k: shared.get(k) for k in keys}, tuple(k in own for k in _OWN), nested


def _flat_map(v: Any) -> bool:
    return type(v) is dict and all(type(x) in _SCALARS for x in v.values())


def _tree_copy(v: Any) -> Any:
    """A copy of decoded metadata (maps, lists and immutable leaves): what decoding its
    JSON again would give, without the JSON (~10 µs a call for a ``git`` map)."""
    t = type(v)
    if t is dict:
        return {k: x if type(x) in _SCALARS else _tree_copy(x) for k, x in v.items()}
    if t is list:
        return [x if type(x) in _SCALARS else _tree_copy(x) for x in v]
    return v


_SCALARS = frozenset([str, int, float, bool, type(None)])
_NOT = object()  # no value the catalogue can rebuild exactly
_CONSTANTS: dict[bytes, Any] = {}
_NONE_DIGEST = (digest_bytes(None),)


def _plain_value(digest: Any, i: Any, f: Any, s: Any) -> Any:
    """The value an argument row (or a version) stands for, or :data:`_NOT`.

    Rebuilt from the typed column that holds it (``True``, ``False`` and ``None``
    from their digest). The columns hold ints, strs and floats exactly, but for
    the sign of a zero (SQLite stores -0.0 as the integer 0): a zero float is
    checked against the row's digest, and what does not check is read from the
    record instead.
    """
    if digest is None:
        return _NOT
    d = bytes(digest)
    if i is not None:
        value: Any = int(i)
    elif s is not None:
        try:
            value = bytes(s).decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            return _NOT
    elif f is not None:
        value = float(f)
        if value == 0.0 and digest_bytes(value) != d:
            return -0.0 if digest_bytes(-0.0) == d else _NOT
    else:
        if not _CONSTANTS:
            for c in (True, False, None):
                _CONSTANTS[digest_bytes(c)] = c
        return _CONSTANTS.get(d, _NOT)
    return value


class _Listed(ListedRow):
    """The calls of one function sharing one ``fleche_meta`` row, as a listing reads them
    from their call rows (see :meth:`Index.listing`): shared by their
    :class:`~fleche.records.ListedCall`s, which ask it for a field when first used."""

    __slots__ = ("context",)

    def __init__(
        self,
        fid: str,
        context: _Context,
        loader: Callable[[dict[str, Any]], Any] | None,
        reread: Callable[[str, str], dict[str, Any] | None] | None,
    ) -> None:
        self.function_id = fid
        self.module, self.name, self.code_digest = context[0], context[1], context[2]
        self.context = context
        if loader is not None and reread is not None:
            self.loader, self.reread = loader, reread

    def digest(self, row: tuple[Any, ...]) -> str:
        return str(row[3])

    def version(self, row: tuple[Any, ...]) -> Any:
        if row[11] == _NONE_DIGEST[0]:  # most versions: None (the digest says it exactly)
            return None
        version = _plain_value(row[11], row[12], row[13], row[14])
        return NOT_LISTED if version is _NOT else version

    def arguments(self, row: tuple[Any, ...]) -> dict[str, Any] | None:
        blob = row[15]
        if blob is None:  # an argument of another type: the record has it
            return None
        try:
            arguments = msgpack.unpackb(blob, raw=False, strict_map_key=False)
        except (ValueError, TypeError, msgpack.UnpackException):
            return None
        if type(arguments) is not dict or len(arguments) != len(self.context[3]):
            return None
        for value in arguments.values():
            if type(value) not in _SCALARS:
                return None
        return arguments

    def metadata(self, row: tuple[Any, ...]) -> Metadata | None:
        _, _, _, _, keys, shared, flat, template = self.context
        if row[4] is None and template is not None:
            created = row[0]
            has = (
                created is not None and created != 0.0,
                row[7] is not None,
                row[8] is not None,
                row[9] is not None,
                row[10] is not None,
            )
            if has == template[1]:  # the common case: no JSON left, the columns say it all
                metadata = Metadata(template[0])
                for k, copy in template[2]:
                    metadata[k] = copy(metadata[k])
                if has[0]:
                    metadata["created"] = float(created)
                if has[1]:
                    metadata["duration"] = float(row[7])
                if has[2]:
                    metadata["finished"] = float(row[8])
                if has[3]:
                    metadata["cpu"] = float(row[9])
                if has[4]:
                    metadata["pid"] = int(row[10])
                return metadata
        own = own_metadata(row[4], row[0], row[7], row[8], row[9], row[10])
        if type(own) is not dict or type(shared) is not dict:
            return None
        merged = dict(shared) if flat else _tree_copy(shared)
        merged.update(own)
        if len(merged) != len(keys):
            return None
        try:  # in the record's order (the metadata is kept in two parts)
            return Metadata({k: merged[k] for k in keys})
        except (KeyError, TypeError):
            return None

    def record(self, row: tuple[Any, ...]) -> dict[str, Any] | None:
        """The call's record as the catalogue gives it (no ``result``), or None."""
        version = self.version(row)
        if version is NOT_LISTED:
            return None
        arguments = self.arguments(row)
        if arguments is None:
            return None
        metadata = self.metadata(row)
        if metadata is None:
            return None
        return _record(
            row,
            self.function_id,
            self.module,
            self.name,
            self.code_digest,
            version,
            arguments,
            metadata,
        )


def _record(
    row: tuple[Any, ...],
    fid: str,
    module: str,
    qualname: str,
    code: str | None,
    version: Any,
    arguments: dict[str, Any],
    metadata: Metadata,
) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "function": fid,
        "digest": row[3],
        "module": module,
        "qualname": qualname,
        "version": version,
        "arguments": arguments,
        "metadata": metadata,
    }
    if code is not None:
        rec["code"] = code
    return rec


def _meta_order(dialect: str, path: list[str], params: dict[str, Any]) -> str:
    """The SQL value a page is ordered by for ``meta:KEY.KEY``, as the catalogue keeps it.

    ``created`` and the numbers of ``NUMBERS`` are typed columns of the call row (JSON
    only when not a number); other own keys are in the row's JSON, and every other top
    key is in its shared ``fleche_meta`` row (joined as ``m``).
    """
    sqlite = dialect == "sqlite"
    if sqlite:
        params["order_path"] = "$" + "".join(f'."{k}"' for k in path)
        at = "json_extract({}, :order_path)"
    else:
        params["order_path"] = "{" + ",".join(path) + "}"
        at = "({} #> CAST(:order_path AS text[]))"
    own = at.format("c.metadata")
    if path == ["created"]:
        return "c.created" if sqlite else "to_jsonb(c.created)"
    if len(path) == 1 and path[0] in NUMBERS:
        col = f"c.{NUMBERS[path[0]]}"
        return f"COALESCE({col}, {own})" if sqlite else f"COALESCE(to_jsonb({col}), {own})"
    if path[0] in VOLATILE:
        return own
    return f"COALESCE({own}, {at.format('m.metadata')})"


class Index:
    """A catalogue of one store's call records, in the database behind ``db``.

    ``store``: the store it indexes; an index without one only stores what it
    is given (``add``/``remove``) and never catches up. ``max_age``: seconds a
    listing of a non-local store is trusted (:data:`REMOTE_MAX_AGE`; 0 lists
    before every query, which is what memory stores get).

    ``add`` and ``remove`` never raise for a fault of the index: they warn
    once and mark it stale (it catches up in full at the next query). Search
    and count answer from the store by a scan, with a warning, when the
    catalogue cannot be used.
    """

    def __init__(
        self, db: Db, store: ObjectStore | None = None, *, max_age: float | None = None
    ) -> None:
        self.db = db
        self.store = store
        if max_age is None:
            max_age = 0.0 if is_memory(store) else REMOTE_MAX_AGE
        self.max_age = max_age
        self._lock = threading.RLock()  # one catalogue operation at a time in this process
        self._pending_lock = threading.Lock()
        self._pending: list[tuple[str, str, str, dict[str, Any] | None, int]] = []
        self._pending_since = 0.0
        self._stale = False
        self._locked_at: float | None = None  # time.monotonic() of the last lock that did not clear
        self._checked_identity = False
        self._warned: set[str] = set()
        # (function, fan) pairs this process knows have a fleche_fans row
        self._fans_known: set[tuple[str, str]] = set()
        self._analyzed: int | None = None  # catalogue size at the last ANALYZE
        _LIVE.add(self)

    def __repr__(self) -> str:
        return f"Index({self.db.location!r}, store={getattr(self.store, 'url', None)!r})"

    @property
    def stale(self) -> bool:
        """True after a fault, until a full refresh (done by the next query) succeeds."""
        return self._stale

    @property
    def location(self) -> str:
        """Where the catalogue is: a file path or a database URL (password hidden)."""
        return self.db.location

    # -- faults --------------------------------------------------------------------------

    def _fault(self, action: str, error: BaseException) -> None:
        """Warn once per kind of fault; the index is stale until a full refresh succeeds.

        A lock that did not clear within the busy timeout also sets the catalogue
        aside for :data:`LOCKED_RETRY` seconds (:attr:`locked`).
        """
        self._stale = True
        if is_busy(error):
            self._locked_at = time.monotonic()
            kind = "locked"
        else:
            kind = f"{action}:{type(error).__name__}"
        if kind not in self._warned:
            self._warned.add(kind)
            where = getattr(self.store, "url", None) or "its store"
            # the driver's own message, first line: SQLAlchemy appends the statement and parameters
            said = str(getattr(error, "orig", None) or error).strip().splitlines()
            reason = (said[0] if said else type(error).__name__)[:300]
            warn_user(
                f"fleche: the index of {where} ({self.db.location}) failed to {action}: {reason}; "
                "the store is unaffected (queries read it directly until the index recovers; "
                "this warning is not repeated)"
            )

    @property
    def locked(self) -> bool:
        """True while the catalogue is left alone after a lock that did not clear."""
        return self._locked_at is not None and time.monotonic() < self._locked_at + LOCKED_RETRY

    def _reset(self, reset: CatalogReset) -> None:
        self._stale = True
        if "reset" not in self._warned:
            self._warned.add("reset")
            warn_user(
                f"fleche: the index {self.db.location} was set aside: {reset.reason}; it is being "
                "rebuilt from the store (nothing is lost: the index is a copy of the store's records)"
            )

    def _guarded(self, fn: Callable[[], _T]) -> _T:
        """Run a catalogue operation; a reset catalogue is refilled and the operation retried once."""
        try:
            return fn()
        except CatalogReset as r:
            self._reset(r)
            if self.store is not None:
                self._refresh(self.store)
                self._stale = False
        return fn()

    # -- writes (batched) ----------------------------------------------------------------

    def add(self, function_id: str, key: str, record: dict[str, Any], size: int) -> None:
        """Catalogue a record just written to the store (``size``: its bytes there).

        On a local store this does nothing: the catalogue catches up from the
        fan directories' stamps before each query (it must, for other
        processes' writes), so a miss does not pay ~30 µs of row building and
        SQLite work that doubled its cost. Listing a remote store is slow, so
        there writes are catalogued as they happen (buffered).
        """
        if is_local(self.store):
            return
        # a record copied up from a lazily read one may still hold its fields packed
        self._queue(("add", function_id, key, codec.expand_record(dict(record)), size))

    def remove(self, function_id: str, key: str) -> None:
        """Forget a record just deleted from the store (local stores: see :meth:`add`)."""
        if is_local(self.store):
            return
        self._queue(("remove", function_id, key, None, 0))

    def _queue(self, op: tuple[str, str, str, dict[str, Any] | None, int]) -> None:
        now = time.monotonic()
        with self._pending_lock:
            if not self._pending:
                self._pending_since = now
            self._pending.append(op)
            due = len(self._pending) >= PENDING_MAX or now - self._pending_since > PENDING_AGE
        if due:
            self.flush()

    def flush(self) -> None:
        """Write buffered updates to the catalogue now (also done before every query and at exit)."""
        with self._pending_lock:
            ops, self._pending = self._pending, []
        if not ops:
            return
        if self.locked:  # not waited on again: the full refresh after the lock catches up
            self._stale = True
            return
        try:
            with self._lock:
                self._guarded(lambda: self._apply(ops))
        except self.db.faults as e:
            self._fault("record a write", e)

    def _apply(self, ops: list[tuple[str, str, str, dict[str, Any] | None, int]]) -> None:
        local = is_local(self.store)
        new_fans: set[tuple[str, str]] = set()
        with self.db.transaction() as tx:
            for kind, group in itertools.groupby(ops, key=lambda op: op[0]):
                items = list(group)
                if kind == "add":
                    rows = []
                    for _, fid, key, rec, size in items:
                        stamp = (
                            record_stamp(self.store, fid, key)
                            if local and self.store is not None  # local: a LocalStore
                            else None
                        )
                        rows.append(call_row(fid, key, rec or {}, size, stamp))
                    for chunk in chunks(rows):
                        self._upsert(tx, chunk)
                    if local:  # the stamp check now knows the function (and looks at these fans)
                        fans = {(op[1], op[2][:2]) for op in items} - self._fans_known
                        for fid, fan in sorted(fans):
                            tx.execute(
                                "INSERT INTO fleche_fans (function, fan, stamp) "
                                "VALUES (:f, :n, NULL) ON CONFLICT (function, fan) DO NOTHING",
                                {"f": fid, "n": fan},
                            )
                        new_fans.update(fans)
                else:
                    for fid, keys in itertools.groupby(items, key=lambda op: op[1]):
                        for chunk in chunks([op[2] for op in keys]):
                            delete(tx, fid, chunk)
        self._fans_known |= new_fans  # committed: no need to say it again in this process

    def _upsert(self, tx: Tx, rows: list[Row]) -> None:
        latest = {(r[0][FUNCTION], r[0][KEY]): r for r in rows}  # a rerun: the last wins
        rows = [latest[k] for k in sorted(latest)]  # one lock order for every writer
        if self.db.dialect == "postgresql":
            upsert_postgresql(tx, rows)
        else:
            upsert_sqlite(tx, rows)

    def _state_number(self, name: str) -> float:
        """A number the catalogue keeps in ``fleche_state`` (rows counted at the last
        ANALYZE, when a listing was taken); 0 when absent or not a finite number >= 0.

        Read back from a file anyone may have edited or damaged: a value that is no
        number counts as none, so the catalogue redoes that work instead of failing.
        """
        rows = self.db.read("SELECT value FROM fleche_state WHERE name = :n", {"n": name})
        try:
            value = float(rows[0][0]) if rows else 0.0
        except (TypeError, ValueError):
            return 0.0
        return value if math.isfinite(value) and value >= 0 else 0.0

    @staticmethod
    def _set_state(tx: Tx, name: str, value: str) -> None:
        tx.execute("DELETE FROM fleche_state WHERE name = :n", {"n": name})
        tx.execute(
            "INSERT INTO fleche_state (name, value) VALUES (:n, :v)", {"n": name, "v": value}
        )

    # -- queries -------------------------------------------------------------------------

    def search(
        self, spec: QuerySpec, *, limit: int | None = None, newest_first: bool = True
    ) -> Iterator[tuple[str, str]]:
        """``(function_id, key)`` of the calls matching ``spec``, newest first (or oldest first).

        Lazy: the catalogue is brought up to date at the first ``next()``, then
        read a page at a time.
        """
        return (
            (fid, key) for _, fid, key in self.rows(spec, limit=limit, newest_first=newest_first)
        )

    def rows(
        self, spec: QuerySpec, *, limit: int | None = None, newest_first: bool = True
    ) -> Iterator[tuple[float, str, str]]:
        """As :meth:`search`, with each call's ``created`` time first (for merging indexes)."""
        for page, _ in self._answered(spec, limit, newest_first, self._select):
            yield from page

    def _answered(
        self,
        spec: QuerySpec,
        limit: int | None,
        newest_first: bool,
        answer: Callable[[QuerySpec, int | None, bool], Iterator[tuple[list[Any], Idents]]],
    ) -> Iterator[tuple[list[Any], bool]]:
        """The catalogue's answer, a page (list) at a time, as ``(page, False)``; if the
        catalogue fails (or is left alone), the store's own scan for what it had not
        given yet, as ``([(created, function_id, key)], True)``.

        ``answer(spec, limit, newest_first)`` reads the catalogue, a page at a time, each
        with an iterable of its ``(function_id, key)``s, so that a scan after a fault
        midway gives each call once and ``limit`` calls in all. Those are kept as they
        come, and read into a set only after a fault (a set of a million pairs built
        ahead of a fault that does not come was a tenth of a listing's time).
        """
        if limit is not None and limit <= 0:
            return
        given: list[Idents] = []
        try:
            if not self._left_alone():
                self._prepare(spec)
                for page, idents in answer(spec, limit, newest_first):
                    given.append(idents)
                    yield page, False
                return
        except self.db.faults as e:
            if self.store is None:
                raise IndexFault(f"the index {self.db.location} failed: {e}") from e
            self._fault("answer a query", e)
        assert self.store is not None
        seen = set(itertools.chain.from_iterable(given))
        left = None if limit is None else limit - len(seen)
        for row in scan(self.store, spec, newest_first=newest_first):
            if row[1:] in seen:
                continue
            if left is not None:
                if left <= 0:
                    return
                left -= 1
            yield [row], True

    def count(self, spec: QuerySpec) -> int:
        """How many calls match ``spec``."""
        try:
            if not self._left_alone():
                self._prepare(spec)
                compiled = compile_spec(spec, self.db.dialect)
                if not compiled.post:
                    with self._lock:
                        rows = self._guarded(
                            lambda: self.db.read(
                                f"SELECT COUNT(*) FROM fleche_calls c WHERE {compiled.where}",
                                compiled.params,
                            )
                        )
                    return int(rows[0][0])
                return sum(len(page) for page, _ in self._select(spec, None, False))
        except self.db.faults as e:
            if self.store is None:
                raise IndexFault(f"the index {self.db.location} failed: {e}") from e
            self._fault("answer a query", e)
        assert self.store is not None
        return sum(1 for _ in scan(self.store, spec))

    # -- pages, for a browser (fleche ui) ------------------------------------------------

    def page(
        self,
        spec: QuerySpec,
        *,
        order: str = "created",
        descending: bool = True,
        offset: int = 0,
        limit: int | None = 100,
        matches: int | None = None,
    ) -> list[tuple[str, str]]:
        """``(function_id, key)`` of one page of the calls matching ``spec``, in SQL's order.

        ``order``: ``created``, ``size`` (the record's bytes), ``result`` (the
        result's payload bytes), ``arg:NAME`` (an argument's orderable form:
        numbers, then strings, then what has none) or ``meta:KEY.KEY`` (a
        metadata value, as the database orders JSON). Ties fall back on the
        call's row, so pages never overlap; ``limit`` None: every match from
        ``offset`` on. Without metadata conditions the
        database skips ``offset`` rows itself; with them (decided in Python)
        the candidates are walked. Raises IndexFault when the catalogue cannot
        answer, and ValueError for an unknown ``order``.

        ``matches`` (how many calls match, when the caller counted them) picks
        the plan of a page in time order: with many matches, walking the
        function's calls newest first finds a page after a few hundred rows,
        where starting from the argument conditions visits every match and sorts
        them (100k calls, ``n>=50000 alpha<0.1``, 5k matches: median 250 ms
        against 357 ms over 8 alternating runs); with few matches, the reverse.
        """
        if offset < 0 or (limit is not None and limit <= 0):
            return []
        self._prepare(spec)
        walk = False
        if order == "created" and matches and limit is not None and spec.args:
            every = QuerySpec(function_ids=spec.function_ids)
            all_calls = compile_spec(every, self.db.dialect)
            with self._lock:
                got = self._guarded(
                    functools.partial(
                        self.db.read,
                        f"SELECT COUNT(*) FROM fleche_calls c WHERE {all_calls.where}",
                        all_calls.params,
                    )
                )
            # rows walked to fill the page, against matches visited from the conditions
            walk = (offset + limit) * int(got[0][0]) < matches * matches
        compiled = compile_spec(spec, self.db.dialect, walk=walk)
        params = dict(compiled.params)
        way = "DESC" if descending else "ASC"
        join = ""
        if order in ("created", "size"):
            keys = [f"c.{order} {way}"]
        elif order == "result":
            keys = ["c.result_size IS NULL", f"c.result_size {way}"]
        elif order.startswith("arg:") and order[4:]:
            params["order_arg"] = order[4:]
            join = " LEFT JOIN fleche_args o ON o.call = c.id AND o.name = :order_arg"
            keys = [
                "(CASE WHEN o.i IS NOT NULL OR o.f IS NOT NULL THEN 0 "
                "WHEN o.s IS NOT NULL THEN 1 ELSE 2 END)",
                f"COALESCE(o.f, o.i) {way}",
                f"o.s {way}",
            ]
        elif order.startswith("meta:") and order[5:]:
            path = order[5:].split(".")
            if not all(path):
                raise ValueError(f"order={order!r}: expected meta:KEY[.KEY...]")
            keys = [f"{_meta_order(self.db.dialect, path, params)} {way}"]
            if path[0] not in VOLATILE:  # kept once per context, in fleche_meta
                join = " LEFT JOIN fleche_meta m ON m.id = c.meta"
        else:
            raise ValueError(
                f"order={order!r}: expected created, size, result, arg:NAME or meta:KEY"
            )
        keys.append(f"c.id {way}")
        cols = f"{FN_NAME}, c.key" + (f", {POST_COLUMNS}" if compiled.post else "")
        sql = f"SELECT {cols} FROM fleche_calls c{join} WHERE {compiled.where} ORDER BY {', '.join(keys)}"
        if not compiled.post and limit is not None:
            sql += f" LIMIT {int(limit)} OFFSET {int(offset)}"
        elif not compiled.post:
            sql += (" LIMIT -1" if self.db.dialect == "sqlite" else "") + f" OFFSET {int(offset)}"
        with self._lock:
            rows = self._guarded(functools.partial(self.db.read, sql, params))
        if compiled.post:
            accept = compiled.acceptor()
            rows = [r for r in rows if accept(r[2:8], r[8], r[9])]
            rows = rows[offset:] if limit is None else rows[offset : offset + limit]
        return [(r[0], r[1]) for r in rows]

    def generation(self) -> tuple[int, int]:
        """``(largest row id, rows)`` of the catalogue, caught up first: it changes whenever a
        call is added, replaced or removed, so a reader may keep answers computed from it."""
        self._prepare(QuerySpec())
        with self._lock:
            rows = self._guarded(
                functools.partial(self.db.read, "SELECT MAX(id), COUNT(*) FROM fleche_calls")
            )
        return int(rows[0][0] or 0), int(rows[0][1])

    def functions(self) -> list[tuple[str, int, int, float]]:
        """``(function_id, calls, bytes, last created)`` of every function, catching up first.

        Bytes are the records plus the payloads of the results kept as objects
        (uncompressed; an object several calls share counts once per call).
        Two queries: counts and times from the covering index (milliseconds),
        sizes in one pass over the table (a walk in index order, with a lookup
        per row, is several times slower).
        """
        self._prepare(QuerySpec())
        plain = "" if self.db.dialect != "sqlite" else " NOT INDEXED"
        counts = (
            "SELECT c.function, COUNT(*), MAX(c.created) FROM fleche_calls c GROUP BY c.function"
        )
        names = "SELECT id, name FROM fleche_functions"
        sizes = (
            "SELECT c.function, SUM(c.size), SUM(CASE WHEN c.result_oid IS NULL THEN 0 "
            f"ELSE COALESCE(c.result_size, 0) END) FROM fleche_calls c{plain} GROUP BY c.function"
        )
        with self._lock:
            got = self._guarded(functools.partial(self.db.read, counts))
            weights = self._guarded(functools.partial(self.db.read, sizes))
            name = dict(self._guarded(functools.partial(self.db.read, names)))
        size = {r[0]: int(r[1] or 0) + int(r[2] or 0) for r in weights}
        return sorted(
            (str(name[r[0]]), int(r[1]), size.get(r[0], 0), float(r[2]))
            for r in got
            if r[0] in name
        )

    def created(self, spec: QuerySpec) -> list[float]:
        """The ``created`` time of every call matching ``spec``, oldest first (for a timeline)."""
        self._prepare(spec)
        compiled = compile_spec(spec, self.db.dialect)
        cols = "c.created" + (f", {POST_COLUMNS}" if compiled.post else "")
        sql = f"SELECT {cols} FROM fleche_calls c WHERE {compiled.where} ORDER BY c.created"
        with self._lock:
            rows = self._guarded(functools.partial(self.db.read, sql, compiled.params))
        if not compiled.post:
            return [float(r[0]) for r in rows]
        accept = compiled.acceptor()
        return [float(r[0]) for r in rows if accept(r[1:7], r[7], r[8])]

    def _left_alone(self) -> bool:
        """True while a locked catalogue is not touched: the store answers (warned already)."""
        if not self.locked:
            return False
        if self.store is None:  # nothing else could answer
            raise IndexFault(f"the index {self.db.location} is locked by another connection")
        return True

    def _prepare(self, spec: QuerySpec) -> None:
        self.flush()
        with self._lock:
            if self.store is not None:
                self._guarded(lambda: self._catch_up(spec.function_ids))
            self._guarded(self._maybe_analyze)

    def _maybe_analyze(self) -> None:
        """Refresh the planner's statistics when the catalogue has doubled since they were taken.

        Without them SQLite walks a function's calls in time order testing each
        against the argument condition (100 ms at 1M calls) instead of starting
        from the argument index (0.1 ms). A sampled ANALYZE takes milliseconds.
        """
        rows = self.db.read("SELECT MAX(id) FROM fleche_calls")
        size = int(rows[0][0] or 0)
        if self._analyzed is None:
            self._analyzed = int(self._state_number("analyzed"))
        if size < ANALYZE_FROM or size <= 2 * self._analyzed:
            return
        with self.db.transaction() as tx:
            if self.db.dialect == "sqlite":
                tx.execute("PRAGMA analysis_limit = 1000")  # sample: milliseconds, not seconds
                tx.execute("ANALYZE")
            else:
                tx.execute("ANALYZE fleche_calls")
                tx.execute("ANALYZE fleche_args")
            self._set_state(tx, "analyzed", str(size))
        self._analyzed = size

    def _select(
        self, spec: QuerySpec, limit: int | None, newest_first: bool
    ) -> Iterator[tuple[list[tuple[float, str, str]], Idents]]:
        for page in self._pages(spec, limit, newest_first, full=False):
            rows = [(row[0], row[2], row[3]) for row in page]
            yield rows, ((row[1], row[2]) for row in rows)

    def _pages(
        self, spec: QuerySpec, limit: int | None, newest_first: bool, *, full: bool
    ) -> Iterator[list[tuple[Any, ...]]]:
        """Pages of matching call rows in time order, at most ``limit`` rows in all.

        A row starts ``created, id, function id, key`` (``full``: the function's
        number in ``fleche_functions``, not its id); with metadata conditions
        decided in Python, or ``full``, the columns of :data:`_POST` follow, and with
        ``full`` those of :data:`_FULL` (what a listing builds its calls from).
        """
        compiled = compile_spec(spec, self.db.dialect)
        order = "DESC" if newest_first else "ASC"
        cmp = "<" if newest_first else ">"
        # a listing maps function numbers to ids itself (a subquery per row cost ~0.7 µs)
        cols = f"c.created, c.id, {'c.function' if full else FN_NAME}, c.key"
        if compiled.post or full:
            cols += _POST.format(shared=_SHARED if compiled.post else "NULL")
        if full:
            cols += _FULL
        accept = compiled.acceptor() if compiled.post else None
        left = limit
        after: tuple[float, int] | None = None
        size = PAGE
        while True:
            n = size if left is None or compiled.post else min(size, left)
            if full:
                size = min(2 * size, PAGE_MAX)
            params = dict(compiled.params)
            where = compiled.where
            if after is not None:
                params["kc"], params["ki"] = after
                where += f" AND (c.created {cmp} :kc OR (c.created = :kc AND c.id {cmp} :ki))"
            sql = (
                f"SELECT {cols} FROM fleche_calls c WHERE {where} "
                f"ORDER BY c.created {order}, c.id {order} LIMIT {int(n)}"
            )
            with self._lock:
                page = self._guarded(functools.partial(self.db.read, sql, params))
            kept = page
            if accept is not None:
                kept = [
                    row
                    for row in page
                    if accept((row[4], row[0], row[7], row[8], row[9], row[10]), row[5], row[6])
                ]
            if left is not None and len(kept) >= left:
                yield kept[:left]
                return
            if kept:
                yield kept
            if left is not None:
                left -= len(kept)
            if len(page) < n:
                return
            after = (page[-1][0], page[-1][1])

    # -- listings answered from the catalogue --------------------------------------------

    def listing(
        self, spec: QuerySpec, *, limit: int | None = None, newest_first: bool = True
    ) -> Iterator[tuple[str, str, dict[str, Any] | None]]:
        """``(function_id, key, record)`` of the calls matching ``spec``, as :meth:`search` orders them.

        ``record`` is built from the catalogue alone (no store read): the call's
        function, digest, module, qualname, code, version, arguments and metadata,
        but no ``result`` (a value is read from the store when asked for). It is
        None when the catalogue cannot give that exactly: an argument or version
        kept by reference or of a type it holds no value of (only ``int``,
        ``float``, ``str``, ``bool`` and ``None`` are rebuilt: see
        :func:`_plain_value`), metadata the row cannot give back in the record's
        order, or when the catalogue failed and the store is scanned instead:
        the caller then reads the record.
        """
        for page in self.listed(spec, limit=limit, newest_first=newest_first):
            for item in page:
                if type(item) is tuple:
                    yield item[0], item[1], None
                else:
                    assert isinstance(item, ListedCall)
                    ctx = item._ctx
                    assert isinstance(ctx, _Listed)
                    yield ctx.function_id, ctx.digest(item._row), ctx.record(item._row)

    def listed(
        self,
        spec: QuerySpec,
        *,
        limit: int | None = None,
        newest_first: bool = True,
        loader: Callable[[dict[str, Any]], Any] | None = None,
        reread: Callable[[str, str], dict[str, Any] | None] | None = None,
    ) -> Iterator[list[ListedCall | tuple[str, str]]]:
        """The calls matching ``spec``, as :meth:`search` orders them, a page (list) at a time:
        a :class:`~fleche.records.ListedCall` for each call the catalogue holds exactly
        (see :meth:`listing`), reading its values with ``loader`` and its record with
        ``reread``, and ``(function_id, key)`` for each call the caller must read (all of
        them, as pages of one, when the catalogue failed and the store is scanned).

        Each call is built from its row when a field is first asked for: a page costs
        one SQL statement and one object per call.
        """
        for page, scanned in self._answered(
            spec,
            limit,
            newest_first,
            functools.partial(self._listed_rows, loader=loader, reread=reread),
        ):
            yield [(row[1], row[2]) for row in page] if scanned else page

    def _listed_rows(
        self,
        spec: QuerySpec,
        limit: int | None,
        newest_first: bool,
        *,
        loader: Callable[[dict[str, Any]], Any] | None,
        reread: Callable[[str, str], dict[str, Any] | None] | None,
    ) -> Iterator[tuple[list[ListedCall | tuple[str, str]], Idents]]:
        contexts: dict[int, _Context | None] = {}
        functions: dict[int, str] = {}
        listed: dict[tuple[int, int], _Listed | None] = {}
        versions: dict[Any, bool] = {}  # a version's digest: whether the row holds it exactly
        none = _NONE_DIGEST[0]
        new = object.__new__

        def build(page: list[tuple[Any, ...]]) -> list[ListedCall | tuple[str, str]]:
            nonlocal functions
            missing = {row[5] for row in page if row[5] is not None} - contexts.keys()
            if missing:
                self._contexts(sorted(missing), contexts)
            if any(row[2] not in functions for row in page):  # numbered since: read again
                with self._lock:
                    got = self._guarded(
                        functools.partial(self.db.read, "SELECT id, name FROM fleche_functions")
                    )
                functions = {int(i): str(name) for i, name in got}
            out: list[ListedCall | tuple[str, str]] = []
            fn = meta = -1
            ctx: _Listed | None = None
            for row in page:
                if row[5] != meta or row[2] != fn:
                    fn, meta = row[2], row[5]
                    if (fn, meta) in listed:
                        ctx = listed[fn, meta]
                    else:
                        context = contexts.get(meta) if meta is not None else None
                        ctx = listed[fn, meta] = (
                            None
                            if context is None
                            or not isinstance(context[0], str)
                            or not isinstance(context[1], str)
                            else _Listed(functions[fn], context, loader, reread)
                        )
                if ctx is None or row[15] is None:  # the record has what the row has not
                    out.append((functions[row[2]], row[3]))
                    continue
                v = row[11]
                if v != none:
                    ok = versions.get(v)
                    if ok is None:
                        ok = versions[v] = _plain_value(v, row[12], row[13], row[14]) is not _NOT
                    if not ok:
                        out.append((functions[row[2]], row[3]))
                        continue
                call = new(ListedCall)
                call._row = row
                call._ctx = ctx
                out.append(call)
            return out

        # Each page is read and built with the cyclic garbage collector paused: a listing
        # allocates only objects it keeps (rows of plain values, and one call a row), so
        # the collections their allocation would trigger find nothing to free, and the
        # full ones among them visit every call listed so far (at a million calls, a
        # quarter of the time went to them). The collector runs as usual between pages.
        pages = self._pages(spec, limit, newest_first, full=True)
        while True:
            paused = gc.isenabled()
            if paused:
                gc.disable()
            try:
                page = next(pages, None)
                if page is None:
                    return
                out = build(page)
                keys = list(map(_KEY, page))
                fids = list(map(functions.__getitem__, map(_FUNCTION, page)))
            finally:
                if paused:
                    gc.enable()
            yield out, zip(fids, keys, strict=True)

    def _contexts(
        self,
        ids: list[int],
        out: dict[int, _Context | None],
    ) -> None:
        """Add the ``fleche_meta`` rows ``ids`` to ``out``: module, qualname, code, shared
        metadata decoded, and whether a shallow copy of it is a copy (scalars only)."""
        params: dict[str, Any] = {}
        ph = placeholders("m", ids, params)
        with self._lock:
            got = self._guarded(
                functools.partial(
                    self.db.read,
                    "SELECT id, module, qualname, code, arguments, metadata FROM fleche_meta "
                    f"WHERE id IN ({ph})",
                    params,
                )
            )
        for mid, module, qualname, code, names, text in got:
            shared = decode_metadata(text)
            flat = type(shared) is dict and all(type(v) in _SCALARS for v in shared.values())
            try:
                order, keys = json.loads(names)
            except (TypeError, ValueError):
                order = keys = None
            if type(order) is not list or type(keys) is not list:
                out[int(mid)] = None
                continue
            out[int(mid)] = (
                module,
                qualname,
                code,
                order,
                keys,
                shared,
                flat,
                _template(keys, shared),
            )
        for mid in ids:
            out.setdefault(mid, None)

    # -- catching up with the store ------------------------------------------------------

    def _catch_up(self, function_ids: frozenset[str] | None) -> None:
        """Bring the catalogue up to date for these functions (all when None) before a query."""
        store = self.store
        assert store is not None
        if self._stale:
            self._refresh(store)
            self._stale = False
            return
        if is_local(store):
            self._check_identity(store)
            if function_ids is None:
                known = {r[0] for r in self.db.read("SELECT DISTINCT function FROM fleche_fans")}
                function_ids = frozenset(known.union(list_functions(store)))
            for fid in sorted(function_ids):
                if is_function_id(fid):  # a name from a query is not a path
                    self._check_fans(store, fid)
            return
        now = time.time()
        if function_ids is None:
            if now - self._listed("*") > self.max_age:
                self._refresh(store)
            return
        for fid in sorted(function_ids):
            if now - max(self._listed(fid), self._listed("*")) > self.max_age:
                started = time.time()
                self._sync(store, fid, list_function(store, fid), self._indexed(fid))
                self._set_listed([fid], started)

    def _listed(self, name: str) -> float:
        return self._state_number(f"listed:{name}")

    def _set_listed(self, names: list[str], when: float) -> None:
        with self.db.transaction() as tx:
            for name in names:
                self._set_state(tx, f"listed:{name}", repr(when))

    def _check_identity(self, store: ObjectStore) -> None:
        """Start afresh when the catalogue is not this store's: it came with a copy of the
        store (rsync, cp -r), or it was replaced while this process used it.

        Stamps are inodes and mtimes: another directory's are meaningless, and the
        records there may differ from those the catalogue lists, so every row is read
        again from the store. Checked before every query (a stat and one row): a file
        may be copied over the catalogue at any moment. Replaced under this process,
        it is set aside with one warning; met at first (a copy), emptied silently.
        """
        st = os.stat(store.root) if os.path.isdir(store.root) else None
        ident = f"{store.root}|{st.st_dev}:{st.st_ino}" if st else f"{store.root}|-"
        rows = self.db.read("SELECT value FROM fleche_state WHERE name = 'store'")
        found = rows[0][0] if rows else None
        if found is not None and _same_store(found, ident):
            if found != ident and (not self._checked_identity or found.endswith("|-")):
                # this store, by another path, or now that its directory exists
                with self.db.transaction() as tx:
                    self._set_state(tx, "store", ident)
            self._checked_identity = True
            return
        foreign = found is not None or bool(self.db.read("SELECT 1 FROM fleche_calls LIMIT 1"))
        if foreign:
            self._fans_known.clear()
            self._analyzed = None
            if self._checked_identity:  # it was ours a moment ago
                said = f" ({found.rpartition('|')[0]})" if found else ""
                self.db.set_aside(f"it was replaced by the catalogue of another store{said}")
            self.db.reset()
        with self.db.transaction() as tx:
            self._set_state(tx, "store", ident)
        self._checked_identity = True

    def _check_fans(self, store: ObjectStore, fid: str) -> None:
        """Reread the fans of one function whose directory mtime moved since the last look."""
        current = fan_mtimes(store, fid)
        recorded = dict(
            self.db.read("SELECT fan, stamp FROM fleche_fans WHERE function = :f", {"f": fid})
        )
        changed = {fan for fan, m in current.items() if recorded.get(fan) != m}
        changed.update(fan for fan in recorded if fan not in current)
        if changed:
            self._sync_fans(store, fid, changed, current)

    def _sync_fans(
        self, store: ObjectStore, fid: str, fans: set[str], mtimes: dict[str, int]
    ) -> RefreshReport:
        listing: dict[str, str | None] = {}
        inflight = inflight_state(store, fid)[1]
        for fan in fans:
            if fan in mtimes:
                listing.update(fan_listing(store, fid, fan, inflight))
        if len(fans) > 32:
            indexed = {k: s for k, s in self._indexed(fid).items() if k[:2] in fans}
        else:
            indexed = {}
            for fan in fans:
                hi = fan[0] + chr(ord(fan[1]) + 1)
                indexed.update(
                    self.db.read(
                        "SELECT key, stamp FROM fleche_calls "
                        f"WHERE function = {FN} AND key >= :lo AND key < :hi",
                        {"f": fid, "lo": fan, "hi": hi},
                    )
                )
        report = self._sync(store, fid, listing, indexed)
        now = time.time_ns()
        with self.db.transaction() as tx:
            for fan in sorted(fans):
                m = mtimes.get(fan)
                if m is None:
                    tx.execute(
                        "DELETE FROM fleche_fans WHERE function = :f AND fan = :n",
                        {"f": fid, "n": fan},
                    )
                    self._fans_known.discard((fid, fan))
                    continue
                tx.execute(
                    "INSERT INTO fleche_fans (function, fan, stamp) VALUES (:f, :n, :s) "
                    "ON CONFLICT (function, fan) DO UPDATE SET stamp = EXCLUDED.stamp",
                    {"f": fid, "n": fan, "s": m if settled(m, now) else None},
                )
        return report

    def _indexed(self, fid: str) -> dict[str, str | None]:
        return dict(
            self.db.read(f"SELECT key, stamp FROM fleche_calls WHERE function = {FN}", {"f": fid})
        )

    def _sync(
        self,
        store: ObjectStore,
        fid: str,
        listing: dict[str, str | None],
        indexed: dict[str, str | None],
    ) -> RefreshReport:
        """Make the catalogue's rows of ``fid`` (those in ``indexed``) match ``listing``."""
        report = RefreshReport()
        todo = [
            k
            for k, stamp in listing.items()
            if k not in indexed or (stamp is not None and indexed[k] != stamp)
        ]
        gone = sorted(k for k in indexed if k not in listing)
        moved = self._restamp(store, fid, todo, listing, indexed)
        if moved:
            todo = [k for k in todo if k not in moved]
        todo.sort()
        rows: list[Row] = []

        def write() -> None:
            with self.db.transaction() as tx:
                self._upsert(tx, rows)
            rows.clear()

        bulk = self._bulk(len(todo))
        batch = BULK_BATCH if bulk else BATCH
        read = 0
        if bulk:
            self.db.drop_indexes()
        try:
            for key, blob in read_records(store, fid, todo, listing):
                if blob is None:
                    continue  # gone since the listing
                try:
                    rec, str_keys, stored = _decode(blob, fid, key)
                except CorruptObjectError:
                    report.unreadable += 1  # `fleche verify` reports it; the index leaves it out
                    continue
                read += 1
                if key in indexed:
                    report.updated += 1
                rows.append(
                    call_row(
                        fid,
                        key,
                        rec,
                        len(blob),
                        listing[key],
                        str_keys=str_keys,
                        arguments_bytes=stored,
                    )
                )
                if len(rows) >= batch:
                    write()
            if rows:
                write()
        finally:
            if bulk:
                self.db.create_indexes()  # sorted once: a third of the catch-up's time saved
        report.added = read - report.updated
        report.updated += len(moved)
        for chunk in chunks(gone):
            with self.db.transaction() as tx:
                delete(tx, fid, chunk)
        report.removed = len(gone)
        return report

    def _restamp(
        self,
        store: ObjectStore,
        fid: str,
        todo: list[str],
        listing: dict[str, str | None],
        indexed: dict[str, str | None],
    ) -> set[str]:
        """Give the records of ``todo`` that only moved from one pack to another (byte for
        byte the same: see :func:`~fleche.index._fresh.moved_unchanged`) their new stamp,
        and return their keys: they are not read again."""
        moves: dict[str, tuple[str, str]] = {}
        for k in todo:
            old = indexed.get(k)
            new = listing[k]
            if old is not None and new is not None and old.startswith(PACK_STAMP):
                if new.startswith(PACK_STAMP):
                    moves[k] = (old, new)
        same = moved_unchanged(store, fid, moves)
        for chunk in chunks(same):
            with self.db.transaction() as tx:
                tx.executemany(
                    f"UPDATE fleche_calls SET stamp = :s WHERE function = {FN} AND key = :k",
                    [{"s": listing[k], "f": fid, "k": k} for k in chunk],
                )
        return set(same)

    def _bulk(self, new: int) -> bool:
        """Whether ``new`` rows are many enough to load with the secondary indexes dropped.

        Inserting into five b-trees at random places costs more than sorting them
        once afterwards when the rows added are as many as those already there (a
        first query after 100k calls: 3.3 -> 1.2 s of SQL). SQLite only: on a shared
        PostgreSQL catalogue other writers and readers would lose the indexes meanwhile.
        """
        if new < BULK_FROM or self.db.dialect != "sqlite":
            return False
        return new >= int(self.db.read("SELECT COUNT(*) FROM fleche_calls")[0][0])

    def _refresh(self, store: ObjectStore, progress: Progress | None = None) -> RefreshReport:
        """Compare every function's full listing with the catalogue and fix the differences.

        ``progress(phase, done, total)`` hears of each function finished.
        """
        t0 = time.perf_counter()
        started = time.time()
        local = is_local(store)
        if local:
            self._check_identity(store)
        present = list_functions(store)
        report = RefreshReport()
        for i, fid in enumerate(present, 1):
            if progress is not None:
                progress("functions", i - 1, len(present))
            if local:
                mtimes = fan_mtimes(store, fid)  # before the listing: a later write moves them
                recorded = {
                    r[0]
                    for r in self.db.read(
                        "SELECT fan FROM fleche_fans WHERE function = :f", {"f": fid}
                    )
                }
                report.merge(self._sync_fans(store, fid, set(mtimes) | recorded, mtimes))
            else:
                report.merge(self._sync(store, fid, list_function(store, fid), self._indexed(fid)))
        if progress is not None and present:
            progress("functions", len(present), len(present))
        known = {
            r[0]
            for r in self.db.read(
                "SELECT f.name FROM fleche_functions f "
                "WHERE EXISTS (SELECT 1 FROM fleche_calls c WHERE c.function = f.id)"
            )
        }
        known |= {r[0] for r in self.db.read("SELECT DISTINCT function FROM fleche_fans")}
        for fid in sorted(known - set(present)):
            with self.db.transaction() as tx:
                report.removed += drop_function(tx, fid)
            self._fans_known = {fan for fan in self._fans_known if fan[0] != fid}
        with self.db.transaction() as tx:  # contexts no call points at any more (gc, reruns)
            tx.execute(
                "DELETE FROM fleche_meta WHERE id NOT IN "
                "(SELECT meta FROM fleche_calls WHERE meta IS NOT NULL)"
            )
        if not local:
            self._set_listed(["*", *present], started)
        report.functions = len(present)
        report.calls = int(self.db.read("SELECT COUNT(*) FROM fleche_calls")[0][0])
        report.seconds = time.perf_counter() - t0
        return report

    # -- maintenance ---------------------------------------------------------------------

    def refresh(
        self, store: ObjectStore | None = None, *, progress: Progress | None = None
    ) -> RefreshReport:
        """Bring the catalogue up to date with the whole store: add missing records, drop vanished ones."""
        store = store or self.store
        if store is None:
            raise IndexFault("refresh() needs the store to read: this index was given none")
        self.flush()
        with self._lock:
            report = self._guarded(lambda: self._refresh(store, progress))
            self._stale = False
        return report

    def rebuild(
        self, store: ObjectStore | None = None, *, progress: Progress | None = None
    ) -> RefreshReport:
        """Empty the catalogue and fill it again from every record of the store."""
        store = store or self.store
        if store is None:
            raise IndexFault("rebuild() needs the store to read: this index was given none")
        t0 = time.perf_counter()
        self.flush()
        with self._lock:
            self._guarded(lambda: self.db.reset(indexes=False))
            self._checked_identity = False
            self._fans_known.clear()
            self._analyzed = None
            try:
                report = self._guarded(lambda: self._refresh(store, progress))
            finally:
                self.db.create_indexes()  # sorted once, after the rows: several times faster
            self._stale = False
        report.rebuilt = True
        report.seconds = time.perf_counter() - t0
        return report

    def status(self) -> dict[str, Any]:
        """What and where the catalogue is, for ``fleche index status``."""
        self.flush()
        with self._lock:
            calls = self._guarded(lambda: self.db.read("SELECT COUNT(*) FROM fleche_calls"))
            functions = self.db.read("SELECT COUNT(DISTINCT function) FROM fleche_calls")
            listed = self._listed("*")
        return {
            "store": getattr(self.store, "url", None),
            "backend": self.db.dialect,
            "location": self.db.location,
            "calls": int(calls[0][0]),
            "functions": int(functions[0][0]),
            "bytes": self.db.size(),
            "catch_up": "directory stamps, every query"
            if is_local(self.store)
            else f"listing older than {self.max_age:g} s",
            "last_full_listing": listed or None,
            "stale": self._stale,
        }

    def close(self) -> None:
        self.flush()
        self.db.close()


_RAW_RECORD = (codec.MAGIC, codec.FORMAT, codec.CODEC_RAW, codec.SER_MSGPACK)
_HEADER = codec.HEADER.unpack_from
_HEADER_SIZE = codec.HEADER_SIZE
_UNPACK = msgpack.unpackb
_XXH3 = xxhash.xxh3_128_digest


def _decode(blob: Any, fid: str, key: str) -> tuple[dict[str, Any], bool, bytes | None]:
    """A record read for cataloguing, whether its metadata has str keys only, and its
    arguments as stored (msgpack bytes; None when not stored as such).

    Its metadata is parsed with msgpack's ``strict_map_key``, which refuses other
    keys as it goes: when it succeeds, the row's JSON needs no second walk of the
    metadata. CorruptObjectError as from :func:`fleche.codec.decode_record`, which
    reads every record this does not: the common one (raw, intact, of this name) is
    checked and parsed here with no call in between (a catch-up parses 100k of them).
    """
    rec: Any = None
    if len(blob) >= _HEADER_SIZE:
        magic, fmt, codec_id, ser, flags, size, digest = _HEADER(blob)
        if (
            (magic, fmt, codec_id, ser) == _RAW_RECORD
            and not flags
            and len(blob) == _HEADER_SIZE + size
        ):
            body = memoryview(blob)[_HEADER_SIZE:]
            if _XXH3(body) == digest:
                try:
                    rec = _UNPACK(body, raw=False, strict_map_key=False)
                except (ValueError, TypeError, msgpack.UnpackException):
                    rec = None
                if not (
                    type(rec) is dict
                    and rec.get("digest") == key
                    and rec.get("function") == fid
                    and rec.get("fleche") == codec.RECORD_FORMAT
                ):
                    rec = None
    if rec is None:  # anything else: the codec says what is wrong, or reads it
        rec = codec.decode_record(blob, lazy=True, name=(fid, key))
    meta = rec.get("metadata")
    stored = rec.get("arguments")
    str_keys = False
    if type(meta) is bytes:
        try:
            meta = rec["metadata"] = _UNPACK(meta, raw=False, strict_map_key=True)
            str_keys = True
        except (ValueError, TypeError, msgpack.UnpackException):
            pass  # other keys, or damage: expand_record tells which
    if type(stored) is bytes:
        try:
            arguments = _UNPACK(stored, raw=False, strict_map_key=False)
        except (ValueError, TypeError, msgpack.UnpackException):
            arguments = None  # damage: expand_record says so
        if type(arguments) is dict and type(meta) is dict:
            rec["arguments"] = arguments
            return rec, str_keys, stored  # what expand_record would give, checked
        return codec.expand_record(rec), str_keys, stored
    return codec.expand_record(rec), str_keys, None


def _same_store(a: str, b: str) -> bool:
    """Whether two identities (``root|dev:ino``) name one directory, by whatever path.

    ``root|-`` was taken before the directory existed (a first query on a store not
    yet written: opening the catalogue inside it then creates it): the same root is
    the same store.
    """
    root_a, _, key_a = a.rpartition("|")
    root_b, _, key_b = b.rpartition("|")
    if key_a == "-" or key_b == "-":
        return root_a == root_b
    return key_a == key_b


# -- opening an index -----------------------------------------------------------------------

IndexSpec = bool | str | Index | None
"""What a cache's ``index`` option may be (see :func:`open_index`)."""


def open_index(store: ObjectStore, spec: IndexSpec = None) -> Index | None:
    """The index of a cache over ``store``, as its ``index`` option says.

    ``None``: the default, on for local and remote stores, off for memory
    stores. ``True``/``False``: on (at :func:`default_location`) or off. A
    ``sqlite:///path`` URL: that file (standard library). Any other URL: an
    SQLAlchemy database (``postgresql://user@host/db``), the ``sql`` extra.
    Nothing is opened until the index is first used.
    """
    if isinstance(spec, Index):
        if spec.store is None:
            spec.store = store
        return spec
    if spec is None:
        spec = not is_memory(store)
    if spec is False:
        return None
    if spec is True:
        path = default_location(store)
        return Index(sqlite_with_fallback(path, store), store)
    if not isinstance(spec, str):
        raise ConfigError(f"index = {spec!r}: expected true, false or a database URL")
    if spec.startswith("sqlite:///") or spec in ("sqlite://", "sqlite:///:memory:"):
        path = spec[len("sqlite:///") :] or ":memory:"
        return Index(SqliteDb(os.path.expanduser(path)), store)
    if "://" not in spec:
        raise ConfigError(
            f"index = {spec!r}: expected true, false, sqlite:///PATH or a database URL "
            "such as postgresql://user@host/db"
        )
    from fleche.index._sql import SqlAlchemyDb

    return Index(SqlAlchemyDb(spec), store)
