"""The catalogue under an index: its database, its faults, and the writes it buffers.

:class:`Catalog` is the base of :class:`fleche.index.Index` (which adds
queries, through :mod:`fleche.index_search`, and catching up with the store).
It owns the database (:mod:`fleche.index_db`) and its lock, turns a fault into
one warning and a stale mark, and buffers the ``add``/``remove`` of records
written through a cache: a miss pays microseconds, not a commit. Buffered
writes are flushed before every query and at exit; a forked child drops the
ones it inherited (its parent flushes them).
"""

from __future__ import annotations

import atexit
import itertools
import math
import os
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, TypeVar

from fleche import codec
from fleche.errors import warn_user
from fleche.index_db import CatalogReset, Db, Tx, is_busy
from fleche.index_fresh import RefreshReport, is_local, is_memory, record_stamp
from fleche.index_sqlgen import call_row
from fleche.index_write import Row, chunks, delete, upsert_postgresql, upsert_sqlite
from fleche.store import ObjectStore

Progress = Callable[[str, int, int], None]
"""``progress(phase, done, total)``, as ``fleche.cli.progress_bar`` draws it."""

_T = TypeVar("_T")

REMOTE_MAX_AGE = 300.0
"""Seconds a listing of a remote store is trusted: records written there by other
machines show up in queries after at most this long (or ``fleche index refresh``)."""
PENDING_MAX = 256  # buffered writes before a flush
PENDING_AGE = 1.0  # seconds the oldest buffered write may wait for the next one
LOCKED_RETRY = 60.0
"""Seconds a catalogue found locked (past its busy timeout) is left alone: queries read the
store meanwhile, and writes wait for the refresh that follows, so no call waits on that lock
again and again."""


# -- every live catalogue: flushed at exit, reset in a forked child ------------------------

_LIVE: weakref.WeakSet[Catalog] = weakref.WeakSet()


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


class Catalog(ABC):
    """The database of an index, its faults and its buffered writes: see :class:`fleche.index.Index`.

    What needs the store (refilling the catalogue from it) is the subclass's:
    :meth:`_refresh`.
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

    @abstractmethod
    def _refresh(self, store: ObjectStore, progress: Progress | None = None) -> RefreshReport:
        """Refill the catalogue from every record of ``store`` (:class:`fleche.index.Index` does)."""

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
        latest = {(r["function"], r["key"]): (r, a) for r, a in rows}  # a rerun: the last wins
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
