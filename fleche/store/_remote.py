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
    fleche+ssh://host                          no path: the cache the host's own fleche.toml
                                               names (``cache_name=``, else its default),
                                               found from ``workdir=``; ``fleche.remote.SshCache``

The wire format is in :mod:`fleche.store._wire`.
"""

from __future__ import annotations

import io
import os
import shlex
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from fleche.errors import CacheMiss, ConfigError, ReadOnlyStoreError
from fleche.store._base import (
    Data,
    ObjectStore,
    ReadableFile,
    as_parts,
    check_function_id,
    check_oid,
    hash_parts,
)
from fleche.store._remote_session import RemoteSession, _argv_option, parse_url
from fleche.store._wire import Connection, RemoteError, nbytes

EXISTS_FIRST = 1 << 20
"""Values larger than this are checked with ``exists`` before being sent (objects are immutable)."""


# -- the store -----------------------------------------------------------------------------


class RemoteStore(RemoteSession, ObjectStore):
    """A store served by ``fleche remote --serve`` on another host, over one ``ssh`` process.

    ``fleche+ssh://[user@]host[:port]/path``: ``python=`` the remote
    interpreter (``"python3"``; a string is passed to the remote shell as is,
    so ``"~/venv/bin/python"`` works), ``ssh_config=`` (``-F``),
    ``identity_file=`` (``-i``), ``ssh_options=[...]`` (extra ``ssh``
    arguments; they win over fleche's defaults). ``fleche+exec:///path`` runs
    the server as a child of this process (``python=`` defaults to this
    interpreter), or through ``command=[...]``, an argv prefix such as
    ``["docker", "exec", "-i", "box"]``.

    With no path in the URL the server serves the cache its own fleche.toml
    names: ``cache_name=`` (else the file's default), the file found from
    ``workdir=`` (``cd``'d into first), after ``setup_commands=`` (shell
    commands, joined by ``&&``: ``module load ...``, ``source venv/bin/activate``).
    ``lazy=True`` starts the server at the first request (or :meth:`connect`)
    instead of now.

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
        cache_name: str | None = None,
        workdir: str | os.PathLike[str] | None = None,
        setup_commands: str | Sequence[str] = (),
        lazy: bool = False,
        **unknown: Any,
    ) -> None:
        if unknown:
            raise ConfigError(
                f"{url!r}: unknown option(s) {sorted(unknown)}; a remote store takes python=, "
                "ssh_config=, identity_file=, ssh_options=, command=, connect_timeout=, "
                "retry_after=, cache_name=, workdir=, setup_commands=, lazy="
            )
        scheme, user, host, port, path = parse_url(url)
        if path and cache_name is not None:
            raise ConfigError(
                f"{url!r} names a store path, so cache_name={cache_name!r} has nothing to choose: "
                f"use {url.partition('://')[0]}://HOST (no path) to serve the host's configured "
                "cache by name"
            )
        if cache_name is not None and not (isinstance(cache_name, str) and cache_name):
            raise ConfigError(f"cache_name={cache_name!r}: expected the name of a cache (a str)")
        if isinstance(workdir, os.PathLike):
            workdir = os.fspath(workdir)
        if workdir is not None and not (isinstance(workdir, str) and workdir):
            raise ConfigError(f"workdir={workdir!r}: expected a directory on the host (a str)")
        setup = tuple([setup_commands] if isinstance(setup_commands, str) else setup_commands or ())
        if not all(isinstance(c, str) and c.strip() for c in setup):
            raise ConfigError(
                f"setup_commands={setup_commands!r}: expected a list of shell commands (str)"
            )
        ssh = scheme == "fleche+ssh"
        if ssh and command is not None:
            raise ConfigError(
                f"{url!r}: command= is for fleche+exec://; ssh options go in ssh_options="
            )
        if not ssh and (ssh_config or identity_file or ssh_options):
            raise ConfigError(
                f"{url!r}: ssh_config=, identity_file= and ssh_options= need fleche+ssh://"
            )
        self._given_url = url
        # The URL says where; with no path, which configured cache (and from where) says
        # what: two caches on one host must not share a name (their index files would).
        self.url = url if path else _configured_url(url, cache_name, workdir)
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
            "cache_name": cache_name,
            "workdir": workdir,
            "setup_commands": setup,
        }
        self.options = {k: v for k, v in self.options.items() if v not in (None, ())}
        self._workdir = workdir
        self._setup_commands = setup
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
            cache_name,
            workdir,
            setup,
        )
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._down_until = 0.0
        self._down_error: RemoteError | None = None
        self._warned_skew = False
        if not lazy:
            self._conn = self._connect()

    def connect(self) -> None:
        """Start the server now if it is not running (``lazy=True`` waits for the first request).

        Raises what a first request would: :class:`RemoteError` (an ``OSError``)
        when the host, ssh, the setup or the server fails, and fails fast for
        ``retry_after`` seconds after that; the server's own errors (a
        ``ConfigError`` for a cache its fleche.toml does not name) as they are.
        """
        with self._lock:
            if self._conn is None or self._conn.pid != os.getpid():
                self._reconnect()

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

    def replace(self, oid: str, data: Data) -> None:
        """Rewrite object ``oid`` on the server (see ``ObjectStore.replace``)."""
        self._check_writable()
        value, _ = self._request(("replace", check_oid(oid)), as_parts(data))
        if value is not True:  # a miss: the server's store has no such object
            raise CacheMiss(f"object {oid} is not in the store at {self.url}")

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

    def read_ends(self, oid: str, n: int) -> tuple[bytes, bytes]:
        """The first and last ``n`` bytes of the object, from one fetch of the whole."""
        blob = self.get(oid)
        return blob[:n], blob[-n:]

    def delete(self, oid: str) -> None:
        check_oid(oid)
        self._check_writable()
        self._request(("delete", oid))

    def size(self, oid: str) -> int:
        value, _ = self._request(("size", check_oid(oid)))
        if value is None:
            raise CacheMiss(f"object {oid} is not in the store at {self.url}")
        if type(value) is not int or value < 0:
            raise self.malformed(value)
        return value

    def local_path(self, oid: str) -> str | None:
        """Always None: the object's file is on the remote host."""
        check_oid(oid)
        return None

    supports_packs = False  # the server reads its packs; packing runs where the store lives

    def read_loose(self, name: str, digest: str) -> bytes | None:
        try:
            return self.get(digest) if name == "" else self.find_call(name, digest)
        except CacheMiss:
            return None

    def delete_loose(self, name: str, digest: str) -> None:
        # The server's store decides: its delete removes a packed copy too.
        if name == "":
            self.delete(digest)
        else:
            self.delete_call(name, digest)

    def iter_oids(self, *, packed: bool = True) -> Iterator[str]:
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

    def iter_calls(
        self, function_id: str | None = None, *, packed: bool = True
    ) -> Iterator[tuple[str, str]]:
        if function_id is not None:
            check_function_id(function_id)
        # msgpack gives [fid, digest] lists; the store API promises tuples
        for name in self._iterate(("iter_calls", function_id)):
            if not (isinstance(name, list) and len(name) == 2):
                raise self.malformed(name)
            yield name[0], name[1]

    def iter_functions(self) -> Iterator[str]:
        return self._iterate(("iter_functions",))

    # -- leases (fleche.cache._lease): forwarded, so the server's create-only write decides ---------
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
        items, cursor = self._batch(self._request(head)[0])
        yield from items
        while cursor:
            items, cursor = self._batch(self._request(("next", cursor), retry=False)[0])
            yield from items

    def _batch(self, value: Any) -> tuple[list[Any], int]:
        """``[names, cursor]`` from a listing reply, checked."""
        if not (
            isinstance(value, list)
            and len(value) == 2
            and isinstance(value[0], list)
            and type(value[1]) is int
        ):
            raise self.malformed(value)
        return value[0], value[1]

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
        value = self._request(("info",))[0]
        if not isinstance(value, dict):
            raise self.malformed(value)
        return dict(value)

    def close(self) -> None:
        """End the session (the server exits); the next operation opens a new one."""
        with self._lock:
            self._drop()

    def __reduce__(self) -> tuple[Any, ...]:
        # To another process (an executor's worker): it opens its own connection.
        return _reopen, (self._given_url, self._asked_read_only, self.durable, self.options)


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

    @property
    def size(self) -> int:
        """The object's size, for ``codec.unframe_stream`` to check the stated length against."""
        return self._view.nbytes

    def readinto(self, b: Any) -> int:
        out = memoryview(b).cast("B")
        k = min(out.nbytes, self._view.nbytes - self._pos)
        out[:k] = self._view[self._pos : self._pos + k]
        self._pos += k
        return k


def _configured_url(url: str, cache_name: str | None, workdir: str | None) -> str:
    """``fleche+ssh://host`` plus the cache name and working directory that choose the store."""
    said = [f"cache {cache_name}"] if cache_name is not None else []
    said += [f"in {workdir}"] if workdir else []
    return f"{url} ({', '.join(said)})" if said else url


def _reopen(url: str, read_only: bool, durable: bool, options: dict[str, Any]) -> RemoteStore:
    return RemoteStore(url, read_only=read_only, durable=durable, **options)
