"""The original fleche's (0.22) metadata providers, mapped onto the metadata groups here.

0.22 recorded metadata through provider objects, each writing its own dict
under its name: ``Runtime`` (``metadata["runtime"]``: timestart, timestop,
walltime, cputime, systime), ``Environment`` (hostname, username, cwd,
fleche_version, python_version), ``Git`` (root, commit, branch, dirty) and
``Tags(dict)``; ``@fleche(meta=(...))`` added providers for one function and
``fleche.meta(...)`` chose them for a context. Here every one of them is a
group of :mod:`fleche.records._metadata` (``runtime``, ``environment``, ``git``,
``tags``), which records the same facts under its own keys
(:data:`ORIGINAL_KEYS`): the classes are accepted where 0.22 took them and
choose their group. A provider of the user's own (a ``MetaData`` subclass) has
no counterpart, since records keep only these facts: it is skipped with one
warning naming ``fleche.tags`` and ``metadata=``.

Reading and querying under 0.22's keys works too: ``call.metadata["runtime"]``
is a view of ``created``/``finished``/``duration``/``cpu`` (:class:`Metadata`),
and a query's ``metadata={"runtime": {"walltime": Q.gt(1)}}`` is asked as
``duration`` (:func:`translate_path`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from typing import Any, ClassVar, TypeAlias

from fleche.errors import ConfigError, warn_user

JSONValue: TypeAlias = str | int | float | bool | list[Any] | dict[str, Any] | None
"""What a 0.22 provider's pre/post returned (kept for annotations in user code)."""


class MetaData:
    """0.22's base of metadata providers: here a choice of what a record keeps.

    Subclasses of your own are accepted where 0.22 took them, but have no
    counterpart (records keep the facts of :data:`fleche.records.METADATA_GROUPS`):
    they are skipped with one warning. Their ``pre``/``post`` are never called.
    """

    name: str = ""
    group: ClassVar[str | None] = None  # the group here; None: no counterpart
    _keys: ClassVar[dict[str, type]] = {}

    @property
    def keys(self) -> dict[str, type]:
        """The keys 0.22 recorded for this provider, and their types."""
        return dict(self._keys)

    def pre(self, call: Any) -> dict[str, Any]:
        return {}

    def post(self, pre: dict[str, Any], call: Any) -> dict[str, Any]:
        return {}


CONFIGURABLE: dict[str, type[MetaData]] = {}
"""Providers by class name, as ``[default] metadata = ["Runtime", ...]`` names them."""


def configurable(cls: type[MetaData]) -> type[MetaData]:
    """Register a provider class under its name (0.22's decorator); returns it."""
    cls.name = cls.__name__.lower()
    CONFIGURABLE[cls.__name__] = cls
    return cls


@configurable
class Runtime(MetaData):
    """When and how long: the ``runtime`` group (``created``, ``finished``, ``duration``, ``cpu``)."""

    group = "runtime"
    _keys: ClassVar[dict[str, type]] = {
        "timestart": float,
        "timestop": float,
        "walltime": float,
        "cputime": float,
    }


@configurable
class Environment(MetaData):
    """Where: the ``environment`` group (``host``, ``user``, ``cwd``, ``python``, ``fleche``...)."""

    group = "environment"
    _keys: ClassVar[dict[str, type]] = {
        "hostname": str,
        "username": str,
        "cwd": str,
        "fleche_version": str,
        "python_version": str,
    }


@configurable
class Git(MetaData):
    """Which commit: the ``git`` group (``git.commit``, ``git.branch``, ``git.dirty``)."""

    group = "git"
    _keys: ClassVar[dict[str, type]] = {"commit": str, "branch": str, "dirty": bool}


class Tags(MetaData):
    """Tags: ``Tags({"project": "x"})`` is ``fleche.tags(project="x")``.

    A plain class, not a dataclass (whose methods `import fleche` would compile).
    """

    group: ClassVar[str | None] = "tags"

    def __init__(self, tags: dict[str, Any] | None = None, name: str = "tags") -> None:
        self.tags: dict[str, Any] = {} if tags is None else tags
        self.name = name

    def __repr__(self) -> str:
        return f"Tags({self.tags!r})"

    @property
    def keys(self) -> dict[str, type]:
        return {k: type(v) for k, v in self.tags.items()}


ORIGINAL_KEYS: dict[tuple[str, str], tuple[str, ...]] = {
    ("runtime", "timestart"): ("created",),
    ("runtime", "timestop"): ("finished",),
    ("runtime", "walltime"): ("duration",),
    ("runtime", "cputime"): ("cpu",),
    ("environment", "hostname"): ("host",),
    ("environment", "username"): ("user",),
    ("environment", "cwd"): ("cwd",),
    ("environment", "fleche_version"): ("fleche",),
    ("environment", "python_version"): ("python",),
}
"""0.22's metadata keys (provider, key) and where the same fact is kept here.

``git`` and ``tags`` keep 0.22's layout (``git.commit``, ``tags.project``). With no
counterpart: ``runtime.systime`` (``cpu`` counts user and system time together) and
``git.root``."""


def translate_path(path: tuple[str, ...]) -> tuple[str, ...]:
    """A metadata path as 0.22 named it, as it is kept here (other paths unchanged)."""
    if len(path) == 2:
        return ORIGINAL_KEYS.get((path[0], path[1]), path)
    return path


class Metadata(dict[str, Any]):
    """A record's metadata, also readable under 0.22's provider names.

    ``md["runtime"]`` and ``md["environment"]`` (and ``.get`` of them), which
    records here do not have, are views built from the keys that hold the same
    facts (:data:`ORIGINAL_KEYS`); everything else is the record's own dict.
    """

    __slots__ = ()

    def __missing__(self, key: str) -> dict[str, Any]:
        view = self._view(key)
        if view is None:
            raise KeyError(key)
        return view

    def get(self, key: str, default: Any = None) -> Any:
        if key in self:
            return dict.__getitem__(self, key)
        view = self._view(key)
        return default if view is None else view

    def _view(self, provider: str) -> dict[str, Any] | None:
        out = {
            old: self[new[0]]
            for (name, old), new in ORIGINAL_KEYS.items()
            if name == provider and new[0] in self
        }
        return out or None


# -- choosing providers ------------------------------------------------------------------


class Choice:
    """What a ``meta=`` or ``fleche.meta(...)`` asks for: groups, and tags set with them.

    A plain class, not a dataclass (whose methods `import fleche` would compile).
    """

    __slots__ = ("groups", "tags")

    def __init__(self, groups: frozenset[str], tags: Mapping[str, Any]) -> None:
        self.groups = groups
        self.tags = tags


META: ContextVar[tuple[Choice, bool] | None] = ContextVar("fleche_meta", default=None)
"""The providers ``fleche.meta(...)`` put in force here, and whether they replace the
cache's choice of groups (``stack=False``, as in 0.22) or add to it."""

_warned: set[type] = set()


def _provider(item: Any, where: str) -> MetaData | None:
    if isinstance(item, str):
        cls = CONFIGURABLE.get(item) or CONFIGURABLE.get(item.capitalize())
        if cls is None:
            raise ConfigError(
                f"{where}: unknown metadata provider {item!r}; the original fleche's are "
                f"{sorted(n for n in CONFIGURABLE if CONFIGURABLE[n].group)}, and the groups "
                "here are runtime, environment, git and tags"
            )
        return cls()
    if isinstance(item, type) and issubclass(item, MetaData):
        return item()
    if isinstance(item, MetaData):
        return item
    raise ConfigError(
        f"{where}: {item!r} is not a metadata provider; pass fleche.metadata.Runtime(), "
        "Environment(), Git() or Tags({...}), or choose groups with metadata=[...]"
    )


def choose(providers: Iterable[Any], where: str) -> Choice:
    """The groups and tags 0.22 providers stand for; one warning per provider class of the
    user's own (no counterpart here: skipped)."""
    groups: set[str] = set()
    tags: dict[str, Any] = {}
    if isinstance(providers, (str, MetaData, type)):
        providers = [providers]
    for item in providers:
        p = _provider(item, where)
        if p is None:
            continue
        group = type(p).group
        if group is None:
            if type(p) not in _warned:
                _warned.add(type(p))
                warn_user(
                    f"fleche: {where}: the metadata provider {type(p).__qualname__} has no "
                    "counterpart here, and its pre()/post() are not run: records keep the "
                    "groups runtime, environment, git and tags. Record your own facts as "
                    "tags (fleche.tags(name=value) around the calls) and choose groups with "
                    "@fleche(metadata=[...])"
                )
            continue
        groups.add(group)
        if isinstance(p, Tags):
            tags.update(p.tags)
    return Choice(frozenset(groups), tags)
