"""What a sync reports: :class:`SyncResult`, :class:`SyncError`, and the names it reports by.

Names are store-relative (``objects/ab/<30 hex>``, ``calls/<function id>/ab/<30 hex>``),
the same on every backend. Import these from :mod:`fleche.sync`, which re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fleche.errors import FlecheError

CallKey = tuple[str, str]  # (function id, call digest)


class SyncError(FlecheError):
    """A sync could not start (no source store, same store twice, unknown function) or had to stop.

    ``result`` holds what was done before it stopped, when it got that far.
    """

    def __init__(self, message: str, result: SyncResult | None = None) -> None:
        super().__init__(message)
        self.result = result


def object_name(oid: str) -> str:
    """Store-relative name of an object: ``objects/ab/<30 hex>``."""
    return f"objects/{oid[:2]}/{oid[2:]}"


def call_name(function_id: str, digest: str) -> str:
    """Store-relative name of a call record: ``calls/<function id>/ab/<30 hex>``."""
    return f"calls/{function_id}/{digest[:2]}/{digest[2:]}"


def pack_name(hash: str) -> str:
    """Store-relative name of a pack (its two files): ``packs/pack-<hash>``."""
    return f"packs/pack-{hash}"


def _human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


@dataclass
class SyncResult:
    """What a sync did (or, with ``dry_run``, would do), by store-relative name."""

    transferred: list[str] = field(default_factory=list)
    """Copied to dst (would be copied, in a dry run): objects first, then records."""
    skipped: list[str] = field(default_factory=list)
    """Already present at dst, so not copied."""
    failed: list[tuple[str, str]] = field(default_factory=list)
    """``(name, reason)``: corrupt or vanished at src, a write that failed, a record whose objects did."""
    deleted: list[str] = field(default_factory=list)
    """Removed from dst because src lacks them (``delete=True``): records first, then objects."""
    bytes_transferred: int = 0
    """Stored bytes written to dst (0 in a dry run: sizes are not fetched)."""
    src: str = ""
    dst: str = ""
    dry_run: bool = False
    listed: dict[str, int] = field(default_factory=dict)
    """Names found by the listings: ``src objects``, ``src calls``, ``dst objects``, ``dst calls``."""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return not self.failed

    def __str__(self) -> str:
        verb = "would copy" if self.dry_run else "copied"
        gone = "would delete" if self.dry_run else "deleted"
        size = "" if self.dry_run else f" ({_human(self.bytes_transferred)})"
        return (
            f"{self.src} -> {self.dst}: {verb} {len(self.transferred)}{size}, "
            f"{len(self.skipped)} already there, {len(self.failed)} failed, "
            f"{gone} {len(self.deleted)}, in {self.seconds:.2f} s"
        )
