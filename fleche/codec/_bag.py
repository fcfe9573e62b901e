"""bagofholding as a value serializer: browsable, partially reloadable results (opt-in).

``Cache(..., serializer="bagofholding")`` (or ``serializer = "bagofholding"``
in ``fleche.toml``) stores each result as a bagofholding ``H5Bag``: an HDF5
file whose groups mirror the object's structure, with versions of the code
that made it. The payload is 480 zero bytes and then the HDF5 file, so in
an uncompressed object the HDF5 superblock sits at file offset 512, where
HDF5 looks for it past a "user block": the object file *is* an HDF5 file and
:func:`open_bag` opens it in place, without reading the rest, to list its
paths or load one member (``bag.load("object/a")``). A compressed object is
extracted to a temporary file first.

Needs ``pip install bagofholding`` (the ``bagofholding`` extra), on the
machine that writes and on every machine that reads.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from fleche.codec._base import HEADER_SIZE, SER_BAGOFHOLDING, DumpContext, LoadContext, Serializer
from fleche.errors import CorruptObjectError, FlecheError, SerializationError

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any

USER_BLOCK = 512
"""File offset of the HDF5 superblock in a raw bag object (a valid HDF5 user block size)."""
PAD = USER_BLOCK - HEADER_SIZE


def _bag_class() -> Any:
    from bagofholding import H5Bag

    return H5Bag


@contextmanager
def _temp_h5(data: Any = None) -> Iterator[str]:
    """A temporary ``.h5`` path (holding ``data`` when given), removed afterwards."""
    import tempfile  # ~7 ms that ``import fleche`` does not need

    with tempfile.TemporaryDirectory(prefix="fleche-bag-") as d:
        path = os.path.join(d, "value.h5")
        if data is not None:
            with open(path, "wb") as f:
                f.write(data)
        yield path


class BagSerializer(Serializer):
    """Any picklable value as a bagofholding ``H5Bag`` file (id 8)."""

    id = SER_BAGOFHOLDING
    name = "bagofholding"
    requires = "bagofholding"
    modules = ()
    compress = False  # so the object file stays an HDF5 file that open_bag opens in place

    def available(self) -> bool:
        try:
            _bag_class()
        except ImportError:
            return False
        return True

    def accepts(self, value: Any) -> bool:
        return self.available()

    def dumps(self, value: Any, ctx: DumpContext) -> tuple[int, Sequence[Any]]:
        try:
            bag = _bag_class()
        except ImportError as e:
            raise SerializationError(
                "serializer='bagofholding' needs the bagofholding package: "
                "pip install 'fleche[bagofholding]'"
            ) from e
        with _temp_h5() as path:
            bag.save(value, path)
            with open(path, "rb") as f:
                data = f.read()
        return SER_BAGOFHOLDING, [bytes(PAD), data]

    def loads(self, ser: int, payload: Any, ctx: LoadContext) -> Any:
        try:
            bag = _bag_class()
        except ImportError as e:
            raise self.missing(ctx.where) from e
        mv = memoryview(payload).cast("B")
        if mv.nbytes < PAD:
            raise CorruptObjectError(f"{ctx.where} is too short to hold a bag")
        with _temp_h5(mv[PAD:]) as path:
            return bag(path).load()


@contextmanager
def open_bag(store: Any, ref: dict[str, Any]) -> Iterator[Any]:
    """The ``H5Bag`` of a stored bagofholding value, to browse or load parts of.

    ``ref`` is a value reference from a call record (``record["result"]``).
    An uncompressed object on local disk is opened in place; otherwise the
    payload is read, verified and extracted to a temporary file for the
    duration of the ``with`` block::

        with open_bag(cache.store, record["result"]) as bag:
            bag.list_paths(); bag.load("object/a")
    """
    from fleche.codec._frame import CODEC_RAW
    from fleche.codec._unframe import read_header, unframe

    if ref.get("ser", -1) & 0x7F != SER_BAGOFHOLDING:
        raise FlecheError(f"the value is not a bagofholding bag (serializer {ref.get('ser')})")
    bag = _bag_class()
    if "oid" not in ref:
        with _temp_h5(memoryview(ref["inline"])[PAD:]) as path:
            yield bag(path)
        return
    oid = ref["oid"]
    file = store.local_path(oid)
    head = b""
    if file is not None:
        try:
            with open(file, "rb") as f:
                head = f.read(HEADER_SIZE)
        except FileNotFoundError:  # packed: read through the store below
            file = None
    if file is not None and read_header(head, f"object {oid}")[0] == CODEC_RAW:
        yield bag(file)
        return
    _, payload = unframe(store.get(oid), f"object {oid} in {store.url}", expect=oid)
    with _temp_h5(memoryview(payload)[PAD:]) as path:
        yield bag(path)
