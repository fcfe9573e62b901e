"""Keys that cannot lie: closures over values with no digest, and results of older code.

A closure's captured variables are part of its key; one that cannot be digested
(an open file, a lock, a socket, a local function over one) must never leave two
closures sharing a key: the function runs uncached, with one warning saying how
to fix it. Every call record keeps the digest of the code that computed it, so a
hit computed by other code is flagged (or recomputed, when asked).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
import sys
import threading
import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import fleche as fl
from fleche import (
    Cache,
    ConfigError,
    FlecheWarning,
    StaleCodeWarning,
    UnhashableArgumentError,
    cache,
    fleche,
)
from fleche.config import load_config
from fleche.digest import code_digest

# -- closures over values with no digest -------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Cache]:
    with cache(str(tmp_path / "store")) as c:
        yield c


def fleche_warnings(seen: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in seen if issubclass(w.category, FlecheWarning)]


def stored_calls(c: Cache) -> list[tuple[str, str]]:
    return list(c.store.iter_calls())


def files(tmp_path: Path, **texts: str) -> dict[str, Path]:
    out = {}
    for name, text in texts.items():
        p = tmp_path / f"{name}.txt"
        p.write_text(text)
        out[name] = p
    return out


def test_closures_over_different_open_files_never_share_results(
    tmp_path: Path, store: Cache
) -> None:
    paths = files(tmp_path, a="abcdef", b="uvwxyz")

    def make(fh: Any) -> Callable[[int], str]:
        @fleche
        def read(n: int) -> str:
            return str(fh.read(n))

        return read

    with open(paths["a"]) as fa, open(paths["b"]) as fb:
        read_a, read_b = make(fa), make(fb)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            assert read_a(2) == "ab"
            assert read_b(2) == "uv"  # not read_a's "ab"
            assert read_a(2) == "cd"  # runs again: nothing was cached
            assert read_b(2) == "wx"
    messages = fleche_warnings(seen)
    assert len(messages) == 2, messages  # one per function, however often it runs
    for m in messages:
        assert "make.<locals>.read" in m and "fh" in m
        assert "ignore=['fh']" in m and "version=" in m
        assert "__fleche_digest__" in m and "fleche.digest.register" in m
    assert stored_calls(store) == []


def test_closures_over_locks_and_sockets_never_share_results(store: Cache) -> None:
    def locked(lock: Any) -> Callable[[], bool]:
        @fleche
        def held() -> bool:
            return bool(lock.locked())

        return held

    def peer(sock: socket.socket) -> Callable[[int], int]:
        @fleche
        def fileno(x: int) -> int:
            return sock.fileno() + x

        return fileno

    busy, free = threading.Lock(), threading.Lock()
    busy.acquire()
    s1, s2 = socket.socketpair()
    with s1, s2, warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert locked(busy)() is True
        assert locked(free)() is False  # not the busy lock's result
        assert peer(s1)(0) == s1.fileno()
        assert peer(s2)(0) == s2.fileno()
    busy.release()
    messages = fleche_warnings(seen)
    assert len(messages) == 4
    assert all("lock" in m for m in messages[:2])
    assert all("sock" in m and "socket" in m for m in messages[2:])
    assert stored_calls(store) == []


class Connection:
    """A connection-like object: identity and state, no content pickle could save."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("a connection cannot be pickled")

    def ask(self, x: int) -> str:
        return f"{self.name}:{x}"


class NamedConnection(Connection):
    def __fleche_digest__(self) -> str:
        return self.name


ASKED: list[str] = []  # not captured: a closure over a list that grows would change its key


def connected(conn: Connection, **options: Any) -> Callable[[int], str]:
    @fleche(**options)
    def ask(x: int) -> str:
        ASKED.append(conn.name)
        return conn.ask(x)

    return ask


@pytest.fixture
def asked() -> Iterator[list[str]]:
    ASKED.clear()
    yield ASKED
    ASKED.clear()


def test_a_closure_over_an_object_with_no_digest_runs_uncached(
    store: Cache, asked: list[str]
) -> None:
    with pytest.warns(FlecheWarning, match=r"ask.*captured variable conn.*Connection") as seen:
        assert connected(Connection("db1"))(1) == "db1:1"
        assert connected(Connection("db2"))(1) == "db2:1"
    assert len(fleche_warnings(seen.list)) == 2
    assert stored_calls(store) == []
    # its helpers say why there is no key, rather than inventing one
    with pytest.raises(UnhashableArgumentError, match="captured variable conn"):
        connected(Connection("db3")).digest(1)


@pytest.mark.parametrize("fix", ["__fleche_digest__", "register", "ignore and version"])
def test_each_fix_the_warning_names_caches_the_closures_apart(
    store: Cache, asked: list[str], fix: str
) -> None:
    options: dict[str, Any] = {}
    make: Callable[[str], Connection] = Connection
    if fix == "__fleche_digest__":
        make = NamedConnection
    elif fix == "register":
        fl.digest.register(Connection, lambda c: c.name)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FlecheWarning)
        try:
            for name in ("db1", "db2", "db1", "db2"):
                conn = make(name)
                if fix == "ignore and version":
                    options = {"ignore": ["conn"], "version": name}
                assert connected(conn, **options)(1) == f"{name}:1"
        finally:
            fl.digest.unregister(Connection)
    assert asked == ["db1", "db2"]  # each computed once, then a hit
    assert len(stored_calls(store)) == 2


def test_ignore_of_a_captured_variable_leaves_it_out_of_the_key(
    store: Cache, asked: list[str]
) -> None:
    # the user's choice: closures over different connections share results
    assert connected(Connection("db1"), ignore="conn")(1) == "db1:1"
    assert connected(Connection("db2"), ignore="conn")(1) == "db1:1"
    assert asked == ["db1"]
    with pytest.raises(ValueError, match="names no parameter"):
        connected(Connection("db1"), ignore="nope")


def test_nested_closures_over_open_files_never_share_results(tmp_path: Path, store: Cache) -> None:
    paths = files(tmp_path, a="abcdef", b="uvwxyz")

    def through_a_local_function(fh: Any) -> Callable[[int], str]:
        def reader(n: int) -> str:
            return str(fh.read(n))

        @fleche
        def read(n: int) -> str:
            return reader(n)

        return read

    def two_levels_down(fh: Any) -> Callable[[int], str]:
        def middle() -> Callable[[int], str]:
            @fleche
            def read(n: int) -> str:
                return str(fh.read(n))

            return read

        return middle()

    with open(paths["a"]) as fa, open(paths["b"]) as fb:
        with pytest.warns(FlecheWarning, match=r"reader\.<captured fh>.*ignore=\['reader'\]"):
            assert through_a_local_function(fa)(2) == "ab"
            assert through_a_local_function(fb)(2) == "uv"
        with pytest.warns(FlecheWarning, match=r"captured variable fh"):
            assert two_levels_down(fa)(2) == "cd"
            assert two_levels_down(fb)(2) == "wx"
    assert stored_calls(store) == []


def test_a_variable_assigned_after_decoration_is_in_the_key(store: Cache) -> None:
    def make(k: int) -> Callable[[int], int]:
        @fleche
        def shifted(x: int) -> int:
            return x + later

        later = k
        return shifted

    assert make(1)(1) == 2
    assert make(100)(1) == 101  # not make(1)'s result: `later` was unassigned at decoration
    assert make(1)(1) == 2


def test_a_late_variable_with_no_digest_runs_uncached(tmp_path: Path, store: Cache) -> None:
    paths = files(tmp_path, a="abcdef", b="uvwxyz")

    def make(path: Path) -> Callable[[int], str]:
        @fleche
        def read(n: int) -> str:
            return str(fh.read(n))

        fh = open(path)
        opened.append(fh)
        return read

    opened: list[Any] = []
    with pytest.warns(FlecheWarning, match="captured variable fh"):
        assert make(paths["a"])(2) == "ab"
        assert make(paths["b"])(2) == "uv"
    for fh in opened:
        fh.close()
    assert stored_calls(store) == []


class Base:
    def value(self, x: int) -> int:
        return x


class Derived(Base):
    calls = 0

    @fleche(ignore="self")
    def value(self, x: int) -> int:
        Derived.calls += 1
        return super().value(x) * 2  # a __class__ cell, filled after the decorator ran


def test_recursion_and_super_stay_cached(store: Cache) -> None:
    def outer() -> Callable[[int], int]:
        @fleche
        def fib(n: int) -> int:
            return n if n < 2 else fib(n - 1) + fib(n - 2)

        return fib

    with warnings.catch_warnings():
        warnings.simplefilter("error", FlecheWarning)
        f1, f2 = outer(), outer()
        assert f1(15) == 610
        assert f1.digest(15) == f2.digest(15)  # the same code and variables: the same calls
        before = len(stored_calls(store))
        assert f2(15) == 610
        assert len(stored_calls(store)) == before
        assert Derived().value(3) == 6 and Derived().value(3) == 6
        assert Derived.calls == 1


def test_async_closure_over_a_lock_runs_uncached(store: Cache) -> None:
    def make(lock: Any) -> Callable[[], Any]:
        @fleche
        async def held() -> bool:
            return bool(lock.locked())

        return held

    busy, free = threading.Lock(), threading.Lock()
    busy.acquire()
    with pytest.warns(FlecheWarning, match="captured variable lock"):
        assert asyncio.run(make(busy)()) is True
        assert asyncio.run(make(free)()) is False
    busy.release()
    assert stored_calls(store) == []


def test_map_over_a_refused_closure_computes_every_call(store: Cache, asked: list[str]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    ask = connected(Connection("db1"))
    with pytest.warns(FlecheWarning, match="captured variable conn"):
        assert fl.map(ask, [1, 2, 1]) == ["db1:1", "db1:2", "db1:1"]
        with ThreadPoolExecutor(2) as pool:
            assert fl.map(ask, [1, 2], executor=pool, progress=False) == ["db1:1", "db1:2"]
    assert len(asked) == 5
    assert stored_calls(store) == []


def test_a_cached_local_function_digests_by_what_it_computes(store: Cache) -> None:
    """Its state changes as it is used; its digest, which a closure over it keys on, does not."""

    def make(k: int) -> tuple[Callable[[int], int], Callable[[int], int]]:
        @fleche
        def fib(n: int) -> int:
            return n + k if n < 2 else fib(n - 1) + fib(n - 2)

        @fleche
        def twice(n: int) -> int:  # captures fib, which has not run yet
            return 2 * fib(n)

        return fib, twice

    fib, twice = make(0)
    before = fl.digest.digest(fib)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FlecheWarning)
        assert twice(10) == 110
        assert fl.digest.digest(fib) == before
        assert make(0)[1].digest(10) == twice.digest(10)
        assert make(1)[1].digest(10) != twice.digest(10)  # another k, another fib
        assert make(1)[1](10) == 2 * (55 + 89)


# -- stale code ----------------------------------------------------------------------------------

RAN: list[str] = []


def v1(x: int) -> int:
    RAN.append("v1")
    return x + 1


def v2(x: int) -> int:
    RAN.append("v2")
    return x * 10


def v1_reformatted(x: int) -> int:
    """A docstring, a comment and new spacing: the same code."""
    RAN.append( "v1" )  # fmt: skip
    return x + 1


def as_f(fn: Callable[..., Any], **options: Any) -> Any:
    """``fn`` under the name ``f``, decorated: what a new version of one function looks like."""
    copy = types.FunctionType(fn.__code__, fn.__globals__, "f", fn.__defaults__)
    copy.__qualname__ = "f"
    return fleche(**options)(copy)


@pytest.fixture
def ran() -> Iterator[list[str]]:
    RAN.clear()
    yield RAN
    RAN.clear()


def stale_warnings(seen: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in seen if issubclass(w.category, StaleCodeWarning)]


def test_every_record_keeps_the_code_digest(store: Cache, ran: list[str]) -> None:
    f = as_f(v1)
    assert f(1) == 2
    assert f.call(1).code_digest == code_digest(v1)
    assert store.get_record(f.__fleche__.function_id, f.digest(1))["code"] == code_digest(v1)
    g = as_f(v1, hash_code=True)  # hash_code=True: the same digest, also in the key
    assert g(1) == 2 and g.call(1).code_digest == code_digest(v1)


def test_a_hit_from_other_code_is_served_with_one_warning(store: Cache, ran: list[str]) -> None:
    assert as_f(v1)(1) == 2 and as_f(v1)(2) == 3
    assert ran == ["v1", "v1"]
    f = as_f(v2)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert f(1) == 2  # served: the contract of the original fleche
        assert f(2) == 3
        assert f(1) == 2
    assert ran == ["v1", "v1"]
    messages = stale_warnings(seen)
    assert len(messages) == 1, messages  # one per function
    (m,) = messages
    assert "f: " in m and "code changed since" in m
    assert "version=" in m and "hash_code=True" in m and "f.rerun" in m
    assert "stale_code" in m
    (w,) = [w for w in seen if issubclass(w.category, StaleCodeWarning)]
    assert w.filename == __file__  # points at the caller's line


def test_the_same_code_reformatted_is_not_stale(store: Cache, ran: list[str]) -> None:
    assert as_f(v1)(1) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaleCodeWarning)
        assert as_f(v1_reformatted)(1) == 2
        assert as_f(v1, hash_code=True)(1) == 2  # its own key, stored now
        assert as_f(v1, hash_code=True)(1) == 2  # a hit of the same code
    assert ran == ["v1", "v1"]


def test_stale_code_recompute_replaces_the_result(store: Cache, ran: list[str]) -> None:
    assert as_f(v1)(1) == 2
    f = as_f(v2, stale_code="recompute")
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaleCodeWarning)
        assert f(1) == 10
        assert f(1) == 10  # a hit of its own result now
    assert ran == ["v1", "v2"]
    assert f.call(1).code_digest == code_digest(v2)
    assert as_f(v2)(1) == 10  # replaced for everyone


def test_stale_code_serve_is_silent(store: Cache, ran: list[str]) -> None:
    assert as_f(v1)(1) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaleCodeWarning)
        assert as_f(v2, stale_code="serve")(1) == 2


def test_rerun_replaces_a_stale_result(store: Cache, ran: list[str]) -> None:
    assert as_f(v1)(1) == 2
    f = as_f(v2, stale_code="serve")
    assert f.rerun(1) == 10
    assert f.call(1).code_digest == code_digest(v2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaleCodeWarning)
        assert as_f(v2)(1) == 10


def test_records_without_a_code_digest_are_served_quietly(store: Cache, ran: list[str]) -> None:
    f1 = as_f(v1)
    assert f1(1) == 2
    fid, key = f1.__fleche__.function_id, f1.digest(1)
    old = store.get_record(fid, key)
    old["code"] = None  # as fleche wrote it before records kept the digest
    store.put_record(fid, key, old)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaleCodeWarning)
        assert as_f(v2)(1) == 2
        assert as_f(v2, stale_code="recompute")(1) == 2
    assert ran == ["v1"]


def test_stale_code_from_fleche_toml_and_cache(tmp_path: Path, ran: list[str]) -> None:
    root = tmp_path / "proj"
    root.mkdir()
    (root / "fleche.toml").write_text(
        'root = true\n[caches.strict]\nurl = "s"\nstale_code = "recompute"\n'
        '[caches.quiet]\nurl = "q"\nstale_code = "serve"\n'
        '[caches.team]\nstale_code = "recompute"\n'
        '[[caches.team.layers]]\nurl = "near"\n[[caches.team.layers]]\nurl = "far"\n'
    )
    cfg = load_config(root)
    for name, expect in [("strict", 10), ("team", 10), ("quiet", 2)]:
        with cache(cfg.cache(name)), warnings.catch_warnings():
            warnings.simplefilter("error", StaleCodeWarning)
            assert as_f(v1)(1) == 2
            assert as_f(v2)(1) == expect, name
            # the function's own choice wins over its cache's
            assert as_f(v1, stale_code="serve")(1) == expect
    with cache(str(tmp_path / "py"), stale_code="recompute"):
        assert as_f(v1)(1) == 2 and as_f(v2)(1) == 10
    with cache([tmp_path / "a", tmp_path / "b"], stale_code="recompute"):
        assert as_f(v1)(1) == 2 and as_f(v2)(1) == 10


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[caches.x]\nurl = "x"\nstale_code = "drop"\n',
            r"\[caches.x\] stale_code = 'drop': expected 'warn', 'serve' or 'recompute'",
        ),
        ('[caches.x]\nurl = "x"\nstale_code = true\n', r"stale_code = True: expected"),
        (
            '[caches.x]\n[[caches.x.layers]]\nurl = "a"\nstale_code = "serve"\n',
            "stale_code belongs to the layered cache's own table",
        ),
    ],
)
def test_bad_stale_code_in_fleche_toml(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "fleche.toml").write_text("root = true\n" + text)
    with pytest.raises(ConfigError, match=message) as e:
        load_config(tmp_path)
    assert "fleche.toml" in str(e.value)


def test_bad_stale_code_argument() -> None:
    with pytest.raises(
        ConfigError, match=r"@fleche\(v1\) stale_code = 'drop': expected 'warn', 'serve' or"
    ):
        fleche(stale_code="drop")(v1)
    with pytest.raises(ConfigError, match=r"cache\(\.\.\.\) stale_code = 1: expected"):
        cache("memory://", stale_code=1)


def load_module(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_a_source_edited_after_import_is_not_taken_for_the_running_code(
    tmp_path: Path, store: Cache
) -> None:
    """The digest is computed on first use; by then the file may hold other code."""
    path = tmp_path / "edited_module.py"
    path.write_text("def g(x):\n    return x + 1\n")
    try:
        g = fleche(load_module("edited_module", path).g)
        path.write_text("def g(x):\n    return x * 100\n")
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        assert g(1) == 2
        edited = load_module("edited_module_now", path).g
        assert g.call(1).code_digest != code_digest(edited)
    finally:
        sys.modules.pop("edited_module", None)
        sys.modules.pop("edited_module_now", None)


def test_a_function_sent_by_value_keeps_its_code_digest(store: Cache, ran: list[str]) -> None:
    """cloudpickle (Dask, executorlib) sends a function with no source where it lands."""
    cloudpickle = pytest.importorskip("cloudpickle")
    f = as_f(v1)
    sent = cloudpickle.loads(cloudpickle.dumps(f))
    assert sent(1) == 2  # computed and stored by the copy
    with warnings.catch_warnings():
        warnings.simplefilter("error", StaleCodeWarning)
        assert f(1) == 2
        assert sent(1) == 2
    assert ran == []  # a hit here (the copy appended to its own copy of RAN)
    assert f.call(1).code_digest == code_digest(v1)
