"""What a stored call says: its :class:`Call`, its metadata, and query terms over both.

Above :mod:`fleche.codec` and :mod:`fleche.digest`, below the index (which
stores conditions as SQL) and the caches.

Inside: ``_call`` (binding arguments, keys, records as :class:`Call`),
``_metadata`` (when, how long, where, with which tags), ``_providers`` (the
original fleche's metadata providers, ``Runtime``..., mapped onto those groups),
``_terms`` (``Q`` conditions on arguments and metadata).
"""

from fleche.records._call import (
    NO_VERSION,
    NOT_LISTED,
    Binder,
    Call,
    KeyMaker,
    ListedCall,
    ListedRow,
    NotStored,
    PendingCall,
    is_clear,
)
from fleche.records._metadata import ALL as ALL_METADATA
from fleche.records._metadata import GROUPS as METADATA_GROUPS
from fleche.records._metadata import TAGS, current_tags, forget_git, plain, set_packages
from fleche.records._metadata import collect as collect_metadata
from fleche.records._metadata import groups as metadata_choice
from fleche.records._providers import (
    CONFIGURABLE,
    META,
    ORIGINAL_KEYS,
    Choice,
    Environment,
    Git,
    JSONValue,
    MetaData,
    Metadata,
    Runtime,
    Tags,
    configurable,
    translate_path,
)
from fleche.records._providers import choose as choose_providers

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from fleche.records._terms import (
        ORDERED,
        Condition,
        Q,
        QuerySpec,
        as_condition,
        holds_at,
        metadata_conditions,
    )
else:
    # Query terms load when first named (fleche.Q, a query, the index): a hit uses none.
    _TERMS = frozenset(
        (
            "ORDERED",
            "Condition",
            "Q",
            "QuerySpec",
            "as_condition",
            "holds_at",
            "metadata_conditions",
        )
    )

    def __getattr__(name):
        if name in _TERMS:
            from fleche.records import _terms

            return getattr(_terms, name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ALL_METADATA",
    "CONFIGURABLE",
    "META",
    "ORIGINAL_KEYS",
    "Binder",
    "Call",
    "ListedCall",
    "ListedRow",
    "NOT_LISTED",
    "Choice",
    "Condition",
    "Environment",
    "Git",
    "JSONValue",
    "KeyMaker",
    "METADATA_GROUPS",
    "MetaData",
    "Metadata",
    "NO_VERSION",
    "NotStored",
    "ORDERED",
    "PendingCall",
    "Q",
    "QuerySpec",
    "Runtime",
    "TAGS",
    "Tags",
    "as_condition",
    "choose_providers",
    "collect_metadata",
    "configurable",
    "current_tags",
    "forget_git",
    "holds_at",
    "is_clear",
    "metadata_choice",
    "metadata_conditions",
    "plain",
    "set_packages",
    "translate_path",
]
