"""``fleche config``: the configuration in force, and where each value comes from."""

from __future__ import annotations

import inspect
import os
from typing import Any

import click

from fleche.cli._main import emit_json, json_option, print_table, store_option

# -- config --------------------------------------------------------------------------------


def _defaults() -> dict[str, Any]:
    """Per-cache option defaults, read from the signatures that apply them."""
    from fleche.cache import Cache
    from fleche.store import open_store

    out = {}
    for fn, keys in (
        (open_store, ("read_only", "durable")),
        (Cache, ("compression_level", "inline_limit", "serializer")),
    ):
        params = inspect.signature(fn).parameters
        out.update({k: params[k].default for k in keys})
    return out


def _upgrade(path: str | None, write: bool) -> None:
    """``--upgrade``: the nearest file written for the original fleche (or ``--file``), in ours."""
    from pathlib import Path

    from fleche import config as cfg_mod
    from fleche.cli._main import Failure

    if path is not None:
        target = Path(path)
    else:
        files = cfg_mod.load_config().files
        old = [p for p in files if cfg_mod.read_file(p).get("original") is not None]
        if not old:
            raise Failure(
                "no fleche.toml written for the original fleche here (files: "
                + (", ".join(map(str, files)) or "none found")
                + "); pass --file PATH to name one"
            )
        target = old[0]
    text = cfg_mod.upgrade_file(target, write=write)
    if write:
        click.echo(f"wrote {target} in fleche's format; the old file is {target}.bak")
    else:
        click.echo(text, nl=False)


@click.command("config", short_help="Show the configuration and where it comes from.")
@store_option
@json_option
@click.option(
    "--upgrade",
    is_flag=True,
    help="Print the nearest fleche.toml written for the original fleche in fleche's format.",
)
@click.option("--write", is_flag=True, help="With --upgrade: replace the file (keeping FILE.bak).")
@click.option(
    "--file",
    "path",
    type=click.Path(dir_okay=False, exists=True),
    help="With --upgrade: the file to convert (default: the nearest in the original's format).",
)
def config(store: str | None, as_json: bool, upgrade: bool, write: bool, path: str | None) -> None:
    """Show the configuration in force and where each value comes from.

    Files are read from the working directory upward (a file with root = true
    stops the search), then $XDG_CONFIG_HOME/fleche/fleche.toml; nearer files
    win. FLECHE_CACHE (a cache name or URL) overrides the default cache. A
    file written for the original fleche (0.22) is read too: this shows what
    each of its caches became and which options were left out; --upgrade
    prints it in fleche's own format (--write replaces it, keeping a .bak).
    """
    from fleche import config as cfg_mod

    if write or path:
        if not upgrade:
            raise click.UsageError("--write and --file go with --upgrade")
    if upgrade:
        _upgrade(path, write)
        return
    cfg = cfg_mod.load_config()
    env = os.environ.get("FLECHE_CACHE")
    default_from: str | None = None
    original: dict[str, Any] = {}
    for file in cfg.files:  # nearest first: the first that says default = wins
        data = cfg_mod.read_file(file)
        if "default" in data and default_from is None:
            default_from = str(file)
        t = data.get("original")
        if t is not None:
            original[str(file)] = {"caches": t.notes, "left_out": t.ignored, "data": t.origins}
    if store is not None:
        active, source = store, "--store"
    elif env:
        active, source = env, "env FLECHE_CACHE"
    elif cfg.default is not None:
        active, source = cfg.default, default_from or "the only cache defined"
    else:
        active, source = "memory://", "default (nothing configured: a private in-memory cache)"
    defaults = _defaults()
    caches: dict[str, Any] = {}
    for name, spec in sorted(cfg.caches.items()):
        entry: dict[str, Any] = {"file": str(spec.source)}
        if spec.layered:
            entry["layers"] = [dict(layer) for layer in spec.options["layers"]]
            entry["options"] = {
                k: {"value": v, "from": str(spec.source)}
                for k, v in spec.options.items()
                if k != "layers"
            }
        else:
            opts = {k: {"value": v, "from": str(spec.source)} for k, v in spec.options.items()}
            for k, v in defaults.items() if "ssh" not in spec.options else ():
                opts.setdefault(k, {"value": v, "from": "default"})
            url = spec.options.get("url")
            if url and "://" not in url and not os.path.isabs(os.path.expanduser(url)):
                opts["url"]["resolved"] = str(spec.source.parent / os.path.expanduser(url))
            entry["options"] = opts
        caches[name] = entry
    resolved_url = None
    if active in cfg.caches and "url" in cfg.caches[active].options:
        resolved_url = caches[active]["options"]["url"].get(
            "resolved", cfg.caches[active].options["url"]
        )
    elif active not in cfg.caches:
        resolved_url = active
    doc = {
        "files": [str(p) for p in cfg.files],
        "active": {"cache": active, "from": source, "url": resolved_url},
        "default": {"value": cfg.default, "from": default_from},
        "env": {"FLECHE_CACHE": env},
        "caches": caches,
        "original": original,
    }
    if as_json:
        emit_json(doc)
        return
    click.echo("files      " + (", ".join(doc["files"]) or "none found"))
    click.echo(f"active     {active}  (from {source})")
    if resolved_url and resolved_url != active:
        click.echo(f"           {resolved_url}")
    if env:
        click.echo(f"env        FLECHE_CACHE={env}")
    if not caches:
        return
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    for col in ("cache", "key", "value", "from"):
        table.add_column(col, overflow="fold")
    for name, entry in caches.items():
        first = True
        for key, o in entry["options"].items():
            value = repr(o["value"]) if not isinstance(o["value"], str) else o["value"]
            if "resolved" in o:
                value = f"{value} -> {o['resolved']}"
            table.add_row(name if first else "", key, value, o["from"])
            first = False
        for i, layer in enumerate(entry.get("layers", []), 1):
            where = layer.get("url") or f"ssh {layer.get('ssh', {}).get('host', '?')}"
            table.add_row(name if first else "", f"layer {i}", where, entry["file"])
            first = False
    click.echo()
    print_table(table)
    for source, said in original.items():
        click.echo(f"\n{source} is written for the original fleche; it was read as:")
        for name, notes in said["caches"].items():
            for note in notes:
                click.echo(f"  [{name}] {note}")
        for item in said["left_out"]:
            click.echo(f"  left out: {item}")
        click.echo(
            "  ('fleche config --upgrade' prints it in fleche's format; --write replaces it)"
        )
