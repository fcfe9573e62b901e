"""Codec 2: a large payload as independent zstd frames and a seek table, (de)compressed on threads.

One zstd frame is decoded by one core (1-3 GB/s here). Cutting the payload
into frames of :data:`CHUNK` uncompressed bytes, each compressed on its own,
lets a pool of threads compress and decompress them side by side:
python-zstandard releases the GIL while it works. Each frame is decompressed
straight into its slice of the buffer the value will live in, so a load
still costs one allocation and no copy.

The frames are followed by a seek table in zstd's published *seekable
format* (``contrib/seekable_format/zstd_seekable_compression_format.md`` in
the zstd repository): a skippable frame (magic ``0x184D2A5E``) listing each
frame's compressed and decompressed size, then a footer (frame count, a
descriptor byte, magic ``0x8F92EAB1``). Since a skippable frame is valid
zstd, ``zstd -d`` still decodes such a payload whole. The layout is in
``docs/format.md``.
"""

from __future__ import annotations

import os
import struct
import threading
from collections import deque
from collections.abc import Iterator, Sequence

from fleche.errors import CorruptObjectError, SerializationError
from fleche.store import ReadableFile, writable_buffer

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any

if TYPE_CHECKING:  # concurrent.futures loads with the pool, on the first large value
    from concurrent.futures import Future, ThreadPoolExecutor

    import zstandard

CHUNK = 8 << 20
"""Uncompressed bytes per frame (the last one holds the rest). Also the read step when streaming."""
FRAMES_MIN = CHUNK + 1
"""Compressed payloads from this size (two frames or more) are stored as frames. Measured on
2 cores (int64 labels, zstd level 1): 12 MiB stored in 15 ms and loaded in 6.2 ms as frames,
21 and 8.5 ms as one frame; 9 MiB (8 + 1) 15/6.5 against 16/6.7 ms; the seek table adds
25-40 bytes. One frame alone would gain nothing, so up to ``CHUNK`` codec 1 stays."""

SKIPPABLE_MAGIC = 0x184D2A5E
SEEKABLE_MAGIC = 0x8F92EAB1
ZSTD_MAGIC = 0xFD2FB528
_U32 = struct.Struct("<I")
_SKIP_HEAD = struct.Struct("<II")  # skippable magic, frame size (excluding these 8 bytes)
_ENTRY = struct.Struct("<II")  # compressed size, decompressed size
_FOOTER = struct.Struct("<IBI")  # number of frames, descriptor, seekable magic
_CHECKSUMS = 0x80  # descriptor bit 7: each entry carries 4 more bytes (XXH64 bits, unused here)
_RESERVED = 0x7C  # descriptor bits 6-2: must be 0
_BLOCK_MAX = 128 << 10  # zstd's largest block, compressed or not
_FRAME_HEADER_MAX = 18  # zstd's longest frame header


class _Zstandard:
    """``zstandard``, imported on first use of one of its names (the first compressed frame).

    Importing it costs ~25 M instructions (~10 ms), half of them in the ``platform`` and
    ``typing`` it imports, while a small record or value is stored raw: a hit on one reads
    no zstd. Each name is looked up once, then kept as an attribute of this stand-in.
    """

    def __getattr__(self, name: str) -> Any:
        import zstandard as module

        value = getattr(module, name)
        setattr(self, name, value)
        return value


if not TYPE_CHECKING:
    zstandard = _Zstandard()

# One pool for the process, made on first use: compressing and decompressing
# frames are short GIL-free tasks, so more threads than cores would only queue.
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def workers() -> int:
    """Threads in the pool: one per core, at most 8 (memory bandwidth is spent by then)."""
    return max(1, min(os.cpu_count() or 1, 8))


def _get_pool() -> ThreadPoolExecutor:
    global _pool
    pool = _pool
    if pool is None:
        with _pool_lock:
            if _pool is None:
                from concurrent.futures import ThreadPoolExecutor

                _pool = ThreadPoolExecutor(workers(), thread_name_prefix="fleche-zstd")
            pool = _pool
    return pool


def _forget_pool() -> None:
    """In a forked child the pool's threads do not exist: make a new pool when needed."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)

# zstandard's (de)compressor objects must not be used by two threads at once,
# and building one per call costs ~10 µs: keep one per thread.
_local = threading.local()


def compressor(level: int) -> zstandard.ZstdCompressor:
    """This thread's compressor for ``level`` (every zstd user in fleche shares them)."""
    cs: dict[int, zstandard.ZstdCompressor] = _local.__dict__.setdefault("c", {})
    c = cs.get(level)
    if c is None:
        c = cs[level] = zstandard.ZstdCompressor(level=level)
    return c


def _compress(chunk: Any, level: int) -> bytes:
    return compressor(level).compress(chunk)


def decompressor() -> zstandard.ZstdDecompressor:
    """This thread's decompressor."""
    d = _local.__dict__.get("d")
    if d is None:
        d = _local.d = zstandard.ZstdDecompressor()
    return d


def payload_buffer(size: int, where: str) -> Any:
    """A fresh writable buffer for a payload of ``size`` bytes, a length already checked
    against the file (``codec_unframe.check_length``).

    A machine that cannot hold the value is not a damaged file: SerializationError, a
    miss that leaves the file where it is (it loads on a larger machine), rather than
    a MemoryError, or an OSError that would make the whole store look unreachable.
    """
    try:
        return writable_buffer(size)
    except (MemoryError, OverflowError, OSError, ValueError) as e:
        raise SerializationError(
            f"{where} holds {size:,} bytes, more memory than this process can have "
            f"({type(e).__name__}: {e}): load it on a machine with more memory"
        ) from e


# --- writing ---------------------------------------------------------------------------------


def _chunks(parts: Sequence[Any]) -> Iterator[Any]:
    """The payload cut into ``CHUNK``-byte buffers: views of the parts, copies only across parts."""
    step = CHUNK
    pending: list[memoryview] = []
    have = 0
    for part in parts:
        mv = memoryview(part).cast("B")
        pos, end = 0, mv.nbytes
        while pos < end:
            if not have and end - pos >= step:
                yield mv[pos : pos + step]
                pos += step
                continue
            take = min(step - have, end - pos)
            pending.append(mv[pos : pos + take])
            have, pos = have + take, pos + take
            if have == step:
                yield b"".join(pending)
                pending, have = [], 0
    if pending:
        yield pending[0] if len(pending) == 1 else b"".join(pending)


def seek_table(entries: Sequence[tuple[int, int]]) -> bytes:
    """The seek-table skippable frame for frames of ``(compressed, decompressed)`` sizes."""
    body = b"".join(_ENTRY.pack(c, d) for c, d in entries)
    body += _FOOTER.pack(len(entries), 0, SEEKABLE_MAGIC)
    return _SKIP_HEAD.pack(SKIPPABLE_MAGIC, len(body)) + body


def compressed_frames(parts: Sequence[Any], level: int) -> Iterator[bytes]:
    """The payload as independent zstd frames, in order, then the seek table.

    Chunks are compressed on the shared pool, at most ``workers() + 1`` ahead
    of the consumer: a store writing the frames as they come holds the value
    plus a few chunks, however large the value. The bytes depend only on the
    payload and the level (each chunk is one ``ZstdCompressor.compress``
    call), so the streamed and in-memory paths write identical objects.
    """
    pool, ahead = _get_pool(), workers() + 1
    inflight: deque[tuple[Future[bytes], int]] = deque()
    entries: list[tuple[int, int]] = []
    try:
        for chunk in _chunks(parts):
            inflight.append((pool.submit(_compress, chunk, level), memoryview(chunk).nbytes))
            del chunk
            if len(inflight) > ahead:
                out, raw = inflight.popleft()
                frame = out.result()
                entries.append((len(frame), raw))
                yield frame
        while inflight:
            out, raw = inflight.popleft()
            frame = out.result()
            entries.append((len(frame), raw))
            yield frame
    finally:
        for fut, _ in inflight:  # abandoned half-way (a failed write): drop what is queued
            fut.cancel()
    yield seek_table(entries)


# --- reading a payload held in memory ---------------------------------------------------------


def most_decoded(compressed: int) -> int:
    """Most bytes ``compressed`` bytes of zstd can decode to: each block of at most 128 KiB
    costs at least 4 bytes (a run-length block). Checked before anything is allocated."""
    return (compressed // 4) * _BLOCK_MAX


def _table_entries(view: memoryview, where: str) -> tuple[list[tuple[int, int]], int]:
    """The ``(compressed, decompressed)`` sizes listed by the seek table that ends ``view``,
    and the table's length in bytes."""
    total = view.nbytes
    if total < _SKIP_HEAD.size + _FOOTER.size:
        raise CorruptObjectError(
            f"{where} is truncated: {total} bytes of payload cannot hold a zstd seek table"
        )
    count, descriptor, magic = _FOOTER.unpack_from(view, total - _FOOTER.size)
    if magic != SEEKABLE_MAGIC:
        raise CorruptObjectError(
            f"{where} is truncated or damaged: its payload does not end in a zstd seek table"
        )
    if descriptor & _RESERVED:
        raise CorruptObjectError(f"{where} has a seek table with reserved bits set")
    entry = _ENTRY.size + (4 if descriptor & _CHECKSUMS else 0)
    table = _SKIP_HEAD.size + count * entry + _FOOTER.size
    if table > total:
        raise CorruptObjectError(
            f"{where} is damaged: its seek table lists {count} frames, more than "
            f"{total} bytes of payload hold"
        )
    skip, length = _SKIP_HEAD.unpack_from(view, total - table)
    if skip != SKIPPABLE_MAGIC or length != table - _SKIP_HEAD.size:
        raise CorruptObjectError(f"{where} is damaged: its seek table's frame header is wrong")
    first = total - table + _SKIP_HEAD.size
    return [_ENTRY.unpack_from(view, first + k * entry) for k in range(count)], table


def read_seek_table(body: Any, size: int, where: str) -> list[tuple[int, int, int, int]]:
    """Parse and check the seek table at the end of ``body``: ``(offset, length, out offset,
    out length)`` per frame.

    Every frame must lie in the payload, back to back up to the table, and
    the decompressed sizes must add up to the header's length: a damaged
    table is reported here, before the output buffer is allocated.
    """
    view = memoryview(body).cast("B")
    entries, table = _table_entries(view, where)
    end = view.nbytes - table
    frames, pos, out = [], 0, 0
    for k, (c, d) in enumerate(entries):
        if not 0 < d <= most_decoded(c) or pos + c > end:
            raise CorruptObjectError(
                f"{where} is damaged: its seek table says frame {k} holds {d} bytes in {c}, "
                f"at offset {pos} of {end} bytes of frames"
            )
        frames.append((pos, c, out, d))
        pos, out = pos + c, out + d
    if pos != end or out != size:
        raise CorruptObjectError(
            f"{where} is damaged: its seek table covers {pos} of {end} bytes of frames "
            f"and {out} of the {size} bytes its header states"
        )
    return frames


def _decode(frame: Any, out: memoryview) -> None:
    """Decompress one frame into exactly ``out`` (its slice of the value's buffer)."""
    want = out.nbytes
    # read_across_frames: bytes after the frame are decoded as a next frame, and fail
    with decompressor().stream_reader(frame, read_across_frames=True) as r:
        got = 0
        while got < want and (n := r.readinto(out[got:])):
            got += n
        if got < want:
            raise zstandard.ZstdError(f"a frame ends after {got} of its {want} bytes")
        if r.read(1):
            raise zstandard.ZstdError(f"a frame holds more than its {want} bytes")


def _finish(futures: Sequence[Future[None]]) -> None:
    """Wait for every task; on a failure cancel the rest and raise the first error."""
    try:
        for fut in futures:
            fut.result()
    except BaseException:
        for fut in futures:
            fut.cancel()
        from concurrent.futures import wait as wait_all

        wait_all(futures)
        raise


def decompress_frames(body: Any, size: int, where: str) -> memoryview:
    """Decompress a codec-2 payload held in memory into one fresh writable buffer, on the pool.

    Raises ``CorruptObjectError`` for a damaged seek table and
    ``zstandard.ZstdError`` for a damaged frame.
    """
    view = memoryview(body).cast("B")
    frames = read_seek_table(view, size, where)
    out = memoryview(payload_buffer(size, where))
    if len(frames) == 1:
        pos, c, at, d = frames[0]
        _decode(view[pos : pos + c], out[at : at + d])
        return out
    pool = _get_pool()
    _finish(
        [pool.submit(_decode, view[pos : pos + c], out[at : at + d]) for pos, c, at, d in frames]
    )
    return out


# --- reading a payload from a file, chunk by chunk ---------------------------------------------


class _Spool:
    """A file read ``CHUNK`` bytes at a time, handing out byte ranges of it.

    A range inside one read is a view of it (no copy); a range across reads
    is joined. Reads nobody refers to any more are freed, so memory stays at
    the frames in flight plus a read or two.
    """

    def __init__(self, f: ReadableFile) -> None:
        self._f = f
        self._reads: deque[tuple[int, bytes]] = deque()  # (offset in the payload, data)
        self.end = 0  # payload bytes read so far

    def fill(self, upto: int) -> bool:
        """Read until ``upto`` bytes have been read; False if the file ends first."""
        while self.end < upto:
            more = self._f.read(max(CHUNK, upto - self.end))
            if not more:
                return False
            self._reads.append((self.end, more))
            self.end += len(more)
        return True

    def get(self, start: int, stop: int) -> Any:
        """Bytes ``start:stop``, read already and not released."""
        pieces = []
        for at, data in self._reads:
            if at >= stop:
                break
            if at + len(data) > start:
                pieces.append(memoryview(data)[max(start - at, 0) : stop - at])
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def release(self, upto: int) -> None:
        """Forget the reads that end before payload offset ``upto`` (frames in flight keep
        their own views of them)."""
        reads = self._reads
        while reads and reads[0][0] + len(reads[0][1]) <= upto:
            reads.popleft()


def _frame_extent(spool: _Spool, start: int, most: int, where: str) -> tuple[int, int]:
    """``(end, content size)`` of the zstd frame at payload offset ``start``, found by walking
    its block headers (the seek table comes last, so a stream has to find frames itself).

    A frame stating more than ``most`` bytes (what the header's length leaves) is
    refused before its blocks are read."""
    spool.fill(start + _FRAME_HEADER_MAX)  # shorter at the file's end: the parse below fails
    head = bytes(spool.get(start, min(start + _FRAME_HEADER_MAX, spool.end)))
    try:
        params = zstandard.get_frame_parameters(head)
        pos = start + zstandard.frame_header_size(head)
    except zstandard.ZstdError as e:
        raise CorruptObjectError(
            f"{where} is damaged: no zstd frame header at payload offset {start} ({e})"
        ) from e
    if params.content_size in (zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR):
        raise CorruptObjectError(f"{where} has a zstd frame without its size at offset {start}")
    if not 0 < params.content_size <= most:
        raise CorruptObjectError(
            f"{where} is damaged: the frame at offset {start} states {params.content_size} "
            f"bytes, where {most} remain of the length its header states"
        )
    limit = start + params.content_size + (params.content_size >> 7) + _BLOCK_MAX + 64
    last = False
    while not last:
        if not spool.fill(pos + 3):
            raise CorruptObjectError(f"{where} is truncated inside the frame at offset {start}")
        (h,) = _U32.unpack(bytes(spool.get(pos, pos + 3)) + b"\0")
        last, kind, n = bool(h & 1), (h >> 1) & 3, h >> 3
        if kind == 3 or n > _BLOCK_MAX:
            raise CorruptObjectError(f"{where} is damaged: bad zstd block at offset {pos}")
        pos += 3 + (1 if kind == 1 else n)
        if pos > limit:
            raise CorruptObjectError(
                f"{where} is damaged: the frame at offset {start} runs past its bound"
            )
    return pos + (4 if params.has_checksum else 0), params.content_size


def decompress_stream(f: ReadableFile, size: int, tail: int, where: str) -> tuple[Any, bytes]:
    """Decompress a codec-2 payload read from ``f``; returns ``(payload, the bytes after it)``.

    Frames are found as they are read and decoded on the pool into their
    slices of one buffer, at most ``workers() + 1`` at a time: memory is the
    value plus a few compressed frames. The seek table, read last, must
    list exactly the frames seen. ``tail`` is how many bytes may follow the
    payload (a signature trailer); they are returned for the caller to check.
    ``size`` is allocated first: the caller has checked it against the file's size.
    """
    spool = _Spool(f)
    out = memoryview(payload_buffer(size, where))
    pool, ahead = _get_pool(), workers() + 1
    inflight: deque[Future[None]] = deque()
    seen: list[tuple[int, int]] = []
    pos = done = 0
    try:
        while done < size:
            if not spool.fill(pos + 4):
                raise CorruptObjectError(
                    f"{where} is truncated: its frames end after {done} of {size} bytes"
                )
            (magic,) = _U32.unpack(bytes(spool.get(pos, pos + 4)))
            if magic == SKIPPABLE_MAGIC:
                raise CorruptObjectError(
                    f"{where} is damaged: its frames hold {done} of the {size} bytes "
                    "its header states"
                )
            if magic != ZSTD_MAGIC:
                raise CorruptObjectError(
                    f"{where} is damaged: no zstd frame at payload offset {pos} "
                    f"({done} of {size} bytes decoded)"
                )
            end, d = _frame_extent(spool, pos, size - done, where)
            if not spool.fill(end):
                raise CorruptObjectError(f"{where} is truncated inside the frame at offset {pos}")
            frame = spool.get(pos, end)
            spool.release(end)
            inflight.append(pool.submit(_decode, frame, out[done : done + d]))
            del frame
            if len(inflight) > ahead:
                inflight.popleft().result()
            seen.append((end - pos, d))
            pos, done = end, done + d
        _finish(inflight)
    except BaseException:
        for fut in inflight:
            fut.cancel()
        from concurrent.futures import wait as wait_all

        wait_all(inflight)
        raise
    # The rest is the seek table, then ``tail`` bytes; read one more to see padding.
    longest = _SKIP_HEAD.size + 12 * len(seen) + _FOOTER.size
    spool.fill(pos + longest + tail + 1)
    rest = spool.get(pos, spool.end)
    rest = memoryview(rest if isinstance(rest, bytes) else bytes(rest))
    cut = rest.nbytes - tail
    if cut < 0 or cut > longest:
        raise CorruptObjectError(
            f"{where} is truncated or padded: {rest.nbytes} bytes follow its frames"
        )
    entries, table = _table_entries(rest[:cut], where)
    if table != cut or [tuple(e) for e in entries] != seen:
        raise CorruptObjectError(
            f"{where} is damaged: its seek table does not list the {len(seen)} frames it holds"
        )
    return out, bytes(rest[cut:])
