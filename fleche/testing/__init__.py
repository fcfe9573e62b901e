"""The behaviour every :class:`~fleche.store.ObjectStore` backend must have, as one pytest class.

Subclass :class:`StoreConformance` with a ``store`` fixture to test a backend of
your own (``docs/backends.md``).  Above :mod:`fleche.store` only.

Inside: ``_suite`` (the class), ``_base`` (its fixture and raw file access),
``_values``, ``_records`` and ``_format`` (the parts of the suite).
"""

from fleche.testing._base import digest_of
from fleche.testing._suite import StoreConformance

__all__ = ["StoreConformance", "digest_of"]
