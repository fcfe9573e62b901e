"""Signed stores and safe mode: a writable shared store must not run code on its readers.

The attacks are real: files written into the store with the tools an attacker
with write access has (the store's own API, or plain file writes), including a
pickle that would create a marker file when loaded. A reader with the key (or
in safe mode) must never load it, must return the right result, warn once,
and leave the store usable.
"""

from __future__ import annotations

import io
import pickle
import struct
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st
from services import need_module

from fleche import (
    Cache,
    ConfigError,
    CorruptObjectError,
    FlecheWarning,
    ForeignKeyMiss,
    SignatureError,
    UnsafeValueError,
    cache,
    codec,
    config,
    fleche,
)
from fleche.codec import signer_from
from fleche.store import open_store
from fleche.upkeep import verify

KEY = "k" * 16 + "-signing-key-one"
OTHER = "o" * 16 + "-signing-key-two"


def ours(seen: Any) -> list[Any]:
    return [w for w in seen if issubclass(w.category, FlecheWarning)]


class Evil:
    """Unpickling it creates ``path``: the proof that loading ran the attacker's code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> None:
        self.n += 1


def make_square(calls: Counter) -> Any:
    @fleche
    def square(x: int) -> int:
        calls()
        return x * x

    return square


def inject_pickled_result(root: Path, func: Any, args: tuple, marker: Path) -> None:
    """What an attacker with write access does: a valid, unsigned record whose result is a pickle."""
    attacker = Cache(str(root), secret_key=False, serializer="pickle", inline_limit=0)
    ref = attacker.put_value(Evil(str(marker)))
    fid, key = func.__fleche__.function_id, func.digest(*args)
    record = {"fleche": 1, "function": fid, "digest": key, "result": ref, "arguments": {}}
    record["metadata"] = {"created": 0.0}
    attacker.put_record(fid, key, record)


def frame_flags(blob: bytes) -> int:
    return blob[7]


# -- signing: the happy path ---------------------------------------------------------------


@pytest.mark.loose_records  # its point is a record file under calls/
def test_signed_cache_round_trip_and_every_file_is_signed(tmp_path: Path) -> None:
    calls = Counter()
    square = make_square(calls)
    with cache(Cache(str(tmp_path / "s"), secret_key=KEY, inline_limit=0)):
        assert square(3) == 9 and square(3) == 9
    assert calls.n == 1
    files = [p for p in (tmp_path / "s").rglob("*") if p.is_file() and p.parent.name != "s"]
    files = [p for p in files if "objects" in p.parts or "calls" in p.parts]
    assert len(files) == 2  # the record and its result object
    for p in files:
        blob = p.read_bytes()
        assert frame_flags(blob) & codec.FLAG_SIGNED
    # a reader without a key still reads a signed store (it skips the trailers)
    with cache(Cache(str(tmp_path / "s"), secret_key=False)), warnings.catch_warnings():
        warnings.simplefilter("error", FlecheWarning)
        assert square(3) == 9
    assert calls.n == 1


@pytest.mark.parametrize(
    "value",
    [
        None,
        {"a": [1, 2.5, "x"]},
        b"\x00" * 10_000,
        np.arange(1000, dtype=np.float32),
        np.random.default_rng(0).random(3 << 20),  # 24 MiB: hashed and signed in a thread
        np.zeros(3 << 20),  # compressible
    ],
    ids=["none", "plain", "bytes", "array", "large-raw", "large-zstd"],
)
def test_signed_values_load_back(tmp_path: Path, value: Any) -> None:
    c = Cache(str(tmp_path / "s"), secret_key=KEY)
    ref = c.put_value(value)
    back = c.load_value(ref)
    if isinstance(value, np.ndarray):
        np.testing.assert_array_equal(back, value)
        np.testing.assert_array_equal(c.load_value(ref, mmap=True), value)
    else:
        assert back == value


def test_signed_streamed_frames_keep_their_trailer_apart() -> None:
    signer = signer_from(KEY)
    for value in (np.zeros(1 << 20), np.random.default_rng(1).random(1 << 17)):
        enc = codec.encode_value(value, signer=signer)
        blob = b"".join(bytes(memoryview(p).cast("B")) for p in enc.parts)
        for reader in (io.BytesIO(blob), _Trickle(blob)):  # short reads, like a socket
            _, payload = codec.unframe_stream(reader, signer=signer, expect=enc.oid)
            assert bytes(payload) == bytes(codec.unframe(blob)[1])
        with pytest.raises(CorruptObjectError):
            codec.unframe_stream(io.BytesIO(blob[:-5]), signer=signer)
        with pytest.raises(CorruptObjectError):
            codec.unframe_stream(io.BytesIO(blob + b"extra"), signer=signer)


class _Trickle(io.BytesIO):
    def read(self, size: int | None = -1) -> bytes:
        return super().read(7 if size is None or size < 0 or size > 7 else size)

    def readinto(self, buf: Any) -> int:
        data = self.read(len(memoryview(buf)))
        memoryview(buf)[: len(data)] = data
        return len(data)


# -- signing: the attacks ------------------------------------------------------------------


def test_injected_pickle_is_never_loaded_by_a_signed_reader(tmp_path: Path) -> None:
    calls = Counter()
    square = make_square(calls)
    marker = tmp_path / "pwned"
    inject_pickled_result(tmp_path / "s", square, (4,), marker)
    with cache(Cache(str(tmp_path / "s"), secret_key=KEY)), pytest.warns(FlecheWarning) as seen:
        assert square(4) == 16
    assert not marker.exists()
    assert calls.n == 1
    assert len(ours(seen)) == 1 and "not signed" in str(ours(seen)[0].message)
    # recomputing replaced the forged record with a signed one: the next reader hits quietly
    with cache(Cache(str(tmp_path / "s"), secret_key=KEY)), warnings.catch_warnings():
        warnings.simplefilter("error", FlecheWarning)
        assert square(4) == 16
    assert calls.n == 1 and not marker.exists()
    assert list((tmp_path / "s" / "quarantine").rglob("*"))  # the forgery, kept for inspection


def test_a_reader_without_the_signing_key_refuses_and_recomputes(tmp_path: Path) -> None:
    calls = Counter()
    square = make_square(calls)
    with cache(Cache(str(tmp_path / "s"), secret_key=OTHER)):
        square(5)
    with (
        cache(Cache(str(tmp_path / "s"), secret_key=KEY)),
        pytest.warns(FlecheWarning, match="key id"),
    ):
        assert square(5) == 25
    assert calls.n == 2


def test_key_rotation_first_key_signs_all_keys_verify(tmp_path: Path) -> None:
    calls = Counter()
    square = make_square(calls)
    with cache(Cache(str(tmp_path / "s"), secret_key=OTHER)):
        square(6)  # signed with the old key
    rotated = Cache(str(tmp_path / "s"), secret_key=f"{KEY},{OTHER}")
    with cache(rotated), warnings.catch_warnings():
        warnings.simplefilter("error", FlecheWarning)
        assert square(6) == 36  # the old key still verifies
        square(7)  # the new key signs
    assert calls.n == 2
    with cache(Cache(str(tmp_path / "s"), secret_key=KEY)), warnings.catch_warnings():
        warnings.simplefilter("error", FlecheWarning)
        assert square(7) == 49
    assert calls.n == 2


def _resign_header(blob: bytearray) -> None:
    """Fix the XXH3 in the header after tampering: only the signature can tell now."""
    size = struct.unpack_from("<Q", blob, 8)[0]
    blob[16:32] = xxhash.xxh3_128_digest(bytes(blob[32 : 32 + size]))


@pytest.mark.parametrize("where", ["payload", "serializer", "key id", "tag", "trailer cut"])
def test_tampered_signed_object_is_refused(tmp_path: Path, where: str) -> None:
    c = Cache(str(tmp_path / "s"), secret_key=KEY, compression_level=0)
    ref = c.put_value(list(range(2000)))  # an object, msgpack
    path = Path(c.store.local_path(ref["oid"]) or "")
    blob = bytearray(path.read_bytes())
    if where == "payload":
        blob[40] ^= 1
        _resign_header(blob)
    elif where == "serializer":  # the same bytes read by another serializer
        blob[6] = codec.SER_PICKLE
    elif where == "key id":
        blob[-30] ^= 1
    elif where == "tag":
        blob[-1] ^= 1
    else:
        del blob[-32:]
        blob[7] = 0  # claims to be unsigned
    path.write_bytes(bytes(blob))
    if where == "key id":  # names a key we lack: another key's file, a miss left in place
        with pytest.raises(ForeignKeyMiss), pytest.warns(FlecheWarning, match="left in place"):
            Cache(str(tmp_path / "s"), secret_key=KEY).load_value(ref)
        assert path.read_bytes() == bytes(blob)
        return
    with pytest.raises(CorruptObjectError):
        Cache(str(tmp_path / "s"), secret_key=KEY).load_value(ref)


@pytest.mark.loose_records  # its point is a record file under calls/
def test_a_signed_record_cannot_be_replayed_under_another_call(tmp_path: Path) -> None:
    calls = Counter()
    square = make_square(calls)
    with cache(Cache(str(tmp_path / "s"), secret_key=KEY)):
        square(8)
    fid = square.__fleche__.function_id
    src = Path(Cache(str(tmp_path / "s")).store._call_path(fid, square.digest(8)))
    dst = Path(Cache(str(tmp_path / "s")).store._call_path(fid, square.digest(9)))
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes())  # "square(9) is 64"
    with cache(Cache(str(tmp_path / "s"), secret_key=KEY)), pytest.warns(FlecheWarning):
        assert square(9) == 81
    assert calls.n == 2


def test_signed_mmap_checks_the_signature(tmp_path: Path) -> None:
    c = Cache(str(tmp_path / "s"), secret_key=KEY)
    a = np.random.default_rng(2).random(1 << 18)  # 2 MiB: stored raw, so mapped
    ref = c.put_value(a)
    np.testing.assert_array_equal(c.load_value(ref, mmap=True), a)
    path = Path(c.store.local_path(ref["oid"]) or "")
    blob = bytearray(path.read_bytes())
    blob[-100] ^= 0xFF  # inside the array's bytes
    _resign_header(blob)
    path.write_bytes(bytes(blob))
    with pytest.raises(SignatureError):
        Cache(str(tmp_path / "s"), secret_key=KEY).load_value(ref, mmap=True)


def test_verify_reports_unsigned_files_only_when_given_the_key(tmp_path: Path) -> None:
    calls = Counter()
    square = make_square(calls)
    with cache(Cache(str(tmp_path / "s"), secret_key=KEY, inline_limit=0)):
        square(1)
    with cache(Cache(str(tmp_path / "s"), secret_key=False, inline_limit=0)):
        square(2)  # unsigned
    store = Cache(str(tmp_path / "s")).store
    assert verify(store).ok
    report = verify(store, signer=signer_from(KEY))
    assert len(report.corrupt_objects) == 1 and len(report.corrupt_records) == 1
    assert "not signed" in report.corrupt_records[0].reason


@settings(max_examples=300, deadline=2000)
@given(st.binary(max_size=600))
def test_fuzz_signed_decoders_raise_only_corrupt_object_error(data: bytes) -> None:
    signer = signer_from(KEY)
    blob = bytearray(
        codec.encode_record(
            {"fleche": 1, "result": {"inline": b"", "ser": 0}}, signer=signer, name=("f", "0" * 32)
        )
    )
    for candidate in (data, bytes(blob[:32]) + data, bytes(blob[: len(blob) % 64]) + data):
        for call in (
            lambda b: codec.decode_record(b, signer=signer, name=("f", "0" * 32)),
            lambda b: codec.unframe(b, signer=signer),
            lambda b: codec.unframe_stream(io.BytesIO(b), signer=signer),
        ):
            try:
                call(candidate)
            except CorruptObjectError:
                pass


# -- keys and configuration ----------------------------------------------------------------


def test_keys_from_the_environment_and_off_switch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLECHE_SECRET_KEY", f" {KEY} , {OTHER} ")
    c = Cache(str(tmp_path / "s"))
    assert c.signer is not None and c.signer.key_id == signer_from(KEY).key_id
    assert KEY not in repr(c.signer)
    assert Cache(str(tmp_path / "s"), secret_key=False).signer is None
    monkeypatch.setenv("FLECHE_SECRET_KEY", "")
    assert Cache(str(tmp_path / "s")).signer is None


@pytest.mark.parametrize(
    "spec, message",
    [
        ("short", "at least 16 bytes"),
        ([], "no key"),
        (42, "expected a key"),
        ([KEY, 3], "str or bytes"),
    ],
)
def test_bad_keys_are_config_errors(tmp_path: Path, spec: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Cache(str(tmp_path / "s"), secret_key=spec)


def test_short_key_in_the_environment_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLECHE_SECRET_KEY", "tooshort")
    with pytest.raises(ConfigError, match="FLECHE_SECRET_KEY.*at least 16"):
        Cache(str(tmp_path / "s"))


@pytest.fixture
def project_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("FLECHE_CACHE", raising=False)
    monkeypatch.delenv("FLECHE_SECRET_KEY", raising=False)
    config.reset_default()
    yield tmp_path
    config.reset_default()


def test_secret_key_file_and_safe_in_fleche_toml(project_dir: Path) -> None:
    (project_dir / "keys.txt").write_text(f"# current key first\n{KEY}\n{OTHER}\n")
    (project_dir / "fleche.toml").write_text(
        'root = true\ndefault = "team"\n[caches.team]\nurl = "store"\n'
        'secret_key_file = "keys.txt"\nsafe = true\n'
    )
    c = config.load_config().cache("team")
    assert isinstance(c, Cache) and c.safe
    assert c.signer is not None and c.signer.key_id == signer_from(KEY).key_id


@pytest.mark.parametrize(
    "body, message",
    [
        (f'secret_key = "{KEY}"', "secret_key_file, or in the FLECHE_SECRET_KEY"),
        ('secret_key_file = "missing.txt"', "missing.txt"),
        ('secret_key_file = "empty.txt"', "holds no key"),
        ("safe = 1", "safe = 1: expected true or false"),
    ],
)
def test_bad_security_config_names_the_key(project_dir: Path, body: str, message: str) -> None:
    (project_dir / "empty.txt").write_text("# nothing\n\n")
    (project_dir / "fleche.toml").write_text(f'root = true\n[caches.team]\nurl = "store"\n{body}\n')
    with pytest.raises(ConfigError, match=message):
        config.load_config().cache("team")


# -- safe mode -----------------------------------------------------------------------------


class Point:
    def __init__(self, x: int) -> None:
        self.x = x


def test_safe_mode_stores_plain_data_and_arrays_and_refuses_pickles(tmp_path: Path) -> None:
    calls = Counter()

    @fleche
    def make(kind: str) -> Any:
        calls()
        return {"plain": {"a": [1, 2]}, "array": np.arange(5), "point": Point(1)}[kind]

    with cache(Cache(str(tmp_path / "s"), safe=True)), pytest.warns(FlecheWarning) as seen:
        assert make("plain") == {"a": [1, 2]}
        np.testing.assert_array_equal(make("array"), np.arange(5))
        assert make("point").x == 1 and make("point").x == 1  # returned, not cached
        assert make("plain") == {"a": [1, 2]}
    assert calls.n == 4  # plain, array, point twice
    assert len(ours(seen)) == 1 and "safe mode" in str(ours(seen)[0].message)


def test_safe_reader_never_unpickles_and_recomputes_safely(tmp_path: Path) -> None:
    calls = Counter()
    square = make_square(calls)
    marker = tmp_path / "pwned"
    inject_pickled_result(tmp_path / "s", square, (3,), marker)
    with (
        cache(Cache(str(tmp_path / "s"), safe=True)),
        pytest.warns(FlecheWarning, match="safe mode"),
    ):
        assert square(3) == 9
    assert not marker.exists() and calls.n == 1
    with cache(Cache(str(tmp_path / "s"), safe=True)), warnings.catch_warnings():
        warnings.simplefilter("error", FlecheWarning)
        assert square(3) == 9  # stored as msgpack this time
    assert calls.n == 1


def test_safe_mode_refuses_pickle_serializers(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="safe=True"):
        Cache(str(tmp_path / "s"), safe=True, serializer="pickle")
    with pytest.raises(UnsafeValueError, match="Point"):
        Cache(str(tmp_path / "s"), safe=True).put_value(Point(2))
    with pytest.raises(ValueError, match="safe=1"):
        Cache(str(tmp_path / "s"), safe=1)  # type: ignore[arg-type]


def test_safe_mode_refuses_pickled_array_members_and_object_arrays(tmp_path: Path) -> None:
    c = Cache(str(tmp_path / "s"))
    ref = c.put_value({"big": np.zeros(1 << 18), "obj": object})  # pickled, with a child
    with pytest.raises(UnsafeValueError):
        Cache(str(tmp_path / "s"), safe=True).load_value(ref)
    with pytest.raises(UnsafeValueError):
        Cache(str(tmp_path / "s"), safe=True).put_value(np.array([Point(1)], dtype=object))


def test_pickle_bytes_never_reach_pickle_in_safe_mode(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(Evil(str(marker)))
    ref = {"type": "x.Y", "ser": codec.SER_PICKLE, "inline": payload}
    with pytest.raises(UnsafeValueError):
        Cache(str(tmp_path / "s"), safe=True).load_value(ref)
    assert not marker.exists()


def test_signed_and_safe_on_s3(tmp_path: Path) -> None:
    need_module("moto", "moto (the S3 test server) is not installed")
    from s3_server import MotoS3

    server = MotoS3()
    try:
        bucket = server.new_bucket()
        url = f"s3://{bucket}/team-{uuid.uuid4().hex[:6]}"
        calls = Counter()
        square = make_square(calls)
        marker = tmp_path / "pwned"
        store = open_store(url, **server.options())
        evil = Cache(store, secret_key=False, serializer="pickle", inline_limit=0, index=False)
        ref = evil.put_value(Evil(str(marker)))
        fid, key = square.__fleche__.function_id, square.digest(2)
        evil.put_record(
            fid,
            key,
            {
                "fleche": 1,
                "function": fid,
                "digest": key,
                "result": ref,
                "arguments": {},
                "metadata": {"created": 0.0},
            },
        )
        team = Cache(open_store(url, **server.options()), secret_key=KEY, safe=True, index=False)
        with cache(team), pytest.warns(FlecheWarning):
            assert square(2) == 4
        with cache(team), warnings.catch_warnings():
            warnings.simplefilter("error", FlecheWarning)
            assert square(2) == 4
        assert calls.n == 1 and not marker.exists()
    finally:
        server.stop()


def test_a_store_signed_late_warns_once_not_once_per_file(tmp_path: Path) -> None:
    calls = Counter()
    square = make_square(calls)
    with cache(Cache(str(tmp_path / "s"), secret_key=False)):
        for x in range(5):
            square(x)  # unsigned
    with cache(Cache(str(tmp_path / "s"), secret_key=KEY)), pytest.warns(FlecheWarning) as seen:
        assert [square(x) for x in range(5)] == [0, 1, 4, 9, 16]
    assert calls.n == 10
    assert len(ours(seen)) == 1 and "silently" in str(ours(seen)[0].message)


# -- two keys sharing one store ------------------------------------------------------------
# Each key's files belong to its holders: a reader holding another key (or a wrong one)
# never serves them, and never moves, deletes or rewrites them either.


def store_files(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every object and record file: bytes and mtime (the index and tmp/ may change)."""
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for top in ("objects", "calls")
        for p in sorted((root / top).rglob("*"))
        if p.is_file()
    }


def make_array(calls: Counter) -> Any:
    @fleche
    def ramp(x: int) -> Any:
        calls()
        return np.arange(5000, dtype=np.int64) + x  # an object of its own

    return ramp


def served(func: Any, *args: Any) -> bool:
    """What f.load says: True when it returns a value, False when it raises a KeyError."""
    try:
        func.load(*args)
    except KeyError:
        return False
    return True


def test_a_reader_with_another_key_never_moves_or_rewrites_its_files(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    calls = Counter()
    square, ramp = make_square(calls), make_array(calls)
    with cache(Cache(str(root), secret_key=KEY)):
        square(3)
        ramp(3)
    before = store_files(root)
    with cache(Cache(str(root), secret_key=OTHER)), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for _ in range(3):
            assert square(3) == 9
            np.testing.assert_array_equal(ramp(3), np.arange(5000) + 3)
            assert not square.contains(3) and not served(square, 3)
            assert not ramp.contains(3) and not served(ramp, 3)
    assert calls.n == 2 + 6  # a miss each time: another key's files are never served
    messages = [str(w.message) for w in ours(seen)]
    assert len(messages) == 1, messages
    assert signer_from(KEY).key_id in messages[0]
    assert store_files(root) == before
    assert not (root / "quarantine").exists()
    with cache(Cache(str(root), secret_key=KEY)), warnings.catch_warnings():
        warnings.simplefilter("error", FlecheWarning)
        assert square(3) == 9 and square.contains(3) and served(square, 3)
        assert ramp.contains(3) and served(ramp, 3)
        np.testing.assert_array_equal(ramp(3), np.arange(5000) + 3)
    assert calls.n == 8


def test_a_value_another_key_stored_first_is_a_miss_and_stays_theirs(tmp_path: Path) -> None:
    """Objects are named by their content: the same value from two keys is one file, the first's."""
    root = tmp_path / "shared"
    calls = Counter()
    ramp_a, ramp_b = make_array(calls), make_array(calls)
    with cache(Cache(str(root), secret_key=KEY)):
        ramp_a(4)
    theirs = store_files(root)
    with cache(Cache(str(root), secret_key=OTHER)), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for _ in range(3):
            np.testing.assert_array_equal(ramp_b(4), np.arange(5000) + 4)
            assert not ramp_b.contains(4)
            with pytest.raises(KeyError):
                ramp_b.load(4)
    messages = [str(w.message) for w in ours(seen)]
    assert len(messages) == 1 and signer_from(KEY).key_id in messages[0], messages
    assert calls.n == 1 + 3
    now = store_files(root)
    assert all(now[name] == theirs[name] for name in theirs)  # B's own record came on top
    with cache(Cache(str(root), secret_key=KEY)), warnings.catch_warnings():
        warnings.simplefilter("error", FlecheWarning)
        np.testing.assert_array_equal(ramp_a(4), np.arange(5000) + 4)
    assert calls.n == 4


@pytest.mark.loose_records  # its point is a record file under calls/
def test_contains_and_load_agree_for_every_kind_of_refused_file(tmp_path: Path) -> None:
    root = tmp_path / "s"
    calls = Counter()
    square, ramp = make_square(calls), make_array(calls)
    with cache(Cache(str(root), secret_key=KEY, inline_limit=0)):
        for x in range(6):
            square(x)
        ramp(1)
    c = Cache(str(root), secret_key=KEY, inline_limit=0)
    fid = square.__fleche__.function_id
    record = Path(c.store._call_path(fid, square.digest(1)))
    record.write_bytes(record.read_bytes()[:-3] + b"xyz")  # forged: moved aside
    oid = codec.decode_record(c.store.get_call(fid, square.digest(2)))["result"]["oid"]
    Path(c.store._oid_path(oid)).unlink()  # dangling
    with cache(Cache(str(root), secret_key=False, inline_limit=0)):
        square.rerun(3)  # unsigned: moved aside
    with cache(Cache(str(root), secret_key=OTHER, inline_limit=0)):
        square(6)  # another key's; 7 is stored nowhere
    with cache(c), warnings.catch_warnings():
        warnings.simplefilter("ignore", FlecheWarning)
        for x in range(8):
            assert square.contains(x) == served(square, x), x
            assert square.contains(x) == (x in (0, 4, 5)), x
        assert ramp.contains(1) and served(ramp, 1)


def test_verify_and_gc_with_another_key_leave_its_files_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from fleche.cli import main

    root = tmp_path / "shared"
    calls = Counter()
    square, ramp = make_square(calls), make_array(calls)
    with cache(Cache(str(root), secret_key=KEY)):
        square(1)
        ramp(1)
    with cache(Cache(str(root), secret_key=OTHER)):
        square(2)
        ramp(2)
    theirs = store_files(root)
    report = verify(Cache(str(root)).store, repair=True, signer=signer_from(OTHER))
    assert store_files(root) == theirs
    assert report.ok and report.repaired
    assert sorted(f.kind for f in report.foreign) == ["object", "record", "record"]
    monkeypatch.setenv("FLECHE_SECRET_KEY", OTHER)
    out = CliRunner().invoke(main, ["verify", "--repair", "-s", str(root)])
    assert out.exit_code == 0, out.output
    assert signer_from(KEY).key_id in out.stdout and "left alone" in out.stdout
    out = CliRunner().invoke(main, ["gc", "-s", str(root), "--grace", "0s"])
    assert out.exit_code == 0, out.output
    out = CliRunner().invoke(main, ["sign", "-s", str(root)])
    assert out.exit_code == 1 and signer_from(KEY).key_id in out.stdout, out.output
    assert store_files(root) == theirs
    assert not (root / "quarantine").exists()


@pytest.mark.parametrize("kind", ["local", "s3", "sftp", "remote"])
def test_two_keys_share_a_store_on_every_backend(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str
) -> None:
    from backends import open_backend

    store = open_backend(kind, request, tmp_path)
    calls = Counter()
    square, ramp_a, ramp_b = make_square(calls), make_array(calls), make_array(calls)
    with cache(Cache(store, secret_key=KEY)):
        square(2)
        ramp_a(2)
    fid = square.__fleche__.function_id
    record = bytes(store.get_call(fid, square.digest(2)))
    objects = {oid: bytes(store.get(oid)) for oid in store.iter_oids()}
    with cache(Cache(store, secret_key=OTHER)), warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for _ in range(2):
            assert square(2) == 4
            np.testing.assert_array_equal(ramp_b(2), np.arange(5000) + 2)
            assert not square.contains(2) and not served(square, 2)
            assert not ramp_b.contains(2) and not served(ramp_b, 2)
    messages = [str(w.message) for w in ours(seen)]
    assert len(messages) == 1 and signer_from(KEY).key_id in messages[0], messages
    assert bytes(store.get_call(fid, square.digest(2))) == record
    assert {oid: bytes(store.get(oid)) for oid in objects} == objects
    with cache(Cache(store, secret_key=KEY)):
        assert square.contains(2) and ramp_a.contains(2) and served(ramp_a, 2)
