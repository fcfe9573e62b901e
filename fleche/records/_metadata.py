"""Metadata stored with each call: when, how long, where, from which commit, with which tags.

A record's ``metadata`` map always has ``created`` (epoch seconds at the start
of the call: ``latest()``, ``fleche ls`` and ``fleche gc`` order by it). The
rest comes in groups, chosen per function (``@fleche(metadata=[...])``) or per
cache (``metadata = [...]`` in fleche.toml); by default all of them:

- ``runtime``: ``duration`` (wall seconds), ``finished`` (epoch seconds),
  ``cpu`` (CPU seconds of the whole process while the call ran, as
  :func:`time.process_time` counts them: threads the function starts, BLAS
  pools included, count; so do unrelated threads running meanwhile);
- ``environment``: ``host``, ``user``, ``pid``, ``cwd``, ``python``,
  ``fleche`` and ``packages`` (the versions of the packages in
  :data:`PACKAGES` that are imported when the call is stored);
- ``git``: ``{"commit", "branch", "dirty"}`` of the repository holding the
  function's module file (the working directory for functions without one,
  as in a notebook);
- ``tags``: the tags active in the calling context (:func:`fleche.tags`,
  :func:`fleche.project`), when there are any.

Cost is what this module is about: everything here runs on the miss path,
after the function returned. What cannot change while a process runs (host,
user, versions) is gathered once per process; git is read once per process
and repository (HEAD and refs straight from ``.git``, one ``git status``
subprocess for ``dirty``), so only the first miss of a process pays it.
A call adds its times, ``os.getcwd()`` and the active tags: ~1 µs.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterable
from contextvars import ContextVar

# Host, user and python come from os and sys (os.uname, the environment, sys.version),
# git from os.path: a first miss imports neither socket, platform, getpass nor pathlib
# (~7 ms), and subprocess only for ``git status``.
from fleche._version import __version__
from fleche.errors import ConfigError

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any

GROUPS: tuple[str, ...] = ("runtime", "environment", "git", "tags")
"""The metadata groups a function or cache can choose from."""

TAGS: ContextVar[dict[str, Any]] = ContextVar("fleche_tags", default={})  # noqa: B039 - never mutated
"""The tags in force in this context: :func:`fleche.tags` sets them, every stored call keeps them."""


def current_tags() -> dict[str, Any]:
    """The tags in force in this context (a dict the caller must not change)."""
    return TAGS.get()


ALL: frozenset[str] = frozenset(GROUPS)

PACKAGES: tuple[str, ...] = (
    "numpy",
    "pandas",
    "scipy",
    "sklearn",
    "torch",
    "jax",
    "tensorflow",
    "xarray",
    "polars",
    "pyarrow",
    "numba",
    "dask",
)
"""Import names whose versions ``environment`` records, when the process has imported them.

Only imported packages are recorded: looking up the version of an installed
but unused package costs milliseconds (``importlib.metadata`` scans
``sys.path``) and says nothing about the call.
"""

GIT_TIMEOUT = 10.0
"""Seconds ``git status`` may take (once per process and repository) before ``dirty`` is None."""

_lock = threading.Lock()
_env: dict[str, Any] = {}
_env_key: tuple[int, int, tuple[str, ...]] | None = None
_versions: dict[str, str | None] = {}
_git_by_module: dict[str, dict[str, Any] | None] = {}
_git_by_dir: dict[str, dict[str, Any] | None] = {}


def groups(spec: bool | Iterable[str] | None, where: str = "metadata") -> frozenset[str] | None:
    """Normalize a ``metadata=`` choice: None (let the cache decide), True (all), False (none), or names.

    Raises ConfigError (a ValueError) naming the unknown groups and the valid ones.
    """
    if spec is None:
        return None
    if spec is True:
        return ALL
    if spec is False:
        return frozenset()
    if isinstance(spec, str):
        spec = [spec]
    chosen = frozenset(spec)
    unknown = sorted(g for g in chosen if g not in ALL)
    if unknown:
        raise ConfigError(
            f"{where}={sorted(chosen)!r}: unknown metadata group(s) {unknown}; "
            f"choose from {list(GROUPS)}, or True (all) / False (created only)"
        )
    return chosen


def set_packages(names: Iterable[str]) -> tuple[str, ...]:
    """Choose which packages' versions ``environment`` records (import names: ``sklearn``, ``torch``).

    Returns the previous choice, so a test or a script can put it back.
    """
    global PACKAGES, _env_key
    chosen = tuple(names)
    if not all(isinstance(n, str) for n in chosen):
        raise TypeError(f"set_packages() takes import names (str), got {chosen!r}")
    with _lock:
        previous, PACKAGES = PACKAGES, chosen
        _env_key = None
    return previous


def _user() -> str:
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):  # getpass.getuser()'s order
        user = os.environ.get(name)
        if user:
            return user
    try:  # then the password database, as getpass reads it (without its termios)
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError, OSError):  # no passwd entry (an arbitrary uid in a container)
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"


def _version(name: str) -> str | None:
    """The version of imported package ``name``: its ``__version__``, else its distribution's."""
    if name in _versions:
        return _versions[name]
    module = sys.modules.get(name)
    v = getattr(module, "__version__", None)
    if not isinstance(v, str):
        try:
            from importlib.metadata import PackageNotFoundError, version

            v = version(name)
        except (PackageNotFoundError, ValueError):
            v = None
    _versions[name] = v
    return v


def _host() -> str:
    """``socket.gethostname()``: the same ``uname`` node name, without importing socket."""
    if hasattr(os, "uname"):
        return os.uname().nodename
    import socket  # Windows

    return socket.gethostname()


def _python_version() -> str:
    """``platform.python_version()`` ("3.12.1", "3.13.0rc1"), read from ``sys.version``."""
    parts = sys.version.split(maxsplit=1)[0].split(".")
    if len(parts) == 2:
        parts.append("0")
    return ".".join(parts)


def environment() -> dict[str, Any]:
    """Host, user, pid, python, fleche and the imported packages' versions.

    Rebuilt only when the process changes (a fork) or has imported more
    modules since: checking costs a ``len(sys.modules)``, not a scan.
    """
    global _env, _env_key
    key = (os.getpid(), len(sys.modules), PACKAGES)
    if key != _env_key:
        with _lock:
            packages = {}
            for name in PACKAGES:
                if name in sys.modules:
                    v = _version(name)
                    if v is not None:
                        packages[name] = v
            env: dict[str, Any] = {
                "host": _host(),
                "user": _user(),
                "pid": key[0],
                "python": _python_version(),
                "fleche": __version__,
            }
            if packages:
                env["packages"] = packages
            _env, _env_key = env, key
    return _env


# -- git ----------------------------------------------------------------------------------


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _git_dir(start: str) -> tuple[str, str] | None:
    """(work tree, git dir) of the repository holding ``start``, or None: ``.git`` walked up to."""
    d = start
    while True:
        dot = os.path.join(d, ".git")
        try:
            if os.path.isdir(dot):
                return d, dot
            if os.path.isfile(dot):  # a worktree or a submodule: "gitdir: <path>"
                text = _read_text(dot).strip()
                if text.startswith("gitdir:"):
                    return d, os.path.join(d, text[len("gitdir:") :].strip())  # (absolute: itself)
        except OSError:
            return None
        parent = os.path.dirname(d)
        if parent == d:
            return None
        d = parent


def _resolve_ref(common: str, ref: str) -> str | None:
    """The commit a ref names, from its loose file or from packed-refs; None when neither has it."""
    try:
        text = _read_text(os.path.join(common, ref)).strip()
    except OSError:
        text = ""
    if text.startswith("ref:"):
        return _resolve_ref(common, text[4:].strip())
    if text:
        return text
    try:
        packed = _read_text(os.path.join(common, "packed-refs"))
    except OSError:
        return None
    for line in packed.splitlines():
        if line and line[0] not in "#^":
            sha, _, name = line.partition(" ")
            if name == ref:
                return sha
    return None


def _git(args: list[str], cwd: str) -> str | None:
    """Run one git command (no optional locks, no fsmonitor hook); its stdout, or None on any failure."""
    import subprocess

    try:
        out = subprocess.run(
            ["git", "--no-optional-locks", "-c", "core.fsmonitor=false", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT,
            check=False,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"},
        )
    except (OSError, subprocess.SubprocessError):  # no git, or it hung
        return None
    return out.stdout if out.returncode == 0 else None


def _read_git(tree: str, gitdir: str) -> dict[str, Any]:
    """Commit, branch and dirty of one work tree: files for the first two, one subprocess for dirty."""
    common = gitdir
    try:
        common = os.path.join(gitdir, _read_text(os.path.join(gitdir, "commondir")).strip())
    except OSError:
        pass
    commit: str | None
    branch: str | None = None
    try:
        head = _read_text(os.path.join(gitdir, "HEAD")).strip()
    except OSError:
        head = ""
    if head.startswith("ref:"):
        ref = head[4:].strip()
        branch = ref.removeprefix("refs/heads/")
        commit = _resolve_ref(common, ref)
        if commit is None and os.path.exists(os.path.join(common, "reftable")):
            out = _git(["rev-parse", "--verify", "-q", "HEAD"], tree)  # refs not kept as files
            commit = out.strip() if out else None
    else:
        commit = head or None  # a detached HEAD holds the commit itself
    status = _git(["status", "--porcelain", "--untracked-files=no"], tree)
    dirty = None if status is None else bool(status.strip())
    return {"commit": commit, "branch": branch, "dirty": dirty}


def git_info(module: str | None) -> dict[str, Any] | None:
    """Git metadata for the repository holding ``module``'s file (cwd without one), or None.

    Computed once per process and repository, then a dict lookup.
    """
    key = module or "__main__"
    try:
        return _git_by_module[key]
    except KeyError:
        pass
    with _lock:
        if key in _git_by_module:
            return _git_by_module[key]
        file = getattr(sys.modules.get(key), "__file__", None)
        try:
            start = os.path.dirname(os.path.realpath(file)) if file else os.getcwd()
        except OSError:  # the working directory was removed
            start = None
        found = _git_dir(start) if start is not None else None
        info = None
        if found is not None:
            tree, gitdir = found
            if tree not in _git_by_dir:
                _git_by_dir[tree] = _read_git(tree, gitdir)
            info = _git_by_dir[tree]
        _git_by_module[key] = info
        return info


def forget_git() -> None:
    """Read git again at the next miss (after a commit in a long-running session, say)."""
    with _lock:
        _git_by_module.clear()
        _git_by_dir.clear()


# -- one call -----------------------------------------------------------------------------


def collect(
    started: float,
    duration: float,
    cpu: float | None = None,
    chosen: frozenset[str] = ALL,
    module: str | None = None,
) -> dict[str, Any]:
    """The metadata of one call that started at ``started`` (epoch s) and ran ``duration`` s.

    ``cpu``: CPU seconds the process spent meanwhile; ``chosen``: the groups to
    record; ``module``: the function's module, whose repository ``git`` describes.
    """
    meta: dict[str, Any] = {"created": started}
    if "runtime" in chosen:
        meta["duration"] = duration
        meta["finished"] = started + duration
        if cpu is not None:
            meta["cpu"] = cpu
    if "environment" in chosen:
        meta.update(environment())
        try:
            meta["cwd"] = os.getcwd()
        except OSError:  # the working directory was removed
            pass
    if "git" in chosen:
        info = git_info(module)
        if info is not None:
            meta["git"] = dict(info)
    if "tags" in chosen:
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
