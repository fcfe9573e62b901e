"""``fleche index status | refresh | rebuild``: the query catalogue of a cache.

The index is a copy of the store's call records (see :mod:`fleche.index` and
docs/catalog.md); these commands show where it is and how big, bring it up to
date with the store, or rebuild it from scratch. Queries catch up on their
own; ``refresh`` is for a remote store written by other machines (the index
trusts a listing for a few minutes) and ``rebuild`` for peace of mind.
For a layered cache, each layer's index in turn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from fleche.cli._main import emit_json, json_option, print_table, progress_bar, store_option
from fleche.errors import FlecheError

if TYPE_CHECKING:
    from fleche.cache import Cache


def _caches(spec: str | None) -> list[Cache]:
    """The cache(s) whose index a command works on: one, or each layer of a layered cache."""
    from fleche import config
    from fleche.cache import LayeredCache, strict_open
    from fleche.cli._main import open_target

    with strict_open():  # a store that cannot be opened is the command's error to report
        cache = config.default_cache() if spec is None else config.resolve(spec)
    caches = list(cache.layers) if isinstance(cache, LayeredCache) else [cache]
    if not isinstance(cache, LayeredCache):
        open_target(spec)  # a path that holds no store is an error, not an empty index
    without = [c.url for c in caches if c.index is None]
    if without:
        raise FlecheError(
            f"{', '.join(without)} has no index (a memory store, or index = false in "
            "fleche.toml); set index = true to keep one"
        )
    return caches


@click.group("index", short_help="The query index of a store: status, refresh, rebuild.")
def index() -> None:
    """The index: a SQL catalogue of a store's call records that answers queries.

    It is a copy, never the truth: deleting it loses nothing, and queries
    bring it up to date on their own (see docs/catalog.md).
    """


@index.command(short_help="Where the index is, how big, how it catches up.")
@store_option
@json_option
def status(store: str | None, as_json: bool) -> None:
    """Show where each index is, how many calls it lists and how it notices changes."""
    from rich.table import Table

    from fleche.render import format_size, format_time

    docs = [c.index.status() for c in _caches(store) if c.index is not None]
    if as_json:
        emit_json(docs if len(docs) > 1 else docs[0])
        return
    for doc in docs:
        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold")
        table.add_column()
        size = doc["bytes"]
        listed = doc["last_full_listing"]
        for label, value in (
            ("store", doc["store"]),
            ("index", f"{doc['backend']}: {doc['location']}"),
            ("calls", f"{doc['calls']:,} in {doc['functions']:,} functions"),
            ("size", format_size(size) if size is not None else "unknown"),
            ("catches up by", doc["catch_up"]),
            ("last listing", format_time(listed) if listed else "never (or local)"),
            ("state", "stale: refreshes in full at the next query" if doc["stale"] else "ok"),
        ):
            table.add_row(label, str(value))
        print_table(table)


def _run(store: str | None, as_json: bool, rebuild: bool) -> None:
    reports: list[dict[str, Any]] = []
    for cache in _caches(store):
        assert cache.index is not None
        with progress_bar() as progress:
            if rebuild:
                report = cache.index.rebuild(progress=progress)
            else:
                report = cache.index.refresh(progress=progress)
        reports.append({"store": cache.url, "index": cache.index.location, **report.as_dict()})
        if not as_json:
            click.echo(f"{cache.url}: {report}")
    if as_json:
        emit_json(reports if len(reports) > 1 else reports[0])


@index.command(short_help="Bring the index up to date with the store.")
@store_option
@json_option
def refresh(store: str | None, as_json: bool) -> None:
    """List the whole store, catalogue records the index lacks and drop vanished ones.

    Only new or replaced records are read. Queries do this on their own for
    local stores; for remote ones they trust a listing for a few minutes.
    """
    _run(store, as_json, rebuild=False)


@index.command(short_help="Empty the index and fill it again from the store.")
@store_option
@json_option
def rebuild(store: str | None, as_json: bool) -> None:
    """Empty the index and catalogue every record of the store again (reads them all)."""
    _run(store, as_json, rebuild=True)
