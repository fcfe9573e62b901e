"""Signed frames: a keyed BLAKE3 trailer that lets readers refuse files they did not write.

A store anyone can write to (a shared bucket, a team directory) is a way to
run code on every reader: loading a pickle runs whatever it says. With a
secret key, every frame fleche writes ends in a 32-byte trailer, and a reader
holding the key refuses (as a miss, warned about) any file that is unsigned,
signed with a key it lacks, or altered. The trailer is::

    key id (8 bytes)   BLAKE3 of the key in key-derivation mode, context "fleche key id v1"
    tag    (24 bytes)  BLAKE3 in keyed mode, over: len(name) (u16) | name |
                       serializer (u8) | payload length (u64) | payload; keyed with
                       BLAKE3-derive-key(context "fleche object signing v1" or
                       "fleche record signing v1", the secret key)

The tag covers the *uncompressed* payload and the serializer byte (reading
the same bytes with another serializer is the attack), and for records their
place in the store (function id and call key), so a signed record cannot be
replayed under another call. An object's place is its payload's hash, which
the reader checks anyway. Several keys may be given: the first signs, all
verify (rotation).

BLAKE3 (the ``blake3`` package, extra ``fleche[sign]``) rather than the
standard library's HMAC or keyed BLAKE2b: it signs at ~8 GB/s on one core
here against 1.5 (SHA-256) and 0.95 (BLAKE2b), so a 100 MB value is signed
in the time its bytes take to write, and it releases the GIL.
"""

from __future__ import annotations

import importlib
import os
import struct
from collections.abc import Iterable, Sequence

from fleche.errors import ConfigError, SignatureError

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any

ENV = "FLECHE_SECRET_KEY"
"""Environment variable with the secret key(s), comma-separated; the first one signs."""
MIN_KEY = 16
"""Shortest key accepted, in bytes: a short key is guessed offline from any signed file."""
TRAILER_SIZE = 32
_KEY_ID = 8
_TAG = 24
_PREFIX = struct.Struct("<BQ")
_NAME_LEN = struct.Struct("<H")


def _blake3() -> Any:
    try:
        return importlib.import_module("blake3").blake3
    except ImportError:
        raise ConfigError(
            "signed stores need the blake3 package: pip install 'fleche[sign]'"
        ) from None


def _derive(context: str, key: bytes) -> bytes:
    return bytes(_blake3()(key, derive_key_context=context).digest())


def _as_key(key: str | bytes, where: str) -> bytes:
    raw = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    if len(raw) < MIN_KEY:
        raise ConfigError(
            f"{where}: a secret key must be at least {MIN_KEY} bytes (got {len(raw)}); "
            "make one with: python -c 'import secrets; print(secrets.token_hex(32))'"
        )
    return raw


class _Key:
    """One secret key, as the three keys derived from it (never the key itself)."""

    __slots__ = ("id", "object", "record")

    def __init__(self, secret: bytes) -> None:
        self.id = _derive("fleche key id v1", secret)[:_KEY_ID]
        self.object = _derive("fleche object signing v1", secret)
        self.record = _derive("fleche record signing v1", secret)


class Signer:
    """The keys of a signed store: the first signs what is written, any of them verifies.

    Build one with :func:`signer_from`; give it to :class:`fleche.Cache` as
    ``secret_key=`` (or set ``FLECHE_SECRET_KEY``).
    """

    __slots__ = ("_compare", "_hasher", "_keys", "_sign")

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ConfigError("a Signer needs at least one key")
        self._hasher = _blake3()
        # hmac (and the _hashlib/OpenSSL it loads, ~8 ms) only for signed caches,
        # and once per Signer rather than on each check
        import hmac

        self._compare = hmac.compare_digest
        derived = [_Key(k) for k in keys]
        self._sign = derived[0]
        self._keys = {k.id: k for k in derived}

    def __repr__(self) -> str:  # never show a key
        return f"Signer(signing key id {self._sign.id.hex()}, {len(self._keys)} key(s))"

    @property
    def key_id(self) -> str:
        """Hex id of the signing key (safe to show: it does not reveal the key)."""
        return self._sign.id.hex()

    def knows(self, trailer: Any) -> bool:
        """Whether ``trailer`` names one of these keys (it may still fail :meth:`check`).

        A file naming another key belongs to that key's holders: a reader
        without it treats the file as a miss and leaves it alone.
        """
        return bytes(trailer[:_KEY_ID]) in self._keys

    def signed_by_me(self, trailer: Any) -> bool:
        """Whether ``trailer`` names the signing key (it may still fail :meth:`check`)."""
        return bytes(trailer[:_KEY_ID]) == self._sign.id

    def _start(self, key: _Key, record: bool, name: bytes, ser: int, size: int) -> Any:
        h = self._hasher(key=key.record if record else key.object, max_threads=1)
        h.update(_NAME_LEN.pack(len(name)))
        h.update(name)
        h.update(_PREFIX.pack(ser, size))
        return h

    def _tag(self, key: _Key, record: bool, name: bytes, ser: int, parts: Iterable[Any]) -> bytes:
        sized = list(parts)
        h = self._start(key, record, name, ser, sum(memoryview(p).nbytes for p in sized))
        for part in sized:
            h.update(part)
        return bytes(h.digest(length=_TAG))

    def start(self, ser: int, size: int) -> Any:
        """An incremental signer of an object's payload of ``size`` bytes: ``update`` it, then
        :meth:`finish` it (a payload produced piece by piece, never whole in memory)."""
        return self._start(self._sign, False, b"", ser, size)

    def finish(self, hasher: Any) -> bytes:
        """The trailer of a payload fed to ``hasher`` (from :meth:`start`)."""
        return self._sign.id + bytes(hasher.digest(length=_TAG))

    def trailer(
        self, ser: int, parts: Iterable[Any], *, record: bool = False, name: bytes = b""
    ) -> bytes:
        """The 32-byte trailer that signs a payload (given as buffers, uncompressed)."""
        return self._sign.id + self._tag(self._sign, record, name, ser, parts)

    def check(
        self,
        trailer: Any,
        ser: int,
        payload: Any,
        where: str,
        *,
        record: bool = False,
        name: bytes = b"",
    ) -> None:
        """Raise :class:`SignatureError` unless ``trailer`` signs ``payload`` with one of our keys."""
        if trailer is None:
            raise SignatureError(
                f"{where} is not signed, and this cache only trusts signed files "
                f"({ENV} or secret_key= is set): treated as a miss",
                "unsigned",
            )
        trailer = bytes(trailer)
        key = self._keys.get(trailer[:_KEY_ID])
        if key is None:
            raise SignatureError(
                f"{where} is signed with key id {trailer[:_KEY_ID].hex()}, which is not one of "
                f"this cache's keys: add that key to {ENV} (comma-separated) to trust it",
                f"unknown key {trailer[:_KEY_ID].hex()}",
            )
        if not self._compare(trailer[_KEY_ID:], self._tag(key, record, name, ser, [payload])):
            raise SignatureError(
                f"{where} fails its signature check: it was altered or forged", "forged"
            )


def signer_from(spec: Any, *, where: str = "secret_key") -> Signer | None:
    """A :class:`Signer` from ``secret_key=`` (str, bytes, a list of them, a Signer) or None.

    ``None`` reads ``FLECHE_SECRET_KEY`` (unset or empty: no signing); ``False``
    turns signing off even when the variable is set. A str holds one key or
    several separated by commas.
    """
    if spec is False:
        return None
    if spec is None:
        spec = os.environ.get(ENV, "")
        where = ENV
        if not spec.strip():
            return None
    if isinstance(spec, Signer):
        return spec
    if isinstance(spec, str):
        keys: list[Any] = [k.strip() for k in spec.split(",") if k.strip()]
    elif isinstance(spec, (bytes, bytearray)):
        keys = [bytes(spec)]
    elif isinstance(spec, (list, tuple)):
        keys = list(spec)
    else:
        raise ConfigError(
            f"{where}: expected a key (str or bytes), a list of keys, or None; "
            f"got {type(spec).__name__}"
        )
    if not keys:
        raise ConfigError(f"{where}: no key given")
    for k in keys:
        if not isinstance(k, (str, bytes, bytearray)):
            raise ConfigError(f"{where}: each key must be str or bytes, not {type(k).__name__}")
    return Signer([_as_key(k, where) for k in keys])
