"""Compute once across processes: a lease in the store says who is computing a call.

``@fleche(single_flight=True)``: when several processes (cluster workers, jobs
on a shared disk) miss the same call at once, the first to create
``locks/<function-id>/<call key>`` in the store computes it; the others poll
for its record and load it when it appears. Threads of one process already
share a computation (the decorator's in-process flight); this is the same
promise between processes and machines, with the store as the only shared
thing.

The lease is a small JSON file (format in ``docs/format.md``) created with the
store's create-only write: ``O_EXCL``-style link on local disk, ``If-None-Match:
*`` on S3, a refusing rename on SFTP, forwarded by the remote cache. Whoever
creates it owns it; nobody else ever writes it except to take over a dead one.

Why a lease and not a lock: a crashed owner must not block everyone forever.
The owner renews the lease (rewrites it with a later expiry) from a heartbeat
thread every ``ttl / 3`` seconds while it computes. A waiter treats a lease as
dead when

- it has not changed for ``ttl`` seconds *as the waiter's own clock measures*
  (immune to clock skew between machines), or
- its expiry is more than ``ttl`` in the past by the waiter's wall clock (a
  lease left by a process that died long ago is taken over at once), or
- its owner ran on this machine, in this pid namespace, and that pid is gone
  (``detect_dead``: a killed worker is replaced without waiting for expiry).

A dead lease is deleted and the waiter tries to create its own. Taking over
is check-then-delete, not atomic on every backend: two waiters racing for the
same dead lease may both compute. That costs a duplicate computation, never a
wrong result (both store the same value; the last record wins), which is also
what a waiter does when ``wait`` runs out on a live owner, and what every
process does when the store refuses leases (fail open, one warning).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from fleche.errors import FlecheError
from fleche.records import PendingCall
from fleche.store import BytesLike, ObjectStore, is_function_id, is_oid

LEASE_FORMAT = 1
"""The ``lease`` field of a lease file: its format version."""


@dataclass(frozen=True)
class LeasePolicy:
    """How a single-flight function leases its calls: ``@fleche(single_flight=LeasePolicy(...))``.

    ``ttl``: seconds a lease lives without renewal; the owner renews it every
    ``ttl / 3``, so a dead owner is noticed between ``ttl`` and ``2 * ttl``
    after its last renewal. ``wait``: seconds a waiter waits for a *live*
    owner before computing itself (None: as long as the owner keeps its lease
    alive). ``poll``/``poll_max``: the shortest and the longest pause between
    two looks at the store; in between, a tenth of the time waited so far.
    ``detect_dead``: take over at once the lease of a process of this
    machine that no longer exists.
    """

    ttl: float = 30.0
    wait: float | None = None
    poll: float = 0.02
    poll_max: float = 1.0
    detect_dead: bool = True

    def __post_init__(self) -> None:
        for name in ("ttl", "poll", "poll_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"LeasePolicy({name}={value!r}): expected seconds > 0")
        if self.wait is not None and (
            isinstance(self.wait, bool) or not isinstance(self.wait, (int, float)) or self.wait < 0
        ):
            raise ValueError(f"LeasePolicy(wait={self.wait!r}): expected seconds >= 0 or None")


def policy_of(single_flight: bool | LeasePolicy | None) -> LeasePolicy | None:
    """The policy meant by ``@fleche(single_flight=...)``: None when off."""
    if single_flight is None or single_flight is False:
        return None
    if single_flight is True:
        return LeasePolicy()
    if isinstance(single_flight, LeasePolicy):
        return single_flight
    raise TypeError(
        f"single_flight={single_flight!r}: expected True, False or a fleche.cache._lease.LeasePolicy"
    )


# -- who we are ------------------------------------------------------------------------------


def _pid_namespace() -> str:
    """The pid namespace of this process (Linux), so containers sharing a hostname are told apart."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


_HOST: str | None = None


def _host() -> str:
    """This machine's name, looked up on the first lease (socket loads only on a miss)."""
    global _HOST
    if _HOST is None:
        import socket

        _HOST = socket.gethostname()
    return _HOST


_PIDNS = _pid_namespace()


def _alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine (and pid namespace) exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process, or we cannot tell: assume alive
    return True


# -- the lease file ----------------------------------------------------------------------------


def _encode(function_id: str, digest: str, token: str, ttl: float, acquired: float) -> bytes:
    now = time.time()
    record = {
        "lease": LEASE_FORMAT,
        "function": function_id,
        "digest": digest,
        "token": token,
        "host": _host(),
        "pidns": _PIDNS,
        "pid": os.getpid(),
        "acquired": acquired,
        "renewed": now,
        "expires": now + ttl,
        "ttl": ttl,
    }
    import json  # the lease path only: json stays off `import fleche`

    return json.dumps(record, separators=(",", ":")).encode()


def _decode(raw: BytesLike | None) -> dict[str, Any] | None:
    """The lease record, or None when ``raw`` is not one (junk is treated as a dead lease)."""
    if raw is None:
        return None
    import json

    try:
        rec = json.loads(bytes(raw))
    except ValueError:
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("token"), str):
        return None
    for name in ("expires", "ttl"):
        if isinstance(rec.get(name), bool) or not isinstance(rec.get(name), (int, float)):
            return None
    return rec


class Lease:
    """A lease this process holds on one call; the heartbeat renews it until :meth:`release`."""

    def __init__(self, store: ObjectStore, function_id: str, digest: str, ttl: float) -> None:
        self.store = store
        self.function_id = function_id
        self.digest = digest
        self.ttl = ttl
        self.token = os.urandom(12).hex()
        self.acquired = time.time()
        self.lost = False  # another process took the lease over (we were presumed dead)
        self.next_renewal = 0.0

    def _data(self) -> bytes:
        return _encode(self.function_id, self.digest, self.token, self.ttl, self.acquired)

    def acquire(self) -> bool:
        """Create the lease file; False when another process holds this call."""
        if self.store.acquire_lease(self.function_id, self.digest, self._data()):
            return True
        # A retried request (the remote cache reconnects and resends) may find the
        # file its first attempt created: that is still ours.
        rec = _decode(self.store.read_lease(self.function_id, self.digest))
        return rec is not None and rec["token"] == self.token

    def renew(self) -> None:
        """Push the expiry forward, unless someone has taken the lease over."""
        rec = _decode(self.store.read_lease(self.function_id, self.digest))
        if rec is None or rec["token"] != self.token:
            self.lost = True
            return
        self.store.renew_lease(self.function_id, self.digest, self._data())

    def release(self) -> None:
        """Stop renewing and delete the lease file if it is still ours."""
        _HEARTBEAT.remove(self)
        if self.lost:
            return
        rec = _decode(self.store.read_lease(self.function_id, self.digest))
        if rec is not None and rec["token"] == self.token:
            self.store.release_lease(self.function_id, self.digest)


class _Heartbeat:
    """One daemon thread per process renewing every lease it holds, each every ``ttl / 3``."""

    def __init__(self) -> None:
        self._leases: set[Lease] = set()
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._pid = 0

    def add(self, lease: Lease) -> None:
        with self._lock:
            lease.next_renewal = time.monotonic() + lease.ttl / 3
            self._leases.add(lease)
            # a forked child inherits the object but not the thread
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._run, name="fleche-lease-heartbeat", daemon=True
                )
                self._thread.start()
            self._wake.notify()

    def remove(self, lease: Lease) -> None:
        with self._lock:
            self._leases.discard(lease)

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._leases:
                    self._wake.wait(60.0)
                    if not self._leases:
                        continue
                now = time.monotonic()
                due = [lease for lease in self._leases if lease.next_renewal <= now]
                if not due:
                    first = min(lease.next_renewal for lease in self._leases)
                    self._wake.wait(max(0.0, first - now))
                    continue
                for lease in due:
                    lease.next_renewal = now + lease.ttl / 3
            for lease in due:
                try:
                    lease.renew()
                except (OSError, FlecheError):
                    pass  # a store hiccup: the next renewal may work; waiters allow 3 misses
                if lease.lost:
                    self.remove(lease)


_HEARTBEAT = _Heartbeat()

# Leases this process holds, so its own threads waiting on one wake when it is released
# instead of sleeping out their poll interval.
_held: dict[tuple[int, str, str], threading.Event] = {}
_held_lock = threading.Lock()


# -- the protocol with the decorator -----------------------------------------------------------


class _Computes(Protocol):
    """What :func:`compute_once` needs of the decorator's ``CachedFunction`` (no import upward)."""

    function_id: str
    qualname: str

    def lookup(self, cache: Any, key: str, refused: Any = None) -> tuple[bool, Any]: ...

    def compute(self, cache: Any, call: PendingCall) -> Any: ...

    def warn_once(self, kind: str, message: str) -> None: ...


class _AsyncComputes(Protocol):
    """What :func:`acompute_once` needs of an ``async def`` function's ``CachedFunction``."""

    function_id: str
    qualname: str

    def lookup(self, cache: Any, key: str, refused: Any = None) -> tuple[bool, Any]: ...

    async def acompute(self, cache: Any, call: PendingCall) -> Any: ...

    def warn_once(self, kind: str, message: str) -> None: ...


def lease_store(cache: Any) -> ObjectStore | None:
    """The store a cache's leases live in, or None when it cannot hold one (read-only).

    A single cache: its store. A layered cache: its first writable layer, where
    ``write="first"`` puts results, so waiters find the record where the lease
    said it would be.
    """
    if cache.read_only:
        return None
    store = cache.store
    if isinstance(store, ObjectStore):
        return store
    try:
        layers = cache.layers
    except (AttributeError, OSError):
        return None
    for layer in layers:
        if not layer.read_only and isinstance(layer.store, ObjectStore):
            return layer.store
    return None


def _dead(rec: dict[str, Any], unchanged_for: float, policy: LeasePolicy) -> bool:
    ttl = float(rec["ttl"])
    if unchanged_for > ttl:
        return True  # three renewals missed, by our own clock
    if time.time() > float(rec["expires"]) + ttl:
        return True  # expired long ago, even allowing for a clock skew of ttl
    return (
        policy.detect_dead
        and rec.get("host") == _host()
        and rec.get("pidns", "") == _PIDNS
        and isinstance(rec.get("pid"), int)
        and rec["pid"] != os.getpid()
        and not _alive(rec["pid"])
    )


def _break(store: ObjectStore, function_id: str, digest: str, token: str | None) -> None:
    """Delete a dead lease, if it is still the one we judged (token None: a junk file)."""
    rec = _decode(store.read_lease(function_id, digest))
    if (rec["token"] if rec is not None else None) == token:
        store.release_lease(function_id, digest)


def compute_once(
    cf: _Computes,
    cache: Any,
    call: PendingCall,
    policy: LeasePolicy,
    refused: Any = None,
) -> Any:
    """Compute a missed call unless another process is computing it; then wait for its result.

    Faults of the lease itself (a store that refuses it, a remote server too
    old to know it) fail open: one warning, and the call is computed here.
    ``refused``: what the caller's lookup answered, when the stored result
    failed to load (``decorator_results.Undecodable``); looking again never
    loads that result again.
    """
    store = lease_store(cache)
    if store is None:
        return cf.compute(cache, call)
    seen = [refused]  # the last result that failed to load, updated by each look
    try:
        found, value = _wait_here(_waiting(cf, cache, store, call.key, policy, seen))
    except (OSError, FlecheError) as e:  # the lease's faults only: never the function's own
        _unleased(cf, store, e)
        return cf.compute(cache, call)
    if found:
        return value
    if value is None:  # waited long enough: compute alongside the owner
        return cf.compute(cache, call)
    with _Owning(value):
        # check once more (the last owner may just have finished), then compute
        hit, result = _look(cf, cache, call.key, seen)
        if hit:
            return result
        return cf.compute(cache, call)


async def acompute_once(
    cf: _AsyncComputes,
    cache: Any,
    call: PendingCall,
    policy: LeasePolicy,
    refused: Any = None,
) -> Any:
    """:func:`compute_once` for an ``async def`` function: the same lease, waited for with
    ``asyncio.sleep``, so the event loop runs its other tasks meanwhile.

    The store's requests (create the lease, look for the record) are made from
    the loop, as an async function's lookup and store are; the heartbeat thread
    renews the lease while the coroutine computes.
    """
    store = lease_store(cache)
    if store is None:
        return await cf.acompute(cache, call)
    import asyncio  # loaded already, unless another library runs the coroutine

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        cf.warn_once(
            "lease-asyncio",
            "single_flight waits with asyncio.sleep, and no asyncio event loop runs this "
            "coroutine (trio?): computing without single-flight",
        )
        return await cf.acompute(cache, call)
    seen = [refused]
    try:
        found, value = await _wait_async(_waiting(cf, cache, store, call.key, policy, seen))
    except (OSError, FlecheError) as e:
        _unleased(cf, store, e)
        return await cf.acompute(cache, call)
    if found:
        return value
    if value is None:
        return await cf.acompute(cache, call)
    with _Owning(value):
        hit, result = _look(cf, cache, call.key, seen)
        if hit:
            return result
        return await cf.acompute(cache, call)


def _unleased(cf: _Computes | _AsyncComputes, store: ObjectStore, error: Exception) -> None:
    cf.warn_once(
        f"lease:{store.url}",
        f"cannot lease calls in {store.url} ({error}); computing without single-flight",
    )


def _look(
    cf: _Computes | _AsyncComputes, cache: Any, key: str, refused: list[Any]
) -> tuple[bool, Any]:
    """``cf.lookup``, never loading again a result that failed to load in this call."""
    hit, value = cf.lookup(cache, key, refused[0])
    if not hit and value is not None:
        refused[0] = value
    return hit, value


# What the waiting loop asks of its driver between two looks: pause this many seconds, or
# less if the Event (set when a thread of this process holding the lease lets go) is set.
_Pause = tuple[float, "threading.Event | None"]
# (True, result) once another process stored it; (False, our Lease) when it is our turn;
# (False, None) when ``policy.wait`` ran out.
_Outcome = tuple[bool, Any]


def _wait_here(steps: Generator[_Pause, None, _Outcome]) -> _Outcome:
    """Drive :func:`_waiting` in this thread: sleep (or wait for our own holder) between looks."""
    try:
        while True:
            pause, event = next(steps)
            if event is not None:
                event.wait(pause)  # a thread of ours holds it: wake when it lets go
            else:
                time.sleep(pause)
    except StopIteration as done:
        outcome: _Outcome = done.value
        return outcome


async def _wait_async(steps: Generator[_Pause, None, _Outcome]) -> _Outcome:
    """Drive :func:`_waiting` in a coroutine: each pause is an ``asyncio.sleep``.

    A thread of this process holding the lease is not waited for through its
    Event (that would block the loop): its release is seen at the next look.
    """
    import asyncio  # loaded already: a coroutine is running

    try:
        while True:
            pause, _ = next(steps)
            await asyncio.sleep(pause)
    except StopIteration as done:
        outcome: _Outcome = done.value
        return outcome


def _waiting(
    cf: _Computes | _AsyncComputes,
    cache: Any,
    store: ObjectStore,
    key: str,
    policy: LeasePolicy,
    refused: list[Any],
) -> Generator[_Pause, None, _Outcome]:
    """The waiting loop without its waits: it yields each pause to its driver (a thread
    sleeps, a coroutine awaits) and returns the :data:`_Outcome`, so both wait alike."""
    fid = cf.function_id
    local = (id(store), fid, key)
    started = time.monotonic()
    deadline = None if policy.wait is None else started + policy.wait
    seen: tuple[Any, ...] | None = None
    seen_at = started
    while True:
        lease = Lease(store, fid, key, policy.ttl)
        if lease.acquire():
            return False, lease
        hit, value = _look(cf, cache, key, refused)
        if hit:
            return True, value
        raw = store.read_lease(fid, key)
        if raw is None:
            continue  # released without a record (the owner failed): our turn
        rec = _decode(raw)
        now = time.monotonic()
        state = (rec["token"], rec["expires"]) if rec is not None else None
        if state != seen:
            seen, seen_at = state, now
        if rec is None or _dead(rec, now - seen_at, policy):
            _break(store, fid, key, rec["token"] if rec is not None else None)
            continue
        if deadline is not None and now >= deadline:
            cf.warn_once(
                "lease-wait",
                f"waited {policy.wait:g} s for another process computing call {key} "
                f"(lease held by {rec.get('host')} pid {rec.get('pid')}); computing it here too",
            )
            return False, None
        # A tenth of the time waited so far: the result is noticed at most ~10% late
        # (a 1 s computation costs a waiter ~0.1 s more, a 1 h one poll_max), with
        # jitter so that many waiters do not poll in step.
        delay = min(policy.poll_max, max(policy.poll, 0.1 * (now - started)))
        import random  # waiting for another process: never on the hit path

        pause = delay * random.uniform(0.8, 1.2)
        if deadline is not None:
            pause = min(pause, max(0.0, deadline - now))
        yield pause, _held.get(local)


class _Owning:
    """Holding a lease while computing: the heartbeat renews it, and this process's threads
    waiting on it are woken when it ends.

    On exit (the record written, or the function failed, or a coroutine
    cancelled) the lease is released: after the record, so waiters find it.
    """

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self.local = (id(lease.store), lease.function_id, lease.digest)
        self.event = threading.Event()

    def __enter__(self) -> None:
        with _held_lock:
            _held[self.local] = self.event
        _HEARTBEAT.add(self.lease)

    def __exit__(self, *exc: object) -> None:
        try:
            self.lease.release()
        except (OSError, FlecheError):
            pass  # it expires by itself
        finally:
            _HEARTBEAT.remove(self.lease)  # already done by release() unless it failed
            with _held_lock:
                if _held.get(self.local) is self.event:
                    del _held[self.local]
            self.event.set()


# -- housekeeping --------------------------------------------------------------------------------


def iter_leases(store: ObjectStore) -> Iterator[tuple[str, str]]:
    """``(function_id, digest)`` of every lease file of a store with a filesystem here."""
    fs = getattr(store, "fs", None)
    if fs is None:
        return
    base = f"{store.root}/locks"
    try:
        found = fs.find(base)
    except FileNotFoundError:
        return
    prefix = fs._strip_protocol(base).rstrip("/") + "/"
    for path in found:
        rel = fs._strip_protocol(path)
        if not rel.startswith(prefix):
            continue
        fid, _, digest = rel[len(prefix) :].partition("/")
        if is_function_id(fid) and is_oid(digest):
            yield fid, digest


def sweep(store: ObjectStore, *, now: float | None = None) -> int:
    """Delete the leases that expired more than their ttl ago (crashed owners); how many.

    For ``fleche gc``: a live owner renews its lease every ``ttl / 3``, so a
    lease past ``expires + ttl`` by this clock belongs to a process that is gone
    (or to a clock more than ``ttl`` off). Junk files under ``locks/`` go too.
    """
    now = time.time() if now is None else now
    removed = 0
    for fid, digest in list(iter_leases(store)):
        rec = _decode(store.read_lease(fid, digest))
        if rec is None or now > float(rec["expires"]) + float(rec["ttl"]):
            _break(store, fid, digest, rec["token"] if rec is not None else None)
            removed += 1
    return removed
