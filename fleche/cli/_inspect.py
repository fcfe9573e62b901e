"""The inventory commands: ``ls``, ``stats`` and ``du``.

None of them writes to the store: they work from listings (see
:func:`fleche.upkeep.scan`) and never decode a record.  The other read-only
commands are ``show`` and ``query`` (:mod:`fleche.cli._records`, which read
records) and ``config`` (:mod:`fleche.cli._config`).
"""

from __future__ import annotations

from typing import Any

import click

from fleche.cli._main import (
    emit_json,
    json_option,
    open_target,
    print_table,
    progress_bar,
    store_option,
    workers_option,
)
from fleche.cli._text import _n, _print_pairs
from fleche.render import format_size, format_time

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
    from fleche.upkeep import scan

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


# -- stats ---------------------------------------------------------------------------------


def _report_files(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> list[tuple[str, str]]:
    """``--plot`` files with their formats, checked before any work (a .png needs matplotlib)."""
    from fleche.upkeep import report_format

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
    from fleche.upkeep import scan
    from fleche.upkeep import stats as compute

    reports = [(p, "html") for p in htmls] + list(plots)
    s = open_target(store)
    with progress_bar() as progress:
        inv = scan(s)
        st = compute(s, inv, headers=not no_raw, workers=workers, progress=progress)
        if reports:
            from fleche.upkeep import build_report, write_report

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
    from fleche.upkeep import scan

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
