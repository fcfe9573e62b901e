"""What a sync reports: :class:`SyncResult`, :class:`SyncError`, and the names it reports by.

Names are store-relative (``objects/ab/<30 hex>``, ``calls/<function id>/ab/<30 hex>``),
the same on every backend. Import these from :mod:`fleche.sync`, which re-exports them.
"""

from __future__ import annotations

from fleche.errors import FlecheError

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any

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


class SyncResult:
    """What a sync did (or, with ``dry_run``, would do), by store-relative name.

    Compared by value and printed field by field, as the dataclass it was; a plain
    class with ``__slots__`` because ``import fleche`` would compile a dataclass's methods.
    """

    __slots__ = (
        "bytes_transferred",
        "deleted",
        "dry_run",
        "dst",
        "failed",
        "listed",
        "seconds",
        "skipped",
        "src",
        "transferred",
    )
    __match_args__ = (
        "transferred",
        "skipped",
        "failed",
        "deleted",
        "bytes_transferred",
        "src",
        "dst",
        "dry_run",
        "listed",
        "seconds",
    )
    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    transferred: list[str]
    """Copied to dst (would be copied, in a dry run): objects first, then records."""
    skipped: list[str]
    """Already present at dst, so not copied."""
    failed: list[tuple[str, str]]
    """``(name, reason)``: corrupt or vanished at src, a write that failed, a record whose objects did."""
    deleted: list[str]
    """Removed from dst because src lacks them (``delete=True``): records first, then objects."""
    bytes_transferred: int
    """Stored bytes written to dst (0 in a dry run: sizes are not fetched)."""
    src: str
    dst: str
    dry_run: bool
    listed: dict[str, int]
    """Names found by the listings: ``src objects``, ``src calls``, ``dst objects``, ``dst calls``."""
    seconds: float

    def __init__(
        self,
        transferred: list[str] | None = None,
        skipped: list[str] | None = None,
        failed: list[tuple[str, str]] | None = None,
        deleted: list[str] | None = None,
        bytes_transferred: int = 0,
        src: str = "",
        dst: str = "",
        dry_run: bool = False,
        listed: dict[str, int] | None = None,
        seconds: float = 0.0,
    ) -> None:
        self.transferred = [] if transferred is None else transferred
        self.skipped = [] if skipped is None else skipped
        self.failed = [] if failed is None else failed
        self.deleted = [] if deleted is None else deleted
        self.bytes_transferred = bytes_transferred
        self.src = src
        self.dst = dst
        self.dry_run = dry_run
        self.listed = {} if listed is None else listed
        self.seconds = seconds

    def _fields(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__match_args__)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, SyncResult)
        return self._fields() == other._fields()

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__match_args__)
        return f"{type(self).__qualname__}({fields})"

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
