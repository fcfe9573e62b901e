"""The commands that change a store: ``verify`` (with ``--repair``), ``gc`` and ``sync``.

Each has a way to look before it leaps: ``verify`` without ``--repair`` and
``gc``/``sync`` with ``--dry-run`` report exactly what a real run would do.
"""

from __future__ import annotations

from typing import Any

import click

from fleche.cli._main import (
    emit_json,
    is_cache_name,
    json_option,
    open_target,
    progress_bar,
    resolve_store,
    store_option,
    workers_option,
)
from fleche.cli._text import _n
from fleche.render import format_size, format_time

# -- verify --------------------------------------------------------------------------------


@click.command("verify", short_help="Re-hash everything; find damage (--repair).")
@store_option
@json_option
@workers_option
@click.option(
    "--repair",
    is_flag=True,
    help="Delete dangling records and move corrupt files to quarantine/.",
)
def verify(store: str | None, as_json: bool, workers: int, repair: bool) -> None:
    """Re-hash every object and record; report corrupt, dangling and orphan ones.

    Corrupt: a file whose hash, length or header is wrong, a directory, fifo
    or symbolic link where a file belongs, damaged frames in a segment of
    records in flight (tmp/segments/; sealed first on a writable store, their
    bytes copied to quarantine/), or (when FLECHE_SECRET_KEY is set) a file
    that is unsigned or forged. Dangling: a record whose object is
    missing or corrupt. Orphan: an object no record uses (harmless; 'fleche
    gc' removes them). A file signed with a key FLECHE_SECRET_KEY lacks is
    another key's: listed, left alone, not a problem. A directory of the
    store's layout that is a symbolic link is not checked through, and
    --repair refuses to run. Exit status 1 while problems remain, 0 otherwise.
    """
    from fleche.codec import signer_from
    from fleche.upkeep import verify as run

    s = open_target(store)
    signer = signer_from(None)  # FLECHE_SECRET_KEY set: unsigned files count as corrupt
    with progress_bar() as progress:
        report = run(s, repair=repair, workers=workers, progress=progress, signer=signer)
    if as_json:
        emit_json(report.to_dict())
    else:
        click.echo(
            f"checked {_n(report.objects, 'object')} and {_n(report.records, 'record')} "
            f"({format_size(report.bytes)}) in {report.seconds:.2f} s"
        )
        labels = {
            "object": "corrupt object",
            "record": "corrupt record",
            "dangling": "dangling record",
            "link": "symbolic link",
        }
        for f in report.findings:
            done = f" -> {f.fixed}" if f.fixed else ""
            click.echo(f"{labels[f.kind]} {f.name}: {f.reason}{done}")
        if report.foreign:
            keys = sorted({f.reason.split("key id ")[-1][:16] for f in report.foreign})
            click.echo(
                f"{_n(len(report.foreign), 'file')} signed with key id {', '.join(keys)}, which "
                "FLECHE_SECRET_KEY does not hold: another key's files, left alone (add the key "
                "to trust them)"
            )
        if report.orphans:
            click.echo(
                f"{_n(len(report.orphans), 'orphan object')} ({format_size(_orphan_bytes(s, report.orphans))}) "
                "that no record uses: 'fleche gc' removes them"
            )
        if report.problems:
            hint = "" if repair else "; 'fleche verify --repair' fixes them"
            click.echo(f"{report.problems} problems{hint}")
        elif report.findings:
            click.echo(f"repaired {len(report.findings)} problems")
        else:
            click.echo("no problems")
    if report.problems:
        raise click.exceptions.Exit(1)


def _orphan_bytes(s: Any, oids: list[str]) -> int:
    total = 0
    for oid in oids:
        try:
            total += s.size(oid)
        except KeyError:  # CacheMiss: gone meanwhile
            continue
    return total


# -- gc ------------------------------------------------------------------------------------


def _print_pack(plan: Any, result: Any) -> None:
    """One or two lines on packing, when there is anything to say."""
    if plan.unsupported:
        return
    if result is None:
        if plan.write:
            click.echo(
                f"would pack {_n(len(plan.fold), 'small loose file')} "
                f"(and merge {_n(len(plan.merge), 'pack')}): {plan.reason}"
            )
        if plan.unloose or plan.expired or plan.strays:
            click.echo(
                f"would remove {_n(len(plan.unloose), 'packed loose file')}, "
                f"{_n(len(plan.expired) + len(plan.strays), 'old pack')}"
            )
        return
    if result.packs:
        click.echo(
            f"packed {_n(result.packed, 'loose file')} ({format_size(result.packed_bytes)}) "
            f"into {_n(len(result.packs), 'pack')}"
            + (f", {result.dropped:,} removed from packs" if result.dropped else "")
        )
    if result.unloosed or result.removed_packs:
        click.echo(
            f"removed {_n(result.unloosed, 'packed loose file')}, "
            f"{_n(result.removed_packs, 'old pack file')} (older than --grace)"
        )


def _parsed(parse: Any) -> Any:
    """A click callback that reads an option with ``parse``; a bad value is a usage error."""

    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
        from fleche.upkeep import ParseError

        if value is None:
            return None
        try:
            return parse(value)
        except ParseError as e:
            raise click.BadParameter(str(e), ctx, param) from e

    return callback


def _size(value: str) -> int:
    from fleche.upkeep import parse_size

    return parse_size(value)


def _cutoff(value: str) -> float:
    from fleche.upkeep import parse_cutoff

    return parse_cutoff(value)


def _age(value: str) -> float:
    from fleche.upkeep import parse_age

    return parse_age(value)


@click.command("gc", short_help="Remove old calls, unused objects, stale tmp/ and uploads.")
@store_option
@json_option
@workers_option
@click.option(
    "--max-size",
    callback=_parsed(_size),
    metavar="SIZE",
    help="Remove the oldest calls until the store fits: 500MB, 10GB, 2GiB.",
)
@click.option(
    "--older-than",
    callback=_parsed(_cutoff),
    metavar="AGE",
    help="Remove calls made longer ago: 30d, 12h, 1d12h, or a date 2025-01-31.",
)
@click.option(
    "--keep-latest",
    type=click.IntRange(0),
    metavar="N",
    help="Keep only the N newest calls of each function.",
)
@click.option(
    "-f",
    "--function",
    "functions",
    multiple=True,
    metavar="NAME",
    help="Apply the limits to this function only (repeatable); alone, remove all its calls.",
)
@click.option(
    "--grace",
    default="1h",
    show_default=True,
    callback=_parsed(_age),
    metavar="AGE",
    help="Leave unreferenced objects, tmp/ files and incomplete S3 uploads younger than this "
    "(writes in flight).",
)
@click.option(
    "--pack/--no-pack",
    "pack",
    default=None,
    help="Fold small loose files into a pack now (--pack), or never (--no-pack); "
    "default: once --pack-threshold of them wait.",
)
@click.option(
    "--pack-threshold",
    type=click.IntRange(1),
    default=10_000,
    show_default=True,
    metavar="N",
    help="Small loose files that make gc pack them.",
)
@click.option("-n", "--dry-run", is_flag=True, help="Show what would be removed; remove nothing.")
@click.option("-v", "--verbose", is_flag=True, help="List every call and object removed.")
def gc(
    store: str | None,
    as_json: bool,
    workers: int,
    max_size: int | None,
    older_than: float | None,
    keep_latest: int | None,
    functions: tuple[str, ...],
    grace: float,
    pack: bool | None,
    pack_threshold: int,
    dry_run: bool,
    verbose: bool,
) -> None:
    """Remove old calls, the objects only they used, unreferenced objects and stale tmp/ files.

    With no limit, only objects no call uses and tmp/ files older than --grace
    go. Calls are removed before their objects, and an object a remaining call
    uses is never removed. Age is when the call was computed. On S3, incomplete
    multipart uploads under the store's prefix older than --grace are aborted
    (a writer that died mid-upload leaves its parts billed in the bucket).

    Small loose files (records, values up to 64 KiB) are folded into packs under
    packs/ once --pack-threshold of them wait (or with --pack); a loose file and a
    replaced pack are removed only once their pack is older than --grace.
    """
    from fleche.upkeep import apply_gc, plan_gc, refuse_read_only_gc

    s = open_target(store)
    if not dry_run:  # before the plan: nothing is printed of a gc that cannot happen
        refuse_read_only_gc(s)
    with progress_bar() as progress:
        plan = plan_gc(
            s,
            max_size=max_size,
            older_than=older_than,
            keep_latest=keep_latest,
            functions=list(functions) or None,
            grace=grace,
            workers=workers,
            progress=progress,
            pack=pack,
            pack_threshold=pack_threshold,
        )
        result = None if dry_run else apply_gc(s, plan, workers=workers, progress=progress)
    if as_json:
        doc: dict[str, Any] = {"dry_run": dry_run, "plan": plan.to_dict()}
        if result is not None:
            doc["result"] = result.to_dict()
        emit_json(doc)
    else:
        _print_gc(plan, result, verbose)
    if result is not None and result.errors:
        raise click.exceptions.Exit(1)


def _print_gc(plan: Any, result: Any, verbose: bool) -> None:
    _print_pack(plan.pack, None if result is None else result.pack)
    verb = "would remove" if result is None else "removed"
    if not (plan.records or plan.objects or plan.tmp or plan.uploads):
        click.echo(f"nothing to remove from {plan.url} ({format_size(plan.size_before)})")
    else:
        reasons: dict[str, int] = {}
        for v in plan.records:
            reasons[v.reason] = reasons.get(v.reason, 0) + 1
        why = ", ".join(f"{n:,} by {k}" for k, n in sorted(reasons.items()))
        if result is None:
            counts = [
                (len(plan.records), sum(v.size for v in plan.records)),
                (len(plan.objects), sum(e.size for e in plan.objects)),
                (len(plan.tmp), sum(e.size for e in plan.tmp)),
            ]
        else:
            counts = [
                (result.records, result.record_bytes),
                (result.objects, result.object_bytes),
                (result.tmp, result.tmp_bytes),
            ]
        click.echo(f"{verb} from {plan.url}:")
        (calls, call_bytes), (objects, object_bytes), (tmp, tmp_bytes) = counts
        click.echo(
            f"  {_n(calls, 'call')} ({format_size(call_bytes)})" + (f": {why}" if why else "")
        )
        for fid, (n, b) in plan.by_function().items():
            click.echo(f"    {n:>7,}  {fid}  ({format_size(b)})")
        click.echo(f"  {_n(objects, 'object')} ({format_size(object_bytes)})")
        if result is not None and result.spared:
            click.echo(f"    {result.spared:>7,}  kept: calls written meanwhile use them")
        click.echo(f"  {_n(tmp, 'tmp file')} ({format_size(tmp_bytes)})")
        if plan.uploads:
            if result is None:
                click.echo(f"  {_n(len(plan.uploads), 'incomplete upload')} older than --grace")
            else:
                click.echo(f"  {_n(result.uploads, 'incomplete upload')} aborted")
            for u in plan.uploads:
                click.echo(f"    {u.key}  upload {u.upload_id}  {format_time(u.initiated)}")
        if verbose:
            for v in plan.records:
                click.echo(
                    f"  call {v.function_id}/{v.digest}  {format_time(v.created)}  {v.reason}"
                )
            for e in plan.objects:
                click.echo(f"  object {e.name}  {format_size(e.size)}")
            for e in plan.tmp:
                click.echo(f"  tmp/{e.name}  {format_size(e.size)}")
        click.echo(f"store: {format_size(plan.size_before)} -> {format_size(plan.size_after)}")
    if plan.over_limit:
        click.echo(
            f"still above --max-size {format_size(plan.max_size)}: the rest is in calls outside "
            "--function or in objects younger than --grace"
        )
    if plan.unreadable:
        click.echo(
            f"{_n(len(plan.unreadable), 'damaged record')} left in place: 'fleche verify --repair'"
        )
    if plan.uploads_unlisted:
        click.echo(f"incomplete uploads not looked for: {plan.uploads_unlisted}")
    if result is not None:
        for error in result.errors:
            click.echo(f"failed: {error}", err=True)


# -- sync ----------------------------------------------------------------------------------


def _sync_end(spec: str) -> Any:
    """A sync end: a configured cache name becomes its store; anything else stays a URL.

    A URL is handed to :func:`fleche.sync.sync` as is, so it opens the source
    read-only and creates a missing destination.
    """
    from fleche import config

    if is_cache_name(spec) and spec in config.load_config().caches:
        return resolve_store(spec)
    return spec


@click.command("sync", short_help="Copy what DST lacks from SRC, objects first.")
@click.argument("src")
@click.argument("dst")
@workers_option
@json_option
@click.option(
    "-n", "--dry-run", is_flag=True, help="List what would be copied (and deleted); write nothing."
)
@click.option("--delete", is_flag=True, help="Also remove from DST what SRC lacks (records first).")
@click.option(
    "--functions",
    metavar="A,B",
    default=None,
    help="Copy only these functions' calls and the objects they use.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="A progress bar on stderr (default: when it is a terminal).",
)
def sync(
    src: str,
    dst: str,
    workers: int,
    as_json: bool,
    dry_run: bool,
    delete: bool,
    functions: str | None,
    progress: bool | None,
) -> None:
    """Copy SRC's calls and objects that DST lacks, objects first, verifying each file.

    SRC and DST are store URLs, paths or cache names from fleche.toml. A reader
    of DST never sees a call whose objects are missing, even if the sync is
    interrupted; running it again copies only what is still missing.
    """
    import sys

    from fleche.sync import SyncError
    from fleche.sync import sync as run
    from fleche.upkeep import find_function

    source = _sync_end(src)
    fids = None
    if functions:
        names = [n.strip() for n in functions.split(",") if n.strip()]
        src_store = source if not isinstance(source, str) else open_target(source)
        fids = [find_function(src_store.iter_functions(), n) for n in names]
    if progress is None:
        progress = sys.stderr.isatty() and not as_json
    try:
        result = run(
            source,
            _sync_end(dst),
            functions=fids,
            delete=delete,
            dry_run=dry_run,
            workers=workers,
            progress=progress,
        )
    except SyncError as e:
        if as_json and e.result is not None:
            emit_json(_sync_doc(e.result))
        raise
    if as_json:
        emit_json(_sync_doc(result))
    else:
        click.echo(str(result))
        for name, reason in result.failed:
            click.echo(f"failed: {name}: {reason}", err=True)
    if result.failed:
        raise click.exceptions.Exit(1)


def _sync_doc(result: Any) -> dict[str, Any]:
    return {
        "src": result.src,
        "dst": result.dst,
        "dry_run": result.dry_run,
        "transferred": result.transferred,
        "skipped": len(result.skipped),
        "failed": [{"name": n, "reason": r} for n, r in result.failed],
        "deleted": result.deleted,
        "bytes_transferred": result.bytes_transferred,
        "listed": result.listed,
        "seconds": result.seconds,
    }
