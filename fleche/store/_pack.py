"""Packs: many small objects and call records in one write-once file, with a sorted index.

Millions of loose files of a few hundred bytes cost an inode, a directory entry
and a request each (``rsync``, ``aws s3 sync``, ``fleche sync``). ``fleche gc``
folds them into ``packs/pack-<hash>.pack`` (the files' exact bytes, back to
back) and ``packs/pack-<hash>.idx`` (a fan-out table and sorted keys, for a
binary search), as git and restic do. Both files are write-once; the layout is
``docs/format.md``'s "Packs". This module is the format only: building the two
files (:func:`build_pack`) and searching an index (:class:`PackIndex`) held in
any buffer (a memory map on local disk, bytes read whole elsewhere). Which packs
a store reads, and when, is :mod:`fleche.store._base`'s.

A key is ``(name, digest)``: ``name`` is the function id of a call record, or
``""`` for a value object; ``digest`` the 32-hex call key or oid. Entries are
sorted by the 16 digest bytes, then by the name's index in the index's sorted
name table, so the first digest byte drives the fan-out.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Iterator

import xxhash

from fleche.errors import CorruptObjectError

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any

PACK_MAGIC = b"FLPK"
IDX_MAGIC = b"FLPI"
PACK_VERSION = 1

PACK_HEADER = struct.Struct(">4sB3xQ")
"""magic ``FLPK``, version, 3 zero bytes, number of entries (u64): 16 bytes."""

IDX_HEADER = struct.Struct(">4sB3xQ16sIII4x")
"""magic ``FLPI``, version, 3 zero bytes, pack size (u64), pack hash (16 bytes),
number of entries, of names, of superseded packs (u32 each), 4 zero bytes: 48 bytes."""

FANOUT = struct.Struct(">256I")
ENTRY = struct.Struct(">16sIIQ")
"""digest (16 bytes), name index (u32), length (u32), offset in the pack (u64): 32 bytes."""
NAME_LEN = struct.Struct(">H")
_TAIL = struct.Struct(">IQ")
_HIGH = b"\xff" * 12
CHECKSUM = 16

MAX_ENTRY = (1 << 32) - 1
"""Largest entry a pack holds (its length is a u32); packs are for small files."""

PACK_FILE = re.compile(r"pack-([0-9a-f]{32})\.(pack|idx)")
"""The names of the files under ``packs/``: anything else there is not ours."""

Key = tuple[str, str]
"""``(name, digest)``: a record's ``(function id, call key)``, or ``("", oid)`` for an object."""


def _damaged(what: str, why: str) -> CorruptObjectError:
    return CorruptObjectError(
        f"pack index {what} is damaged ({why}); it is ignored: 'fleche gc' rewrites "
        "its pack from the files that are still loose, or remove both pack files"
    )


def build_pack(
    entries: Iterable[tuple[Key, bytes | bytearray | memoryview]],
    superseded: Iterable[str] = (),
) -> tuple[str, bytes, bytes]:
    """The ``(hash, pack bytes, idx bytes)`` of a pack holding ``entries``.

    ``entries``: each key once, with its file's exact bytes. ``superseded``:
    hashes of packs this one replaces (a repack): readers that see this index
    stop reading them. ``hash`` is the XXH3-128 of the pack file, in hex: the
    name of both files.
    """
    items = sorted(((bytes.fromhex(d), n), data) for (n, d), data in entries)
    names = ["", *sorted({n for (_, n), _ in items if n})]
    ids = {n: i for i, n in enumerate(names)}
    rows: list[tuple[bytes, int, int, int]] = []
    body: list[bytes | bytearray | memoryview] = []
    offset = PACK_HEADER.size
    previous: tuple[bytes, int] | None = None
    for (digest, name), data in items:
        key = (digest, ids[name])
        if key == previous:
            raise ValueError(f"build_pack: key {(name, digest.hex())} given twice")
        previous = key
        size = memoryview(data).nbytes
        if size > MAX_ENTRY:
            raise ValueError(f"build_pack: entry {(name, digest.hex())} is {size} bytes, too big")
        rows.append((digest, ids[name], size, offset))
        body.append(data)
        offset += size
    pack = b"".join([PACK_HEADER.pack(PACK_MAGIC, PACK_VERSION, len(rows)), *body])
    pack_digest = xxhash.xxh3_128_digest(pack)
    gone = sorted({bytes.fromhex(h) for h in superseded} - {pack_digest})
    fan = [0] * 256
    for digest, *_ in rows:
        fan[digest[0]] += 1
    for i in range(1, 256):
        fan[i] += fan[i - 1]
    parts = [
        IDX_HEADER.pack(
            IDX_MAGIC, PACK_VERSION, len(pack), pack_digest, len(rows), len(names), len(gone)
        ),
        FANOUT.pack(*fan),
    ]
    for n in names:
        raw = n.encode()
        parts += [NAME_LEN.pack(len(raw)), raw]
    parts += gone
    parts += [ENTRY.pack(*row) for row in rows]
    idx = b"".join(parts)
    return pack_digest.hex(), pack, idx + xxhash.xxh3_128_digest(idx)


class PackIndex:
    """A parsed ``.idx``: what a pack holds and where, searched in place in its buffer."""

    __slots__ = (
        "_base",
        "_buf",
        "_fan",
        "count",
        "hash",
        "name_ids",
        "names",
        "pack_size",
        "superseded",
    )

    def __init__(self, buf: Any, where: str, *, expect: str | None = None) -> None:
        """Parse and check ``buf`` (bytes or a memory map); CorruptObjectError when damaged.

        ``expect``: the hash in the file's name, which must be the pack hash it records.
        """
        size = len(buf)
        if size < IDX_HEADER.size + FANOUT.size + CHECKSUM:
            raise _damaged(where, f"{size} bytes is too short")
        magic, version, pack_size, pack_hash, count, n_names, n_gone = IDX_HEADER.unpack_from(
            buf, 0
        )
        if magic != IDX_MAGIC:
            raise _damaged(where, f"bad magic {bytes(magic)!r}")
        if version != PACK_VERSION:
            raise _damaged(where, f"version {version}; this fleche reads {PACK_VERSION}")
        if xxhash.xxh3_128_digest(memoryview(buf)[: size - CHECKSUM]) != bytes(
            buf[size - CHECKSUM :]
        ):
            raise _damaged(where, "checksum mismatch")
        self.hash: str = pack_hash.hex()
        if expect is not None and expect != self.hash:
            raise _damaged(where, f"it describes pack {self.hash}, not {expect}")
        self.pack_size: int = pack_size
        self.count: int = count
        self._fan = FANOUT.unpack_from(buf, IDX_HEADER.size)
        pos = IDX_HEADER.size + FANOUT.size
        names: list[str] = []
        try:
            for _ in range(n_names):
                (n,) = NAME_LEN.unpack_from(buf, pos)
                names.append(bytes(buf[pos + 2 : pos + 2 + n]).decode())
                pos += 2 + n
        except (struct.error, UnicodeDecodeError) as e:
            raise _damaged(where, f"bad name table: {e}") from None
        if not names or names[0] != "" or names[1:] != sorted(set(names[1:])):
            raise _damaged(where, "name table is not '' followed by sorted names")
        self.names: list[str] = names
        self.name_ids: dict[str, int] = {n: i for i, n in enumerate(names)}
        self.superseded: frozenset[str] = frozenset(
            bytes(buf[pos + 16 * i : pos + 16 * i + 16]).hex() for i in range(n_gone)
        )
        self._base = pos + 16 * n_gone
        if self._base + ENTRY.size * count + CHECKSUM != size or self._fan[255] != count:
            raise _damaged(where, "its sizes do not add up")
        self._buf = buf

    def find(self, name: str, digest: str) -> tuple[int, int] | None:
        """``(offset, length)`` of key ``(name, digest)`` in the pack, or None: fan-out, then bisect.

        One 32-byte slice per probe: an entry sorts below ``key + 00…`` when its key is
        smaller, above ``key + ff…`` when larger, and between them when it is the key.
        """
        nid = self.name_ids.get(name)
        if nid is None:
            return None
        try:
            low = bytes.fromhex(f"{digest}{nid:08x}000000000000000000000000")
        except ValueError:
            return None
        high = low[:20] + _HIGH
        first = low[0]
        fan = self._fan
        lo = fan[first - 1] if first else 0
        hi = fan[first]
        buf, base = self._buf, self._base
        while lo < hi:
            mid = (lo + hi) >> 1
            p = base + (mid << 5)
            e = buf[p : p + 32]
            if e < low:
                lo = mid + 1
            elif e > high:
                hi = mid
            else:
                length, offset = _TAIL.unpack_from(e, 20)
                if offset + length > self.pack_size:
                    return None  # a damaged index never sends a read past its pack
                return offset, length
        return None

    def __contains__(self, key: Key) -> bool:
        return self.find(*key) is not None

    def entries(self, first: int | None = None) -> Iterator[tuple[Key, int, int]]:
        """Every ``((name, digest), offset, length)``, in index order; ``first``: only the
        digests whose first byte it is (one fan-out slot, as ``calls/<f>/<fan>/`` holds)."""
        names = self.names
        lo, hi = 0, self.count
        if first is not None:
            lo, hi = (self._fan[first - 1] if first else 0), self._fan[first]
        start = self._base + ENTRY.size * lo
        view = memoryview(self._buf)[start : start + ENTRY.size * (hi - lo)]
        for digest, nid, length, offset in ENTRY.iter_unpack(view):
            if nid < len(names):
                yield (names[nid], digest.hex()), offset, length

    def release(self) -> None:
        """Drop the buffer (a memory map is closed by its owner)."""
        self._buf = b""
