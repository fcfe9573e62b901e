"""``fleche sign``: sign a store's objects and records with the current key.

Turning signing on (``FLECHE_SECRET_KEY``) for a store that ran without it
makes every file in it a miss for signed readers: they quarantine and
recompute it all. Rotating keys leaves files signed with the old key, which
readers trust only while that key stays in the list. ``sign`` brings such a
store up to date in place: each object and record that checks out (its hash,
its name, a signature by one of the keys if it has one) is rewritten with a
signature by the signing key — the first key. Nothing else changes: not the
payload bytes, not the names (an object's name is the hash of its content).

What does not check out is left as it is and reported: a damaged file
(``fleche verify --repair`` moves it aside), one signed with a key not
given, one whose signature fails, a record stored under another call's
name. Signing those would make a forgery trusted.

Records are rewritten last-writer-wins: a record a busy writer replaces
while ``sign`` runs may be signed over with the one ``sign`` read (its
object stays; the call is then served from the older result). Sign a store
while nothing writes to it, or sign again afterwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from fleche import codec
from fleche.codec import Signer, resign
from fleche.errors import CacheMiss, CorruptObjectError, ReadOnlyStoreError
from fleche.store import ObjectStore
from fleche.upkeep._lookup import WORKERS, Progress
from fleche.upkeep._scan import Entry, Inventory, scan
from fleche.upkeep._verify import Finding


@dataclass
class SignReport:
    """What :func:`sign` did: files looked at, signed, already signed, and refused."""

    url: str
    key_id: str
    dry_run: bool
    objects: int = 0
    records: int = 0
    signed_objects: int = 0
    signed_records: int = 0
    refused: list[Finding] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def signed(self) -> int:
        return self.signed_objects + self.signed_records

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _each(
    items: list[Any],
    work: Callable[[Any], tuple[str, bool | str] | None],
    workers: int,
    progress: Progress | None,
    phase: str,
) -> Iterable[tuple[str, bool | str]]:
    """``work`` on every item on a pool, in order: (name, signed? or why refused); None: gone."""
    with ThreadPoolExecutor(workers) as pool:
        for i, got in enumerate(pool.map(work, items), 1):
            if progress is not None and (i % 64 == 0 or i == len(items)):
                progress(phase, i, len(items))
            if got is not None:
                yield got


def sign(
    store: ObjectStore,
    signer: Signer,
    *,
    dry_run: bool = False,
    workers: int = WORKERS,
    progress: Progress | None = None,
    inventory: Inventory | None = None,
) -> SignReport:
    """Sign every object and record of ``store`` that checks out with ``signer``'s signing key.

    ``dry_run`` reads and checks everything and writes nothing: the report
    says what a real run would sign and refuse.
    """
    if store.read_only and not dry_run:
        raise ReadOnlyStoreError(f"cannot sign {store.url}: the store is read-only")
    started = time.perf_counter()
    inv = inventory or scan(store)
    inv.refuse_links("fleche sign")  # its rewrites would land wherever a link leads
    report = SignReport(store.url, signer.key_id, dry_run)

    def one_object(e: Entry) -> tuple[str, bool | str] | None:
        try:
            blob = store.get(e.name)
            signed = resign(blob, signer, "the file", expect=e.name)
            if signed is not None and not dry_run:
                store.replace(e.name, signed)
        except CacheMiss:
            return None  # deleted while we looked (a concurrent gc)
        except CorruptObjectError as err:
            return e.name, str(err)
        return e.name, signed is not None

    def one_record(item: tuple[str, Entry]) -> tuple[str, bool | str] | None:
        fid, e = item
        name = f"{fid}/{e.name}"
        try:
            blob = store.get_call(fid, e.name)
            rec = codec.decode_record(blob, "the file")
            if rec.get("digest") != e.name or rec.get("function") != fid:
                return name, "the record inside is another call's: a signature would vouch for it"
            signed = resign(blob, signer, "the file", record=True, name=name.encode())
            if signed is not None and not dry_run:
                store.put_call(fid, e.name, signed)
        except CacheMiss:
            return None
        except CorruptObjectError as err:
            return name, str(err)
        return name, signed is not None

    for oid, got in _each(inv.objects, one_object, workers, progress, "objects"):
        report.objects += 1
        if isinstance(got, str):
            report.refused.append(Finding("object", oid, got))
        else:
            report.signed_objects += got
    calls = list(inv.iter_calls())
    for name, got in _each(calls, one_record, workers, progress, "records"):
        report.records += 1
        if isinstance(got, str):
            report.refused.append(Finding("record", name, got))
        else:
            report.signed_records += got
    report.seconds = time.perf_counter() - started
    return report
