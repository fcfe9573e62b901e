"""The server of the SSH remote cache: ``fleche remote --serve PATH`` (or ``python -m fleche ...``).

A ``RemoteStore`` client starts this on the host that holds the store (over
``ssh``, or as a child process) and sends it store operations on stdin; the
replies go back on stdout. The client is :mod:`fleche.store._remote`,
the framing :mod:`fleche.store._wire`; this module is the loop that answers.

What it does and does not do:

- It serves one store (``open_store(PATH)``: a local directory, or any URL
  this host can open) for one client, for as long as stdin stays open. With
  no PATH (``--serve [--cache NAME]``, what ``SshCache`` starts), the store of
  the cache this host's fleche.toml names; none is a ConfigError in the
  hello, one line on stderr and exit status 2.
- Values are opaque bytes — frames the client's codec encoded. The server
  **never unpickles anything**: a client can make it store and return bytes,
  nothing more. (The original fleche's ``SshCache`` shipped cloudpickles,
  which the far end had to load.)
- ``--read-only`` opens the store read-only: writes are refused with
  ``ReadOnlyStoreError`` and the client learns it from the hello.
- stdout carries the protocol only: anything else that writes to stdout
  (a stray ``print``) is redirected to stderr before the first message.
- Large objects are sent from their file with ``os.sendfile`` (no copy
  through Python) when the store is on local disk.
"""

from __future__ import annotations

import errno
import io
import os
import socket
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import msgpack

from fleche._version import __version__
from fleche.cache import Cache, strict_open
from fleche.config import load_config, resolve
from fleche.errors import CacheMiss, ConfigError
from fleche.store import (
    ERROR,
    MAGIC,
    MISS,
    OK,
    PREFIX,
    PROTOCOL,
    BrokenStream,
    ObjectStore,
    RemoteProtocolError,
    error_names,
    open_file,
    open_store,
    read_message,
    write_message,
)

BATCH = 2000
"""Names per listing reply: the first batch rides on the request's reply, the rest on ``next``."""
MAX_CURSORS = 64  # listings a client may leave unfinished; the oldest are dropped
SENDFILE_MIN = 1 << 20  # objects from this size go out with os.sendfile
_BUFFER = 1 << 16


class _Server:
    """One client's session: the store, its open listings, and the operations by name."""

    def __init__(self, store: ObjectStore, out: io.BufferedWriter) -> None:
        self.store = store
        self.out = out
        self.cursors: OrderedDict[int, Iterator[Any]] = OrderedDict()
        self.next_cursor = 1
        s = store
        self.ops: dict[str, Callable[..., Any]] = {
            "put": lambda oid, body: s.put(body, oid=oid),
            "replace": self.replace,
            "get": self.get,
            "exists": lambda oid, body: s.exists(oid),
            "delete": lambda oid, body: s.delete(oid),
            "size": lambda oid, body: s.size(oid),
            "put_call": lambda fid, digest, body: s.put_call(fid, digest, body),
            "get_call": lambda fid, digest, body: _Body(s.get_call(fid, digest)),
            "has_call": lambda fid, digest, body: s.has_call(fid, digest),
            "delete_call": lambda fid, digest, body: s.delete_call(fid, digest),
            "iter_oids": lambda body: self.listing(s.iter_oids()),
            "iter_calls": lambda fid, body: self.listing(s.iter_calls(fid)),
            "iter_functions": lambda body: self.listing(s.iter_functions()),
            "next": self.next,
            "quarantine": lambda oid, fid, digest, body: s.quarantine(
                oid, **({} if oid is not None else {"function_id": fid, "digest": digest})
            ),
            "info": lambda body: s.info(),
            # leases (fleche.cache._lease): this store's create-only write decides who computes
            "acquire_lease": lambda fid, digest, body: s.acquire_lease(fid, digest, bytes(body)),
            "read_lease": self.read_lease,
            "renew_lease": lambda fid, digest, body: s.renew_lease(fid, digest, bytes(body)),
            "release_lease": lambda fid, digest, body: s.release_lease(fid, digest),
        }

    # -- operations that need more than one line ------------------------------------------

    def replace(self, oid: str, body: Any) -> bool:
        """Rewrite an existing object; True (a miss, when it is not there, says so)."""
        self.store.replace(oid, body)
        return True

    def get(self, oid: str, body: Any) -> Any:
        """An object: from its file when on local disk (one open; sendfile when large)."""
        path = self.store.local_path(oid)
        if path is None:
            return _Body(self.store.get(oid))
        try:
            fd, st = open_file(path)  # a directory, fifo or link there: NotAFileError
        except FileNotFoundError:
            return _Body(self.store.get(oid))  # packed, or a miss (CacheMiss)
        try:
            size = st.st_size
            if size >= SENDFILE_MIN and hasattr(os, "sendfile"):
                self.send_file(fd, size)
                return _SENT
            if size >= SENDFILE_MIN:
                return _Body(self.store.get(oid))
            parts, got = [], 0
            while got < size and (chunk := os.pread(fd, size - got, got)):
                parts.append(chunk)
                got += len(chunk)
            return _Body(parts[0] if len(parts) == 1 else b"".join(parts))
        finally:
            os.close(fd)

    def read_lease(self, fid: str, digest: str, body: Any) -> Any:
        data = self.store.read_lease(fid, digest)
        if data is None:
            raise CacheMiss(f"no lease on {fid}/{digest}")  # answered as a miss
        return _Body(data)

    def send_file(self, fd: int, size: int) -> None:
        """Reply with the file's bytes as the body, kernel to pipe (objects are immutable)."""
        head = msgpack.packb([OK, None])
        self.out.write(PREFIX.pack(len(head), size))
        self.out.write(head)
        self.out.flush()
        out_fd, sent = self.out.fileno(), 0
        while sent < size:
            try:
                n = os.sendfile(out_fd, fd, sent, size - sent)
            except OSError as e:
                if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise BrokenStream(f"sending object: {e}") from None
                n = len(chunk := os.pread(fd, min(size - sent, 1 << 20), sent))
                self.out.write(chunk)
                self.out.flush()
            if n == 0:  # the body length is promised: the session cannot go on
                raise BrokenStream(
                    f"an object file shrank while being sent ({sent} of {size} bytes)"
                )
            sent += n

    def listing(self, names: Iterator[Any]) -> list[Any]:
        cursor = self.next_cursor
        self.next_cursor += 1
        self.cursors[cursor] = names
        while len(self.cursors) > MAX_CURSORS:
            self.cursors.popitem(last=False)
        return self.next(cursor, None)

    def next(self, cursor: int, body: Any) -> list[Any]:
        names = self.cursors.get(cursor)
        if names is None:
            raise RemoteProtocolError(
                f"listing {cursor} is unknown or expired (more than {MAX_CURSORS} left open)"
            )
        batch = []
        for name in names:
            batch.append(name)
            if len(batch) >= BATCH:
                self.cursors.move_to_end(cursor)
                return [batch, cursor]
        del self.cursors[cursor]
        return [batch, 0]


class _Body:
    """A reply whose value travels as the message body (bytes, not msgpack)."""

    __slots__ = ("data",)

    def __init__(self, data: Any) -> None:
        self.data = data


_SENT = object()  # the operation wrote its reply itself


def _protocol_streams() -> tuple[io.BufferedReader, io.BufferedWriter]:
    """Own fds 0 and 1, and point fd 1 at stderr so nothing else can write into the protocol."""
    out_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    reader = open(0, "rb", buffering=_BUFFER, closefd=False)
    writer = open(out_fd, "wb", buffering=_BUFFER)
    return reader, writer  # type: ignore[return-value]


def _hello_reply(
    store: ObjectStore | None, error: BaseException | None, served: str | None = None
) -> dict[str, Any]:
    hello: dict[str, Any] = {
        "protocol": list(PROTOCOL),
        "fleche": __version__,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "python": sys.version.split()[0],
    }
    if error is not None:
        hello["error"] = [error_names(error), str(error)]
    if store is not None:
        hello["read_only"] = store.read_only
        hello["root"] = store.root
        hello["url"] = store.url
    if served is not None:  # --serve with no path: the cache of fleche.toml (or FLECHE_CACHE)
        hello["cache"] = served
    return hello


class _NoServedCache(ConfigError):
    """The configuration names no cache to serve (or one that cannot be served over the wire)."""


def _configured_store(
    cache_name: str | None, read_only: bool, durable: bool
) -> tuple[ObjectStore, str]:
    """The store of the cache this host's fleche.toml names (``cache_name``, else its default), and that name.

    Found from the working directory upward, as any fleche program here would
    (so an ``SshCache``'s ``workdir=`` chooses the project), then the user's
    file; ``FLECHE_CACHE`` names the default when set. A layered cache has no
    single store to serve: the error says to name one of its layers' caches.
    """
    where = f"on {socket.gethostname()}, in {os.getcwd()}"
    if cache_name is None and os.environ.get("FLECHE_CACHE"):
        spec = os.environ["FLECHE_CACHE"]
        with strict_open():
            opened = resolve(spec)
    else:
        cfg = load_config()
        files = ", ".join(map(str, cfg.files))
        if not cfg.files:
            raise _NoServedCache(
                f"no fleche.toml found {where} (nor in the user config dir), so there is no "
                "cache to serve: pass workdir= the project directory that has one, or create "
                "one there (fleche init)"
            )
        cache = cache_name if cache_name is not None else cfg.default
        if cache is None:
            raise _NoServedCache(
                f"{files} ({where}) names no default cache and no cache_name= was given: "
                f"pass cache_name= one of {sorted(cfg.caches)}, or set default = NAME there"
            )
        if cache not in cfg.caches:
            raise _NoServedCache(
                f"no cache named {cache!r} in {files} ({where}); known: {sorted(cfg.caches)}: "
                "pass cache_name= one of them"
            )
        with strict_open():
            opened = cfg.cache(cache)
        spec = cache
    if not isinstance(opened, Cache):
        raise _NoServedCache(
            f"cache {spec!r} ({where}) is layered, and a remote cache serves one store: pass "
            "cache_name= a single cache (one of its layers, defined as a cache of its own)"
        )
    store = opened.store
    # Both are read at each write: the client's (or --read-only's) refusal, and --durable.
    store.read_only = store.read_only or read_only
    store.durable = store.durable or durable
    return store, spec


def serve(
    path: str | None,
    *,
    cache_name: str | None = None,
    read_only: bool = False,
    durable: bool = False,
    streams: tuple[io.BufferedReader, io.BufferedWriter] | None = None,
) -> int:
    """Answer one client on stdin/stdout (or ``streams``) until it hangs up; the exit status.

    The client speaks first (its hello); the reply is ``MAGIC`` and our hello,
    with an ``error`` instead of a session when the store cannot be opened or
    the protocol majors differ. Then one reply per request, in order.

    ``path`` None: serve the cache this host's fleche.toml names (``cache_name``,
    else its default; see :func:`_configured_store`). When there is none, the
    hello carries the ConfigError, one line says it on stderr, and the exit
    status is 2.
    """
    reader, out = streams if streams is not None else _protocol_streams()
    try:
        first = read_message(reader)
    except BrokenStream as e:
        print(f"fleche remote: no hello from the client ({e})", file=sys.stderr)
        return 2
    if first is None:
        return 0
    head, _ = first
    client = head[1] if isinstance(head, list) and len(head) == 2 and head[0] == "hello" else None
    store: ObjectStore | None = None
    served: str | None = None
    error: BaseException | None = None
    if not isinstance(client, dict):
        error = RemoteProtocolError(f"expected a hello from the client, got {head!r}")
    elif not (isinstance(client.get("protocol"), list) and client["protocol"][:1] == [PROTOCOL[0]]):
        error = RemoteProtocolError(
            f"the client (fleche {client.get('fleche')}) speaks protocol {client.get('protocol')}; "
            f"this server (fleche {__version__}) speaks {PROTOCOL[0]}.x: install the same fleche "
            "on both sides"
        )
    else:
        ro = read_only or bool(client.get("read_only"))
        try:
            if path is None:
                store, served = _configured_store(cache_name, ro, durable)
            else:
                target = path if "://" in path else os.path.expanduser(path)
                store = open_store(target, read_only=ro, durable=durable)
        except Exception as e:  # noqa: BLE001 - reported to the client, which raises it
            error = e
    try:
        out.write(MAGIC)
        write_message(out, _hello_reply(store, error, served))
    except (BrokenPipeError, ConnectionResetError):
        if store is not None:
            store.close()
            return 0
    if store is None:
        if isinstance(error, ConfigError) and path is None:
            print(f"fleche remote: {' '.join(str(error).split())}", file=sys.stderr)
            return 2
        return 1
    server = _Server(store, out)
    try:
        return _loop(server, reader)
    except (BrokenPipeError, ConnectionResetError):
        return 0  # the client went away mid-reply: nobody is left to tell
    finally:
        store.close()
        try:
            out.close()
        except OSError:
            pass


def _loop(server: _Server, reader: io.BufferedReader) -> int:
    out = server.out
    while True:
        try:
            message = read_message(reader)
        except BrokenStream as e:
            print(f"fleche remote: the client's stream broke ({e})", file=sys.stderr)
            return 2
        if message is None:
            return 0  # the client hung up: the normal end of a session
        head, body = message
        try:
            op = server.ops.get(head[0]) if isinstance(head, list) and head else None
            if op is None:
                raise RemoteProtocolError(f"unknown request {head!r:.200}")
            result = op(*head[1:], body)
        except BrokenStream as e:  # a reply broke off half-written: the stream is out of step
            print(f"fleche remote: {e}", file=sys.stderr)
            return 2
        except CacheMiss:
            write_message(out, [MISS])
        except Exception as e:  # noqa: BLE001 - every failure goes back to the client
            write_message(out, [ERROR, error_names(e), str(e)])
        else:
            if result is _SENT:
                continue
            if isinstance(result, _Body):
                write_message(out, [OK, None], (result.data,))
            else:
                write_message(out, [OK, result])
