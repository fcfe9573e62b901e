"""``fleche import``: the calls of an original (0.22) cache, stored in one of ours.

Each old call is read (:mod:`fleche.migrate._original`), its function named as our
decorator names it, its arguments bound and keyed as our decorator keys them, and
its result written through the decorator's own write path (value object first,
then the record). A call already in the target is skipped, so a second run, or one
resumed after an interruption, writes only what is missing and ends with the same
store. Nothing is ever written to the old cache.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fleche.config import AnyCache
from fleche.decorator import CachedFunction, NamedFunction, call_key, find_cached, replay
from fleche.errors import FlecheError, SerializationError, UnhashableArgumentError
from fleche.migrate._original import OldCall, OriginalCache, Unreadable

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Skipped:
    """One old call not brought over, and why."""

    key: str
    function: str
    reason: str


@dataclass
class ImportReport:
    """What an import did (or, with ``dry_run``, would do)."""

    source: str
    target: str
    dry_run: bool
    calls: int = 0  # calls in the old cache
    imported: int = 0  # written (dry run: would be written)
    present: int = 0  # already in the target: left as they are
    by_import: int = 0  # keyed by the @fleche function imported from its module
    skipped: list[Skipped] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "target": self.target,
            "dry_run": self.dry_run,
            "calls": self.calls,
            "imported": self.imported,
            "present": self.present,
            "keyed_by_imported_function": self.by_import,
            "skipped": [s.__dict__ for s in self.skipped],
        }


class _Skip(Exception):
    """This call is not brought over; the message says why."""


def _dist_version(module: str) -> str | None:
    """The installed version of the distribution holding ``module`` (without importing it)."""
    from importlib import metadata

    top = module.partition(".")[0]
    try:
        dists = metadata.packages_distributions().get(top) or []
        return metadata.version(dists[0]) if dists else None
    except Exception:  # noqa: BLE001 - broken metadata: not a version to compare with
        return None


def _our_version(call: OldCall, versions: dict[str, str | None]) -> Any:
    """The version our ``@fleche`` gives the call's function, as far as the record tells.

    0.22 recorded ``version=`` when given, and else the version of the package the
    function lives in (its ``VersionInfo``), which ours never uses: that one maps to
    our default, None.
    """
    v = call.version
    if isinstance(v, str) and call.module:
        if call.module not in versions:
            versions[call.module] = _dist_version(call.module)
        if versions[call.module] == v:
            return None
    return v


def metadata_of(call: OldCall, source: str) -> dict[str, Any]:
    """Our metadata for an old call: its times, host and tags as 0.22 kept them."""
    meta: dict[str, Any] = {}
    old = dict(call.metadata)
    runtime = old.pop("runtime", {}) or {}
    start = runtime.get("timestart")
    if isinstance(start, (int, float)):
        meta["created"] = float(start)
        wall = runtime.get("walltime")
        stop = runtime.get("timestop")
        if isinstance(wall, (int, float)):
            meta["duration"] = float(wall)
        elif isinstance(stop, (int, float)):
            meta["duration"] = float(stop) - float(start)
        if "duration" in meta:
            meta["finished"] = meta["created"] + meta["duration"]
        cpu = [runtime.get(k) for k in ("cputime", "systime")]
        if any(isinstance(c, (int, float)) for c in cpu):
            meta["cpu"] = float(sum(c for c in cpu if isinstance(c, (int, float))))
    else:
        meta["created"] = 0.0  # 0.22 recorded no time: the epoch, not the time of the import
    env = old.pop("environment", {}) or {}
    if env.get("hostname"):
        meta["host"] = env["hostname"]
    if env.get("username"):
        meta["user"] = env["username"]
    tags = old.pop("tags", None)
    if isinstance(tags, dict) and tags:
        meta["tags"] = dict(tags)
    if old:  # git, project and user-defined groups: kept as they were
        meta["original"] = old
    meta["imported_from"] = source
    return meta


def _resolve(
    call: OldCall,
    allow_import: bool,
    found: dict[tuple[str, str], CachedFunction | None],
    named: dict[tuple[Any, ...], NamedFunction],
    versions: dict[str, str | None],
) -> NamedFunction | CachedFunction:
    """The function a call is keyed as: imported when allowed and found, else by name."""
    if allow_import and call.module and "<locals>" not in call.name:
        where = (call.module, call.name)
        if where not in found:
            try:
                found[where] = find_cached(*where)
            except Exception:  # noqa: BLE001 - any failure to import: keyed by name instead
                found[where] = None
        cf = found[where]
        if cf is not None:
            return cf
    if call.name.rpartition(".")[2] == "<lambda>":
        raise _Skip("a lambda: ours keys lambdas by their code, which the old record lacks")
    if call.code_digest:
        raise _Skip(
            "keyed by its code (hash_code=True): rerun with --allow-import and the "
            "function importable, so that ours digests its code"
        )
    version = _our_version(call, versions)
    nk = (call.module, call.name, repr(version))
    fn = named.get(nk)
    if fn is None:
        fn = named[nk] = NamedFunction(call.module, call.name, version)
    return fn


def _bring(
    old: OriginalCache,
    cache: AnyCache,
    call: OldCall,
    fn: NamedFunction | CachedFunction,
    report: ImportReport,
    dry_run: bool,
) -> None:
    if call.result is None:
        raise _Skip("no result (0.22 never finished this call)")
    items = []
    for name, d in call.arguments:
        try:
            items.append((name, old.values.load(d)))
        except Unreadable as e:
            raise _Skip(f"argument {name}: {e}") from None
    if isinstance(fn, CachedFunction):  # ours binds in its signature's order
        order = {n: i for i, n in enumerate(fn.binder.names)}
        items.sort(key=lambda item: order.get(item[0], len(order)))
    try:
        key = call_key(fn, items)
    except UnhashableArgumentError as e:
        raise _Skip(f"an argument our digest refuses ({e})") from None
    # a call already there (a second run, a resumed one) is not read any further
    if cache.has_record(fn.function_id, key):
        report.present += 1
        return
    try:
        result = old.values.load(call.result)
    except Unreadable as e:
        raise _Skip(f"result: {e}") from None
    if dry_run:
        report.imported += 1
        return
    try:
        _, _, written = replay(fn, cache, items, result, metadata_of(call, report.source))
    except SerializationError as e:
        raise _Skip(f"result our codecs cannot store ({e})") from None
    if written:
        report.imported += 1
    else:  # stored meanwhile by another process
        report.present += 1


def import_original(
    old: OriginalCache,
    cache: AnyCache,
    *,
    target: str,
    dry_run: bool = False,
    allow_import: bool = False,
    progress: Progress | None = None,
) -> ImportReport:
    """Bring every call of ``old`` into ``cache``; what could not come is in the report.

    ``allow_import``: import each function's module (running its code) and key its
    calls with the ``@fleche`` function found there, whatever its options; without
    it (or when not found) a function is keyed by the module, name and version the
    old record gives. ``dry_run``: count, write nothing. Raises only for faults of
    the whole import (the target cannot be written, the old call store cannot be
    listed); a call that cannot come over is reported and the import goes on.
    """
    if not dry_run and cache.read_only:
        raise FlecheError(f"{target} is read-only: give a writable cache with --to")
    report = ImportReport(source=old.where, target=target, dry_run=dry_run)
    keys = list(old.iter_keys())
    report.calls = len(keys)
    found: dict[tuple[str, str], CachedFunction | None] = {}
    named: dict[tuple[Any, ...], NamedFunction] = {}
    versions: dict[str, str | None] = {}
    for i, key in enumerate(keys, 1):
        function = "?"
        try:
            try:
                call = old.calls.read(key)
            except Unreadable as e:
                raise _Skip(f"call record unreadable: {e}") from None
            function = f"{call.module}.{call.name}" if call.module else call.name
            fn = _resolve(call, allow_import, found, named, versions)
            if isinstance(fn, CachedFunction):
                report.by_import += 1
            _bring(old, cache, call, fn, report, dry_run)
        except _Skip as e:
            report.skipped.append(Skipped(key, function, str(e)))
        if progress is not None:
            progress("import", i, len(keys))
    return report
