"""The ``fleche`` command line (``fleche`` and ``python -m fleche``): the top layer.

Each command lives in the module of its group and is imported only when it runs
(``_main`` lists them): ``_inspect`` and ``_records`` (ls, show, query, stats,
du), ``_config``, ``_init``, ``_maintain`` (verify, gc, sync), ``_sign``, ``_index``;
``_text`` holds the plain-text helpers they share.
"""

from fleche.cli._main import main, progress_bar

__all__ = ["main", "progress_bar"]
