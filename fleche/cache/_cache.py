"""A Cache: call records and values over one ObjectStore.

The cache decides *how* things are stored (inline or as an object, compressed
or not, which serializer) and enforces the write order that keeps a store
valid at every instant: a value object is written before the record that
points at it.  It knows nothing of decorated functions: records arrive as
plain dicts built by :mod:`fleche.records._call`.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Iterator, Sequence

from fleche import codec
from fleche.codec import TRAILER_SIZE, Signer, signer_from
from fleche.errors import (
    CacheMiss,
    ConfigError,
    CorruptObjectError,
    FlecheWarning,
    ForeignKeyMiss,
    SignatureError,
    warn_user,
)
from fleche.store import LocalStore, ObjectStore, is_oid, open_store

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any, Literal, TypeAlias

if TYPE_CHECKING:  # loaded when a Cache opens its index: sqlite3 stays off `import fleche`
    from fleche.index import Index, IndexSpec

INLINE_LIMIT = 4096
_NOT_MAPPED = object()
# serializers whose payload holds arrays that a mapped file can back
_MAPPED = frozenset((codec.SER_NUMPY, codec.SER_TREE, codec.SER_ARROW_PANDAS, codec.SER_POLARS))

if TYPE_CHECKING:
    MmapMode: TypeAlias = bool | Literal["unverified"]
else:
    MmapMode = bool | str  # the alias as run time sees it (no typing.Literal)
MMAP_MODES: tuple[MmapMode, ...] = (False, True, "unverified")
"""What ``mmap=`` takes (``@fleche``, ``f.load``, ``Cache.load_value``).

``True`` maps raw arrays read-only after checking the file's XXH3-128 content
hash (one read of the file at memory speed: a damaged file is a miss, never a
wrong array); ``"unverified"`` maps without reading it (the header, length and
name are still checked), for files too large to read on every load;
``False`` loads a copy. See ``docs/values.md``.
"""


def mmap_mode(value: Any, where: str = "") -> MmapMode:
    """``value`` if it is one of :data:`MMAP_MODES`, else ConfigError saying ``where`` it was given."""
    if value is True or value is False:
        return bool(value)
    if type(value) is str and value == "unverified":
        return "unverified"
    raise ConfigError(
        f"mmap={value!r}{f' ({where})' if where else ''}: expected True (map arrays, checking "
        "the file's content hash), 'unverified' (map without reading the file first) or False"
    )


def type_name(value: Any) -> str:
    """``module.qualname`` of a value's type, as records store it."""
    t = type(value)
    return f"{t.__module__}.{t.__qualname__}"


def referenced_oids(record: dict[str, Any]) -> list[str]:
    """The oids of the value objects a call record points at (its result and arguments).

    Whoever copies a record into another store copies these first: a record
    must never be published before the objects it references.
    """
    refs = [record.get("result"), *(record.get("arguments") or {}).values()]
    oids: list[str] = []
    for r in refs:
        if isinstance(r, dict) and isinstance(r.get("oid"), str):
            # large array members stored on their own come first: their parent needs them
            children = r.get("children")
            if isinstance(children, list):
                oids.extend(c for c in children if isinstance(c, str))
            oids.append(r["oid"])
    return oids


def put_encoded(store: ObjectStore, enc: codec.Encoded) -> None:
    """Store an encoded value: its child objects first, then itself (streamed when it must be)."""
    for obj in enc.objects():
        if obj.stream is not None:
            store.put_stream(obj.chunks(), oid=obj.oid)
        elif obj.produce is not None:  # written as the serializer produces it
            store.put_produced(obj.write_payload, obj.named(), header_size=codec.HEADER_SIZE)
        elif obj.pending is not None and not obj.pending.done():  # hashed while written
            store.put_later(obj.named(), obj.payload, header_size=codec.HEADER_SIZE)
        else:
            store.put(obj.parts, oid=obj.oid)


def encode_value(
    value: Any,
    *,
    serializer: str = "auto",
    level: int = 1,
    inline_limit: int = INLINE_LIMIT,
    defer: bool = False,
    signer: Signer | None = None,
    safe: bool = False,
) -> tuple[dict[str, Any], codec.Encoded | None]:
    """The reference a record keeps for ``value``, and the object to store (None when inline).

    Separate from writing so a value can be encoded once and put into several
    stores (a layered cache writing through): store it with :func:`put_encoded`.
    A value with large array members is never inline: its reference lists
    their oids (``children``) so copies, ``gc`` and ``verify`` see them.
    Raises :class:`~fleche.errors.SerializationError` when no serializer accepts it.

    ``defer=True`` leaves ``ref["oid"]`` None while a large value is still
    being hashed, so :func:`put_encoded` can write it meanwhile: set it from
    ``enc.oid`` after storing. ``signer`` signs the object; ``safe`` refuses
    (UnsafeValueError) a value only pickle could store.
    """
    if defer:  # a large frame may be written as Arrow produces it: never held twice
        got = codec.serialize_streamed(
            value, serializer, level=level, safe=safe, stream_min=codec.PRODUCE_MIN
        )
        if isinstance(got, codec.Streamed):
            enc = codec.frame_streamed(got, signer=signer)
            ref0 = {"type": type_name(value), "ser": got.serializer, "oid": None, "size": got.size}
            return ref0, enc
        ser, parts, children = got
    else:
        ser, parts, children = codec.serialize(value, serializer, level=level, safe=safe)
    size = sum(codec.nbytes(p) for p in parts)
    ref: dict[str, Any] = {"type": type_name(value), "ser": ser}
    if size <= inline_limit and not children:
        ref["inline"] = parts[0] if len(parts) == 1 else b"".join(parts)
        return ref, None
    s = codec.by_id(ser)
    level = level if s is None or s.compress else 0
    enc = codec.frame(parts, ser, level=level, children=children, size=size, signer=signer)
    ref["oid"] = None if defer else enc.oid
    ref["size"] = enc.raw_size
    if children:
        ref["children"] = [c.oid for c in enc.objects() if c is not enc]
    return ref, enc


def malformed(record: dict[str, Any]) -> str | None:
    """Why a record that decoded cannot serve a hit (its result is no value reference), or None.

    Its frame checked, so a writer put it there: another version's, a buggy or a hostile one.
    """
    ref = record.get("result")
    if type(ref) is not dict:
        return "has no result reference"
    if "inline" in ref:
        if not isinstance(ref["inline"], bytes) or type(ref.get("ser")) is not int:
            return "has a malformed inline result"
        return None
    if not is_oid(ref.get("oid")):
        return f"names no valid result object (oid {str(ref.get('oid'))[:40]!r})"
    return None


def _utf8_safe(value: Any) -> Any:
    """``value`` with every str that UTF-8 cannot encode (lone surrogates) backslash-escaped."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode()
        return value
    if isinstance(value, dict):
        return {_utf8_safe(k): _utf8_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_utf8_safe(v) for v in value)
    return value


_INDEX_LOCK = threading.Lock()  # a Cache's default index, made once when first used


class Cache:
    """Records and values of cached calls, kept in one :class:`~fleche.store.ObjectStore`.

    ``inline_limit``: results whose serialized form is at most this many bytes
    live inside their call record, so a small hit is a single read.
    ``compression_level``: zstd level (0 disables compression).
    ``serializer``: ``"auto"`` picks one per value type (numpy arrays raw, frames
    as Arrow, plain data as msgpack, the rest pickled; see ``docs/values.md``);
    ``"pickle"``, ``"cloudpickle"``, ``"dill"`` or ``"bagofholding"`` forces one.
    ``index``: the queryable catalogue of the records (:mod:`fleche.index`): None
    for the default (on for local and remote stores, off for memory), True,
    False, ``sqlite:///path`` or a database URL; see ``docs/catalog.md``.
    ``secret_key``: sign every file written and refuse (as misses) files not
    signed with one of the keys: a key, a list of keys (the first signs), None
    to read ``FLECHE_SECRET_KEY``, or False for no signing; see ``docs/security.md``.
    ``safe``: never store or load a value with pickle (loading a pickle runs
    code); values only pickle can store are returned uncached.
    """

    # What a hit computed by other code does (fleche.toml's stale_code, or cache(...,
    # stale_code=)): "warn", "serve" or "recompute"; None: the decorator's default, "warn".
    stale_code: str | None = None

    def __init__(
        self,
        store: ObjectStore | str | os.PathLike[str],
        *,
        compression_level: int = 1,
        inline_limit: int = INLINE_LIMIT,
        serializer: str = "auto",
        name: str | None = None,
        index: IndexSpec = None,
        secret_key: str | bytes | Sequence[str | bytes] | Signer | bool | None = None,
        safe: bool = False,
    ) -> None:
        if not isinstance(store, ObjectStore):
            store = open_store(store)
        if serializer != "auto" and serializer not in codec.serializer_names():
            raise ValueError(
                f"serializer={serializer!r}: choose one of {', '.join(codec.serializer_names())}"
            )
        if not isinstance(compression_level, int) or not 0 <= compression_level <= 22:
            raise ValueError(f"compression_level={compression_level!r}: expected an int in 0..22")
        if not isinstance(inline_limit, int) or inline_limit < 0:
            raise ValueError(f"inline_limit={inline_limit!r}: expected an int >= 0")
        if not isinstance(safe, bool):
            raise ValueError(f"safe={safe!r}: expected True or False")
        if safe and serializer in codec.FORCED:
            raise ValueError(
                f"serializer={serializer!r} stores values with pickle, which safe=True refuses; "
                "use serializer='auto'"
            )
        self.signer: Signer | None = signer_from(secret_key)
        self._signature_warned: set[str] = set()
        self.safe = safe
        self.store = store
        self.level = compression_level
        self.inline_limit = inline_limit
        self.serializer = serializer
        self.name = name or store.url
        # The queryable catalogue of this cache's records (fleche.index): on by default
        # for local and remote stores, off for memory; ``index=`` True/False or a URL.
        # The default is made on first use of ``index`` (a query, a store, a removal):
        # a hit needs none, and fleche.index brings sqlite3 and json (~25 M instructions).
        self._index_spec = index
        self._index: Index | None = None
        self._index_open = index is False
        if not (index is None or index is True or index is False):
            _ = self.index  # a URL or an Index: checked now, as the caller chose it

    @property
    def index(self) -> Index | None:
        """The queryable catalogue of this cache's records (:mod:`fleche.index`), or None."""
        if not self._index_open:
            with _INDEX_LOCK:
                if not self._index_open:
                    from fleche.index import open_index

                    self._index = open_index(self.store, self._index_spec)
                    self._index_open = True
        return self._index

    @index.setter
    def index(self, index: Index | None) -> None:
        self._index, self._index_open = index, True

    def __repr__(self) -> str:
        return f"Cache({self.store.url!r})"

    @property
    def url(self) -> str:
        """Where the cache lives (its store's URL), for messages."""
        return self.store.url

    @property
    def read_only(self) -> bool:
        return self.store.read_only

    # -- records -------------------------------------------------------------------------

    def get_record(
        self, function_id: str, key: str, *, lazy: bool = False
    ) -> dict[str, Any] | None:
        """The record stored for a call, or None on a miss (a corrupt record is a miss, with a warning).

        ``lazy=True`` (a hit, which reads only ``result``): ``arguments`` and
        ``metadata`` may stay unparsed bytes; see :func:`fleche.codec.expand_record`.
        """
        try:
            blob = self.store.find_call(function_id, key)
        except CorruptObjectError as e:  # a directory, fifo or link at the record's name
            self._quarantine(e, function_id=function_id, digest=key)
            return None
        if blob is None:
            return None
        try:
            rec = codec.decode_record(blob, lazy=lazy, signer=self.signer, name=(function_id, key))
            if malformed(rec) is None:
                return rec
        except CorruptObjectError:
            pass  # decode again, naming the file: building its name costs a hit 0.2 µs
        where = f"call record {function_id}/{key} in {self.store.url}"
        try:
            rec = codec.decode_record(
                blob, where, lazy=lazy, signer=self.signer, name=(function_id, key)
            )
            why = malformed(rec)
            if why is not None:
                raise CorruptObjectError(f"{where} {why}")
            return rec
        except CorruptObjectError as e:
            self._quarantine(e, function_id=function_id, digest=key)
            return None

    def has_record(self, function_id: str, key: str) -> bool:
        """Whether this cache can serve the call (``f.contains``): False exactly when a load misses.

        It reads the record as a load does (a damaged one, a misnamed one, one
        signed with a key this cache lacks: a miss, with the same warning) and
        checks that the result's objects are stored, as files, and in a signed
        cache signed with one of its keys (their first and last bytes only).
        So whenever it is False, a load raises; when True, a load returns the
        value, unless damage inside the value's bytes, which only reading them
        finds: that load raises CorruptObjectError and moves the file aside,
        and from then on both say miss.
        """
        rec = self.get_record(function_id, key, lazy=True)
        if rec is None:
            return False
        ref = rec["result"]
        if "inline" in ref:
            return True
        children = ref.get("children")
        oids = [c for c in children if isinstance(c, str)] if isinstance(children, list) else []
        return all(self._servable(oid) for oid in (*oids, ref["oid"]))

    def _servable(self, oid: str) -> bool:
        """Object ``oid`` is stored as a file and, in a signed cache, signed with one of our keys."""
        if self.signer is None:
            return self.store.exists(oid)
        try:
            head, tail = self.store.read_ends(oid, codec.HEADER_SIZE)
            flags = codec.read_frame_header(head)[4]
        except (CacheMiss, CorruptObjectError):
            return False
        if not flags & codec.FLAG_SIGNED or len(tail) < TRAILER_SIZE:
            return False  # unsigned: a load refuses it
        return self.signer.knows(bytes(tail)[-TRAILER_SIZE:])

    def _foreign_record(self, function_id: str, key: str) -> bool:
        """Whether the stored record of a call is signed with a key this cache lacks.

        Another key's file: a signed cache never replaces it (one warning per key).
        """
        if self.signer is None:
            return False
        try:
            blob = self.store.find_call(function_id, key)
            if blob is None:
                return False
            flags = codec.read_frame_header(blob)[4]
        except CorruptObjectError:  # damaged or no file: the write takes the name back
            return False
        view = memoryview(blob)
        if not flags & codec.FLAG_SIGNED or view.nbytes < codec.HEADER_SIZE + TRAILER_SIZE:
            return False
        trailer = bytes(view[-TRAILER_SIZE:])
        if self.signer.knows(trailer):
            return False
        key_id = trailer[:8].hex()
        self._warn_signature(
            f"unknown key {key_id}",
            f"call record {function_id}/{key} in {self.store.url} is signed with key id "
            f"{key_id}, which is not one of this cache's keys: the result just computed is not "
            "stored over it (fleche never rewrites another key's files)",
        )
        return True

    def put_record(self, function_id: str, key: str, record: dict[str, Any]) -> None:
        """Write a call record, after the objects it refers to (the caller stores those first).

        A signed cache leaves a record signed with a key it lacks as it is (another key's file).
        """
        if self.signer is not None and self._foreign_record(function_id, key):
            return
        sign: dict[str, Any] = {"signer": self.signer, "name": (function_id, key)}
        try:
            blob = codec.encode_record(record, level=self.level, **sign)
        except UnicodeEncodeError:
            # text msgpack cannot hold: lone surrogates, as os.getcwd() returns for a
            # directory whose name is not UTF-8, or in tags; kept backslash-escaped
            record = _utf8_safe(record)
            blob = codec.encode_record(record, level=self.level, **sign)
        self.store.put_call(function_id, key, blob)
        if not self._index_open and isinstance(self.store, LocalStore):
            # An index of a local store catches up from its files before each query (its
            # add does nothing): a miss does not open it, nor import sqlite3 and json.
            return
        if self.index is not None:  # after the store: the index never lists what is not there
            self.index.add(function_id, key, record, len(blob))  # faults warn, never raise

    def delete_record(self, function_id: str, key: str) -> None:
        """Forget a call (``f.evict``); value objects stay until ``fleche gc`` finds them unused."""
        self.store.delete_call(function_id, key)
        if self.index is not None:
            self.index.remove(function_id, key)

    def iter_records(self, function_id: str | None = None) -> Iterator[dict[str, Any]]:
        """Every readable record (of one function, or all); corrupt ones are skipped with a warning."""
        for fid, key in self.store.iter_calls(function_id):
            rec = self.get_record(fid, key)
            if rec is not None:
                yield rec

    # -- values --------------------------------------------------------------------------

    def encode_value(
        self, value: Any, *, defer: bool = False
    ) -> tuple[dict[str, Any], codec.Encoded | None]:
        """:func:`encode_value` with this cache's serializer, compression and inline limit."""
        return encode_value(
            value,
            serializer=self.serializer,
            level=self.level,
            inline_limit=self.inline_limit,
            defer=defer,
            signer=self.signer,
            safe=self.safe,
        )

    def put_value(self, value: Any) -> dict[str, Any]:
        """Store a value; returns the reference a record keeps (inline bytes or an oid).

        Raises :class:`~fleche.errors.SerializationError` when no serializer accepts it.
        """
        ref, enc = self.encode_value(value, defer=True)
        if enc is not None:
            put_encoded(self.store, enc)
            ref["oid"] = enc.oid
        return ref

    def load_value(self, ref: dict[str, Any], *, mmap: MmapMode = False) -> Any:
        """Load a value from its reference; CacheMiss if its object is gone, CorruptObjectError if damaged.

        ``mmap=True``: arrays stored raw (uncompressed; numpy or tree codec) in a
        local store come back as read-only views of the mapped file, and so do the
        numeric and time columns of a pandas frame stored as Arrow; other objects
        load as usual. The mapped file's content hash is checked (one read at memory
        speed, ~6 ms per 100 MB); ``mmap="unverified"`` skips that read (well under
        a millisecond whatever the size) and trusts the file: see :data:`MMAP_MODES`.
        """
        if mmap is not False:
            mmap = mmap_mode(mmap)
        inline = ref.get("inline")
        if inline is not None:
            return codec.decode_payload(ref["ser"], inline, "inline value", safe=self.safe)
        size = ref.get("size")
        children = ref.get("children")
        return self.load_object(
            ref["oid"],
            mmap=mmap,
            size=size if isinstance(size, int) else None,
            children=children if type(children) is list else None,
        )

    def load_object(
        self,
        oid: str,
        *,
        mmap: MmapMode = False,
        size: int | None = None,
        children: list[str] | None = None,
    ) -> Any:
        """Load object ``oid`` (and the array members it refers to) from this cache's store.

        ``size`` (the payload size a reference records) above the streaming
        threshold reads the object chunk by chunk into the value's own buffer.
        ``children`` (the member oids a reference lists) are loaded first: one
        that is missing or damaged fails before ``oid`` is decoded, not part
        way through (when a pickle's constructors have run, and a layered
        cache would decode it again from the next layer).
        """
        memo: dict[str, Any] = {}  # one array per child oid: shared members stay shared

        def resolve(child: str) -> Any:
            if child not in memo:
                memo[child] = self.load_object(child, mmap=mmap)
            return memo[child]

        for child in children or ():
            if is_oid(child):
                resolve(child)

        if mmap:
            mapped = self._map(oid, resolve, verify=mmap_mode(mmap) is True)
            if mapped is not _NOT_MAPPED:
                return mapped
        if size is not None and size > codec.STREAM_MIN and self.store.streams_reads:
            where = f"object {oid} in {self.store.url}"
            try:
                with self.store.open_read(oid) as f:
                    ser, payload = codec.unframe_stream(f, where, expect=oid, signer=self.signer)
            except CorruptObjectError as e:
                raise self._refused(e, oid) from e
            return codec.decode_payload(ser, payload, where, resolve=resolve, safe=self.safe)
        try:
            blob = self.store.get(oid)
        except CorruptObjectError as e:  # a directory, fifo or link at the object's name
            raise self._refused(e, oid) from e
        return self.decode_object(oid, blob, resolve)

    def _map(self, oid: str, resolve: Any, *, verify: bool = True) -> Any:
        """The value of a raw array object viewed in place, or _NOT_MAPPED when it cannot be.

        A damaged file (``verify``: its content hash too) is moved aside and raises
        CorruptObjectError: the caller's miss, never a view of wrong bytes.
        """
        path = self.store.local_path(oid)
        if path is None:
            return _NOT_MAPPED
        where = f"object {oid} in {self.store.url}"
        try:
            # Objects without arrays of their own are read and verified as usual (their
            # array members are objects of their own, and still mapped); compressed ones
            # are decompressed into a fresh buffer.
            got = codec.map_object(
                path, where, signer=self.signer, expect=oid, verify=verify, serializers=_MAPPED
            )
        except FileNotFoundError:  # not loose: packed (read whole, below), or a miss
            return _NOT_MAPPED
        except CorruptObjectError as e:
            raise self._refused(e, oid) from e
        if got is None:
            return _NOT_MAPPED
        ser, payload = got
        return codec.decode_payload(ser, payload, where, resolve=resolve, mmap=True, safe=self.safe)

    def decode_object(self, oid: str, blob: Any, resolve: Any = None) -> Any:
        """Verify and decode the bytes of object ``oid`` read from this cache's store.

        CorruptObjectError (after moving the file to quarantine) when they are damaged.
        ``resolve(oid)`` loads the array members it refers to (default: from this store).
        """
        if resolve is None:
            resolve = self.load_object
        try:
            return codec.decode_value(
                blob,
                expect=oid,
                where=f"object {oid} in {self.store.url}",
                resolve=resolve,
                signer=self.signer,
                safe=self.safe,
            )
        except CorruptObjectError as e:
            # the caller reports it (once, in its own words); we only move it aside
            raise self._refused(e, oid) from e

    # -- faults --------------------------------------------------------------------------

    def _refused(self, error: CorruptObjectError, oid: str) -> CacheMiss | CorruptObjectError:
        """What a load raises for an object it refused, once the file is dealt with.

        Another key's object is a miss (ForeignKeyMiss, a KeyError), left alone;
        a damaged one is CorruptObjectError, moved aside.
        """
        key_id = error.foreign_key if isinstance(error, SignatureError) else None
        # another key's: warned here, once per key, whatever function meets its files
        action = self._quarantine(error, warn=key_id is not None, oid=oid)
        if key_id is not None:
            return ForeignKeyMiss(f"{error}; {action}", key_id)
        return type(error)(f"{error}; {action}")

    def _quarantine(self, error: CorruptObjectError, *, warn: bool = True, **which: str) -> str:
        """Move a damaged file aside (nothing is deleted); returns what was done.

        A file signed with a key this cache lacks is not damage but another
        key's file in a shared store: it is left exactly where it is.
        """
        foreign = isinstance(error, SignatureError) and error.foreign_key is not None
        if foreign:
            action = "left in place (another key's file: fleche never moves it)"
        elif self.read_only:
            action = "left in place (read-only store)"
        else:
            try:
                self.store.quarantine(**which)
                action = "moved to quarantine/"
            except OSError as e:
                action = f"could not be moved to quarantine/ ({e})"
        if warn and isinstance(error, SignatureError):
            # a store signed late holds thousands of unsigned files: say it once per kind
            more = "left alone" if foreign else "moved aside"
            self._warn_signature(
                error.reason,
                f"{error}; treated as a miss and {action}; further files refused for the "
                f"same reason are {more} silently",
            )
        elif warn:
            warnings.warn(f"{error}; treated as a miss and {action}", FlecheWarning, stacklevel=4)
        return action

    def _warn_signature(self, reason: str, message: str) -> None:
        """One warning per kind of refused signature (unsigned, forged, each unknown key)."""
        if reason not in self._signature_warned:
            self._signature_warned.add(reason)
            warn_user(message)
