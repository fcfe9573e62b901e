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

import struct
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable, Iterator
from itertools import accumulate, compress, islice, pairwise, repeat
from math import isqrt
from operator import add, eq, itemgetter, rshift

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
_PREFIX = struct.Struct(">I28x")
_SCAN = 24
"""A bucket of at most this many entries (768 bytes) is searched whole with one ``find``."""


def digest_bytes(digest: str) -> bytes | None:
    """The 16 bytes of a 32-hex digest, or None when it is not one (then nothing holds it)."""
    try:
        raw = bytes.fromhex(digest)
    except (ValueError, TypeError):
        return None
    return raw if len(raw) == 16 else None


def _width(n: int) -> int:
    """Half the window searched around the guessed place of a key in a bucket of ``n``.

    For uniform digests the place is off by about sqrt(n)/2 entries at worst (a binomial's
    deviation): sqrt(n) + 4 misses it 0.3 % of the time (measured at 100,000 entries), and
    a miss costs a bisection; a window twice as wide costs twice the bytes on every lookup.
    """
    return isqrt(n) + 4


CHECKSUM = 16

MAX_ENTRY = (1 << 32) - 1
"""Largest entry a pack holds (its length is a u32); packs are for small files."""

_HEX = "0123456789abcdef"


def pack_file(name: str) -> tuple[str, str] | None:
    """``(hash, "pack" | "idx")`` of a file under ``packs/`` named ``pack-<32 hex>.pack``
    or ``.idx``; None for any other name (not ours).

    String tests, not a regular expression: compiling one at import cost a fresh
    process's first hit 0.7 M instructions (of ~127 M), and the match is no faster.
    """
    if not name.startswith("pack-"):
        return None
    digest, _, ext = name[5:].partition(".")
    # strip leaves a non-hex character and all between it and the ends: one C loop
    if len(digest) != 32 or ext not in ("pack", "idx") or digest.strip(_HEX):
        return None
    return digest, ext


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
    # Whole columns at a time, each step in C: a seal packs ~20,000 records, and a loop
    # of Python per record (sort tuples, pack each row) cost it ~5 µs a record.
    pairs = list(entries)
    keys: list[Key] = list(map(itemgetter(0), pairs))
    names = ["", *sorted({n for n, _ in keys} - {""})]
    tags = {n: i.to_bytes(4, "big") for i, n in enumerate(names)}
    # the first 20 bytes of each index entry, digest then name id, are its sort key
    digests = map(bytes.fromhex, map(itemgetter(1), keys))
    heads = list(map(add, digests, map(tags.__getitem__, map(itemgetter(0), keys))))
    order = sorted(range(len(heads)), key=heads.__getitem__)
    heads = list(map(heads.__getitem__, order))
    body = list(map(itemgetter(1), map(pairs.__getitem__, order)))
    pack = b"".join([PACK_HEADER.pack(PACK_MAGIC, PACK_VERSION, len(heads)), *body])
    sizes = list(map(len, body))  # each one's bytes, unless a view of wider items
    if sum(sizes) != len(pack) - PACK_HEADER.size:
        sizes = [memoryview(d).nbytes for d in body]

    def key(head: bytes) -> Key:
        return names[int.from_bytes(head[16:], "big")], head[:16].hex()

    if set(map(len, heads)) - {20}:
        raise ValueError("build_pack: a digest is not 32 hex digits")
    if any(map(eq, heads, islice(heads, 1, None))):
        twice = next(h for h, after in pairwise(heads) if h == after)
        raise ValueError(f"build_pack: key {key(twice)} given twice")
    if sizes and max(sizes) > MAX_ENTRY:
        at = next(i for i, n in enumerate(sizes) if n > MAX_ENTRY)
        raise ValueError(f"build_pack: entry {key(heads[at])} is {sizes[at]} bytes, too big")
    pack_digest = xxhash.xxh3_128_digest(pack)
    gone = sorted({bytes.fromhex(h) for h in superseded} - {pack_digest})
    firsts = bytes(map(itemgetter(0), heads))  # ascending: the fan-out is where each ends
    fan = [bisect_right(firsts, i) for i in range(256)]
    parts = [
        IDX_HEADER.pack(
            IDX_MAGIC, PACK_VERSION, len(pack), pack_digest, len(heads), len(names), len(gone)
        ),
        FANOUT.pack(*fan),
    ]
    for n in names:
        raw = n.encode()
        parts += [NAME_LEN.pack(len(raw)), raw]
    parts += gone
    offsets = accumulate(sizes, initial=PACK_HEADER.size)
    parts += map(add, heads, map(_TAIL.pack, sizes, offsets))
    idx = b"".join(parts)
    return pack_digest.hex(), pack, idx + xxhash.xxh3_128_digest(idx)


PEEK = 4096
"""Bytes read from the head of an index to learn its superseded list (more when its name
table is longer): the header, the fan-out and, for a few dozen functions, the names."""


class IndexHead:
    """What the head of an index says, read without its checksum (that reads it whole):
    the packs it supersedes, and where the entries of each first digest byte are, so a
    reader can look for a key in a few hundred bytes of it before reading it whole.

    Damage can only make a listed hash one that no pack has (hashes are 128 bits), or make
    :meth:`holds` wrong: a "no" is what ignoring a damaged index answers too, and a "yes"
    has the index read whole and checked. ``fan`` None: the head is not an index's
    (damaged); it names no pack and holds every key (so it is read whole, and found damaged).
    """

    __slots__ = ("base", "fan", "superseded", "tags")

    def __init__(
        self,
        superseded: frozenset[str] = frozenset(),
        fan: bytes | None = None,
        base: int = 0,
        tags: dict[str, bytes] | None = None,
    ) -> None:
        self.superseded = superseded
        self.fan = fan  # the fan-out table as stored: 256 big-endian u32
        self.base = base
        self.tags = tags or {}

    @classmethod
    def parse(cls, head: bytes) -> IndexHead | int:
        """The head's reading, or how many bytes of it are needed when ``head`` is too short."""
        if len(head) < IDX_HEADER.size + FANOUT.size:
            return cls() if len(head) < IDX_HEADER.size else IDX_HEADER.size + FANOUT.size
        magic, version, _, _, _, n_names, n_gone = IDX_HEADER.unpack_from(head, 0)
        if magic != IDX_MAGIC or version != PACK_VERSION:
            return cls()
        n_gone = int(n_gone)
        pos = IDX_HEADER.size + FANOUT.size
        tags: dict[str, bytes] = {}
        for i in range(n_names):
            if pos + 2 > len(head):
                return pos + 2 + 16 * n_gone + PEEK  # more of the names, and the list after them
            (n,) = NAME_LEN.unpack_from(head, pos)
            n = int(n)
            if pos + 2 + n > len(head):
                return pos + 2 + n + 16 * n_gone + PEEK
            tags[head[pos + 2 : pos + 2 + n].decode(errors="replace")] = i.to_bytes(4, "big")
            pos += 2 + n
        end = pos + 16 * n_gone
        if end > len(head):
            return end
        gone = frozenset(head[pos + 16 * i : pos + 16 * i + 16].hex() for i in range(n_gone))
        return cls(gone, head[IDX_HEADER.size : IDX_HEADER.size + FANOUT.size], end, tags)

    def bucket(self, raw: bytes) -> tuple[int, int]:
        """``(offset, length)`` in the index of the entries whose digest starts as ``raw``."""
        fan = self.fan
        if fan is None:
            return 0, 0
        at = 4 * raw[0]
        lo = int.from_bytes(fan[at - 4 : at], "big") if at else 0
        hi = int.from_bytes(fan[at : at + 4], "big")
        return self.base + ENTRY.size * lo, ENTRY.size * (hi - lo)

    def holds(self, bucket: bytes, name: str, raw: bytes) -> bool:
        """Whether ``bucket`` (what :meth:`bucket` says to read) has key ``(name, raw)``."""
        if self.fan is None:
            return True
        tag = self.tags.get(name)
        if tag is None:
            return False
        key = raw + tag
        at = bucket.find(key)
        while at >= 0 and at % ENTRY.size:  # inside an entry, not at one's start: go on
            at = bucket.find(key, at + 1)
        return at >= 0


class PackIndex:
    """A parsed ``.idx``: what a pack holds and where, searched in place in its buffer."""

    __slots__ = (
        "_base",
        "_buf",
        "_fan",
        "_low",
        "_tags",
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
        # the 4 bytes after a digest in an entry of that name: digest + tag is the sort key
        self._tags: dict[str, bytes] = {n: i.to_bytes(4, "big") for i, n in enumerate(names)}
        self._low: tuple[int, ...] = (0, *self._fan[:255])
        self.superseded: frozenset[str] = frozenset(
            bytes(buf[pos + 16 * i : pos + 16 * i + 16]).hex() for i in range(n_gone)
        )
        self._base = pos + 16 * n_gone
        if self._base + ENTRY.size * count + CHECKSUM != size or self._fan[255] != count:
            raise _damaged(where, "its sizes do not add up")
        if not hasattr(buf, "find"):  # a memoryview: bytes to search in
            buf = bytes(buf)
        self._buf = buf

    def find(self, name: str, digest: str) -> tuple[int, int] | None:
        """``(offset, length)`` of key ``(name, digest)`` in the pack, or None."""
        raw = digest_bytes(digest)
        return None if raw is None else self.find_raw(name, raw)

    def find_raw(self, name: str, raw: bytes) -> tuple[int, int] | None:
        """:meth:`find` with the digest as its 16 bytes (a reader searching several packs
        converts it once).

        The fan-out gives the bucket of the digest's first byte. Digests are hashes, so
        uniform: the entry is about where the next three bytes say, within about the square
        root of the bucket's size (``_width``). That window is checked to bracket the key
        (two 20-byte compares) and searched with one ``find`` of the 20-byte key (C speed),
        which counts only at an entry's start; an unlucky window, or keys that are not
        uniform, fall back to a bisection of the rest of the bucket: always exact, and
        expected O(1) Python steps where a bisection takes log2(bucket) (9 at 100,000).
        """
        tag = self._tags.get(name)
        if tag is None:
            return None
        first = raw[0]
        lo = self._low[first]
        hi = self._fan[first]
        n = hi - lo
        if not n:
            return None
        key = raw + tag
        buf, base = self._buf, self._base
        if n > _SCAN:
            # the guess, and a window around it that must bracket the key
            guess = lo + ((((raw[1] << 16) | (raw[2] << 8) | raw[3]) * n) >> 24)
            w = _width(n)
            a = guess - w if guess - w > lo else lo
            b = guess + w if guess + w < hi else hi
            if a > lo:
                p = base + (a << 5)
                if buf[p : p + 20] > key:  # it is before the window
                    return self._bisect(key, lo, a)
            if b < hi:
                p = base + (b << 5)
                if buf[p : p + 20] <= key:  # at or after the window's end
                    return self._bisect(key, b, hi)
            lo, hi = a, b
        start = base + (lo << 5)
        end = base + (hi << 5)
        at = buf.find(key, start, end)
        while at >= 0 and (at - base) & 31:  # inside an entry, not at one's start: go on
            at = buf.find(key, at + 1, end)
        if at < 0:
            return None
        length, offset = _TAIL.unpack_from(buf, at + 20)
        if offset + length > self.pack_size:
            return None  # a damaged index never sends a read past its pack
        return offset, length

    def _bisect(self, key: bytes, lo: int, hi: int) -> tuple[int, int] | None:
        buf, base = self._buf, self._base
        while lo < hi:
            mid = (lo + hi) >> 1
            p = base + (mid << 5)
            e = buf[p : p + 20]
            if e < key:
                lo = mid + 1
            elif e > key:
                hi = mid
            else:
                return self._entry(p)
        return None

    def _entry(self, p: int) -> tuple[int, int] | None:
        length, offset = _TAIL.unpack_from(self._buf, p + 20)
        if offset + length > self.pack_size:
            return None  # a damaged index never sends a read past its pack
        return offset, length

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

    def slots(self, shift: int) -> list[int]:
        """Where :class:`PackFinder`'s table holds this pack's digests: the first 4 bytes of
        each, big-endian, shifted right by ``shift``; ascending, as the entries are. In C."""
        start = self._base
        region = bytes(self._buf[start : start + ENTRY.size * self.count])
        return list(map(rshift, map(itemgetter(0), _PREFIX.iter_unpack(region)), repeat(shift)))

    def release(self) -> None:
        """Drop the buffer (a memory map is closed by its owner)."""
        self._buf = b""


_TABLE_MIN, _TABLE_MAX = 12, 24
"""The which-pack table has 2**12 to 2**24 one-byte slots: at most 16 MiB per listing."""


class PackFinder:
    """Finds a key among several packs (a listing's live ones, in order) with one lookup.

    Searching each pack in turn costs one index lookup per pack, for hits and for misses
    alike: 50 packs of a few thousand entries made a packed hit 10x a loose one. So once
    a listing with several packs has cost enough lookups to pay for it (as many pack
    searches as a quarter of its entries: the build costs about what they did), it builds
    a table with a byte per slot, slot = the digest's leading bits, saying which pack holds
    the digests of that slot (0: none, 255: several, or pack 254 and later). A lookup
    then reads one byte and searches one pack, or none (a miss); a shared slot searches
    them all, as before. Its size is a power of two at least 16 slots per entry, so few
    slots are shared, within ``2**12``..``2**24`` bytes: at most 16 MiB per listing, 16
    bytes per entry below a million entries; one pack needs no table.
    """

    __slots__ = ("_indexes", "_probes", "_shift", "_table", "_threshold")

    def __init__(self, indexes: list[PackIndex]) -> None:
        self._indexes = indexes
        self._table: bytearray | None = None
        self._shift = 32
        self._probes = 0
        total = sum(ix.count for ix in indexes)
        self._threshold = total // 4 if len(indexes) > 1 else -1

    def find(self, name: str, digest: str) -> tuple[int, int, int] | None:
        """``(position of the pack in the list, offset, length)`` of the key, or None."""
        raw = digest_bytes(digest)
        if raw is None:
            return None
        indexes = self._indexes
        table = self._table
        if table is not None:
            v = table[int.from_bytes(raw[:4], "big") >> self._shift]
            if not v:
                return None
            if v != 255:
                found = indexes[v - 1].find_raw(name, raw)
                return None if found is None else (v - 1, found[0], found[1])
        elif self._threshold >= 0:
            self._probes += len(indexes)
            if self._probes > self._threshold:
                self._threshold = -1  # once, even if another thread is here too
                self._build()
        for i, ix in enumerate(indexes):
            found = ix.find_raw(name, raw)
            if found is not None:
                return i, found[0], found[1]
        return None

    def _build(self) -> None:
        total = sum(ix.count for ix in self._indexes)
        bits = min(_TABLE_MAX, max(_TABLE_MIN, (16 * total).bit_length()))
        shift = 32 - bits
        table = bytearray(1 << bits)
        for i, ix in enumerate(self._indexes):  # each step in C, in ascending slots
            slots = ix.slots(shift)
            shared = list(compress(slots, map(table.__getitem__, slots)))  # other packs' too
            deque(map(table.__setitem__, slots, repeat(i + 1 if i < 254 else 255)), 0)
            deque(map(table.__setitem__, shared, repeat(255)), 0)
        self._shift = shift
        self._table = table  # last: a reader sees no table or a whole one
