"""The index: a queryable catalogue of a store's call records, and never the truth.

A store answers "the record of this call" in one read, but "every call with
``alpha=0.1``" only by reading every record. The index is a SQL catalogue of
the records (function, version, arguments, result reference, metadata) that
answers such questions in the database: one row per call and one per
argument, the conditions of a :class:`~fleche.terms.QuerySpec` as SQL
(:mod:`fleche.index_sqlgen`).

It is a cache of the store, rebuilt from it at will:

- it is updated on every write through a :class:`~fleche.cache.Cache`
  (``add``/``remove``, batched: a miss pays microseconds, not a commit);
- it notices when the store changed behind its back (other processes, rsync,
  ``fleche sync``/``gc``) and catches up before answering
  (:mod:`fleche.index_fresh` says how, per kind of store);
- a damaged file is set aside and refilled with one warning, and so is one
  replaced by another store's catalogue under a running process (checked
  before every query); deleting it loses nothing; a fault never breaks a
  write (one warning, then the index marks itself stale and catches up in
  full at the next query) nor a query (it answers by scanning the store; a
  catalogue locked past its busy timeout is left alone for a minute).

Where it lives (:func:`open_index`): beside a writable local store
(``<store>/index/catalog.sqlite``: the store's own listings, ``sync``,
``verify`` and ``gc`` only look at ``calls/``, ``objects/``, ``tmp/`` and
``quarantine/``); in the user cache dir for remote and read-only stores;
in memory for memory stores (off by default); or any SQLAlchemy URL.

The catalogue itself, its faults and buffered writes are
:mod:`fleche.index_catalog`'s; answering queries, :mod:`fleche.index_search`'s;
this module keeps it in step with the store and opens it.
"""

from __future__ import annotations

import os
import time
from typing import Any

from fleche import codec
from fleche.errors import ConfigError, CorruptObjectError
from fleche.index_catalog import REMOTE_MAX_AGE, Progress
from fleche.index_db import IndexFault, SqliteDb
from fleche.index_fresh import (
    RefreshReport,
    fan_listing,
    fan_mtimes,
    is_local,
    is_memory,
    list_function,
    list_functions,
    read_blobs,
    settled,
)
from fleche.index_layers import LayeredIndex, scan
from fleche.index_search import SearchableCatalog
from fleche.index_sqlgen import call_row
from fleche.index_where import default_location, sqlite_with_fallback
from fleche.index_write import BATCH, Row, chunks, delete, drop_function
from fleche.store import ObjectStore, is_function_id

__all__ = [
    "REMOTE_MAX_AGE",
    "Index",
    "IndexFault",
    "LayeredIndex",
    "RefreshReport",
    "default_location",
    "open_index",
    "scan",
]


class Index(SearchableCatalog):
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
            if not self._checked_identity and found != ident:  # this store, by another path
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
        for fan in fans:
            if fan in mtimes:
                listing.update(fan_listing(store, fid, fan))
        if len(fans) > 32:
            indexed = {k: s for k, s in self._indexed(fid).items() if k[:2] in fans}
        else:
            indexed = {}
            for fan in fans:
                hi = fan[0] + chr(ord(fan[1]) + 1)
                indexed.update(
                    self.db.read(
                        "SELECT key, stamp FROM fleche_calls "
                        "WHERE function = :f AND key >= :lo AND key < :hi",
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
            self.db.read("SELECT key, stamp FROM fleche_calls WHERE function = :f", {"f": fid})
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
        todo.sort()
        rows: list[Row] = []

        def write() -> None:
            with self.db.transaction() as tx:
                self._upsert(tx, rows)
            rows.clear()

        for key, blob in read_blobs(store, fid, todo):
            if blob is None:
                continue  # gone since the listing
            try:
                rec = codec.decode_record(blob, name=(fid, key))
            except CorruptObjectError:
                report.unreadable += 1  # `fleche verify` reports it; the index leaves it out
                continue
            rows.append(call_row(fid, key, rec, len(blob), listing[key]))
            if key in indexed:
                report.updated += 1
            else:
                report.added += 1
            if len(rows) >= BATCH:
                write()
        if rows:
            write()
        for chunk in chunks(gone):
            with self.db.transaction() as tx:
                delete(tx, fid, chunk)
        report.removed = len(gone)
        return report

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
        known = {r[0] for r in self.db.read("SELECT DISTINCT function FROM fleche_calls")}
        known |= {r[0] for r in self.db.read("SELECT DISTINCT function FROM fleche_fans")}
        for fid in sorted(known - set(present)):
            with self.db.transaction() as tx:
                report.removed += drop_function(tx, fid)
            self._fans_known = {fan for fan in self._fans_known if fan[0] != fid}
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


def _same_store(a: str, b: str) -> bool:
    """Whether two identities (``root|dev:ino``) name one directory, by whatever path."""
    key = a.rpartition("|")[2]
    return a == b or (key != "-" and key == b.rpartition("|")[2])


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
    from fleche.index_sql import SqlAlchemyDb

    return Index(SqlAlchemyDb(spec), store)
