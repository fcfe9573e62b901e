"""A glimpse of a stored value for the call page, without running anything the store says.

Values stored in open formats (raw numpy arrays, Arrow frames, msgpack plain
data, the tree of arrays among plain data) are loaded and summarised: an
array's shape, dtype and statistics, a frame's head, plain data's repr. A
pickled value is never loaded unless the store is signed (what it holds was
written by a holder of its key) or the user passed ``--trust``: unpickling
runs whatever code the file names. Its header says which serializer wrote
it, and the cache is opened in safe mode besides, so a pickle hidden inside
another format is refused too.
"""

from __future__ import annotations

import math
import reprlib
from typing import Any

from fleche import codec
from fleche.cache import Cache
from fleche.errors import FlecheError
from fleche.render import escape, format_size

PREVIEW_MAX = 64 << 20
"""Payloads larger than this are not loaded for a preview (the page stays quick)."""
HEAD = 10
"""Rows of a frame, and items of an array, a preview shows."""


def serializer_of(cache: Cache, ref: dict[str, Any]) -> int | None:
    """The serializer byte of a stored value (from the reference, or its object's header)."""
    if "inline" in ref:
        ser = ref.get("ser")
        return ser if isinstance(ser, int) else None
    oid = ref.get("oid")
    if not isinstance(oid, str):
        return None
    try:
        with cache.store.open_read(oid) as f:
            head = f.read(codec.HEADER_SIZE)
        _, ser, _, _ = codec.read_header(head, f"object {oid}")
    except (OSError, KeyError, FlecheError, ValueError):
        return None
    return int(ser)


def payload_size(ref: dict[str, Any]) -> int | None:
    inline = ref.get("inline")
    if isinstance(inline, (bytes, bytearray, memoryview)):
        return memoryview(inline).nbytes
    size = ref.get("size")
    return size if isinstance(size, int) and not isinstance(size, bool) else None


def describe(ref: Any) -> str:
    """One line for a stored value: its type and where its bytes are."""
    if not isinstance(ref, dict):
        return repr(ref)
    kind = ref.get("type", "?")
    size = payload_size(ref)
    where = (
        "inline"
        if "inline" in ref
        else f"object {ref['oid']}"
        if isinstance(ref.get("oid"), str)
        else "not stored"
    )
    return f"{kind}, {where}" + (f", {size:,} bytes" if size is not None else "")


def preview(cache: Cache, ref: Any, *, trusted: bool) -> str:
    """HTML (escaped) previewing the value ``ref`` refers to; never unpickles unless ``trusted``."""
    if not isinstance(ref, dict) or not ("inline" in ref or "oid" in ref):
        return "<p>not stored (only its digest is kept)</p>"
    size = payload_size(ref)
    ser = serializer_of(cache, ref)
    names = codec.SERIALIZER_NAMES
    name = names.get(ser & 0x7F, f"serializer {ser & 0x7F}") if ser is not None else "unknown"
    if ser is None or not codec.is_safe(ser):
        if not trusted:
            shown = f"{size:,}" if size is not None else "?"
            return (
                f'<p class="pickled">{escape(name)}, {shown} bytes: not unpickled '
                "(loading a pickle runs code it names; sign the store, or start "
                "<code>fleche ui --trust</code> for a store you trust)</p>"
            )
    if size is not None and size > PREVIEW_MAX:
        return f"<p>{escape(format_size(size))}: too large to preview here</p>"
    try:
        # the Source opened ``cache`` in safe mode unless trusted: a pickle inside another
        # format is refused by the codec itself
        value = cache.load_value(ref)
    except FlecheError as e:
        return f"<p>not loaded: {escape(str(e))}</p>"
    except Exception as e:  # noqa: BLE001 - a class that cannot be imported here, say: shown
        return f"<p>not loaded: {escape(type(e).__name__)}: {escape(str(e))}</p>"
    return f'<p class="note">{escape(name)}</p>' + summarize(value)


def _short(value: Any, limit: int = 4000) -> str:
    r = reprlib.Repr()
    r.maxstring, r.maxother, r.maxlist, r.maxdict, r.maxlevel = 200, 200, 50, 50, 6
    text = r.repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="grid"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def summarize(value: Any) -> str:
    """An array's shape, dtype and statistics; a frame's shape and head; anything else's repr."""
    mod = type(value).__module__.split(".")[0]
    if mod == "numpy" and hasattr(value, "shape") and hasattr(value, "dtype"):
        return _array(value)
    if mod == "pandas" and hasattr(value, "head") and hasattr(value, "columns"):
        return _frame(value)
    if mod == "pandas" and hasattr(value, "head"):  # a Series
        return _frame(value.to_frame())
    return f"<p>{escape(type(value).__name__)}</p><pre>{escape(_short(value))}</pre>"


def _array(a: Any) -> str:
    import numpy as np

    rows = [["shape", str(a.shape)], ["dtype", str(a.dtype)], ["size", f"{a.size:,} items"]]
    if a.size and (np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.bool_)):
        data = a.astype(np.float64, copy=False) if a.dtype.kind == "b" else a
        finite = data[np.isfinite(data)] if data.dtype.kind in "fc" else data
        if finite.size:
            for label, fn in (("min", np.min), ("max", np.max), ("mean", np.mean), ("std", np.std)):
                try:
                    x = fn(finite)
                    rows.append([label, f"{x:.6g}" if math.isfinite(abs(x)) else str(x)])
                except (TypeError, ValueError):
                    pass
        if finite.size != data.size:
            rows.append(["not finite", f"{data.size - finite.size:,}"])
    flat = a.reshape(-1)[:HEAD]
    rows.append(["first items", _short(flat.tolist())])
    return _table(["", "array"], rows)


def _frame(df: Any) -> str:
    shape = f"{df.shape[0]:,} rows x {df.shape[1]:,} columns"
    dtypes = ", ".join(f"{c}: {t}" for c, t in list(df.dtypes.items())[:50])
    head = df.head(HEAD)
    rows = [
        [str(idx), *(_short(v, 200) for v in row)]
        for idx, row in zip(head.index, head.itertuples(index=False), strict=True)
    ]
    return (
        f"<p>{escape(type(df).__name__)}: {escape(shape)}</p>"
        f'<p class="note">{escape(dtypes)}</p>'
        + _table(["", *(str(c) for c in head.columns)], rows)
    )
