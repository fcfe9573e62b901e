"""The ``fleche`` command line: the group, the options every command shares, and helpers.

The commands live in ``cli_inspect`` (ls, show, query, stats, du, config), ``cli_init`` (init) and
``cli_maintain`` (verify, gc, sync), ``cli_sign`` (sign) and ``cli_index`` (index), and
are imported only when invoked, so
``fleche --version`` or a ``remote --serve`` start does not pay for rich and
the upkeep modules. What the commands compute lives in :mod:`fleche.upkeep`
and :mod:`fleche.sync`, importable and tested without click; this layer only
parses, opens stores, prints and picks exit codes:

- 0: done, nothing wrong;
- 1: a reason on one line (an unknown store or digest, a bad size, a store
  that cannot be reached or has the wrong format), or ``verify`` found
  problems that remain, or ``sign`` left files unsigned;
- 2: the command line itself is wrong (an unknown option, a missing argument).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import click

from fleche._version import __version__
from fleche.errors import FlecheError

if TYPE_CHECKING:
    from rich.console import Console

    from fleche.store import ObjectStore

F = TypeVar("F", bound=Callable[..., Any])

USER_ERRORS = (FlecheError, OSError, ValueError)
"""What a command turns into a one-line message: bad input and unreachable or damaged
stores. Anything else is a bug in fleche and keeps its traceback."""

# name -> "module:attribute", imported on first use
LAZY_COMMANDS = {
    "ls": "fleche.cli._inspect:ls",
    "show": "fleche.cli._records:show",
    "query": "fleche.cli._records:query",
    "stats": "fleche.cli._inspect:stats",
    "du": "fleche.cli._inspect:du",
    "config": "fleche.cli._config:config",
    "init": "fleche.cli._init:init",
    "verify": "fleche.cli._maintain:verify",
    "gc": "fleche.cli._maintain:gc",
    "sync": "fleche.cli._maintain:sync",
    "sign": "fleche.cli._sign:sign",
    "index": "fleche.cli._index:index",
    "ui": "fleche.cli._ui:ui",
    "import": "fleche.cli._import:import_",
}


def one_line(exc: BaseException | str) -> str:
    """A message on one line (a terminal's last line is all a script logs)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines) or type(exc).__name__


class Failure(click.ClickException):
    """A command's error, printed as ``WHERE: reason`` (``where``: ``fleche gc``, say)."""

    def __init__(self, message: str, where: str = "fleche") -> None:
        super().__init__(message)
        self.where = where


class FlecheGroup(click.Group):
    """A click group with lazily imported commands and one-line errors instead of tracebacks."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = LAZY_COMMANDS.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module, _, attr = target.partition(":")
        command = getattr(importlib.import_module(module), attr)
        assert isinstance(command, click.Command)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except USER_ERRORS as e:
            if ctx.params.get("debug") or isinstance(e, BrokenPipeError):
                raise  # click ends quietly on a closed pipe (fleche ls | head)
            where = " ".join(filter(None, (ctx.command_path, ctx.invoked_subcommand)))
            raise Failure(one_line(e), where) from e

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """As click's, but every error is one line: ``fleche CMD: reason``."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as e:
            where = e.ctx.command_path if e.ctx is not None else "fleche"
            click.echo(f"{where}: {one_line(e.format_message())} (see '{where} --help')", err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            click.echo(f"{getattr(e, 'where', 'fleche')}: {one_line(e.format_message())}", err=True)
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("fleche: aborted", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=FlecheGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="fleche")
@click.option(
    "--debug",
    is_flag=True,
    envvar="FLECHE_DEBUG",
    help="Show the traceback of an error instead of its one-line reason.",
)
@click.option(
    "--no-progress",
    is_flag=True,
    help="No progress bars on stderr (they are drawn only on a terminal anyway; "
    "FLECHE_PROGRESS=0 says the same).",
)
def main(debug: bool, no_progress: bool) -> None:
    """Inspect and manage fleche caches.

    Every command works on a store: a path, an fsspec URL (s3://bucket/prefix,
    sftp://host/path) or a cache named in fleche.toml, given with -s/--store;
    without it, the default cache (FLECHE_CACHE, else fleche.toml's default).
    --json prints one JSON document for scripts.
    """
    import warnings

    def one_line_warning(message: Any, category: Any, *args: Any, **kwargs: Any) -> None:
        click.echo(f"fleche: warning: {one_line(str(message))}", err=True)

    ctx = click.get_current_context()
    if not debug:  # a FlecheWarning (a damaged record met by query) on one line, too
        previous = warnings.showwarning
        warnings.showwarning = one_line_warning
        ctx.call_on_close(lambda: setattr(warnings, "showwarning", previous))
    if no_progress:  # for every bar of the command, sync's and upkeep's alike
        from fleche.render import set_progress

        set_progress(False)
        ctx.call_on_close(lambda: set_progress(None))


# -- options every command shares ----------------------------------------------------------


def store_option(f: F) -> F:
    """``-s/--store URL|NAME``; the default cache when absent."""
    return click.option(
        "-s",
        "--store",
        "store",
        metavar="URL|NAME",
        default=None,
        help="Store URL or path, or a cache name from fleche.toml (default: the default cache).",
    )(f)


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(f)


def workers_option(f: F) -> F:
    return click.option(
        "-j",
        "--workers",
        type=click.IntRange(1, 256),
        default=8,
        show_default=True,
        help="Files read (or copied) at once on remote stores and for large objects.",
    )(f)


# -- opening the store a command works on --------------------------------------------------


def _describe_default() -> str:
    env = os.environ.get("FLECHE_CACHE")
    return f"FLECHE_CACHE={env}" if env else "the default cache"


def resolve_store(spec: str | None) -> ObjectStore:
    """The store behind ``spec`` (URL, path or cache name), or behind the default cache.

    A layered cache is refused with its layers listed: a command works on one
    store, and ``-s`` takes any layer's URL. An in-memory default (nothing
    configured) is refused too: it would be empty and vanish with the command.
    """
    from fleche import config
    from fleche.cache import LayeredCache, strict_open

    with strict_open():  # a store that cannot be opened is the command's error to report
        cache = config.default_cache() if spec is None else config.resolve(spec)
    what = _describe_default() if spec is None else repr(spec)
    if isinstance(cache, LayeredCache):
        layers = "; ".join(f"{i}: {layer.url}" for i, layer in enumerate(cache.layers, 1))
        raise FlecheError(f"{what} is a layered cache ({layers}): give one layer's URL with -s")
    store = cache.store
    if spec is None and store.in_memory and getattr(store, "name", None) is None:
        raise FlecheError(
            "no cache chosen: pass -s URL|NAME, set FLECHE_CACHE, or name a default "
            "cache in fleche.toml (see 'fleche config')"
        )
    return store


def is_cache_name(spec: str) -> bool:
    return "/" not in spec and "://" not in spec


def open_target(spec: str | None) -> ObjectStore:
    """:func:`resolve_store`; a path or URL must hold a fleche store, so a typo is not "empty".

    A configured cache (the default, or one named with ``-s``) may be empty:
    nothing has been stored in it yet.
    """
    from fleche import config
    from fleche.upkeep import has_marker

    store = resolve_store(spec)
    configured = spec is None or (is_cache_name(spec) and spec in config.load_config().caches)
    if configured or has_marker(store):
        return store
    if next(store.iter_functions(), None) or next(store.iter_oids(), None):
        return store  # copied without its fleche.json: still readable
    hint = ""
    if spec is not None and is_cache_name(spec):
        known = ", ".join(sorted(config.load_config().caches)) or "none"
        hint = f", and no cache named {spec!r} in fleche.toml (known caches: {known})"
    raise FlecheError(f"no fleche store at {store.url}{hint}")


# -- output --------------------------------------------------------------------------------


def emit_json(data: Any) -> None:
    """One JSON document on stdout."""
    click.echo(json.dumps(data, indent=2, default=str))


def console() -> Console:
    """A rich console on stdout: colours on a terminal, plain and wide in a pipe."""
    from rich.console import Console

    tty = sys.stdout.isatty()
    return Console(width=None if tty else 200, highlight=False, soft_wrap=not tty)


def print_table(table: Any) -> None:
    """Print a rich table; in a pipe, without the padding rich leaves at line ends."""
    out = console()
    if sys.stdout.isatty():
        out.print(table)
        return
    with out.capture() as captured:
        out.print(table)
    for line in captured.get().splitlines():
        click.echo(line.rstrip())


@contextlib.contextmanager
def progress_bar(enabled: bool | None = None) -> Iterator[Callable[[str, int, int], None] | None]:
    """A callback ``(phase, done, total)`` drawing rich progress bars on stderr, or None.

    Shown only when stderr is a terminal (see :func:`fleche.render.progress_wanted`:
    ``fleche --no-progress`` and ``FLECHE_PROGRESS=0`` turn it off): scripts and
    logs get no bar codes.
    """
    from fleche.render import progress_wanted

    if not progress_wanted(enabled):
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("{task.description:<10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    tasks: dict[str, Any] = {}

    def update(phase: str, done: int, total: int) -> None:
        if phase not in tasks:
            tasks[phase] = bar.add_task(phase, total=total)
        bar.update(tasks[phase], completed=done, total=total)

    with bar:
        yield update


_CONFIGURED = "\0configured"  # --serve with no PATH


@main.command(short_help="Serve a store to a fleche+ssh:// client (started by it).")
@click.option(
    "--serve",
    "path",
    metavar="[PATH]",
    is_flag=False,
    flag_value=_CONFIGURED,
    default=None,
    help="The store to serve: a directory on this host (or any store URL it can open); "
    "with no PATH, the cache this directory's fleche.toml names (--cache, else its default).",
)
@click.option(
    "--cache",
    "cache_name",
    metavar="NAME",
    default=None,
    help="With --serve and no PATH: the named cache of fleche.toml instead of its default.",
)
@click.option("--read-only", is_flag=True, help="Refuse every write (ReadOnlyStoreError).")
@click.option("--durable", is_flag=True, help="fsync each write before publishing it.")
def remote(path: str | None, cache_name: str | None, read_only: bool, durable: bool) -> None:
    """Serve a store on stdin/stdout to one fleche+ssh:// (or fleche+exec://) client.

    Not for humans: a RemoteStore or an SshCache starts it, usually as `ssh HOST
    python3 -m fleche remote --serve PATH` (or `--serve [--cache NAME]`), and
    talks fleche's framed protocol to it until it closes the connection. Values
    pass through as bytes; nothing is unpickled.
    """
    if path is None:
        raise click.UsageError("nothing to do: pass --serve [PATH] to run the server")
    configured = path == _CONFIGURED
    if cache_name is not None and not configured:
        raise click.UsageError("--cache NAME chooses a cache of fleche.toml: give no PATH with it")
    from fleche.remote import serve

    code = serve(
        None if configured else path, cache_name=cache_name, read_only=read_only, durable=durable
    )
    raise SystemExit(code)
