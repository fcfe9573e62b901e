"""Small misses, round by round: fleche with loose files, fleche with segments, diskcache.

Issue #19 item 4 asks for a miss + store of a small value at ≤ 0.5x diskcache in every
round of a 7-round interleaved run. Each round times ``M`` new calls of ``f(i) = 2 * i``
per library, the order reversed every other round; each library's cache is entered
once for the whole run (as ``bench_scale`` does), through its own context, so that
no round pays for opening or sealing. "segments" is a ``LocalStore`` that appends
records to a segment (the default, docs/format.md "Segments"); "loose" one opened with
``segments=False`` (every record a file, as before). Run: ``python -m benchmarks.bench_misses [M]``.
"""

from __future__ import annotations

import contextvars
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

ROUNDS = 7
M = 2_000


def misses(rounds: int = ROUNDS, m: int = M) -> dict[str, list[float]]:
    """Seconds per miss + store in each round, by library (diskcache when installed)."""
    import fleche
    from fleche.store import LocalStore

    with tempfile.TemporaryDirectory(prefix="fleche-bench-misses-") as tmp:

        @fleche.fleche
        def small_miss(i: int) -> int:
            return 2 * i

        segments = LocalStore(f"{tmp}/segments")
        libs: dict[str, tuple[Callable[[int], int], Any]] = {
            "loose": (small_miss, LocalStore(f"{tmp}/loose", segments=False)),
            "segments": (small_miss, segments),
        }
        try:
            import diskcache
        except ImportError:  # pragma: no cover - the peer is optional
            dc = None
        else:
            dc = diskcache.Cache(f"{tmp}/diskcache")

            @dc.memoize()  # type: ignore[untyped-decorator,unused-ignore]
            def dsmall_miss(i: int) -> int:
                return 2 * i

            libs["diskcache"] = (dsmall_miss, None)
        contexts: dict[str, contextvars.Context] = {}
        for name, (_, store) in libs.items():
            contexts[name] = contextvars.copy_context()
            if store is not None:  # active in that context only, for the whole run
                # fleche.cache() activates when called: call it inside the context too
                contexts[name].run(lambda s=store: fleche.cache(s).__enter__())

        def loop(f: Callable[[int], int], base: int) -> float:
            t = time.perf_counter()
            for i in range(base, base + m):
                f(i)
            return (time.perf_counter() - t) / m

        per: dict[str, list[float]] = {name: [] for name in libs}
        order = list(libs)
        for r in range(rounds):
            for name in order if r % 2 == 0 else order[::-1]:
                per[name].append(contexts[name].run(loop, libs[name][0], (r + 1) * 10_000_000))
        for _, store in libs.values():
            if store is not None:
                store.close()  # seals the segment: after the timed rounds
        if dc is not None:
            dc.close()
        return per


def table(per: dict[str, list[float]]) -> str:
    """Per-round µs and ratios to diskcache, as Markdown."""
    rounds = len(next(iter(per.values())))
    head = "| round | " + " | ".join(str(r + 1) for r in range(rounds)) + " | worst | median |"
    lines = [head, "|---" * (rounds + 3) + "|"]
    for name, v in per.items():
        lines.append(f"| {name} (µs) | " + " | ".join(f"{x * 1e6:.0f}" for x in v) + " | | |")
    base = per.get("diskcache")
    if base is not None:
        for name, v in per.items():
            if name == "diskcache":
                continue
            ratios = [a / b for a, b in zip(v, base, strict=True)]
            cells = " | ".join(f"{x:.2f}" for x in ratios)
            lines.append(
                f"| {name} / diskcache | {cells} | **{max(ratios):.2f}x** | "
                f"{statistics.median(ratios):.2f}x |"
            )
    return "\n".join(lines)


def bench_misses(report: Any) -> None:
    """Miss + store of a small value, 7 interleaved rounds (issue #19: ≤ 0.5x diskcache)."""
    print(table(misses()))


if __name__ == "__main__":
    print(table(misses(m=int(sys.argv[1]) if len(sys.argv) > 1 else M)))
