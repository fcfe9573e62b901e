"""``fleche import``: an original (0.22) cache's results, brought into one of ours."""

from __future__ import annotations

import os
import sys
from collections import Counter
from typing import Any

import click

from fleche.cli._main import Failure, emit_json, json_option, progress_bar


def _target(spec: str | None) -> tuple[Any, str]:
    """The cache to import into, and how to name it: ``--to`` (a name or URL), else the default."""
    from fleche import config
    from fleche.cache import strict_open

    with strict_open():  # a cache that cannot be opened is the command's error to report
        cache = config.default_cache() if spec is None else config.resolve(spec)
    store = getattr(cache, "store", None)
    if (
        spec is None
        and store is not None
        and store.in_memory
        and getattr(store, "name", None) is None
    ):
        raise Failure(
            "no cache to import into: pass --to URL|NAME, set FLECHE_CACHE, or name a "
            "default cache in fleche.toml (see 'fleche init')",
            "fleche import",
        )
    return cache, getattr(cache, "url", spec or "the default cache")


@click.command("import", short_help="Bring an original fleche (0.22) cache's results over.")
@click.argument("old", required=False, type=click.Path(exists=True, file_okay=False))
@click.option(
    "--to",
    "to",
    metavar="URL|NAME",
    default=None,
    help="The cache to fill (default: the default cache).",
)
@click.option(
    "--values", metavar="DIR", default=None, help="The old value directory (default: OLD/values)."
)
@click.option(
    "--calls",
    metavar="DIR|URL",
    default=None,
    help="The old call store: a directory of call files, an SQLite file or any SQLAlchemy "
    "URL (default: OLD/calls, else OLD/calls.db).",
)
@click.option(
    "--allow-import",
    is_flag=True,
    help="Import each function's module (runs its code; from here and PYTHONPATH) and key "
    "its calls with the @fleche function found there: needed for hash_code=True.",
)
@click.option(
    "--secret-key",
    metavar="HEX[:HEX]",
    default=None,
    help="The original's signing key(s), if it signed its files (default: FLECHE_SECRET_KEY).",
)
@click.option("-n", "--dry-run", is_flag=True, help="Count what would be imported; write nothing.")
@click.option(
    "--progress/--no-progress",
    default=None,
    help="A progress bar on stderr (default: when it is a terminal).",
)
@json_option
def import_(
    old: str | None,
    to: str | None,
    values: str | None,
    calls: str | None,
    allow_import: bool,
    secret_key: str | None,
    dry_run: bool,
    progress: bool | None,
    as_json: bool,
) -> None:
    """Bring the results of OLD, a cache the original fleche (0.22) wrote, into one of ours.

    OLD is the root of an original cache: values/ beside calls/ (templates
    pickle, cloudpickle, dill) or calls.db (template sql). Afterwards the same
    @fleche function called with the same arguments hits. Calls already there
    are skipped, so a second or interrupted run resumes. OLD is only read. At
    the end, each call that could not come over is listed with why. Exit code
    1 when none could (or on an error), else 0.
    """
    from fleche.migrate import import_original, open_original

    if old is None and values is None:
        raise click.UsageError("give OLD, the original cache's root (or --values and --calls)")
    if allow_import and "" not in sys.path and os.getcwd() not in sys.path:
        # as `python -m fleche` would: the user's modules are found from here
        sys.path.insert(0, os.getcwd())
    cache, target = _target(to)
    source = open_original(old, values=values, calls=calls, secret_key=secret_key)
    try:
        with progress_bar(progress) as bar:
            report = import_original(
                source,
                cache,
                target=target,
                dry_run=dry_run,
                allow_import=allow_import,
                progress=bar,
            )
    finally:
        source.close()
    if as_json:
        emit_json(report.as_json())
    else:
        verb = "would import" if dry_run else "imported"
        click.echo(
            f"{verb} {report.imported} of {report.calls} calls from {report.source} into "
            f"{report.target}; {report.present} already there; {len(report.skipped)} not brought over"
        )
        if report.by_import:
            click.echo(f"{report.by_import} keyed by their @fleche function, imported")
        why = Counter((s.function, s.reason) for s in report.skipped)
        for (function, reason), n in sorted(why.items()):
            click.echo(f"  not brought over: {n} call(s) of {function}: {reason}")
    if report.calls and report.imported + report.present == 0:
        raise SystemExit(1)
