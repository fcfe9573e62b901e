"""What the torture tests share: the functions their worker processes cache, the
workers themselves, and the checks run on a store afterwards.

Worker processes import this module (``PYTHONPATH=tests``), so a function cached
by a worker has the same identity (``torture_helpers:small``) in the test that
checks its records, and every value can be checked against its arguments:
``expected(function, arguments)`` recomputes it.

``FLECHE_SOAK_SECONDS`` (set by ``tools/soak``) stretches every harness's time
budget; without it each harness stays well under a minute.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleche import Cache, cache, fleche
from fleche.errors import FlecheWarning
from fleche.store import ObjectStore
from fleche.upkeep import VerifyReport, verify

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def budget(seconds: float) -> float:
    """The least time a harness runs: ``seconds``, or the soak's ``FLECHE_SOAK_SECONDS``.

    A harness stops at its count (kills, rounds) however long that takes; only
    ``tools/soak`` makes it go on for longer. No test bounds how long it takes,
    beyond its pytest timeout.
    """
    soak = os.environ.get("FLECHE_SOAK_SECONDS")
    return float(soak) if soak else seconds


def soaking() -> bool:
    return bool(os.environ.get("FLECHE_SOAK_SECONDS"))


# -- values that can be checked against their arguments ------------------------------------


def blob(seed: int, size: int) -> bytes:
    """``size`` incompressible bytes determined by ``seed`` (so zstd cannot shrink them)."""
    return random.Random(seed).randbytes(size)


def array_value(i: int) -> dict[str, Any]:
    import numpy as np  # here: numpy costs a worker ~0.1 s to import, and most never need it

    # 1.1 MiB: above SPLIT_MIN, so it is stored as a child object before its parent
    return {"i": i, "a": np.arange(140_000, dtype=np.float64) + i, "b": np.full(100, i)}


def shared_value(k: int) -> Any:
    """The result of ``shared(k)``: inline for even keys, one of 7 large values for odd ones."""
    if k % 2 == 0:
        return {"k": k, "square": k * k}
    return blob(k % 7, 20_000 + k % 7)


def measure_arg(j: int) -> bytes:
    """A large argument of ``measure``: stored by reference, as an object of its own."""
    return blob(1000 + j, 30_000)


@fleche(version=1)
def small(i: int) -> dict[str, Any]:
    return {"i": i, "square": i * i, "text": "x" * (i % 97)}


@fleche(version=1)
def large(i: int, size: int) -> bytes:
    return blob(i, size)


@fleche(version=1)
def arrays(i: int) -> dict[str, Any]:
    return array_value(i)


@fleche(version=1)
def shared(k: int) -> Any:
    return shared_value(k)


@fleche(version=1)
def measure(data: bytes) -> dict[str, Any]:
    return {"n": len(data), "head": data[:8]}


def expected(qualname: str, arguments: dict[str, Any]) -> Any:
    """The value a call of ``qualname`` with these (record) arguments must have returned."""
    if qualname == "small":
        return small.__wrapped__(arguments["i"])
    if qualname == "large":
        return blob(arguments["i"], arguments["size"])
    if qualname == "arrays":
        return array_value(arguments["i"])
    if qualname == "shared":
        return shared_value(arguments["k"])
    if qualname == "measure":
        data = arguments["data"]
        return {"n": len(data), "head": data[:8]}
    raise AssertionError(f"a record of an unknown function {qualname!r}")


def same(a: Any, b: Any) -> bool:
    """Equality that compares arrays by content, recursively."""
    np = sys.modules.get("numpy")
    if np is not None and (isinstance(a, np.ndarray) or isinstance(b, np.ndarray)):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and a.shape == b.shape
            and bool(np.array_equal(a, b))
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


# -- checking a store ------------------------------------------------------------------------


@dataclass
class StoreCheck:
    report: VerifyReport
    records: int = 0
    loaded: int = 0
    per_function: dict[str, int] = field(default_factory=dict)


def check_store(
    store: ObjectStore,
    *,
    load: bool = True,
    expect: Callable[[str, dict[str, Any]], Any] | None = None,
) -> StoreCheck:
    """``fleche verify`` finds nothing wrong, and every record loads to the right value.

    ``expect(qualname, arguments)`` gives that value (default: :func:`expected`).
    Any FlecheWarning while reading is an error: an intact store never warns.
    """
    expect = expect or expected
    report = verify(store)
    problems = [f"{f.kind} {f.name}: {f.reason}" for f in report.findings]
    assert not problems, "verify found problems:\n" + "\n".join(problems[:20])
    assert report.ok
    out = StoreCheck(report)
    if not load:
        return out
    c = Cache(store, index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FlecheWarning)
        for fid, digest in store.iter_calls():
            rec = c.get_record(fid, digest)
            if rec is None:  # deleted since the listing (a rerun never deletes: an evict does)
                continue
            out.records += 1
            out.per_function[rec["qualname"]] = out.per_function.get(rec["qualname"], 0) + 1
            value = c.load_value(rec["result"])
            arguments = {
                name: c.load_value(a) if isinstance(a, dict) else a
                for name, a in rec["arguments"].items()
            }
            want = expect(rec["qualname"], arguments)
            assert same(value, want), f"record {fid}/{digest} loads a wrong value"
            out.loaded += 1
    return out


def cli_verify(url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """``fleche verify -s URL --json``, run as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "fleche", "verify", "-s", url, "--json", *extra],
        capture_output=True,
        text=True,
        timeout=120,
        env=worker_env(),
        check=False,
    )


# -- worker processes ------------------------------------------------------------------------


def worker_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(TESTS), str(ROOT), env.get("PYTHONPATH", "")) if p
    )
    env.pop("FLECHE_CACHE", None)
    env.update(extra)
    return env


def spawn(code: str, *args: str, **popen: Any) -> subprocess.Popen[str]:
    """``python -c CODE ARGS...`` with this module importable; stdout piped, text mode."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=popen.pop("stderr", subprocess.PIPE),
        text=True,
        env=worker_env(),
        **popen,
    )


def wait_ready(proc: subprocess.Popen[str], timeout: float = 30.0) -> bool:
    """Wait for the worker's ``ready`` line; False if it died or took too long."""
    import selectors

    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            return False
    return proc.stdout.readline().strip() == "ready"


@contextmanager
def reaped(procs: list[subprocess.Popen[str]]) -> Iterator[list[subprocess.Popen[str]]]:
    """Kill (by pid) and wait for every process in ``procs`` on the way out."""
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover - a stuck process
                pass
            for stream in (p.stdout, p.stderr):
                if stream is not None:
                    stream.close()


CRASH_WRITER = "import sys, torture_helpers as t; t.crash_writer(sys.argv[1], int(sys.argv[2]))"


def crash_writer(url: str, seed: int) -> None:
    """Cache calls for ever (small, large, array values; reruns), until killed.

    A FlecheWarning is an error here: nothing a killed writer left may make a
    later one warn (a dangling record, a damaged file), even if it would heal it.
    """
    warnings.simplefilter("error", FlecheWarning)
    cache(url)
    rng = random.Random(seed)
    sizes = (5_000, 60_000, 400_000, 1_500_000)
    with_arrays = seed % 3 == 0  # numpy costs a start ~0.1 s: only some writers pay it
    if with_arrays:
        import numpy  # noqa: F401 - before "ready", so kills do not land in the import
    print("ready", flush=True)
    while True:
        op = rng.random()
        i = rng.randrange(1000)
        if op < 0.35:
            small(i)
        elif op < 0.65:
            large(i, rng.choice(sizes))
        elif op < 0.80:
            if with_arrays:
                arrays(i % 30)
        elif op < 0.90:
            small.rerun(i)
        else:
            large.rerun(i % 100, rng.choice(sizes))


@dataclass
class KillStats:
    kills: int = 0
    finished: int = 0  # processes that exited by themselves (should be none)
    not_ready: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


def kill_loop(
    start: Callable[[int], subprocess.Popen[str]],
    *,
    seconds: float,
    min_kills: int,
    parallel: int,
    delay: Callable[[random.Random], float],
    seed: int = 0,
) -> KillStats:
    """Keep ``parallel`` workers alive; SIGKILL each ``delay()`` seconds after it says ``ready``.

    A killed worker is replaced at once. Runs until ``min_kills`` kills however
    long that takes on a busy machine (the test's timeout is the bound), and for
    at least ``seconds`` (a soak's share of time); stops at the first worker
    that fails, which the test reports.
    """
    import selectors

    rng = random.Random(seed)
    stats = KillStats()
    t0 = time.monotonic()
    started = 0
    procs: list[subprocess.Popen[str]] = []
    deadline: dict[int, float] = {}  # pid -> when to kill it (once ready)
    born: dict[int, float] = {}

    def done() -> bool:
        if stats.errors:
            return True
        return stats.kills >= min_kills and time.monotonic() - t0 > seconds

    def failed(p: subprocess.Popen[str], why: str) -> None:
        err = p.stderr.read() if p.stderr is not None else ""
        stats.errors.append(f"worker {p.pid} {why}: {err[-2000:]}")

    with reaped(procs), selectors.DefaultSelector() as sel:
        while not done():
            live = [p for p in procs if p.returncode is None]
            for _ in range(parallel - len(live)):
                p = start(started)
                started += 1
                procs.append(p)
                born[p.pid] = time.monotonic()
                assert p.stdout is not None
                sel.register(p.stdout, selectors.EVENT_READ, p)
            now = time.monotonic()
            waits = [deadline[p.pid] - now for p in live if p.pid in deadline]
            for key, _ in sel.select(max(0.0, min(waits, default=0.05))):
                p = key.data
                sel.unregister(key.fileobj)
                if p.stdout.readline().strip() == "ready":
                    deadline[p.pid] = time.monotonic() + delay(rng)
                else:
                    stats.not_ready += 1
                    p.wait()
                    failed(p, "did not start")
            now = time.monotonic()
            for p in procs:
                if p.returncode is not None:
                    continue
                if p.poll() is not None:
                    if p.pid in deadline:
                        stats.finished += 1
                        failed(p, f"exited with {p.returncode} before its kill")
                    continue
                if p.pid in deadline and now >= deadline[p.pid]:
                    os.kill(p.pid, signal.SIGKILL)
                    p.wait()
                    stats.kills += 1
                elif p.pid not in deadline and now - born[p.pid] > 30:
                    stats.not_ready += 1
                    p.kill()
                    p.wait()
                    failed(p, "was not ready after 30 s")
            # keep the list short: the dead are closed as we go
            for p in [p for p in procs if p.returncode is not None]:
                procs.remove(p)
                for stream in (p.stdout, p.stderr):
                    if stream is not None:
                        try:
                            sel.unregister(stream)
                        except (KeyError, ValueError):
                            pass
                        stream.close()
    stats.seconds = time.monotonic() - t0
    return stats


# -- the concurrency worker ------------------------------------------------------------------

HAMMER = (
    "import sys, torture_helpers as t; "
    "t.hammer(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), "
    "int(sys.argv[6]))"
)


def hammer(url: str, options: str, seed: int, calls: int, threads: int, keys: int) -> None:
    """``threads`` threads make ``calls`` calls each on ``keys`` shared keys; print a JSON summary.

    Every result is checked against its arguments; a FlecheWarning is an error here.
    """
    from fleche import set_default_cache

    warnings.simplefilter("error", FlecheWarning)
    set_default_cache(url, **json.loads(options))  # threads see the default, not a context
    lock = threading.Lock()
    summary: dict[str, Any] = {"calls": 0, "wrong": 0, "errors": 0, "messages": []}

    def note(kind: str, message: str) -> None:
        with lock:
            summary[kind] += 1
            if len(summary["messages"]) < 10:
                summary["messages"].append(message)

    def run(t: int) -> None:
        rng = random.Random(seed * 1000 + t)
        for _ in range(calls):
            k = rng.randrange(keys)
            op = rng.random()
            try:
                if op < 0.80:
                    got, want = shared(k), shared_value(k)
                elif op < 0.88:
                    got, want = shared.rerun(k), shared_value(k)
                elif op < 0.90:
                    shared.evict(k)
                    got = want = None
                else:
                    data = measure_arg(k % 5)
                    got, want = measure(data), {"n": len(data), "head": data[:8]}
                if not same(got, want):
                    note("wrong", f"key {k}: got {got!r:.80} want {want!r:.80}")
            except Exception as e:  # noqa: BLE001 - every exception is counted and shown
                note("errors", "".join(traceback.format_exception_only(e)).strip()[:500])
            with lock:
                summary["calls"] += 1

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    print(json.dumps(summary), flush=True)


# -- a TCP proxy whose connections the tests can cut -----------------------------------------


class Proxy:
    """Forward 127.0.0.1:port to ``target``; ``cut()`` drops every connection and refuses new ones.

    Stands for a network that fails mid-run: the server behind it is left alone.
    ``stall()`` keeps connections open but forwards nothing (a hung server).
    ``attempts`` counts the connections clients opened (refused ones too) and
    ``sent`` the bytes they sent: how a test sees that a client stopped trying.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        import socket

        self.target = target
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.open = True
        self.stalled = False
        self.attempts = 0
        self.sent = 0
        self.conns: list[Any] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        import socket

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self.attempts += 1
            if not self.open:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self.conns += [client, upstream]
            for a, b, outbound in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(a, b, outbound), daemon=True).start()

    def _pump(self, src: Any, dst: Any, outbound: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if outbound:
                    with self._lock:
                        self.sent += len(data)
                while self.stalled and self.open:
                    time.sleep(0.01)
                if not self.open:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def cut(self) -> None:
        """Drop every connection (RST) and refuse new ones."""
        import socket
        import struct

        self.open = False
        with self._lock:
            conns, self.conns = self.conns, []
        for s in conns:
            try:  # linger 0: the peer sees a reset, as when a host vanishes
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
            except OSError:
                pass

    def resume(self) -> None:
        self.stalled = False
        self.open = True

    def stall(self) -> None:
        self.stalled = True

    def close(self) -> None:
        self.cut()
        self.listener.close()
