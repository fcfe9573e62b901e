"""``SshCache``: the original fleche's name for a cache on another machine, reached by ``ssh``.

fleche 0.22 shipped ``fleche.remote.SshCache(host, cache_name=None,
python="python3", ssh_options=(), setup_commands=(), workdir=None)``: one
persistent ``ssh host python -m fleche remote --serve [--cache NAME]`` whose far
end served the cache its own ``fleche.toml`` named. This keeps that signature
and that behaviour on top of what fleche already has for it: the client is a
:class:`~fleche.store.RemoteStore` (``fleche+ssh://host`` with no path: the
host's configured cache) and the server is :func:`fleche.remote.serve`. One
protocol, one server: what differs from 0.22 is that values cross as the
store's bytes and the far end never unpickles anything.

It is a :class:`~fleche.cache.Cache`, so it goes wherever a cache goes:
``fleche.cache(SshCache(...))``, ``with fleche.cache(...)``, a layer of
``fleche.cache([local, SshCache(...)])`` (hits copied down into the local
layer).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from typing import Any

from fleche.cache import Cache
from fleche.errors import ConfigError, warn_user
from fleche.store import RemoteError, RemoteStore


class SshCache(Cache):
    """A cache served by fleche on ``host`` over one persistent ``ssh`` process.

    The far end runs ``cd WORKDIR && SETUP && ... && exec PYTHON -m fleche remote
    --serve [--cache NAME]``: the ``cd`` and the setup commands (``module load
    python/3.11``, ``source ~/venv/bin/activate``) are joined by ``&&``, so the
    first that fails stops the rest. The server serves the cache named
    ``cache_name`` in the ``fleche.toml`` found from its working directory
    (``workdir``, else the login directory), or that file's default.

    ``host``: ``user@host``, an alias of ``~/.ssh/config``, or ``host:port``.
    ``python``: the remote interpreter, shell text as written (``"~/venv/bin/python"``).
    ``ssh_options``: ``ssh`` arguments placed before fleche's own, so they win
    (``["-o", "ControlMaster=auto", "-o", "ControlPath=~/.ssh/cm-%r@%h:%p"]``).
    ``setup_commands``: shell commands as written (quote your own values).
    ``workdir``: quoted here; a leading ``~`` still means the remote home.

    Keyword-only: ``read_only``, ``durable``, ``ssh_config`` (``-F``),
    ``identity_file`` (``-i``), ``connect_timeout``, ``retry_after`` (as for a
    ``fleche+ssh://`` store) and the options of :class:`~fleche.cache.Cache`
    (``compression_level``, ``serializer``, ``secret_key``...): values are
    encoded here, so those are this side's choice.

    The connection opens now. When it cannot (no route, a login refused, a
    setup command that fails), one :class:`~fleche.errors.FlecheWarning` names
    the host and the remote's last words, and calls run uncached until it
    answers again (tried after ``retry_after`` seconds). A server that has no
    such cache to serve raises :class:`~fleche.errors.ConfigError` (naming the
    host, the file and the caches it has) here: no retry would fix that.
    """

    def __init__(
        self,
        host: str,
        cache_name: str | None = None,
        python: str = "python3",
        ssh_options: Sequence[str] = (),
        setup_commands: Sequence[str] = (),
        workdir: str | os.PathLike[str] | None = None,
        *,
        read_only: bool = False,
        durable: bool = False,
        ssh_config: str | os.PathLike[str] | None = None,
        identity_file: str | os.PathLike[str] | None = None,
        connect_timeout: float = 30.0,
        retry_after: float = 10.0,
        **cache_options: Any,
    ) -> None:
        if not isinstance(host, str) or not host or "/" in host or host.startswith("-"):
            raise ConfigError(
                f"SshCache(host={host!r}): expected an ssh destination such as 'user@host', "
                "'host:2222' or an alias from ~/.ssh/config"
            )
        self.host = host
        self.cache_name = cache_name
        self.python = python
        # a string is split as a shell would ("-o ControlMaster=auto -p 2222")
        self.ssh_options = tuple(
            shlex.split(ssh_options) if isinstance(ssh_options, str) else ssh_options
        )
        self.setup_commands = tuple(
            [setup_commands] if isinstance(setup_commands, str) else setup_commands
        )
        self.workdir = os.fspath(workdir) if workdir is not None else None
        store = RemoteStore(
            f"fleche+ssh://{host}",
            read_only=read_only,
            durable=durable,
            python=python,
            ssh_config=ssh_config,
            identity_file=identity_file,
            ssh_options=self.ssh_options,
            connect_timeout=connect_timeout,
            retry_after=retry_after,
            cache_name=cache_name,
            workdir=workdir,
            setup_commands=self.setup_commands,
            lazy=True,
        )
        super().__init__(store, **cache_options)
        self.remote: RemoteStore = store
        try:
            store.connect()
        except RemoteError as e:
            warn_user(
                f"{self!r}: {e}\ncalls run uncached until {host} answers "
                f"(tried again after {retry_after:g} s)"
            )

    def __repr__(self) -> str:
        args = [repr(self.host)]
        for name, default in (
            ("cache_name", None),
            ("python", "python3"),
            ("ssh_options", ()),
            ("setup_commands", ()),
            ("workdir", None),
        ):
            value = getattr(self, name)
            if value != default:
                args.append(f"{name}={value!r}")
        return f"SshCache({', '.join(args)})"

    def info(self) -> dict[str, Any]:
        """What the server said of itself when it connected (connecting now if it has not).

        ``host`` (its host name), ``pid``, ``python``, ``fleche`` (its version),
        ``cache`` (the name of the cache it serves, or FLECHE_CACHE's value),
        ``url`` and ``root`` (that cache's store) and ``read_only``.
        """
        self.remote.connect()
        return dict(self.remote.server)

    def reconnect(self) -> None:
        """End the ssh process; the next operation starts a new one (0.22's ``reconnect``)."""
        self.remote.close()

    def close(self) -> None:
        """End the ssh process (the server exits); a later operation starts it again."""
        self.remote.close()

    def __enter__(self) -> SshCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
