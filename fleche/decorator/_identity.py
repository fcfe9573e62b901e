"""Who a cached function is: its store-safe id, where to find it again, what sets it apart.

A function's identity (``module:qualname``) becomes a directory name in the
store (:func:`function_id`); a lambda or a closure also needs what tells it
apart from others of the same name (:func:`_scope`); a function pickled by
reference is found again by its module and qualname (:func:`_find`).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import Any

from fleche.cache import type_name
from fleche.digest import code_digest, digest_bytes

_FID_BAD = re.compile(r"[^A-Za-z0-9_.\-]")


def function_id(identity: str) -> str:
    """A store-safe directory name for a function identity like ``pkg.mod:Class.method``."""
    fid = _FID_BAD.sub("_", identity.replace(":", ".")).lstrip(".") or "_"
    if len(fid) > 200:
        fid = fid[:167] + "-" + digest_bytes(identity).hex()
    return fid


def _find(module: str, qualname: str) -> Any:
    """``module.qualname`` if it can be imported (None for ``<locals>`` and the like)."""
    obj: Any = sys.modules.get(module)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj


def _scope(func: Callable[..., Any], qualname: str) -> str:
    """What sets a lambda or closure apart from others of the same name: "" for plain functions.

    ``lambda x: x + 1`` and ``lambda x: x * 2`` in one module are both ``<lambda>``,
    and ``make(1)`` and ``make(100)`` return two ``make.<locals>.inner``: without
    this they would share results. A lambda adds its code's digest; a closure the
    digests of its free variables as they are when it is decorated (a variable not
    yet assigned, such as the function itself in a recursive closure, is left out;
    one that cannot be digested counts by its type).
    """
    parts = []
    if qualname.rpartition(".")[2] == "<lambda>":
        try:
            parts.append("code:" + code_digest(func))
        except (TypeError, OSError):  # no Python code object to digest
            pass
    cells = getattr(func, "__closure__", None)
    names = getattr(getattr(func, "__code__", None), "co_freevars", ())
    if cells:
        free: dict[str, str] = {}
        for name, cell in zip(names, cells, strict=False):
            try:
                value = cell.cell_contents
            except ValueError:  # empty until the enclosing scope assigns it
                continue
            try:
                free[name] = digest_bytes(value, name=name).hex()
            except Exception:  # noqa: BLE001 - undigestable: its type still tells closures apart
                free[name] = type_name(value)
        if free:
            parts.append("closure:" + digest_bytes(free, name="closure").hex())
    return "#".join(parts)
