"""Find cached calls again: ``f.query(alpha=0.1)`` and ``fleche.query(name="simulate")``.

A query is a :class:`~fleche.records._terms.QuerySpec` (what is asked) and a cache
(who answers). :class:`QueryResult` is lazy: building one checks the question
and reads nothing; iterating reads call records, and a call's values
(``.result``, ``.arguments``) only when touched.

Who answers:

- a cache with an index (``cache.index``, kept by :mod:`fleche.index`) is
  asked for the matching calls, newest first, after it caught up with the
  store. Iterating and ``table()`` build a call whose arguments are plain
  values from the catalogue alone, as ``count()`` counts there; its result and
  record are read from the store when touched (:meth:`QueryResult.calls`).
  Other calls, and every call with ``verify=True`` or a chained step, are read
  from the store and checked again with :meth:`QuerySpec.match`: a call the
  index lists that is gone or no longer matches (a store changed behind its
  back by rsync, gc, another machine) is skipped, counted in
  ``QueryResult.stale`` and warned about once.
- any other cache (memory, S3, layered...) is scanned: every record of the
  functions concerned is read and matched, in listing order.

Matching follows :mod:`fleche.records._terms`: plain values match exactly and by type
(``n=3`` is not ``n=3.0``), by digest, so arrays and frames match by equality
too; ``None`` is a wildcard; ``Q.gt(3)``, ``Q.in_([...])``... are conditions.
"""

from __future__ import annotations

import itertools
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping

from fleche.cache import Cache
from fleche.config import CacheLike, active_cache, resolve
from fleche.digest import digest_bytes
from fleche.errors import FlecheError, FlecheWarning
from fleche.records import (
    Binder,
    Call,
    Condition,
    NotStored,
    Q,
    QuerySpec,
    as_condition,
    metadata_conditions,
    plain,
    translate_path,
)

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any
else:
    Any = object  # in type aliases and generic bases evaluated at run time

if TYPE_CHECKING:
    import pandas

    from fleche.config import AnyCache


_FID_BAD = re.compile(r"[^A-Za-z0-9_.\-]")
# A function id cut to fit (see decorator.function_id): 167 characters, "-", 32 hex.
_FID_CUT = re.compile(r"^.{167}-[0-9a-f]{32}$")
_ANY = object()


class QueryError(FlecheError, LookupError):
    """A query did not find what was asked of it (``only()`` found none, or several)."""


class QueryArgumentError(FlecheError, TypeError):
    """A query names an argument the function does not have or does not store."""


class MissingDependencyError(FlecheError, ImportError):
    """An optional package a feature needs (pandas for ``table()``) is not installed."""


def _describe(value: Any) -> str:
    if isinstance(value, Condition):
        if value.op == "in":
            return f"Q.in_({list(value.operand)!r})"
        if value.op == "between":
            return f"Q.between({value.operand[0]!r}, {value.operand[1]!r})"
        return f"Q.{value.op}({value.operand!r})"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _created(record: Mapping[str, Any]) -> float:
    created = (record.get("metadata") or {}).get("created")
    if isinstance(created, (int, float)) and not isinstance(created, bool):
        return float(created)
    return float("-inf")


def _may_hold(function_id: str, names: frozenset[str]) -> bool:
    """Whether a function id can belong to a function of one of these qualnames (a cheap pre-filter).

    A function id is ``module.qualname`` or, with ``hash_module=False``,
    ``qualname`` alone, made store-safe; a cut one could be anything.
    """
    for name in names:
        safe = _FID_BAD.sub("_", name.replace(":", "."))
        if function_id == safe or function_id.endswith("." + safe):
            return True
    return bool(_FID_CUT.match(function_id))


class QueryResult:
    """The calls a query matches; lazy, and iterable as often as you like (each pass reads afresh).

    Iterating yields :class:`~fleche.records._call.Call` objects (newest first when the
    cache has an index; in listing order otherwise). ``stale`` counts the calls
    an index listed that were gone or no longer matched, in the last pass.
    """

    def __init__(
        self,
        cache: AnyCache,
        spec: QuerySpec,
        description: str,
        *,
        offset: int = 0,
        limit: int | None = None,
        steps: tuple[_Step, ...] = (),
    ) -> None:
        self.cache = cache
        self.spec = spec
        self.description = description
        self.stale = 0
        # What the chained helpers (skip, take, filter, sorted, unique...) asked for: calls
        # skipped and kept (answered by the index without reading the skipped records,
        # while no step in Python comes before them), then the steps in Python, in order.
        self._offset = offset
        self._limit = limit
        self._steps = steps

    def _derive(
        self,
        what: str,
        *,
        offset: int | None = None,
        limit: int | object | None = _ANY,
        step: _Step | None = None,
    ) -> QueryResult:
        return QueryResult(
            self.cache,
            self.spec,
            f"{self.description}.{what}",
            offset=self._offset if offset is None else offset,
            limit=self._limit if limit is _ANY else limit,  # type: ignore[arg-type]
            steps=self._steps if step is None else (*self._steps, step),
        )

    def __repr__(self) -> str:
        return f"<QueryResult {self.description} in {self.cache.url}>"

    def _repr_html_(self) -> str:
        """The newest matching calls as an HTML table, and how many more (Jupyter shows it).

        Reads records, not values: a result shows as its type and size.
        """
        from fleche.render import query_html

        return query_html(self)

    def __rich_console__(self, console: Any, options: Any) -> Iterator[Any]:
        """The newest matching calls as a rich table (``rich.print(q)``), fitted to the width."""
        from fleche.render import query_rich

        yield query_rich(self, width=options.max_width)

    # -- reading -------------------------------------------------------------------------

    def _scan(self) -> Iterator[dict[str, Any]]:
        """Every record of the functions the query concerns (a superset of the matches)."""
        spec, cache = self.spec, self.cache
        if spec.function_ids is not None:
            for fid in sorted(spec.function_ids):
                yield from cache.iter_records(fid)
        elif isinstance(cache, Cache) and spec.names is not None:
            # list function ids first, so functions of other names are not read at all
            for fid in list(cache.store.iter_functions()):
                if _may_hold(fid, spec.names):
                    yield from cache.iter_records(fid)
        else:
            yield from cache.iter_records(None)

    def _records(self) -> Iterator[dict[str, Any]]:
        """The records this result holds: the query's matches, skipped, kept and chained."""
        records = self._matching(self._offset, self._limit)
        for step in self._steps:
            records = step.apply(self, records)
        return records

    def _matching(self, offset: int, limit: int | None) -> Iterator[dict[str, Any]]:
        """The matching records, each checked against the query whoever listed it; the first
        ``offset`` left out (with an index, without reading them), at most ``limit``."""
        if limit is not None and limit <= 0:
            return
        index = getattr(self.cache, "index", None)
        self.stale = 0
        if index is None:
            match = self.spec.match
            matched = (rec for rec in self._scan() if match(rec))
            stop = None if limit is None else offset + limit
            yield from itertools.islice(matched, offset, stop)
            return
        want = None if limit is None else offset + limit
        listed = kept = 0
        # With a limit, the index is asked for offset + limit rows; when some of them
        # were stale, a second pass goes on after those rows until the limit is met.
        for rows in (want, None) if want is not None else (None,):
            found_keys = index.search(self.spec, limit=rows, newest_first=True)
            if rows is None and want is not None:
                found_keys = itertools.islice(found_keys, want, None)
            for fid, key in found_keys:
                listed += 1
                if listed <= offset:
                    continue
                found = self.cache.get_record(fid, key)
                if found is None or not self.spec.match(found):
                    self._stale(fid, key)
                    continue
                yield found
                kept += 1
                if limit is not None and kept >= limit:
                    return
            if want is None or listed < want:  # the index has no more
                return

    def _stale(self, fid: str, key: str) -> None:
        self.stale += 1
        if self.stale == 1:
            warnings.warn(
                f"fleche: the index of {self.cache.url} lists call {fid}/{key}, which is "
                "gone from the store or no longer matches; skipped (stale calls are "
                "counted in QueryResult.stale; `fleche index rebuild` refreshes the index)",
                FlecheWarning,
                stacklevel=4,
            )

    def _call(self, record: dict[str, Any]) -> Call:
        return Call.from_record(record, self.cache.load_value)

    def __iter__(self) -> Iterator[Call]:
        return self.calls()

    def calls(self, *, verify: bool = False) -> Iterator[Call]:
        """The matching calls, as iterating gives them; ``verify=True`` reads and checks each record.

        With an index (and no chained step in Python), a call is built from the
        index's catalogue without reading its record, as ``count()`` counts
        there: the catalogue catches up with the store first (on a local store,
        exactly; behind a remote one it may lag its ``max_age``), and it holds a
        call's arguments (plain ``int``, ``float``, ``str``, ``bool``, ``None``
        values), metadata and version exactly, in the record's order.
        ``result`` and ``record`` are read from the store when first touched, so a
        value is never the catalogue's; a call whose record is gone by then raises
        :class:`~fleche.errors.CallNotStored`. Calls with other arguments (kept by
        reference, or of other types) are read from the store and checked, as are
        all calls of a signed cache. ``verify=True`` reads and checks every
        record, and counts what the catalogue had wrong in :attr:`stale`.
        """
        index = None if verify else self._lister()
        if index is None:
            return (self._call(rec) for rec in self._records())
        return self._listed(index, calls=True)

    def _lister(self) -> Any:
        """The index a listing may be built from (see :meth:`calls`), or None."""
        index = getattr(self.cache, "index", None)
        if (
            self._steps
            or index is None
            or not hasattr(index, "listed")
            or getattr(self.cache, "signer", None) is not None  # the catalogue is not signed
        ):
            return None
        return index

    def _listed(self, index: Any, *, calls: bool) -> Iterator[Any]:
        """As :meth:`_matching`, from the catalogue where it holds a call exactly: calls
        (``calls=True``) or records without a ``result``; others are read and checked."""
        offset, limit = self._offset, self._limit
        if limit is not None and limit <= 0:
            return
        if not calls:
            yield from self._listed_records(index)
            return
        self.stale = 0
        want = None if limit is None else offset + limit
        listed = kept = 0
        cache = self.cache
        for rows in (want, None) if want is not None else (None,):
            pages = index.listed(
                self.spec,
                limit=rows,
                newest_first=True,
                loader=cache.load_value,
                reread=cache.get_record,
            )
            skip = want if rows is None and want is not None else 0  # the second pass
            for page in pages:
                if skip:  # what the first pass gave already
                    n = min(skip, len(page))
                    skip -= n
                    page = page[n:]
                if (
                    listed >= offset
                    and limit is None
                    and not any(type(item) is tuple for item in page)
                ):  # the common case: the page as it is
                    listed += len(page)
                    kept += len(page)
                    yield from page
                    continue
                for item in page:
                    listed += 1
                    if listed <= offset:
                        continue
                    if type(item) is tuple:
                        fid, key = item
                        rec = cache.get_record(fid, key)
                        if rec is None or not self.spec.match(rec):
                            self._stale(fid, key)
                            continue
                        yield self._call(rec)
                    else:
                        yield item
                    kept += 1
                    if limit is not None and kept >= limit:
                        return
            if want is None or listed < want:  # the index has no more
                return

    def _listed_records(self, index: Any) -> Iterator[dict[str, Any]]:
        """:meth:`_listed` of records (``calls=False``), from ``index.listing``."""
        offset, limit = self._offset, self._limit
        self.stale = 0
        want = None if limit is None else offset + limit
        listed = kept = 0
        cache = self.cache
        for rows in (want, None) if want is not None else (None,):
            found = index.listing(self.spec, limit=rows, newest_first=True)
            if rows is None and want is not None:
                found = itertools.islice(found, want, None)
            for fid, key, partial in found:
                listed += 1
                if listed <= offset:
                    continue
                if partial is not None:
                    yield partial
                else:
                    rec = cache.get_record(fid, key)
                    if rec is None or not self.spec.match(rec):
                        self._stale(fid, key)
                        continue
                    yield rec
                kept += 1
                if limit is not None and kept >= limit:
                    return
            if want is None or listed < want:  # the index has no more
                return

    def __bool__(self) -> bool:
        """True when at least one call matches (reads until the first one)."""
        return next(self._records(), None) is not None

    def count(self, *, verify: bool = False) -> int:
        """How many calls match.

        With an index, the index's own count (one SQL ``COUNT``, no record read:
        milliseconds at a million calls, where reading each record took 30 s). The
        index catches up with the store first, so on a local store it is exact; an
        index behind a remote store may lag its ``max_age``. ``verify=True`` reads
        and checks every match, so the count agrees with iterating. Without an
        index, every record is read either way.
        """
        index = getattr(self.cache, "index", None)
        if index is not None and not verify and not self._steps:
            n = max(0, int(index.count(self.spec)) - self._offset)
            return n if self._limit is None else min(n, self._limit)
        return sum(1 for _ in self._records())

    def latest(self) -> Call | None:
        """The newest matching call (by ``metadata.created``), or None when none matches."""
        if getattr(self.cache, "index", None) is not None and not self._steps:
            rec = next(self._records(), None)  # the index lists newest first
        else:
            rec = max(self._records(), key=_created, default=None)
        return None if rec is None else self._call(rec)

    def only(self) -> Call:
        """The one matching call; :class:`QueryError` saying how many there are otherwise."""
        records = self._records()
        first = next(records, None)
        if first is not None and next(records, None) is None:
            return self._call(first)
        n = 0 if first is None else max(2, self.count())  # the index's count: no record read
        found = "none" if n == 0 else f"{n} calls"
        hint = (
            "; call the function to compute it"
            if n == 0
            else "; narrow the query, or take .latest()"
        )
        raise QueryError(
            f"expected exactly one call matching {self.description} in {self.cache.url}, "
            f"found {found}{hint}"
        )

    def results(self) -> Iterator[Any]:
        """The results of the matching calls, loaded one at a time."""
        for call in self:
            yield call.result

    # -- chaining (the original fleche's QueryIterator helpers) ----------------------------

    def take(self, n: int) -> QueryResult:
        """At most the first ``n`` calls (newest first with an index): lazy.

        With an index, and no Python step (``filter``, ``sorted``...) before it,
        the index is asked for that many rows and no other record is read.
        """
        n = _count_arg(n, "take")
        if self._steps:
            return self._derive(f"take({n})", step=_Slice(0, n))
        limit = n if self._limit is None else min(self._limit, n)
        return self._derive(f"take({n})", limit=limit)

    def skip(self, n: int) -> QueryResult:
        """All but the first ``n`` calls: lazy. With an index (and no Python step before
        it), the skipped calls' records are not read."""
        n = _count_arg(n, "skip")
        if self._steps:
            return self._derive(f"skip({n})", step=_Slice(n, None))
        limit = None if self._limit is None else max(0, self._limit - n)
        return self._derive(f"skip({n})", offset=self._offset + n, limit=limit)

    def filter(self, predicate: Callable[[Call], Any]) -> QueryResult:
        """The calls for which ``predicate(call)`` is true: lazy, tested in Python.

        For conditions on arguments or metadata, ``f.query(x=Q.gt(3))`` asks the
        index instead, which is faster.
        """
        if not callable(predicate):
            raise QueryArgumentError(f"filter() takes a function of a Call, not {predicate!r}")
        return self._derive(f"filter({_name_of(predicate)})", step=_Filter(predicate))

    def sorted(
        self, key: str | Callable[[Call], Any] | None = None, reverse: bool = False
    ) -> QueryResult:
        """The calls ordered by ``key``: an argument's name, or a function of a Call; by
        default by ``metadata.created``, oldest first. Reads every match when iterated."""
        return self._derive(f"sorted({_name_of(key)})", step=_Sort(_keyfn(key), reverse))

    def unique(self, key: str | Callable[[Call], Any]) -> QueryResult:
        """The first call of each value of ``key`` (an argument's name, or a function of a
        Call): lazy. Values without a hash (arrays, lists) are told apart by digest."""
        return self._derive(f"unique({_name_of(key)})", step=_Unique(_keyfn(key)))

    def groupby(self, key: str | Callable[[Call], Any]) -> dict[Any, QueryResult]:
        """The calls grouped by ``key`` (an argument's name, or a function of a Call): a dict
        of each value to a :class:`QueryResult` of its calls, in this result's order.

        Reads every match once to find the groups; each group is a query again
        (iterating it reads afresh).
        """
        fn = _keyfn(key)
        groups: dict[Any, list[tuple[str, str]]] = {}
        for rec in self._records():
            value = fn(self, rec)
            try:
                members = groups.setdefault(value, [])
            except TypeError:
                raise QueryArgumentError(
                    f"groupby({_name_of(key)}): {type(value).__name__} values cannot be dict "
                    "keys; group by a function returning something hashable (a str, a tuple)"
                ) from None
            members.append((rec["function"], rec["digest"]))
        return {
            value: self._derive(f"groupby({_name_of(key)})[{value!r}]", step=_Keys(members))
            for value, members in groups.items()
        }

    def oldest(self) -> Call | None:
        """The oldest matching call (by ``metadata.created``), or None when none matches."""
        rec = min(self._records(), key=_created, default=None)
        return None if rec is None else self._call(rec)

    def empty(self) -> bool:
        """True when no call matches (reads until the first one)."""
        return not self

    def any(self) -> Call | None:
        """The first matching call (the newest with an index), or None when none matches."""
        rec = next(self._records(), None)
        return None if rec is None else self._call(rec)

    def _argument(self, rec: Mapping[str, Any], name: str) -> Any:
        """One argument of a record, by name: a clear value as is, else loaded."""
        args = rec.get("arguments") or {}
        if name not in args:
            raise QueryArgumentError(
                f"call {rec.get('function')}/{rec.get('digest')} has no argument {name!r}; "
                f"its arguments are {sorted(args)}"
            )
        stored = args[name]
        if not isinstance(stored, dict):
            return stored
        if "inline" in stored or "oid" in stored:
            return self.cache.load_value(stored)
        return NotStored(stored.get("type", "?"), stored.get("digest", ""))

    def evict(self) -> int:
        """Remove the matching calls' records from the cache; returns how many.

        Values they alone referenced stay until ``fleche gc`` removes them, as
        with ``f.evict(...)``. Every match is listed before the first removal.
        """
        found = [(rec["function"], rec["digest"]) for rec in self._records()]
        for fid, key in found:
            self.cache.delete_record(fid, key)
        return len(found)

    def transfer(self, target: CacheLike, pop: bool = False, overwrite: bool = False) -> int:
        """Copy the matching calls, with their values, into ``target`` (anything
        :func:`fleche.cache` takes); returns how many were copied (0.22's ``transfer``).

        A call ``target`` already holds is left alone unless ``overwrite``; ``pop``
        removes each copied call from this cache once it is in ``target``. Values
        go before the record that names them. For whole stores, ``fleche sync``
        copies bytes without decoding them, in parallel.
        """
        dst = resolve(target)
        moved = 0
        for rec in list(self._records()):
            fid, key = rec["function"], rec["digest"]
            if not overwrite and dst.has_record(fid, key):
                continue
            copy = dict(rec)
            copy["result"] = dst.put_value(self.cache.load_value(rec["result"]))
            args = {}
            for name, stored in (rec.get("arguments") or {}).items():
                if isinstance(stored, dict) and ("inline" in stored or "oid" in stored):
                    ref = dst.put_value(self.cache.load_value(stored))
                    stored = {**stored, **ref}
                    for gone in ("inline", "oid"):  # the new reference, not the old one's
                        if gone not in ref:
                            stored.pop(gone, None)
                args[name] = stored
            copy["arguments"] = args
            dst.put_record(fid, key, copy)
            if pop:
                self.cache.delete_record(fid, key)
            moved += 1
        return moved

    # -- a table -------------------------------------------------------------------------

    def _cell(self, stored: Any, values: bool) -> Any:
        """An argument as ``table()`` shows it: clear values as they are, references loaded or not."""
        if not isinstance(stored, dict):
            return stored
        if "inline" in stored or (values and "oid" in stored):
            return self.cache.load_value(stored)
        if "oid" in stored:
            from fleche.query._ref import Ref  # loaded by the first table showing one

            return Ref(stored.get("type", "?"), stored.get("digest", ""), stored.get("size"))
        return NotStored(stored.get("type", "?"), stored.get("digest", ""))

    def table(
        self,
        arguments: Iterable[str] | str | bool = True,
        results: bool = False,
        *,
        values: bool = False,
        shrink_keys: bool = True,
        verify: bool = False,
    ) -> pandas.DataFrame:
        """The matching calls as a pandas DataFrame, newest first: one row per call.

        Columns: ``digest`` (with ``function`` and ``version`` when the query
        spans functions), one per argument, one per metadata scalar (nested
        keys dotted: ``tags.project``, ``git.commit``; prefixed ``metadata.``
        where an argument has the same name), and ``result`` with
        ``results=True``. Arguments kept as separate objects (large arrays)
        show as a :class:`Ref` unless ``values=True`` loads them.

        ``arguments``: which argument columns, by name (True: all, the default);
        the original fleche's ``table(arguments=..., results=...)`` call keeps
        working. Its ``shrink_keys`` is accepted and changes nothing: the
        ``digest`` column holds full digests. With an index, the table is built
        from its catalogue as :meth:`calls` does (the records of calls with other
        arguments are read); ``verify=True`` (or ``results=True``) reads every record.
        """
        del shrink_keys  # 0.22 shortened its index of digests; the digest column is exact
        wanted: frozenset[str] | None = None
        if arguments is not True:
            wanted = frozenset(
                ()
                if arguments is False
                else [arguments]
                if isinstance(arguments, str)
                else arguments
            )
        try:
            import pandas as pd
        except ImportError as e:
            raise MissingDependencyError(
                f"QueryResult.table() needs pandas ({e}): pip install pandas"
            ) from e
        index = None if results or verify else self._lister()
        listed = self._records() if index is None else self._listed(index, calls=False)
        records = sorted(listed, key=_created, reverse=True)
        spans = self.spec.function_ids is None or len(self.spec.function_ids) != 1
        rows = []
        for rec in records:
            row: dict[str, Any] = {"digest": rec["digest"]}
            if spans:
                row["function"] = rec.get("function")
                row["version"] = rec.get("version")
            for name, stored in (rec.get("arguments") or {}).items():
                if wanted is None or name in wanted:
                    row[name] = self._cell(stored, values)
            taken = set(row) | {"result"}
            for key, value in _flatten(rec.get("metadata") or {}):
                row[f"metadata.{key}" if key in taken else key] = value
            if results:
                row["result"] = self.cache.load_value(rec["result"])
            rows.append(row)
        return pd.DataFrame(rows)


# -- chained steps in Python ------------------------------------------------------------------

_KeyFn = Callable[[QueryResult, dict[str, Any]], Any]


def _count_arg(n: Any, what: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise QueryArgumentError(f"{what}({n!r}): expected a count, an int >= 0")
    return n


def _name_of(key: Any) -> str:
    if key is None or isinstance(key, str):
        return repr(key) if key is not None else ""
    return getattr(key, "__qualname__", None) or type(key).__qualname__


def _keyfn(key: str | Callable[[Call], Any] | None) -> _KeyFn:
    """A step's key of a record: an argument's value, a function of its Call, or ``created``."""
    if key is None:
        return lambda q, rec: _created(rec)
    if isinstance(key, str):
        name = key
        return lambda q, rec: q._argument(rec, name)
    if not callable(key):
        raise QueryArgumentError(f"expected an argument name or a function of a Call, not {key!r}")
    fn = key
    return lambda q, rec: fn(q._call(rec))


class _Step:
    """One chained step done in Python, over the records the steps before it give.

    The steps are plain classes with __slots__: as dataclasses, each cost an exec of its
    generated methods at ``import fleche``.
    """

    __slots__ = ()

    def apply(self, q: QueryResult, records: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        raise NotImplementedError


class _Slice(_Step):
    __slots__ = ("start", "stop")

    def __init__(self, start: int, stop: int | None) -> None:
        self.start = start
        self.stop = stop  # a count of calls kept, from start

    def apply(self, q: QueryResult, records: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        end = None if self.stop is None else self.start + self.stop
        return itertools.islice(records, self.start, end)


class _Filter(_Step):
    __slots__ = ("predicate",)

    def __init__(self, predicate: Callable[[Call], Any]) -> None:
        self.predicate = predicate

    def apply(self, q: QueryResult, records: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        return (rec for rec in records if self.predicate(q._call(rec)))


class _Sort(_Step):
    __slots__ = ("key", "reverse")

    def __init__(self, key: _KeyFn, reverse: bool) -> None:
        self.key = key
        self.reverse = reverse

    def apply(self, q: QueryResult, records: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        pairs = [(self.key(q, rec), rec) for rec in records]
        try:
            pairs.sort(key=lambda p: p[0], reverse=self.reverse)
        except TypeError as e:
            raise QueryArgumentError(
                f"sorted(): the calls' keys cannot be ordered against each other ({e}); "
                "sort by a function returning comparable values"
            ) from None
        return iter([rec for _, rec in pairs])


class _Unique(_Step):
    __slots__ = ("key",)

    def __init__(self, key: _KeyFn) -> None:
        self.key = key

    def apply(self, q: QueryResult, records: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        seen: set[Any] = set()
        for rec in records:
            value = self.key(q, rec)
            try:
                hash(value)
            except TypeError:  # an array, a list: by digest
                value = ("fleche-digest", digest_bytes(value, name="key"))
            if value not in seen:
                seen.add(value)
                yield rec


class _Keys(_Step):
    """One group of ``groupby``: the calls it found, by (function id, key)."""

    __slots__ = ("members",)

    def __init__(self, members: list[tuple[str, str]]) -> None:
        self.members = members

    def apply(self, q: QueryResult, records: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        wanted = set(self.members)
        return (rec for rec in records if (rec["function"], rec["digest"]) in wanted)


def _flatten(meta: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in meta.items():
        if isinstance(value, Mapping):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


# -- building queries -----------------------------------------------------------------------


def _conditions(args: Mapping[str, Any]) -> dict[str, Condition]:
    return {n: c for n, v in args.items() if (c := as_condition(v)) is not None}


def _metadata(metadata: Mapping[str, Any] | None) -> dict[tuple[str, ...], Condition]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise QueryArgumentError(
            f"metadata={metadata!r}: expected a dict such as {{'tags': {{'project': 'x'}}}}"
        )
    # paths as the original fleche named them (runtime.walltime) are asked where kept here
    return {translate_path(p): c for p, c in metadata_conditions(_present(metadata)).items()}


def _present(want: Mapping[str, Any]) -> dict[str, Any]:
    """``{"tags": {}}`` asks for calls that have tags (as in the original fleche): an empty
    dict becomes "present", ``Q.ne(None)``; other values are left as they are."""
    return {
        k: (Q.ne(None) if v == {} else _present(v)) if isinstance(v, Mapping) else v
        for k, v in want.items()
    }


def _version(version: Any) -> Condition | None:
    if version is None or isinstance(version, Condition):
        return version
    return as_condition(plain(version))  # records keep versions as metadata.plain makes them


def for_function(
    binder: Binder,
    function_id: str,
    qualname: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    metadata: Mapping[str, Any] | None = None,
    version: Any = _ANY,
) -> QueryResult:
    """``f.query(*args, metadata=..., **kwargs)`` for one decorated function, on the active cache.

    Arguments bind like a call of the function (positional ones by position),
    without defaults: what is not given matches anything. ``version``, when
    given, restricts the calls to that version (the decorator passes the
    function's own when the version is part of the key).
    """
    unknown = [k for k in kwargs if k not in binder.index]
    if unknown:
        raise QueryArgumentError(
            f"{qualname}.query() got argument(s) {unknown} that the function does not have; "
            f"its parameters are {binder.names}"
        )
    try:
        bound = binder.bind_partial(args, kwargs)
    except TypeError as e:
        raise QueryArgumentError(f"{qualname}.query(): {e}") from e
    ignored = sorted(set(bound) & binder.ignore)
    if ignored:
        raise QueryArgumentError(
            f"{qualname}.query(): {ignored} are ignored by @fleche(ignore=...) and not stored; "
            "drop them"
        )
    spec = QuerySpec(
        function_ids=frozenset([function_id]),
        version=None if version is _ANY else _version(version),
        args=_conditions(bound),
        metadata=_metadata(metadata),
    )
    shown = [f"{k}={_describe(v)}" for k, v in bound.items() if v is not None]
    if metadata:
        shown.append(f"metadata={_describe(dict(metadata))}")
    return QueryResult(active_cache(), spec, f"{qualname}({', '.join(shown)})")


def _strings(value: str | Iterable[str] | None, what: str) -> frozenset[str] | None:
    if value is None:
        return None
    out = frozenset([value] if isinstance(value, str) else value)
    if not all(isinstance(v, str) for v in out):
        raise QueryArgumentError(f"query({what}=...) takes a str or a list of str, got {value!r}")
    return out


def query(
    function: Any = None,
    /,
    *,
    name: str | Iterable[str] | None = None,
    module: str | Iterable[str] | None = None,
    version: Any = None,
    metadata: Mapping[str, Any] | None = None,
    arguments: Mapping[str, Any] | None = None,
    cache: CacheLike | None = None,
    **args: Any,
) -> QueryResult:
    """Find cached calls across functions: ``fleche.query(name="simulate", alpha=0.1)``.

    ``function``: a decorated function or a function id (as ``fleche ls``
    shows it), or a list of them; ``name``: the function's ``__qualname__``
    (``"simulate"``, ``"Model.fit"``); ``module``: its ``__module__``; each a
    str or a list. ``version``, ``metadata`` and the argument keywords match
    like ``f.query``'s; an argument is matched in every function that has
    it, and a call without it does not match. An argument named like one of
    these keywords goes in ``arguments={...}``. Unlike ``f.query()``, every
    version matches unless ``version`` says otherwise. ``cache``: where to
    look (anything :func:`fleche.cache` takes); the active cache by default.
    """
    fids: frozenset[str] | None = None
    if function is not None:
        items = function if isinstance(function, (list, tuple, set, frozenset)) else [function]
        ids = []
        for f in items:
            cf = getattr(f, "__fleche__", None)
            if cf is not None:
                ids.append(cf.function_id)
            elif isinstance(f, str):
                ids.append(f)
            else:
                raise QueryArgumentError(
                    f"query({f!r}): expected a @fleche function or a function id (str)"
                )
        fids = frozenset(ids)
    wanted = {**(arguments or {}), **args}
    spec = QuerySpec(
        function_ids=fids,
        names=_strings(name, "name"),
        modules=_strings(module, "module"),
        version=_version(version),
        args=_conditions(wanted),
        metadata=_metadata(metadata),
    )
    shown = [f"function={sorted(fids)!r}"] if fids is not None else []
    given = {"name": name, "module": module, "version": version, "metadata": metadata, **wanted}
    shown += [f"{k}={_describe(v)}" for k, v in given.items() if v is not None]
    target = active_cache() if cache is None else resolve(cache)
    return QueryResult(target, spec, f"query({', '.join(shown)})")
