"""The read-only commands: ``ls``, ``show``, ``query``, ``stats``, ``du`` and ``config``.

None of them writes to the store, with one exception every reader shares:
a damaged record met by ``query`` is moved to ``quarantine/``, as a decorated
function would move it. ``ls``, ``stats`` and ``du`` work from listings (see
:func:`fleche.upkeep.scan`) and never decode a record.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import click

from fleche.cli import (
    emit_json,
    json_option,
    open_target,
    print_table,
    progress_bar,
    store_option,
    workers_option,
)
from fleche.upkeep import format_size, format_time


def _n(count: int, noun: str) -> str:
    """``1 call``, ``2 calls``, ``10,000 calls``."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


# -- ls ------------------------------------------------------------------------------------


@click.command("ls", short_help="List functions with their calls and bytes.")
@store_option
@json_option
def ls(store: str | None, as_json: bool) -> None:
    """List the functions in a store, with their number of calls and record bytes.

    Record bytes include results small enough to live inside their record;
    larger results are shared objects (see 'fleche du' and 'fleche stats').
    Read from directory listings only: no record is opened. 'modified' is
    when the function's newest record file was written.
    """
    from fleche.upkeep_scan import scan

    s = open_target(store)
    inv = scan(s)
    rows: list[dict[str, Any]] = []
    for fid in sorted(inv.calls):
        entries = inv.calls[fid]
        times = [e.mtime for e in entries if e.mtime is not None]
        rows.append(
            {
                "function": fid,
                "calls": len(entries),
                "bytes": sum(e.size for e in entries),
                "modified": max(times) if times else None,
            }
        )
    if as_json:
        emit_json(
            {
                "store": s.url,
                "functions": rows,
                "calls": inv.n_calls,
                "call_bytes": inv.call_bytes,
                "objects": len(inv.objects),
                "object_bytes": inv.object_bytes,
            }
        )
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    table.add_column("function")
    table.add_column("calls", justify="right")
    table.add_column("bytes", justify="right")
    table.add_column("modified")
    for r in rows:
        table.add_row(
            r["function"], f"{r['calls']:,}", format_size(r["bytes"]), format_time(r["modified"])
        )
    if rows:
        print_table(table)
    click.echo(
        f"{_n(len(rows), 'function')}, {_n(inv.n_calls, 'call')} ({format_size(inv.call_bytes)}), "
        f"{_n(len(inv.objects), 'object')} ({format_size(inv.object_bytes)}) in {s.url}"
    )


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
    rec = codec.decode_record(blob, f"call record {fid}/{digest} in {s.url}")
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
    created = meta.pop("created", None)
    if isinstance(created, (int, float)):
        lines.append(("  created", format_time(created)))
    duration = meta.pop("duration", None)
    if isinstance(duration, (int, float)):
        lines.append(("  duration", f"{duration:.3g} s"))
    tags = meta.pop("tags", None)
    lines += [(f"  {k}", str(v)) for k, v in meta.items()]
    if tags:
        lines.append(("  tags", ", ".join(f"{k}={v!r}" for k, v in tags.items())))
    _print_pairs(lines)


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
        "codec": {0: "raw", 1: "zstd"}.get(codec_id) if codec_id is not None else None,
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


def _print_pairs(lines: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        click.echo(f"{k:<{width}}  {v}".rstrip())


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
@click.option("-n", "--limit", type=click.IntRange(0), default=None, help="Show at most N calls.")
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
    from fleche.upkeep import ParseError, find_function, parse_condition
    from fleche.upkeep import query as run_query

    s = open_target(store)
    fid = find_function(s.iter_functions(), function)
    wanted = dict(parse_condition(a, "--arg") for a in args)
    metadata: dict[tuple[str, ...], Any] = {}
    for w in where:
        key, cond = parse_condition(w, "--where")
        path = tuple(key.split("."))
        if path[0] == "metadata" and len(path) > 1:
            path = path[1:]
        if not all(path):
            raise ParseError(f"--where {w!r}: expected metadata.KEY[.KEY...]=VALUE")
        metadata[path] = cond
    found = []
    for rec in run_query(Cache(s), fid, wanted, metadata):
        found.append(rec)
        if limit is not None and len(found) >= limit:
            break
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
    click.echo(f"{_n(len(found), 'call')} of {fid} {'matches' if len(found) == 1 else 'match'}")


# -- stats ---------------------------------------------------------------------------------


def _report_files(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> list[tuple[str, str]]:
    """``--plot`` files with their formats, checked before any work (a .png needs matplotlib)."""
    from fleche.upkeep_report import report_format

    try:
        return [(path, report_format(path)) for path in value]
    except ValueError as e:
        raise click.BadParameter(str(e), ctx, param) from e


@click.command("stats", short_help="Counts, bytes, ages; compressed vs raw; --plot charts.")
@store_option
@json_option
@workers_option
@click.option(
    "--no-raw",
    is_flag=True,
    help="Skip raw (uncompressed) sizes, which read each file's 32-byte header.",
)
@click.option(
    "--plot",
    "plots",
    multiple=True,
    type=click.Path(dir_okay=False),
    callback=_report_files,
    metavar="FILE",
    help="Also write a report with charts: FILE.html (self-contained) or FILE.png (matplotlib).",
)
@click.option(
    "--html",
    "htmls",
    multiple=True,
    type=click.Path(dir_okay=False),
    metavar="FILE",
    help="Also write the report as a self-contained HTML page, whatever FILE is called.",
)
def stats(
    store: str | None,
    as_json: bool,
    workers: int,
    no_raw: bool,
    plots: list[tuple[str, str]],
    htmls: tuple[str, ...],
) -> None:
    """Counts, bytes and ages of a store, per function; compressed against raw sizes.

    Counts, sizes and times come from listings (times are file modification
    times); raw sizes from each file's header, never from decoding records.
    --plot/--html also read every record (not the values) to chart the
    store's size over time, calls and bytes per function and the compute time
    the records keep.
    """
    from fleche.upkeep_scan import scan
    from fleche.upkeep_scan import stats as compute

    reports = [(p, "html") for p in htmls] + list(plots)
    s = open_target(store)
    with progress_bar() as progress:
        inv = scan(s)
        st = compute(s, inv, headers=not no_raw, workers=workers, progress=progress)
        if reports:
            from fleche.upkeep_report import build_report, write_report

            report = build_report(s, inv, st, workers=workers, progress=progress)
    for path, fmt in reports:
        write_report(report, path, fmt)
    if as_json:
        doc = st.to_dict()
        if reports:
            doc["reports"] = [path for path, _ in reports]
        emit_json(doc)
        return
    m = st.marker
    marker = (
        f"format {m.get('format')}, created {m.get('created', '?')}, by fleche {m.get('fleche', '?')}"
        if m
        else "no fleche.json"
    )

    def raw(stored: int, raw_bytes: int | None) -> str:
        if raw_bytes is None:
            return ""
        ratio = f", {stored / raw_bytes:.0%} of raw" if raw_bytes else ""
        return f", {format_size(raw_bytes)} raw{ratio}"

    lines = [
        ("store", f"{st.url}  ({marker})"),
        ("functions", f"{len(st.functions):,}"),
        (
            "calls",
            f"{st.calls:,}  {format_size(st.call_bytes)}{raw(st.call_bytes, st.raw_call_bytes)}",
        ),
        (
            "objects",
            f"{st.objects:,}  {format_size(st.object_bytes)}{raw(st.object_bytes, st.raw_object_bytes)}"
            + (
                f", {st.compressed_objects:,} compressed"
                if st.compressed_objects is not None
                else ""
            ),
        ),
        ("tmp", f"{st.tmp_files:,} files  {format_size(st.tmp_bytes)}"),
        ("quarantine", f"{st.quarantined:,} files  {format_size(st.quarantine_bytes)}"),
        ("oldest file", format_time(st.oldest)),
        ("newest file", format_time(st.newest)),
    ]
    if st.unreadable_headers:
        lines.append(
            ("damaged", f"{st.unreadable_headers:,} files with a bad header (fleche verify)")
        )
    _print_pairs(lines)
    if st.functions:
        from rich.table import Table

        table = Table(box=None, pad_edge=False)
        for col, justify in (
            ("function", "left"),
            ("calls", "right"),
            ("bytes", "right"),
            ("oldest", "left"),
            ("newest", "left"),
        ):
            table.add_column(col, justify=justify)  # type: ignore[arg-type]
        for fid, f in sorted(st.functions.items()):
            table.add_row(
                fid,
                f"{f.calls:,}",
                format_size(f.bytes),
                format_time(f.oldest),
                format_time(f.newest),
            )
        click.echo()
        print_table(table)
    for path, _ in reports:
        click.echo(f"report written to {path}")


# -- du ------------------------------------------------------------------------------------


@click.command(
    "du",
    short_help="Bytes per function, objects, tmp/, quarantine/.",
    context_settings={"help_option_names": ["--help"]},
)
@store_option
@json_option
@click.option(
    "-h", "--human-readable", "human", is_flag=True, help="Sizes as 1.5 MiB instead of bytes."
)
def du(store: str | None, as_json: bool, human: bool) -> None:
    """Bytes on disk: records per function, objects, tmp/ and quarantine/, and the total.

    Like du, one line per part; -h for human sizes (so --help is the help here).
    Objects are shared between calls (one copy per distinct value), so they
    are counted once, not per function.
    """
    from fleche.upkeep_scan import scan

    s = open_target(store)
    inv = scan(s)
    parts = [(f"calls/{fid}", sum(e.size for e in inv.calls[fid])) for fid in sorted(inv.calls)]
    parts += [
        ("objects", inv.object_bytes),
        ("tmp", sum(e.size for e in inv.tmp)),
        ("quarantine", sum(e.size for e in inv.quarantine)),
    ]
    total = sum(b for _, b in parts)
    if as_json:
        emit_json({"store": s.url, "parts": dict(parts), "total": total})
        return
    fmt = format_size if human else str
    width = max(len(fmt(b)) for _, b in [*parts, ("", total)])
    for name, b in [*parts, ("total", total)]:
        click.echo(f"{fmt(b):>{width}}  {name}")


# -- config --------------------------------------------------------------------------------


def _defaults() -> dict[str, Any]:
    """Per-cache option defaults, read from the signatures that apply them."""
    from fleche.cache import Cache
    from fleche.store import open_store

    out = {}
    for fn, keys in (
        (open_store, ("read_only", "durable")),
        (Cache, ("compression_level", "inline_limit", "serializer")),
    ):
        params = inspect.signature(fn).parameters
        out.update({k: params[k].default for k in keys})
    return out


@click.command("config", short_help="Show the configuration and where it comes from.")
@store_option
@json_option
def config(store: str | None, as_json: bool) -> None:
    """Show the configuration in force and where each value comes from.

    Files are read from the working directory upward (a file with root = true
    stops the search), then $XDG_CONFIG_HOME/fleche/fleche.toml; nearer files
    win. FLECHE_CACHE (a cache name or URL) overrides the default cache.
    """
    from fleche import config as cfg_mod

    cfg = cfg_mod.load_config()
    env = os.environ.get("FLECHE_CACHE")
    default_from: str | None = None
    for path in cfg.files:  # nearest first: the first that says default = wins
        if "default" in cfg_mod.read_file(path):
            default_from = str(path)
            break
    if store is not None:
        active, source = store, "--store"
    elif env:
        active, source = env, "env FLECHE_CACHE"
    elif cfg.default is not None:
        active, source = cfg.default, default_from or "the only cache defined"
    else:
        active, source = "memory://", "default (nothing configured: a private in-memory cache)"
    defaults = _defaults()
    caches: dict[str, Any] = {}
    for name, spec in sorted(cfg.caches.items()):
        entry: dict[str, Any] = {"file": str(spec.source)}
        if spec.layered:
            entry["layers"] = [dict(layer) for layer in spec.options["layers"]]
            entry["options"] = {
                k: {"value": v, "from": str(spec.source)}
                for k, v in spec.options.items()
                if k != "layers"
            }
        else:
            opts = {k: {"value": v, "from": str(spec.source)} for k, v in spec.options.items()}
            for k, v in defaults.items():
                opts.setdefault(k, {"value": v, "from": "default"})
            url = spec.options["url"]
            if "://" not in url and not os.path.isabs(os.path.expanduser(url)):
                opts["url"]["resolved"] = str(spec.source.parent / os.path.expanduser(url))
            entry["options"] = opts
        caches[name] = entry
    resolved_url = None
    if active in cfg.caches and not cfg.caches[active].layered:
        resolved_url = caches[active]["options"]["url"].get(
            "resolved", cfg.caches[active].options["url"]
        )
    elif active not in cfg.caches:
        resolved_url = active
    doc = {
        "files": [str(p) for p in cfg.files],
        "active": {"cache": active, "from": source, "url": resolved_url},
        "default": {"value": cfg.default, "from": default_from},
        "env": {"FLECHE_CACHE": env},
        "caches": caches,
    }
    if as_json:
        emit_json(doc)
        return
    click.echo("files      " + (", ".join(doc["files"]) or "none found"))
    click.echo(f"active     {active}  (from {source})")
    if resolved_url and resolved_url != active:
        click.echo(f"           {resolved_url}")
    if env:
        click.echo(f"env        FLECHE_CACHE={env}")
    if not caches:
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for col in ("cache", "key", "value", "from"):
        table.add_column(col, overflow="fold")
    for name, entry in caches.items():
        first = True
        for key, o in entry["options"].items():
            value = repr(o["value"]) if not isinstance(o["value"], str) else o["value"]
            if "resolved" in o:
                value = f"{value} -> {o['resolved']}"
            table.add_row(name if first else "", key, value, o["from"])
            first = False
        for i, layer in enumerate(entry.get("layers", []), 1):
            table.add_row(name if first else "", f"layer {i}", layer.get("url", "?"), entry["file"])
            first = False
    click.echo()
    print_table(table)


__all__ = ["config", "du", "ls", "query", "show", "stats"]
