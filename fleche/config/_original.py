"""``fleche.toml`` files written for the original fleche (0.22): recognised, translated, upgraded.

The original's file names caches by top-level tables (``[persistent]``), each a
``values``/``calls`` pair of storage tables (``type = "pickle" | "cloudpickle" |
"dill" | "bagofholding_hdf" | "memory" | "void"``, ``root``; ``calls.type =
"sql"`` with ``url``), a ``template`` (``memory``, ``pickle``, ``cloudpickle``,
``dill``, ``bagofholding_hdf``, ``sql``) with ``root``, an ``[[array]]`` of them
(a stack), a ``[[name.pool]]`` array (a read-only pool) or ``type = "ssh"``;
its ``[default]`` table says ``cache`` (a name or an inline cache),
``metadata`` and ``root``. Ours has three top-level keys: ``root`` (a bool),
``default`` (a name) and ``caches`` (a table of caches).

**How a file is recognised.** It is the original's when its ``default`` is a
table, or when it has a top-level key that is none of ours (``root``,
``default``, ``caches``) holding a cache section of the original's shape (a
table with ``values`` and ``calls``, ``template``, ``pool`` or ``type =
"ssh"``, or an array of tables). The two cannot be confused: our ``default``
is a string, and ours has no other top-level key. A file of the original's that
also says ``root = ...`` or ``default = "name"`` at the top level, or whose
``caches`` holds our ``[caches.NAME]`` tables, mixes the two: a
:class:`~fleche.errors.ConfigError` naming those keys (a cache section the
original called ``caches`` is still read as one, by its shape).

**How each cache maps onto ours** (:func:`translate`; the result is a table
in our format, validated like any other, so both formats open caches the
same way):

- a file-backed ``values`` (``pickle``/``cloudpickle``/``dill``/
  ``bagofholding_hdf``) with its ``root``: one store **at the values root**
  (our ``objects/``, ``calls/`` and ``fleche.json`` beside the original's own
  files, which stay untouched for ``fleche import``), with
  ``serializer`` set to the same pickler (``bagofholding`` for
  ``bagofholding_hdf``; ``auto`` when its package is not installed);
- its ``calls``: records live in the store with the values; a ``calls.root``
  is not used; ``calls.type = "sql"`` becomes the store's **index at that
  URL** (``index = "sqlite:///…"``/``"postgresql://…"``), our SQL index;
- a template: expanded as the original did (``root/values``, ``root/calls``,
  ``sqlite:///root/calls.db``), then as above;
- ``memory`` values: ``memory://NAME``, in this process's memory and kept by
  name, as the original interned it; ``void`` anywhere: ``void://``, which
  keeps nothing;
- ``[[name]]`` (a stack): a layered cache, nearest first, ``write = "first"``
  (saves to the first layer, hits from later layers copied into it);
  ``[[name.pool]]``: a layered cache whose layers are all read-only;
- ``type = "ssh"``: a cache ``ssh = {host = …, cache_name = …, python = …,
  ssh_options = […], setup_commands = […], workdir = …}``, opened by
  ``fleche.remote.SshCache`` through :func:`fleche.config.register_cache_type`;
- ``read_only``: ``read_only``; ``[default] metadata = ["Runtime", "Git"]``:
  ``metadata = ["runtime", "git", "tags"]`` on every cache of the file (the
  original always kept ``tags()``); ``[default] root``: ``root``.

Options without a counterpart (``compress``, ``secret_key``, ``lock_timeout``,
``remaining_depth``, ``prefix_length``, ``version_validator``, ``echo``,
``max_size``…) are left out, and the file gets one
:class:`~fleche.errors.FlecheWarning` naming them all and what happens
instead. Relative ``root`` and ``sqlite:///`` paths stay relative: ours
resolves them against the file's own directory too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fleche.errors import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

OUR_TOP_KEYS = ("root", "default", "caches")

# the original's value/call storage types that keep files under ``root`` -> our serializer
_FILE_TYPES = {
    "pickle": "pickle",
    "cloudpickle": "cloudpickle",
    "dill": "dill",
    "bagofholding_hdf": "bagofholding",
    "json": "auto",  # not a type of 0.22.2; accepted: plain data is msgpack in ours
}
_PACKAGE = {"cloudpickle": "cloudpickle", "dill": "dill", "bagofholding": "bagofholding"}
_TEMPLATES = ("memory", "pickle", "cloudpickle", "dill", "bagofholding_hdf", "sql")
_SSH_KEYS = ("host", "cache_name", "python", "ssh_options", "setup_commands", "workdir")
_METADATA = {"Runtime": "runtime", "Environment": "environment", "Git": "git"}

# options of the original with no counterpart here, and what happens instead
_INSTEAD = {
    "compress": "fleche compresses every value with zstd when it pays (compression_level)",
    "secret_key": "keys are not read from fleche.toml: use secret_key_file or FLECHE_SECRET_KEY",
    "lock_timeout": "writes are atomic renames; no file locks",
    "remaining_depth": "values are stored whole; large arrays inside them become objects of their own",
    "prefix_length": "objects are fanned out by fleche's own layout",
    "version_validator": "bagofholding values are read by fleche's bagofholding serializer",
    "echo": "the SQL index logs nothing",
    "max_size": "no per-cache limit on records: fleche gc keeps size and age limits",
}


@dataclass
class Translation:
    """An original-format file in our format, and what was made of each cache."""

    data: dict[str, Any]
    """What :func:`fleche.config.read_file` returns for a file in our format (not yet validated)."""
    notes: dict[str, list[str]] = field(default_factory=dict)
    """Per cache: how it was understood, one line per fact."""
    ignored: list[str] = field(default_factory=list)
    """Options with no counterpart, each ``where: what happens instead``."""
    origins: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per single cache (a layer is ``name[i]``, a pool member ``name.pool[i]``): the
    original's ``values`` and ``calls`` tables, templates expanded and relative ``root``/
    ``sqlite:///`` paths made absolute as the original did: where its data is, for
    ``fleche import``."""


def _old_section(value: Any) -> bool:
    """Whether ``value`` has the shape of one of the original's cache sections."""
    if isinstance(value, list):
        return all(isinstance(v, Mapping) for v in value)
    if not isinstance(value, Mapping):
        return False
    return (
        "template" in value
        or "pool" in value
        or value.get("type") == "ssh"
        or (isinstance(value.get("values"), (Mapping, str)) and "calls" in value)
    )


def is_original(data: Mapping[str, Any]) -> bool:
    """Whether a parsed fleche.toml is in the original's format (see the module's doc).

    A top-level key of neither format (a typo such as ``defualt = "x"``) is
    not taken for a cache section of the original's unless it has the shape of
    one, so it is reported as the unknown key it is.
    """
    if isinstance(data.get("default"), Mapping):
        return True
    return any(k not in OUR_TOP_KEYS and _old_section(v) for k, v in data.items())


def _check_not_mixed(data: Mapping[str, Any], path: Path) -> None:
    ours = []
    if "root" in data:
        ours.append("root (at the top level; the original's goes in [default])")
    if isinstance(data.get("default"), str):
        ours.append("default = a name (the original's is a [default] table with cache = ...)")
    if "caches" in data and not _old_section(data["caches"]):
        ours.append("[caches.NAME] tables")
    if ours:
        old = sorted(k for k in data if k not in OUR_TOP_KEYS)
        if isinstance(data.get("default"), Mapping):
            old.insert(0, "[default] table")
        raise ConfigError(
            f"{path}: mixes the original fleche's format ({', '.join(old)}) with fleche's own "
            f"({'; '.join(ours)}); write it in one of them: 'fleche config --upgrade' converts "
            "a file in the original's format (docs/usage.md#configuration-files-from-the-original-fleche)"
        )


class _Translator:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.out = Translation({"caches": {}})
        self.metadata: list[str] | None = None

    def ignore(self, where: str, key: str, value: Any) -> None:
        instead = _INSTEAD.get(key, "not read: fleche has no such option")
        shown = "<hidden>" if key == "secret_key" else repr(value)  # never echo a key
        self.out.ignored.append(f"{where}.{key} = {shown} ({instead})")

    def error(self, where: str, msg: str) -> ConfigError:
        return ConfigError(f"{self.path}: [{where}] {msg}")

    # -- the file ---------------------------------------------------------------------------

    def run(self, data: Mapping[str, Any]) -> Translation:
        _check_not_mixed(data, self.path)
        default = data.get("default", {})
        caches: dict[str, Any] = self.out.data["caches"]
        default_name: str | None = None
        for key, value in default.items():
            if key == "root":
                if not isinstance(value, bool):
                    raise self.error("default", f"root = {value!r}: expected true or false")
                self.out.data["root"] = value
            elif key == "metadata":
                self.metadata = self._metadata(value)
            elif key == "cache":
                if isinstance(value, str):
                    default_name = value
                elif isinstance(value, (Mapping, list)):
                    default_name = "default"
                else:
                    raise self.error("default", f"cache = {value!r}: expected a name or a table")
            else:
                self.ignore("default", key, value)
        for name, section in data.items():
            if name == "default":
                continue
            if name in ("memory", "void"):
                self.out.ignored.append(
                    f"[{name}] (a reserved name: cache({name!r}) is always the "
                    f"{'in-memory' if name == 'memory' else 'storing-nothing'} cache, as in the "
                    "original, so this section was never used)"
                )
                continue
            caches[name] = self.cache(name, section)
        if isinstance(default.get("cache"), (Mapping, list)):
            caches["default"] = self.cache("default", default["cache"], "default.cache")
        if default_name is not None:
            self.out.data["default"] = default_name
        return self.out

    def _metadata(self, value: Any) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error("default", f"metadata = {value!r}: expected a list of names")
        unknown = [v for v in value if v not in _METADATA]
        if unknown:
            raise self.error(
                "default",
                f"metadata = {value!r}: unknown {unknown}; the original knew {sorted(_METADATA)}",
            )
        groups = [_METADATA[v] for v in value]
        return [*dict.fromkeys([*groups, "tags"])]  # tags(): kept by the original always

    # -- one cache --------------------------------------------------------------------------

    def cache(self, name: str, section: Any, where: str | None = None) -> dict[str, Any]:
        where = where or name
        notes = self.out.notes.setdefault(name, [])
        if isinstance(section, list):
            if not section:
                raise self.error(where, "is an empty stack ([[...]] with no table)")
            layers = [
                self.single(f"{name}[{i}]", layer, f"{where}[{i}]", notes, f"layer {i}: ")
                for i, layer in enumerate(section, 1)
            ]
            notes.insert(
                0, f"a stack of {len(layers)} -> a layered cache, saves to the first layer"
            )
            return self.with_metadata({"layers": layers, "write": "first"})
        if isinstance(section, Mapping) and "pool" in section:
            members = section["pool"]
            if not isinstance(members, list) or not members:
                raise self.error(where, "pool must be a non-empty array of tables ([[name.pool]])")
            for k, v in section.items():
                if k != "pool":
                    self.ignore(where, k, v)
            layers = [
                {
                    **self.single(
                        f"{name}.pool[{i}]", m, f"{where}.pool[{i}]", notes, f"member {i}: "
                    ),
                    "read_only": True,
                }
                for i, m in enumerate(members, 1)
            ]
            notes.insert(0, f"a pool of {len(layers)} -> a layered cache, every layer read-only")
            return self.with_metadata({"layers": layers, "write": "first"})
        return self.with_metadata(self.single(name, section, where, notes, ""))

    def with_metadata(self, table: dict[str, Any]) -> dict[str, Any]:
        if self.metadata is not None:
            table["metadata"] = list(self.metadata)
        return table

    def single(
        self, name: str, section: Any, where: str, notes: list[str], label: str
    ) -> dict[str, Any]:
        """One cache (a section, a stack's layer or a pool's member) as our single-cache table."""
        if not isinstance(section, Mapping):
            raise self.error(where, f"must be a table, got {type(section).__name__}")
        if "pool" in section or any(
            isinstance(v, list) for k, v in section.items() if k == "layers"
        ):
            raise self.error(
                where, "a stack or pool inside a stack or pool: list its caches instead"
            )
        if section.get("type") == "ssh":
            return self.ssh(section, where, notes, label)
        if "type" in section:
            raise self.error(
                where,
                f"type = {section['type']!r}: a cache's own type can only be 'ssh'; storage "
                "types go in values.type and calls.type",
            )
        sec = dict(section)
        if "template" in sec:
            sec = self.template(sec, where)
            notes.append(f"{label}template {section['template']!r}, expanded as the original did")
        table: dict[str, Any] = {}
        read_only = sec.pop("read_only", False)
        if not isinstance(read_only, bool):
            raise self.error(where, f"read_only = {read_only!r}: expected true or false")
        if "values" not in sec or "calls" not in sec:
            raise self.error(
                where,
                "needs values and calls tables (values.type = ..., calls.type = ...) or a template",
            )
        values, calls = sec.pop("values"), sec.pop("calls")
        if isinstance(values, Mapping) and isinstance(calls, Mapping):
            self.out.origins[name] = {"values": self.rebase(values), "calls": self.rebase(calls)}
        for k, v in sec.items():
            self.ignore(where, k, v)
        for part, t in (("values", values), ("calls", calls)):
            if not isinstance(t, Mapping) or not isinstance(t.get("type"), str):
                raise self.error(
                    where, f"{part} must be a table with a type (e.g. {part}.type = 'pickle')"
                )
        vt, ct = values["type"], calls["type"]
        known = (*_FILE_TYPES, "memory", "void", "sql")
        for part, t in (("values", vt), ("calls", ct)):
            if t not in known:
                raise self.error(
                    where, f"{part}.type = {t!r}: unknown; the original's types: {sorted(known)}"
                )
        if vt == "sql":
            raise self.error(
                where, "values.type = 'sql': sql stores call records only (calls.type)"
            )
        if "void" in (vt, ct):
            table["url"] = "void://"
            notes.append(f"{label}void storage -> void:// (nothing is stored; every call runs)")
            self.extra(where, "values", values, ())
            self.extra(where, "calls", calls, ())
        elif vt == "memory":
            table["url"] = f"memory://{name}"
            notes.append(f"{label}memory -> memory://{name} (this process only, kept by name)")
            self.extra(where, "values", values, ())
            if ct != "memory":
                self.out.ignored.append(
                    f"{where}.calls (type {ct!r}; records are kept in memory with the values)"
                )
            else:
                self.extra(where, "calls", calls, ())
        else:
            root = values.get("root")
            if not isinstance(root, str):
                raise self.error(where, f"values.type = {vt!r} needs values.root (a directory)")
            table["url"] = root
            serializer = self.serializer(vt, where)
            if serializer != "auto":
                table["serializer"] = serializer
            notes.append(
                f"{label}{vt} values in {root} -> a store at {root}"
                + (f", serializer {serializer}" if serializer != "auto" else "")
            )
            self.extra(where, "values", values, ("root",))
            if ct == "sql":
                url = calls.get("url")
                if url is None:
                    notes.append(
                        f"{label}sql calls with no url (the original's sqlite:///:memory:) -> "
                        "the store's own index"
                    )
                elif not isinstance(url, str):
                    raise self.error(where, f"calls.url = {url!r}: expected a database URL")
                else:
                    table["index"] = url
                    notes.append(
                        f"{label}sql calls at {url} -> records in the store, index at {url}"
                    )
                self.extra(where, "calls", calls, ("url",))
            else:
                croot = calls.get("root")
                said = f" (not in {croot})" if isinstance(croot, str) else ""
                if ct == "memory":
                    said = " (kept, where the original's memory calls were lost at exit)"
                notes.append(f"{label}{ct} calls -> records in the store at {root}{said}")
                self.extra(where, "calls", calls, ("root",))
        if read_only:
            table["read_only"] = True
        return table

    def rebase(self, table: Mapping[str, Any]) -> dict[str, Any]:
        """``table`` with a relative ``root`` or ``sqlite:///`` url anchored at the file's directory."""
        out = dict(table)
        base = self.path.parent
        root = out.get("root")
        if isinstance(root, str) and not root.startswith("~") and not root.startswith("/"):
            out["root"] = str(base / root)
        url = out.get("url")
        if isinstance(url, str) and url.startswith("sqlite:///"):
            db = url[len("sqlite:///") :]
            if db and db != ":memory:" and not db.startswith(("/", "~")):
                out["url"] = f"sqlite:///{base / db}"
        return out

    def extra(self, where: str, part: str, table: Mapping[str, Any], used: tuple[str, ...]) -> None:
        for k, v in table.items():
            if k != "type" and k not in used:
                self.ignore(f"{where}.{part}", k, v)

    def serializer(self, vt: str, where: str) -> str:
        ours = _FILE_TYPES[vt]
        package = _PACKAGE.get(ours)
        if package is not None:
            import importlib.util  # only for a file that names such a type

            if importlib.util.find_spec(package) is None:
                self.out.ignored.append(
                    f"{where}.values.type = {vt!r} ({package} is not installed: values are "
                    "stored by fleche's own serializers; pip install it to keep them "
                    f"{package}-encoded)"
                )
                return "auto"
        return ours

    def template(self, sec: dict[str, Any], where: str) -> dict[str, Any]:
        template = sec.pop("template")
        if template not in _TEMPLATES:
            raise self.error(
                where, f"template = {template!r}: unknown; choose from {list(_TEMPLATES)}"
            )
        modifiers: dict[str, Any] = {k: sec.pop(k) for k in ("read_only", "max_size") if k in sec}
        allowed = {"memory": (), "sql": ("root", "values", "url")}.get(template, ("root",))
        extra = sorted(set(sec) - set(allowed))
        if extra:
            raise self.error(
                where,
                f"template {template!r} takes {list(allowed) or 'no other keys'}"
                f" (and read_only, max_size), not {extra}: write values/calls tables instead",
            )
        if template == "memory":
            return {"values": {"type": "memory"}, "calls": {"type": "memory"}, **modifiers}
        root = sec.get("root")
        if not isinstance(root, str):
            raise self.error(where, f"template {template!r} needs root (a directory)")
        base = root.rstrip("/") or "/"
        values_root = f"{base}/values"
        if template == "sql":
            vt = sec.get("values", "bagofholding_hdf")
            url = sec.get("url", f"sqlite:///{base}/calls.db")
            return {
                "values": {"type": vt, "root": values_root},
                "calls": {"type": "sql", "url": url},
                **modifiers,
            }
        return {
            "values": {"type": template, "root": values_root},
            "calls": {"type": template, "root": f"{base}/calls"},
            **modifiers,
        }

    def ssh(
        self, section: Mapping[str, Any], where: str, notes: list[str], label: str
    ) -> dict[str, Any]:
        ssh: dict[str, Any] = {}
        for k, v in section.items():
            if k == "type":
                continue
            if k not in _SSH_KEYS:
                self.ignore(where, k, v)
                continue
            if k in ("ssh_options", "setup_commands"):
                if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                    raise self.error(where, f"{k} = {v!r}: expected a list of strings")
            elif not isinstance(v, str):
                raise self.error(where, f"{k} = {v!r}: expected a string")
            ssh[k] = list(v) if isinstance(v, list) else v
        if "host" not in ssh:
            raise self.error(where, "type = 'ssh' needs host (user@host or an ~/.ssh/config alias)")
        remote = ssh.get("cache_name") or "its default cache"
        notes.append(f"{label}ssh -> fleche.remote.SshCache on {ssh['host']} ({remote})")
        return {"ssh": ssh}


def translate(data: Mapping[str, Any], path: Path) -> Translation:
    """An original-format file's content as our format, with notes and ignored options."""
    return _Translator(path).run(data)


# -- warning, once per file -------------------------------------------------------------------

_warned: set[tuple[str, str]] = set()


def warn_ignored(path: Path, t: Translation) -> None:
    """One FlecheWarning per file (per process and content) naming every option left out."""
    if not t.ignored:
        return
    key = (str(path), json.dumps(t.ignored))
    if key in _warned:
        return
    _warned.add(key)
    import warnings

    from fleche.errors import FlecheWarning

    warnings.warn(
        f"{path} is written for the original fleche; read as fleche's own format, except "
        f"{len(t.ignored)} option(s) with no counterpart here, left out: "
        + "; ".join(t.ignored)
        + ". 'fleche config' shows how each cache was understood; 'fleche config --upgrade "
        "--write' rewrites the file in fleche's format",
        FlecheWarning,
        stacklevel=4,
    )


# -- the file in our format -------------------------------------------------------------------

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(k: str) -> str:
    return k if _BARE.match(k) else json.dumps(k)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot write {v!r} as TOML")


def upgraded_text(path: Path, t: Translation) -> str:
    """The file ``t`` came from, in our format: what ``fleche config --upgrade`` prints."""
    lines = [
        f"# fleche.toml in fleche's own format, converted by 'fleche config --upgrade' from {path.name}",
        "# (written for the original fleche). Every key: docs/usage.md#flechetoml.",
    ]
    for item in t.ignored:
        lines.append(f"# left out: {item}")
    lines.append("")
    data = t.data
    if "root" in data:
        lines.append(f"root = {_value(data['root'])}")
    if "default" in data:
        lines.append(f"default = {_value(data['default'])}")
    for name, table in data["caches"].items():
        lines.append("")
        for note in t.notes.get(name, []):
            lines.append(f"# {note}")
        lines.append(f"[caches.{_key(name)}]")
        for k, v in table.items():
            if k != "layers":
                lines.append(f"{_key(k)} = {_value(v)}")
        for layer in table.get("layers", []):
            lines.append(f"[[caches.{_key(name)}.layers]]")
            lines.extend(f"{_key(k)} = {_value(v)}" for k, v in layer.items())
    return "\n".join(lines) + "\n"
