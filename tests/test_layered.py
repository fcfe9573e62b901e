"""Layered caches: reads go down and copy hits up, objects before records; faults degrade.

Local, memory and a real S3 server (moto's, on 127.0.0.1) as layers.  The
rules under test are in ``fleche/cache/_layers.py``'s docstring.
"""

from __future__ import annotations

import contextvars
import os
import random
import socket
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from services import need_module

import fleche as fl
from fleche import Cache, ConfigError, FlecheWarning, LayeredCache, cache, config, fleche
from fleche.cache import LayerSpec
from fleche.store import LocalStore, open_store

BIG = 20_000  # bytes: above the 4 KiB inline limit, so the result is a separate object


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> None:
        self.n += 1


def ours(seen: Any) -> list[Any]:
    """fleche's warnings among those recorded (a stray ResourceWarning from a client's
    socket closed by the garbage collector may land in the same block)."""
    return [w for w in seen if issubclass(w.category, FlecheWarning)]


def local(path: Path, **options: Any) -> Cache:
    return Cache(open_store(path, **options))


def files(root: Path) -> set[str]:
    """Every file under a store's root, relative: what a layer holds, quarantine and tmp aside."""
    if not root.exists():
        return set()
    out = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    return {p for p in out if p.split(os.sep)[0] in ("calls", "objects")}


def make_big(calls: Counter) -> Callable[[int], bytes]:
    @fleche
    def big(x: int) -> bytes:
        calls()
        return os.urandom(BIG) + str(x).encode()

    return big


def make_small(calls: Counter) -> Callable[[int], int]:
    @fleche
    def small(x: int) -> int:
        calls()
        return x * 2

    return small


@contextmanager
def no_warnings() -> Iterator[None]:
    """Any FlecheWarning inside fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", FlecheWarning)
        yield


class Recording(LocalStore):
    """A local store that logs its writes in order, and can be told to fail them."""

    def __init__(self, path: Path, log: list[tuple[str, str]], **kw: Any) -> None:
        self.log = log
        self.fail: set[str] = set()  # "put" and/or "put_call"
        self.attempts = 0  # writes tried, failed ones included
        self.reads = 0  # objects read
        super().__init__(path, **kw)

    def get(self, oid: str) -> bytes:
        self.reads += 1
        return super().get(oid)

    def put(self, data: Any, *, oid: str | None = None) -> str:
        self.attempts += 1
        if "put" in self.fail:
            raise OSError(28, "No space left on device")
        out = super().put(data, oid=oid)
        self.log.append(("object", out))
        return out

    def put_call(self, function_id: str, digest: str, data: bytes) -> None:
        self.attempts += 1
        if "put_call" in self.fail:
            raise OSError(28, "No space left on device")
        super().put_call(function_id, digest, data)
        self.log.append(("record", digest))


# -- local layers ---------------------------------------------------------------------


def test_hit_below_is_copied_up_object_first(tmp_path: Path) -> None:
    calls = Counter()
    big = make_big(calls)
    with cache(tmp_path / "bottom"):
        value = big(1)
    log: list[tuple[str, str]] = []
    top = Cache(Recording(tmp_path / "top", log))
    with cache([top, local(tmp_path / "bottom")]), no_warnings():
        assert big(1) == value  # served from the bottom layer, copied up
        assert calls.n == 1
        oid = big.call(1).record["result"]["oid"]  # type: ignore[attr-defined]
        assert log == [("object", oid), ("record", big.digest(1))]  # type: ignore[attr-defined]
    assert files(tmp_path / "top") == files(tmp_path / "bottom")
    # the top layer alone now holds the call: the copy is complete
    with cache(tmp_path / "top"), no_warnings():
        assert big(1) == value
    assert calls.n == 1


def test_argument_objects_are_copied_up_too(tmp_path: Path) -> None:
    @fleche
    def total(xs: list[int]) -> int:
        return sum(xs)

    xs = list(range(5000))  # a large argument: stored as an object the record points at
    with cache(tmp_path / "bottom"):
        total(xs)
    with cache([tmp_path / "top", tmp_path / "bottom"]):
        assert total(xs) == sum(xs)
    assert files(tmp_path / "top") == files(tmp_path / "bottom")
    with cache(tmp_path / "top"):
        assert total.call(xs).arguments["xs"] == xs  # type: ignore[attr-defined]


def test_a_failed_object_copy_never_publishes_the_record(tmp_path: Path) -> None:
    calls = Counter()
    big = make_big(calls)
    with cache(tmp_path / "bottom"):
        value = big(1)
    log: list[tuple[str, str]] = []
    top_store = Recording(tmp_path / "top", log)
    top_store.fail.add("put")
    with (
        cache([Cache(top_store), local(tmp_path / "bottom")]),
        pytest.warns(FlecheWarning, match="layer 1 .*No space left") as seen,
    ):
        assert big(1) == value
        assert big(1) == value
    assert len(ours(seen)) == 1
    assert calls.n == 1
    assert log == []  # no record without its object
    assert not top_store.has_call(big.__fleche__.function_id, big.digest(1))  # type: ignore[attr-defined]


@pytest.mark.loose_records  # its point is a record file under calls/
def test_memory_in_front_of_local(tmp_path: Path) -> None:
    calls = Counter()
    small = make_small(calls)
    with cache(["memory://", tmp_path / "disk"]) as layered:
        assert isinstance(layered, LayeredCache)
        assert small(1) == 2 and small(1) == 2
        assert calls.n == 1
    assert files(tmp_path / "disk") == set()  # write="first": only the memory layer
    with cache(["memory://", tmp_path / "disk"], write="through"):
        assert small(2) == 4
    assert len(files(tmp_path / "disk")) == 1
    with cache(["memory://", tmp_path / "disk"]) as fresh:  # a new process, say
        assert small(2) == 4
        assert calls.n == 2  # from the disk layer
        memory = fresh.layers[0]
        assert memory.has_record(small.__fleche__.function_id, small.digest(2))  # type: ignore[attr-defined]


@pytest.mark.loose_records  # its point is a record file under calls/
@pytest.mark.parametrize("write", ["first", "through"])
def test_write_first_or_through(tmp_path: Path, write: str) -> None:
    calls = Counter()
    big = make_big(calls)
    log: list[tuple[str, str]] = []
    first = Recording(tmp_path / "a", log)
    layers = [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    with cache([Cache(first), *layers[1:]], write=write):
        big(1)
    a, b, c = (files(p) for p in layers)
    assert len(a) == 2  # record + object
    assert (b, c) == ((a, a) if write == "through" else (set(), set()))
    assert first.reads == 0  # encoded once and written everywhere, never read back


@pytest.mark.parametrize("retry_after, attempts", [(60, 1), (0, 4)])
def test_a_failing_layer_warns_once_and_is_left_alone(
    tmp_path: Path, retry_after: float, attempts: int
) -> None:
    calls = Counter()
    small = make_small(calls)
    front = Recording(tmp_path / "front", [])
    front.fail.add("put_call")
    layered = LayeredCache([Cache(front), local(tmp_path / "back")], retry_after=retry_after)
    with cache(layered), pytest.warns(FlecheWarning, match="layer 1 .*No space left") as seen:
        assert [small(x) for x in range(4)] == [0, 2, 4, 6]
    assert len(ours(seen)) == 1  # however often it fails
    assert front.attempts == attempts  # skipped for retry_after seconds after a failure
    assert calls.n == 4
    with cache(tmp_path / "back"):
        assert all(small.contains(x) for x in range(4))  # type: ignore[attr-defined]


@pytest.mark.loose_records  # its point is a record file under calls/
@pytest.mark.parametrize("read_only", [False, True])
def test_large_value_hashed_while_written_gets_its_name_in_every_layer(
    tmp_path: Path, read_only: bool
) -> None:
    calls = Counter()

    @fleche
    def huge(x: int) -> bytes:
        calls()
        return random.Random(x).randbytes(20 << 20)  # over HASH_AHEAD: hashed in a thread

    layers = [
        local(tmp_path / "a", read_only=read_only),
        local(tmp_path / "b", read_only=read_only),
    ]
    with cache(layers, write="through"):
        value = huge(1)
        assert huge(1) == value
    assert calls.n == 1 + read_only  # nothing writable: computed each time, no record
    for root in ("a", "b"):
        assert len(files(tmp_path / root)) == (0 if read_only else 2)


def test_read_only_layer_in_front(tmp_path: Path) -> None:
    calls = Counter()
    small, big = make_small(calls), make_big(calls)
    with cache(tmp_path / "front"):
        small(1)
    with cache(tmp_path / "back"):
        value = big(2)
    front = files(tmp_path / "front")
    layered = [local(tmp_path / "front", read_only=True), local(tmp_path / "back")]
    with cache(layered), no_warnings():
        assert small(1) == 2  # served by the read-only front
        assert big(2) == value  # from the back: nothing writable above, so no copy
        assert small(3) == 6  # a miss goes to the first writable layer
    assert calls.n == 3
    assert files(tmp_path / "front") == front
    with cache(tmp_path / "back"):
        assert small.contains(3)  # type: ignore[attr-defined]


@pytest.mark.loose_records  # its point is a record file under calls/
@pytest.mark.parametrize("write", ["first", "through"])
def test_read_only_layer_behind(tmp_path: Path, write: str) -> None:
    calls = Counter()
    big = make_big(calls)
    with cache(tmp_path / "shared"):
        value = big(1)
    shared = files(tmp_path / "shared")
    with cache([tmp_path / "mine", local(tmp_path / "shared", read_only=True)], write=write):
        assert big(1) == value  # copied up into the writable front
        big(2)
    assert calls.n == 2
    assert files(tmp_path / "shared") == shared  # never written, in either mode
    assert len(files(tmp_path / "mine")) == 4


def test_all_layers_read_only_store_nothing(tmp_path: Path) -> None:
    calls = Counter()
    small = make_small(calls)
    layered = [local(tmp_path / "a", read_only=True), local(tmp_path / "b", read_only=True)]
    with cache(layered) as c, no_warnings():
        assert c.read_only
        assert small(1) == 2 and small(1) == 2
    assert calls.n == 2


def test_failing_first_layer_falls_through_to_the_next(tmp_path: Path) -> None:
    calls = Counter()
    big = make_big(calls)
    log: list[tuple[str, str]] = []
    front = Recording(tmp_path / "front", log)
    front.fail.add("put_call")
    with cache([Cache(front), tmp_path / "back"]), pytest.warns(FlecheWarning) as seen:
        value = big(1)
        assert big(1) == value  # stored in the second layer instead
        big(2)
    assert len(ours(seen)) == 1
    assert "layer 1" in str(seen[0].message) and "not written" in str(seen[0].message)
    assert calls.n == 2
    with cache(tmp_path / "back"):
        assert big.contains(1) and big.contains(2)  # type: ignore[attr-defined]


def test_damaged_object_is_loaded_from_below_and_repaired(tmp_path: Path) -> None:
    calls = Counter()
    big = make_big(calls)
    with cache([tmp_path / "top", tmp_path / "bottom"], write="through"):
        value = big(1)
        oid = big.call(1).record["result"]["oid"]  # type: ignore[attr-defined]
    damaged = tmp_path / "top" / "objects" / oid[:2] / oid[2:]
    damaged.write_bytes(damaged.read_bytes()[:-10])
    with cache([tmp_path / "top", tmp_path / "bottom"]):
        with pytest.warns(FlecheWarning, match="truncated.*layer 2.*put back into layer 1"):
            assert big(1) == value
        assert calls.n == 1
    with cache(tmp_path / "top"), no_warnings():
        assert big(1) == value  # the top layer is whole again
    assert calls.n == 1


def test_query_merges_layers_without_duplicates(tmp_path: Path) -> None:
    calls = Counter()
    small = make_small(calls)
    with cache(tmp_path / "bottom"), fl.tags(layer="bottom"):
        small(1)
        small(2)
    with cache(tmp_path / "top"), fl.tags(layer="top"):
        small(2)
        small(3)
    with cache([tmp_path / "top", tmp_path / "bottom"]):
        found = {c.arguments["x"]: c.metadata["tags"]["layer"] for c in small.query()}  # type: ignore[attr-defined]
        assert len(list(small.query())) == 3  # type: ignore[attr-defined]
    assert found == {1: "bottom", 2: "top", 3: "top"}  # the nearest copy wins


def test_evict_removes_from_every_writable_layer(tmp_path: Path) -> None:
    calls = Counter()
    small = make_small(calls)
    for name in ("a", "b", "ro"):
        with cache(tmp_path / name):
            small(1)
    with cache([tmp_path / "a", tmp_path / "b"]):
        small.evict(1)  # type: ignore[attr-defined]
        assert not small.contains(1)  # type: ignore[attr-defined]
    with cache([tmp_path / "a", local(tmp_path / "ro", read_only=True)]):
        small.evict(1)  # type: ignore[attr-defined]
        assert small.contains(1)  # type: ignore[attr-defined]  # a read-only layer keeps its copy


def test_layer_specs_in_a_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "fleche.toml").write_text(
        'root = true\n[caches.disk]\nurl = "disk"\ncompression_level = 5\n'
        '[caches.both]\n[[caches.both.layers]]\nurl = "x"\n'
    )
    monkeypatch.chdir(tmp_path)
    config.reset_default()
    with cache(["disk", {"url": str(tmp_path / "t"), "read_only": True}]) as c:
        disk, table = c.layers
        assert disk.store.url == str(tmp_path / "disk") and disk.level == 5
        assert table.read_only and not c.read_only
    with pytest.raises(ConfigError, match="layer 2: 'both' is a layered cache"):
        cache(["disk", "both"])
    with pytest.raises(ConfigError, match="layer 2: unknown key 'rd_only' in the table"):
        cache(["disk", {"url": "y", "rd_only": True}])
    with pytest.raises(TypeError, match="takes write=, retry_after= and name="):
        cache(["disk"], compression_level=3)
    with pytest.raises(ValueError, match="write='all'"):
        cache(["disk"], write="all")
    with pytest.raises(TypeError, match="layer 1: a int"):
        cache([1])
    with pytest.raises(ValueError, match="at least one layer"):
        cache([])
    with cache(["disk"]) as one, pytest.raises(TypeError, match="itself layered"):
        cache([one])


def test_cache_list_as_statement_and_block(tmp_path: Path) -> None:
    calls = Counter()
    small = make_small(calls)

    def statement() -> LayeredCache:
        cache([tmp_path / "a", tmp_path / "b"])  # for the rest of this context
        small(1)
        return fl.active_cache()  # type: ignore[return-value]

    active = contextvars.copy_context().run(statement)  # its own context: nothing leaks
    assert isinstance(active, LayeredCache)
    assert fl.active_cache() is not active
    with cache([tmp_path / "b", tmp_path / "a"]) as block:
        assert fl.active_cache() is block
        assert small(1) == 2  # from layer 2 of this block (layer 1 of the statement)
    assert calls.n == 1
    assert files(tmp_path / "b") == files(tmp_path / "a")  # copied up into b


def test_store_view_names_the_layers(tmp_path: Path) -> None:
    c = LayeredCache([local(tmp_path / "a"), local(tmp_path / "b")], name="team")
    assert c.store.url == c.url == f"layers({tmp_path / 'a'}, {tmp_path / 'b'})"
    assert c.name == "team" and "team" not in repr(c)
    with pytest.raises(AttributeError, match=r"layered cache .* use \.layers\[i\]\.store"):
        c.store.iter_calls()  # type: ignore[attr-defined]


# -- S3 behind a local layer -------------------------------------------------------------


@pytest.fixture(scope="session")
def s3() -> Iterator[Any]:
    need_module("moto", reason="moto (the S3 test server) is not installed")
    from s3_server import MotoS3

    server = MotoS3()
    yield server
    server.stop()


def _fast_fail(**options: Any) -> dict[str, Any]:
    """Storage options that give up on an unreachable endpoint after one attempt (not 5 retries)."""
    return {**options, "config_kwargs": {"retries": {"max_attempts": 1}}}


@pytest.fixture
def s3_cache(s3: Any) -> Cache:
    return Cache(open_store(f"s3://{s3.new_bucket()}/team", **s3.options()))


@pytest.mark.loose_records  # its point is a record file under calls/
def test_warm_local_layer_costs_no_s3_request(tmp_path: Path, s3_cache: Cache) -> None:
    from s3_server import count_requests

    calls = Counter()
    small, big = make_small(calls), make_big(calls)
    with cache(s3_cache):  # someone else's run filled the team cache
        small(1)
        value = big(1)
    fs = s3_cache.store.fs
    with cache([tmp_path / "local", s3_cache]), no_warnings():
        with count_requests(fs) as seen:
            assert small(1) == 2  # local miss, then one GET of the record (inline result)
        assert [m for m, _, _ in seen] == ["GET"]
        with count_requests(fs) as seen:
            assert big(1) == value  # the record, then the object: copied up object-first
        assert [m for m, _, _ in seen] == ["GET", "GET"]
        with count_requests(fs) as seen:
            for _ in range(3):
                assert small(1) == 2
                assert big(1) == value
        assert seen == []  # served by the local layer alone
    assert calls.n == 2
    assert len(files(tmp_path / "local")) == 3  # two records, one object


def test_write_through_reaches_s3(tmp_path: Path, s3_cache: Cache) -> None:
    calls = Counter()
    big = make_big(calls)
    with cache([tmp_path / "local", s3_cache], write="through"):
        value = big(7)
    with cache(s3_cache):
        assert big(7) == value
    assert calls.n == 1
    assert len(list(s3_cache.store.iter_oids())) == 1


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.loose_records  # its point is a record file under calls/
def test_unreachable_s3_layer_from_toml_degrades_to_local(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    need_module("s3fs", reason="s3fs is not installed")
    (tmp_path / "fleche.toml").write_text(
        f"""root = true
[caches.team]
[[caches.team.layers]]
url = "local"
[[caches.team.layers]]
url = "s3://team-bucket/cache"
[caches.team.layers.storage_options]
endpoint_url = "http://127.0.0.1:{_closed_port()}"
key = "k"
secret = "s"
config_kwargs = {{ retries = {{ max_attempts = 1 }} }}
"""
    )
    monkeypatch.chdir(tmp_path)
    config.reset_default()
    calls = Counter()
    small = make_small(calls)
    with pytest.warns(FlecheWarning) as seen:
        with cache("team") as team:  # opening the S3 layer fails: it starts out skipped
            assert [small(x) for x in (1, 2, 1, 2, 3)] == [2, 4, 2, 4, 6]
    assert len(ours(seen)) == 1, [str(w.message) for w in seen]
    message = str(ours(seen)[0].message)  # not a stray ResourceWarning
    assert "layer 2 (s3://team-bucket/cache) of cache 'team' failed to open" in message
    assert "Could not connect" in message
    assert ours(seen)[0].filename == __file__  # points at the user's line, not into fleche
    assert calls.n == 3
    assert len(files(tmp_path / "local")) == 3
    assert isinstance(team, LayeredCache)


def test_s3_layer_lost_while_in_use(tmp_path: Path) -> None:
    need_module("moto", reason="moto (the S3 test server) is not installed")
    from s3_server import MotoS3

    server = MotoS3()  # a second server, so stopping it harms no other test
    calls = Counter()
    small = make_small(calls)
    try:
        remote = Cache(
            open_store(f"s3://{server.new_bucket()}/c", **_fast_fail(**server.options()))
        )
        with cache([tmp_path / "local", remote], write="through") as c:
            small(1)
            server.stop()
            with pytest.warns(FlecheWarning, match="layer 2 .* failed to") as seen:
                assert [small(x) for x in (2, 3, 1, 4, 4)] == [4, 6, 2, 8, 8]
            assert len(ours(seen)) == 1
            assert calls.n == 4
            assert small.contains(3)  # type: ignore[attr-defined]
            with pytest.raises(OSError, match="layer 2 .* could not|could not be removed"):
                small.evict(3)  # type: ignore[attr-defined]
            assert not c.layers[0].has_record(small.__fleche__.function_id, small.digest(3))  # type: ignore[attr-defined]
    finally:
        server.stop()


def test_layer_spec_is_retried_after_its_pause(tmp_path: Path) -> None:
    """A layer that could not be opened is opened again once ``retry_after`` has passed."""
    attempts: list[int] = []
    behind = local(tmp_path / "behind")

    def flaky() -> Cache:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionRefusedError(111, "Connection refused")
        return behind

    calls = Counter()
    small = make_small(calls)
    with cache(behind):
        small(5)
    with pytest.warns(FlecheWarning, match="Connection refused"):
        layered = LayeredCache(
            [local(tmp_path / "front"), LayerSpec("flaky://", flaky)], retry_after=0
        )
    with cache(layered), no_warnings():
        assert small(5) == 10  # reopened, then read and copied up
    assert calls.n == 1 and len(attempts) == 2
    assert files(tmp_path / "front") == files(tmp_path / "behind")
