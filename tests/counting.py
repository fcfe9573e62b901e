"""A thread-safe counter of computations for tests whose cached closures count their runs."""

from __future__ import annotations

import threading


class Counter:
    """Call it once per computation; ``n`` is how many ran.

    Closures capture it, and it is not part of what they compute: its digest is fixed
    (a lock has none), or a closure over it would run uncached.
    """

    def __init__(self) -> None:
        self.n = 0
        self.lock = threading.Lock()

    def __call__(self) -> None:
        with self.lock:
            self.n += 1

    def __fleche_digest__(self) -> str:
        return "a counter"
