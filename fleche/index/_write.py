"""Writing catalogue rows: insert-or-replace calls and their arguments, delete, per dialect.

A call row and its argument rows change together, in one transaction, so a
reader never sees a call with another call's arguments. Writers race (several
processes, a team on one PostgreSQL): SQLite writers take the database lock
up front (``BEGIN IMMEDIATE``), PostgreSQL ones lock each call's row with an
upsert, in one key order for all.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator

from fleche.index._db import Tx
from fleche.index._sqlrows import ARG_COLUMNS, CALL_COLUMNS, FN, FUNCTION, KEY, META, Row

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any
else:
    Any = object  # in type aliases and generic bases evaluated at run time

BATCH = 500  # rows per statement batch / transaction


def chunks(items: list[Any], n: int = BATCH) -> Iterator[list[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def placeholders(prefix: str, values: Iterable[Any], params: dict[str, Any]) -> str:
    names = []
    for j, v in enumerate(values):
        params[f"{prefix}{j}"] = v
        names.append(f":{prefix}{j}")
    return ", ".join(names)


# -- writing rows ---------------------------------------------------------------------------

_COLS = ", ".join(CALL_COLUMNS)
_UPDATE_SQLITE = (
    "UPDATE fleche_calls SET "
    + ", ".join(f"{c} = :{c}" for c in CALL_COLUMNS if c not in ("function", "key"))
    + " WHERE id = :id"
)


def resolve_contexts(tx: Tx, rows: list[Row], dialect: str) -> list[int]:
    """The id of each row's ``fleche_meta`` row (in ``rows``' order), adding the rows missing.

    A batch of calls of one function shares one or a few such rows, so this is one
    SELECT and, the first time, one INSERT per new row. ``ON CONFLICT DO NOTHING``
    and a second SELECT: another writer may add the same row meanwhile.
    """
    wanted: dict[bytes, tuple[Any, ...]] = {}
    for _, context, _ in rows:
        if context[0] not in wanted:
            wanted[context[0]] = context[1:]
    found = _context_ids(tx, list(wanted))
    missing = sorted(d for d in wanted if d not in found)
    if not missing:
        return [found[context[0]] for _, context, _ in rows]
    js = "CAST(:metadata AS JSONB)" if dialect == "postgresql" else ":metadata"
    for digest in missing:
        module, qualname, code, names, metadata = wanted[digest]
        tx.execute(
            "INSERT INTO fleche_meta (digest, module, qualname, code, arguments, metadata) "
            f"VALUES (:digest, :module, :qualname, :code, :names, {js}) "
            "ON CONFLICT (digest) DO NOTHING",
            {
                "digest": digest,
                "module": module,
                "qualname": qualname,
                "code": code,
                "names": names,
                "metadata": metadata,
            },
        )
    found.update(_context_ids(tx, missing))
    return [found[context[0]] for _, context, _ in rows]


def _context_ids(tx: Tx, digests: list[bytes]) -> dict[bytes, int]:
    return {bytes(d): i for d, i in _ids(tx, "fleche_meta", "digest", digests)}


def _ids(tx: Tx, table: str, column: str, values: list[Any]) -> list[tuple[Any, int]]:
    """``(value, id)`` of the rows of ``table`` whose ``column`` is one of ``values``."""
    params: dict[str, Any] = {}
    ph = placeholders("v", values, params)
    rows = tx.execute(f"SELECT {column}, id FROM {table} WHERE {column} IN ({ph})", params)
    return [(v, int(i)) for v, i in rows]


def resolve_functions(tx: Tx, rows: list[Row]) -> dict[str, int]:
    """The number of each function of ``rows``, numbering the functions new here."""
    names = sorted({row[FUNCTION] for row, _, _ in rows})
    found = _function_ids(tx, names)
    for name in names:
        if name not in found:
            tx.execute(
                "INSERT INTO fleche_functions (name) VALUES (:f) ON CONFLICT (name) DO NOTHING",
                {"f": name},
            )
    if len(found) < len(names):
        found = _function_ids(tx, names)
    return found


def _function_ids(tx: Tx, names: list[str]) -> dict[str, int]:
    return {str(n): i for n, i in _ids(tx, "fleche_functions", "name", names)}


def upsert_sqlite(tx: Tx, rows: list[Row]) -> None:
    """Insert or replace call rows (and their argument rows) under SQLite's write lock.

    Every SQLite write transaction here starts with ``BEGIN IMMEDIATE``, so no
    other writer runs until it ends: new rows get ids from ``MAX(id)`` and go in
    with one ``executemany`` (a C loop) of tuples instead of one statement each.
    The keys already catalogued come from one SELECT whose keys are one JSON
    parameter (binding 500 parameters cost more than the lookups).
    """
    metas = resolve_contexts(tx, rows, "sqlite")
    numbers = resolve_functions(tx, rows)
    arg_rows: list[tuple[Any, ...]] = []
    new: list[tuple[Any, ...]] = []
    next_id: int | None = None
    at = 0
    for fid, group in itertools.groupby(rows, key=lambda r: r[0][FUNCTION]):
        group_rows = list(group)
        fn = numbers[fid]
        existing = dict(
            tx.execute(
                f"SELECT key, id FROM fleche_calls WHERE function = {FN} "
                "AND key IN (SELECT value FROM json_each(:keys))",
                {"f": fid, "keys": json.dumps([r[0][KEY] for r in group_rows])},
            )
        )
        for values, _, args in group_rows:
            head = (fn, values[KEY], metas[at])
            at += 1
            cid = existing.get(values[KEY])
            if cid is None:
                if next_id is None:
                    next_id = int(tx.execute("SELECT COALESCE(MAX(id), 0) FROM fleche_calls")[0][0])
                next_id += 1
                cid = next_id
                new.append((cid, *head, *values[3:]))
            else:
                tx.execute(
                    _UPDATE_SQLITE,
                    {**dict(zip(CALL_COLUMNS, head + values[3:], strict=True)), "id": cid},
                )
                tx.execute("DELETE FROM fleche_args WHERE call = :c", {"c": cid})
            for arg in args:
                arg_rows.append((cid, *arg))
    tx.insert("fleche_calls", ("id", *CALL_COLUMNS), new)
    tx.insert("fleche_args", ARG_COLUMNS, arg_rows)


# PostgreSQL array type of each column, for bulk writes through unnest(): one parameter
# per column (an array) instead of one per value, which drivers and SQLAlchemy parse slowly.
_PG_ARRAYS = {
    "function": "BIGINT[]",
    "key": "TEXT[]",
    "meta": "BIGINT[]",
    "v_digest": "BYTEA[]",
    "v_i": "BIGINT[]",
    "v_f": "DOUBLE PRECISION[]",
    "v_s": "BYTEA[]",
    "created": "DOUBLE PRECISION[]",
    "size": "BIGINT[]",
    "result_type": "TEXT[]",
    "result_oid": "TEXT[]",
    "result_size": "BIGINT[]",
    "metadata": "TEXT[]",  # JSON text, cast to jsonb per element below
    "stamp": "TEXT[]",
    "m_duration": "DOUBLE PRECISION[]",
    "m_finished": "DOUBLE PRECISION[]",
    "m_cpu": "DOUBLE PRECISION[]",
    "m_pid": "BIGINT[]",
    "args": "BYTEA[]",
}
_PG_ARG_ARRAYS = {
    "call": "BIGINT[]",
    "name": "TEXT[]",
    "digest": "BYTEA[]",
    "i": "BIGINT[]",
    "f": "DOUBLE PRECISION[]",
    "s": "BYTEA[]",
}


def _unnest(columns: dict[str, str]) -> str:
    return ", ".join(f"CAST(:{c} AS {t})" for c, t in columns.items())


_UPSERT_PG = (
    f"INSERT INTO fleche_calls ({_COLS}) SELECT "
    + ", ".join("CAST(u.metadata AS JSONB)" if c == "metadata" else f"u.{c}" for c in CALL_COLUMNS)
    + f" FROM unnest({_unnest(_PG_ARRAYS)}) AS u({_COLS}) "
    + "ON CONFLICT (function, key) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in CALL_COLUMNS if c not in ("function", "key"))
    + " RETURNING id, function, key"
)
_ARGS_PG = (
    f"INSERT INTO fleche_args ({', '.join(_PG_ARG_ARRAYS)}) "
    f"SELECT * FROM unnest({_unnest(_PG_ARG_ARRAYS)})"
)


def upsert_postgresql(tx: Tx, rows: list[Row]) -> None:
    """One ``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO UPDATE ... RETURNING`` per batch.

    Concurrent writers of the same call wait on its row lock and the last one
    wins, with its own argument rows. ``rows`` is deduplicated and sorted (a row
    may not be hit twice by one statement; one lock order for every writer).
    """
    metas = resolve_contexts(tx, rows, "postgresql")
    numbers = resolve_functions(tx, rows)
    columns = [list(c) for c in zip(*(values for values, _, _ in rows), strict=True)]
    columns[FUNCTION] = [numbers[f] for f in columns[FUNCTION]]
    columns[META] = metas
    returned = tx.execute(_UPSERT_PG, dict(zip(CALL_COLUMNS, columns, strict=True)))
    ids = {(f, k): cid for cid, f, k in returned}
    tx.execute(
        "DELETE FROM fleche_args WHERE call = ANY(CAST(:ids AS BIGINT[]))",
        {"ids": list(ids.values())},
    )
    arg_columns: dict[str, list[Any]] = {c: [] for c in _PG_ARG_ARRAYS}
    for values, _, args in rows:
        cid = ids[(numbers[values[FUNCTION]], values[KEY])]
        for name, digest, i, f, s_ in args:
            for c, v in zip(_PG_ARG_ARRAYS, (cid, name, digest, i, f, s_), strict=True):
                arg_columns[c].append(v)
    if arg_columns["call"]:
        tx.execute(_ARGS_PG, arg_columns)


def delete(tx: Tx, function_id: str, keys: list[str]) -> None:
    params: dict[str, Any] = {"f": function_id}
    ks = placeholders("k", keys, params)
    where = f"function = {FN} AND key IN ({ks})"
    tx.execute(
        f"DELETE FROM fleche_args WHERE call IN (SELECT id FROM fleche_calls WHERE {where})", params
    )
    tx.execute(f"DELETE FROM fleche_calls WHERE {where}", params)


def drop_function(tx: Tx, function_id: str) -> int:
    params = {"f": function_id}
    n = tx.execute(f"SELECT COUNT(*) FROM fleche_calls WHERE function = {FN}", params)[0][0]
    tx.execute(
        f"DELETE FROM fleche_args WHERE call IN (SELECT id FROM fleche_calls WHERE function = {FN})",
        params,
    )
    tx.execute(f"DELETE FROM fleche_calls WHERE function = {FN}", params)
    tx.execute("DELETE FROM fleche_fans WHERE function = :f", params)
    return int(n)
