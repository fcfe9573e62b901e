"""SFTP requests sent without waiting for each reply, and the file transfers built on them.

paramiko's file objects wait for each 32 KiB request: a 10 MiB write through
``fs.pipe_file`` took 9.6 s here, 25 ms pipelined. :class:`_Replies` sends
requests back to back over one SFTP session and collects the replies by
number; :func:`_read_file`, :func:`_write_file` and :class:`_Reader` keep up to
``_WINDOW`` requests in flight, in chunks up to the server's limits. A failure
status from the server raises ``FileNotFoundError``, ``PermissionError``,
``EOFError`` or :class:`_Failure` (the connection itself is fine). Used by
:mod:`fleche.store._ssh` (the server's limits) and :mod:`fleche.store._sftp`.
"""

from __future__ import annotations

import errno
import io
import sys
from collections import deque
from collections.abc import Iterable
from contextlib import suppress
from typing import TYPE_CHECKING, Any

import paramiko
from paramiko.sftp import (
    CMD_CLOSE,
    CMD_DATA,
    CMD_EXTENDED,
    CMD_FSTAT,
    CMD_OPEN,
    CMD_READ,
    CMD_REMOVE,
    CMD_STATUS,
    CMD_WRITE,
    SFTP_EOF,
    SFTP_FLAG_CREATE,
    SFTP_FLAG_EXCL,
    SFTP_FLAG_READ,
    SFTP_FLAG_WRITE,
    SFTP_NO_SUCH_FILE,
    SFTP_OK,
    SFTP_OP_UNSUPPORTED,
    SFTP_PERMISSION_DENIED,
    int64,
)
from paramiko.sftp_attr import SFTPAttributes

from fleche.errors import ConfigError
from fleche.store._base import BytesLike

if TYPE_CHECKING:
    from fleche.store._sftp import SFTPStore

_WINDOW = 64  # requests in flight per transfer, like OpenSSH's sftp client


class _Failure(OSError):
    """A failure status from the SFTP server (the connection itself is fine)."""


class _Unsupported(_Failure):
    """The server does not implement the request (e.g. an OpenSSH extension)."""


# -- SFTP requests without waiting ---------------------------------------------------------------


class _Replies:
    """Send requests without waiting and collect their replies by number.

    paramiko delivers a reply to the object registered with its request by
    calling ``_async_response`` (the hook its own prefetching uses), so many
    requests can be in flight on one channel. Uses ``SFTPClient._async_request``
    and ``_read_response``, stable since paramiko 1.x.
    """

    __slots__ = ("__weakref__", "got", "sftp")  # paramiko holds the pending ones weakly

    def __init__(self, sftp: paramiko.SFTPClient) -> None:
        self.sftp = sftp
        self.got: dict[int, tuple[int, paramiko.Message]] = {}

    def _async_response(self, t: int, msg: paramiko.Message, num: int) -> None:
        self.got[num] = (t, msg)

    def send(self, t: int, *args: Any) -> int:
        num: int = self.sftp._async_request(self, t, *args)
        return num

    def wait(self, num: int, path: str) -> tuple[int, paramiko.Message]:
        """The reply to request ``num``; a failure status raises (EOF as ``EOFError``)."""
        while num not in self.got:
            self.sftp._read_response()
        t, msg = self.got.pop(num)
        if t == CMD_STATUS:
            _raise_status(msg, path)
        return t, msg

    def call(self, path: str, t: int, *args: Any) -> tuple[int, paramiko.Message]:
        return self.wait(self.send(t, *args), path)

    def send_quietly(self, t: int, *args: Any) -> None:
        """Send a request whose reply nobody waits for (paramiko drops it when it arrives)."""
        with suppress(OSError, EOFError, paramiko.SSHException):
            self.sftp._async_request(type(None), t, *args)


def _raise_status(msg: paramiko.Message, path: str) -> None:
    code, text = msg.get_int(), msg.get_text()
    if code == SFTP_OK:
        return
    if code == SFTP_EOF:
        raise EOFError(path)
    if code == SFTP_NO_SUCH_FILE:
        raise FileNotFoundError(errno.ENOENT, text, path)
    if code == SFTP_PERMISSION_DENIED:
        raise PermissionError(errno.EACCES, text, path)
    if code == SFTP_OP_UNSUPPORTED:
        raise _Unsupported(f"{text}: {path}")
    raise _Failure(f"{text}: {path}")


# -- pipelined transfers --------------------------------------------------------------------


def _remove_quietly(r: _Replies, path: str) -> None:
    """Remove a leftover tmp file, waiting for the answer; failures leave it to ``fleche gc``."""
    with suppress(OSError, EOFError, paramiko.SSHException):
        r.call(path, CMD_REMOVE, path)


def _data(r: _Replies, num: int, path: str) -> bytes:
    try:
        t, msg = r.wait(num, path)
    except EOFError:
        return b""
    if t != CMD_DATA:
        raise _Failure(f"the server answered a read with message type {t}: {path}")
    data: bytes = msg.get_string()
    return data


def _read_file(r: _Replies, path: str, chunk: int) -> bytes | bytearray:
    """The whole file: open, then fstat and the first read together, the rest pipelined."""
    _, msg = r.call(path, CMD_OPEN, path, SFTP_FLAG_READ, SFTPAttributes())
    handle = msg.get_binary()
    try:
        n_stat = r.send(CMD_FSTAT, handle)
        n_first = r.send(CMD_READ, handle, int64(0), chunk)
        size = SFTPAttributes._from_msg(r.wait(n_stat, path)[1]).st_size
        first = _data(r, n_first, path)
        if size is None:  # the server did not say: read until EOF
            parts = [first]
            while parts[-1]:
                parts.append(
                    _data(r, r.send(CMD_READ, handle, int64(sum(map(len, parts))), chunk), path)
                )
            return b"".join(parts)
        if len(first) >= size:
            return first
        buf = bytearray(size)
        buf[: len(first)] = first
        # (request, offset, length), in the order the server answers
        pending: deque[tuple[int, int, int]] = deque()
        offset = len(first)
        while pending or offset < size:
            while offset < size and len(pending) < _WINDOW:
                n = min(chunk, size - offset)
                pending.append((r.send(CMD_READ, handle, int64(offset), n), offset, n))
                offset += n
            num, at, n = pending.popleft()
            data = _data(r, num, path)
            if not data:  # EOF before the size fstat gave: the codec reports a truncated file
                return bytes(buf[:at])
            buf[at : at + len(data)] = data
            if len(data) < n:  # a short read is allowed: ask for the rest
                rest = (at + len(data), n - len(data))
                pending.append((r.send(CMD_READ, handle, int64(rest[0]), rest[1]), *rest))
        return buf
    finally:
        r.send_quietly(CMD_CLOSE, handle)


def _write_file(
    r: _Replies, path: str, parts: Iterable[BytesLike], chunk: int, *, fsync: bool
) -> None:
    """Create ``path`` (it must not exist) holding ``parts``; returns once the server has closed it.

    Writes are sent back to back and the close right behind them, so a small
    file costs two round trips and a large one streams at the link's speed.
    """
    _, msg = r.call(
        path, CMD_OPEN, path, SFTP_FLAG_WRITE | SFTP_FLAG_CREATE | SFTP_FLAG_EXCL, SFTPAttributes()
    )
    handle = msg.get_binary()
    pending: deque[int] = deque()
    fsync_request = -1
    try:
        offset = 0
        for part in parts:
            view = memoryview(part).cast("B")  # slices of a view are not copies
            for start in range(0, len(view), chunk):
                if len(pending) >= _WINDOW:
                    r.wait(pending.popleft(), path)
                piece = view[start : start + chunk]
                pending.append(r.send(CMD_WRITE, handle, int64(offset), piece))
                offset += len(piece)
        if fsync:
            fsync_request = r.send(CMD_EXTENDED, "fsync@openssh.com", handle)
            pending.append(fsync_request)
    except BaseException:
        r.send_quietly(CMD_CLOSE, handle)
        raise
    pending.append(r.send(CMD_CLOSE, handle))
    for num in pending:
        try:
            r.wait(num, path)
        except _Unsupported as e:
            if num != fsync_request:
                raise
            raise ConfigError(
                f"the SSH server does not support fsync@openssh.com ({e}), which durable=True "
                "needs: open the store with durable=False"
            ) from e


class _Reader(io.RawIOBase):
    """A file of the store read with up to ``_WINDOW`` requests in flight: bounded memory.

    Holds one pooled session while open (close it: use it as a context manager).
    """

    def __init__(self, store: SFTPStore, path: str) -> None:
        super().__init__()
        self._store, self._path = store, path
        self._session = store._session(path, "read")
        r = self._session.__enter__()
        try:
            _, msg = r.call(path, CMD_OPEN, path, SFTP_FLAG_READ, SFTPAttributes())
            self._handle = msg.get_binary()
        except BaseException:
            self._session.__exit__(*sys.exc_info())
            raise
        self._r = r
        self._chunk = store.fs.read_chunk
        self._pending: deque[tuple[int, int, int]] = deque()  # (request, offset, length)
        self._next = 0  # the next offset to ask for
        self._left = memoryview(b"")  # received, not yet handed out
        self._eof = False
        self._size: int | None = None

    def readable(self) -> bool:
        return True

    @property
    def size(self) -> int | None:
        """The file's size (one FSTAT, asked once): a frame's stated length is checked
        against it before its buffer is allocated. None when the server does not say."""
        if self._size is None:
            with self._store._errors(self._store.fs, self._path, "read"):
                _, msg = self._r.call(self._path, CMD_FSTAT, self._handle)
            self._size = SFTPAttributes._from_msg(msg).st_size
        return self._size

    def readinto(self, b: Any) -> int:
        out = memoryview(b).cast("B")
        with self._store._errors(self._store.fs, self._path, "read"):
            while not self._left and not self._eof:
                while not self._eof and len(self._pending) < _WINDOW:
                    n = self._chunk
                    self._pending.append(
                        (self._r.send(CMD_READ, self._handle, int64(self._next), n), self._next, n)
                    )
                    self._next += n
                num, at, n = self._pending.popleft()
                data = _data(self._r, num, self._path)
                if not data:  # end of file: the requests after it answer EOF too
                    self._eof = True
                    break
                if len(data) < n:  # a short read: ask for the rest before anything later
                    rest = (at + len(data), n - len(data))
                    self._pending.appendleft(
                        (self._r.send(CMD_READ, self._handle, int64(rest[0]), rest[1]), *rest)
                    )
                self._left = memoryview(data)
        k = min(out.nbytes, self._left.nbytes)
        out[:k] = self._left[:k]
        self._left = self._left[k:]
        return k

    def close(self) -> None:
        if not self.closed:
            try:
                for num, _, _ in self._pending:  # drain, so the session is clean for reuse
                    with suppress(OSError, EOFError, _Failure):
                        self._r.wait(num, self._path)
                self._r.send_quietly(CMD_CLOSE, self._handle)
            finally:
                self._pending.clear()
                self._session.__exit__(None, None, None)
        super().close()
