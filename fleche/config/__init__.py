"""Which cache is active: ``fleche.toml`` discovery, named caches, ``cache()`` and ``tags()``.

Above :mod:`fleche.cache` (it builds caches from names, URLs and layers), below
the query and decorator layers, which ask it for the active cache.

Inside: ``_file`` (which files apply, what each may say), ``_original`` (files
written for the original fleche 0.22: recognised, translated, upgraded), ``_caches`` (names,
URLs and layer lists to caches: :func:`resolve`), ``_active`` (the active cache
and tags of this context).
"""

from fleche.config._active import (
    EPHEMERAL_HINT,
    ImplicitCache,
    active_cache,
    cache,
    default_cache,
    meta,
    project,
    reset_default,
    set_default_cache,
    tags,
)
from fleche.config._caches import (
    RESERVED,
    AnyCache,
    CacheLike,
    load_config,
    register_cache_type,
    resolve,
)
from fleche.config._choice import stale_code_choice

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from fleche.config._file import init_project, read_file, upgrade_file
else:
    # Reading and writing fleche.toml (config._file) loads with the first call of one.

    def init_project(*args, **kwargs):
        from fleche.config._file import init_project

        return init_project(*args, **kwargs)

    def read_file(*args, **kwargs):
        from fleche.config._file import read_file

        return read_file(*args, **kwargs)

    def upgrade_file(*args, **kwargs):
        from fleche.config._file import upgrade_file

        return upgrade_file(*args, **kwargs)

    for _f in (init_project, read_file, upgrade_file):
        _f.__doc__ = f"See fleche.config._file.{_f.__name__}."
    del _f

__all__ = [
    "EPHEMERAL_HINT",
    "RESERVED",
    "AnyCache",
    "ImplicitCache",
    "CacheLike",
    "active_cache",
    "cache",
    "default_cache",
    "init_project",
    "load_config",
    "meta",
    "project",
    "read_file",
    "register_cache_type",
    "reset_default",
    "resolve",
    "set_default_cache",
    "stale_code_choice",
    "tags",
    "upgrade_file",
]
