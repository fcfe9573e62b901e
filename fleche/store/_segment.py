"""In-flight segments: a process's call records appended to one file, sealed into a pack.

A small miss that creates a file pays for an inode and two directory entries (40-190 µs
on ext4, most of a miss); appending to a file that is already open costs about 1.5 µs.
A writing process therefore appends each record, as one ``write``, to its own segment
``tmp/segments/seg-<pid>-<random>``: under ``tmp/``, never a final name, so every file
under a final name stays immutable. Each record is framed::

    crc32 (>I, of everything after it) | name length (>H) | data length (>I)
    | function id (UTF-8) | call digest (16 bytes) | record bytes

so a reader parses whole frames only: a frame still being written (shorter than its
lengths say) is read again later, and a frame whose checksum does not match ends the
segment for that reader when the frame its lengths lead to is damaged too (nothing after
it is trusted); followed by a whole, checked frame, only the damaged one is skipped. A later frame
for the same key replaces an earlier one. The owner seals the segment into an ordinary
pack (``.pack`` then ``.idx``) and only then removes it: at a size or age threshold
(in its helper process, :mod:`fleche.store._sealer`), on ``close()`` and at exit. A crash leaves the segment where readers keep finding it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from fleche.store._pack import Key

FRAME = struct.Struct(">IHI")
DIGEST = 16
SEGMENTS = "segments"  # under tmp/
PREFIX = "seg-"


def frame(function_id: str, digest: str, data: bytes) -> bytes:
    """One record's frame, checksum first."""
    from zlib import crc32  # here, not at import: a hit never frames (0.7 M instructions)

    name = function_id.encode()
    body = b"".join([struct.pack(">HI", len(name), len(data)), name, bytes.fromhex(digest), data])
    return struct.pack(">I", crc32(body)) + body


def _check(view: memoryview, pos: int, end: int) -> int:
    """The frame at ``pos``: its size when whole and its checksum matches, 0 when not
    whole yet (still being written), -size when whole and damaged."""
    if end - pos < FRAME.size:
        return 0
    crc, nlen, dlen = FRAME.unpack_from(view, pos)
    size: int = FRAME.size + nlen + DIGEST + dlen
    if end - pos < size:
        return 0
    from zlib import crc32  # here, not at import (see frame)

    return size if crc32(view[pos + 4 : pos + size]) == crc else -size


def parse(buf: bytes | memoryview, base: int) -> tuple[list[tuple[Key, int, int]], int, bool, int]:
    """The whole frames in ``buf`` (read from offset ``base`` of a segment).

    Returns ``(entries, consumed, torn, skipped)``: each entry is ``(key, offset,
    length)`` of the record bytes in the segment; ``consumed`` bytes of ``buf`` were
    whole frames; ``skipped`` damaged frames were passed over: a frame whose checksum
    fails is skipped when the frame its lengths lead to is whole and checks (a flipped
    bit in one record costs that record only), and waited on while nothing whole follows
    it; ``torn`` when the frame after a damaged one is damaged too (its lengths cannot be
    trusted: the segment ends there for the reader).
    """
    from zlib import crc32  # here, not at import: a hit from a pack never parses a segment

    view = memoryview(buf)
    entries: list[tuple[Key, int, int]] = []
    pos = 0
    skipped = 0
    end = len(view)
    while end - pos >= FRAME.size:
        crc, nlen, dlen = FRAME.unpack_from(view, pos)
        size = FRAME.size + nlen + DIGEST + dlen
        if end - pos < size:
            break  # still being written (or torn by a crash: then it stays short)
        if crc32(view[pos + 4 : pos + size]) != crc:
            after = _check(view, pos + size, end)
            if after == 0:
                break  # nothing whole after it yet: look again when the segment grew
            if after < 0:
                return entries, pos, True, skipped
            skipped += 1  # the next frame checks: only this one is damaged
            pos += size
            continue
        at = pos + FRAME.size
        try:
            name = bytes(view[at : at + nlen]).decode()
        except UnicodeDecodeError:
            return entries, pos, True, skipped
        digest = bytes(view[at + nlen : at + nlen + DIGEST]).hex()
        start = at + nlen + DIGEST
        entries.append(((name, digest), base + start, dlen))
        pos += size
    return entries, pos, False, skipped


def damaged_head(rest: bytes | memoryview) -> bool:
    """Whether ``rest`` (what follows a segment's parsed frames) starts with a whole frame
    that fails its checksum: damage, where a short frame is one a crash cut off."""
    view = memoryview(rest)
    return _check(view, 0, len(view)) < 0


class SegmentView:
    """What a reader has parsed of one segment so far: key -> (offset, length)."""

    __slots__ = ("damaged", "entries", "fd", "parsed", "path", "torn")

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.parsed = 0
        self.torn = False
        self.damaged = 0  # frames skipped for a bad checksum
        self.entries: dict[Key, tuple[int, int]] = {}

    def add(self, found: list[tuple[Key, int, int]]) -> None:
        for key, offset, length in found:
            self.entries[key] = (offset, length)

    def names(self) -> Iterator[str]:
        seen: set[str] = set()
        for name, _ in self.entries:
            if name not in seen:
                seen.add(name)
                yield name
