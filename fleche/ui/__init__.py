"""``fleche ui``: a local web page over a store, served on 127.0.0.1 to one browser.

Above :mod:`fleche.upkeep` (its query terms, verify and gc), :mod:`fleche.config`
and :mod:`fleche.cache`; below the CLI, whose ``fleche ui`` starts it. Nothing
here is imported by ``import fleche``.

Inside: ``_source`` (what the pages show, asked of each layer's index),
``_preview`` (a glimpse of a result, never unpickled unless trusted), ``_pages``
(the HTML) and ``_server`` (the standard library's threading HTTP server, and
the guards every request passes: Host, token, CSP; see docs/ui.md).
"""

from __future__ import annotations

from fleche.config import CacheLike
from fleche.ui._server import CSP, UiServer
from fleche.ui._source import Source, open_caches


def make_server(
    store: CacheLike | None = None,
    *,
    port: int = 0,
    write: bool = False,
    trust: bool = False,
    token: str | None = None,
    quiet: bool = True,
) -> UiServer:
    """A server over ``store`` (a URL, path or cache name; None: the default cache), not started.

    ``port`` 0 picks a free one. ``write`` opens the stores writable and adds
    the evict and gc pages; ``trust`` lets the call page unpickle results
    (a signed store is trusted anyway). Call ``serve_forever()`` or ``start()``.
    """
    source = Source(open_caches(store, write=write), write=write, trust=trust)
    return UiServer(source, port, token, quiet=quiet)


__all__ = ["CSP", "Source", "UiServer", "make_server", "open_caches"]
