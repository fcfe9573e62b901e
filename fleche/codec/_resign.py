"""Signing a frame that is already stored: what ``fleche sign`` writes back.

A store that ran unsigned, or signed with a key that is being retired, holds
frames a signed reader refuses. Re-signing keeps everything a frame is —
header fields, the (possibly compressed) payload bytes, hence its name — and
sets the signed flag and appends (or replaces) the 32-byte trailer made with
the signing key. It only ever signs what checks out: the payload's hash, the
object's name, and an existing signature by one of the keys. A frame signed
with a key the signer does not hold, or whose signature fails, is never
re-signed: that would launder a forgery.
"""

from __future__ import annotations

from fleche.codec._base import HEADER_SIZE
from fleche.codec._frame import FLAG_SIGNED, FORMAT, HEADER, MAGIC
from fleche.codec._sign import TRAILER_SIZE, Signer
from fleche.codec._unframe import read_frame_header, unframe

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any


def resign(
    blob: Any,
    signer: Signer,
    where: str,
    *,
    expect: str | None = None,
    record: bool = False,
    name: bytes = b"",
) -> bytes | None:
    """``blob`` signed with ``signer``'s signing key, or None when it already is.

    ``expect`` is the object's name (an object frame must hold it); ``record``
    and ``name`` (``function id/call key``) sign a call record for that call
    only. Raises ``CorruptObjectError`` for a damaged frame and
    ``SignatureError`` for one signed with an unknown key or forged.
    """
    codec_id, ser, size, digest, flags = read_frame_header(blob, where)
    _, payload = unframe(blob, where, expect=expect)  # the hash checks; a trailer is skipped
    view = memoryview(blob)
    end = view.nbytes
    if flags & FLAG_SIGNED:
        trailer = view[end - TRAILER_SIZE :]
        signer.check(trailer, ser, payload, where, record=record, name=name)
        if signer.signed_by_me(trailer):
            return None
        end -= TRAILER_SIZE
    head = HEADER.pack(MAGIC, FORMAT, codec_id, ser, flags | FLAG_SIGNED, size, digest)
    signature = signer.trailer(ser, [payload], record=record, name=name)
    return b"".join([head, view[HEADER_SIZE:end], signature])
