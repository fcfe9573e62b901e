"""Caches: call records and values over one store, layered caches, compute-once leases.

Above :mod:`fleche.index` (each cache keeps a catalogue of its records) and
:mod:`fleche.codec` (values and records become self-checking objects), below
:mod:`fleche.config`, which chooses the active one.  A fault here fails open: a
corrupt file is a miss with one warning and goes to ``quarantine/``.

Inside: ``_cache`` (:class:`Cache`), ``_layers`` and ``_layer_set`` (a
:class:`LayeredCache` read nearest first, and the health of each layer),
``_lease`` (one process computes a call, the others wait).
"""

from fleche.cache._cache import (
    Cache,
    MmapMode,
    encode_value,
    malformed,
    mmap_mode,
    referenced_oids,
    type_name,
)
from fleche.cache._layer_set import LayerSpec
from fleche.cache._layers import (
    RETRY_AFTER,
    WRITE_MODES,
    DeferredCache,
    LayeredCache,
    open_cache,
    strict_open,
)

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from fleche.cache._lease import (
        Lease,
        LeasePolicy,
        acompute_once,
        compute_once,
        iter_leases,
        lease_store,
        policy_of,
        sweep,
    )
else:
    # Compute-once leases load with the first single_flight function (or lease listing):
    # a hit, and most programs, use none (~1.3 M instructions).
    _LEASE = frozenset(
        (
            "Lease",
            "LeasePolicy",
            "acompute_once",
            "compute_once",
            "iter_leases",
            "lease_store",
            "policy_of",
            "sweep",
        )
    )

    def __getattr__(name):
        if name in _LEASE:
            from fleche.cache import _lease

            return getattr(_lease, name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Cache",
    "DeferredCache",
    "LayerSpec",
    "LayeredCache",
    "Lease",
    "LeasePolicy",
    "MmapMode",
    "RETRY_AFTER",
    "WRITE_MODES",
    "acompute_once",
    "compute_once",
    "encode_value",
    "iter_leases",
    "lease_store",
    "malformed",
    "mmap_mode",
    "open_cache",
    "policy_of",
    "referenced_oids",
    "strict_open",
    "sweep",
    "type_name",
]
