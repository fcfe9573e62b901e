"""The index on any SQLAlchemy URL: one catalogue a team shares (``index = "postgresql://..."``).

The same tables and queries as the local SQLite file (:mod:`fleche.index._sqlgen`),
through SQLAlchemy 2 (the ``sql`` extra). PostgreSQL is tested for real, SQLite
always; other dialects are refused rather than half supported, since exact
comparisons depend on each engine's types.

``postgresql://`` (and ``postgres://``) mean psycopg 3 (``postgresql+psycopg://``),
which the ``sql`` extra installs; name another driver explicitly to use it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from fleche.errors import ConfigError
from fleche.index._db import BUSY_TIMEOUT_MS, Db, IndexFault, Tx
from fleche.index._sqlrows import DIALECTS

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any


def normalize_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` with psycopg 3; anything else as given."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain) :]
    return url


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a message helper must not fail; the URL is reported as is
        return url.split("@")[-1]


class _SaTx(Tx):
    def __init__(self, conn: Any, text: Any) -> None:
        self.conn = conn
        self.text = text

    def execute(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        result = self.conn.execute(self.text(sql), params or {})
        return [tuple(r) for r in result.fetchall()] if result.returns_rows else []

    def executemany(self, sql: str, rows: Sequence[dict[str, Any]]) -> None:
        if rows:
            self.conn.execute(self.text(sql), list(rows))


class SqlAlchemyDb(Db):
    """A catalogue in the database at an SQLAlchemy URL; the engine is made on first use."""

    def __init__(self, url: str) -> None:
        try:
            import sqlalchemy
        except ImportError as e:
            raise ConfigError(
                f"index = {url!r} needs SQLAlchemy 2: pip install 'fleche[sql]' ({e})"
            ) from e
        from sqlalchemy.engine import make_url

        self.url = normalize_url(url)
        try:
            backend = make_url(self.url).get_backend_name()
        except sqlalchemy.exc.ArgumentError as e:
            raise ConfigError(f"index = {url!r} is not a database URL: {e}") from e
        if backend not in DIALECTS:
            raise ConfigError(
                f"index = {redact(url)!r}: fleche's index runs on {' and '.join(DIALECTS)}, "
                f"not {backend}"
            )
        self.dialect = backend
        self.location = redact(self.url)
        self.faults = (IndexFault, sqlalchemy.exc.SQLAlchemyError, OSError)
        self._sa = sqlalchemy
        self._engine: Any = None
        self._pid = -1
        self._lock = threading.RLock()  # create() runs under it and reenters _get_engine
        self._ready = False  # the tables exist (checked once per process)
        self._creating = False
        self._local = threading.local()
        self._local.writing = False

    def __repr__(self) -> str:
        return f"SqlAlchemyDb({self.location!r})"

    def _get_engine(self) -> Any:
        if self._ready and self._pid == os.getpid():
            return self._engine
        with self._lock:  # other threads wait here until the tables exist
            if self._engine is not None and self._pid != os.getpid():
                # inherited through fork: the parent's pooled connections are not ours
                self._engine.dispose(close=False)
                self._engine = None
            if self._engine is None:
                self._engine = self._make_engine()
                self._pid = os.getpid()
                self._ready = False
            if not self._ready and not self._creating:
                self._creating = True  # create() comes back here (same thread) for its transaction
                try:
                    self.create()
                finally:
                    self._creating = False
                self._ready = True
            return self._engine

    def _make_engine(self) -> Any:
        sa = self._sa
        if self.dialect != "sqlite":
            return sa.create_engine(self.url, pool_pre_ping=True)
        engine = sa.create_engine(self.url)

        from sqlalchemy import event  # typed, unlike self._sa (imported by __init__ already)

        @event.listens_for(engine, "connect")
        def _connect(dbapi_con: Any, _record: Any) -> None:
            dbapi_con.isolation_level = None  # we say BEGIN ourselves, below
            cur = dbapi_con.cursor()
            cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = NORMAL")
            cur.execute("PRAGMA cache_size = -65536")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            # a write takes the lock up front; a read must not block writers
            conn.exec_driver_sql(
                "BEGIN IMMEDIATE" if getattr(self._local, "writing", False) else "BEGIN"
            )

        return engine

    def read(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        with self._get_engine().connect() as conn:
            return [tuple(r) for r in conn.execute(self._sa.text(sql), params or {}).fetchall()]

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        engine = self._get_engine()
        self._local.writing = True
        try:
            conn = engine.connect()
            conn.begin()
        finally:
            self._local.writing = False
        with conn:
            try:
                yield _SaTx(conn, self._sa.text)
            except BaseException:
                conn.rollback()
                raise
            conn.commit()

    def size(self) -> int | None:
        if self.dialect != "postgresql":
            return None
        rows = self.read(
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "WHERE c.relname LIKE 'fleche_%' AND c.relkind = 'r' "
            "AND c.relnamespace = to_regnamespace(current_schema())::oid"
        )
        return int(rows[0][0])

    def after_fork(self) -> None:
        self._lock = threading.RLock()  # _get_engine disposes of the parent's pool (pid check)

    def close(self) -> None:
        with self._lock:
            if self._engine is not None and self._pid == os.getpid():
                self._engine.dispose()
            self._engine = None
