"""Single-flight leases: the store primitives on every backend, and who computes when.

The primitives run against real servers (moto's S3 on 127.0.0.1, OpenSSH's
sshd, a ``fleche remote --serve`` child); the semantics run on local disk with
short ttls, in threads and in separate processes.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from backends import KINDS, REACHABLE, open_backend

from fleche import FlecheWarning, ReadOnlyStoreError, cache, fleche
from fleche.cache import Lease, LeasePolicy, iter_leases, lease_store, policy_of, sweep
from fleche.cache._lease import LEASE_FORMAT
from fleche.store import LocalStore, ObjectStore, open_store
from fleche.testing import digest_of
from fleche.testing._suite import FID

KEY = digest_of("the call")


# -- the store primitives, on every backend ---------------------------------------------------


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    return open_backend(request.param, request, tmp_path)


def test_a_lease_is_created_once_replaced_by_its_holder_and_released(store: ObjectStore):
    assert store.read_lease(FID, KEY) is None
    assert store.acquire_lease(FID, KEY, b"first") is True
    assert store.acquire_lease(FID, KEY, b"second") is False  # create-only
    assert store.read_lease(FID, KEY) == b"first"
    store.renew_lease(FID, KEY, b"renewed")
    assert store.read_lease(FID, KEY) == b"renewed"
    store.release_lease(FID, KEY)
    assert store.read_lease(FID, KEY) is None
    store.release_lease(FID, KEY)  # already gone: fine
    assert store.acquire_lease(FID, KEY, b"again") is True


def test_one_of_many_racing_creators_wins(store: ObjectStore):
    barrier = threading.Barrier(6)

    def race(i: int) -> bool:
        barrier.wait()
        return store.acquire_lease(FID, KEY, f"owner {i}".encode())

    with ThreadPoolExecutor(6) as pool:
        won = list(pool.map(race, range(6)))
    assert won.count(True) == 1
    assert store.read_lease(FID, KEY) == f"owner {won.index(True)}".encode()


def test_lease_names_are_checked(store: ObjectStore):
    with pytest.raises(ValueError, match="call digest"):
        store.acquire_lease(FID, "../" + KEY[3:], b"x")
    with pytest.raises(ValueError, match="function id"):
        store.read_lease("../etc", KEY)


def test_leases_live_under_locks_and_are_not_records(store: ObjectStore):
    store.acquire_lease(FID, KEY, b"x")
    assert list(store.iter_calls()) == []
    assert store.find_call(FID, KEY) is None
    if getattr(store, "fs", None) is not None:
        assert list(iter_leases(store)) == [(FID, KEY)]


def test_a_read_only_store_refuses_leases(tmp_path: Path):
    LocalStore(tmp_path / "s").put(b"x")
    ro = LocalStore(tmp_path / "s", read_only=True)
    with pytest.raises(ReadOnlyStoreError):
        ro.acquire_lease(FID, KEY, b"x")
    with pytest.raises(ReadOnlyStoreError):
        ro.release_lease(FID, KEY)
    assert ro.read_lease(FID, KEY) is None


# -- the lease record ----------------------------------------------------------------------


def _record(store: ObjectStore, digest: str = KEY) -> dict[str, Any]:
    raw = store.read_lease(FID, digest)
    assert raw is not None
    return json.loads(raw)


def test_the_lease_file_says_who_holds_it_until_when(tmp_path: Path):
    store = LocalStore(tmp_path / "s")
    before = time.time()
    lease = Lease(store, FID, KEY, ttl=5.0)
    assert lease.acquire()
    rec = _record(store)
    assert rec["lease"] == LEASE_FORMAT
    assert (rec["function"], rec["digest"], rec["token"]) == (FID, KEY, lease.token)
    assert rec["pid"] == os.getpid() and rec["host"]
    assert rec["ttl"] == 5.0
    assert before <= rec["acquired"] <= rec["renewed"] <= time.time()
    assert rec["expires"] == pytest.approx(rec["renewed"] + 5.0)
    lease.renew()
    assert _record(store)["renewed"] >= rec["renewed"]
    assert _record(store)["acquired"] == rec["acquired"]
    other = Lease(store, FID, KEY, ttl=5.0)
    assert not other.acquire()
    other.release()  # not its lease: nothing happens
    assert _record(store)["token"] == lease.token
    lease.release()
    assert store.read_lease(FID, KEY) is None


def test_a_holder_that_lost_its_lease_leaves_the_new_one_alone(tmp_path: Path):
    store = LocalStore(tmp_path / "s")
    lease = Lease(store, FID, KEY, ttl=5.0)
    assert lease.acquire()
    store.release_lease(FID, KEY)  # taken over: broken and re-created by another process
    usurper = Lease(store, FID, KEY, ttl=5.0)
    assert usurper.acquire()
    lease.renew()
    assert lease.lost
    lease.release()
    assert _record(store)["token"] == usurper.token


def test_policies():
    assert policy_of(False) is None and policy_of(None) is None
    assert policy_of(True) == LeasePolicy()
    p = LeasePolicy(ttl=2, wait=1)
    assert policy_of(p) is p
    with pytest.raises(TypeError, match="single_flight"):
        policy_of("yes")  # type: ignore[arg-type]
    for bad in ({"ttl": 0}, {"poll": -1}, {"wait": -1}, {"ttl": True}):
        with pytest.raises(ValueError, match="LeasePolicy"):
            LeasePolicy(**bad)

    @fleche(single_flight=True)  # async functions lease too (they were refused before)
    async def f(x):
        return x

    assert f.__fleche__.single_flight == LeasePolicy()


def test_sweep_removes_long_expired_leases_and_junk(tmp_path: Path):
    store = LocalStore(tmp_path / "s")
    live = Lease(store, FID, KEY, ttl=30.0)
    assert live.acquire()
    dead = digest_of("dead")
    _forge(store, dead, host="elsewhere", pid=1, age=120.0, ttl=30.0)
    junk = digest_of("junk")
    store.acquire_lease(FID, junk, b"not json")
    assert sweep(store) == 2
    assert {d for _, d in iter_leases(store)} == {KEY}


# -- who computes -----------------------------------------------------------------------------

FAST = LeasePolicy(ttl=0.6, poll=0.01, poll_max=0.05)  # where expiry is what is tested
# Elsewhere a long ttl: a loaded machine must not make a busy owner look dead.
STEADY = LeasePolicy(ttl=10.0, poll=0.01, poll_max=0.05)


def _forge(
    store: ObjectStore,
    digest: str,
    *,
    fid: str = FID,
    host: str,
    pid: int,
    age: float = 0.0,
    ttl: float = 0.6,
    pidns: str | None = None,
) -> str:
    """A lease as another process would have left it, renewed ``age`` seconds ago."""
    from fleche.cache import _lease as lease_module

    token = uuid.uuid4().hex
    renewed = time.time() - age
    rec = {
        "lease": 1,
        "function": fid,
        "digest": digest,
        "token": token,
        "host": host,
        "pidns": lease_module._PIDNS if pidns is None else pidns,
        "pid": pid,
        "acquired": renewed,
        "renewed": renewed,
        "expires": renewed + ttl,
        "ttl": ttl,
    }
    assert store.acquire_lease(fid, digest, json.dumps(rec).encode())
    return token


def _counting(policy: LeasePolicy, seconds: float = 0.0):
    """A single-flight function that counts its computations, and its counter."""
    counts: list[int] = []
    lock = threading.Lock()

    @fleche(single_flight=policy, ignore="lock")  # the lock has no digest and needs none
    def f(x):
        with lock:
            counts.append(x)
        time.sleep(seconds)
        return x * 10

    return f, counts


def _fid(f: Any) -> str:
    return f.__fleche__.function_id


def _with(store: ObjectStore, f: Any, x: Any) -> Any:
    with cache(store):
        return f(x)


def test_threads_of_one_process_wait_for_the_holder(tmp_path: Path):
    f, counts = _counting(STEADY, seconds=0.3)
    store = LocalStore(tmp_path / "c")
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda x: _with(store, f, x), [1, 1, 1, 1])) == [10] * 4
    assert counts == [1]
    assert list(iter_leases(store)) == []  # released


def test_a_waiter_loads_the_result_its_owner_stored(tmp_path: Path):
    f, counts = _counting(STEADY)
    store = LocalStore(tmp_path / "c")
    holder = Lease(store, _fid(f), f.digest(3), ttl=30.0)
    assert holder.acquire()  # "another process" holds the call...
    out: list[int] = []
    waiter = threading.Thread(target=lambda: out.append(_with(store, f, 3)))
    waiter.start()
    time.sleep(0.2)
    assert counts == [] and waiter.is_alive()  # ...so the waiter waits
    with cache(store):
        f.rerun(3)  # the holder computes and stores (rerun skips the lease)
    holder.release()
    waiter.join(60)
    assert out == [30]
    assert counts == [3]  # the holder's computation only: the waiter loaded it


def test_an_owner_that_fails_hands_over_to_a_waiter(tmp_path: Path):
    started = threading.Event()
    calls: list[str] = []

    @fleche(single_flight=STEADY, ignore="started")  # an Event has no digest
    def g(x):
        calls.append(threading.current_thread().name)
        if len(calls) == 1:
            started.set()
            time.sleep(0.2)
            raise RuntimeError("the first try fails")
        return x + 1

    store = LocalStore(tmp_path / "c")
    results: dict[str, Any] = {}

    def run(name: str) -> None:
        try:
            results[name] = _with(store, g, 1)
        except RuntimeError as e:
            results[name] = e

    a = threading.Thread(target=run, args=("a",), name="a")
    a.start()
    assert started.wait(60)
    b = threading.Thread(target=run, args=("b",), name="b")
    b.start()
    a.join(60)
    b.join(60)
    assert isinstance(results["a"], RuntimeError)
    assert results["b"] == 2
    assert calls == ["a", "b"]


# Durations: a test never asserts that something was fast (a busy machine makes everything
# slow). "At once" is shown by a lease with an hour's ttl: waiting it out would outlast the
# test's timeout. "Waited for expiry" is shown by a lower bound, which load cannot break.
AN_HOUR = 3600.0


@pytest.mark.timeout(120)
def test_a_long_dead_foreign_lease_is_taken_over_at_once(tmp_path: Path):
    f, counts = _counting(STEADY)
    store = LocalStore(tmp_path / "c")
    forged = {"host": "another-host", "pid": 12345, "ttl": AN_HOUR, "age": 3 * AN_HOUR}
    _forge(store, f.digest(4), fid=_fid(f), **forged)
    assert _with(store, f, 4) == 40  # expired hours ago: not waited out for another hour
    assert counts == [4]


def test_a_lease_nobody_renews_expires_by_the_waiters_clock(tmp_path: Path):
    # Fresh by its own clock (its host's clock may be ahead of ours), but never renewed.
    f, counts = _counting(FAST)
    store = LocalStore(tmp_path / "c")
    _forge(store, f.digest(5), fid=_fid(f), host="another-host", pid=12345, age=-30.0)
    t0 = time.monotonic()
    assert _with(store, f, 5) == 50
    assert time.monotonic() - t0 >= FAST.ttl  # not taken over before a ttl of our own clock
    assert counts == [5]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.timeout(120)
def test_a_dead_owner_on_this_machine_is_replaced_at_once(tmp_path: Path):
    from fleche.cache import _lease as lease_module

    policy = LeasePolicy(ttl=AN_HOUR, poll=0.01, poll_max=0.05)
    f, counts = _counting(policy)
    store = LocalStore(tmp_path / "c")
    _forge(store, f.digest(6), fid=_fid(f), host=lease_module._HOST, pid=_dead_pid(), ttl=AN_HOUR)
    assert _with(store, f, 6) == 60  # its pid is gone: not waited out for an hour
    assert counts == [6]
    # in another pid namespace (a container with our hostname) the pid says nothing
    g, _ = _counting(LeasePolicy(ttl=0.5, poll=0.01, poll_max=0.05))
    _forge(
        store,
        g.digest(16),
        fid=_fid(g),
        host=lease_module._HOST,
        pid=_dead_pid(),
        ttl=0.5,
        pidns="other",
    )
    t0 = time.monotonic()
    assert _with(store, g, 16) == 160
    assert time.monotonic() - t0 >= 0.5


def test_detect_dead_off_waits_for_expiry(tmp_path: Path):
    from fleche.cache import _lease as lease_module

    f, counts = _counting(LeasePolicy(ttl=0.5, poll=0.01, poll_max=0.05, detect_dead=False))
    store = LocalStore(tmp_path / "c")
    _forge(store, f.digest(7), fid=_fid(f), host=lease_module._HOST, pid=_dead_pid(), ttl=0.5)
    t0 = time.monotonic()
    assert _with(store, f, 7) == 70
    assert time.monotonic() - t0 >= 0.5
    assert counts == [7]


def test_junk_in_place_of_a_lease_is_broken(tmp_path: Path):
    f, counts = _counting(STEADY)
    store = LocalStore(tmp_path / "c")
    store.acquire_lease(_fid(f), f.digest(8), b"\x00garbage")
    assert _with(store, f, 8) == 80
    assert counts == [8]


@pytest.mark.timeout(120)  # the guard: without renewals, the loop below never ends
def test_the_heartbeat_keeps_a_long_computation_leased(tmp_path: Path):
    # The owner computes until its lease has been renewed 5 times (longer than a ttl), however
    # long that takes: no count of renewals within a time window, which load would break.
    policy = LeasePolicy(ttl=3.0, poll=0.01, poll_max=0.05)  # renewed every second
    release = threading.Event()
    counts: list[int] = []

    @fleche(single_flight=policy, ignore=["release"])
    def f(x):
        counts.append(x)
        assert release.wait(240)
        return x * 10

    store = LocalStore(tmp_path / "c")
    renewals: set[float] = set()
    owner = threading.Thread(target=_with, args=(store, f, 9))
    owner.start()
    while store.read_lease(_fid(f), f.digest(9)) is None:
        time.sleep(0.005)
    waiter_out: list[int] = []
    waiter = threading.Thread(target=lambda: waiter_out.append(_with(store, f, 9)))
    waiter.start()
    while len(renewals) < 5:
        raw = store.read_lease(_fid(f), f.digest(9))
        if raw is not None:
            renewals.add(json.loads(raw)["renewed"])
        time.sleep(0.05)
    release.set()
    owner.join(60)
    waiter.join(60)
    assert waiter_out == [90]
    assert counts == [9]  # the waiter never judged the busy owner dead


def test_a_waiter_gives_up_after_wait_and_computes(tmp_path: Path):
    f, counts = _counting(LeasePolicy(ttl=30.0, wait=0.3, poll=0.01, poll_max=0.05))
    store = LocalStore(tmp_path / "c")
    holder = Lease(store, _fid(f), f.digest(10), ttl=30.0)
    assert holder.acquire()  # alive and renewed, but never finishing
    t0 = time.monotonic()
    with pytest.warns(FlecheWarning, match="waited 0.3 s"):  # gave up: not the 30 s ttl
        assert _with(store, f, 10) == 100
    assert time.monotonic() - t0 >= 0.3
    assert counts == [10]
    holder.release()


class _NoLeases(LocalStore):
    def acquire_lease(self, function_id: str, digest: str, data: bytes) -> bool:
        raise OSError("leases refused")


def test_a_store_that_refuses_leases_fails_open(tmp_path: Path):
    f, counts = _counting(STEADY)
    store = _NoLeases(tmp_path / "c")
    with pytest.warns(FlecheWarning, match="without single-flight"):
        assert _with(store, f, 11) == 110
    assert counts == [11]
    assert _with(store, f, 11) == 110  # stored anyway: a hit now
    assert counts == [11]


def test_read_only_and_layered_caches(tmp_path: Path):
    rw = LocalStore(tmp_path / "near")
    far = LocalStore(tmp_path / "far")
    from fleche import Cache, LayeredCache

    layered = LayeredCache(
        [Cache(LocalStore(tmp_path / "ro", read_only=True)), Cache(rw), Cache(far)]
    )
    assert lease_store(layered) is rw  # where write="first" puts the record
    assert lease_store(Cache(LocalStore(tmp_path / "ro", read_only=True))) is None
    f, counts = _counting(STEADY)
    with cache(LocalStore(tmp_path / "ro2", read_only=True)):
        assert f(12) == 120
    assert counts == [12]


# -- in separate processes ----------------------------------------------------------------------

# A long ttl: three processes on a loaded machine must not take a busy owner for a dead one.
SLOW = LeasePolicy(ttl=30.0, poll=0.01, poll_max=0.05)


@fleche(single_flight=SLOW)
def slow_square(x: int) -> int:
    """Counts each computation with a file in $FLECHE_TEST_COUNT_DIR."""
    Path(os.environ["FLECHE_TEST_COUNT_DIR"], f"{x}-{uuid.uuid4().hex}").touch()
    time.sleep(0.15)
    return x * x


def _child(store_path: str, count_dir: str, keys: list[int]) -> list[int]:
    os.environ["FLECHE_TEST_COUNT_DIR"] = count_dir
    with cache(store_path):
        return [slow_square(k) for k in keys]


def _run_child(args: tuple[str, str, list[int]], out: Any) -> None:
    out.put(_child(*args))


def test_processes_compute_each_call_once(tmp_path: Path):
    counts = tmp_path / "counts"
    counts.mkdir()
    keys = list(range(6))
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    orders = [keys, keys[::-1], keys[3:] + keys[:3]]
    procs = [
        ctx.Process(target=_run_child, args=((str(tmp_path / "c"), str(counts), o), out))
        for o in orders
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(10)
    assert sorted(map(sorted, results)) == [[k * k for k in keys]] * 3
    computed = sorted(int(p.name.split("-")[0]) for p in counts.iterdir())
    assert computed == keys  # each key once, across three processes
    assert list(iter_leases(LocalStore(tmp_path / "c"))) == []


def test_single_flight_on_every_backend(store: ObjectStore):
    """Threads racing on one call compute it once; a long-dead foreign lease is taken over."""
    f, counts = _counting(STEADY, seconds=0.2)
    with ThreadPoolExecutor(3) as pool:
        assert list(pool.map(lambda x: _with(store, f, x), [1, 1, 1])) == [10] * 3
    assert counts == [1]
    assert store.read_lease(_fid(f), f.digest(1)) is None
    forged = {"host": "another-host", "pid": 12345, "ttl": AN_HOUR, "age": 3 * AN_HOUR}
    _forge(store, f.digest(2), fid=_fid(f), **forged)
    assert _with(store, f, 2) == 20  # expired hours ago: not waited out for another hour
    assert counts == [1, 2]


def test_the_functions_own_oserror_is_not_a_lease_fault(tmp_path: Path):
    runs: list[int] = []

    @fleche(single_flight=STEADY)
    def reads(x):
        runs.append(x)
        raise FileNotFoundError(f"input {x} is missing")

    with pytest.raises(FileNotFoundError, match="input 1"):
        _with(LocalStore(tmp_path / "c"), reads, 1)
    assert runs == [1]  # raised once, not retried "without single-flight"
    assert list(iter_leases(LocalStore(tmp_path / "c"))) == []  # and the lease is released


OLD_SERVER = """
import fleche.remote._server as r
_init = r._Server.__init__
def init(self, *a, **k):
    _init(self, *a, **k)
    for op in ("acquire_lease", "read_lease", "renew_lease", "release_lease"):
        del self.ops[op]  # a fleche remote server from before leases
r._Server.__init__ = init
"""


def test_a_remote_server_without_leases_fails_open(tmp_path: Path):
    python = [
        sys.executable,
        "-c",
        f"import sys\n{OLD_SERVER}\nfrom fleche.cli import main\nmain(sys.argv[3:])",
    ]
    store = open_store(f"fleche+exec://{tmp_path}/served", python=python)
    f, counts = _counting(STEADY)
    try:
        with pytest.warns(FlecheWarning, match="without single-flight"):
            assert _with(store, f, 1) == 10
        assert _with(store, f, 1) == 10  # stored all the same: a hit
        assert counts == [1]
    finally:
        store.close()


# -- async def: one computation per loop, leases polled with asyncio.sleep ---------------------


def _acounting(policy: LeasePolicy | bool, seconds: float = 0.05, fails: int = 0):
    """An async cached function that counts its runs (and the most that ran at once);
    its first ``fails`` runs raise."""
    runs: list[int] = []
    running = [0, 0]  # now, most at once

    @fleche(single_flight=policy)
    async def f(x):
        runs.append(x)
        running[0] += 1
        running[1] = max(running)
        try:
            await asyncio.sleep(seconds)
            if len(runs) <= fails:
                raise RuntimeError(f"run {len(runs)} fails")
            return x * 10
        finally:
            running[0] -= 1

    return f, runs, running


async def _gather_in(store: ObjectStore, f: Any, xs: list[int]) -> list[Any]:
    with cache(store):
        return await asyncio.gather(*(f(x) for x in xs), return_exceptions=True)


@pytest.mark.parametrize("single_flight", [STEADY, False])
def test_gathered_coroutines_compute_a_missing_call_once(tmp_path: Path, single_flight):
    # with or without single_flight, as threads of one process share a computation
    f, runs, _ = _acounting(single_flight)
    store = LocalStore(tmp_path / "c")
    assert asyncio.run(_gather_in(store, f, [1] * 8 + [2] * 3)) == [10] * 8 + [20] * 3
    assert runs == [1, 2]
    assert asyncio.run(_gather_in(store, f, [1, 2])) == [10, 20]  # stored: hits
    assert runs == [1, 2]
    assert list(iter_leases(store)) == []


@pytest.mark.parametrize("single_flight", [STEADY, False])
def test_a_failing_coroutine_stores_nothing_and_its_waiters_take_turns(
    tmp_path: Path, single_flight
):
    # As the sync path does across processes: the error is the leader's own; each waiter
    # then computes in turn (and raises, if it fails too), never two at once.
    f, runs, running = _acounting(single_flight, fails=99)
    store = LocalStore(tmp_path / "c")
    out = asyncio.run(_gather_in(store, f, [1] * 4))
    assert [str(e) for e in out] == [f"run {i} fails" for i in (1, 2, 3, 4)]
    assert running[1] == 1
    with cache(store):
        assert not f.contains(1)
    assert list(iter_leases(store)) == []
    # a failure that does not repeat: the next in line computes, the others share its value
    g, runs, running = _acounting(single_flight, fails=1)
    out = asyncio.run(_gather_in(store, g, [3] * 4))
    assert isinstance(out[0], RuntimeError) and out[1:] == [30] * 3
    assert runs == [3, 3] and running[1] == 1


@pytest.mark.parametrize("single_flight", [STEADY, False])
def test_a_cancelled_leader_hands_over_to_its_waiters(tmp_path: Path, single_flight):
    f, runs, _ = _acounting(single_flight, seconds=0.2)
    store = LocalStore(tmp_path / "c")

    async def main() -> Any:
        with cache(store):
            leader = asyncio.create_task(f(5))
            while not runs:
                await asyncio.sleep(0.005)
            waiter = asyncio.create_task(f(5))
            await asyncio.sleep(0.01)  # the waiter is waiting for the leader
            leader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await leader
            return await waiter

    assert asyncio.run(main()) == 50
    assert runs == [5, 5]
    assert list(iter_leases(store)) == []  # the cancelled leader released its lease


def test_an_async_waiter_leaves_the_loop_running(tmp_path: Path):
    f, runs, _ = _acounting(STEADY)
    store = LocalStore(tmp_path / "c")
    holder = Lease(store, _fid(f), f.digest(3), ttl=30.0)
    assert holder.acquire()  # "another process" holds the call

    def holder_computes() -> Any:  # ... in another thread, with its own loop
        with cache(store):
            return asyncio.run(f.rerun(3))  # rerun skips the lease

    async def main() -> tuple[Any, int]:
        ticks = 0
        with cache(store):
            waiter = asyncio.create_task(f(3))
            while ticks < 20:  # the loop runs other tasks while the waiter waits
                await asyncio.sleep(0.01)
                ticks += 1
            assert not waiter.done() and runs == []
            assert await asyncio.to_thread(holder_computes) == 30
            holder.release()
            return await waiter, ticks

    assert asyncio.run(main()) == (30, 20)
    assert runs == [3]  # the holder's computation only: the waiter loaded it


@pytest.mark.timeout(120)
def test_async_single_flight_on_every_backend(store: ObjectStore):
    """Two threads, each with its own loop gathering the same call: one computation."""
    f, runs, _ = _acounting(STEADY, seconds=0.2)
    with ThreadPoolExecutor(2) as pool:
        outs = list(pool.map(lambda _: asyncio.run(_gather_in(store, f, [1, 1])), range(2)))
    assert outs == [[10, 10]] * 2
    assert runs == [1]
    assert store.read_lease(_fid(f), f.digest(1)) is None


# -- in separate processes, started together ----------------------------------------------------


@fleche(single_flight=SLOW, ignore=["log", "pause"])
def logged(x: int, log: str, pause: float) -> int:
    """Appends a line to ``log`` for each computation, then sleeps ``pause`` seconds."""
    with open(log, "a") as out:
        out.write(f"{os.getpid()}\n")
    time.sleep(pause)
    return x + 1000


@fleche(single_flight=SLOW, ignore=["log", "pause"])
async def alogged(x: int, log: str, pause: float) -> int:
    with open(log, "a") as out:
        out.write(f"{os.getpid()}\n")
    await asyncio.sleep(pause)
    return x + 1000


# Expiry only: a dead owner of this machine is not recognised by its pid.
EXPIRING = LeasePolicy(ttl=1.0, poll=0.01, poll_max=0.05, detect_dead=False)


@fleche(single_flight=EXPIRING, ignore=["log", "pause"])
async def alogged_expiring(x: int, log: str, pause: float) -> int:
    with open(log, "a") as out:
        out.write(f"{os.getpid()}\n")
    await asyncio.sleep(pause)
    return x + 1000


_FUNCTIONS = {"sync": logged, "async": alogged, "async-expiring": alogged_expiring}


def _call(kind: str, x: int, log: str, pause: float, n: int = 1) -> list[int]:
    """``n`` calls of one of the functions above (gathered when async), here."""
    f = _FUNCTIONS[kind]
    if kind == "sync":
        return [f(x, log, pause) for _ in range(n)]

    async def main() -> list[int]:
        return list(await asyncio.gather(*(f(x, log, pause) for _ in range(n))))

    return asyncio.run(main())


def _call_in_child(
    kind: str, store: ObjectStore, x: int, log: str, pause: float, n: int, start: Any, out: Any
) -> None:
    with cache(store):
        if start is not None:
            start.wait(60)  # every process misses at the same moment
        out.put(_call(kind, x, log, pause, n))


def _lines(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


@pytest.fixture(params=REACHABLE)
def shared_store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    """A store another process can open too: every backend but memory://."""
    return open_backend(request.param, request, tmp_path)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", ["sync", "async"])
def test_processes_started_together_compute_once(
    tmp_path: Path, kind: str, shared_store: ObjectStore
):
    log = tmp_path / "log"
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Barrier(2), ctx.Queue()
    n = 1 if kind == "sync" else 3  # async: each process gathers three coroutines
    args = (kind, shared_store, 7, str(log), 0.5, n, start, out)
    procs = [ctx.Process(target=_call_in_child, args=args) for _ in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert results == [[1007] * n] * 2
    assert len(_lines(log)) == 1  # one computation in all
    assert shared_store.read_lease(logged.__fleche__.function_id, logged.digest(7, "", 0)) is None


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kind", ["sync", "async", "async-expiring"])
def test_a_killed_holder_does_not_block_the_others(tmp_path: Path, kind: str):
    """A process killed while computing leaves its lease behind: the next caller takes it
    over (at once when it sees the pid is gone; after ``ttl`` with detect_dead off)."""
    store = LocalStore(tmp_path / "c")
    log = tmp_path / "log"
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(
        target=_call_in_child, args=(kind, store, 8, str(log), AN_HOUR, 1, None, out)
    )
    child.start()
    deadline = time.monotonic() + 120
    while not _lines(log):  # the child holds the lease and computes, for an hour
        assert time.monotonic() < deadline and child.is_alive()
        time.sleep(0.01)
    f = _FUNCTIONS[kind]
    assert store.read_lease(f.__fleche__.function_id, f.digest(8, "", 0)) is not None
    child.kill()
    child.join(30)
    t0 = time.monotonic()
    with cache(store):
        assert _call(kind, 8, str(log), 0.0) == [1008]
    if kind == "async-expiring":
        assert time.monotonic() - t0 >= EXPIRING.ttl  # waited for the lease to expire
    assert _lines(log) == [str(child.pid), str(os.getpid())]
    assert list(iter_leases(store)) == []


def _drive(coro: Any) -> Any:
    """Run a coroutine that never suspends without any event loop, as trio or a hand-written
    scheduler would drive it: fleche must not need asyncio's loop to cache."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("the coroutine suspended")


def test_a_coroutine_run_without_asyncio_is_cached(tmp_path: Path):
    runs: list[int] = []

    @fleche
    async def plain(x):
        runs.append(x)
        return x * 10

    @fleche(single_flight=STEADY)
    async def leased(x):
        runs.append(x)
        return x * 10

    with cache(LocalStore(tmp_path / "c")):
        assert _drive(plain(1)) == 10
        assert _drive(plain(1)) == 10
        with pytest.warns(FlecheWarning, match="no asyncio event loop"):
            assert _drive(leased(2)) == 20
        assert _drive(leased(2)) == 20
    assert runs == [1, 2]
