"""``fleche sign``: sign a store's files with the key in ``FLECHE_SECRET_KEY``.

For turning signing on for a store that ran without it, and for moving a
store onto a new key after a rotation (see ``docs/security.md``).
"""

from __future__ import annotations

import click

from fleche.cli._main import (
    Failure,
    emit_json,
    json_option,
    open_target,
    progress_bar,
    store_option,
    workers_option,
)
from fleche.cli._text import _n


@click.command("sign", short_help="Sign every object and record with FLECHE_SECRET_KEY.")
@store_option
@json_option
@workers_option
@click.option("-n", "--dry-run", is_flag=True, help="Check and count; write nothing.")
def sign(store: str | None, as_json: bool, workers: int, dry_run: bool) -> None:
    """Sign the store's objects and records with the first key of FLECHE_SECRET_KEY.

    Files already signed with that key are left alone; files signed with
    another key of the list are signed again with the first. A file that is
    damaged, signed with a key not in the list, forged, or a record stored
    under another call's name is never signed: it is listed, and the exit
    status is 1. Run it while nothing writes to the store.
    """
    from fleche.codec import ENV, signer_from
    from fleche.upkeep import sign as run

    signer = signer_from(None)
    if signer is None:
        raise Failure(
            f"no key to sign with: set {ENV} (comma-separated keys; the first one signs)",
            "fleche sign",
        )
    s = open_target(store)
    with progress_bar() as progress:
        report = run(s, signer, dry_run=dry_run, workers=workers, progress=progress)
    if as_json:
        emit_json(report.to_dict())
    else:
        verb = "would sign" if dry_run else "signed"
        click.echo(
            f"{verb} {_n(report.signed_objects, 'object')} and "
            f"{_n(report.signed_records, 'record')} with key {report.key_id} "
            f"(of {_n(report.objects, 'object')} and {_n(report.records, 'record')}) "
            f"in {report.seconds:.2f} s"
        )
        for f in report.refused:
            click.echo(f"not signed: {f.kind} {f.name}: {f.reason}")
        if report.refused:
            click.echo(
                f"{_n(len(report.refused), 'file')} left unsigned: signed readers treat them as "
                "misses; 'fleche verify --repair' moves damaged ones aside"
            )
    if report.refused:
        raise click.exceptions.Exit(1)
