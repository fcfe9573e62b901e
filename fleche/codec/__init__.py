"""Values and call records as self-checking stored objects, and back.

Above :mod:`fleche.store` (which keeps the bytes) and below :mod:`fleche.records`.
A frame is a 32-byte header (magic, format, codec, serializer, raw length, hash),
the payload, zstd-compressed when it pays, and an optional signature
(``docs/format.md``).  A serializer turns one kind of value into parts and back.

Inside: ``_encode`` (values and records, the layer's entry points), ``_frame``
and ``_unframe`` (writing and checking frames), ``_zframes`` (codec 2, large
payloads on threads), ``_sign`` and ``_resign`` (signed frames), ``_registry``
(which serializer stores a value) over ``_base`` and one module per serializer
(``_plain``, ``_numpy``, ``_tree``, ``_arrow``, ``_pickle``, ``_bag``).
"""

from fleche.codec._base import (
    ALIGN,
    HEADER_SIZE,
    SER_ARROW_PANDAS,
    SER_BAGOFHOLDING,
    SER_BYTES,
    SER_CLOUDPICKLE,
    SER_DILL,
    SER_MSGPACK,
    SER_NUMPY,
    SER_PICKLE,
    SER_POLARS,
    SER_TREE,
    DumpContext,
    LoadContext,
    MissingSerializerError,
    Serializer,
    Streamed,
    nbytes,
)
from fleche.codec._encode import (
    RECORD_FORMAT,
    SERIALIZER_NAMES,
    decode_payload,
    decode_record,
    decode_value,
    encode_record,
    encode_value,
    expand_record,
    map_object,
)
from fleche.codec._frame import (
    CODEC_RAW,
    CODEC_ZSTD,
    CODEC_ZSTD_FRAMES,
    FLAG_SIGNED,
    FORMAT,
    HEADER,
    MAGIC,
    PRODUCE_MIN,
    STREAM_MIN,
    Encoded,
    frame,
    frame_bytes,
    frame_streamed,
)
from fleche.codec._registry import (
    FORCED,
    by_id,
    is_safe,
    register,
    serialize,
    serialize_streamed,
    serializer_names,
)
from fleche.codec._sign import ENV, TRAILER_SIZE, Signer, signer_from
from fleche.codec._unframe import (
    check_length,
    read_frame_header,
    read_header,
    unframe,
    unframe_stream,
)

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any

    from fleche.codec._bag import open_bag
    from fleche.codec._resign import resign
else:
    # Opening a bag and re-signing load their modules when called: a hit uses neither.
    # Forwarding functions, not a module __getattr__: a module with one cannot have its
    # attributes' loads specialised by CPython, and the caches call codec.decode_record
    # and codec.decode_payload on every hit (~500 instructions a hit more, measured).

    def open_bag(store: "Any", ref: "Any") -> "Any":
        from fleche.codec._bag import open_bag

        return open_bag(store, ref)

    def resign(*args: "Any", **kwargs: "Any") -> "Any":
        from fleche.codec._resign import resign

        return resign(*args, **kwargs)

    open_bag.__doc__ = "The ``H5Bag`` of a stored bagofholding value (see ``_bag.open_bag``)."
    resign.__doc__ = "A frame signed with another key (see ``_resign.resign``)."

__all__ = [
    "FORCED",
    "ALIGN",
    "CODEC_RAW",
    "CODEC_ZSTD",
    "CODEC_ZSTD_FRAMES",
    "DumpContext",
    "ENV",
    "Encoded",
    "FLAG_SIGNED",
    "FORMAT",
    "HEADER",
    "HEADER_SIZE",
    "LoadContext",
    "MAGIC",
    "MissingSerializerError",
    "PRODUCE_MIN",
    "RECORD_FORMAT",
    "SERIALIZER_NAMES",
    "SER_ARROW_PANDAS",
    "SER_BAGOFHOLDING",
    "SER_BYTES",
    "SER_CLOUDPICKLE",
    "SER_DILL",
    "SER_MSGPACK",
    "SER_NUMPY",
    "SER_PICKLE",
    "SER_POLARS",
    "SER_TREE",
    "STREAM_MIN",
    "TRAILER_SIZE",
    "Serializer",
    "Signer",
    "Streamed",
    "by_id",
    "check_length",
    "decode_payload",
    "decode_record",
    "decode_value",
    "encode_record",
    "encode_value",
    "expand_record",
    "frame",
    "frame_bytes",
    "frame_streamed",
    "is_safe",
    "map_object",
    "nbytes",
    "open_bag",
    "read_frame_header",
    "read_header",
    "register",
    "resign",
    "serialize",
    "serialize_streamed",
    "serializer_names",
    "signer_from",
    "unframe",
    "unframe_stream",
]
