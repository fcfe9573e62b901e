"""Where a call record lives, for tests that damage, count or remove record files.

A local store appends call records to a per-process segment under ``tmp/segments/``
and seals segments into packs (docs/format.md, "Segments"). A test whose point is a
damaged, missing or replaced *record file* uses :func:`loose_record`: it seals every
segment and moves the record out of its pack into a loose file of its own, the exact
bytes a reader finds first, so the test damages what every reader will read.
"""

from __future__ import annotations

import os
from pathlib import Path

from fleche.store import LocalStore


def seal(root: str | os.PathLike[str]) -> None:
    """Seal every segment of the store at ``root`` into packs (as ``fleche gc`` does first)."""
    LocalStore(root).seal_segments()


def loose_record(
    root: str | os.PathLike[str], function_id: str, digest: str, *, missing_ok: bool = False
) -> Path:
    """The path of the record's loose file, made one if the record was in a segment or pack.

    The bytes stay exactly the record's; the packed copy is dropped, so the loose file
    is the only copy (damaging it damages the record). ``missing_ok``: a record stored
    nowhere gives the path it would have (else CacheMiss).
    """
    store = LocalStore(root, segments=False)
    path = Path(store.root) / "calls" / function_id / digest[:2] / digest[2:]
    if os.path.lexists(path):
        return path
    store.seal_segments()
    data = store.find_call(function_id, digest)
    if data is None:
        if missing_ok:
            return path
        store.get_call(function_id, digest)  # raises CacheMiss, naming the record
    else:
        store.drop_packed({(function_id, digest)})
        store.put_call(function_id, digest, bytes(data))
    store.close()
    assert path.is_file(), path
    return path


def loose_records(root: str | os.PathLike[str]) -> list[Path]:
    """Every record of the store at ``root`` as a loose file (see :func:`loose_record`)."""
    store = LocalStore(root, segments=False)
    store.seal_segments()
    keys = list(store.iter_calls())
    return [loose_record(root, fid, d) for fid, d in keys]
