"""Storing a call computed elsewhere, under the key ``@fleche`` would give it here.

``fleche import`` brings results another cache computed (the original fleche's) into
ours. Their keys are ours only if made as the decorator makes them: by the function's
identity, version and code digest, and its bound arguments in signature order. Two
ways to know the function:

- :class:`NamedFunction`: by name only (module, qualname, version), as the old record
  says, without running any of the user's code; right for every function decorated
  with the defaults (``hash_module=True``, ``hash_code=False``, no captured variables);
- :func:`find_cached`: the ``@fleche`` function itself, imported from its module;
  exact whatever its options, since its own key maker keys the call.

Either way :func:`replay` writes through the decorator's own path: the value
objects first, then the record (``ResultIO.record``), with the metadata given.
"""

from __future__ import annotations

import importlib
import time

from fleche.config import AnyCache
from fleche.decorator._fleche import CachedFunction
from fleche.decorator._identity import _find, function_id
from fleche.decorator._results import ResultIO
from fleche.records import KeyMaker, PendingCall, plain

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any


class NamedFunction(ResultIO):
    """A cached function known by its name only, keyed as ``@fleche(version=version)``
    on a function ``module.qualname`` would be (``module`` None: ``hash_module=False``)."""

    def __init__(self, module: str | None, qualname: str, version: Any = None) -> None:
        self.qualname = qualname
        self.module = module or "__main__"
        identity = f"{module}:{qualname}" if module else qualname
        self.function_id = function_id(identity)
        self.version = version
        self.keys = KeyMaker(identity, version, None)
        self.metadata = None
        self.meta_choice = None  # no @fleche(meta=...): the cache's own metadata choice
        self.mmap = False
        self.stale_code = None
        self.code_func = None
        self.code_now = None
        self._code_known = True  # no code: records say code None, as a builtin's do
        self._decorated_ns = time.time_ns()
        self._warned = set()
        self._record_head = {
            "fleche": 1,
            "function": self.function_id,
            "module": self.module,
            "qualname": qualname,
            "version": plain(version),
            "code": None,
        }


def find_cached(module: str, qualname: str) -> CachedFunction | None:
    """The ``@fleche`` function ``module.qualname``, importing ``module`` (None: not one).

    Raises what importing the module raises (ImportError and the like).
    """
    importlib.import_module(module)
    cf = getattr(_find(module, qualname), "__fleche__", None)
    return cf if isinstance(cf, CachedFunction) else None


def call_key(fn: NamedFunction | CachedFunction, items: list[tuple[str, Any]]) -> str:
    """The key of ``fn`` called with bound ``items`` (name, value) in signature order.

    Raises :class:`~fleche.errors.UnhashableArgumentError` for an argument with no digest.
    """
    return fn.keys.key(items)[0]


def replay(
    fn: NamedFunction | CachedFunction,
    cache: AnyCache,
    items: list[tuple[str, Any]],
    result: Any,
    metadata: dict[str, Any],
) -> tuple[str, str, bool]:
    """Store ``result`` as ``fn``'s call with ``items``; ``(function id, key, written)``.

    A call already stored is left as it is (``written`` False), so an interrupted
    import resumes where it stopped. ``metadata`` replaces what the decorator would
    collect now (``created``, ``duration``... of the original computation).
    Raises :class:`~fleche.errors.SerializationError` when no serializer takes the
    result, and the cache's errors when it cannot be written.
    """
    key, digests = fn.keys.key(items)
    if cache.has_record(fn.function_id, key):
        return fn.function_id, key, False
    ref = cache.put_value(result)
    started = float(metadata.get("created", time.time()))
    duration = float(metadata.get("duration", 0.0))
    rec = fn.record(cache, PendingCall((), {}, key, items, digests), ref, started, duration)
    rec["metadata"] = metadata
    cache.put_record(fn.function_id, key, rec)
    return fn.function_id, key, True
