"""The ``stale_code`` choice, checked where it is given (``@fleche``, ``cache(...)``, a file).

Its own module so that decorating a function, which checks its ``stale_code=``, does not
load :mod:`fleche.config._file` (reading and validating ``fleche.toml``): a program that
names its cache in code never reads a file.
"""

from __future__ import annotations

from fleche.errors import ConfigError

STALE_CODE = ("warn", "serve", "recompute")
"""What a hit computed by other code does: served with a warning, served, or recomputed."""


def stale_code_choice(value: object, where: str) -> str | None:
    """A ``stale_code`` setting (None: not set); ConfigError naming ``where`` otherwise."""
    if value is None or (isinstance(value, str) and value in STALE_CODE):
        return value
    raise ConfigError(f"{where} stale_code = {value!r}: expected 'warn', 'serve' or 'recompute'")
