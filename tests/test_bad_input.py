"""A catalogue of hostile and odd inputs to the public API, the CLI and the configuration.

Each entry says what must happen: a clear error (its type and a phrase of its
message) or the correct behaviour. Then the decoders are fuzzed: arbitrary
bytes, and mutations of valid frames, must give ``CorruptObjectError`` (never
another exception, never a hang).
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from services import need_module
from torture_helpers import budget

from fleche import (
    Cache,
    CacheMiss,
    ConfigError,
    CorruptObjectError,
    UnhashableArgumentError,
    cache,
    codec,
    config,
    fleche,
    tags,
)
from fleche.cli import main
from fleche.codec import MissingSerializerError
from fleche.errors import FlecheWarning, SerializationError
from fleche.store import open_store
from fleche.sync import sync

HEX = "0123456789abcdef" * 2

# -- the public API --------------------------------------------------------------------------


class Counted:
    """A cached identity function that counts its computations."""

    def __init__(self) -> None:
        self.n = 0

        @fleche
        def f(x: Any) -> Any:
            self.n += 1
            return x

        self.f = f


def cycle_list() -> list[Any]:
    x: list[Any] = []
    x.append(x)
    return x


def cycle_dict() -> dict[str, Any]:
    x: dict[str, Any] = {}
    x["self"] = x
    return x


def twice(x: Any, same: Callable[[Any, Any], bool] = lambda a, b: a == b) -> Callable[[], None]:
    """Call an identity function with ``x`` twice: the right result, computed once."""

    def run() -> None:
        c = Counted()
        assert same(c.f(x), x)
        assert same(c.f(x), x)
        assert c.n == 1, f"computed {c.n} times"

    return run


def distinct(a: Any, b: Any) -> Callable[[], None]:
    """``a`` and ``b`` are different calls: each computed, each result its own."""

    def run() -> None:
        c = Counted()
        ra, rb = c.f(a), c.f(b)
        assert type(ra) is type(a) and ra == a
        assert type(rb) is type(b) and rb == b
        assert c.n == 2

    return run


def numbers_apart() -> None:
    c = Counted()
    got = [c.f(1), c.f(1.0), c.f(True), c.f(1)]
    assert [type(g) for g in got] == [int, float, bool, int]
    assert c.n == 3


def nan_calls() -> None:
    c = Counted()
    assert math.isnan(c.f(float("nan")))
    assert math.isnan(c.f(float("-nan")))  # another NaN: the same call (NaN is canonical)
    assert math.isnan(c.f(math.inf - math.inf))
    assert c.n == 1


def signed_zeros() -> None:
    c = Counted()
    assert math.copysign(1, c.f(-0.0)) == -1
    assert math.copysign(1, c.f(0.0)) == 1
    assert math.copysign(1, c.f(-0.0)) == -1
    assert c.n == 2


def surrogate_argument() -> None:
    c = Counted()
    odd = "caf\udce9"  # what os.fsdecode makes of a latin-1 byte: not encodable as UTF-8
    assert c.f(odd) == odd and c.f(odd) == odd
    assert c.n == 1
    assert c.f.call(odd).arguments["x"] == odd


def surrogate_in_tags() -> None:
    c = Counted()
    with tags(project="caf\udce9"):
        assert c.f(1) == 1
    assert c.f(1) == 1 and c.n == 1
    assert c.f.call(1).metadata["tags"]["project"] == "caf\\udce9"  # kept, escaped


def surrogate_cwd(tmp_path: Path) -> None:
    """A working directory whose name is not UTF-8: os.getcwd() has surrogates."""
    odd = os.fsencode(str(tmp_path)) + b"/caf\xe9"
    os.mkdir(odd)
    old = os.getcwd()
    os.chdir(odd)
    try:
        c = Counted()
        assert c.f(1) == 1 and c.f(1) == 1
        assert c.n == 1
    finally:
        os.chdir(old)


def varargs() -> None:
    n = [0]

    @fleche
    def va(*args: Any, **kwargs: Any) -> Any:
        n[0] += 1
        return args, kwargs

    assert va(1, 2, z=3, y=4) == ((1, 2), {"z": 3, "y": 4})
    assert va(1, 2, y=4, z=3) == ((1, 2), {"y": 4, "z": 3})  # keyword order: the same call
    assert n[0] == 1
    assert va((1, 2)) == (((1, 2),), {})  # one tuple is not two arguments
    assert n[0] == 2


def two_lambdas() -> None:
    add = fleche(lambda x: x + 1)
    mul = fleche(lambda x: x * 10)
    assert add(3) == 4
    assert mul(3) == 30  # not add's cached 4: both are "<lambda>" of one scope


def closures() -> None:
    def make(k: int) -> Callable[[int], int]:
        @fleche
        def shifted(x: int) -> int:
            return x + k

        return shifted

    assert make(1)(1) == 2
    assert make(100)(1) == 101  # not make(1)'s result: k is part of the key
    assert make(1)(1) == 2


def recursive_closure() -> None:
    def outer() -> Callable[[int], int]:
        @fleche
        def fib(n: int) -> int:
            return n if n < 2 else fib(n - 1) + fib(n - 2)

        return fib

    assert outer()(20) == 6765
    assert outer()(20) == 6765


def functions_as_arguments() -> None:
    @fleche
    def apply(fn: Callable[[int], int], x: int) -> int:
        return fn(x)

    def make(k: int) -> Callable[[int], int]:
        return lambda x: x + k

    assert apply(lambda x: x + 1, 1) == 2
    assert apply(lambda x: x * 10, 1) == 10
    assert apply(make(1), 1) == 2
    assert apply(make(100), 1) == 101


def unpicklable_result() -> None:
    @fleche
    def lock(i: int) -> Any:
        return threading.Lock()

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert type(lock(1)).__name__ == "lock"
        assert type(lock(1)).__name__ == "lock"
    messages = [str(w.message) for w in seen if issubclass(w.category, FlecheWarning)]
    assert len(messages) == 1 and "returned uncached" in messages[0], messages


def escaping_qualname(root: Path) -> Callable[[], None]:
    def run() -> None:
        def g(x: int) -> int:
            return x

        g.__qualname__ = "../../../../evil/x"
        g.__module__ = "/abs/olute"
        f = fleche(g)
        assert f(1) == 1
        assert f.__fleche__.function_id.startswith("_abs_olute")
        outside = [p for p in root.parent.rglob("*") if root not in p.parents and p != root]
        assert not [p for p in outside if "evil" in str(p)]

    return run


def load_on_a_miss() -> None:
    c = Counted()
    c.f.load(12345)


API: list[Any] = [
    # arguments that cannot be digested
    ("a lock", lambda: Counted().f(threading.Lock()), UnhashableArgumentError, "lock"),
    (
        "a lock deep inside",
        lambda: Counted().f([1, {"k": threading.Lock()}]),
        UnhashableArgumentError,
        r"x\[1\]\['k'\]",
    ),
    (
        "a list that contains itself",
        lambda: Counted().f(cycle_list()),
        UnhashableArgumentError,
        "reference cycle",
    ),
    (
        "a dict that contains itself",
        lambda: Counted().f(cycle_dict()),
        UnhashableArgumentError,
        "reference cycle",
    ),
    ("a generator", lambda: Counted().f(i for i in range(3)), UnhashableArgumentError, "generator"),
    ("an open file", lambda: Counted().f(open(__file__)), UnhashableArgumentError, "open file"),
    # odd values: the right result, computed once
    ("a huge int", twice(10**5000), None, None),
    ("a huge negative int", twice(-(2**70)), None, None),
    ("10**5000 and 10**5000 + 1", distinct(10**5000, 10**5000 + 1), None, None),
    ("NaN, however spelled", nan_calls, None, None),
    ("-0.0 and 0.0", signed_zeros, None, None),
    ("infinity", twice(math.inf), None, None),
    ("1 and 1.0 and True", lambda: numbers_apart(), None, None),
    ("a str with a lone surrogate", surrogate_argument, None, None),
    ("a result with a lone surrogate", twice("x\udcff"), None, None),
    ("a tag with a lone surrogate", surrogate_in_tags, None, None),
    ("a 10 MB str", twice("é" * 5_000_000), None, None),
    ("a 10 MB bytes", twice(b"\0" * 10_000_000), None, None),
    ("an empty str, bytes, tuple", lambda: [twice(v)() for v in ("", b"", (), [], {})], None, None),
    ("*args and **kwargs", varargs, None, None),
    ("two lambdas of one scope", two_lambdas, None, None),
    ("closures of one factory", closures, None, None),
    ("a recursive closure", recursive_closure, None, None),
    ("lambdas and closures as arguments", functions_as_arguments, None, None),
    ("an unpicklable result", unpicklable_result, None, None),
    # wrong use
    ("a missing argument", lambda: Counted().f(), TypeError, "missing a required argument"),
    ("an unknown keyword", lambda: Counted().f(1, y=2), TypeError, "unexpected keyword"),
    ("@fleche on a non-callable", lambda: fleche(3), TypeError, "decorates functions"),
    (
        "ignore= naming no parameter",
        lambda: fleche(ignore="zz")(lambda x: x),
        ValueError,
        "names no parameter",
    ),
    (
        "require= naming no parameter",
        lambda: fleche(require="zz")(lambda x: x),
        ValueError,
        "names no parameter",
    ),
    ("ignore= not names", lambda: fleche(ignore=[1])(lambda x: x), TypeError, "parameter name"),
    (
        "an unknown metadata group",
        lambda: fleche(metadata=["nope"])(lambda x: x),
        ConfigError,
        "unknown metadata group",
    ),
    ("load() of a call never made", load_on_a_miss, CacheMiss, "not in cache"),
]


@pytest.mark.parametrize(
    ("run", "raises", "match"),
    [pytest.param(run, raises, match, id=name) for name, run, raises, match in API],
)
def test_api(tmp_path: Path, run: Callable[..., Any], raises: Any, match: str | None) -> None:
    with cache(str(tmp_path / "store")):
        if raises is None:
            run()
        else:
            with pytest.raises(raises, match=match):
                run()
        if raises is None:  # whatever was stored is valid and loads
            from torture_helpers import check_store

            check_store(open_store(tmp_path / "store"), load=False)


def test_a_cwd_that_is_not_utf8(tmp_path: Path) -> None:
    with cache(str(tmp_path / "store")):
        surrogate_cwd(tmp_path)


def test_a_qualname_that_tries_to_leave_the_store(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with cache(str(root)):
        escaping_qualname(root)()
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all(root in p.parents for p in files), files


# -- stores and caches -----------------------------------------------------------------------

STORE: list[Any] = [
    ("an oid that is not hex", lambda s: s.get("xyz"), ValueError, "expected 32 lowercase hex"),
    ("an uppercase oid", lambda s: s.get("A" * 32), ValueError, "expected 32 lowercase hex"),
    ("an oid with ..", lambda s: s.get("../" + "a" * 29), ValueError, "expected 32 lowercase hex"),
    ("an oid that is an int", lambda s: s.get(12), ValueError, "expected 32 lowercase hex"),
    (
        "put under a path",
        lambda s: s.put(b"x", oid="../../etc/passwd"),
        ValueError,
        "invalid object id",
    ),
    (
        "a call digest that is not hex",
        lambda s: s.get_call("f", "g" * 32),
        ValueError,
        "invalid call digest",
    ),
    ("a call digest None", lambda s: s.get_call("f", None), ValueError, "invalid call digest"),
    ("a function id with /", lambda s: s.get_call("a/b", HEX), ValueError, "invalid function id"),
    ("a function id ..", lambda s: s.get_call("..", HEX), ValueError, "invalid function id"),
    (
        "a function id .hidden",
        lambda s: s.get_call(".hidden", HEX),
        ValueError,
        "invalid function id",
    ),
    ("an empty function id", lambda s: s.get_call("", HEX), ValueError, "invalid function id"),
    (
        "a record written under ../",
        lambda s: s.put_call("a/../../x", HEX, b"x"),
        ValueError,
        "invalid function id",
    ),
    ("quarantine of a bad oid", lambda s: s.quarantine("zz"), ValueError, "invalid object id"),
    (
        "sync of a function id with /",
        lambda s: sync(s, s.root + "-copy", functions=["a/b"]),
        ValueError,
        "invalid function ids",
    ),
]


@pytest.mark.parametrize(
    ("run", "raises", "match"),
    [pytest.param(run, raises, match, id=name) for name, run, raises, match in STORE],
)
def test_store_names(tmp_path: Path, run: Callable[..., Any], raises: Any, match: str) -> None:
    store = open_store(tmp_path / "store", create=True)
    with pytest.raises(raises, match=match):
        run(store)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]  # nothing written elsewhere


OPEN: list[Any] = [
    (
        "an unknown protocol",
        lambda t: open_store("nosuch://x/y"),
        ConfigError,
        "unknown protocol 'nosuch'",
    ),
    (
        "an unknown protocol, through cache()",
        lambda t: cache("nosuch://x/y"),
        ConfigError,
        "unknown protocol",
    ),
    ("an empty URL", lambda t: open_store(""), ConfigError, "empty"),
    ("a bytes URL", lambda t: open_store(os.fsencode(t / "s")), TypeError, "str or os.PathLike"),
    ("None", lambda t: open_store(None), TypeError, "None"),
    ("s3:// without a bucket", lambda t: open_store("s3://"), ConfigError, "names no bucket"),
    ("sftp:// without a host", lambda t: open_store("sftp:///x"), ConfigError, "names no host"),
    (
        "options for a local store",
        lambda t: open_store(t / "s", endpoint_url="x"),
        ConfigError,
        "do not apply",
    ),
    (
        "create and read_only",
        lambda t: open_store(t / "s", create=True, read_only=True),
        ValueError,
        "contradict",
    ),
    ("cache() of an int", lambda t: cache(3), TypeError, "takes a cache name"),
    ("compression level 99", lambda t: Cache(t / "s", compression_level=99), ValueError, "0..22"),
    (
        "an unknown serializer",
        lambda t: Cache(t / "s", serializer="yaml"),
        ValueError,
        "choose one of",
    ),
    ("a negative inline limit", lambda t: Cache(t / "s", inline_limit=-1), ValueError, ">= 0"),
    ("an unknown option", lambda t: cache(t / "s", bogus=1), ConfigError, "do not apply"),
]


@pytest.mark.parametrize(
    ("run", "raises", "match"),
    [pytest.param(run, raises, match, id=name) for name, run, raises, match in OPEN],
)
def test_opening(tmp_path: Path, run: Callable[..., Any], raises: Any, match: str) -> None:
    with pytest.raises(raises, match=match):
        run(tmp_path)


def test_paths_with_dotdot_are_normalized(tmp_path: Path) -> None:
    store = open_store(f"{tmp_path}/a/../b/./store")
    assert store.url == str(tmp_path / "b" / "store")
    assert Cache(f"{tmp_path}/x/../store").url == str(tmp_path / "store")


# -- configuration ---------------------------------------------------------------------------

TOML: list[Any] = [
    ("malformed TOML", b"[caches.a\nurl = 'x'\n", ConfigError, "not valid TOML"),
    ("TOML that is not UTF-8", b"[caches.a]\nurl = '\xff\xfe'\n", ConfigError, "not valid TOML"),
    (
        "an unknown top-level key",
        b"colour = 'red'\n",
        ConfigError,
        "unknown top-level key 'colour'",
    ),
    (
        "an unknown cache key",
        b"[caches.a]\nurl = 'x'\ncolour = 'red'\n",
        ConfigError,
        "unknown key 'colour'",
    ),
    (
        "a key of the wrong type",
        b"[caches.a]\nurl = 'x'\ncompression_level = 'high'\n",
        ConfigError,
        "expected an int",
    ),
    (
        "a url that is a number",
        b"[caches.a]\nurl = 3\n",
        ConfigError,
        "expected a path or fsspec URL",
    ),
    ("caches that is not a table", b"caches = 3\n", ConfigError, "must be a table"),
    (
        "a default naming no cache",
        b"default = 'b'\n[caches.a]\nurl = 'x'\n",
        ConfigError,
        "names no cache",
    ),
    ("root that is not a bool", b"root = 'yes'\n", ConfigError, "expected true or false"),
    ("layers that are empty", b"[caches.a]\nlayers = []\n", ConfigError, "layers is empty"),
]


@pytest.mark.parametrize(
    ("text", "raises", "match"),
    [pytest.param(text, raises, match, id=name) for name, text, raises, match in TOML],
)
def test_config_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: bytes, raises: Any, match: str
) -> None:
    (tmp_path / "fleche.toml").write_bytes(text)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(raises, match=match) as info:
        config.load_config()
    assert str(tmp_path / "fleche.toml") in str(info.value)  # the error names the file


def test_config_url_with_dotdot_is_relative_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "fleche.toml").write_text("[caches.a]\nurl = '../up/../store'\n")
    monkeypatch.chdir(tmp_path / "proj")
    assert config.load_config().cache("a").url == str(tmp_path / "store")


def test_config_unknown_protocol_and_bad_level(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fleche.toml").write_text("[caches.a]\nurl = 'nosuch://x'\n")
    with pytest.raises(ConfigError, match="unknown protocol 'nosuch'"):
        config.load_config().cache("a")
    (tmp_path / "fleche.toml").write_text("[caches.a]\nurl = 'x'\ncompression_level = 99\n")
    with pytest.raises(ValueError, match="compression_level=99"):
        config.load_config().cache("a")


def test_fleche_cache_naming_an_unknown_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLECHE_CACHE", "nosuch://x")
    config.reset_default()
    with pytest.raises(ConfigError, match="unknown protocol"):  # a typo: said, not skipped
        Counted().f(1)


def test_fleche_cache_naming_an_unreachable_server(monkeypatch: pytest.MonkeyPatch) -> None:
    need_module("paramiko", reason="paramiko is not installed")
    monkeypatch.setenv("FLECHE_CACHE", "sftp://127.0.0.1:1/x")
    config.reset_default()
    c = Counted()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert c.f(1) == 1 and c.f(2) == 2  # computed: the cache cannot even be opened
    messages = [str(w.message) for w in seen if issubclass(w.category, FlecheWarning)]
    assert len(messages) == 1 and "cannot open the cache" in messages[0], messages
    assert "127.0.0.1:1" in messages[0]


# -- the command line ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "store"

    @fleche
    def f(i: int) -> int:
        return i

    with cache(str(root)):
        f(1)
        f(2)
    return root


CLI: list[Any] = [
    ("show of a non-hex digest", ["show", "xyz"], 1, "is not a digest or digest prefix"),
    ("show of a path", ["show", "../../etc"], 1, "is not a digest or digest prefix"),
    ("show of an empty digest", ["show", ""], 1, "is not a digest or digest prefix"),
    ("show of a short prefix", ["show", "ab"], 1, "is not a digest or digest prefix"),
    (
        "show of an uppercase prefix",
        ["show", "ABCDEF12"],
        1,
        "no call record or object starting with abcdef12",
    ),
    ("query of a function id with /", ["query", "a/b"], 1, "no function 'a/b'"),
    ("query of an unknown argument", ["query", "f", "--arg", "zz=1"], 1, "has no argument zz"),
    ("query with a malformed --arg", ["query", "f", "--arg", "i"], 1, "expected NAME=VALUE"),
    ("ls of an unknown protocol", ["ls", "-s", "nosuch://x"], 1, "unknown protocol 'nosuch'"),
    (
        "ls of no store",
        ["ls", "-s", "/nonexistent/store"],
        1,
        "no fleche store at /nonexistent/store",
    ),
    ("gc with an unreadable age", ["gc", "--older-than", "xx"], 2, "cannot read 'xx' as an age"),
    ("gc with a negative size", ["gc", "--max-size", "-5"], 2, "cannot read '-5' as a size"),
    ("verify with 0 workers", ["verify", "-j", "0"], 2, "not in the range"),
    ("an unknown option", ["ls", "--bogus"], 2, "No such option"),
    ("an unknown command", ["frobnicate"], 2, "No such command"),
]


@pytest.mark.parametrize(
    ("args", "code", "phrase"),
    [pytest.param(args, code, phrase, id=name) for name, args, code, phrase in CLI],
)
def test_cli(cli_store: Path, args: list[str], code: int, phrase: str) -> None:
    if "-s" not in args and args[0] not in ("frobnicate",):
        args = [*args, "-s", str(cli_store)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == code, result.output
    assert phrase in result.output
    assert len(result.output.strip().splitlines()) == 1  # one line, no traceback


def test_cli_sync_of_a_function_id_with_a_slash(cli_store: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["sync", str(cli_store), str(tmp_path / "copy"), "--functions", "a/b"]
    )
    assert result.exit_code == 1 and "no function 'a/b'" in result.output
    assert not (tmp_path / "copy").exists()


@pytest.mark.loose_records  # its point is a record file under calls/
def test_cli_verify_reports_a_record_pointing_outside_the_store(tmp_path: Path) -> None:
    root = tmp_path / "store"

    @fleche
    def big(i: int) -> bytes:
        return bytes(10_000)

    with cache(str(root)):
        big(1)
    (path,) = root.glob("calls/*/*/*")
    fid, digest = path.parent.parent.name, path.parent.name + path.name
    evil = {"fleche": 1, "function": fid, "digest": digest, "result": {"oid": "../../../x"}}
    path.write_bytes(codec.frame_bytes(msgpack.packb(evil), codec.SER_MSGPACK))
    result = CliRunner().invoke(main, ["verify", "-s", str(root)])
    assert result.exit_code == 1
    assert f"corrupt record {fid}/{digest}" in result.output
    result = CliRunner().invoke(main, ["verify", "-s", str(root), "--repair"])
    assert result.exit_code == 0, result.output


# -- fuzzing the decoders --------------------------------------------------------------------


def _valid_frames() -> list[bytes]:
    """Real frames of every kind: records, raw and zstd objects, each serializer."""
    import numpy as np

    out = [
        codec.encode_record({"fleche": 1, "result": {"inline": b"x", "ser": 0}, "arguments": {}}),
        codec.encode_record({"fleche": 1, "result": {"oid": HEX}, "x": "y" * 3000}),  # zstd
    ]
    for value in (
        b"raw bytes " * 50,
        {"plain": [1, 2.5, "x"], "data": b"\0" * 300},
        np.arange(1000, dtype=np.float32).reshape(10, 100),
        ("a", "pickled", "tuple", {1, 2}),
        "a str " * 200,
    ):
        enc = codec.encode_value(value)
        out.append(b"".join(bytes(memoryview(p).cast("B")) for p in enc.parts))
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas comes with the tests extra
        return out
    frame = pd.DataFrame({"a": range(50), "b": [f"s{i}" for i in range(50)]})
    enc = codec.encode_value(frame)
    out.append(b"".join(bytes(memoryview(p).cast("B")) for p in enc.parts))
    return out


FRAMES = _valid_frames()
SERIALIZERS = [0, 1, 4, 5, 6, 0x81, 0x85, 64, 99, 127]


def _decoders(blob: bytes) -> None:
    """Each decoder raises CorruptObjectError (or returns) on ``blob``."""
    for decode in (codec.unframe, codec.decode_record):
        try:
            decode(blob)
        except CorruptObjectError:
            pass
    try:
        codec.decode_value(blob)
    except (CorruptObjectError, MissingSerializerError):
        pass  # MissingSerializerError: an intact object of a serializer unknown here


FUZZ = settings(
    max_examples=int(budget(6) * 50),  # 300 here; tools/soak gives each fuzzer its share
    deadline=2000,  # ms: a decoder that hangs fails, it does not stall the run
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)


@FUZZ
@given(st.binary(max_size=512))
@example(b"")
@example(b"FLCH")
@example(b"FLCH" + bytes(28))
def test_arbitrary_bytes(blob: bytes) -> None:
    _decoders(blob)
    _decoders(b"FLCH\x01" + blob)  # past the magic and format, into the rest of the header


@FUZZ
@given(
    st.sampled_from(FRAMES),
    st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), min_size=1, max_size=4),
)
@example(FRAMES[1], [(15, 0x80)])  # a zstd frame whose length says 2**63: an OverflowError
@example(FRAMES[1], [(13, 0x01)])  # ... says 2**40 bytes: a failed allocation (ENOMEM)
def test_mutated_frames(frame: bytes, edits: list[tuple[int, int]]) -> None:
    blob = bytearray(frame)
    for at, byte in edits:
        blob[at % len(blob)] = byte
    _decoders(bytes(blob))


@FUZZ
@given(st.sampled_from(FRAMES), st.integers(0, 1 << 20), st.integers(1, 64))
def test_truncated_and_padded_frames(frame: bytes, cut: int, pad: int) -> None:
    _decoders(frame[: cut % len(frame)])
    _decoders(frame + b"\0" * pad)


@FUZZ
@given(st.sampled_from(SERIALIZERS), st.binary(max_size=600), st.sampled_from([0, 1]))
def test_well_framed_garbage(ser: int, payload: bytes, level: int) -> None:
    """A frame whose hash checks, around a payload that is not what its serializer wrote.

    Unframing succeeds; decoding must say the object is damaged (or that its
    serializer is unknown here), whatever the serializer.
    """
    blob = codec.frame_bytes(payload, ser, level=level)
    assert codec.unframe(blob)[0] == ser
    try:
        codec.decode_value(blob)
    except (CorruptObjectError, MissingSerializerError):
        pass
    except SerializationError as e:  # "refers to code no longer importable": pickle only
        assert ser & 0x7F == 1, e


@FUZZ
@given(st.sampled_from(FRAMES[2:]), st.integers(32, 1 << 20), st.integers(0, 255))
def test_mutated_payloads_behind_a_valid_hash(frame: bytes, at: int, byte: int) -> None:
    """Valid objects with one payload byte changed and the frame re-made around it."""
    ser, payload = codec.unframe(frame)
    body = bytearray(bytes(payload))
    if not body:
        return
    body[at % len(body)] = byte
    blob = codec.frame_bytes(bytes(body), ser, level=0)
    try:
        codec.decode_value(blob)
    except (CorruptObjectError, MissingSerializerError):
        pass
    except SerializationError as e:
        assert ser & 0x7F == 1, e


def test_a_record_frame_around_msgpack_that_is_not_a_record() -> None:
    for payload in ([1, 2], "text", 42, None, {"fleche": 2}, {"other": 1}):
        blob = codec.frame_bytes(msgpack.packb(payload), codec.SER_MSGPACK)
        with pytest.raises(CorruptObjectError, match="not a fleche call record"):
            codec.decode_record(blob)
