"""``fleche.toml``: which files apply, and what each may say.

Files are found from the working directory upward (a file with ``root =
true`` stops the search), then ``$XDG_CONFIG_HOME/fleche/fleche.toml`` (or,
without one, the original fleche's ``cache.toml`` there). A file written for
the original fleche is read through :mod:`fleche.config._original`.
:func:`read_file` parses one and checks every key and type, so a mistake is
reported with its file and key before any cache is opened. Opening the caches
they name is :mod:`fleche.config._caches`'s.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

from fleche.cache import WRITE_MODES
from fleche.config._choice import stale_code_choice
from fleche.errors import ConfigError
from fleche.records import METADATA_GROUPS

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any

if TYPE_CHECKING:
    from pathlib import Path

CONFIG_NAME = "fleche.toml"
ORIGINAL_USER_NAME = "cache.toml"
"""The original fleche's user file, ``$XDG_CONFIG_HOME/fleche/cache.toml``: read when there
is no ``fleche.toml`` beside it."""
# key -> (expected type(s), description for error messages)
CACHE_KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "url": (str, "a path or fsspec URL"),
    "compression_level": (int, "an int in 0..22"),
    "inline_limit": (int, "an int >= 0 (bytes)"),
    "durable": (bool, "true or false"),
    "read_only": (bool, "true or false"),
    "serializer": (str, "'pickle', 'cloudpickle' or 'dill'"),
    "storage_options": (dict, "a table of fsspec options"),
    "metadata": ((list, bool), "a list of metadata groups, or true (all) / false (created only)"),
    "index": ((bool, str), "true, false, sqlite:///PATH or a database URL (docs/catalog.md)"),
    "safe": (bool, "true or false (true: never store or load pickles)"),
    "secret_key_file": (str, "the path of a file holding the secret key(s), one per line"),
    "stale_code": (str, "'warn', 'serve' or 'recompute'"),
    "ssh": (dict, "a table: host, and cache_name, python, ssh_options, setup_commands, workdir"),
}
# What an ``ssh = {...}`` cache (fleche.remote.SshCache, the original's type = "ssh") takes.
SSH_KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "host": (str, "user@host or an ~/.ssh/config alias"),
    "cache_name": (str, "the name of a cache in the remote's fleche.toml"),
    "python": (str, "the remote's Python (default python3)"),
    "ssh_options": (list, "a list of ssh arguments"),
    "setup_commands": (list, "a list of shell commands run (joined by &&) before the server"),
    "workdir": (str, "the remote directory to cd into first"),
}
# Keys an ``ssh`` cache may have besides ``ssh``: its store is the remote's own.
SSH_CACHE_KEYS = ("ssh", "read_only", "metadata", "stale_code")
# A layered cache's own keys; each of its layers takes CACHE_KEYS.
LAYERED_KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "layers": (list, "an array of tables: one [[caches.NAME.layers]] per layer, nearest first"),
    "write": (str, "'first' or 'through'"),
    "retry_after": ((int, float), "seconds (a number >= 0)"),
    "metadata": ((list, bool), "a list of metadata groups, or true (all) / false (created only)"),
    "stale_code": (str, "'warn', 'serve' or 'recompute'"),
}
# Keys of a layered cache's own table that its layers may not have: one record goes to every
# layer, and one hit is served whichever layer it came from.
WHOLE_CACHE_KEYS = ("metadata", "stale_code")
TOP_KEYS = {"root", "default", "caches"}
# What a call record's metadata may hold besides ``created`` (see fleche.records._metadata); a
# cache's ``metadata`` key picks some, kept on the cache object as ``metadata_groups``.


def metadata_groups(value: bool | Sequence[str], where: str) -> frozenset[str]:
    """A cache's ``metadata`` choice as a set of groups; ConfigError naming unknown ones."""
    if value is True or value is False:
        return frozenset(METADATA_GROUPS) if value else frozenset()
    if isinstance(value, str) or not all(isinstance(g, str) for g in value):
        raise ConfigError(f"{where} metadata = {value!r}: expected a list of group names")
    unknown = sorted(set(value) - set(METADATA_GROUPS))
    if unknown:
        raise ConfigError(
            f"{where} metadata = {value!r}: unknown group(s) {unknown}; "
            f"choose from {list(METADATA_GROUPS)}"
        )
    return frozenset(value)


def _check_types(
    table: Mapping[str, Any],
    keys: Mapping[str, tuple[type | tuple[type, ...], str]],
    where: str,
    section: str,
    hint: str = "",
) -> None:
    """Every key known and of the expected type; errors say ``where: ... in section``."""
    for key, value in table.items():
        if key not in keys:
            raise ConfigError(
                f"{where}unknown key {key!r} in {section}; valid keys: {sorted(keys)}{hint}"
            )
        want, desc = keys[key]
        bool_ok = want is bool or (isinstance(want, tuple) and bool in want)
        if not isinstance(value, want) or (not bool_ok and isinstance(value, bool)):
            raise ConfigError(f"{where}{section} {key} = {value!r}: expected {desc}")


def _check_single(table: Any, where: str, section: str) -> dict[str, Any]:
    """The options of one single-store cache (a named cache or one layer)."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}{section} must be a table, got {type(table).__name__}")
    hint = ""
    if any(k in LAYERED_KEYS for k in table):
        hint = "; 'layers', 'write' and 'retry_after' belong to a layered cache's own table"
    if "secret_key" in table:
        raise ConfigError(
            f"{where}{section} secret_key: a key written in fleche.toml is one commit away "
            "from being public; put it in a file named by secret_key_file, or in the "
            "FLECHE_SECRET_KEY environment variable"
        )
    _check_types(table, CACHE_KEYS, where, section, hint)
    if "metadata" in table:
        metadata_groups(table["metadata"], f"{where}{section}")
    stale_code_choice(table.get("stale_code"), f"{where}{section}")
    if "ssh" in table:
        _check_ssh(table, where, section)
    elif "url" not in table:
        raise ConfigError(f"{where}{section} needs a url (a path or fsspec URL)")
    return dict(table)


def _check_ssh(table: Mapping[str, Any], where: str, section: str) -> None:
    """An ``ssh = {host = ...}`` cache: its keys, and nothing that only a store of ours takes."""
    other = sorted(k for k in table if k not in SSH_CACHE_KEYS)
    if other:
        raise ConfigError(
            f"{where}{section} has ssh = {{...}} and {other}: an ssh cache serves the remote's "
            f"own cache, configured there; besides ssh it takes only {list(SSH_CACHE_KEYS[1:])}"
        )
    ssh = table["ssh"]
    _check_types(ssh, SSH_KEYS, where, f"{section} ssh")
    for key in ("ssh_options", "setup_commands"):
        if not all(isinstance(x, str) for x in ssh.get(key, ())):
            raise ConfigError(
                f"{where}{section} ssh.{key} = {ssh[key]!r}: expected a list of strings"
            )
    if "host" not in ssh:
        raise ConfigError(f"{where}{section} ssh needs host (user@host or an ~/.ssh/config alias)")


def _check_layered(name: str, table: Mapping[str, Any], where: str) -> dict[str, Any]:
    section = f"[caches.{name}]"
    hint = f" (per-layer keys such as url go in each [[caches.{name}.layers]] table)"
    _check_types(table, LAYERED_KEYS, where, f"{section} (a layered cache)", hint)
    layers = table["layers"]
    if not layers:
        raise ConfigError(
            f"{where}{section} layers is empty: add one [[caches.{name}.layers]] table per layer"
        )
    if table.get("write", "first") not in WRITE_MODES:
        raise ConfigError(
            f"{where}{section} write = {table['write']!r}: expected 'first' or 'through'"
        )
    if table.get("retry_after", 0) < 0:
        raise ConfigError(
            f"{where}{section} retry_after = {table['retry_after']!r}: expected seconds (a number >= 0)"
        )
    if "metadata" in table:
        metadata_groups(table["metadata"], f"{where}{section}")
    stale_code_choice(table.get("stale_code"), f"{where}{section}")
    checked = [
        _check_single(layer, where, f"[[caches.{name}.layers]] number {i}")
        for i, layer in enumerate(layers, 1)
    ]
    for key in WHOLE_CACHE_KEYS:
        if any(key in layer for layer in checked):
            raise ConfigError(
                f"{where}[[caches.{name}.layers]]: {key} belongs to the layered cache's own "
                f"table [caches.{name}], not to a layer"
            )
    return {**table, "layers": checked}


def _check_cache(name: str, table: Any, path: Path) -> dict[str, Any]:
    if isinstance(table, Mapping) and "layers" in table:
        return _check_layered(name, table, f"{path}: ")
    return _check_single(table, f"{path}: ", f"[caches.{name}]")


def _tomllib() -> Any:
    # imported here: a process that never reads a fleche.toml does not pay for the parser
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.10 only
        import tomli as tomllib
    return tomllib


def read_file(path: Path) -> dict[str, Any]:
    """Parse and validate one fleche.toml; errors name the file and the key."""
    tomllib = _tomllib()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: it is not UTF-8 text ({e})") from e
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e}") from e
    return _check_file(data, path)


def _check_file(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """The parsed content of the file at ``path``, validated (translated if the original's)."""
    # here, not at the top: only a process that reads a fleche.toml pays for the translator
    from fleche.config._original import is_original, translate, warn_ignored

    if is_original(data):  # written for the original fleche (0.22): translated to ours
        t = translate(data, path)
        data = t.data
        data["caches"] = {n: _check_cache(n, c, path) for n, c in data["caches"].items()}
        warn_ignored(path, t)
        data["original"] = t  # for fleche config; load_config reads root, default, caches
        return data
    for key in data:
        if key not in TOP_KEYS:
            raise ConfigError(
                f"{path}: unknown top-level key {key!r}; valid keys: {sorted(TOP_KEYS)} (a file "
                "for the original fleche has a [default] table, or [NAME] tables with values "
                "and calls, template, pool or type = 'ssh')"
            )
    if not isinstance(data.get("root", False), bool):
        raise ConfigError(f"{path}: root = {data['root']!r}: expected true or false")
    if "default" in data and not isinstance(data["default"], str):
        raise ConfigError(f"{path}: default = {data['default']!r}: expected a cache name")
    caches = data.get("caches", {})
    if not isinstance(caches, Mapping):
        raise ConfigError(f"{path}: caches must be a table of [caches.NAME] tables")
    data["caches"] = {n: _check_cache(n, t, path) for n, t in caches.items()}
    return data


def _discover(start: Path | None) -> list[tuple[Path, dict[str, Any]]]:
    """Parsed fleche.toml files that apply, nearest first: upward to a ``root = true``, then the user's."""
    from pathlib import Path  # pathlib (~5 ms with urllib) only once a config is looked for

    found: list[tuple[Path, dict[str, Any]]] = []
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        p = d / CONFIG_NAME
        if p.is_file():
            data = read_file(p)
            found.append((p, data))
            if data.get("root"):
                return found
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    user = Path(xdg) / "fleche" / CONFIG_NAME
    if not user.is_file():  # the original fleche's name for the user's file
        user = user.with_name(ORIGINAL_USER_NAME)
    if user.is_file() and all(user != p for p, _ in found):
        found.append((user, read_file(user)))
    return found


# -- fleche init ---------------------------------------------------------------------------

STORE_DIR = ".fleche"
INIT_TEXT = f"""\
# fleche's configuration for this project, written by `fleche init`.
# Python run in this directory or below caches @fleche results in {STORE_DIR}/ next
# to this file. Every key: docs/usage.md#flechetoml; what is in force: `fleche config`.
root = true                # do not look further up, nor in ~/.config/fleche/
default = "local"

[caches.local]
url = "{STORE_DIR}"            # relative to this file; any path or fsspec URL works
"""
_IGNORED = {STORE_DIR, f"{STORE_DIR}/", f"/{STORE_DIR}", f"/{STORE_DIR}/", f"{STORE_DIR}/*"}


def init_project(directory: str | os.PathLike[str] = ".", *, force: bool = False) -> list[str]:
    """Write ``fleche.toml`` in ``directory`` (a local store in ``.fleche/``); what was done, as lines.

    An existing ``fleche.toml`` is left alone unless ``force``: it may hold
    caches someone configured by hand. ``.fleche/`` is added to the
    directory's ``.gitignore`` when it has one and does not ignore it yet (once:
    a second run adds nothing), so results are not committed by accident.
    """
    from pathlib import Path

    root = Path(directory).resolve()
    if not root.is_dir():
        raise ConfigError(f"{root} is not a directory: fleche init writes fleche.toml into one")
    path = root / CONFIG_NAME
    if path.exists() and not force:
        raise ConfigError(
            f"{path} exists: fleche init leaves it as it is ('fleche config' shows what it "
            "says); pass --force to replace it"
        )
    done = []
    tmp = path.with_name(f".{CONFIG_NAME}.tmp")
    tmp.write_text(INIT_TEXT, encoding="utf-8")
    os.replace(tmp, path)  # never a half-written fleche.toml
    read_file(path)  # what init writes, fleche reads: checked, not assumed
    done.append(f"wrote {path}: the default cache is 'local', a store in {root / STORE_DIR}")
    ignore = root / ".gitignore"
    if ignore.is_file():
        text = ignore.read_text(encoding="utf-8", errors="surrogateescape")
        if any(line.strip() in _IGNORED for line in text.splitlines()):
            done.append(f"{ignore} already ignores {STORE_DIR}/")
        else:
            sep = "" if not text or text.endswith("\n") else "\n"
            with open(ignore, "a", encoding="utf-8", errors="surrogateescape") as f:
                f.write(f"{sep}{STORE_DIR}/\n")
            done.append(f"added {STORE_DIR}/ to {ignore}")
    return done


# -- fleche config --upgrade ------------------------------------------------------------------


def upgrade_file(path: Path, *, write: bool = False) -> str:
    """The file at ``path`` (written for the original fleche) in our format; ``write``: replace it.

    The new text is checked before anything is written: read back, it must
    give the same caches, default and root as the old file does. Writing keeps
    the old file as ``fleche.toml.bak`` (refused if one exists: it may be the
    only copy of an earlier file) and replaces the file in one rename.
    """
    from pathlib import Path as _Path

    path = _Path(path)
    old = read_file(path)
    t = old.get("original")
    if t is None:
        raise ConfigError(f"{path} is already in fleche's own format: nothing to upgrade")
    from fleche.config._original import upgraded_text

    text = upgraded_text(path, t)
    new = _parse_like(path, text)
    if {k: v for k, v in new.items() if k != "original"} != {
        k: v for k, v in old.items() if k != "original"
    }:  # a bug here must never cost the user their file
        raise ConfigError(f"{path}: the upgraded file would not read the same; left as it is")
    if write:
        bak = path.with_name(path.name + ".bak")
        if bak.exists():
            raise ConfigError(f"{bak} exists: move it away first (it may be the only copy of it)")
        tmp = path.with_name(f".{path.name}.upgrade.tmp")
        tmp.write_text(text, encoding="utf-8")
        try:
            os.link(path, bak)  # the old file itself, under its new name
        except OSError:  # no hard links here: a copy, byte for byte
            bak.write_bytes(path.read_bytes())
        os.replace(tmp, path)  # never a half-written fleche.toml
    return text


def _parse_like(path: Path, text: str) -> dict[str, Any]:
    """``read_file`` of ``text`` as if it were the file at ``path`` (relative paths alike)."""
    return _check_file(_tomllib().loads(text), path)
