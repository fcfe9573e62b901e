"""Looking after a store without a terminal: what users type, lookups and queries.

The ``fleche`` command (:mod:`fleche.cli`) is a thin face over this module and
its family, so scripts and tests get the same answers without click:

- :mod:`fleche.upkeep` (here): sizes, ages and values as users type them,
  digest prefixes and function names resolved, queries by argument;
- :mod:`fleche.upkeep._scan`: the inventory of a store from its listings, and
  ``stats``; every record read back and verified;
- :mod:`fleche.upkeep._verify`: ``verify`` (and ``--repair``);
- :mod:`fleche.upkeep._sign`: ``sign`` (what is stored, with the current key);
- :mod:`fleche.upkeep._gc`: ``plan_gc`` and ``apply_gc``.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from fleche.cache import Cache
from fleche.decorator import function_id as make_function_id
from fleche.errors import CacheMiss, FlecheError
from fleche.query import QueryResult
from fleche.records import Condition, Q, QuerySpec, metadata_conditions
from fleche.store import ObjectStore

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


Progress = Callable[[str, int, int], None]
"""``progress(phase, done, total)``: called as long work advances (for a progress bar)."""

WORKERS = 8
"""Concurrent reads when a whole store is read: enough to hide S3 latency, harmless on disk."""


class ParseError(FlecheError, ValueError):
    """A size, an age or a value typed by a user could not be understood."""


class AmbiguousError(FlecheError, LookupError):
    """A digest prefix or function name matches more than one thing; ``candidates`` lists them."""

    def __init__(self, message: str, candidates: list[str]) -> None:
        super().__init__(message)
        self.candidates = candidates


# -- parsing what users type ---------------------------------------------------------------

_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*")
# Decimal units are powers of 1000 and binary ones of 1024, as their names say;
# a bare letter (10G) is binary, as in du, sort -h and ls -h.
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "m": 1 << 20,
    "g": 1 << 30,
    "t": 1 << 40,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}


def parse_size(text: str) -> int:
    """Bytes in ``"10GB"`` (10**10), ``"10GiB"``/``"10G"`` (10 * 2**30), ``"512"`` (bytes)."""
    m = _SIZE.fullmatch(text)
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _SIZE_UNITS:
        raise ParseError(
            f"cannot read {text!r} as a size: expected a number and a unit such as "
            "500MB, 10GB, 1.5TiB or 2G (KB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB "
            "and K/M/G/T of 1024)"
        )
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


_AGE_PART = re.compile(r"(\d+(?:\.\d*)?)\s*([a-z]+)")
_AGE_UNITS = {
    "s": 1,
    "sec": 1,
    "m": 60,
    "min": 60,
    "h": 3600,
    "d": 86400,
    "w": 7 * 86400,
    "y": 365 * 86400,
}


def parse_age(text: str) -> float:
    """Seconds in ``"30d"``, ``"12h"``, ``"1d12h"``, ``"90min"``, ``"2w"``.

    A bare number is refused: ``30`` could mean seconds or days, and guessing
    wrong deletes the wrong things.
    """
    s = text.strip().lower().replace(" ", "")
    pos, total = 0, 0.0
    for m in _AGE_PART.finditer(s):
        if m.start() != pos or m.group(2) not in _AGE_UNITS:
            break
        total += float(m.group(1)) * _AGE_UNITS[m.group(2)]
        pos = m.end()
    else:
        if pos == len(s) and pos:
            return total
    raise ParseError(
        f"cannot read {text!r} as an age: expected a number with a unit (s, min, h, d, w, y) "
        "such as 30d, 12h, 1d12h or 90min"
    )


def parse_cutoff(text: str, now: float | None = None) -> float:
    """Epoch seconds before which something is "older than" ``text``.

    ``text`` is an age (``30d``: thirty days before ``now``) or an ISO date or
    time (``2025-01-31``, ``2025-01-31T12:00``; local time unless it says).
    """
    now = time.time() if now is None else now
    try:
        return now - parse_age(text)
    except ParseError:
        pass
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ParseError(
            f"cannot read {text!r} as an age or a date: expected 30d, 12h, 1d12h, 90min, or "
            "an ISO date such as 2025-01-31"
        ) from None
    return when.timestamp()


def parse_value(text: str) -> Any:
    """A command-line value as the Python value a caller would have passed.

    JSON first (``10`` → int, ``1.5`` → float, ``true``, ``null``, ``"10"`` →
    str, ``[1, 2]`` → list, ``{"a": 1}`` → dict), then TOML for what JSON lacks
    (``'quoted'``, ``1_000``, ``inf``, dates such as ``2025-01-31``), and
    anything else is the string as typed (``abc``). Digests distinguish
    ``10``, ``10.0`` and ``"10"``, so the type matters: quote to force a str.
    """
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except (tomllib.TOMLDecodeError, ValueError):
        return text


def parse_assignment(text: str, what: str = "--arg") -> tuple[str, Any]:
    """``"name=value"`` → ``("name", parse_value("value"))``."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise ParseError(f"{what} {text!r}: expected NAME=VALUE, e.g. {what} n=10")
    return name, parse_value(value)


# -- finding things by name ----------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    """What a digest prefix named: a call record (``function_id`` set) or a value object."""

    kind: str  # "call" or "object"
    digest: str
    function_id: str | None = None

    def __str__(self) -> str:
        return (
            f"call {self.function_id}/{self.digest}"
            if self.function_id
            else f"object {self.digest}"
        )


def find_digest(store: ObjectStore, prefix: str) -> Match:
    """The record (or, failing that, the object) whose name starts with ``prefix``.

    At least 4 hex digits, so a typo does not match half the store. Raises
    :class:`AmbiguousError` listing the candidates when several match, and
    :class:`~fleche.errors.CacheMiss` when none does.
    """
    p = prefix.strip().lower()
    if len(p) < 4 or len(p) > 32 or p.strip("0123456789abcdef"):
        raise ParseError(
            f"{prefix!r} is not a digest or digest prefix: expected 4 to 32 hex digits"
        )
    found = [Match("call", d, fid) for fid, d in store.iter_calls() if d.startswith(p)]
    if not found:
        found = [Match("object", oid) for oid in store.iter_oids() if oid.startswith(p)]
    if not found:
        raise CacheMiss(f"no call record or object starting with {p} in {store.url}")
    if len(found) > 1:
        names = sorted(str(m) for m in found)
        shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        raise AmbiguousError(
            f"{p} is ambiguous: {len(found)} matches ({shown}); give more digits", names
        )
    return found[0]


def find_function(functions: Iterable[str], name: str) -> str:
    """The function id ``name`` designates among ``functions`` (the ids in a store).

    Accepts the id itself (``pkg.mod.simulate``), the identity a decorator
    shows (``pkg.mod:simulate``) or a dotted tail (``simulate``,
    ``mod.simulate``) when only one function ends that way.
    """
    ids = sorted(set(functions))
    want = make_function_id(name)
    if want in ids:
        return want
    tail = [f for f in ids if f.endswith("." + want)]
    if len(tail) == 1:
        return tail[0]
    if tail:
        raise AmbiguousError(
            f"function {name!r} is ambiguous: {', '.join(tail)}; give the full id", tail
        )
    shown = ", ".join(ids[:20]) + (f" and {len(ids) - 20} more" if len(ids) > 20 else "")
    raise CacheMiss(f"no function {name!r} in the store; its functions: {shown or 'none'}")


# -- queries -------------------------------------------------------------------------------


def nest(path: str, value: Any) -> dict[str, Any]:
    """``"tags.project", "x"`` → ``{"tags": {"project": "x"}}``; a leading ``metadata.`` is dropped."""
    keys = path.split(".")
    if keys[0] == "metadata" and len(keys) > 1:
        keys = keys[1:]
    if not all(keys):
        raise ParseError(f"--where {path!r}: expected metadata.KEY[.KEY...]=VALUE")
    out: dict[str, Any] = {keys[-1]: value}
    for k in reversed(keys[:-1]):
        out = {k: out}
    return out


def merge(a: dict[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge of nested dicts (``--where tags.a=1 --where tags.b=2``)."""
    out = dict(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, Mapping) else v
    return out


_OPERATORS = (("<=", "le"), (">=", "ge"), ("!=", "ne"), ("=", "eq"), ("<", "lt"), (">", "gt"))


def parse_condition(text: str, what: str = "--arg") -> tuple[str, Condition]:
    """``"n>=10"`` → ``("n", Q.ge(10))``; ``=``, ``!=``, ``<``, ``<=``, ``>``, ``>=``.

    A value in brackets with ``=`` is a set: ``"n=[1, 2]"`` → ``Q.in_([1, 2])``.
    """
    found = [(text.find(op), op, name) for op, name in _OPERATORS if op in text]
    if not found:
        raise ParseError(
            f"{what} {text!r}: expected NAME=VALUE (or !=, <, <=, >, >=), e.g. {what} n=10"
        )
    at = min(i for i, _, _ in found)
    op, kind = next((o, k) for i, o, k in found if i == at)  # the longest operator at that place
    name, raw = text[:at].strip(), text[at + len(op) :]
    if not name:
        raise ParseError(f"{what} {text!r}: expected NAME=VALUE, e.g. {what} n=10")
    value = parse_value(raw)
    try:
        if kind == "eq" and isinstance(value, list):
            return name, Q.in_(value)
        return name, Condition(kind, value)
    except TypeError as e:
        raise ParseError(f"{what} {text!r}: {e}") from e


def parse_terms(
    args: Iterable[str] = (), where: Iterable[str] = ()
) -> tuple[dict[str, Condition], dict[tuple[str, ...], Condition]]:
    """``fleche query``'s ``--arg`` and ``--where`` terms as argument and metadata conditions.

    ``args``: ``NAME<op>VALUE``; ``where``: ``[metadata.]KEY[.KEY...]<op>VALUE``
    (see :func:`parse_condition`). What :func:`query_result` takes.
    """
    wanted = dict(parse_condition(a, "--arg") for a in args)
    metadata: dict[tuple[str, ...], Condition] = {}
    for w in where:
        key, cond = parse_condition(w, "--where")
        path = tuple(key.split("."))
        if path[0] == "metadata" and len(path) > 1:
            path = path[1:]
        if not all(path):
            raise ParseError(f"--where {w!r}: expected metadata.KEY[.KEY...]=VALUE")
        metadata[path] = cond
    return wanted, metadata


def parse_filter(text: str) -> tuple[dict[str, Condition], dict[tuple[str, ...], Condition]]:
    """One line of terms, as a search box takes them: ``n>=10 metadata.tags.project=paper``.

    Terms are separated by spaces (quote one that holds a space, as in a
    shell: ``'name="a b"'``); a term whose name starts with ``metadata.`` is a
    ``--where``, any other an ``--arg`` (argument names have no dots).
    """
    import shlex

    try:
        terms = shlex.split(text)
    except ValueError as e:
        raise ParseError(f"cannot read the filter {text!r}: {e}") from None
    where = [t for t in terms if t.strip().startswith("metadata.")]
    return parse_terms([t for t in terms if t not in where], where)


def query(
    cache: Cache,
    function_id: str,
    arguments: Mapping[str, Any] | None = None,
    metadata: Mapping[Any, Any] | None = None,
) -> Iterator[dict[str, Any]]:
    """Records of ``function_id`` whose arguments and metadata match, as ``f.query`` finds them.

    See :func:`query_result`, which this iterates.
    """
    for call in query_result(cache, function_id, arguments, metadata):
        yield call.record


def query_result(
    cache: Cache,
    function_id: str,
    arguments: Mapping[str, Any] | None = None,
    metadata: Mapping[Any, Any] | None = None,
) -> QueryResult:
    """The lazy :class:`~fleche.query.QueryResult` of :func:`query`: iterate it, or ask its
    ``count(verify=False)`` (the index's count, no record read) for how many match.

    Conditions follow :mod:`fleche.records._terms`: equality by digest (so ``10`` does
    not match ``10.0``), order comparisons on numbers and str. A name no record
    of the function has is an error listing the names it has. ``arguments``
    map names to conditions or plain values (equality; ``None`` matches
    ``None``); ``metadata`` maps paths to conditions, or is a nested dict of
    values (``{"tags": {"project": "x"}}``).
    """
    arguments = {
        n: v if isinstance(v, Condition) else Condition("eq", v)
        for n, v in (arguments or {}).items()
    }
    meta = dict(metadata or {})
    if not all(isinstance(k, tuple) for k in meta):
        meta = metadata_conditions(meta)
    if arguments:
        first = next(cache.iter_records(function_id), None)
        if first is not None:  # no record at all: nothing matches, whatever the names
            names = list(first.get("arguments", {}))
            unknown = sorted(set(arguments) - set(names))
            if unknown:
                raise ParseError(
                    f"{function_id} has no argument {', '.join(unknown)}; its arguments are {names}"
                )
    spec = QuerySpec(function_ids=frozenset([function_id]), args=arguments, metadata=meta)
    return QueryResult(cache, spec, function_id)


def jsonable(value: Any) -> Any:
    """A record's contents as JSON values: bytes as hex, inline payloads as their size."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k == "inline" and isinstance(v, (bytes, bytearray, memoryview)):
                out["inline_size"] = memoryview(v).nbytes
            else:
                out[str(k)] = jsonable(v)
        return out
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"bytes": bytes(value).hex()}
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)
