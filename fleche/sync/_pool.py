"""Running a sync's work: a bounded pool that tells per-file failures from fatal errors, and a progress bar.

:func:`_run` keeps a window of items in flight on a thread pool and handles their
results in the calling thread; an error that concerns one file is reported and
the run goes on, one that every file would meet (credentials, a full disk) stops
it. :class:`_Progress` draws counts and bytes on stderr, or nothing.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterable, Iterator

from fleche.errors import (
    CacheMiss,
    ConfigError,
    CorruptObjectError,
    ReadOnlyStoreError,
    StoreFormatError,
)
from fleche.sync._result import _human

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any, TypeVar

if TYPE_CHECKING:  # concurrent.futures (and logging) load with the first sync
    from concurrent.futures import Future, ThreadPoolExecutor

if TYPE_CHECKING:
    T = TypeVar("T")
# Write errors that will not go away by trying the next file: stop the sync.
_FATAL_ERRNO = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


class _Failed(Exception):
    """One item could not be copied; the sync carries on without it."""


def _per_item(exc: Exception) -> str | None:
    """The reason to report for an error that concerns one file only; None if it must stop the sync."""
    if isinstance(exc, (CorruptObjectError, CacheMiss, _Failed)):
        return str(exc)
    if isinstance(exc, (PermissionError, ReadOnlyStoreError, ConfigError, StoreFormatError)):
        return None  # credentials, a read-only or missing destination: every file would fail
    if isinstance(exc, OSError):
        if exc.errno in _FATAL_ERRNO:
            return None
        return f"{type(exc).__name__}: {exc}"
    return None  # anything else is a bug: let it be seen, not swallowed into a report


def _run(
    pool: ThreadPoolExecutor,
    window: int,
    items: Iterable[T],
    work: Callable[[T], Any],
    done: Callable[[T, Any], None],
    failed: Callable[[T, str], None],
) -> None:
    """Run ``work`` over ``items`` with at most ``window`` in flight; results handled here, in order of completion.

    Results are handled by the calling thread only, so the bookkeeping needs
    no lock. On a fatal error the queued items are cancelled and the error is
    raised once the running ones finish, their outcomes recorded (so the
    result of a stopped sync lists every file it did copy); on an interrupt
    the queued items are cancelled at once.
    """
    from concurrent.futures import FIRST_COMPLETED, wait

    it: Iterator[T] = iter(items)
    pending: dict[Future[Any], T] = {}
    fatal: Exception | None = None

    def fill() -> None:
        for item in it:
            pending[pool.submit(work, item)] = item
            if len(pending) >= window:
                return

    try:
        fill()
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                item = pending.pop(fut)
                try:
                    value = fut.result()
                except Exception as e:  # noqa: BLE001 - a fatal one is raised below
                    reason = _per_item(e)
                    if reason is None:
                        fatal = fatal or e
                    else:
                        failed(item, reason)
                else:
                    done(item, value)
            if fatal is None:
                fill()
            else:  # stop queuing; what already runs finishes and is recorded above
                for fut in [f for f in pending if f.cancel()]:
                    del pending[fut]
        if fatal is not None:
            raise fatal
    finally:
        for fut in pending:
            fut.cancel()


class _Progress:
    """A rich progress bar on stderr (counts and bytes), or nothing."""

    def __init__(self, enabled: bool | None) -> None:
        self._bar: Any = None
        self._task: Any = None
        self._bytes = 0
        from fleche.render import progress_wanted  # None: only on a terminal; see there

        if not progress_wanted(enabled):
            return
        from rich.console import Console  # lazily: the import costs ~50 ms
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._bar = Progress(
            TextColumn("{task.description:<16}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[size]:>10}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        )
        self._bar.start()

    def phase(self, description: str, total: int) -> None:
        if self._bar is not None:
            self._bytes = 0
            self._task = self._bar.add_task(description, total=total, size="")

    def advance(self, nbytes: int = 0) -> None:
        if self._bar is not None:
            if nbytes:
                self._bytes += nbytes
                self._bar.update(self._task, advance=1, size=_human(self._bytes))
            else:
                self._bar.update(self._task, advance=1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
