"""``@fleche``: a function whose results are kept in the active cache.

The decorator layer, above config and query: it keys a call (its identity and
arguments through :mod:`fleche.digest`), asks the active cache (:mod:`fleche.config`)
for the record, and on a miss computes, stores and returns. ``parallel``, ``upkeep``
and the CLI sit above it.

Inside: ``_fleche`` (the decorator and :class:`CachedFunction`), ``_identity`` (who a
function is), ``_results`` (reading and writing its calls, failing open) and
``_compute`` (computing a miss once per process), ``_markers`` (``Ignored[T]``,
``Required[T]`` annotations), ``_replay`` (storing a call computed elsewhere, under
the key the decorator gives it: ``fleche import``).
"""

from __future__ import annotations

from fleche.decorator._fleche import REFRESHING, BoundCall, CachedFunction, fleche, set_binder
from fleche.decorator._identity import ClosureRefused, function_id
from fleche.decorator._results import Undecodable

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from fleche.decorator._markers import Ignored, Required
    from fleche.decorator._replay import NamedFunction, call_key, find_cached, replay
else:
    # replaying stored calls (fleche import): loaded when first named, a hit never replays
    _REPLAY = frozenset(("NamedFunction", "call_key", "find_cached", "replay"))

    def __getattr__(name):
        # Ignored/Required are typing.Annotated aliases: typing loads when one is first named.
        if name in ("Ignored", "Required"):
            from fleche.decorator import _markers

            return getattr(_markers, name)
        if name in _REPLAY:
            from fleche.decorator import _replay

            return getattr(_replay, name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "REFRESHING",
    "BoundCall",
    "CachedFunction",
    "ClosureRefused",
    "Ignored",
    "NamedFunction",
    "Required",
    "Undecodable",
    "call_key",
    "find_cached",
    "fleche",
    "function_id",
    "replay",
    "set_binder",
]
