"""The store's files: where each name lives, and the primitives that read and write them.

:class:`PathStore` is the base of :class:`fleche.store.ObjectStore`. It holds
the layout (the only code that turns an oid, a call or a lease into a path)
and a handful of small path-level primitives over fsspec (``_read``,
``_write``, ``_write_new``, ``_exists``, ``_list_fanout``...). A backend with
a faster path (``LocalStore``) or different atomicity rules (S3 create-only,
SFTP rename) overrides those and nothing else; the public API above them is
:class:`~fleche.store.ObjectStore`'s.
"""

from __future__ import annotations

import stat
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, Protocol

import fsspec

from fleche.errors import NotAFileError, StoreLinkError
from fleche.store_names import _HEX, BytesLike, check_function_id, check_oid, is_oid

MARKER = "fleche.json"

LAYOUT = ("tmp", "quarantine", "objects", "calls")
"""The store's top-level directories; none of them, nor a fan-out or function directory under
them, may be a symbolic link when upkeep changes the store (see :meth:`PathStore.layout_links`)."""


def describe_mode(mode: int) -> str:
    """What a file of this ``st_mode`` is, for messages: "a directory", "a fifo"..."""
    for test, what in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a fifo"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
    ):
        if test(mode):
            return what
    return "not a regular file"


def not_a_file(path: str, what: str, target: str | None = None) -> NotAFileError:
    """The fault of a name that holds ``what`` (a directory, a link...) instead of a file."""
    to = f" to {target}" if target else ""
    return NotAFileError(
        f"{path} is {what}{to} where a file belongs: fleche never reads, follows or waits on it"
    )


def link_error(link: str, target: str | None, doing: str) -> StoreLinkError:
    """The error of an upkeep step that would have gone through the symbolic link ``link``."""
    to = f" (to {target})" if target else ""
    return StoreLinkError(
        f"{link} is a symbolic link{to} in the store's layout; {doing} never follows a link "
        "out of a store, so it stopped without touching anything: move the directory it "
        "points to into its place (or remove the link), then run it again"
    )


class ReadableFile(Protocol):
    """What ``ObjectStore.open_read`` returns: a binary file with ``read`` and ``readinto``."""

    def read(self, size: int = -1, /) -> bytes: ...

    def readinto(self, buffer: Any, /) -> int: ...

    def close(self) -> None: ...

    def __enter__(self) -> ReadableFile: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
        /,
    ) -> object: ...


class PathStore(ABC):
    """Layout and filesystem primitives over one fsspec filesystem, under ``root``."""

    has_links = False
    """Whether the filesystem has directories and symbolic links of its own (local, SFTP):
    then a name may hold one where a file belongs, and a link may lead out of the store."""

    def __init__(
        self,
        fs: fsspec.AbstractFileSystem,
        root: str,
        *,
        read_only: bool = False,
        durable: bool = False,
    ) -> None:
        self.fs = fs
        self.root = fs._strip_protocol(root).rstrip("/")
        self.read_only = read_only
        self.durable = durable
        self.url: str = self._make_url()
        self._objects = f"{self.root}/objects"
        self._calls = f"{self.root}/calls"
        self._call_dirs: dict[str, str] = {}
        self._marker_path = f"{self.root}/{MARKER}"
        self._dirs: set[str] = set()  # directories known to exist: no mkdir once warm
        # None until the marker is known to exist; at most one read here, none later.
        self._info: dict[str, Any] | None = self._load_marker()

    def _make_url(self) -> str:
        url: str = self.fs.unstrip_protocol(self.root)
        return url

    @abstractmethod
    def _load_marker(self) -> dict[str, Any] | None:
        """The parsed ``fleche.json``, or None when there is none.

        :class:`fleche.store.ObjectStore` implements it: it knows the formats it reads.
        """

    # -- layout: the only place that turns names into paths -------------------

    def _oid_path(self, oid: str) -> str:
        check_oid(oid)
        return f"{self._objects}/{oid[:2]}/{oid[2:]}"

    def _call_dir(self, function_id: str) -> str:
        # validated once per function: this is on every hit's path
        d = self._call_dirs.get(function_id)
        if d is None:
            d = self._call_dirs[function_id] = f"{self._calls}/{check_function_id(function_id)}"
        return d

    def _call_path(self, function_id: str, digest: str) -> str:
        # on every hit's path: the checks of check_oid and _call_dir, inlined
        if type(digest) is not str or len(digest) != 32 or digest.strip(_HEX):
            check_oid(digest, "call digest")
        d = self._call_dirs.get(function_id) or self._call_dir(function_id)
        return f"{d}/{digest[:2]}/{digest[2:]}"

    # leases: locks/<function-id>/<digest>, see fleche.lease
    def _lease_path(self, function_id: str, digest: str) -> str:
        check_oid(digest, "call digest")
        return f"{self.root}/locks/{check_function_id(function_id)}/{digest}"

    # -- filesystem primitives: a backend overrides these, nothing else -------

    def _read(self, path: str) -> BytesLike:
        data: bytes = self.fs.cat_file(path)
        return data

    def _write(self, path: str, parts: Sequence[BytesLike]) -> None:
        """Write ``parts`` under ``path`` atomically, replacing any existing file."""
        self._ensure_dir(path.rpartition("/")[0])
        # One PUT needs one body; join only when there is more than one part.
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.fs.pipe_file(path, data)

    def _write_new(self, path: str, data: bytes) -> bool:
        """Create ``path`` only if it does not exist; False when it already did."""
        self._ensure_dir(path.rpartition("/")[0])
        try:
            self.fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        return True

    def _write_stream(self, path: str, chunks: Iterable[BytesLike]) -> None:
        """Write ``chunks`` under ``path`` atomically. Generic: gathered, then one ``_write``.

        Correct on any filesystem but not bounded; backends that can stream
        (local disk, S3 multipart, SFTP) override it.
        """
        self._write(path, list(chunks))

    def _open_read(self, path: str) -> ReadableFile:
        f: ReadableFile = self.fs.open(path, "rb")
        return f

    def _exists(self, path: str) -> bool:
        # Not fs.exists(): it turns every error (auth, network) into False.
        try:
            self.fs.info(path)
        except FileNotFoundError:
            return False
        return True

    def _size(self, path: str) -> int:
        return int(self.fs.info(path)["size"])

    def _remove(self, path: str) -> None:
        self.fs.rm_file(path)

    def _move(self, src: str, dst: str) -> None:
        self._ensure_dir(dst.rpartition("/")[0])
        self.fs.mv(src, dst)

    def layout_links(self) -> dict[str, str]:
        """The directories of the layout that are symbolic links: path -> where each points.

        ``tmp/``, ``quarantine/``, ``objects/`` and its fan-out directories,
        ``calls/``, its function directories and theirs. Empty on a healthy
        store, and always on filesystems without links (object stores, memory).
        """
        return {}

    def _ensure_dir(self, path: str) -> None:
        if path not in self._dirs:
            self.fs.makedirs(path, exist_ok=True)
            self._dirs.add(path)

    def _list_dirs(self, path: str) -> Iterator[str]:
        """Names of the subdirectories of ``path`` (nothing when it is absent)."""
        try:
            entries = self.fs.ls(path, detail=True)
        except FileNotFoundError:
            return
        for entry in entries:
            if entry["type"] == "directory":
                yield entry["name"].rstrip("/").rpartition("/")[2]

    def _list_fanout(self, path: str) -> Iterator[str]:
        """The 32-hex names stored under the fan-out directory ``path``, junk skipped."""
        try:
            found = self.fs.find(path)
        except FileNotFoundError:
            return
        prefix = len(path) + 1
        for p in found:
            rel = p[prefix:]  # "ab/<30 hex>"; anything else is not ours
            if len(rel) == 33 and rel[2] == "/" and p.startswith(path):
                oid = rel[:2] + rel[3:]
                if is_oid(oid):
                    yield oid
