"""A helper process that seals this process's full segments, off the writer's GIL.

Sealing a 4 MiB segment (parse its frames, build the pack and its index, fold the
smallest live packs into it) is pure Python for each record: 0.1-2 s of a thread that
holds the GIL, which the misses of the writing process then wait for. So a writing
process starts one helper, ``python -S -c ... serve()``, at its first full segment and
sends it each retired segment's path; the helper (at nice 10, so that on a busy machine
the writer's misses run first) seals it exactly as ``fleche gc`` seals
another process's segment (``LocalStore.seal_file``) and answers. The writer's seal
thread only waits on a pipe (without the GIL).

Crash safety is the segment's: it stays in ``tmp/segments/``, where readers find its
records, until its pack is published. When the helper cannot start or dies (killed,
out of memory), the seal thread seals the segment itself, as it did before there was a
helper; a dead helper is started again at the next seal. The helper exits when its
pipe closes (the writer exits) and at once when the writer is gone (SIGKILL): like the
seal thread it replaces, it never outlives its writer. A forked child starts its own.

Protocol, one request at a time: ``<len root> <len path>\\n`` then the two UTF-8 paths
(``os.fsencode``); the answer is one line, ``ok`` or ``error <message>``.
"""

from __future__ import annotations

import os
import sys
import threading

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    import subprocess
    from collections.abc import Callable
    from typing import BinaryIO

_lock = threading.Lock()  # one request on the pipe at a time
_helper: list[subprocess.Popen[bytes]] = []  # this process's helper, once started
_pid: list[int] = []  # the process that started it (a forked child starts its own)
_broken: list[bool] = []  # [True]: the helper cannot start here; threads seal themselves
_served: list[bool] = []  # [True]: a helper of this process answered once (it can work here)


def _after_fork() -> None:
    """In a forked child: a lock of its own, and the parent's helper pipe no longer held
    (pointed at /dev/null, so its file objects close harmlessly), or the helper would not
    see its writer close it; the child starts its own helper."""
    global _lock
    _lock = threading.Lock()
    if _helper:
        null = os.open(os.devnull, os.O_RDWR)
        try:
            for f in (_helper[0].stdin, _helper[0].stdout):
                if f is not None:
                    os.dup2(null, f.fileno())
        finally:
            os.close(null)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def _start(main: str) -> subprocess.Popen[bytes] | None:
    import subprocess

    if getattr(sys, "frozen", False) or not sys.executable:
        return None  # a frozen app's executable is the app, not a Python
    module, _, function = main.partition(":")
    code = (
        f"import sys; sys.path[:0] = sys.argv[2:]; "
        f"from {module} import {function}; {function}(int(sys.argv[1]))"
    )
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = [here, *(p for p in sys.path if isinstance(p, str) and p)]
    return subprocess.Popen(
        [sys.executable, "-S", "-c", code, str(os.getpid()), *path],  # -S: our sys.path
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        close_fds=True,
    )


def seal_in_helper(root: str, path: str, main: str) -> bool:
    """Have the helper seal segment ``path`` of the local store at ``root``; True when it
    answered that it did (or found nothing to seal), False when it could not (then the
    caller seals it: the segment is still there, or sealed with its records in a pack).

    ``main``: ``"module:function"`` that the helper runs at its start, with the writer's
    pid: it calls :func:`serve` with what seals a segment (the store's module, which
    imports this one, not the other way round)."""
    with _lock:
        if _broken or os.environ.get("FLECHE_SEAL_HELPER", "1") == "0":
            return False
        proc = _helper[0] if _helper and _pid == [os.getpid()] else None
        if proc is None or proc.poll() is not None:
            try:
                proc = _start(main)
            except OSError:
                proc = None
            if proc is None:
                _broken.append(True)
                return False
            _helper[:] = [proc]
            _pid[:] = [os.getpid()]
        assert proc.stdin is not None and proc.stdout is not None
        a, b = os.fsencode(root), os.fsencode(path)
        try:
            proc.stdin.write(b"%d %d\n%s%s" % (len(a), len(b), a, b))
            proc.stdin.flush()
            answer = proc.stdout.readline()
        except OSError:  # the helper died: a broken pipe
            answer = b""
        if answer.startswith(b"ok"):
            _served[:] = [True]
            return True
        if not answer:  # died: started again next time, if one ever worked here
            _stop(proc)
            if not _served:  # ``sys.executable`` is not a Python that runs us (embedded)
                _broken.append(True)
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    import subprocess

    try:
        if proc.stdin is not None:
            proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(timeout=10)  # it exits at the end of its pipe
    except subprocess.TimeoutExpired:
        pass  # it ends when we do (it watches for that)
    if proc.stdout is not None:
        proc.stdout.close()


def stop_helper() -> None:
    """Close the helper's pipe and wait for it to exit (at exit: it has nothing to do)."""
    with _lock:
        if _helper and _pid == [os.getpid()]:
            _stop(_helper[0])
        _helper.clear()


def _orphaned(parent: int) -> None:
    """End the helper as soon as its writer is gone (killed: its segment stays for gc, as
    a seal thread's would), even in the middle of a seal: packs are published with a
    rename, and the segment is removed only after its pack is."""
    import time

    while os.getppid() == parent:
        time.sleep(0.05)
    os._exit(1)


def serve(
    parent: int,
    seal: Callable[[str, str], None],
    stdin: BinaryIO | None = None,
    stdout: BinaryIO | None = None,
) -> None:
    """The helper's loop: ``seal(root, path)`` each segment asked for until the pipe
    closes or the writer (``parent``) is gone."""
    threading.Thread(target=_orphaned, args=(parent,), daemon=True).start()
    if hasattr(os, "nice"):  # a busy machine gives the writer's misses the CPU first
        os.nice(10)
    inp = stdin if stdin is not None else sys.stdin.buffer
    out = stdout if stdout is not None else sys.stdout.buffer
    while True:
        line = inp.readline()
        if not line:
            return
        n, m = (int(x) for x in line.split())
        raw = inp.read(n + m)
        root, path = os.fsdecode(raw[:n]), os.fsdecode(raw[n:])
        try:
            seal(root, path)
        except Exception as e:  # noqa: BLE001 - the writer's thread seals it instead
            answer = f"error {e!r}".replace("\n", " ").encode() + b"\n"
        else:
            answer = b"ok\n"
        out.write(answer)
        out.flush()
