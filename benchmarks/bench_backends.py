"""fleche on every backend over loopback: small hits and misses, a 64 MiB result, requests per call.

Backends: memory, local disk, S3 on moto (``moto.server.ThreadedMotoServer`` in this
process) and on Ceph's radosgw (``tools/services/radosgw``), SFTP and the SSH remote
cache (``fleche+ssh://``) through a real OpenSSH sshd (``tools/services/sshd``), the
remote cache as a child process (``fleche+exec://``), and a layered cache (local disk in
front of moto S3).  Every server listens on 127.0.0.1; one that cannot start is reported
as skipped with the reason.  ``FLECHE_TEST_RGW_*`` / ``FLECHE_TEST_SSH_*`` (what
``tools/test`` exports) name servers already running; otherwise they are started here
and stopped at the end.

Everything goes through ``@fleche``.  Hits are read through a cache opened on a new store
handle after the writes (a new connection for SFTP and the remote cache): fleche keeps no
record or value in memory between calls, so only the store can answer.  Requests per
operation are counted at the wire: botocore's ``before-send`` event for S3, the client's
``round_trips`` for the remote cache, paramiko's SFTP requests for SFTP.  Targets are those
of issue 4: a small hit on S3 is one request, through ``remote --serve`` one round trip,
and through a warm local layer in front of S3 no request at all.  Ratios divide by the
local-disk row of the same run.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import (
    ServiceUnavailable,
    Timing,
    count_s3_requests,
    fmt_seconds,
    measure,
    moto_s3,
    s3_kind,
)
from fleche import Cache, LayeredCache, cache, fleche
from fleche.errors import FlecheWarning
from fleche.store import ObjectStore, open_store
from tests.services import service_env

SERVICES = Path(__file__).resolve().parent.parent / "tools" / "services"
HITS = {"in-process": 2000, "network": 400}  # per-call samples of a small hit
MISSES = {"in-process": 1000, "network": 150}  # distinct small misses
COUNTED = 20  # operations whose requests are counted (outside the timed loops)
BIG_BYTES = 64 << 20
BIG_REPEAT = 3  # distinct 64 MiB results stored, then loaded, per backend
COPY_UP = 50  # calls only S3 has, read through a layered cache with an empty local layer
BASELINE = "local"
PRIME_BYTES = 512 << 20  # see _prime

_runs: Counter[str] = Counter()  # executions of the bodies below: a hit must run none
_arrays: list[np.ndarray] = []  # the 64 MiB results, built before any timing


@fleche
def small(a, b, c):
    _runs["small"] += 1
    return a + c


@fleche
def big(k, salt):  # salt: only part of the key, so each run's calls are new
    _runs["big"] += 1
    return _arrays[k]


# -- counting what goes over the wire --------------------------------------------------------

Taken = Callable[[], Counter[str]]  # what was sent since counting began, by kind


@contextmanager
def _count_s3(store: ObjectStore) -> Iterator[Taken]:
    with count_s3_requests(store.fs) as seen:
        yield lambda: Counter(s3_kind(method, url) for method, url in seen)


@contextmanager
def _count_remote(store: Any) -> Iterator[Taken]:
    before = store.round_trips
    yield lambda: Counter({"round trip": store.round_trips - before})


@contextmanager
def _count_sftp(store: ObjectStore) -> Iterator[Taken]:
    """SFTP requests sent, and round trips: a wait for a reply after requests were sent.

    Pipelined requests (fstat and read together) are one round trip; a close nobody
    waits for is a request but no round trip.  Counted at paramiko's ``SFTPClient``.
    """
    import paramiko

    cls = paramiko.SFTPClient
    send, read = cls._async_request, cls._read_response
    counts: Counter[str] = Counter()
    state = {"sent": False}

    def counted_send(self: Any, *args: Any, **kwargs: Any) -> Any:
        counts["request"] += 1
        state["sent"] = True
        return send(self, *args, **kwargs)

    def counted_read(self: Any, *args: Any, **kwargs: Any) -> Any:
        if state["sent"]:
            counts["round trip"] += 1
            state["sent"] = False
        return read(self, *args, **kwargs)

    cls._async_request, cls._read_response = counted_send, counted_read
    try:
        yield lambda: Counter(counts)
    finally:
        cls._async_request, cls._read_response = send, read


# -- backends ------------------------------------------------------------------------------


@dataclass
class Backend:
    label: str
    open: Callable[[], tuple[Any, list[ObjectStore], ObjectStore | None]]
    """A fresh cache on new store handles: (cache, stores to close, store whose wire is counted)."""
    count: Callable[[ObjectStore], Any] | None = None
    network: bool = True
    target: tuple[int, str] | None = None
    """What a small hit must cost exactly: (count, unit), e.g. (1, "S3 request")."""


@dataclass
class Figures:
    """One backend's timings and requests per operation."""

    hit: Timing | None = None
    miss: Timing | None = None
    big_store: Timing | None = None
    big_load: Timing | None = None
    per_op: dict[str, Counter[str]] = field(default_factory=dict)
    ops: dict[str, int] = field(default_factory=dict)

    def per(self, op: str) -> dict[str, float]:
        n = self.ops.get(op, 0)
        return {k: v / n for k, v in sorted(self.per_op.get(op, Counter()).items())} if n else {}


def _simple(url: str, **options: Any) -> Callable[[], tuple[Any, list[ObjectStore], Any]]:
    def open_() -> tuple[Any, list[ObjectStore], Any]:
        store = open_store(url, **options)
        return Cache(store), [store], store

    return open_


def _layered(local: str, url: str, **options: Any) -> Callable[[], tuple[Any, list, Any]]:
    def open_() -> tuple[Any, list[ObjectStore], Any]:
        near, far = open_store(local), open_store(url, **options)
        return LayeredCache([Cache(near), Cache(far)]), [near, far], far

    return open_


@contextmanager
def _service(name: str, prefix: str, marker: str) -> Iterator[dict[str, str]]:
    """``FLECHE_TEST_<prefix>_*`` from ``tools/test``, or ``tools/services/<name>`` started now.

    The tests' own helper (``tests/services.py``), so both start services the
    same way. Raises :class:`ServiceUnavailable` with the reason when it cannot
    run; stops what it started (always).
    """
    with service_env(name, f"FLECHE_TEST_{prefix}_", marker) as env:
        if isinstance(env, str):
            raise ServiceUnavailable(env)
        if env.get(f"FLECHE_TEST_{prefix}_SKIP"):
            raise ServiceUnavailable(env[f"FLECHE_TEST_{prefix}_SKIP"])
        yield env


# -- measuring one backend -------------------------------------------------------------------


def _check_runs(name: str, expected: int, before: int) -> None:
    ran = _runs[name] - before
    if ran != expected:
        raise AssertionError(f"{name}() ran {ran} times, expected {expected}: a hit computed")


def _counted(b: Backend, store: Any, fig: Figures, op: str, n: int, fn: Callable[[], Any]) -> None:
    """Run ``fn`` ``n`` times, adding the requests they sent to ``fig`` (when the backend counts)."""
    if b.count is None or store is None:
        for _ in range(n):
            fn()
        return
    with b.count(store) as taken:
        for _ in range(n):
            fn()
        fig.per_op.setdefault(op, Counter()).update(taken())
    fig.ops[op] = fig.ops.get(op, 0) + n


def _small_calls(b: Backend, fig: Figures) -> None:
    kind = "network" if b.network else "in-process"
    c, stores, wire = b.open()
    try:
        with cache(c):
            keys = iter(range(100, 10**6))  # never 1: the key the hits read
            before = _runs["small"]
            _counted(b, wire, fig, "miss + store", COUNTED, lambda: small(next(keys), "a", 2.5))
            fig.miss = measure(
                b.label,
                lambda: small(next(keys), "a", 2.5),
                repeat=MISSES[kind],
                number=1,
            )
            small(1, "a", 2.5)  # the call the hits read
            _check_runs("small", COUNTED + MISSES[kind] + 1, before)
    finally:
        for s in stores:
            s.close()
    c, stores, wire = b.open()  # new handles: only the store can answer
    try:
        with cache(c):
            before = _runs["small"]
            t0 = time.perf_counter()
            small(1, "a", 2.5)
            first = time.perf_counter() - t0
            _counted(b, wire, fig, "small hit", COUNTED, lambda: small(1, "a", 2.5))
            fig.hit = measure(
                b.label,
                lambda: small(1, "a", 2.5),
                repeat=HITS[kind],
                number=1,
                note=f"first hit after opening {fmt_seconds(first)}",
            )
            _check_runs("small", 0, before)
    finally:
        for s in stores:
            s.close()


def _prime() -> None:
    """Touch and free 512 MiB, so the next 64 MiB lands in memory the VM has already backed.

    The first touch of a never-used page runs at ~1.7 GB/s here, a recently freed one at
    ~10 GB/s (``bench_cache._prime`` has the details): without this, a 64 MiB load costs
    6 or 36 ms depending on what ran before it.  ``FLECHE_BENCH_COLD=1`` skips it.
    """
    if not os.environ.get("FLECHE_BENCH_COLD"):
        np.ones(PRIME_BYTES // 8)


def _big_results(b: Backend, fig: Figures) -> None:
    stores_: list[float] = []
    salt = uuid.uuid4().int % 10**9  # keys no earlier run left in a reused store
    c, stores, wire = b.open()
    try:
        with cache(c):
            for k in range(BIG_REPEAT):
                before = _runs["big"]
                _prime()
                t0 = time.perf_counter()
                _counted(b, wire, fig, "64 MiB store", 1, lambda k=k: big(k, salt))
                stores_.append(time.perf_counter() - t0)
                _check_runs("big", 1, before)
    finally:
        for s in stores:
            s.close()
    loads = [_big_load(b, fig, salt, k) for k in range(BIG_REPEAT)]
    rate = lambda ts: f"{BIG_BYTES / min(ts) / 1e9:.2f} GB/s at best"  # noqa: E731
    fig.big_store = Timing(b.label, stores_, note=rate(stores_))
    fig.big_load = Timing(b.label, loads, note=rate(loads))


def _big_load(b: Backend, fig: Figures, salt: int, k: int) -> float:
    """Seconds of one 64 MiB hit through a cache on new handles (checked, then dropped)."""
    c, stores, wire = b.open()
    try:
        with cache(c):
            before = _runs["big"]
            out: list[Any] = []
            _prime()
            t0 = time.perf_counter()
            _counted(b, wire, fig, "64 MiB load", 1, lambda: out.append(big(k, salt)))
            seconds = time.perf_counter() - t0
            _check_runs("big", 0, before)
            arr, ref = out[0], _arrays[k]
            if arr.shape != ref.shape or arr[0] != ref[0] or arr[-1] != ref[-1]:
                raise AssertionError("the 64 MiB result came back different")
            return seconds
    finally:
        for s in stores:
            s.close()


def _measure(b: Backend) -> Figures:
    fig = Figures()
    with warnings.catch_warnings():
        # The decorator fails open with a warning: here that is a failure, not a figure.
        warnings.simplefilter("error", FlecheWarning)
        _small_calls(b, fig)
        _big_results(b, fig)
    return fig


# -- the copy-up of a layered cache ----------------------------------------------------------


def _copy_up(s3_url: str, options: dict[str, Any], local: str) -> list[str]:
    """Calls only S3 has, read through a layered cache whose local layer is empty, twice."""
    far = open_store(s3_url, **options)
    try:
        with cache(Cache(far)):
            for i in range(COPY_UP):
                small(10**7 + i, "a", 2.5)
    finally:
        far.close()
    near, far = open_store(local), open_store(s3_url, **options)
    lines = []
    try:
        with cache(LayeredCache([Cache(near), Cache(far)])):
            before = _runs["small"]
            for label in ("first hit, copied up from S3", "second hit, from the local layer"):
                keys = iter(range(10**7, 10**7 + COPY_UP))
                with count_s3_requests(far.fs) as seen:
                    t = measure(
                        label,
                        lambda keys=keys: small(next(keys), "a", 2.5),
                        repeat=COPY_UP,
                        number=1,
                    )
                kinds = Counter(s3_kind(m, u) for m, u in seen)
                per = _fmt_counts({k: v / COPY_UP for k, v in sorted(kinds.items())})
                lines.append(
                    f"   {label:<34} p50 {fmt_seconds(t.p50):>10}  p99 {fmt_seconds(t.p99):>10}"
                    f"  S3 requests per hit: {per}"
                )
            _check_runs("small", 0, before)
    finally:
        near.close()
        far.close()
    return lines


# -- reporting -------------------------------------------------------------------------------


def _fmt_counts(counts: dict[str, float]) -> str:
    """``1 GET + 1.05 PUT``; ``2 RT, 4 req`` (SFTP); ``0`` when nothing was sent."""
    if "request" in counts:  # SFTP: round trips are the latency, requests the work
        return f"{counts.get('round trip', 0):.3g} RT, {counts['request']:.3g} req"
    if "round trip" in counts:
        return f"{counts['round trip']:.3g} RT"
    return " + ".join(f"{v:.3g} {k}" for k, v in counts.items() if v) or "0"


def _group(report: Any, title: str, target: str, rows: list[Timing | None]) -> None:
    timings = [t for t in rows if t is not None]
    if timings:
        base = BASELINE if any(t.name == BASELINE for t in timings) else None
        report.add(title, timings, baseline=base, target=target)


OPS = ("small hit", "miss + store", "64 MiB store", "64 MiB load")


def _requests_table(backends: list[Backend], figures: dict[str, Figures]) -> None:
    rows = [
        [b.label, *(_fmt_counts(figures[b.label].per(op)) for op in OPS)]
        for b in backends
        if b.count is not None
    ]
    if not rows:
        return
    print("\n## requests per operation, counted at the wire (mean over the operations counted)")
    print(
        "   target: S3 small hit = 1 request; remote = 1 round trip; warm layered = 0 S3 requests"
    )
    head = ["backend", *OPS]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        print("   " + "  ".join(f"{c:<{w}}" for c, w in zip(r, widths, strict=True)).rstrip())
    print(
        f"   S3: HTTP requests ({COUNTED} small calls, each 64 MiB one); the layered row counts "
        "only S3's.\n   RT: request/reply round trips (remote: the client's round_trips). "
        "SFTP: paramiko requests sent (req)\n   and waits for a reply after sending (RT); a "
        "64 MiB transfer keeps 64 requests in flight,\n   so its RT counts overlapping waits, "
        "not latencies paid in turn."
    )


def _verdicts(backends: list[Backend], figures: dict[str, Figures]) -> None:
    for b in backends:
        if b.target is None:
            continue
        want, unit = b.target
        per = figures[b.label].per("small hit")
        got = sum(per.values())
        met = "meets" if got == want else "MISSES"
        how = f" ({_fmt_counts(per)})" if got and unit != "round trip" else ""
        print(
            f"   verdict: {b.label}: a small hit costs {got:g} {unit}{'' if got == 1 else 's'}"
            f"{how}: {met} the target (exactly {want})"
        )


# -- the servers -----------------------------------------------------------------------------


def _s3_client(endpoint_url: str, key: str, secret: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name="us-east-1",
    )


def _empty_bucket(client: Any, bucket: str) -> None:
    """Delete a bucket and what it holds (radosgw keeps its objects in memory)."""
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", ())]
            if keys:
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys})
        client.delete_bucket(Bucket=bucket)
    except Exception as e:  # noqa: BLE001 - the figures are in; say what is left behind
        print(f"   (could not delete bucket {bucket}: {type(e).__name__}: {e})")


def _moto_backends(stack: ExitStack, tmp: Path) -> tuple[list[Backend], Any]:
    moto = stack.enter_context(moto_s3())
    url = f"s3://{moto.new_bucket()}/cache"
    layered = f"s3://{moto.new_bucket()}/cache"
    return [
        Backend("S3 (moto)", _simple(url, **moto.options()), _count_s3, target=(1, "S3 request")),
        Backend(
            "local over S3 (moto)",
            _layered(str(tmp / "layer"), layered, **moto.options()),
            _count_s3,
            target=(0, "S3 request"),
        ),
    ], moto


def _rgw_backends(stack: ExitStack) -> list[Backend]:
    env = stack.enter_context(_service("radosgw", "RGW", "ENDPOINT"))
    options = {
        "endpoint_url": env["FLECHE_TEST_RGW_ENDPOINT"],
        "key": env["FLECHE_TEST_RGW_KEY"],
        "secret": env["FLECHE_TEST_RGW_SECRET"],
    }
    client = _s3_client(**options)
    bucket = f"fleche-bench-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    stack.callback(_empty_bucket, client, bucket)  # before the service stops (LIFO)
    url = f"s3://{bucket}/cache"
    return [Backend("S3 (radosgw)", _simple(url, **options), _count_s3, target=(1, "S3 request"))]


def _ssh_backends(stack: ExitStack, tmp: Path) -> list[Backend]:
    env = stack.enter_context(_service("sshd", "SSH", "HOST"))
    config = env["FLECHE_TEST_SSH_CONFIG"]  # its "fleche-test" alias: host, port, user, key
    sftp = tmp / "sftp"
    sftp.mkdir()
    options = {"ssh_config": config, "host_key_policy": "accept-new"}
    remote = f"fleche+ssh://fleche-test{tmp / 'remote-ssh'}"
    return [
        Backend("SFTP", _simple(f"sftp://fleche-test{sftp}", **options), _count_sftp),
        Backend(
            "remote (fleche+ssh)",
            _simple(remote, ssh_config=config, python=sys.executable),
            _count_remote,
            target=(1, "round trip"),
        ),
    ]


def _memory() -> Callable[[], tuple[Any, list[ObjectStore], Any]]:
    """New handles on one private in-memory store (dropped with the backend, not kept by name)."""
    from fleche.store import MemoryStore, PrivateMemoryFileSystem

    fs = PrivateMemoryFileSystem()

    def open_() -> tuple[Any, list[ObjectStore], Any]:
        return Cache(MemoryStore(fs=fs)), [], None

    return open_


def bench_backends(report):
    """Small hit and miss, 64 MiB store and load, requests per operation, on every backend."""
    rng = np.random.default_rng(64)
    _arrays[:] = [rng.random(BIG_BYTES // 8) for _ in range(BIG_REPEAT)]
    try:
        _bench_backends(report)
    finally:
        _arrays.clear()  # 192 MiB: not for the benchmarks that run next


def _bench_backends(report: Any) -> None:
    skipped: dict[str, str] = {}
    figures: dict[str, Figures] = {}
    copy_up: list[str] = []
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fleche-bench-")))
        backends = [
            Backend("memory", _memory(), network=False),
            Backend(BASELINE, _simple(str(tmp / "local")), network=False),
            Backend(
                "remote (fleche+exec)",
                _simple(f"fleche+exec://{tmp / 'remote-exec'}"),
                _count_remote,
                target=(1, "round trip"),
            ),
        ]
        moto = None
        services = (
            (("S3 (moto)", "local over S3 (moto)"), lambda: _moto_backends(stack, tmp)),
            (("S3 (radosgw)",), lambda: (_rgw_backends(stack), None)),
            (("SFTP", "remote (fleche+ssh)"), lambda: (_ssh_backends(stack, tmp), None)),
        )
        for labels, start in services:
            try:
                more, server = start()
            except Exception as e:  # noqa: BLE001 - no server: its rows are skipped, with why
                why = str(e) if isinstance(e, ServiceUnavailable) else f"{type(e).__name__}: {e}"
                skipped.update(dict.fromkeys(labels, why))
                continue
            backends += more
            moto = server or moto
        for b in backends:
            print(f"   measuring {b.label}...", flush=True)
            try:
                figures[b.label] = _measure(b)
            except Exception as e:  # noqa: BLE001 - a broken backend is reported, the rest go on
                skipped[b.label] = f"{type(e).__name__}: {e}"
        if moto is not None and "local over S3 (moto)" in figures:
            try:
                bucket = moto.new_bucket()
                copy_up = _copy_up(f"s3://{bucket}/cache", moto.options(), str(tmp / "copy-up"))
            except Exception as e:  # noqa: BLE001
                copy_up = [f"   skipped: {type(e).__name__}: {e}"]

    measured = [b for b in backends if b.label in figures]
    f = [figures[b.label] for b in measured]
    _group(
        report,
        "hit, small args f(1, 'a', 2.5), per backend (per-call samples, a cache on new handles)",
        "S3 small hit = 1 request; remote = 1 round trip; warm layered = 0 S3 requests",
        [x.hit for x in f],
    )
    _group(
        report,
        "miss + store, small value: distinct f(i, 'a', 2.5) into a new store, per call",
        "none (shown against local disk)",
        [x.miss for x in f],
    )
    _group(
        report,
        f"64 MiB float64 result: store (a miss returning a ready array; {BIG_REPEAT} arrays)",
        "none (shown against local disk)",
        [x.big_store for x in f],
    )
    _group(
        report,
        f"64 MiB float64 result: load (a hit through a cache on new handles; x{BIG_REPEAT})",
        "none (shown against local disk)",
        [x.big_load for x in f],
    )
    _requests_table(measured, figures)
    if copy_up:
        print(f"\n## layered: local over S3 (moto), {COPY_UP} calls that only S3 has")
        print("   target: the hit that copies up reads S3; the next one costs no S3 request")
        print("\n".join(copy_up))
    print("\n## verdicts")
    _verdicts(measured, figures)
    for label, why in skipped.items():
        print(f"   {label}: skipped: {why}")
