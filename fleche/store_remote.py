"""The client of the SSH remote cache: a store whose files live on another host.

``RemoteStore`` keeps **one persistent child process** — ``ssh host python3 -m
fleche remote --serve PATH`` — and forwards every store operation over its
stdin/stdout (the server is :mod:`fleche.remote`). A hit is one round trip
over an open connection (~35 µs through ssh on loopback here) instead of a new ``ssh``
(~200 ms when the login shell sources a ``.bashrc``) or several SFTP calls.
``Cache`` and ``@fleche`` work unchanged on top: it is an ``ObjectStore``.

URLs::

    fleche+ssh://[user@]host[:port]/abs/path   the real ``ssh`` client: ~/.ssh/config
    fleche+ssh://host/~/cache                  aliases, agents and keys all apply
    fleche+exec:///abs/path                    a child process on this machine, or
                                               through ``command=[...]`` (docker exec -i,
                                               kubectl exec -i, srun...)

The wire format is in :mod:`fleche.store_wire`.
"""

from __future__ import annotations

import io
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from fleche._version import __version__
from fleche.errors import CacheMiss, ConfigError, FlecheWarning, ReadOnlyStoreError
from fleche.store import (
    Data,
    ObjectStore,
    ReadableFile,
    as_parts,
    check_function_id,
    check_oid,
    hash_parts,
)
from fleche.store_wire import (
    ERROR,
    MISS,
    OK,
    PROTOCOL,
    BrokenStream,
    Connection,
    RemoteError,
    RemoteProtocolError,
    nbytes,
    remote_exception,
    stderr_tail,
)

__all__ = ["EXISTS_FIRST", "RemoteError", "RemoteProtocolError", "RemoteStore", "parse_url"]

EXISTS_FIRST = 1 << 20
"""Values larger than this are checked with ``exists`` before being sent (objects are immutable)."""
_SCHEMES = ("fleche+ssh", "fleche+exec")


def _close_quietly(conn: Connection | None) -> None:
    if conn is not None:
        conn.close(wait=0.5)


# -- the store -----------------------------------------------------------------------------


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
    if not path or path == "/":
        raise ConfigError(f"{url!r} names no store path: fleche+ssh://host/abs/path or host/~/path")
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


class RemoteStore(ObjectStore):
    """A store served by ``fleche remote --serve`` on another host, over one ``ssh`` process.

    ``fleche+ssh://[user@]host[:port]/path``: ``python=`` the remote
    interpreter (``"python3"``; a string is passed to the remote shell as is,
    so ``"~/venv/bin/python"`` works), ``ssh_config=`` (``-F``),
    ``identity_file=`` (``-i``), ``ssh_options=[...]`` (extra ``ssh``
    arguments; they win over fleche's defaults). ``fleche+exec:///path`` runs
    the server as a child of this process (``python=`` defaults to this
    interpreter), or through ``command=[...]``, an argv prefix such as
    ``["docker", "exec", "-i", "box"]``.

    The connection is opened now (errors surface at ``open_store``) and kept.
    When it breaks, the next operation reconnects once and retries (every
    operation is idempotent); if that fails too it raises :class:`RemoteError`,
    and further operations fail fast for ``retry_after`` seconds rather than
    each waiting for ssh to time out. Thread-safe: requests take turns.

    ``fs`` is None: the files are on the other host. ``round_trips`` and
    ``connects`` count requests and handshakes, for tests and benchmarks.
    """

    def __init__(
        self,
        url: str,
        *,
        read_only: bool = False,
        durable: bool = False,
        python: str | Sequence[str] | None = None,
        ssh_config: str | os.PathLike[str] | None = None,
        identity_file: str | os.PathLike[str] | None = None,
        ssh_options: str | Sequence[str] = (),
        command: str | Sequence[str] | None = None,
        connect_timeout: float = 30.0,
        retry_after: float = 10.0,
        **unknown: Any,
    ) -> None:
        if unknown:
            raise ConfigError(
                f"{url!r}: unknown option(s) {sorted(unknown)}; a remote store takes python=, "
                "ssh_config=, identity_file=, ssh_options=, command=, connect_timeout=, retry_after="
            )
        scheme, user, host, port, path = parse_url(url)
        ssh = scheme == "fleche+ssh"
        if ssh and command is not None:
            raise ConfigError(
                f"{url!r}: command= is for fleche+exec://; ssh options go in ssh_options="
            )
        if not ssh and (ssh_config or identity_file or ssh_options):
            raise ConfigError(
                f"{url!r}: ssh_config=, identity_file= and ssh_options= need fleche+ssh://"
            )
        self.url = url
        self.fs = None
        self.root = path
        self.read_only = read_only
        self.durable = durable
        self.round_trips = 0
        self.connects = 0
        self.server: dict[str, Any] = {}
        """The server's hello: its fleche, protocol, host, pid, python and resolved root."""
        self.options: dict[str, Any] = {
            "python": python,
            "ssh_config": ssh_config,
            "identity_file": identity_file,
            "ssh_options": ssh_options,
            "command": command,
            "connect_timeout": connect_timeout,
            "retry_after": retry_after,
        }
        self.options = {k: v for k, v in self.options.items() if v not in (None, ())}
        self._asked_read_only = read_only
        self._read_only_reason = "was opened read-only; open it with read_only=False to write"
        self._timeout = connect_timeout
        self._retry_after = retry_after
        self._python = python
        self._python_text = (
            python if isinstance(python, str) or python is None else shlex.join(python)
        )
        self._where = str(host) if ssh else "this machine"
        if command is not None:
            self._where = f"'{shlex.join(_argv_option(command, 'command'))}'"
        self._argv = self._build_argv(
            ssh,
            user,
            host,
            port,
            path,
            ssh_config,
            identity_file,
            _argv_option(ssh_options, "ssh_options"),
            None if command is None else _argv_option(command, "command"),
        )
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._down_until = 0.0
        self._down_error: RemoteError | None = None
        self._warned_skew = False
        self._conn = self._connect()

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
    ) -> list[str]:
        flags = ["--read-only"] if self.read_only else []
        flags += ["--durable"] if self.durable else []
        serve = ["-m", "fleche", "remote", "--serve", path, *flags]
        python = self._python
        if not ssh:
            if python is None:
                python = [sys.executable] if command is None else ["python3"]
            return [*(command or []), *_argv_option(python, "python"), *serve]
        if python is None:
            python = "python3"
        # ssh hands the remote command to the user's shell as one string: quote
        # what we add; a python= string is the user's own shell text.
        py = python if isinstance(python, str) else shlex.join(_argv_option(python, "python"))
        remote = f"{py} {shlex.join(serve)}"
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
            names, message = hello["error"]
            raise remote_exception(names, f"{message} (server for {self.url})")
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
        status = reply[0] if isinstance(reply, list) and reply else None
        if status == OK:
            return reply[1], body
        if status == MISS:
            return None, None
        if status == ERROR:
            raise remote_exception(reply[1], f"{reply[2]} (server for {self.url})")
        raise RemoteProtocolError(f"a malformed reply from the server for {self.url}: {reply!r}")

    def _check_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyStoreError(f"the store at {self.url} {self._read_only_reason}")

    # -- values --------------------------------------------------------------------------

    def put(self, data: Data, *, oid: str | None = None) -> str:
        """Send ``data`` (parts written to the pipe one after another) unless ``oid`` is there."""
        self._check_writable()
        parts = as_parts(data)
        oid = hash_parts(parts) if oid is None else check_oid(oid)
        if sum(nbytes(p) for p in parts) > EXISTS_FIRST and self.exists(oid):
            return oid  # one small round trip instead of sending a large value for nothing
        self._request(("put", oid), parts)
        return oid

    def put_stream(self, chunks: Iterable[Any], *, oid: str) -> str:
        """Spool ``chunks`` to a temporary file, then send it part by part: bounded memory here.

        The wire needs a message's length before its body, and a value
        compressed on the fly has none until it is done: the spool is on disk.
        """
        self._check_writable()
        check_oid(oid)
        if self.exists(oid):
            return oid
        with tempfile.TemporaryFile(prefix="fleche-put-") as spool:
            for chunk in chunks:
                spool.write(chunk)
            self._request(("put", oid), _FileParts(spool))
        return oid

    # Reads come back whole (one reply body, already in a writable buffer): reading them
    # through open_read would only add a copy, so the cache does not stream from here.
    streams_reads = False

    def _open_read(self, path: str) -> ReadableFile:
        raise AssertionError("RemoteStore.open_read does not use paths")  # pragma: no cover

    def open_read(self, oid: str) -> ReadableFile:
        """The object's bytes as a file (fetched whole: the remote store does not stream reads)."""
        return _BufferReader(self.get(oid))

    def get(self, oid: str) -> bytes:
        value, body = self._request(("get", check_oid(oid)))
        if value is None and body is None:
            raise CacheMiss(f"object {oid} is not in the store at {self.url}")
        return body  # type: ignore[no-any-return]

    def exists(self, oid: str) -> bool:
        return bool(self._request(("exists", check_oid(oid)))[0])

    def delete(self, oid: str) -> None:
        check_oid(oid)
        self._check_writable()
        self._request(("delete", oid))

    def size(self, oid: str) -> int:
        value, _ = self._request(("size", check_oid(oid)))
        if value is None:
            raise CacheMiss(f"object {oid} is not in the store at {self.url}")
        return int(value)

    def local_path(self, oid: str) -> str | None:
        """Always None: the object's file is on the remote host."""
        check_oid(oid)
        return None

    def iter_oids(self) -> Iterator[str]:
        return self._iterate(("iter_oids",))

    # -- call records --------------------------------------------------------------------

    def put_call(self, function_id: str, digest: str, data: bytes) -> None:
        self._check_writable()
        check_function_id(function_id)
        self._request(("put_call", function_id, check_oid(digest, "call digest")), (data,))

    def find_call(self, function_id: str, digest: str) -> bytes | None:
        """The record's bytes in one round trip; None when there is none."""
        check_function_id(function_id)
        value, body = self._request(("get_call", function_id, check_oid(digest, "call digest")))
        if value is None and body is None:
            return None
        return body  # type: ignore[no-any-return]

    def has_call(self, function_id: str, digest: str) -> bool:
        check_function_id(function_id)
        return bool(self._request(("has_call", function_id, check_oid(digest, "call digest")))[0])

    def delete_call(self, function_id: str, digest: str) -> None:
        check_function_id(function_id)
        check_oid(digest, "call digest")
        self._check_writable()
        self._request(("delete_call", function_id, digest))

    def iter_calls(self, function_id: str | None = None) -> Iterator[tuple[str, str]]:
        if function_id is not None:
            check_function_id(function_id)
        # msgpack gives [fid, digest] lists; the store API promises tuples
        yield from ((fid, digest) for fid, digest in self._iterate(("iter_calls", function_id)))

    def iter_functions(self) -> Iterator[str]:
        return self._iterate(("iter_functions",))

    # -- leases (fleche.lease): forwarded, so the server's create-only write decides ---------
    # A server older than these operations answers "unknown request" (RemoteProtocolError);
    # the lease layer then computes without single-flight, after one warning.

    def acquire_lease(self, function_id: str, digest: str, data: bytes) -> bool:
        self._check_writable()
        self._lease_names(function_id, digest)
        return bool(self._request(("acquire_lease", function_id, digest), (data,))[0])

    def read_lease(self, function_id: str, digest: str) -> bytes | None:
        self._lease_names(function_id, digest)
        value, body = self._request(("read_lease", function_id, digest))
        if value is None and body is None:
            return None
        return bytes(body)

    def renew_lease(self, function_id: str, digest: str, data: bytes) -> None:
        self._check_writable()
        self._lease_names(function_id, digest)
        self._request(("renew_lease", function_id, digest), (data,))

    def release_lease(self, function_id: str, digest: str) -> None:
        self._check_writable()
        self._lease_names(function_id, digest)
        self._request(("release_lease", function_id, digest))

    @staticmethod
    def _lease_names(function_id: str, digest: str) -> None:
        check_function_id(function_id)
        check_oid(digest, "call digest")

    def _iterate(self, head: tuple[Any, ...]) -> Iterator[Any]:
        """Names in batches: the first comes with the request, the rest by cursor.

        The lock is not held between batches, so the caller may use the store
        inside its loop (``Cache.iter_records`` reads each record it lists).
        """
        (items, cursor), _ = self._request(head)
        yield from items
        while cursor:
            (items, cursor), _ = self._request(("next", cursor), retry=False)
            yield from items

    # -- housekeeping ----------------------------------------------------------------------

    def quarantine(
        self,
        oid: str | None = None,
        *,
        function_id: str | None = None,
        digest: str | None = None,
    ) -> None:
        """Have the server move a corrupt file to ``quarantine/``; nothing on a read-only store."""
        if (oid is None) == (function_id is None and digest is None):
            raise ValueError("quarantine takes either an oid or function_id= and digest=")
        if oid is not None:
            check_oid(oid)
        else:
            if function_id is None or digest is None:
                raise ValueError("quarantine of a call record needs both function_id= and digest=")
            check_function_id(function_id)
            check_oid(digest, "call digest")
        if not self.read_only:
            self._request(("quarantine", oid, function_id, digest))

    def info(self) -> dict[str, Any]:
        """The remote ``fleche.json`` (created if missing and writable; ``{}`` if read-only)."""
        return dict(self._request(("info",))[0])

    def close(self) -> None:
        """End the session (the server exits); the next operation opens a new one."""
        with self._lock:
            self._drop()

    def __reduce__(self) -> tuple[Any, ...]:
        # To another process (an executor's worker): it opens its own connection.
        return _reopen, (self.url, self._asked_read_only, self.durable, self.options)


class _FileParts:
    """A spooled file as message parts, read ``_SPOOL_CHUNK`` at a time each time it is iterated."""

    def __init__(self, f: Any) -> None:
        self._f = f

    def __iter__(self) -> Iterator[bytes]:
        self._f.seek(0)
        while chunk := self._f.read(_SPOOL_CHUNK):
            yield chunk


_SPOOL_CHUNK = 8 << 20


class _BufferReader(io.RawIOBase):
    """A read-only file over a buffer already in memory (no copy of it)."""

    def __init__(self, data: Any) -> None:
        super().__init__()
        self._view = memoryview(data).cast("B")
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        out = memoryview(b).cast("B")
        k = min(out.nbytes, self._view.nbytes - self._pos)
        out[:k] = self._view[self._pos : self._pos + k]
        self._pos += k
        return k


def _reopen(url: str, read_only: bool, durable: bool, options: dict[str, Any]) -> RemoteStore:
    return RemoteStore(url, read_only=read_only, durable=durable, **options)
