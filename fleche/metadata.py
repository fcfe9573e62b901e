"""The original fleche's (0.22) ``fleche.metadata`` module: its providers, under their names.

``from fleche.metadata import Runtime, Environment, Git, Tags`` keeps working: each
is one of the metadata groups here (``runtime``, ``environment``, ``git``,
``tags``), accepted by ``@fleche(meta=...)`` and ``fleche.meta(...)``. They live in
:mod:`fleche.records`; this module only names them where 0.22 did.
"""

from fleche.records import (
    CONFIGURABLE,
    Environment,
    Git,
    JSONValue,
    MetaData,
    Runtime,
    Tags,
    configurable,
)

__all__ = [
    "CONFIGURABLE",
    "Environment",
    "Git",
    "JSONValue",
    "MetaData",
    "Runtime",
    "Tags",
    "configurable",
]
