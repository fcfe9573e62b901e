"""What the index asks, as SQL: conditions as predicates over the rows it stores.

Pure functions, no connection: the stdlib SQLite catalogue and the SQLAlchemy
one share them, so both answer a :class:`~fleche.records._terms.QuerySpec` the same way.

Exactness is the point. :meth:`fleche.records._terms.Condition.test` is the reference:

- ``eq``/``ne``/``in`` compare 16-byte digests, so ``3``, ``3.0`` and ``True``
  stay distinct, and arguments stored by reference match by the digest their
  record keeps. An argument row keeps no digest where a typed column holds the
  value exactly (an int64 int, a float but NaN and zeros, a str: see
  ``arg_typed``): equality asks that column instead, which only holds values of
  its type, so the answer is the digest's.
- Order conditions compare typed columns: ``i`` (int, never bool), ``f``
  (float, NaN left out: it is not orderable) and ``s`` (str as UTF-8 bytes,
  whose byte order is code point order, Python's order). A bound of the other
  numeric type is turned into an exact bound of the column's type here, in
  Python, rather than trusting the database's mixed int/float comparison
  (PostgreSQL converts ``bigint`` to ``float8``, off by up to 2**11 above 2**53).
- Metadata is kept as JSON (types the JSON of SQL cannot tell apart are
  escaped so Python gets the exact value back). The database narrows the
  candidates with a predicate that may only ever say too much, and the index
  decides each remaining candidate with ``Condition.test`` on the decoded
  value: the engines' JSON number parsing and typing differ, Python's does not.

The tables, the rows and the metadata JSON are in :mod:`fleche.index._sqlrows`
(re-exported here).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

from fleche.digest import digest_bytes
from fleche.index._sqlrows import (
    INT64,
    _utf8,
    decode_metadata,
    exact_column,
    holds_path,
    json_key,
    merge_metadata,
    own_metadata,
)
from fleche.records import ORDERED, Condition, QuerySpec, holds_at

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any

# -- conditions ---------------------------------------------------------------------------

_SYM = {"lt": "<", "le": "<=", "gt": ">", "ge": ">="}
TRUE, FALSE = "1=1", "1=0"


class _Params:
    """Bound parameters named ``p0``, ``p1``...: the ``:name`` style sqlite3 and SQLAlchemy share."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def __call__(self, value: Any) -> str:
        name = f"p{len(self.values)}"
        self.values[name] = value
        return f":{name}"


def _int_bound(op: str, b: int | float) -> tuple[str, int] | bool:
    """``i OP b`` for an int64 column as ``(op, int bound)``, or a constant truth value."""
    if type(b) is float:
        if math.isinf(b):
            return (op in ("lt", "le")) == (b > 0)
        # i < 2.5 <=> i < 3;  i <= 2.5 <=> i <= 2;  i > 2.5 <=> i > 2;  i >= 2.5 <=> i >= 3
        b = math.ceil(b) if op in ("lt", "ge") else math.floor(b)
    if b > INT64[1]:
        return op in ("lt", "le")
    if b < INT64[0]:
        return op in ("gt", "ge")
    return op, int(b)


def _float_bound(op: str, b: int | float) -> tuple[str, float]:
    """``f OP b`` for a float column as ``(op, float bound)``, exact for any int bound."""
    if type(b) is float:
        return op, b
    try:
        fb = float(b)
    except OverflowError:
        fb = math.inf if b > 0 else -math.inf
    if fb == b:  # Python compares int and float exactly
        return op, fb
    # b lies strictly between two adjacent floats lo < b < hi: no float equals it
    lo, hi = (fb, math.nextafter(fb, math.inf)) if fb < b else (math.nextafter(fb, -math.inf), fb)
    return ("le", lo) if op in ("lt", "le") else ("ge", hi)


def _column_preds(cols: tuple[str, str, str], op: str, bound: Any, p: _Params) -> list[str | None]:
    """``value OP bound`` per typed column ``(i, f, s)``: SQL, or None where it cannot hold."""
    i, f, s = cols
    if type(bound) is str:
        return [None, None, f"{s} {_SYM[op]} {p(_utf8(bound))}"]
    ib = _int_bound(op, bound)
    if ib is True:
        ipred: str | None = f"{i} IS NOT NULL"
    elif ib is False:
        ipred = None
    else:
        ipred = f"{i} {_SYM[ib[0]]} {p(ib[1])}"
    fop, fb = _float_bound(op, bound)
    return [ipred, f"{f} {_SYM[fop]} {p(fb)}", None]


def _order_pred(cols: tuple[str, str, str], bounds: list[tuple[str, Any]], p: _Params) -> str:
    """``value OP1 b1 AND value OP2 b2...`` as one conjunction per typed column, OR-ed.

    A stored value sits in exactly one of the columns, so this is exact, and
    each conjunction is a range one index answers (``i BETWEEN``, not ``i >= OR f >=``).
    """
    per_column: list[list[str | None]] = [[], [], []]
    for op, bound in bounds:
        for k, pred in enumerate(_column_preds(cols, op, bound, p)):
            per_column[k].append(pred)
    ors = [
        "(" + " AND ".join(q for q in preds if q is not None) + ")"
        for preds in per_column
        if preds and all(q is not None for q in preds)
    ]
    return "(" + " OR ".join(ors) + ")" if ors else FALSE


def value_pred(
    cols: tuple[str, str, str, str], cond: Condition, p: _Params, *, sparse: bool = False
) -> str:
    """SQL that is true exactly when ``cond.test`` is, over ``(digest, i, f, s)`` columns.

    ``sparse``: the columns of an argument row, whose digest is left out where a typed
    column holds the value exactly (see ``arg_typed``): equality asks that column too.
    """
    digest, i, f, s = cols
    if sparse and cond.op in ("eq", "ne", "in"):
        return _sparse_equality(cols, cond, p)
    if cond.op == "eq":
        return f"{digest} = {p(next(iter(cond.digests)))}"
    if cond.op == "ne":
        return f"{digest} <> {p(next(iter(cond.digests)))}"
    if cond.op == "in":
        if not cond.digests:
            return FALSE
        return f"{digest} IN ({', '.join(p(d) for d in sorted(cond.digests))})"
    if cond.op == "between":
        lo, hi = cond.operand
        return _order_pred((i, f, s), [("ge", lo), ("le", hi)], p)
    return _order_pred((i, f, s), [(cond.op, cond.operand)], p)


def _sparse_equality(cols: tuple[str, str, str, str], cond: Condition, p: _Params) -> str:
    """``eq``/``ne``/``in`` over argument columns: the digest, or the typed column that holds
    the value without one (each comparison null-safe, so ``ne`` is their exact negation)."""
    values = (cond.operand,) if cond.op in ("eq", "ne") else tuple(cond.operand)
    parts = []
    for v in values:
        d = digest_bytes(v)
        parts.append(f"({cols[0]} IS NOT NULL AND {cols[0]} = {p(d)})")
        exact = exact_column(v, d)
        if exact is not None:
            col = cols[1 + exact[0]]
            parts.append(f"({col} IS NOT NULL AND {col} = {p(exact[1])})")
    if not parts:
        return FALSE
    anyof = "(" + " OR ".join(parts) + ")"
    if cond.op != "ne":
        return anyof
    # a row with no digest and no typed value (a damaged reference) matches nothing
    known = " OR ".join(f"{c} IS NOT NULL" for c in cols)
    return f"(NOT {anyof} AND ({known}))"


class Compiled:
    """A QuerySpec as a WHERE clause over ``fleche_calls c``, plus what Python must decide.

    A plain class (no dataclass: the index loads on a process's first hit, and
    ``dataclasses`` would bring ``inspect`` with it).
    """

    __slots__ = ("params", "post", "where")

    def __init__(
        self,
        where: str,
        params: dict[str, Any],
        post: list[tuple[tuple[str, ...], Condition]] | None = None,
    ) -> None:
        self.where = where
        self.params = params
        self.post: list[tuple[tuple[str, ...], Condition]] = [] if post is None else post

    def accept(self, own_row: tuple[Any, ...], shared_json: Any = None) -> bool:
        """Decide the metadata conditions for one candidate (the SQL only narrowed).

        ``own_row``: the call row's own metadata columns, as :func:`own_metadata` takes
        them; ``shared_json``: its ``fleche_meta`` row's (see ``split_metadata``).
        """
        if not self.post:
            return True
        meta = merge_metadata(own_metadata(*own_row), shared_json)
        return all(holds_at(meta, path, cond) for path, cond in self.post)

    def acceptor(self) -> Callable[[tuple[Any, ...], Any, Any], bool]:
        """:meth:`accept` for the rows of one query: ``(own columns, meta id, shared JSON)``.

        Conditions on the shared part are decided once per ``fleche_meta`` row (thousands
        of calls share one) and remembered; only the row's own part is decoded per call.
        """
        own_conds = [(pa, c) for pa, c in self.post if pa and holds_path(pa) == "own"]
        shared_conds = [(pa, c) for pa, c in self.post if pa and holds_path(pa) == "shared"]
        if len(own_conds) + len(shared_conds) < len(self.post):  # a condition on the whole
            return lambda own_row, _id, shared: self.accept(own_row, shared)
        verdicts: dict[Any, bool] = {}

        def accept(own_row: tuple[Any, ...], meta_id: Any, shared_json: Any) -> bool:
            own = own_metadata(*own_row) if own_conds or own_row[0] is not None else {}
            if type(own) is not dict:  # not a map: no path holds (what accept() finds)
                return self.accept(own_row, shared_json)
            if shared_conds:
                verdict = verdicts.get(meta_id)
                if verdict is None:
                    shared = decode_metadata(shared_json)
                    verdict = all(holds_at(shared, pa, c) for pa, c in shared_conds)
                    verdicts[meta_id] = verdict
                if not verdict:
                    return False
            return all(holds_at(own, pa, c) for pa, c in own_conds)

        return accept


def _in_list(col: str, values: Iterable[str], p: _Params) -> str:
    vals = sorted(values)
    if not vals:
        return FALSE
    return f"{col} IN ({', '.join(p(v) for v in vals)})"


def _widen(x: float, down: bool) -> float:
    """A bound moved outwards by more than any rounding of a JSON number could move it."""
    step = abs(x) * 2.0**-40 + 1e-300
    return x - step if down else x + step


def _as_float(x: int | float) -> float:
    try:
        return float(x)
    except OverflowError:
        return math.inf if x > 0 else -math.inf


class _Node:
    """SQL expressions for the metadata value at one path, in one dialect."""

    def __init__(self, dialect: str, path: tuple[str, ...], p: _Params, column: str) -> None:
        keys = [json_key(k) for k in path]
        self.sqlite = dialect == "sqlite"
        if self.sqlite:
            jp = p("$" + "".join(f'."{k}"' for k in keys))
            self.type = f"json_type({column}, {jp})"
            self.text = self.num = f"json_extract({column}, {jp})"
        else:
            jp = p(keys)
            node = f"({column} #> CAST({jp} AS TEXT[]))"
            self.node = node
            self.type = f"jsonb_typeof({node})"
            self.text = f"({column} #>> CAST({jp} AS TEXT[]))"
            # CASE, not AND: PostgreSQL may evaluate the cast of a str before the type test
            self.num = (
                f"(CASE WHEN {self.type} = 'number' THEN CAST({self.text} AS DOUBLE PRECISION) END)"
            )
        self.p = p

    def is_(self, *types: str) -> str:
        return f"{self.type} IN ({', '.join(repr(t) for t in types)})"

    def exists(self) -> str:
        return f"{self.type} IS NOT NULL"

    def number_between(self, lo: float | None, hi: float | None) -> str:
        """A number within [lo, hi] after widening, or an escaped one (a non-finite float)."""
        parts = [f"{self.num} IS NOT NULL"]
        if lo is not None and not math.isinf(lo):
            parts.append(f"{self.num} >= {self.p(_widen(lo, True))}")
        if hi is not None and not math.isinf(hi):
            parts.append(f"{self.num} <= {self.p(_widen(hi, False))}")
        if self.sqlite:
            parts[0] = self.is_("integer", "real")
        return f"(({' AND '.join(parts)}) OR {self.is_('object')})"

    def equals(self, v: Any) -> str:
        """True for the stored value ``v`` (and maybe a few others)."""
        s = self.sqlite
        if v is None:
            return self.is_("null")
        if v is True or v is False:
            if s:
                return self.is_("true" if v else "false")
            return f"{self.node} = CAST({self.p('true' if v else 'false')} AS JSONB)"
        if type(v) is str and "\x00" not in v:
            return f"({self.is_('text' if s else 'string')} AND {self.text} = {self.p(v)})"
        if type(v) in (int, float) and math.isfinite(v):
            if s and type(v) is int and INT64[0] <= v <= INT64[1]:
                return f"({self.is_('integer')} AND {self.num} = {self.p(v)})"
            fv = _as_float(v)
            return self.number_between(fv, fv)
        return self.is_("object", "array")


def _meta_prefilter(dialect: str, path: tuple[str, ...], cond: Condition, p: _Params) -> str | None:
    """A predicate on a call row true for every record ``cond`` accepts (maybe more).

    None when the database cannot help; the Python test then sees every candidate.
    A path in the part calls share is tested on their ``fleche_meta`` row's JSON (one
    test per distinct row, not per call). A call's own metadata is in typed columns
    (``created``, ``m_duration``...) and a rest: only ``created`` in an order narrows here.
    """
    if holds_path(path) == "own":
        return _created_pred(path, cond, p)
    pred = _meta_pred(dialect, path, cond, p, "m.metadata")
    if pred is None or pred == FALSE:
        return pred
    return f"c.meta IN (SELECT m.id FROM fleche_meta m WHERE {pred})"


def _created_pred(path: tuple[str, ...], cond: Condition, p: _Params) -> str | None:
    """``created`` in an order, on the ``created`` column; None for anything else."""
    if path != ("created",) or cond.op not in ORDERED:
        return None
    bounds = tuple(cond.operand) if cond.op == "between" else (cond.operand,)
    if any(type(b) is str for b in bounds):
        return None
    lo = bounds[0] if cond.op in ("gt", "ge", "between") else None
    hi = bounds[-1] if cond.op in ("lt", "le", "between") else None
    # c.created holds float(metadata.created) when it is a number: exact once widened
    parts = []
    if lo is not None and not math.isinf(_as_float(lo)):
        parts.append(f"c.created >= {p(_widen(_as_float(lo), True))}")
    if hi is not None and not math.isinf(_as_float(hi)):
        parts.append(f"c.created <= {p(_widen(_as_float(hi), False))}")
    return " AND ".join(parts) or None


def _meta_pred(
    dialect: str, path: tuple[str, ...], cond: Condition, p: _Params, column: str
) -> str | None:
    """:func:`_meta_prefilter` over one JSON column."""
    bounds: tuple[Any, ...] = ()
    if cond.op in ORDERED:
        bounds = tuple(cond.operand) if cond.op == "between" else (cond.operand,)
        if cond.op == "between" and (type(bounds[0]) is str) != (type(bounds[1]) is str):
            return FALSE  # nothing is comparable with both a str and a number
    lo = bounds[0] if cond.op in ("gt", "ge", "between") else None
    hi = bounds[-1] if cond.op in ("lt", "le", "between") else None
    numeric = bounds and type(bounds[0]) is not str
    if dialect == "sqlite" and any('"' in k or "\\" in k for k in path):
        return None  # not expressible as a SQLite JSON path
    node = _Node(dialect, path, p, column)
    if cond.op in ("eq", "in"):
        values = (cond.operand,) if cond.op == "eq" else tuple(cond.operand)
        if not values:
            return FALSE
        return "(" + " OR ".join(node.equals(v) for v in values) + ")"
    if cond.op == "ne":
        return node.exists()
    if numeric:
        return node.number_between(
            None if lo is None else _as_float(lo), None if hi is None else _as_float(hi)
        )
    if any("\x00" in b for b in bounds):
        # a bound the JSON engines cannot hold: any str (plain, or escaped as an object) may match
        return node.is_("text", "object") if dialect == "sqlite" else node.is_("string", "object")
    if dialect == "sqlite":
        col = f"(CASE WHEN {node.is_('text')} THEN {node.text} END)"
    else:
        col = f'(CASE WHEN {node.is_("string")} THEN {node.text} END) COLLATE "C"'
    parts = [f"{col} IS NOT NULL"]
    if lo is not None:
        parts.append(f"{col} >= {p(lo)}")
    if hi is not None:
        parts.append(f"{col} <= {p(hi)}")
    return f"(({' AND '.join(parts)}) OR {node.is_('object')})"


def compile_spec(spec: QuerySpec, dialect: str, *, walk: bool = False) -> Compiled:
    """The WHERE clause (over ``fleche_calls c``) and parameters answering ``spec``.

    ``walk``: keep the planner from starting at the argument conditions (``+c.id``
    is not indexable), so it walks the function's calls in time order and tests
    each: what a page of many matches wants (see :meth:`Index.page`).
    """
    p = _Params()
    where: list[str] = []
    if spec.function_ids is not None:
        if len(spec.function_ids) == 1:
            # equality, not IN (subquery): the planner then walks the (function, created, id)
            # index in order instead of sorting every match for each page (100k calls: 12 s)
            (only,) = spec.function_ids
            where.append(
                f"c.function = (SELECT f.id FROM fleche_functions f WHERE f.name = {p(only)})"
            )
        else:
            within = _in_list("f.name", spec.function_ids, p)
            where.append(
                FALSE
                if within == FALSE
                else f"c.function IN (SELECT f.id FROM fleche_functions f WHERE {within})"
            )
    for column, values in (("qualname", spec.names), ("module", spec.modules)):
        if values is not None:
            within = _in_list(f"m.{column}", values, p)
            where.append(
                FALSE
                if within == FALSE
                else f"c.meta IN (SELECT m.id FROM fleche_meta m WHERE {within})"
            )
    if spec.version is not None:
        where.append(value_pred(("c.v_digest", "c.v_i", "c.v_f", "c.v_s"), spec.version, p))
    for name, cond in spec.args.items():
        pred = value_pred(("a.digest", "a.i", "a.f", "a.s"), cond, p, sparse=True)
        where.append(
            f"{'+' if walk else ''}c.id IN (SELECT a.call FROM fleche_args a "
            f"WHERE a.name = {p(name)} AND {pred})"
        )
    post = []
    for path, cond in spec.metadata.items():
        pre = _meta_prefilter(dialect, path, cond, p) if path else None
        if pre is not None:
            where.append(pre)
        post.append((path, cond))  # the SQL only narrowed: Python decides
    return Compiled(" AND ".join(f"({w})" for w in where) or TRUE, p.values, post)
