"""Answering queries from the catalogue: :class:`SearchableCatalog`, the base of the Index.

A :class:`~fleche.terms.QuerySpec` becomes SQL (:mod:`fleche.index_sqlgen`),
read a page at a time in ``created`` order; the planner's statistics are
refreshed as the catalogue grows. Before answering, buffered writes are
flushed and the catalogue catches up with its store (:meth:`_catch_up`,
which :class:`fleche.index.Index` implements). When the catalogue fails, the
answer comes from a scan of the store, with one warning.
"""

from __future__ import annotations

import functools
from abc import abstractmethod
from collections.abc import Iterator

from fleche.index_catalog import Catalog
from fleche.index_db import IndexFault
from fleche.index_layers import scan
from fleche.index_sqlgen import compile_spec
from fleche.terms import QuerySpec

PAGE = 1000  # rows fetched per query page
ANALYZE_FROM = 1000  # rows from which the planner gets statistics


class SearchableCatalog(Catalog):
    """A :class:`~fleche.index_catalog.Catalog` that answers queries: see :class:`fleche.index.Index`."""

    @abstractmethod
    def _catch_up(self, function_ids: frozenset[str] | None) -> None:
        """Bring the catalogue up to date for these functions (all when None) before a query.

        Only :class:`fleche.index.Index` knows how: it reads the store.
        """

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
        if limit is not None and limit <= 0:
            return
        seen: set[tuple[str, str]] = set()
        try:
            if not self._left_alone():
                self._prepare(spec)
                for row in self._select(spec, limit, newest_first):
                    seen.add(row[1:])
                    yield row
                return
        except self.db.faults as e:
            if self.store is None:
                raise IndexFault(f"the index {self.db.location} failed: {e}") from e
            self._fault("answer a query", e)
        assert self.store is not None
        left = None if limit is None else limit - len(seen)
        for row in scan(self.store, spec, newest_first=newest_first):
            if row[1:] in seen:
                continue
            if left is not None:
                if left <= 0:
                    return
                left -= 1
            yield row

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
                return sum(1 for _ in self._select(spec, None, False))
        except self.db.faults as e:
            if self.store is None:
                raise IndexFault(f"the index {self.db.location} failed: {e}") from e
            self._fault("answer a query", e)
        assert self.store is not None
        return sum(1 for _ in scan(self.store, spec))

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
    ) -> Iterator[tuple[float, str, str]]:
        compiled = compile_spec(spec, self.db.dialect)
        order = "DESC" if newest_first else "ASC"
        cmp = "<" if newest_first else ">"
        cols = "c.created, c.id, c.function, c.key" + (", c.metadata" if compiled.post else "")
        left = limit
        after: tuple[float, int] | None = None
        while True:
            n = PAGE if left is None or compiled.post else min(PAGE, left)
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
            for row in page:
                if compiled.post and not compiled.accept(row[4]):
                    continue
                yield (row[0], row[2], row[3])
                if left is not None:
                    left -= 1
                    if left <= 0:
                        return
            if len(page) < n:
                return
            after = (page[-1][0], page[-1][1])
