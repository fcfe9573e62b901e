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


@click.command("config", short_help="Show the configuration and where it comes from.")
@store_option
@json_option
def config(store: str | None, as_json: bool) -> None:
    """Show the configuration in force and where each value comes from.

    Files are read from the working directory upward (a file with root = true
    stops the search), then $XDG_CONFIG_HOME/fleche/fleche.toml; nearer files
    win. FLECHE_CACHE (a cache name or URL) overrides the default cache.
    """
    from fleche import config as cfg_mod

    cfg = cfg_mod.load_config()
    env = os.environ.get("FLECHE_CACHE")
    default_from: str | None = None
    for path in cfg.files:  # nearest first: the first that says default = wins
        if "default" in cfg_mod.read_file(path):
            default_from = str(path)
            break
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
            for k, v in defaults.items():
                opts.setdefault(k, {"value": v, "from": "default"})
            url = spec.options["url"]
            if "://" not in url and not os.path.isabs(os.path.expanduser(url)):
                opts["url"]["resolved"] = str(spec.source.parent / os.path.expanduser(url))
            entry["options"] = opts
        caches[name] = entry
    resolved_url = None
    if active in cfg.caches and not cfg.caches[active].layered:
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
            table.add_row(name if first else "", f"layer {i}", layer.get("url", "?"), entry["file"])
            first = False
    click.echo()
    print_table(table)
