"""Timing and reporting shared by every ``bench_*.py`` module.

A benchmark module defines functions named ``bench_<something>(report)``; each times
its subject and its peers with :func:`measure` and hands the results to
``report.add``.  Ratios are taken against a named baseline *from the same run*,
because this machine is noisy and figures from different runs do not compare.
"""

from __future__ import annotations

import gc
import json
import logging
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field


@dataclass
class Timing:
    """Seconds per operation over ``n`` repetitions."""

    name: str
    samples: list[float]
    note: str = ""

    @property
    def p50(self) -> float:
        return statistics.median(self.samples)

    @property
    def p99(self) -> float:
        s = sorted(self.samples)
        return s[min(len(s) - 1, round(0.99 * (len(s) - 1)))]

    @property
    def best(self) -> float:
        return min(self.samples)


def measure(
    name: str,
    fn: Callable[[], object],
    *,
    repeat: int = 7,
    number: int | None = None,
    min_time: float = 0.2,
    setup: Callable[[], object] | None = None,
    note: str = "",
) -> Timing:
    """Time ``fn``: ``repeat`` samples, each the mean of ``number`` calls.

    With ``number=None`` the count is calibrated so one sample takes about
    ``min_time / repeat`` seconds; use ``number=1`` for per-call samples (p99).
    ``setup`` runs before every sample, outside the timing.
    """
    if number is None:
        number = 1
        while True:
            if setup:
                setup()
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            dt = time.perf_counter() - t0
            if dt >= min_time / repeat or number >= 1 << 20:
                break
            number *= 4 if dt < min_time / repeat / 8 else 2
    samples = []
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeat):
            if setup:
                setup()
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            samples.append((time.perf_counter() - t0) / number)
    finally:
        if gc_was:
            gc.enable()
    return Timing(name, samples, note)


def fmt_seconds(s: float) -> str:
    if s < 1e-6:
        return f"{s * 1e9:.0f} ns"
    if s < 1e-3:
        return f"{s * 1e6:.2f} µs"
    if s < 1:
        return f"{s * 1e3:.2f} ms"
    return f"{s:.2f} s"


@dataclass
class Group:
    title: str
    baseline: str | None
    timings: list[Timing] = field(default_factory=list)
    target: str = ""


class Report:
    """Collects groups of timings and prints them with ratios to each group's baseline."""

    def __init__(self) -> None:
        self.groups: list[Group] = []

    def add(
        self, title: str, timings: list[Timing], *, baseline: str | None = None, target: str = ""
    ) -> None:
        """Add a group; ``baseline`` names the timing the ratios divide by."""
        self.groups.append(Group(title, baseline, list(timings), target))
        self._print(self.groups[-1])

    def _print(self, g: Group) -> None:
        base = next((t for t in g.timings if t.name == g.baseline), None)
        print(f"\n## {g.title}")
        if g.target:
            print(f"   target: {g.target}")
        width = max(len(t.name) for t in g.timings)
        for t in g.timings:
            ratio = f"{t.p50 / base.p50:7.2f}x" if base else ""
            note = f"  ({t.note})" if t.note else ""
            print(
                f"   {t.name:<{width}}  p50 {fmt_seconds(t.p50):>10}  "
                f"p99 {fmt_seconds(t.p99):>10}  {ratio}{note}"
            )
        if base:
            print(f"   ratios are p50 / p50 of {base.name!r}, measured in this run")

    def to_json(self) -> str:
        return json.dumps(
            [
                {
                    "title": g.title,
                    "baseline": g.baseline,
                    "target": g.target,
                    "timings": [asdict(t) | {"p50": t.p50, "p99": t.p99} for t in g.timings],
                }
                for g in self.groups
            ],
            indent=2,
        )


# -- servers on loopback, and counting the requests sent to them ------------------------------


@dataclass
class MotoS3:
    """moto's S3 server in this process on 127.0.0.1 (see :func:`moto_s3`)."""

    endpoint: str
    server: object

    def options(self) -> dict[str, str]:
        """Storage options for ``open_store("s3://...")``: endpoint and dummy credentials."""
        return {"endpoint_url": self.endpoint, "key": "fleche-bench", "secret": "fleche-bench"}

    def new_bucket(self, prefix: str = "fleche-bench") -> str:
        """Create a bucket no other measurement uses; its name."""
        import uuid

        import boto3

        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="fleche-bench",
            aws_secret_access_key="fleche-bench",
            region_name="us-east-1",
        )
        client.create_bucket(Bucket=name)
        return name


class ServiceUnavailable(Exception):
    """A server a benchmark needs could not start; the message says why (the rows are skipped)."""


@contextmanager
def moto_s3() -> Iterator[MotoS3]:
    """moto's standalone S3 server (``moto.server.ThreadedMotoServer``) on an ephemeral port.

    Like ``tests/s3_server.py``: a real HTTP server with S3 semantics, in this process.
    Raises :class:`ServiceUnavailable` when moto is not installed; stopped on exit.
    """
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as e:
        raise ServiceUnavailable(f"moto[server] is not installed ({e})") from e
    werkzeug = logging.getLogger("werkzeug")  # one log line per request otherwise
    werkzeug.setLevel(logging.WARNING)
    if not werkzeug.handlers:
        werkzeug.addHandler(logging.NullHandler())
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield MotoS3(f"http://{host}:{port}", server)
    finally:
        server.stop()


@contextmanager
def count_s3_requests(fs: object) -> Iterator[list[tuple[str, str]]]:
    """Record ``(method, url)`` of every HTTP request an ``s3fs.S3FileSystem`` sends.

    botocore's ``before-send`` event, as ``tests/s3_server.py:count_requests`` does:
    retries and every page of a listing are each one request.
    """
    seen: list[tuple[str, str]] = []

    def record(request: object, **_: object) -> None:
        seen.append((request.method, request.url))  # type: ignore[attr-defined]

    events = fs.s3.meta.events  # type: ignore[attr-defined]
    events.register("before-send.s3", record)
    try:
        yield seen
    finally:
        events.unregister("before-send.s3", record)


def s3_kind(method: str, url: str) -> str:
    """A request as S3 names it: ``LIST`` for a ListObjectsV2 page, else the HTTP method."""
    return "LIST" if method == "GET" and "list-type=2" in url else method
