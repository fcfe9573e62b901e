"""The commands that read call records: ``show`` (a record or an object) and ``query``.

``show`` decodes one record, or checks one object, and can load its value;
``query`` decodes the records of one function to match their arguments and
metadata. A damaged record met by ``query`` is moved to ``quarantine/``, as a
decorated function would move it.
"""

from __future__ import annotations

from typing import Any

import click

from fleche.cli._main import emit_json, json_option, open_target, print_table, store_option
from fleche.cli._text import _n, _print_pairs
from fleche.render import format_duration, format_size, format_time

# -- show ----------------------------------------------------------------------------------


def _serializer(ser: Any) -> str:
    from fleche.codec import SERIALIZER_NAMES

    if not isinstance(ser, int):
        return "?"
    name = SERIALIZER_NAMES.get(ser & 0x7F, f"serializer {ser & 0x7F}")
    return name + (" (out-of-band buffers)" if ser & 0x80 else "")


def _describe_ref(ref: Any) -> str:
    """One line for a value reference: its type and where its bytes are."""
    if not isinstance(ref, dict):
        return repr(ref)
    t = ref.get("type", "?")
    inline = ref.get("inline")
    if inline is not None:
        return f"{t}, inline ({len(inline)} bytes, {_serializer(ref.get('ser'))})"
    if "oid" in ref:
        return f"{t}, object {ref['oid']} ({format_size(ref.get('size', 0))} raw)"
    return f"{t}, not stored (digest {ref.get('digest')})"


def _argument(value: Any) -> str:
    """An argument as a record keeps it: the value in clear, or a reference and its digest."""
    if not isinstance(value, dict):
        return repr(value)
    text = _describe_ref(value)
    if "inline" in value or "oid" in value:
        text += f", digest {value.get('digest')}"
    return text


def _load(s: Any, ref: dict[str, Any]) -> str:
    """repr of a stored value, cut to a screenful: it may import the user's modules."""
    from fleche.cache import Cache

    text = repr(Cache(s).load_value(ref))
    return text if len(text) <= 2000 else text[:2000] + f"... ({len(text):,} characters)"


def _show_call(s: Any, fid: str, digest: str, as_json: bool, load: bool) -> None:
    from fleche import codec

    blob = s.get_call(fid, digest)
    rec = codec.decode_record(blob, f"call record {fid}/{digest} in {s.url}", name=(fid, digest))
    loaded = _load(s, rec["result"]) if load else None
    if as_json:
        from fleche.upkeep import jsonable

        doc = {"kind": "call", "stored_size": len(blob), **jsonable(rec)}
        if load:
            doc["result_repr"] = loaded
        emit_json(doc)
        return
    meta = dict(rec.get("metadata", {}))
    lines = [
        ("call", f"{digest}  ({len(blob):,} bytes)"),
        ("function", f"{fid}  (module {rec.get('module')}, qualname {rec.get('qualname')})"),
        ("version", repr(rec.get("version"))),
        ("code", rec.get("code") or "-"),
        ("result", _describe_ref(rec.get("result"))),
    ]
    if loaded is not None:
        lines.append(("value", loaded))
    lines.append(("arguments", "" if rec.get("arguments") else "none"))
    lines += [(f"  {k}", _argument(v)) for k, v in rec.get("arguments", {}).items()]
    lines.append(("metadata", ""))
    # times as people read them: instants as dates, wall and CPU seconds as durations
    for key, fmt in (("created", format_time), ("finished", format_time)):
        value = meta.pop(key, None)
        if value is not None:
            lines.append((f"  {key}", fmt(value) if _is_number(value) else repr(value)))
    for key in ("duration", "cpu"):
        value = meta.pop(key, None)
        if value is not None:
            label = "cpu time" if key == "cpu" else key
            lines.append(
                (f"  {label}", format_duration(value) if _is_number(value) else repr(value))
            )
    tags = meta.pop("tags", None)
    lines += [(f"  {k}", str(v)) for k, v in meta.items()]
    if tags:
        lines.append(("  tags", ", ".join(f"{k}={v!r}" for k, v in tags.items())))
    _print_pairs(lines)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _show_object(s: Any, oid: str, as_json: bool, load: bool) -> None:
    from fleche import codec
    from fleche.errors import CorruptObjectError

    blob = s.get(oid)
    codec_id: int | None
    ser: int | None
    raw: int | None
    try:
        codec_id, ser, raw, _ = codec.read_header(blob, f"object {oid}")
        codec.unframe(blob, f"object {oid}", expect=oid)
        check = "ok"
    except CorruptObjectError as e:
        codec_id = ser = raw = None
        check = str(e)
    loaded = _load(s, {"oid": oid}) if load and check == "ok" else None
    doc = {
        "kind": "object",
        "oid": oid,
        "stored_size": len(blob),
        "raw_size": None if raw is None else raw + codec.HEADER_SIZE,
        "codec": {0: "raw", 1: "zstd", 2: "zstd-frames"}.get(codec_id)
        if codec_id is not None
        else None,
        "serializer": _serializer(ser) if ser is not None else None,
        "integrity": check,
    }
    if as_json:
        emit_json({**doc, "value_repr": loaded} if load else doc)
        return
    lines = [
        ("object", oid),
        ("stored", f"{len(blob):,} bytes"),
        ("payload", "-" if raw is None else f"{raw:,} bytes, {doc['codec']}, {doc['serializer']}"),
        ("integrity", check),
    ]
    if loaded is not None:
        lines.append(("value", loaded))
    _print_pairs(lines)


@click.command("show", short_help="Show a call record or object by digest or prefix.")
@click.argument("digest")
@store_option
@json_option
@click.option(
    "--load", is_flag=True, help="Also load the result and print its repr (imports its modules)."
)
def show(digest: str, store: str | None, as_json: bool, load: bool) -> None:
    """Show the call record (or value object) named DIGEST, or by a prefix of 4+ hex digits.

    A prefix matching several records or objects is an error listing them.
    """
    from fleche.upkeep import AmbiguousError, find_digest

    s = open_target(store)
    try:
        match = find_digest(s, digest)
    except AmbiguousError as e:
        if as_json:
            emit_json({"error": "ambiguous", "prefix": digest, "candidates": e.candidates})
        raise
    if match.kind == "call":
        assert match.function_id is not None
        _show_call(s, match.function_id, match.digest, as_json, load)
    else:
        _show_object(s, match.digest, as_json, load)


# -- query ---------------------------------------------------------------------------------


@click.command("query", short_help="Find stored calls by argument or metadata.")
@click.argument("function")
@click.option(
    "-a",
    "--arg",
    "args",
    multiple=True,
    metavar="NAME=VALUE",
    help="Match an argument (repeatable); also NAME!=, <, <=, >, >= VALUE, and NAME=[a,b] "
    "for any of a set. VALUE is read as JSON/TOML: 10 is an int, 1.5 a float, true a bool, "
    "abc or '\"10\"' a string.",
)
@click.option(
    "-w",
    "--where",
    multiple=True,
    metavar="metadata.KEY=VALUE",
    help="Match metadata (repeatable), e.g. metadata.tags.project=paper or metadata.cpu>10; "
    "the same operators as --arg.",
)
@click.option(
    "-n",
    "--limit",
    type=click.IntRange(0),
    default=None,
    help="Show at most N calls (the total that match is still counted, from the index).",
)
@store_option
@json_option
def query(
    function: str,
    args: tuple[str, ...],
    where: tuple[str, ...],
    limit: int | None,
    store: str | None,
    as_json: bool,
) -> None:
    """List the stored calls of FUNCTION whose arguments and metadata match.

    FUNCTION is a function id as 'fleche ls' shows it (pkg.mod.simulate), the
    decorator's identity (pkg.mod:simulate) or an unambiguous tail (simulate).
    Conditions mean what fleche.Q's do in simulate.query(...): equality by
    digest (10 does not match 10.0), <, <=, >, >= on numbers and strings. Omit
    an argument to match any value.
    """
    from fleche.cache import Cache
    from fleche.upkeep import find_function, parse_terms, query_result

    s = open_target(store)
    fid = find_function(s.iter_functions(), function)
    wanted, metadata = parse_terms(args, where)
    result = query_result(Cache(s), fid, wanted, metadata)
    found: list[dict[str, Any]] = []
    for call in result if limit != 0 else ():
        found.append(call.record)
        if limit is not None and len(found) >= limit:
            break  # no record past the limit is read
    total = len(found)
    if limit is not None and len(found) == limit:
        # the index counts the rest without a record read (a store without one is scanned)
        total = max(total, result.count(verify=False))
    found.sort(key=lambda r: r.get("metadata", {}).get("created") or 0)
    if as_json:
        from fleche.upkeep import jsonable

        emit_json(
            [
                {
                    "digest": r["digest"],
                    "function": r["function"],
                    "arguments": jsonable(r.get("arguments", {})),
                    "result": jsonable(r.get("result")),
                    "metadata": jsonable(r.get("metadata", {})),
                }
                for r in found
            ]
        )
        return
    from rich.table import Table

    names: list[str] = []
    for r in found:
        names += [n for n in r.get("arguments", {}) if n not in names]
    table = Table(box=None, pad_edge=False)
    for col in ("digest", "created", *names, "result"):
        table.add_column(col, overflow="fold")
    for r in found:
        arguments = r.get("arguments", {})
        cells = [
            f"<{v.get('type', '?')}>" if isinstance(v, dict) else repr(v)
            for v in (arguments.get(n, "") for n in names)
        ]
        result = r.get("result", {})
        table.add_row(
            r["digest"][:12],
            format_time(r.get("metadata", {}).get("created")),
            *cells,
            f"<{result.get('type', '?')}>" if isinstance(result, dict) else "?",
        )
    if found:
        print_table(table)
    matches = f"{_n(total, 'call')} of {fid} {'matches' if total == 1 else 'match'}"
    if total > len(found):
        matches += f"; {len(found):,} shown (--limit {limit})"
    click.echo(matches)
