"""The remote cache's wire: message framing, errors that cross it, and one connection.

Shared by the client (:mod:`fleche.store._remote`) and the server
(:mod:`fleche.remote`). Protocol 1.0; the framing and the ``hello`` are frozen
so that any two versions can at least tell each other apart. Every message is::

    u32 head length, u64 body length (little-endian)
    head: msgpack   request [op, *args]
                    reply   [0, value] ok | [1] miss | [2, [type names], message] error
    body: raw bytes (a value or record on its way in or out; empty for most messages)

Values travel as the store's bytes — frames the codec already encoded —
outside the msgpack head: a 64 MiB object is written to the pipe part by part,
never joined, never re-encoded, and the server never unpickles anything.

A session: the client sends ``["hello", {protocol, fleche, read_only}]``; the
server answers ``MAGIC`` then ``{protocol, fleche, read_only, root, host, pid,
python}`` (or ``{..., error}`` when it refuses), then one reply per request, in
order. Bytes before ``MAGIC`` (a login shell's banner) are skipped.
"""

from __future__ import annotations

import io
import os
import select
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from typing import Any

import msgpack

from fleche.errors import (
    CacheMiss,
    ConfigError,
    CorruptObjectError,
    FlecheError,
    NotAFileError,
    ReadOnlyStoreError,
    StoreFormatError,
    StoreLinkError,
)
from fleche.store._base import writable_buffer

PROTOCOL = (1, 1)
"""(major, minor): a different major is refused; a newer minor only adds operations.

1.1 added the lease operations (``acquire_lease``, ``read_lease``, ``renew_lease``,
``release_lease``); a 1.0 server answers them "unknown request" and single-flight
functions then compute without a lease.
"""

MAGIC = b"\x00fleche-remote\x00"
"""Precedes the server's hello, so output of a chatty login shell before it is skipped."""

PREFIX = struct.Struct("<IQ")  # head length, body length
MAX_HEAD = 64 << 20  # a larger head means the stream is not ours (or is out of step)
MAX_BODY = 1 << 48
"""A larger body means the stream is not ours: no object is that large (``codec.MAX_LENGTH``)."""
OK, MISS, ERROR = 0, 1, 2
_LARGE_BODY = 4 << 20  # from here a body is read into a writable huge-page buffer
_READ_STEP = 1 << 20  # smaller bodies and heads are read (and allocated) this much at a time
_BUFFER = 1 << 16


class RemoteError(FlecheError, ConnectionError):
    """The remote cache cannot be reached or used: no ssh, no fleche there, a lost connection.

    A ``ConnectionError`` (so an ``OSError``): the decorator treats it like any
    storage fault and fails open — it computes, warns once and carries on.
    """


class RemoteProtocolError(RemoteError):
    """The two ends speak incompatible protocol versions (or the stream is not fleche's)."""


class BrokenStream(Exception):
    """The stream broke mid-exchange (EOF, broken pipe, garbage): the session is over.

    Internal: the client reconnects (once) and raises ``RemoteError`` if that
    does not help; the server ends the session.
    """


# -- framing (shared with the server in fleche.remote) -------------------------------------


def nbytes(part: Any) -> int:
    return len(part) if isinstance(part, bytes) else memoryview(part).nbytes


def write_message(out: io.BufferedWriter, head: Any, parts: Iterable[Any] = ()) -> None:
    """Send one message: prefix, msgpack ``head``, then ``parts`` back to back (never joined).

    ``parts`` is iterated twice (sizes, then bytes): a sequence, or a re-iterable like a spool.
    """
    packed = msgpack.packb(head, use_bin_type=True)
    out.write(PREFIX.pack(len(packed), sum(nbytes(p) for p in parts)))
    out.write(packed)
    for part in parts:
        out.write(part)  # a write larger than the buffer goes straight to the pipe
    out.flush()


def _read_exact(src: io.BufferedReader, n: int) -> bytes:
    """``n`` bytes, read (and allocated) a step at a time: a length the stream states
    costs memory only as its bytes arrive."""
    parts, got = [], 0
    while got < n:
        data = src.read(min(n - got, _READ_STEP))
        if not data:
            raise BrokenStream(f"the stream ended {n - got} bytes short of a message")
        parts.append(data)
        got += len(data)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _read_body(src: io.BufferedReader, n: int) -> Any:
    if n < _LARGE_BODY:
        return _read_exact(src, n) if n else b""
    if n > MAX_BODY:
        raise BrokenStream(f"a {n:,}-byte message body: the stream is damaged or not fleche's")
    # Like LocalStore: a writable buffer, so arrays unpickled from it without a copy are
    # writable. An anonymous mapping: its pages cost memory only as the bytes arrive.
    try:
        buf = writable_buffer(n)
    except (MemoryError, OverflowError, OSError, ValueError) as e:
        raise BrokenStream(f"cannot hold a {n:,}-byte message body here ({e})") from None
    view, got = memoryview(buf), 0
    while got < n:
        k = src.readinto(view[got:])
        if not k:
            raise BrokenStream(f"the stream ended {n - got} bytes short of a {n}-byte value")
        got += k
    return view


def read_message(src: io.BufferedReader) -> tuple[Any, Any] | None:
    """One message as ``(head, body)``; None at a clean end of stream (between messages)."""
    prefix = src.read(PREFIX.size)
    if not prefix:
        return None
    if len(prefix) < PREFIX.size:
        raise BrokenStream("the stream ended inside a message prefix")
    head_len, body_len = PREFIX.unpack(prefix)
    if head_len > MAX_HEAD:
        raise BrokenStream(
            f"a {head_len}-byte message head: the stream is not a fleche protocol stream"
        )
    try:
        head = msgpack.unpackb(_read_exact(src, head_len), raw=False, use_list=True)
    except (ValueError, TypeError, msgpack.UnpackException) as e:  # TypeError: a list as a key
        raise BrokenStream(f"undecodable message head ({e})") from None
    return head, _read_body(src, body_len)


def error_names(exc: BaseException) -> list[str]:
    """Class names from ``exc``'s type up its MRO: the receiver maps the first it knows."""
    return [c.__name__ for c in type(exc).__mro__ if c not in (object, BaseException, Exception)]


_ERRORS: dict[str, type[BaseException]] = {
    c.__name__: c
    for c in (
        RemoteProtocolError,
        RemoteError,
        CacheMiss,
        ReadOnlyStoreError,
        StoreFormatError,
        NotAFileError,
        CorruptObjectError,
        StoreLinkError,
        ConfigError,
        FlecheError,
        FileNotFoundError,
        FileExistsError,
        IsADirectoryError,
        NotADirectoryError,
        PermissionError,
        TimeoutError,
        ConnectionError,
        OSError,
        ValueError,
        TypeError,
        KeyError,
    )
}


def remote_exception(names: Any, message: str) -> BaseException:
    """Rebuild a server-side error as the most specific class known here (else RemoteError).

    ``names`` come from the other end: anything but a list of str names nothing known.
    """
    names = [n for n in names if isinstance(n, str)] if isinstance(names, list) else []
    for name in names:
        cls = _ERRORS.get(name)
        if cls is not None:
            return cls(message)
    return RemoteError(f"{names[0] if names else 'error'}: {message}")


# -- one connection ------------------------------------------------------------------------


def stderr_tail(f: Any, limit: int = 4000) -> str:
    """The end of the child's stderr (a temporary file), for error messages."""
    try:
        f.flush()
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - limit))
        tail: str = f.read().decode(errors="replace").strip()
        return tail
    except (OSError, ValueError):  # closed already
        return ""


class Connection:
    """A running server process and its framed pipes; used under one lock (RemoteStore's)."""

    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        # stderr goes to a file, not a pipe: nobody has to drain it, and it is
        # there to read when the process dies and its last words explain why.
        self.stderr = tempfile.TemporaryFile(prefix="fleche-remote-")
        # A session of its own: Ctrl-C in the terminal interrupts the caller,
        # not the connection (the caller's KeyboardInterrupt drops it cleanly).
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            bufsize=0,
            start_new_session=True,
        )
        self.pid = os.getpid()  # a forked child must not write into its parent's pipes
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.writer: io.BufferedWriter = io.BufferedWriter(self.proc.stdin, _BUFFER)
        self.reader: io.BufferedReader | None = None
        self.finalizer: Any = None

    def hello(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send our hello and read the server's, skipping anything printed before MAGIC."""
        try:
            write_message(self.writer, ["hello", request])
        except OSError as e:
            raise BrokenStream(f"cannot write to the server ({e})") from None
        raw = self.proc.stdout
        assert raw is not None
        fd = raw.fileno()
        buf = bytearray()
        deadline = time.monotonic() + timeout
        while True:
            start = buf.find(MAGIC)
            if start >= 0:
                at = start + len(MAGIC)
                if len(buf) >= at + PREFIX.size:
                    head_len, body_len = PREFIX.unpack_from(buf, at)
                    end = at + PREFIX.size + head_len + body_len
                    if head_len > MAX_HEAD or body_len > MAX_HEAD:  # a hello has no body
                        raise BrokenStream("the server's hello is not a fleche message")
                    if len(buf) >= end:
                        if len(buf) > end:  # nothing may follow the hello before a request
                            raise BrokenStream("unexpected bytes after the server's hello")
                        break
            elif len(buf) > 1 << 20:
                raise BrokenStream(
                    f"1 MiB of output and no fleche server hello: {bytes(buf[:200])!r}"
                )
            if sys.platform != "win32":  # select() does not take pipes on Windows
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                    raise TimeoutError(f"no answer within {timeout:g} s")
            chunk = os.read(fd, _BUFFER)
            if not chunk:
                raise BrokenStream("the server exited before answering")
            buf += chunk
        head_start = at + PREFIX.size
        try:
            hello = msgpack.unpackb(bytes(buf[head_start : head_start + head_len]), raw=False)
        except (ValueError, msgpack.UnpackException) as e:
            raise BrokenStream(f"undecodable hello ({e})") from None
        if not isinstance(hello, dict):
            raise BrokenStream(f"a malformed hello: {hello!r}")
        self.reader = io.BufferedReader(raw, _BUFFER)  # type: ignore[arg-type]
        return hello

    def exchange(self, head: Any, parts: Iterable[Any]) -> tuple[Any, Any]:
        """One request, one reply; any fault of the transport becomes ``BrokenStream``."""
        assert self.reader is not None
        try:
            write_message(self.writer, head, parts)
            reply = read_message(self.reader)
        except OSError as e:  # EPIPE when the process is gone, EBADF once closed
            raise BrokenStream(str(e)) from None
        if reply is None:
            raise BrokenStream("the server closed the connection")
        return reply

    def close(self, wait: float = 2.0, *, keep_stderr: bool = False) -> None:
        """End the session: EOF on the server's stdin lets it exit; kill it if it does not."""
        if self.pid != os.getpid():  # inherited over fork: the parent still uses this process
            return
        for stream in (self.writer, self.reader, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:  # broken pipe while flushing: the process is gone anyway
                pass
        try:
            self.proc.wait(wait)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if not keep_stderr:
            self.stderr.close()
