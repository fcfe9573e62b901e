"""Digest speed: the key of small arguments, and a 100 MB array argument.

Peers: ``joblib.hash`` (what joblib.Memory keys calls with) and raw XXH3-128 over
the same buffer, the floor for any content digest.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import xxhash

from benchmarks.harness import measure
from fleche.digest import digest_bytes

try:
    import joblib
except ImportError:  # a peer, not a dependency: report without it
    joblib = None


SMALL = (1, "a", 2.5)
KWARGS = {
    "n": 10,
    "alpha": 0.1,
    "name": "experiment-7",
    "flags": (True, None),
    "start": dt.date(2024, 1, 31),
}


def bench_digest_small_args(report):
    timings = [measure("fleche digest_bytes((1, 'a', 2.5))", lambda: digest_bytes(SMALL))]
    if joblib is not None:
        timings.append(measure("joblib.hash((1, 'a', 2.5))", lambda: joblib.hash(SMALL)))
    report.add(
        "digest of a small argument tuple",
        timings,
        baseline="joblib.hash((1, 'a', 2.5))" if joblib else None,
        target="<= 3 µs",
    )
    timings = [measure("fleche digest_bytes(5 mixed kwargs)", lambda: digest_bytes(KWARGS))]
    if joblib is not None:
        timings.append(measure("joblib.hash(5 mixed kwargs)", lambda: joblib.hash(KWARGS)))
    report.add(
        "digest of a dict of 5 mixed arguments",
        timings,
        baseline="joblib.hash(5 mixed kwargs)" if joblib else None,
    )


def bench_digest_100mb_array(report):
    arr = np.random.default_rng(0).random(100 * 1024 * 1024 // 8)  # float64, C-contiguous
    timings = [
        measure("raw xxh3_128(arr.data)", lambda: xxhash.xxh3_128(arr.data).digest(), repeat=9),
        measure("fleche digest_bytes(arr)", lambda: digest_bytes(arr), repeat=9),
    ]
    if joblib is not None:
        timings.append(measure("joblib.hash(arr)", lambda: joblib.hash(arr), repeat=3, number=1))
    strided = arr[::2]
    timings.append(
        measure(
            "fleche digest_bytes(arr[::2])",
            lambda: digest_bytes(strided),
            repeat=5,
            note="50 MB, strided: copied block by block",
        )
    )
    report.add(
        "digest of a 100 MB float64 array",
        timings,
        baseline="raw xxh3_128(arr.data)",
        target="<= 1.2x raw XXH3 on the same buffer",
    )
