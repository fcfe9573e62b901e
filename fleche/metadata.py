"""Metadata stored with each call: when, how long, where, by whom, with what.

The parts that cannot change while a process runs (host, user, versions) are
gathered once; a call adds only its times and the active tags.
"""

from __future__ import annotations

import getpass
import os
import platform
import socket
from typing import Any

from fleche._version import __version__
from fleche.config import current_tags

_static: dict[str, Any] | None = None
_static_pid = -1


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, e.g. an arbitrary uid in a container
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


def static() -> dict[str, Any]:
    """Host, user, pid, python and fleche versions (recomputed after a fork)."""
    global _static, _static_pid
    pid = os.getpid()
    if _static is None or _static_pid != pid:
        _static = {
            "host": socket.gethostname(),
            "user": _user(),
            "pid": pid,
            "python": platform.python_version(),
            "fleche": __version__,
        }
        _static_pid = pid
    return _static


def collect(started: float, duration: float) -> dict[str, Any]:
    """The metadata of one call that started at ``started`` (epoch s) and ran ``duration`` s."""
    meta = {"created": started, "duration": duration, **static()}
    tags = current_tags()
    if tags:
        meta["tags"] = dict(tags)
    return meta


def plain(value: Any) -> Any:
    """``value`` if msgpack stores it as is, else its repr (a version may be any object)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        if isinstance(value, int) and not -(1 << 63) <= value < (1 << 63):
            return repr(value)
        return value
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    return repr(value)
