"""Reading a cache written by the original fleche (0.22), without the original installed.

Our package is also called ``fleche``, so the original cannot be imported next to us:
its files are read here directly. What 0.22 writes (``fleche/storage/`` in its sdist):

- a *value store*: one file per value, named by the value's 64-hex digest, in
  ``<root>/values/`` (templates ``pickle``, ``cloudpickle``, ``dill``) as a pickle of
  that kind, optionally gzip'd, optionally followed by a 64-hex HMAC-SHA256 signature
  (``FLECHE_SECRET_KEY``); or HDF5 written by bagofholding (template ``sql``'s default,
  ``bagofholding_hdf``): ``<root>/values/<first 2 hex>.h5`` holding one group per key,
  or one ``.h5`` file per key. Containers nested deeper than one level are stored
  *destructured*: the outer list/dict/dataclass keeps its children's digests
  (``DigestedIterable``/``DigestedDict``/``DigestedDataclass`` wrappers) and each child
  is a value of its own.
- a *call store*: either one pickled ``fleche.call.DigestedCall`` per call in
  ``<root>/calls/<call digest>`` (name, module, version, code digest, arguments as
  value digests in parameter order, result digest, metadata groups such as
  ``runtime``), or the SQL tables ``calls``/``arguments``/``metadata`` (SQLite
  ``<root>/calls.db`` for the ``sql`` template, or any SQLAlchemy URL).

Nothing here writes: the old cache is opened read-only and left as it was.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import io
import json
import os
import pickle
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from fleche.errors import FlecheError

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_HEX = frozenset("0123456789abcdef")


class OriginalCacheError(FlecheError):
    """The path given to ``fleche import`` does not hold a cache the original fleche wrote."""


class Unreadable(Exception):
    """One value or call of the old cache cannot be read; the message says why (for the report)."""


# -- stand-ins for the original's classes met inside its pickles ----------------------------


class OldDigest(str):
    """The original's ``fleche.digest.Digest``: a 64-hex str naming a value."""


class _Record:
    """A pickled dataclass of the original: its fields end up in ``__dict__``."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple):  # (dict state, slots state)
            state = {**(state[0] or {}), **(state[1] or {})}
        self.__dict__.update(state)


class OldDigestedCall(_Record):
    name: str
    arguments: dict[str, Any]
    result: Any
    metadata: dict[str, dict[str, Any]]
    module: str | None
    version: Any
    code_digest: str | None


class OldDigestedIterable(_Record):
    items: list[Any] | tuple[Any, ...]


class OldDigestedDict(_Record):
    items: dict[Any, Any]


class OldDigestedFields(_Record):
    cls: type
    fields: dict[str, Any]


_STAND_INS: dict[tuple[str, str], type] = {
    ("fleche.digest", "Digest"): OldDigest,
    ("fleche.call", "DigestedCall"): OldDigestedCall,
    ("fleche.storage.destructuring", "DigestedIterable"): OldDigestedIterable,
    ("fleche.storage.destructuring", "DigestedDict"): OldDigestedDict,
    ("fleche.storage.destructuring", "DigestedDataclass"): OldDigestedFields,
    ("fleche.storage.destructuring", "DigestedAttrs"): OldDigestedFields,
}


class _Unpickler(pickle.Unpickler):
    """Loads the original's pickles: its own classes become stand-ins, the user's import.

    A pickle naming another class of the original (``fleche.*``) is refused rather
    than resolved against *our* ``fleche``, whose modules of the same name differ.
    """

    def find_class(self, module: str, name: str) -> Any:
        stand_in = _STAND_INS.get((module, name))
        if stand_in is not None:
            return stand_in
        if module == "fleche" or module.startswith("fleche."):
            raise Unreadable(f"holds {module}.{name}, a class of the original fleche")
        return super().find_class(module, name)


def _unsign(content: bytes, keys: tuple[bytes, ...], where: str) -> bytes:
    """The pickle inside a file 0.22 signed (``security.SignedBytes``), checked with ``keys``."""
    if not keys:
        return content
    stop = content.rfind(pickle.STOP)
    if stop == -1:
        raise Unreadable(f"{where}: not a pickle")
    data, signature = content[: stop + 1], content[stop + 1 :]
    for key in keys:
        expected = hmac.new(key, data, hashlib.sha256).hexdigest().encode("ascii")
        if hmac.compare_digest(expected, signature):
            return data
    raise Unreadable(f"{where}: its signature does not match FLECHE_SECRET_KEY (or --secret-key)")


def _read(path: str) -> bytes:
    """A file's bytes; one that cannot be read is this value's or call's fault, reported."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise Unreadable(f"cannot read {path}: {e.strerror or e}") from None


def _load_pickle(content: bytes, keys: tuple[bytes, ...], where: str) -> Any:
    if content[:2] == b"\x1f\x8b":
        content = gzip.decompress(content)
    data = _unsign(content, keys, where)
    try:
        return _Unpickler(io.BytesIO(data)).load()
    except Unreadable:
        raise
    except Exception as e:  # noqa: BLE001 - any unpickling fault: this value is reported, not fatal
        raise Unreadable(f"cannot unpickle ({type(e).__name__}: {e})") from None


def secret_keys(given: str | None) -> tuple[bytes, ...]:
    """The original's signing keys: ``given`` or ``FLECHE_SECRET_KEY`` (hex, ``:``-separated)."""
    text = given if given is not None else os.environ.get("FLECHE_SECRET_KEY", "")
    try:
        return tuple(bytes.fromhex(part) for part in text.split(":") if part)
    except ValueError:
        raise OriginalCacheError(
            "the secret key (--secret-key or FLECHE_SECRET_KEY) must be hex, ':'-separated"
        ) from None


# -- values -------------------------------------------------------------------------------


class ValueFiles:
    """The original's value store in one directory: pickle-family files or bagofholding HDF5."""

    def __init__(self, root: str, keys: tuple[bytes, ...]) -> None:
        self.root = root
        self.keys = keys
        self._raw: dict[str, Any] = {}

    def _read_raw(self, digest: str) -> Any:
        path = os.path.join(self.root, digest)
        if os.path.isfile(path):
            content = _read(path)
            if content.startswith(_HDF5_MAGIC):
                return _load_bag(path)
            return _load_pickle(content, self.keys, path)
        bag = os.path.join(self.root, digest[:2] + ".h5")
        if os.path.isfile(bag):
            return _load_bag(f"{bag}/{digest}")
        raise Unreadable(f"value {digest[:12]} is not in {self.root} (0.22 did not keep it)")

    def load(self, digest: str, depth: int = 0) -> Any:
        """The value named ``digest``, its destructured children put back in place."""
        if depth > 100:
            raise Unreadable(f"value {digest[:12]}: destructured values nest too deeply")
        raw = self._read_raw(digest)
        return self._mend(raw, depth)

    def _get(self, item: Any, depth: int) -> Any:
        return self.load(item, depth + 1) if isinstance(item, OldDigest) else item

    def _mend(self, raw: Any, depth: int) -> Any:
        if isinstance(raw, OldDigestedIterable):
            return type(raw.items)(self._get(v, depth) for v in raw.items)
        if isinstance(raw, OldDigestedDict):
            return {self._get(k, depth): self._get(v, depth) for k, v in raw.items.items()}
        if isinstance(raw, OldDigestedFields):
            obj: Any = object.__new__(raw.cls)
            for name, v in raw.fields.items():
                object.__setattr__(obj, name, self._get(v, depth))
            return obj
        return raw


def _load_bag(path: str) -> Any:
    """A value bagofholding wrote (``path``: a file, or ``file.h5/<key>`` for a group in it).

    bagofholding imports each stored object's class by its dotted name; the
    original's own (``fleche.digest.Digest``, the destructuring wrappers) are not
    ours, so while it loads, those names resolve to the stand-ins above. Package
    versions are not compared (``version_validator="none"``): the value is read
    once, to be stored again by our codecs.
    """
    try:
        import bagofholding.content as content
        from bagofholding import H5Bag
    except ImportError:
        raise Unreadable(
            "stored by bagofholding, which is not installed: pip install bagofholding h5py"
        ) from None
    retrieve = content.retrieve

    def import_from_string(name: str) -> Any:
        module, _, attr = name.rpartition(".")
        stand_in = _STAND_INS.get((module, attr))
        if stand_in is not None:
            return stand_in
        if module == "fleche" or module.startswith("fleche."):
            raise Unreadable(f"holds {name}, a class of the original fleche")
        return retrieve.import_from_string(name)

    with _BAG_LOCK:
        content.retrieve = SimpleNamespace(import_from_string=import_from_string)
        try:
            return H5Bag(path, _skip_load=True).load(version_validator="none")
        except Unreadable:
            raise
        except Exception as e:  # noqa: BLE001 - any fault of one value is reported, not fatal
            raise Unreadable(f"bagofholding cannot load it ({type(e).__name__}: {e})") from None
        finally:
            content.retrieve = retrieve


_BAG_LOCK = threading.Lock()


# -- calls --------------------------------------------------------------------------------


@dataclass
class OldCall:
    """One call the original stored: its arguments and result as value digests."""

    key: str
    name: str
    module: str | None
    version: Any
    code_digest: str | None
    arguments: list[tuple[str, str]]
    result: str | None
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)


def _is_digest_name(name: str) -> bool:
    return len(name) == 64 and set(name) <= _HEX


class CallFiles:
    """Pickled ``DigestedCall`` files, one per call, named by the call digest."""

    def __init__(self, root: str, keys: tuple[bytes, ...]) -> None:
        self.root = root
        self.keys = keys

    def keys_(self) -> list[str]:
        return sorted(n for n in os.listdir(self.root) if _is_digest_name(n))

    def read(self, key: str) -> OldCall:
        path = os.path.join(self.root, key)
        content = _read(path)
        if content.startswith(_HDF5_MAGIC):
            raise Unreadable("a call stored by bagofholding (import its values with SQL calls)")
        c = _load_pickle(content, self.keys, path)
        if not isinstance(c, OldDigestedCall):
            raise Unreadable(f"{path} holds a {type(c).__qualname__}, not a call")
        return OldCall(
            key=key,
            name=c.name,
            module=getattr(c, "module", None),
            version=getattr(c, "version", None),
            code_digest=getattr(c, "code_digest", None),
            arguments=[(k, str(v)) for k, v in (c.arguments or {}).items()],
            result=None if c.result is None else str(c.result),
            metadata={k: dict(v) for k, v in (getattr(c, "metadata", None) or {}).items()},
        )


class CallTable:
    """The original's SQL call storage (tables ``calls``, ``arguments``, ``metadata``).

    Calls are read in batches of :attr:`BATCH` keys, three queries a batch rather
    than three a call (2,000 calls from SQLite: 6.9 s of queries one by one).
    """

    BATCH = 500

    def __init__(self, url: str) -> None:
        from sqlalchemy import create_engine

        self.url = url
        self.engine = create_engine(url)
        self._order: dict[str, int] = {}
        self._keys: list[str] = []
        self._batch: dict[str, OldCall] = {}

    def _rows(self, sql: str, **params: Any) -> list[Any]:
        from sqlalchemy import bindparam, text

        stmt = text(sql)
        if "keys" in params:
            stmt = stmt.bindparams(bindparam("keys", expanding=True))
        with self.engine.connect() as conn:
            return list(conn.execute(stmt, params))

    def keys_(self) -> list[str]:
        self._keys = [r[0] for r in self._rows('SELECT "key" FROM calls ORDER BY "key"')]
        self._order = {k: i for i, k in enumerate(self._keys)}
        return self._keys

    def _fetch(self, keys: list[str]) -> dict[str, OldCall]:
        calls: dict[str, OldCall] = {}
        head = 'SELECT "key", name, module, version, code_digest, result FROM calls'
        for key, name, module, version, code, result in self._rows(
            head + ' WHERE "key" IN :keys', keys=keys
        ):
            calls[key] = OldCall(
                key=key,
                name=name,
                module=module,
                version=json.loads(version) if isinstance(version, str) else version,
                code_digest=code,
                arguments=[],
                result=result,
            )
        for key, name, value in self._rows(
            "SELECT call_key, name, value FROM arguments WHERE call_key IN :keys "
            "ORDER BY call_key, position",
            keys=keys,
        ):
            if key in calls:
                calls[key].arguments.append((name, value))
        for key, name, data in self._rows(
            "SELECT call_key, name, data FROM metadata WHERE call_key IN :keys", keys=keys
        ):
            if key in calls:
                calls[key].metadata[name] = (
                    json.loads(data) if isinstance(data, str) else dict(data)
                )
        return calls

    def read(self, key: str) -> OldCall:
        call = self._batch.get(key)
        if call is None:
            at = self._order.get(key)
            batch = [key] if at is None else self._keys[at : at + self.BATCH]
            self._batch = self._fetch(batch)
            call = self._batch.get(key)
        if call is None:
            raise Unreadable(f"call {key[:12]} vanished from {self.url}")
        return call

    def close(self) -> None:
        self.engine.dispose()


# -- finding the two halves ---------------------------------------------------------------


@dataclass
class OriginalCache:
    """An original cache: where its values are, and its calls (files or an SQL table)."""

    values: ValueFiles
    calls: CallFiles | CallTable
    where: str

    def iter_keys(self) -> Iterator[str]:
        yield from self.calls.keys_()

    def close(self) -> None:
        if isinstance(self.calls, CallTable):
            self.calls.close()


def _sqlite_read_only(path: str) -> str:
    """An SQLAlchemy URL opening the SQLite file ``path`` read-only.

    0.22 kept its database in WAL mode: a read-write connection would checkpoint
    the write-ahead log into the file when it closes, changing the old cache, and
    even a read-only one leaves ``-wal``/``-shm`` files behind. With no pending log
    (0.22 closed cleanly) the file is opened ``immutable``: nothing is created.
    With one, ``mode=ro``, which reads the log too.
    """
    from urllib.parse import quote

    path = os.path.abspath(path)
    wal = path + "-wal"
    pending = os.path.isfile(wal) and os.path.getsize(wal) > 0
    mode = "mode=ro" if pending else "immutable=1"
    return f"sqlite:///file:{quote(path)}?{mode}&uri=true"


def open_original(
    root: str | None,
    *,
    values: str | None = None,
    calls: str | None = None,
    secret_key: str | None = None,
) -> OriginalCache:
    """The original cache at ``root`` (a template's root: ``values/`` beside ``calls/`` or
    ``calls.db``), its halves overridden by ``values`` (a directory) and ``calls`` (a
    directory or an SQLAlchemy URL)."""
    keys = secret_keys(secret_key)
    if root is not None:
        root = os.path.abspath(os.path.expanduser(root))
        if not os.path.isdir(root):
            raise OriginalCacheError(f"{root}: no such directory (give an original cache's root)")
    if values is None:
        if root is None:
            raise OriginalCacheError("give the original cache's root, or --values DIR")
        values = os.path.join(root, "values")
    values = os.path.abspath(os.path.expanduser(values))
    if not os.path.isdir(values):
        raise OriginalCacheError(
            f"{values}: no value directory; an original cache's root holds values/ and "
            "calls/ (templates pickle, cloudpickle, dill) or calls.db (template sql); "
            "give others with --values DIR and --calls DIR|URL"
        )
    call_store: CallFiles | CallTable
    if calls is None:
        assert root is not None
        if os.path.isdir(os.path.join(root, "calls")):
            call_store = CallFiles(os.path.join(root, "calls"), keys)
        elif os.path.isfile(os.path.join(root, "calls.db")):
            call_store = CallTable(_sqlite_read_only(os.path.join(root, "calls.db")))
        else:
            raise OriginalCacheError(
                f"{root}: neither calls/ nor calls.db; give the call store with --calls DIR|URL"
            )
    elif "://" in calls or calls.startswith("sqlite:"):
        call_store = CallTable(calls)
    elif os.path.isdir(os.path.expanduser(calls)):
        call_store = CallFiles(os.path.abspath(os.path.expanduser(calls)), keys)
    elif os.path.isfile(os.path.expanduser(calls)):  # an SQLite file, as 0.22's url= accepted
        call_store = CallTable(_sqlite_read_only(os.path.expanduser(calls)))
    else:
        raise OriginalCacheError(f"--calls {calls}: no such directory, file or SQLAlchemy URL")
    where = root or values
    return OriginalCache(ValueFiles(values, keys), call_store, where)
