"""The connection under an index: the local SQLite file (stdlib ``sqlite3``), and the base class.

An :class:`~fleche.index.Index` talks to its catalogue through a :class:`Db`:
``read`` (one query), ``transaction`` (writes) and ``reset`` (drop and
recreate). Two implementations: :class:`SqliteDb` here, with no dependency
beyond the standard library, and ``index_sql.SqlAlchemyDb`` for any SQLAlchemy
URL (PostgreSQL for a team).

The SQLite file is a cache, so it is handled like one:

- WAL mode, ``synchronous=NORMAL`` and a busy timeout: many processes read
  while one writes, and a commit costs no fsync (a crash may lose the last
  commits, which the index notices and redoes from the store's listing).
  The busy timeout is short (:data:`BUSY_TIMEOUT_MS`): a lock that does not
  clear (a writer stopped mid-transaction) makes the index fail, and queries
  read the store instead, rather than wait on it.
- A file that is not a database, is damaged, or has lost its tables (emptied
  or overwritten while open) is moved aside and recreated empty
  (:class:`CatalogReset` tells the index to refill it). Moving, not
  deleting: another process may still have it open, and it notices that the
  path now names another file (a different inode) and reopens.
- Writes take the lock up front (``BEGIN IMMEDIATE``): a transaction that read
  first and wrote second could fail with "database is locked" however long
  the busy timeout.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager

from fleche.errors import FlecheError
from fleche.index._sqlrows import DROP, INDEX_NAMES, INDEXES, SCHEMA_VERSION, ddl

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any

BUSY_TIMEOUT_MS = 5_000
"""How long a statement waits for another connection's lock before the index gives up (ms).

Writers hold the lock for one batch (milliseconds); a lock held longer is a writer
that stopped, and a query answers from the store rather than wait for it.
"""
WAL_LIMIT = 4 << 20
"""Bytes the -wal file is cut back to after a checkpoint."""
MMAP_SIZE = 1 << 30
"""Bytes of the catalogue file SQLite reads through a memory mapping (``PRAGMA mmap_size``)."""
_INHERITED: list[sqlite3.Connection] = []  # a forked child's copies of its parent's connections


class IndexFault(FlecheError):
    """The index could not be read or written. The store (and every result in it) is unaffected."""


class CatalogReset(IndexFault):
    """The catalogue was found damaged or of another schema and was recreated empty.

    ``reason`` says why; the index refills it from the store and warns once.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Tx(ABC):
    """A write transaction: statements with ``:name`` parameters."""

    @abstractmethod
    def execute(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Run one statement; its rows (empty for writes)."""

    @abstractmethod
    def executemany(self, sql: str, rows: Sequence[dict[str, Any]]) -> None:
        """Run one statement per row of parameters."""

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> None:
        """Insert ``rows`` (values in ``columns`` order) into ``table``.

        Tuples, not dicts: the standard library's SQLite binds them by position,
        which a catch-up of 100k calls notices (a dict per row to build, and each
        named parameter looked up in it). Other connections get dicts.
        """
        if rows:
            names = [f"c{j}" for j in range(len(columns))]
            self.executemany(
                f"INSERT INTO {table} ({', '.join(columns)}) "
                f"VALUES ({', '.join(':' + n for n in names)})",
                [dict(zip(names, row, strict=True)) for row in rows],
            )


class Db(ABC):
    """A catalogue's database connection; subclasses implement the four primitives."""

    dialect: str = "sqlite"
    location: str = ""
    faults: tuple[type[BaseException], ...] = (IndexFault,)
    """Exceptions meaning "the index failed" (never "the store failed")."""

    @abstractmethod
    def read(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """Rows of one read-only statement."""

    @abstractmethod
    def transaction(self) -> AbstractContextManager[Tx]:
        """A write transaction, committed when the block ends without an error."""

    def reset(self, *, indexes: bool = True) -> None:
        """Drop every table and create them anew (``rebuild``), in one transaction.

        One transaction: another connection never sees the catalogue without
        its tables (which it would take for a file emptied under it).
        ``indexes=False`` leaves out the secondary indexes, for a bulk load:
        :meth:`create_indexes` adds them afterwards.
        """
        with self.transaction() as tx:
            for stmt in DROP:
                tx.execute(stmt)
            self._create(tx, indexes)

    def set_aside(self, reason: str) -> None:
        """Start an empty catalogue in place of this one (not this store's), and raise CatalogReset."""
        self.reset()
        raise CatalogReset(reason)

    def create(self, *, indexes: bool = True) -> None:
        """Create the tables if missing; CatalogReset when the schema is another version."""
        with self.transaction() as tx:
            rows = self._create(tx, indexes)
        if rows and rows[0][0] != str(SCHEMA_VERSION):
            found = rows[0][0]
            self.reset()
            raise CatalogReset(
                f"it was written with catalogue schema {found}, this fleche uses {SCHEMA_VERSION}"
            )

    def _create(self, tx: Tx, indexes: bool) -> list[tuple[Any, ...]]:
        """The tables (and ``indexes``) if missing; the schema row found, [] when new."""
        if self.dialect == "postgresql":
            # concurrent CREATE TABLE IF NOT EXISTS can still collide in pg_type: one at a time
            tx.execute("SELECT pg_advisory_xact_lock(7357617711)")
        for stmt in ddl(self.dialect) + (INDEXES if indexes else []):
            tx.execute(stmt)
        rows = tx.execute("SELECT value FROM fleche_state WHERE name = 'schema'")
        if not rows:
            tx.execute(
                "INSERT INTO fleche_state (name, value) VALUES ('schema', :v)",
                {"v": str(SCHEMA_VERSION)},
            )
        return rows

    def drop_indexes(self) -> None:
        """Drop the secondary indexes before a bulk load (:meth:`create_indexes` after it)."""
        with self.transaction() as tx:
            for name in INDEX_NAMES:
                tx.execute(f"DROP INDEX IF EXISTS {name}")

    def create_indexes(self) -> None:
        """Add the secondary indexes (after a bulk load), and planner statistics for them."""
        with self.transaction() as tx:
            for stmt in INDEXES:
                tx.execute(stmt)

    def size(self) -> int | None:
        """Bytes the catalogue takes, when known."""
        return None

    @abstractmethod
    def close(self) -> None:
        """Release the connections."""

    @abstractmethod
    def after_fork(self) -> None:
        """In a forked child: forget what belongs to the parent (connections, held locks)."""


def _is_corrupt(e: sqlite3.Error) -> bool:
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:  # Python >= 3.11: SQLITE_CORRUPT (11) or SQLITE_NOTADB (26), extended
        return code & 0xFF in (11, 26)
    text = str(e)
    return "not a database" in text or "malformed" in text


def _lost_tables(e: sqlite3.Error) -> bool:
    """A table of ours is gone: the file was emptied or overwritten while open.

    Never a moment of a rebuild: :meth:`Db.reset` drops and creates in one transaction.
    """
    return isinstance(e, sqlite3.OperationalError) and str(e).startswith("no such table: fleche_")


def is_busy(e: BaseException) -> bool:
    """True for SQLite's "database is locked": another connection held the lock past the timeout."""
    if not isinstance(e, sqlite3.OperationalError):
        return False
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None:  # SQLITE_BUSY (5) or SQLITE_LOCKED (6), extended
        return code & 0xFF in (5, 6)
    return "locked" in str(e)


class _SqliteTx(Tx):
    def __init__(self, con: sqlite3.Connection) -> None:
        self.con = con

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return self.con.execute(sql, params or {}).fetchall()

    def executemany(self, sql: str, rows: Sequence[dict[str, Any]]) -> None:
        if rows:
            self.con.executemany(sql, rows)

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> None:
        if rows:
            marks = ", ".join("?" * len(columns))
            self.con.executemany(
                f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows
            )


def _plain_binding() -> None:
    """Bind ``bytes`` and ``None`` without the standard library's adapter search.

    Python's ``sqlite3`` binds ints, floats and strs directly, but looks up an adapter
    for every other parameter, and before Python 3.12 each lookup that finds none costs
    a formatted ``AttributeError`` (about a third of the instructions of inserting a
    call row, with its seven such values). An identity adapter for each (``bytes``
    returns an exact bytes object itself; ``{}.get`` returns None) is found at once and
    binds what the search would: a BLOB, a NULL. Registered once per process, and only
    where nobody registered one: the registry is the process's, and an adapter already
    there applied to fleche's values before too.
    """
    empty: dict[None, None] = {}
    if (bytes, sqlite3.PrepareProtocol) not in sqlite3.adapters:
        sqlite3.register_adapter(bytes, bytes)
    if (type(None), sqlite3.PrepareProtocol) not in sqlite3.adapters:
        sqlite3.register_adapter(type(None), empty.get)


class SqliteDb(Db):
    """A catalogue in one SQLite file (or ``":memory:"``), through the standard library.

    Thread-safe (one connection behind a lock) and fork-safe (a child opens its
    own connection). Opening is lazy: building one costs nothing until used.
    """

    dialect = "sqlite"
    faults = (IndexFault, sqlite3.Error, OSError)

    def __init__(self, path: str) -> None:
        self.path = path
        self.location = path
        self._lock = threading.RLock()
        self._con: sqlite3.Connection | None = None
        self._pid = -1
        self._ino: int | None = None

    def __repr__(self) -> str:
        return f"SqliteDb({self.path!r})"

    # -- connection ----------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        _plain_binding()
        con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            con.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if self.path != ":memory:":
                con.execute("PRAGMA journal_mode = WAL")
            # a cache of the store, rebuilt when damaged: never worth an fsync (which would
            # also stall every file the store creates behind the journal commit)
            con.execute("PRAGMA synchronous = OFF")
            # 64 MiB of pages (the default is 2 MiB): a catalogue of a million calls is ~900 MB,
            # and every write touches a few b-tree paths of it
            con.execute("PRAGMA cache_size = -65536")
            # reads from a mapping of the file, not a copy into the cache per page: a
            # listing of a million calls visits its rows in time order, a page of the file
            # each, and the copies were a third of its SQL time (the file is replaced,
            # never truncated under a reader: see _replace)
            con.execute(f"PRAGMA mmap_size = {MMAP_SIZE}")
            # the -wal file keeps the size of its largest transaction (a first catch-up of
            # 100k calls: 14 MB, 140 B per call) unless told to shrink after a checkpoint
            con.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT}")
        except BaseException:
            con.close()
            raise
        return con

    def _open(self) -> sqlite3.Connection:
        """The connection, (re)opened after a fork, or when the file was replaced by another process."""
        con = self._con
        if con is not None and self._pid == os.getpid():
            if self.path == ":memory:" or self._same_file():
                return con
            self._con = None  # another process moved a damaged file aside: follow it
            con.close()
        elif con is not None:  # inherited through fork: never use (nor close) the parent's
            _INHERITED.append(con)
            self._con = None
        try:
            self._adopt(self._connect())
        except sqlite3.DatabaseError as e:
            if not _is_corrupt(e):
                raise
            self._replace(f"it is not a readable SQLite database ({e})")
            raise AssertionError("unreachable") from e  # _replace raises
        assert self._con is not None
        return self._con

    def _adopt(self, con: sqlite3.Connection) -> None:
        """Use ``con`` once its tables exist; a failure leaves no half-opened connection behind."""
        self._con, self._pid = con, os.getpid()  # create() runs through it
        self._ino = self._inode()
        try:
            self.create()
        except BaseException:
            self._con = None
            con.close()
            raise

    def _inode(self) -> int | None:
        try:
            return os.stat(self.path).st_ino
        except FileNotFoundError:
            return None

    def _same_file(self) -> bool:
        return self._inode() == self._ino

    def _replace(self, reason: str) -> None:
        """Move the damaged file aside, start an empty catalogue, and raise CatalogReset."""
        if self._con is not None:
            self._con.close()
            self._con = None
        if self.path != ":memory:":
            stamp = time.strftime("%Y%m%dT%H%M%S")
            for suffix in ("", "-wal", "-shm"):
                try:
                    os.replace(self.path + suffix, f"{self.path}.damaged-{stamp}{suffix}")
                except FileNotFoundError:
                    pass
        self._adopt(self._connect())
        raise CatalogReset(reason)

    def set_aside(self, reason: str) -> None:
        with self._lock:
            self._replace(reason)

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.DatabaseError as e:
            if _is_corrupt(e):
                self._replace(f"it is damaged ({e})")
            if _lost_tables(e):
                self._replace(f"it was emptied or overwritten while in use ({e})")
            raise

    # -- primitives ----------------------------------------------------------------------

    def read(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        with self._lock, self._guard():
            return self._open().execute(sql, params or {}).fetchall()

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        with self._lock, self._guard():
            con = self._open()
            con.execute("BEGIN IMMEDIATE")
            try:
                yield _SqliteTx(con)
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def size(self) -> int | None:
        if self.path == ":memory:":
            return None
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.stat(self.path + suffix).st_size
            except FileNotFoundError:
                pass
        return total

    def close(self) -> None:
        with self._lock:
            if self._con is not None and self._pid == os.getpid():
                self._con.close()
            self._con = None

    def after_fork(self) -> None:
        # Never close the parent's connection here (SQLite forbids using it across fork):
        # keep a reference so the garbage collector does not close it either.
        if self._con is not None:
            _INHERITED.append(self._con)
        self._con = None
        self._lock = threading.RLock()
