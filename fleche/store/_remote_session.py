"""The connection of a remote store: the command that starts the server, the handshake, requests.

:class:`RemoteSession` is the base of :class:`fleche.store._remote.RemoteStore`.
It builds the command that starts ``python -m fleche remote --serve PATH``
(through ``ssh``, as a child of this process, or through ``command=[...]``),
shakes hands with the server (protocol, versions, read-only), says why a server
that did not answer failed, and sends one request at a time, reopening a broken
connection once. The store operations over it are ``RemoteStore``'s; the wire
format is in :mod:`fleche.store._wire`.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

from fleche._version import __version__
from fleche.errors import ConfigError, FlecheWarning
from fleche.store._wire import (
    ERROR,
    MISS,
    OK,
    PROTOCOL,
    BrokenStream,
    Connection,
    RemoteError,
    RemoteProtocolError,
    remote_exception,
    stderr_tail,
)

_SCHEMES = ("fleche+ssh", "fleche+exec")


def _close_quietly(conn: Connection | None) -> None:
    if conn is not None:
        conn.close(wait=0.5)


# -- the command line ----------------------------------------------------------------------


SETUP_DONE = "fleche: setup commands done"
"""Written to stderr between the setup commands and the server: its absence says setup failed."""


def _shell_dir(path: str) -> str:
    """``path`` quoted for a POSIX shell, a leading ``~`` or ``~user`` left to expand."""
    if path.startswith("~"):
        head, sep, rest = path.partition("/")
        if head[1:].replace("-", "").replace("_", "").replace(".", "").isalnum() or head == "~":
            return head + sep + (shlex.quote(rest) if rest else "")
    return shlex.quote(path)


def remote_command(server: str, workdir: str | None, setup_commands: Sequence[str]) -> str:
    """The remote shell's command line: ``cd``, the setup commands, then ``exec`` the server.

    Joined by ``&&``, so the first that fails stops the rest (the server
    never starts) and ssh exits with its status. ``server`` and the
    setup commands are shell text as given; ``workdir`` is quoted here.
    """
    prefix = [f"cd -- {_shell_dir(workdir)}"] if workdir else []
    prefix += list(setup_commands)
    if not prefix:
        return server
    return " && ".join([*prefix, f"echo {shlex.quote(SETUP_DONE)} >&2", f"exec {server}"])


def _argv_option(value: str | Sequence[str] | None, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    if not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{name}= takes a list of strings (or one string); got {value!r}")
    return list(value)


def parse_url(url: str) -> tuple[str, str | None, str | None, int | None, str]:
    """``(scheme, user, host, port, path)`` of a ``fleche+ssh://`` or ``fleche+exec://`` URL."""
    scheme, sep, rest = url.partition("://")
    if "?" in rest or "#" in rest:
        raise ConfigError(
            f"{url!r}: options are keyword arguments (storage_options in fleche.toml), "
            "not a query string"
        )
    if not sep or scheme not in _SCHEMES:
        raise ConfigError(
            f"{url!r}: expected fleche+ssh://[user@]host[:port]/path or fleche+exec:///path"
        )
    netloc, slash, path = rest.partition("/")
    path = slash + path
    if path.startswith("/~"):  # fleche+ssh://host/~/cache: relative to the remote home
        path = path[1:]
    # No path at all (fleche+ssh://host): the server serves the cache its own fleche.toml
    # names (cache_name=, else its default). A lone "/" is a path left out by mistake.
    if path == "/":
        raise ConfigError(
            f"{url!r} names no store path: fleche+ssh://host/abs/path or host/~/path "
            "(or fleche+ssh://host, no slash, for the host's own configured cache)"
        )
    if scheme == "fleche+exec":
        if netloc:
            raise ConfigError(f"{url!r}: fleche+exec:///abs/path takes no host (three slashes)")
        return scheme, None, None, None, path
    user, _, hostport = netloc.rpartition("@")
    host, port = hostport, None
    if hostport.startswith("["):  # [::1]:2222
        host, _, after = hostport[1:].partition("]")
        port_text = after[1:] if after.startswith(":") else ""
    else:
        host, _, port_text = hostport.partition(":")
    if port_text:
        if not port_text.isdigit():
            raise ConfigError(f"{url!r}: port {port_text!r} is not a number")
        port = int(port_text)
    if not host:
        raise ConfigError(f"{url!r} names no host: fleche+ssh://[user@]host[:port]/path")
    return scheme, user or None, host, port, path


class RemoteSession:
    """One persistent connection to a ``fleche remote --serve`` process, for a store.

    What it reads is set by the store's constructor: the URL, the command that
    starts the server (``_argv``), timeouts, and the state of the connection.
    """

    url: str
    root: str
    read_only: bool
    durable: bool
    round_trips: int
    connects: int
    server: dict[str, Any]
    _read_only_reason: str
    _timeout: float
    _retry_after: float
    _python: str | Sequence[str] | None
    _python_text: str | None
    _where: str
    _argv: list[str]
    _workdir: str | None
    _setup_commands: tuple[str, ...]
    _lock: threading.Lock
    _conn: Connection | None
    _down_until: float
    _down_error: RemoteError | None
    _warned_skew: bool

    def _build_argv(
        self,
        ssh: bool,
        user: str | None,
        host: str | None,
        port: int | None,
        path: str,
        ssh_config: Any,
        identity_file: Any,
        ssh_options: list[str],
        command: list[str] | None,
        cache_name: str | None = None,
        workdir: str | None = None,
        setup_commands: Sequence[str] = (),
    ) -> list[str]:
        flags = ["--read-only"] if self.read_only else []
        flags += ["--durable"] if self.durable else []
        # No path: the server serves the cache its fleche.toml names (--cache, else its default).
        what = [path] if path else ([] if cache_name is None else ["--cache", cache_name])
        serve = ["-m", "fleche", "remote", "--serve", *what, *flags]
        python = self._python
        if not ssh:
            if python is None:
                python = [sys.executable] if command is None else ["python3"]
            argv = [*_argv_option(python, "python"), *serve]
            if workdir or setup_commands:  # the same shell line as over ssh, run by sh
                argv = ["sh", "-c", remote_command(shlex.join(argv), workdir, setup_commands)]
            return [*(command or []), *argv]
        if python is None:
            python = "python3"
        # ssh hands the remote command to the user's shell as one string: quote
        # what we add; a python= string and the setup commands are the user's own shell text.
        py = python if isinstance(python, str) else shlex.join(_argv_option(python, "python"))
        remote = remote_command(f"{py} {shlex.join(serve)}", workdir, setup_commands)
        argv = ["ssh", *ssh_options]  # first: ssh keeps the first value given for an option
        if ssh_config:
            argv += ["-F", os.fspath(ssh_config)]
        if identity_file:
            argv += ["-i", os.fspath(identity_file)]
        if port is not None:
            argv += ["-p", str(port)]
        if user:
            argv += ["-l", user]
        argv += [
            "-T",  # no pty: a clean 8-bit pipe, no escape character
            "-x",  # no X11 forwarding
            "-o", "BatchMode=yes",  # never prompt (there is no terminal to prompt on)
            "-o", f"ConnectTimeout={max(1, int(self._timeout))}",
            "-o", "ServerAliveInterval=15",  # notice a dead peer within a minute
            "-o", "ServerAliveCountMax=4",
        ]  # fmt: skip
        return [*argv, "--", str(host), remote]

    # -- connection ----------------------------------------------------------------------

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        """The running ``ssh`` (or server) process; None while disconnected."""
        return self._conn.proc if self._conn is not None else None

    def _connect(self) -> Connection:
        """Start the server and shake hands; RemoteError (an OSError) when that fails."""
        try:
            conn = Connection(self._argv)
        except OSError as e:
            raise RemoteError(f"cannot start {self._argv[0]!r} to reach {self.url}: {e}") from e
        self.connects += 1
        try:
            hello = conn.hello(
                {"protocol": list(PROTOCOL), "fleche": __version__, "read_only": self.read_only},
                self._timeout,
            )
        except (BrokenStream, TimeoutError) as e:
            if isinstance(e, TimeoutError):
                conn.proc.kill()
            conn.close(wait=5.0, keep_stderr=True)  # its exit status and last words say why
            error = self._startup_error(conn, str(e))
            conn.stderr.close()
            raise error from None
        except BaseException:
            conn.close(wait=0.5)
            raise
        try:
            self._check_hello(hello)
        except BaseException:
            conn.close(wait=2.0)
            raise
        # Ends the process when the store is collected or at exit; holds conn, not self.
        conn.finalizer = weakref.finalize(self, _close_quietly, conn)
        return conn

    def _check_hello(self, hello: dict[str, Any]) -> None:
        proto = hello.get("protocol")
        version = hello.get("fleche", "?")
        if not (isinstance(proto, list) and len(proto) == 2 and proto[0] == PROTOCOL[0]):
            spoken = ".".join(map(str, proto)) if isinstance(proto, list) else repr(proto)
            raise RemoteProtocolError(
                f"the fleche server for {self.url} (fleche {version}) speaks protocol "
                f"{spoken}; this "
                f"fleche ({__version__}) speaks {PROTOCOL[0]}.x: install the same fleche on "
                f"both sides (pip install 'fleche=={__version__}' on {self._where}, or "
                f"'fleche=={version}' here)"
            )
        if "error" in hello:
            error = hello["error"]
            if not (isinstance(error, list) and len(error) == 2):
                raise self.malformed(hello)
            raise remote_exception(error[0], f"{error[1]} (server for {self.url})")
        if version != __version__ and not self._warned_skew:
            self._warned_skew = True
            warnings.warn(
                f"the fleche server for {self.url} runs fleche {version}, this is {__version__}: "
                "both speak the same protocol, but keep them in step",
                FlecheWarning,
                stacklevel=4,
            )
        self.server = hello
        self.root = str(hello.get("root", self.root))
        if hello.get("read_only") and not self.read_only:
            self.read_only = True
            self._read_only_reason = "is served read-only (fleche remote --serve --read-only)"

    def _startup_error(self, conn: Connection, why: str) -> RemoteError:
        """Say why the server did not answer, from its exit status and stderr."""
        err = stderr_tail(conn.stderr)
        code = conn.proc.returncode
        if self._setup_commands or self._workdir:
            _, marker, after = err.rpartition(SETUP_DONE)
            if not marker and not (self._argv[0] == "ssh" and code == 255):
                return self._setup_error(code, err, why)
            err = after.strip() if marker else err
        said = f": {err}" if err else ""
        py = self._python_text or ("python3" if self._argv[0] == "ssh" else self._argv[0])
        lines = err.splitlines()
        if any("No module named fleche" in ln or "No module named 'fleche'" in ln for ln in lines):
            return RemoteError(
                f"{py!s} on {self._where} has no fleche (No module named fleche), so it cannot "
                f"serve {self.url}: pip install fleche=={__version__} there, or pass python= "
                "the interpreter of an environment that has it"
            )
        if any("ModuleNotFoundError" in ln or "ImportError" in ln for ln in lines):
            return RemoteError(
                f"fleche on {self._where} cannot be imported by {py!s} ({lines[-1]}): "
                f"reinstall it there (pip install fleche=={__version__}) or pass python="
            )
        if code == 127 or "command not found" in err:
            return RemoteError(
                f"no {py!s} on {self._where}{said}: pass python= the path of a Python with fleche"
            )
        if self._argv[0] == "ssh" and code == 255:
            return RemoteError(f"ssh could not connect to {self._where} for {self.url}{said}")
        status = f"exited with status {code}" if code is not None else "did not answer"
        return RemoteError(
            f"the fleche server for {self.url} {status} ({why}){said}; command: "
            f"{shlex.join(self._argv)}"
        )

    def _setup_error(self, code: int | None, err: str, why: str) -> RemoteError:
        """The ``cd`` or a setup command failed (or hung) on the host: the server never started."""
        steps = ([f"cd {self._workdir}"] if self._workdir else []) + list(self._setup_commands)
        lines = err.splitlines()[-5:]
        said = (":\n  " + "\n  ".join(lines)) if lines else " (nothing on stderr)"
        if why.startswith("no answer"):  # killed after connect_timeout: it hung
            failed = f"did not finish ({why}: connect_timeout= waits longer)"
        else:
            failed = f"failed (status {code})"
        shell = f"ssh {self._where}" if self._argv[0] == "ssh" else "sh"
        return RemoteError(
            f"the setup on {self._where} {failed} before the fleche server for "
            f"{self.url} could start; it ran {' && '.join(steps)!r}{said}\n"
            f"Run the steps in a shell there ({shell}) to see which fails, then fix "
            "setup_commands= / workdir="
        )

    def _reconnect(self) -> Connection:
        now = time.monotonic()
        if now < self._down_until and self._down_error is not None:
            raise RemoteError(
                f"{self.url} is unreachable (next attempt in {self._down_until - now:.0f} s): "
                f"{self._down_error}"
            )
        try:
            self._conn = self._connect()
        except RemoteError as e:
            self._down_until, self._down_error = time.monotonic() + self._retry_after, e
            raise
        self._down_until, self._down_error = 0.0, None
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            if conn.finalizer is not None:
                conn.finalizer.detach()
            conn.close(wait=0.5)

    def _request(
        self, head: tuple[Any, ...], parts: Iterable[Any] = (), *, retry: bool = True
    ) -> tuple[Any, Any]:
        """Send ``head`` (+ ``parts``), return ``(value, body)``; None value on a miss.

        A broken connection is reopened once and the request sent again: every
        operation is idempotent (puts are content-addressed or replace, deletes
        of the missing succeed). Listing cursors die with their connection, so
        ``retry=False`` there.
        """
        with self._lock:
            for attempt in (0, 1):
                conn = self._conn
                if conn is None or conn.pid != os.getpid():
                    conn = self._reconnect()
                self.round_trips += 1
                try:
                    reply, body = conn.exchange(head, parts)
                except BrokenStream as e:
                    err = stderr_tail(conn.stderr)
                    self._drop()
                    if attempt or not retry:
                        raise RemoteError(
                            f"lost the connection to {self.url} ({e})" + (f": {err}" if err else "")
                        ) from None
                    continue
                except BaseException:  # e.g. KeyboardInterrupt mid-message: out of step now
                    self._drop()
                    raise
                break
        shape = (reply[0], len(reply)) if isinstance(reply, list) and reply else None
        if shape == (OK, 2):
            return reply[1], body
        if shape == (MISS, 1):
            return None, None
        if shape == (ERROR, 3):
            raise remote_exception(reply[1], f"{reply[2]} (server for {self.url})")
        raise self.malformed(reply)

    def malformed(self, reply: Any) -> RemoteProtocolError:
        """The error for a reply that is not what the protocol allows (a RemoteError: the
        server is broken or not fleche's, and the store is treated as failing)."""
        return RemoteProtocolError(
            f"a malformed reply from the server for {self.url}: {reply!r:.200}"
        )
