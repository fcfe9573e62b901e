"""``fleche ui``: serve a local web page over a store (see docs/ui.md)."""

from __future__ import annotations

import click

from fleche.cli._main import store_option


@click.command("ui", short_help="Browse a store in a local web page (127.0.0.1 only).")
@store_option
@click.option(
    "-p", "--port", type=click.IntRange(0, 65535), default=0, help="Port (default: a free one)."
)
@click.option(
    "--write", is_flag=True, help="Open the store writable and offer evict and gc (each confirmed)."
)
@click.option(
    "--trust",
    is_flag=True,
    help="Let the call page unpickle results (loading a pickle runs code; a signed store "
    "is trusted anyway).",
)
@click.option("--open", "open_browser", is_flag=True, help="Open the page in a browser too.")
@click.option("-v", "--verbose", is_flag=True, help="Log each request (without its token).")
def ui(
    store: str | None, port: int, write: bool, trust: bool, open_browser: bool, verbose: bool
) -> None:
    """Serve a page over the store until Ctrl-C: its functions, their calls as a table
    (filtered with fleche query's terms, sorted, paged), one call with a preview of its
    result, and the store's health.

    It listens on 127.0.0.1 only and answers only requests that carry the random
    token of the address it prints. Read-only unless --write.
    """
    from fleche.ui import make_server

    server = make_server(store, port=port, write=write, trust=trust, quiet=not verbose)
    click.echo(f"fleche ui: serving {server.source.layers[0].store.url} at")
    click.echo(f"  {server.url}")
    click.echo("(Ctrl-C stops it; the address holds the session's token: do not share it)")
    if open_browser:
        import webbrowser

        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        click.echo("fleche ui: stopped", err=True)
    finally:
        server.server_close()
