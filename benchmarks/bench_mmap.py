"""What checking a mapped file costs: ``mmap=True`` (hash checked) against ``mmap="unverified"``.

A float64 array of 100 MB and of 1 GiB (random: stored raw, so mappable) is stored
in a local store, then loaded 7 times each way, interleaved, in this one process:
``mmap="unverified"`` (header, length and name checked, the bytes not read),
``mmap=True`` (the XXH3-128 of the whole file checked: one read at memory speed) and
a plain load (a copy) for scale. The file stays in the page cache throughout.
Issue 16 chose the check as the default; docs/values.md gives the figures.
"""

from __future__ import annotations

import gc
import tempfile
import time

import numpy as np

from benchmarks.harness import Report, Timing

SIZES = {"100 MB": 100 * 10**6, "1 GiB": 1 << 30}
LOADS = 7
MODES = {"mmap unverified": "unverified", "mmap (hash checked)": True, "plain load": False}


def bench_mmap_check(report: Report) -> None:
    """Load time of a raw array by mmap mode, per size (best of 7, interleaved)."""
    from fleche import Cache, codec

    for title, nbytes in SIZES.items():
        with tempfile.TemporaryDirectory(prefix="fleche-bench-mmap-") as d:
            c = Cache(f"{d}/store", index=False)
            ref = c.put_value(np.random.default_rng(0).random(nbytes // 8))
            gc.collect()
            with open(str(c.store.local_path(ref["oid"])), "rb") as f:
                if codec.read_header(f.read(codec.HEADER_SIZE))[0] != codec.CODEC_RAW:
                    print(f"   {title}: stored compressed, so not mapped; skipped")
                    continue
            samples: dict[str, list[float]] = {name: [] for name in MODES}
            for _ in range(LOADS):
                for name, mode in MODES.items():
                    t0 = time.perf_counter()
                    value = c.load_value(ref, mmap=mode)
                    samples[name].append(time.perf_counter() - t0)
                    del value
                    gc.collect()
            timings = [Timing(name, s) for name, s in samples.items()]
            added = min(samples["mmap (hash checked)"]) - min(samples["mmap unverified"])
            print(
                f"   {title}: the check adds {added * 1e3:.1f} ms ({nbytes / added / 1e9:.1f} GB/s)"
            )
            report.add(
                f"load a {title} float64 array stored raw, by mmap mode ({LOADS} loads each)",
                timings,
                baseline="plain load",
                target="unverified <= 1 ms; the check runs at memory speed",
            )
