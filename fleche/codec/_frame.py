"""Frames: the 32-byte self-checking header and compression decisions; writing them.

Every file fleche stores (value objects and call records alike) is a *frame*:
a header followed by a payload that may be zstd-compressed. The header
carries the XXH3-128 of the *uncompressed* payload, so every file verifies
itself, and a value object's name (its oid) is that same hash: changing the
compression level never renames an object. The layout is specified in
``docs/format.md``.

Large objects never need two copies in memory: an incompressible payload is
written from the value's own buffers, a compressible one above
:data:`STREAM_MIN` is compressed chunk by chunk as the store writes it, and a
compressed payload is decompressed straight into the buffer the value will
live in (:mod:`fleche.codec._unframe` reads frames back). Compressed payloads
from :data:`fleche.codec._zframes.FRAMES_MIN` on are independent zstd frames
plus a seek table (codec 2), compressed and decompressed on several threads.
"""

from __future__ import annotations

import io
import struct
import threading
from collections.abc import Callable, Iterator, Sequence

import xxhash

from fleche.codec._base import HEADER_SIZE, LazyModule, Streamed, nbytes
from fleche.codec._sign import TRAILER_SIZE, Signer
from fleche.errors import SerializationError
from fleche.store import digest_parts

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any

    from fleche.codec import _zframes as zframes
else:
    zframes = LazyModule("fleche.codec._zframes")  # large payloads only: not a small hit

if TYPE_CHECKING:
    from concurrent.futures import Future

_Future: Any = None


def _future() -> Future[Any]:
    """A new Future; concurrent.futures (and the logging it loads, ~6 ms) loads on the first miss."""
    global _Future
    if _Future is None:
        from concurrent.futures import Future

        _Future = Future
    return _Future()  # type: ignore[no-any-return]


MAGIC = b"FLCH"
FORMAT = 1
HEADER = struct.Struct("<4sBBBBQ16s")  # magic, format, codec, serializer, flags, raw length, hash
assert HEADER.size == HEADER_SIZE

CODEC_RAW = 0
CODEC_ZSTD = 1
CODEC_ZSTD_FRAMES = 2
"""Independent zstd frames of ``codec_zframes.CHUNK`` bytes each, then a zstd seek table."""
CODECS = (CODEC_RAW, CODEC_ZSTD, CODEC_ZSTD_FRAMES)

MAX_LENGTH = 1 << 48
"""The largest payload length a reader believes (256 TiB: more than any machine's memory).
A header that states more is damaged; smaller lengths are checked against the file."""

FLAG_SIGNED = 0x01
"""Header flag: the file ends in a 32-byte signature trailer (:mod:`fleche.codec._sign`)."""
_KNOWN_FLAGS = FLAG_SIGNED

# Below this a payload is never worth compressing: zstd's frame overhead eats the gain.
MIN_COMPRESS = 128
# Small payloads compress whenever that saves 5%.  Above LARGE, zstd L1 runs at
# ~0.3-0.5 GB/s on this class of machine while writing runs at ~1-2 GB/s, so a
# large payload must save 20% to be worth the time (random float64 saves ~6%).
SMALL_RATIO = 0.95
LARGE = 1 << 20
LARGE_RATIO = 0.80
SAMPLE = 256 << 10
STREAM_MIN = 64 << 20
"""Payloads above this are compressed, written and read chunk by chunk (bounded memory)."""
CHUNK = 8 << 20
"""Bytes read from a store per step when streaming."""


def _compressor(level: int) -> Any:
    """``zframes.compressor(level)``: one per thread and level (not safe to share, ~10 µs to make)."""
    return zframes.compressor(level)


class Encoded:
    """A framed object ready for :func:`fleche.cache.put_encoded`.

    ``children`` are objects this one refers to (large array members stored
    on their own): they must be stored first. ``stream``, when set, yields the
    whole file (header first) compressed on the fly, and ``parts`` is empty:
    write it with ``ObjectStore.put_stream``.

    A large raw payload is hashed in a background thread (:attr:`pending`)
    while the store writes it: reading ``oid``, ``digest`` or ``parts`` waits
    for the hash, :meth:`ObjectStore.put_later` does not.
    """

    __slots__ = (
        "_digest",
        "_header",
        "_signer",
        "_signing",
        "_trailer",
        "children",
        "codec",
        "flags",
        "payload",
        "pending",
        "produce",
        "raw_size",
        "serializer",
        "stored_size",
        "stream",
    )

    def __init__(
        self,
        digest: bytes | Future[tuple[bytes, bytes]],
        codec: int,
        payload: list[Any],
        raw_size: int,
        stored_size: int,
        serializer: int,
        children: tuple[Encoded, ...] = (),
        stream: Callable[[], Iterator[Any]] | None = None,
        *,
        flags: int = 0,
        trailer: bytes = b"",
    ) -> None:
        ready = isinstance(digest, bytes)
        self._digest = digest if isinstance(digest, bytes) else None
        self._trailer = trailer if ready else None
        self.pending = None if isinstance(digest, bytes) else digest
        self._header: bytes | None = None
        self.codec = codec
        self.flags = flags
        self.payload = payload  # the buffers after the header, written back to back
        self.raw_size = raw_size  # uncompressed payload size
        self.stored_size = stored_size  # bytes on disk, header and trailer included; -1: unknown
        self.serializer = serializer
        self.children = children
        self.stream = stream
        self.produce: Callable[[Callable[[Any], object]], None] | None = None
        self._signer: Signer | None = None

    def _named(self) -> tuple[bytes, bytes]:
        """(digest, trailer), waiting for the background hash when there is one."""
        if self._digest is None or self._trailer is None:
            assert self.pending is not None
            if self.produce is not None and not self.pending.done():
                self.write_payload(_discard)  # no store took it: hashed for its name alone
            self._digest, self._trailer = self.pending.result()
        return self._digest, self._trailer

    @property
    def digest(self) -> bytes:
        """XXH3-128 of the uncompressed payload (waits for a background hash)."""
        return self._named()[0]

    @property
    def trailer(self) -> bytes:
        """The signature trailer, or ``b""`` for an unsigned frame (waits like ``digest``)."""
        return self._named()[1]

    @property
    def oid(self) -> str:
        """The object's name: its digest in hex."""
        return self.digest.hex()

    @property
    def header(self) -> bytes:
        """The 32-byte header, which carries the digest."""
        if self._header is None:
            self._header = HEADER.pack(
                MAGIC, FORMAT, self.codec, self.serializer, self.flags, self.raw_size, self.digest
            )
        return self._header

    @property
    def parts(self) -> list[Any]:
        """Header, payload buffers, trailer: the whole file (empty when streamed)."""
        if self.stream is not None:
            return []
        if self.produce is not None:  # produced into memory: for stores that cannot stream it
            chunks: list[Any] = []
            self.write_payload(chunks.append)
            return [self.header, *chunks, self.trailer] if self.trailer else [self.header, *chunks]
        trailer = self.trailer
        return [self.header, *self.payload, trailer] if trailer else [self.header, *self.payload]

    def named(self) -> Future[tuple[str, bytes, bytes]]:
        """A future of ``(oid, header, trailer)``, for ``ObjectStore.put_later``."""
        out: Future[tuple[str, bytes, bytes]] = _future()
        if self.pending is None:
            out.set_result((self.oid, self.header, self.trailer))
        else:
            self.pending.add_done_callback(lambda f: _name_done(self, f, out))
        return out

    def write_payload(self, write: Callable[[Any], object]) -> None:
        """Produce a streamed payload (see :func:`frame_streamed`) into ``write``.

        Until one run completes, each run hashes (and signs) the payload as it
        goes, which names the object; a write that failed half-way (a full
        disk) leaves it unnamed for the next layer to try. Later runs just
        give the same bytes again.
        """
        assert self.produce is not None and self.pending is not None
        if self.pending.done():
            self.produce(write)
            return
        h = xxhash.xxh3_128()
        signing = self._signer.start(self.serializer, self.raw_size) if self._signer else None
        got = 0

        def tee(data: Any) -> None:
            nonlocal got
            h.update(data)
            if signing is not None:
                signing.update(data)
            got += memoryview(data).nbytes
            write(data)

        self.produce(tee)
        if got != self.raw_size:
            raise SerializationError(
                f"the {self.serializer} serializer announced {self.raw_size} bytes "
                f"and produced {got}"
            )
        trailer = self._signer.finish(signing) if self._signer is not None else b""
        self.pending.set_result((h.digest(), trailer))

    def objects(self) -> Iterator[Encoded]:
        """This object's children (depth first), then itself: the order to store them in."""
        for child in self.children:
            yield from child.objects()
        yield self

    def chunks(self) -> Iterator[Any]:
        """The file's bytes in order, computed lazily when streamed."""
        return self.stream() if self.stream is not None else iter(self.parts)


def _discard(data: Any) -> None:
    """A ``write`` that keeps nothing."""


def _name_done(
    enc: Encoded, done: Future[tuple[bytes, bytes]], out: Future[tuple[str, bytes, bytes]]
) -> None:
    error = done.exception()
    if error is not None:
        out.set_exception(error)
    else:
        out.set_result((enc.oid, enc.header, enc.trailer))


HASH_AHEAD = 16 << 20
"""Payloads from this size are hashed in a thread while they are sampled and written."""
PRODUCE_MIN = 16 << 20
"""Payloads from this size that a serializer can write out piece by piece (a data frame as
Arrow) are written to the store as they are produced: the value is never held twice."""


def _hash_ahead(
    parts: Sequence[Any], signer: Signer | None, serializer: int
) -> Future[tuple[bytes, bytes]]:
    """Start hashing (and signing) ``parts`` in a thread; both release the GIL on large buffers.

    One short-lived thread per large object, not a pool: nothing to shut
    down, nothing inherited broken by a forked child.
    """
    out: Future[tuple[bytes, bytes]] = _future()

    def run() -> None:
        try:
            digest = digest_parts(parts)
            out.set_result((digest, signer.trailer(serializer, parts) if signer else b""))
        except BaseException as e:  # noqa: BLE001 - handed to whoever waits for the digest
            out.set_exception(e)

    threading.Thread(target=run, name="fleche-hash", daemon=True).start()
    return out


def _sample(parts: Sequence[Any], size: int, pieces: int = 4) -> bytes:
    """``SAMPLE`` bytes taken in ``pieces`` slices spread evenly over the whole payload.

    Spread, not from one part: a dict of many small random arrays has a
    compressible pickle stream as its largest part and incompressible data
    everywhere else.
    """
    want = SAMPLE // pieces
    starts = [max(0, (size * (2 * k + 1)) // (2 * pieces) - want // 2) for k in range(pieces)]
    out = bytearray()  # each slice may span many small parts: its bytes from every one
    offset = 0
    k = 0
    for part in parts:
        mv = memoryview(part).cast("B")
        end = offset + mv.nbytes
        while k < pieces:
            lo = max(starts[k], offset)
            hi = min(starts[k] + want, end)
            if lo < hi:
                out += mv[lo - offset : hi - offset]
            if starts[k] + want > end:
                break  # the slice goes on in the next part
            k += 1
        offset = end
        if k == pieces:
            break
    return bytes(out)


def _sample_pays(parts: Sequence[Any], level: int, size: int) -> bool:
    """Judge a large payload from 256 KiB sampled across it: does zstd save 20%?"""
    sample = _sample(parts, size)
    return len(_compressor(level).compress(sample)) <= LARGE_RATIO * len(sample)


def _worth_compressing(
    parts: Sequence[Any], size: int, level: int, min_size: int = MIN_COMPRESS
) -> bytes | None:
    """Return the compressed payload when compression pays, else None.

    Large payloads are judged from a sample of their largest part first, so an
    incompressible 100 MB array costs one 256 KiB trial, not a full pass.
    """
    if level <= 0 or size < min_size:
        return None
    c = _compressor(level)
    if size > LARGE:
        if not _sample_pays(parts, level, size):
            return None
        ratio = LARGE_RATIO
    else:
        ratio = SMALL_RATIO
    if len(parts) == 1:
        out = c.compress(parts[0])
    else:
        buf = io.BytesIO()
        with c.stream_writer(buf, closefd=False, size=size) as w:
            for p in parts:
                w.write(p)
        out = buf.getvalue()
    return out if len(out) <= ratio * size else None


def _framed_chunks(enc: Encoded, parts: Sequence[Any], level: int) -> Iterator[Any]:
    """The header, the payload as zstd frames compressed on the pool, the seek table, the trailer."""
    yield enc.header
    yield from zframes.compressed_frames(parts, level)
    if enc.trailer:
        yield enc.trailer


def _compressed_frames(parts: Sequence[Any], size: int, level: int) -> list[bytes] | None:
    """Codec 2's payload when compression pays (decided as ``_worth_compressing`` does), else None."""
    if size > LARGE and not _sample_pays(parts, level, size):
        return None
    frames = list(zframes.compressed_frames(parts, level))
    ratio = LARGE_RATIO if size > LARGE else SMALL_RATIO
    return frames if sum(len(f) for f in frames) <= ratio * size else None


def frame(
    parts: Sequence[Any],
    serializer: int,
    *,
    level: int = 1,
    digest: bytes | None = None,
    min_compress: int = MIN_COMPRESS,
    children: Sequence[Encoded] = (),
    size: int | None = None,
    signer: Signer | None = None,
) -> Encoded:
    """Frame a payload given as buffers: hash, maybe compress, prepend the header.

    A compressible payload above :data:`STREAM_MIN` is not compressed here:
    the returned object streams (``Encoded.stream``), so compressing 1 GiB
    never holds the compressed copy in memory. From :data:`HASH_AHEAD` bytes
    the hash runs in a thread, while the payload is sampled and written.
    From ``codec_zframes.FRAMES_MIN`` bytes a compressed payload is made of
    independent frames (codec 2), compressed on several threads.
    With ``signer`` the frame ends in a signature trailer.
    """
    if size is None:
        size = sum(nbytes(p) for p in parts)
    named: bytes | Future[tuple[bytes, bytes]]
    trailer = b""
    if digest is not None:
        named = digest
        trailer = signer.trailer(serializer, parts) if signer else b""
    elif size >= HASH_AHEAD:
        named = _hash_ahead(parts, signer, serializer)
    else:
        named = digest_parts(parts)
        trailer = signer.trailer(serializer, parts) if signer else b""
    flags, extra = (FLAG_SIGNED, TRAILER_SIZE) if signer else (0, 0)
    kids = tuple(children)
    compressing = level > 0 and size >= min_compress
    compressed: list[Any] | None = None
    if compressing and size > STREAM_MIN:  # judged from the sample alone, compressed as written
        if _sample_pays(parts, level, size):
            codec_id = CODEC_ZSTD_FRAMES
            enc = Encoded(
                named, codec_id, [], size, -1, serializer, kids, flags=flags, trailer=trailer
            )
            held = list(parts)
            enc.stream = lambda: _framed_chunks(enc, held, level)
            return enc
    elif compressing and size >= zframes.FRAMES_MIN:
        compressed, codec_id = _compressed_frames(parts, size, level), CODEC_ZSTD_FRAMES
    elif compressing:
        one = _worth_compressing(parts, size, level, min_compress)
        compressed, codec_id = (None if one is None else [one]), CODEC_ZSTD
    if compressed is None:
        codec_id, payload, stored = CODEC_RAW, list(parts), HEADER_SIZE + size + extra
    else:
        payload = compressed
        stored = HEADER_SIZE + sum(len(c) for c in compressed) + extra
    return Encoded(
        named, codec_id, payload, size, stored, serializer, kids, flags=flags, trailer=trailer
    )


def frame_streamed(streamed: Streamed, *, signer: Signer | None = None) -> Encoded:
    """Frame a payload that a serializer writes out on demand (stored raw, never in memory whole).

    Its name and signature are computed while it is written
    (``Encoded.write_payload``), so it is written with ``ObjectStore.put_produced``.
    """
    flags, extra = (FLAG_SIGNED, TRAILER_SIZE) if signer else (0, 0)
    size, ser = streamed.size, streamed.serializer
    enc = Encoded(_future(), CODEC_RAW, [], size, HEADER_SIZE + size + extra, ser, flags=flags)
    enc.produce = streamed.produce
    enc._signer = signer
    return enc


def frame_bytes(
    payload: bytes,
    serializer: int,
    *,
    level: int = 1,
    min_compress: int = MIN_COMPRESS,
    signer: Signer | None = None,
    name: bytes = b"",
) -> bytes:
    """Frame a small payload into one bytes object (call records).

    With ``signer`` it is signed as a record stored under ``name``
    (``function id/call key``): the signature does not hold anywhere else.
    """
    trailer = signer.trailer(serializer, [payload], record=True, name=name) if signer else b""
    flags = FLAG_SIGNED if signer else 0
    if len(payload) < min_compress or level <= 0:  # the common case, on every miss: raw
        digest = xxhash.xxh3_128_digest(payload)
        size = len(payload)
        return (
            HEADER.pack(MAGIC, FORMAT, CODEC_RAW, serializer, flags, size, digest)
            + payload
            + trailer
        )
    enc = frame([payload], serializer, level=level, min_compress=min_compress)
    if signer:  # re-packed with the flag; the trailer covers the uncompressed payload
        head = HEADER.pack(MAGIC, FORMAT, enc.codec, serializer, flags, enc.raw_size, enc.digest)
        return b"".join([head, *enc.payload, trailer])
    return b"".join(enc.parts)
