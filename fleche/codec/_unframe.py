"""Reading frames back: check the header, the length, the hash and the signature; decompress.

The other half of :mod:`fleche.codec._frame`. A compressed payload is
decompressed straight into the buffer the value will live in; a streamed
read (``ObjectStore.open_read``) costs the value's size plus a few chunks.
Codec 2 payloads (many zstd frames, :mod:`fleche.codec._zframes`) are
decompressed on several threads, from memory or from a stream alike.

Nothing is allocated from a length the file states before that length is
checked against what the file can hold (:func:`check_length`): the payload's
real size when stored raw, what zstd can make of the compressed bytes
otherwise, and :data:`~fleche.codec._frame.MAX_LENGTH` in any case. In a signed
store this is what makes an unsigned length harmless: the signature covers
the uncompressed payload, so it can only be checked after decompressing.
"""

from __future__ import annotations

import os
import stat

import xxhash

from fleche.codec._base import HEADER_SIZE, LazyModule
from fleche.codec._frame import (
    _KNOWN_FLAGS,
    CHUNK,
    CODEC_RAW,
    CODEC_ZSTD,
    CODEC_ZSTD_FRAMES,
    CODECS,
    FLAG_SIGNED,
    FORMAT,
    HEADER,
    LARGE,
    MAGIC,
    MAX_LENGTH,
)
from fleche.codec._sign import TRAILER_SIZE, Signer
from fleche.errors import CorruptObjectError
from fleche.store import ReadableFile

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any

    from fleche.codec import _zframes as zframes
else:
    zframes = LazyModule("fleche.codec._zframes")  # large payloads only: not a small hit

if TYPE_CHECKING:
    import zstandard
else:
    zstandard = LazyModule("zstandard")  # imported on the first compressed frame


def _decompressor() -> Any:
    """``zframes.decompressor()``: one per thread (not safe to share, ~10 µs to make)."""
    return zframes.decompressor()


_PIPE_READ = 1 << 20  # a read of a file of unknown size: what it allocates for each
_ZSTD_HEADER_MAX = 18  # the longest zstd frame header: it holds the frame's content size


def check_length(codec: int, size: int, stored: int, where: str) -> None:
    """Refuse a header's payload length ``size`` that ``stored`` bytes of payload cannot hold.

    Called before anything is allocated from ``size``, so a damaged or forged
    header (a flipped high bit asks for exabytes) is a corrupt file, never a
    MemoryError. Raw, the payload is exactly ``size`` bytes; compressed, 4
    bytes of zstd make at most 128 KiB; never more than ``MAX_LENGTH``.
    """
    if codec == CODEC_RAW:
        if size != stored:
            raise CorruptObjectError(
                f"{where} is truncated or padded: payload {stored} bytes, header says {size}"
            )
    elif size > MAX_LENGTH or size > zframes.most_decoded(stored):
        raise CorruptObjectError(
            f"{where} is damaged: its header states a payload of {size:,} bytes, more than "
            f"{stored:,} bytes of zstd can hold"
        )


def _check_content_size(frame: Any, size: int) -> None:
    """A zstd frame states its content size (fleche always writes it): it must be ``size``.

    Checked before decompressing, so the output is never larger than the length the
    header states and :func:`check_length` allowed.
    """
    declared = zstandard.frame_content_size(frame)
    if declared != size:
        said = "does not state its size" if declared < 0 else f"holds {declared} bytes"
        raise zstandard.ZstdError(f"the zstd frame {said}, the header says {size}")


def _decompress(body: Any, size: int, where: str = "object") -> Any:
    """Decompress a zstd payload of known size; large ones straight into a writable buffer.

    The buffer is the one the value will live in (a numpy array, an Arrow
    table is a view of it), so a large object costs one allocation, no copy.
    """
    _check_content_size(body, size)
    if size <= LARGE:
        d = _decompressor().decompressobj()
        out = d.decompress(body)
        if d.unused_data:  # bytes after the frame: not what was written
            raise zstandard.ZstdError(f"{len(d.unused_data)} bytes follow the zstd frame")
        if len(out) < size:  # a decompressobj waits for more input instead of failing
            raise zstandard.ZstdError(f"the frame ends after {len(out)} of {size} bytes")
        return out
    # read_across_frames: bytes after the frame are decoded as a next frame, and fail
    reader = _decompressor().stream_reader(body, read_across_frames=True)
    return _decompress_from(reader, size, where)


def _decompress_from(reader: Any, size: int, where: str) -> Any:
    """Read exactly ``size`` decompressed bytes from ``reader`` into a fresh writable buffer."""
    buf = zframes.payload_buffer(size, where)
    view, got = memoryview(buf), 0
    with reader:
        while got < size and (n := reader.readinto(view[got:])):
            got += n
        if reader.read(1):
            raise zstandard.ZstdError("payload decompresses to more than its header says")
    return view if got == size else view[:got]


def read_frame_header(blob: Any, where: str = "object") -> tuple[int, int, int, bytes, int]:
    """Parse and check a frame header; returns (codec, serializer, raw length, hash, flags)."""
    if len(blob) < HEADER_SIZE:
        raise CorruptObjectError(
            f"{where} is truncated: {len(blob)} bytes, shorter than the {HEADER_SIZE}-byte header"
        )
    magic, fmt, codec, ser, flags, size, digest = HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise CorruptObjectError(f"{where} is not a fleche object (bad magic {magic!r})")
    if fmt != FORMAT:
        raise CorruptObjectError(
            f"{where} has object format {fmt}; this fleche reads format {FORMAT}: upgrade fleche"
        )
    if codec not in CODECS:
        raise CorruptObjectError(f"{where} uses unknown codec {codec}")
    if flags & ~_KNOWN_FLAGS:
        raise CorruptObjectError(
            f"{where} sets header flags {flags:#04x}, unknown to this fleche: upgrade fleche"
        )
    return codec, ser, size, digest, flags


def read_header(blob: Any, where: str = "object") -> tuple[int, int, int, bytes]:
    """Parse and check a frame header; returns (codec, serializer, raw length, hash)."""
    return read_frame_header(blob, where)[:4]


def _check(payload: Any, size: int, digest: bytes, where: str, expect: str | None) -> None:
    if len(payload) != size:
        raise CorruptObjectError(
            f"{where} decompressed to {len(payload)} bytes, header says {size}"
        )
    if xxhash.xxh3_128_digest(payload) != digest:
        raise CorruptObjectError(f"{where} failed its integrity check (XXH3-128 mismatch)")
    if expect is not None and digest.hex() != expect:
        raise CorruptObjectError(f"{where} holds object {digest.hex()}, not {expect}")


def unframe(
    blob: Any,
    where: str = "object",
    *,
    expect: str | None = None,
    signer: Signer | None = None,
    record: bool = False,
    name: bytes = b"",
) -> tuple[int, Any]:
    """Check and decompress a frame; returns (serializer id, payload buffer).

    ``expect`` is the oid the caller asked for: a file stored under the wrong
    name is as corrupt as a flipped bit.  A raw payload comes back as a
    zero-copy memoryview of ``blob``. With ``signer``, the frame must carry a
    valid signature (for a record: of ``name``); without, a trailer is skipped.
    """
    codec, ser, size, digest, flags = read_frame_header(blob, where)
    body = memoryview(blob)[HEADER_SIZE:]
    trailer = None
    if flags & FLAG_SIGNED:
        if body.nbytes < TRAILER_SIZE:
            raise CorruptObjectError(f"{where} is truncated: its signature trailer is missing")
        trailer, body = body[-TRAILER_SIZE:], body[:-TRAILER_SIZE]
    if codec == CODEC_RAW:
        if body.nbytes != size:  # check_length's test, inline: this is the hit path
            check_length(codec, size, body.nbytes, where)
        payload: Any = body
    else:
        check_length(codec, size, body.nbytes, where)
        try:
            if codec == CODEC_ZSTD_FRAMES:
                payload = zframes.decompress_frames(body, size, where)
            else:
                payload = _decompress(body, size, where)
        except zstandard.ZstdError as e:
            raise CorruptObjectError(f"{where} is truncated or damaged (zstd: {e})") from e
    _check(payload, size, digest, where, expect)
    if signer is not None:
        signer.check(trailer, ser, payload, where, record=record, name=name)
    return ser, payload


class _Prefixed:
    """A file whose first bytes were read already (to look at them): they come first again."""

    def __init__(self, first: bytes, f: ReadableFile) -> None:
        self._first, self._f = first, f

    def read(self, size: int = -1) -> bytes:
        first, self._first = self._first, b""
        if size < 0:
            return first + self._f.read()
        if len(first) >= size:
            first, self._first = first[:size], first[size:]
            return first
        return first + (self._f.read(size - len(first)) or b"")


class _HoldBack:
    """Reads a file but keeps its last ``n`` bytes back: a streamed frame's trailer.

    The zstd reader reads ahead; without this it would swallow the trailer
    (and see it as bytes after the frame).
    """

    def __init__(self, f: ReadableFile | _Prefixed, n: int) -> None:
        self._f, self._n = f, n
        self.held = b""

    def read(self, size: int = -1) -> bytes:
        if size == 0:
            return b""
        if size < 0:
            got = self.held + self._f.read()
        else:
            got = self.held + (self._f.read(size) or b"")
            while len(got) <= self._n:  # nothing to hand out yet: read on, unless at the end
                more = self._f.read(size)
                if not more:
                    break
                got += more
        if len(got) <= self._n:
            self.held = got
            return b""
        self.held = got[-self._n :]
        return got[: -self._n]

    def readinto(self, buf: Any) -> int:
        data = self.read(memoryview(buf).nbytes)
        memoryview(buf)[: len(data)] = data
        return len(data)


def unframe_stream(
    f: ReadableFile,
    where: str = "object",
    *,
    expect: str | None = None,
    signer: Signer | None = None,
) -> tuple[int, Any]:
    """:func:`unframe` for a file opened with ``ObjectStore.open_read``: bounded extra memory.

    The payload is read (or decompressed) ``CHUNK`` by ``CHUNK`` straight into
    one writable buffer, so loading a 1 GiB object costs 1 GiB, not two.
    Codec 2 frames are decompressed on several threads as they arrive. The
    header's length is checked against the file's size before that buffer is
    allocated; a file that cannot tell its size (a pipe) is read whole and
    handed to :func:`unframe`.
    """
    total = _file_size(f)
    if total is None:
        return unframe(_read_all(f), where, expect=expect, signer=signer)
    head = _read_upto(f, HEADER_SIZE)  # a socket-like file may return less than asked
    codec, ser, size, digest, flags = read_frame_header(head, where)
    signed = bool(flags & FLAG_SIGNED)
    stored = total - HEADER_SIZE - TRAILER_SIZE * signed
    if stored < 0:
        raise CorruptObjectError(f"{where} is truncated: its signature trailer is missing")
    check_length(codec, size, stored, where)
    trailer = None
    try:
        if codec == CODEC_ZSTD_FRAMES:
            payload, after = zframes.decompress_stream(f, size, TRAILER_SIZE * signed, where)
            trailer = after if signed else None
        elif codec == CODEC_ZSTD:
            first = _read_upto(f, _ZSTD_HEADER_MAX)
            _check_content_size(first, size)
            rest = _Prefixed(first, f)
            src: Any = _HoldBack(rest, TRAILER_SIZE) if signed else rest
            reader = _decompressor().stream_reader(src, read_size=CHUNK)
            payload = _decompress_from(reader, size, where)
            if signed:  # the zstd reader stopped at the frame's end: the rest is the trailer
                trailer = src.held + _read_upto(rest, TRAILER_SIZE + 1)
        else:
            buf = zframes.payload_buffer(size, where)
            view, got = memoryview(buf), 0
            while got < size and (n := f.readinto(view[got : got + CHUNK])):
                got += n
            if signed:
                trailer = _read_upto(f, TRAILER_SIZE)
            if got == size and f.read(1):
                raise CorruptObjectError(f"{where} is padded: payload longer than {size} bytes")
            payload = view[:got]
    except zstandard.ZstdError as e:
        raise CorruptObjectError(f"{where} is truncated or damaged (zstd: {e})") from e
    if signed and (trailer is None or len(trailer) != TRAILER_SIZE):
        raise CorruptObjectError(f"{where} is truncated or padded around its signature trailer")
    _check(payload, size, digest, where, expect)
    if signer is not None:
        signer.check(trailer, ser, payload, where)
    return ser, payload


def _file_size(f: Any) -> int | None:
    """How many bytes ``f`` (just opened) holds, when it can tell without reading them.

    fsspec's files (S3, memory) and fleche's SFTP reader know it; a local file
    has a descriptor to stat; a buffer can seek. None for a pipe.
    """
    for holder in (f, getattr(f, "raw", None)):
        size = getattr(holder, "size", None)
        if type(size) is int:
            return size
    try:
        st = os.fstat(f.fileno())
        if stat.S_ISREG(st.st_mode):
            return st.st_size
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        pass
    try:
        if f.seekable():
            here = int(f.tell())
            end = int(f.seek(0, os.SEEK_END))
            f.seek(here)
            return end - here
    except (AttributeError, OSError, ValueError):
        pass
    return None


def _read_all(f: ReadableFile) -> bytes:
    return b"".join(iter(lambda: f.read(_PIPE_READ) or b"", b""))


def _read_upto(f: ReadableFile | _Prefixed, n: int) -> bytes:
    out = b""
    while len(out) < n and (more := f.read(n - len(out))):
        out += more
    return out
