"""The SFTP store: a store in a directory on any SSH server, over paramiko.

``open_store("sftp://user@host:port/abs/path")`` (or ``ssh://``; ``/~/path``
for a path under the login directory) gives an :class:`SFTPStore` whose
``fs`` is a :class:`~fleche.store._ssh.SSHFileSystem`, a subclass of fsspec's
``SFTPFileSystem`` (the connection, ssh_config, host keys and the pool of
sessions live in ``store_ssh``, the pipelined requests and transfers in
``store_sftp_pipeline``). What the store does differently from the
generic ``ObjectStore``, and why:

- **Atomic writes.** fsspec's SFTP ``pipe_file`` streams into the final name.
  Here every file is written to ``tmp/<random>`` and renamed: objects with
  the plain SFTP rename, which refuses an existing target (OpenSSH links,
  then unlinks), so an object is never rewritten; call records with
  OpenSSH's ``posix-rename@openssh.com``, which replaces atomically (other
  servers: remove, then rename; a reader may see a miss, never a partial
  file). ``durable=True`` adds ``fsync@openssh.com`` before the rename.
- **Pipelined requests.** paramiko's file objects wait for each 32 KiB
  request: a 10 MiB write through ``fs.pipe_file`` took 9.6 s here, 25 ms
  pipelined. The store sends requests back to back and collects the replies
  afterwards, in chunks up to the server's limits (255 KiB on OpenSSH, from
  ``limits@openssh.com``). A small hit is two round trips (open; then fstat
  and read together; the close is not waited for), a record write three
  (open; write and close; rename), a miss one.
- **Errors.** Not found is a miss and nothing else is. A missing store
  directory is created, as a local store's is: at the first write (at once
  with ``create=True``); opened read-only, it is a ``ConfigError`` (nothing
  could ever be read there: a typo). Connection, login, host-key and
  permission failures raise :class:`~fleche.store._ssh.SSHError` subclasses
  naming the URL.
"""

from __future__ import annotations

import io
import posixpath
import secrets
import stat
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import unquote, urlsplit

import paramiko
from paramiko.sftp import (
    CMD_EXTENDED,
    CMD_LSTAT,
    CMD_MKDIR,
    CMD_READLINK,
    CMD_REALPATH,
    CMD_REMOVE,
    CMD_RENAME,
    CMD_STAT,
)
from paramiko.sftp_attr import SFTPAttributes

from fleche.errors import ConfigError, FlecheError
from fleche.store._base import (
    HEX_DIGITS,
    LAYOUT,
    BytesLike,
    ObjectStore,
    ReadableFile,
    describe_mode,
    is_oid,
    link_error,
    not_a_file,
)
from fleche.store._sftp_pipeline import (
    _Failure,
    _read_file,
    _Reader,
    _remove_quietly,
    _Replies,
    _Unsupported,
    _write_file,
)
from fleche.store._ssh import (
    SSHConnectionError,
    SSHError,
    SSHFileSystem,
    SSHPermissionError,
)

STAT_FIRST = 1 << 18
"""Values larger than this are stat'ed before upload, so an existing one is not sent again (bytes)."""

_POSIX_RENAME = "posix-rename@openssh.com"


# -- the store ------------------------------------------------------------------------------


def _parse_url(url: str) -> tuple[str, str | None, int | None, str, str]:
    """``(host, user, port, path, display url)`` of ``sftp://[user@]host[:port]/path``."""
    parts = urlsplit(url)
    if parts.scheme not in ("sftp", "ssh"):
        raise ConfigError(f"{url!r} is not an sftp:// or ssh:// URL")
    if parts.password is not None:
        raise ConfigError(
            f"{parts.scheme}:// URL with a password: pass password= instead "
            "(URLs end up in logs and error messages), or better, use a key"
        )
    try:
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"invalid port in {url!r}: {e}") from e
    host = parts.hostname
    path = unquote(parts.path)
    if not host or path.strip("/") in ("", "."):
        raise ConfigError(
            f"{url!r} names no host or no directory: expected "
            f"{parts.scheme}://[user@]host[:port]/absolute/path (or /~/path, under the home directory)"
        )
    path = posixpath.normpath(path)
    user = unquote(parts.username) if parts.username else None
    return host, user, port, path, f"{parts.scheme}://{parts.netloc}{path}"


def _nbytes(parts: Sequence[BytesLike]) -> int:
    return sum(len(p) if isinstance(p, bytes) else memoryview(p).nbytes for p in parts)


class SFTPStore(ObjectStore):
    """A store in a directory on an SSH server: ``SFTPStore("sftp://user@host:port/path")``.

    A missing directory is created at the first write (``create=True``: now);
    read-only, it must exist. ``fs=`` shares an
    :class:`SSHFileSystem` (another handle on the same store); otherwise the
    store opens its own connection from ``storage_options`` (``port``,
    ``username``, ``key_filename``, ``ssh_config``, ``known_hosts``,
    ``host_key_policy``, ``timeout``, ``io_timeout``, ``keepalive``,
    ``max_sessions`` and paramiko's ``SSHClient.connect`` options such as
    ``password``) and closes it on ``close()``.
    """

    has_links = True
    _real_root: str | None = None  # the root as the server resolves it, once known

    def __init__(
        self,
        url: str,
        *,
        fs: SSHFileSystem | None = None,
        read_only: bool = False,
        durable: bool = False,
        create: bool = False,
        **storage_options: Any,
    ) -> None:
        host, user, port, path, self._display = _parse_url(url)
        self._owns_fs = fs is None
        if fs is None:
            options = dict(storage_options)
            for name, value in (("username", user), ("port", port)):
                given = options.get(name)
                if value is not None and given is not None and given != value:
                    raise ConfigError(
                        f"{url!r} says {name} {value!r} but {name}={given!r}: give one"
                    )
                if value is not None:
                    options[name] = value
            fs = SSHFileSystem(host, **options)
        elif storage_options:
            raise TypeError(f"SFTPStore: storage options {sorted(storage_options)} given with fs=")
        try:
            if path == "/~" or path.startswith("/~/"):  # relative to the login directory
                with self._errors(fs, path, "find the home directory for"), fs.session() as sftp:
                    path = posixpath.join(sftp.normalize("."), path[3:])
            self._tmp = f"{path.rstrip('/')}/tmp"
            super().__init__(fs, path, read_only=read_only, durable=durable)
            self.fs: SSHFileSystem
            if self._info is None:
                self._check_root(create)
        except BaseException:
            if self._owns_fs:  # a store that failed to open leaves no connection behind
                fs.close()
            raise

    def _make_url(self) -> str:
        return self._display

    def _check_root(self, create: bool) -> None:
        """A missing store directory is created (now with ``create``, else by the first write).

        As a local store's is. Read-only, it is a mistake (a typo): nothing could
        ever be read there.
        """
        try:
            with self._session(self.root, "stat") as r:
                _, msg = r.call(self.root, CMD_STAT, self.root)
            mode = SFTPAttributes._from_msg(msg).st_mode
        except FileNotFoundError:
            if not self.read_only:
                if create:
                    with self._session(self.root, "create") as r:
                        self._make_dirs(r, self.root)
                return
            raise ConfigError(
                f"the directory {self.root} does not exist on {self.fs.where} (opening "
                f"{self.url} read-only): create it (`ssh ... mkdir -p {self.root}`), or open "
                "it writable: a writable store creates its directory"
            ) from None
        if mode is not None and not stat.S_ISDIR(mode):
            raise ConfigError(
                f"{self.root} on {self.fs.where} is not a directory (opening {self.url})"
            )

    # -- errors ---------------------------------------------------------------------------

    @staticmethod
    @contextmanager
    def _errors(fs: SSHFileSystem, path: str, action: str) -> Iterator[None]:
        """Not found stays ``FileNotFoundError`` (a miss); every other failure says what it is."""
        try:
            yield
        except (FileNotFoundError, FlecheError):
            raise
        except PermissionError as e:
            raise SSHPermissionError(
                f"{fs.where} refused to {action} {path}: {e.strerror or e}. Check that user "
                f"{fs.settings.username!r} may read and write there (or open the store read_only=True)"
            ) from e
        except (paramiko.SSHException, EOFError, OSError) as e:
            if isinstance(e, _Failure) or (
                isinstance(e, OSError)
                and not isinstance(e, (TimeoutError, ConnectionError))
                and fs.connected
            ):  # the server refused this request; the connection is fine
                raise SSHError(f"the SFTP server {fs.where} could not {action} {path}: {e}") from e
            raise SSHConnectionError(
                f"lost the SSH connection to {fs.where} while trying to {action} {path} "
                f"({type(e).__name__}: {e}); fleche reconnects at the next operation"
            ) from e

    @contextmanager
    def _session(self, path: str, action: str) -> Iterator[_Replies]:
        with self._errors(self.fs, path, action), self.fs.session() as sftp:
            yield _Replies(sftp)

    # -- primitives -----------------------------------------------------------------------

    def _read(self, path: str) -> BytesLike:
        with self._session(path, "read") as r:
            try:
                return _read_file(r, path, self.fs.read_chunk)
            except _Failure:  # a directory opens, then cannot be read: a fault of this name
                self._check_file(r, path)
                raise

    def _check_file(self, r: _Replies, path: str) -> None:
        """NotAFileError when ``path`` holds a directory (or a link) where a file belongs."""
        try:
            mode = self._lstat_mode(r, path)
        except OSError:
            return
        if mode is not None and not stat.S_ISREG(mode):
            raise not_a_file(path, describe_mode(mode))

    @staticmethod
    def _lstat_mode(r: _Replies, path: str) -> int | None:
        _, msg = r.call(path, CMD_LSTAT, path)
        mode: int | None = SFTPAttributes._from_msg(msg).st_mode
        return mode

    @staticmethod
    def _one_name(r: _Replies, path: str, t: int) -> str:
        """The name a REALPATH or READLINK request answers."""
        _, msg = r.call(path, t, path)
        count = msg.get_int()
        if count != 1:
            raise _Failure(f"the server answered {count} names for one: {path}")
        name: str = msg.get_text()
        return name

    def _check_inside(self, *paths: str) -> None:
        """StoreLinkError unless each path's directory resolves inside the store: no link leads out.

        The server's REALPATH of each directory (the nearest existing one, for
        a move that creates some), before a file is removed or moved.
        """
        with self._session(paths[0], "resolve") as r:
            if self._real_root is None:
                self._real_root = self._one_name(r, self.root, CMD_REALPATH)
            root = self._real_root
            for path in paths:
                parent = posixpath.dirname(path)
                while True:  # a directory the move will create: its nearest existing parent
                    try:
                        real = self._one_name(r, parent, CMD_REALPATH)
                        break
                    except FileNotFoundError:
                        if len(parent) <= len(self.root):
                            raise
                        parent = posixpath.dirname(parent)
                if real == root or real.startswith(root.rstrip("/") + "/"):
                    continue
                link, target = parent, real
                here = self.root
                for part in posixpath.relpath(parent, self.root).split("/"):
                    here = f"{here}/{part}"
                    if stat.S_ISLNK(self._lstat_mode(r, here) or 0):
                        link, target = here, self._one_name(r, here, CMD_READLINK)
                        break
                raise link_error(link, target, "fleche")

    def layout_links(self) -> dict[str, str]:
        links: dict[str, str] = {}
        with self._session(self.root, "list") as r:

            def dirs(path: str, fan: bool) -> list[str]:
                """Subdirectories of ``path`` (fan-out ones only if ``fan``); links go to ``links``."""
                try:
                    entries = r.sftp.listdir_attr(path)
                except FileNotFoundError:
                    return []
                out = []
                for e in entries:
                    if fan and len(e.filename) != 2:
                        continue
                    sub = f"{path}/{e.filename}"
                    if stat.S_ISLNK(e.st_mode or 0):
                        links[sub] = self._one_name(r, sub, CMD_READLINK)
                    elif stat.S_ISDIR(e.st_mode or 0):
                        out.append(sub)
                return out

            for top in LAYOUT:
                path = f"{self.root}/{top}"
                try:
                    mode = self._lstat_mode(r, path) or 0
                except FileNotFoundError:
                    continue
                if stat.S_ISLNK(mode):
                    links[path] = self._one_name(r, path, CMD_READLINK)
                elif top == "objects":
                    dirs(path, fan=True)
                elif top == "calls":
                    for fdir in dirs(path, fan=False):
                        dirs(fdir, fan=True)
        return links

    def _write(self, path: str, parts: Sequence[BytesLike]) -> None:
        self._put(path, parts, replace=True)

    def _write_new(self, path: str, data: bytes) -> bool:
        return self._put(path, (data,), replace=False)

    def _write_stream(self, path: str, chunks: Iterable[BytesLike]) -> None:
        self._put(path, chunks, replace=False)  # pipelined writes as the chunks come

    def _open_read(self, path: str) -> ReadableFile:
        return io.BufferedReader(_Reader(self, path), buffer_size=self.fs.read_chunk)

    def _put(self, path: str, parts: Iterable[BytesLike], *, replace: bool) -> bool:
        """Write ``tmp/<random>``, then rename it to ``path``; False if ``path`` existed (no replace)."""
        with self._session(path, "write") as r:
            tmp = self._write_tmp(r, parts)
            try:
                renamed = self._rename(r, tmp, path, replace=replace)
            except BaseException:
                _remove_quietly(r, tmp)
                raise
            if not renamed:
                _remove_quietly(r, tmp)
            return renamed

    def _write_tmp(self, r: _Replies, parts: Iterable[BytesLike]) -> str:
        """A new file under ``tmp/`` holding ``parts`` (fsynced when durable); its path."""
        tmp = f"{self._tmp}/{secrets.token_hex(8)}"
        for attempt in range(2):
            try:
                _write_file(r, tmp, parts, self.fs.write_chunk, fsync=self.durable)
                return tmp
            except FileNotFoundError:  # the open failed: no tmp/ yet (the store's first write)
                if attempt:
                    raise
                self._make_dirs(r, self._tmp)
            except BaseException:
                _remove_quietly(r, tmp)
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _rename(self, r: _Replies, src: str, dst: str, *, replace: bool) -> bool:
        """Rename ``src`` to ``dst``: atomically replacing it, or refusing when it exists (False)."""
        missing_dir_made = failed_create = False
        while True:
            try:
                if not replace:
                    # OpenSSH links, then unlinks: an existing target is refused.
                    r.call(dst, CMD_RENAME, src, dst)
                elif self.fs.posix_rename:
                    r.call(dst, CMD_EXTENDED, _POSIX_RENAME, src, dst)
                else:
                    self._replace_without_posix_rename(r, src, dst)
                return True
            except FileNotFoundError:
                if missing_dir_made:  # the directory exists now, so it is src that is missing
                    raise
                missing_dir_made = True
                self._make_dirs(r, posixpath.dirname(dst))
            except _Unsupported:
                if not (replace and self.fs.posix_rename):
                    raise
                self.fs.posix_rename = False  # not OpenSSH: remembered for this connection
                return self._rename(r, src, dst, replace=True)
            except _Failure:
                if replace:
                    raise
                if self._stat_exists(r, dst):
                    return False
                # The target existed when the rename was refused and is gone now (a lease
                # released in between): try once more before calling it a failure.
                if failed_create:
                    raise
                failed_create = True

    @staticmethod
    def _replace_without_posix_rename(r: _Replies, src: str, dst: str) -> None:
        # A reader may see a miss between the two requests, never a partial file.
        with suppress(FileNotFoundError):
            r.call(dst, CMD_REMOVE, dst)
        r.call(dst, CMD_RENAME, src, dst)

    @staticmethod
    def _stat_exists(r: _Replies, path: str) -> bool:
        try:
            r.call(path, CMD_STAT, path)
        except FileNotFoundError:
            return False
        return True

    def _make_dirs(self, r: _Replies, path: str) -> None:
        """``mkdir -p``: try the directory first, its parents only when they are missing too."""
        try:
            r.call(path, CMD_MKDIR, path, SFTPAttributes())
        except FileNotFoundError:
            parent = posixpath.dirname(path)
            if parent == path:
                raise
            self._make_dirs(r, parent)
            self._make_dirs(r, path)
        except _Failure:  # OpenSSH answers EEXIST with a plain failure: is it a directory?
            _, msg = r.call(path, CMD_STAT, path)
            mode = SFTPAttributes._from_msg(msg).st_mode
            if mode is not None and not stat.S_ISDIR(mode):
                raise

    def _ensure_dir(self, path: str) -> None:
        with self._session(path, "create the directory") as r:
            self._make_dirs(r, path)

    def _exists(self, path: str) -> bool:
        # a directory or a link at the name is no file: what a read of it would say (a miss)
        with self._session(path, "stat") as r:
            try:
                mode = self._lstat_mode(r, path)
            except FileNotFoundError:
                return False
            return mode is None or stat.S_ISREG(mode)

    def _size(self, path: str) -> int:
        with self._session(path, "stat") as r:
            _, msg = r.call(path, CMD_STAT, path)
        return int(SFTPAttributes._from_msg(msg).st_size or 0)

    def _remove(self, path: str) -> None:
        self._check_inside(path)
        with self._session(path, "delete") as r:
            r.call(path, CMD_REMOVE, path)

    def _move(self, src: str, dst: str) -> None:
        self._check_inside(src, dst)
        with self._session(src, "move") as r:
            self._rename(r, src, dst, replace=True)

    def _listdir(self, path: str) -> list[SFTPAttributes]:
        try:
            with self._session(path, "list") as r:
                entries: list[SFTPAttributes] = r.sftp.listdir_attr(path)
                return entries
        except FileNotFoundError:
            return []

    def _list_pack_files(self) -> dict[str, tuple[int, float | None]]:
        return {
            e.filename: (int(e.st_size or 0), None if e.st_mtime is None else float(e.st_mtime))
            for e in self._listdir(self._packs_dir)
            if stat.S_ISREG(e.st_mode or 0)
        }

    def _read_range(self, path: str, offset: int, length: int) -> BytesLike:
        with self._session(path, "read") as r, r.sftp.open(path, "rb") as f:
            f.seek(offset)
            data: bytes = f.read(length)
            return data

    def _list_dirs(self, path: str) -> Iterator[str]:
        for entry in self._listdir(path):
            if entry.st_mode is not None and stat.S_ISDIR(entry.st_mode):
                yield entry.filename

    def _list_fanout(self, path: str) -> Iterator[str]:
        for fan in self._list_dirs(path):
            if len(fan) != 2 or fan.strip(HEX_DIGITS):
                continue
            for entry in self._listdir(f"{path}/{fan}"):
                name = fan + entry.filename
                if len(entry.filename) == 30 and stat.S_ISREG(entry.st_mode or 0) and is_oid(name):
                    yield name

    # -- values -----------------------------------------------------------------------------

    def _publish(self, path: str, parts: Sequence[BytesLike]) -> None:
        """Write an object unless its name exists: the rename refuses an existing name."""
        if _nbytes(parts) > STAT_FIRST and self._exists(path):
            return  # one stat is cheaper than uploading a large value to have it refused
        if self._info is None:
            self._ensure_marker()
        self._put(path, parts, replace=False)

    def close(self) -> None:
        """Forget cached state, and disconnect if this store opened the connection."""
        super().close()
        if self._owns_fs:
            self.fs.close()
