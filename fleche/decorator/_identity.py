"""Who a cached function is: its store-safe id, where to find it again, what sets it apart.

A function's identity (``module:qualname``) becomes a directory name in the
store (:func:`function_id`); a lambda or a closure also needs what tells it
apart from others of the same name (:func:`_scope`); a function pickled by
reference is found again by its module and qualname (:func:`_find`). A closure
over a value with no digest has no key at all (:class:`ClosureRefused`).
"""

from __future__ import annotations

import functools
import re
import sys
import types
from collections.abc import Callable, Iterable

from fleche.digest import code_digest, digest_bytes
from fleche.errors import UnhashableArgumentError

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Any

# What a function id may hold; any other character becomes "_" (the regex, compiled only then)
_FID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


def function_id(identity: str) -> str:
    """A store-safe directory name for a function identity like ``pkg.mod:Class.method``."""
    fid = identity.replace(":", ".")
    if not _FID_CHARS.issuperset(fid):
        fid = re.sub(r"[^A-Za-z0-9_.\-]", "_", fid)
    fid = fid.lstrip(".") or "_"
    if len(fid) > 200:
        fid = fid[:167] + "-" + digest_bytes(identity).hex()
    return fid


def _find(module: str, qualname: str) -> Any:
    """``module.qualname`` if it can be imported (None for ``<locals>`` and the like)."""
    obj: Any = sys.modules.get(module)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj


class ClosureRefused(UnhashableArgumentError):
    """A variable a closure captures has no digest, so the closure has no key: it runs uncached."""


def _captured(
    func: Callable[..., Any], qualname: str, ignore: frozenset[str], names: Iterable[str] | None
) -> tuple[dict[str, str], tuple[str, ...]]:
    """Digests of a closure's captured variables, and the names of those not assigned yet.

    At decoration (``names`` None) every variable is digested but those in ``ignore``
    and those not assigned yet, which are returned to be digested at the first call
    (``names``): then one still unassigned, or holding a cached function, is left out
    (the function itself when it recurses, or another of its factory that it calls).
    ``__class__`` (the class of a method calling ``super()``, unassigned while the class
    body runs) is left out then too, as it always was. Raises :class:`ClosureRefused` for a variable with no
    digest: a key without it would be shared by closures over different values.
    """
    cells = getattr(func, "__closure__", None)
    free: dict[str, str] = {}
    if not cells:  # not a closure: most functions
        return free, ()
    unassigned: list[str] = []
    wanted = None if names is None else set(names)
    captured = getattr(getattr(func, "__code__", None), "co_freevars", ())
    for name, cell in zip(captured, cells, strict=False):
        if name in ignore or (wanted is not None and name not in wanted):
            continue
        try:
            value = cell.cell_contents
        except ValueError:  # empty until the enclosing scope assigns it
            if name != "__class__" and wanted is None:
                unassigned.append(name)
            continue
        if wanted is not None and hasattr(value, "__fleche__"):
            continue
        try:
            free[name] = digest_bytes(value, name=name).hex()
        except UnhashableArgumentError as e:
            raise _refusal(qualname, name, e) from None
        except Exception as e:  # noqa: BLE001 - a digest rule that failed: no digest either
            raise _refusal(qualname, name, UnhashableArgumentError(repr(e))) from None
    return free, tuple(unassigned)


def _refusal(qualname: str, name: str, e: UnhashableArgumentError) -> ClosureRefused:
    """Why a closure is not cached, and the ways to cache it."""
    if not e.where:  # nested too deeply to say where
        why = str(e)
    else:
        why = f"{e.where}, of type {e.type_name}: {e.reason}"
    fixes = ""
    if e.registrable and e.type_name:
        fixes = (
            f"give {e.type_name} a __fleche_digest__ method, or register a digest with "
            f"fleche.digest.register({e.type_name}, fn); or "
        )
    return ClosureRefused(
        f"{qualname}: not cached: its captured variable {name} has no digest ({why}), so "
        f"closures over different values of {name} would share results. To cache it, "
        f"{fixes}leave {name} out of the key with @fleche(ignore=[{name!r}]) and tell the "
        "closures apart with version= (a file's path, say)"
    )


def _scope(func: Callable[..., Any], qualname: str, free: dict[str, str]) -> str:
    """What sets a lambda or closure apart from others of the same name: "" for plain functions.

    ``lambda x: x + 1`` and ``lambda x: x * 2`` in one module are both ``<lambda>``,
    and ``make(1)`` and ``make(100)`` return two ``make.<locals>.inner``: without
    this they would share results. A lambda adds its code's digest; a closure the
    digests of its captured variables, ``free`` (from :func:`_captured`): as they are
    when it is decorated, or at its first call for one assigned after the decorator ran.
    """
    parts = []
    if qualname.rpartition(".")[2] == "<lambda>":
        try:
            parts.append("code:" + code_digest(func))
        except (TypeError, OSError):  # no Python code object to digest
            pass
    if free:
        parts.append("closure:" + digest_bytes(free, name="closure").hex())
    return "#".join(parts)


# -- callables that are not plain functions ------------------------------------------------


class CallableRefused(UnhashableArgumentError):
    """A callable carries something with no digest (a partial's bound argument, an instance's
    state): a key without it would be shared by callables that compute different things."""


_BUILTIN = (types.BuiltinFunctionType, types.MethodWrapperType)
_DESCRIPTOR = (
    types.MethodDescriptorType,
    types.WrapperDescriptorType,
    types.ClassMethodDescriptorType,
)


def describe(func: Callable[..., Any]) -> tuple[str | None, str, str, Callable[..., Any] | None]:
    """Who a callable is: ``(module, qualname, holds, code)``.

    ``holds`` says what this callable holds besides its code, which its keys need
    (:func:`carried` digests it): a ``functools.partial``'s bound arguments, a bound
    method's or a callable instance's object. "" for functions, classes and builtins,
    which hold nothing (a closure's captured variables are :func:`_captured`'s).
    ``code`` is the Python function whose source ``hash_code`` digests (None for
    builtins: no source).
    """
    code: Callable[..., Any] | None
    if isinstance(func, (types.FunctionType, type)):
        code = func if isinstance(func, types.FunctionType) else None
        return getattr(func, "__module__", None), func.__qualname__, "", code
    if isinstance(func, functools.partial):
        module, qualname, _, code = describe(func.func)
        # the partial's digest: its function (by name; a local one by code and closure),
        # its bound arguments and keywords
        return module, qualname, "its bound arguments", code
    if isinstance(func, types.MethodType):  # obj.method: obj is part of what it computes
        module, qualname, _, code = describe(func.__func__)
        return module, qualname, "the object it is bound to", code
    if isinstance(func, _BUILTIN):
        owner = getattr(func, "__self__", None)
        if owner is None or isinstance(owner, types.ModuleType):  # math.factorial, len
            module = getattr(func, "__module__", None) or getattr(owner, "__name__", None)
            return module or "builtins", func.__qualname__, "", None
        # a C method bound to an object: "abc".upper, a Random instance's random
        t = type(owner)
        return t.__module__, func.__qualname__, "the object it is bound to", None
    if isinstance(func, _DESCRIPTOR):  # dict.get, str.upper: the object is an argument
        return func.__objclass__.__module__, func.__qualname__, "", None
    # an instance of a class with __call__: its class's __call__ runs with its state
    t = type(func)
    qualname = f"{t.__qualname__}.__call__"
    call = getattr(t, "__call__", None)  # noqa: B004 - the function it runs, not a test
    code = call if isinstance(call, types.FunctionType) else None
    return t.__module__, qualname, "its instance", code


def carried(func: Any, qualname: str, what: str) -> str:
    """The digest of a callable with what it holds (``what``, from :func:`describe`);
    :class:`CallableRefused` if it has none."""
    try:
        return "carried:" + digest_bytes(func, name="callable").hex()
    except UnhashableArgumentError as e:
        why = f"{e.where}, of type {e.type_name}: {e.reason}" if e.where else str(e)
        fixes = ""
        if what == "its instance":  # its class knows what sets its instances apart
            fixes = f"give {type(func).__qualname__} a __fleche_digest__ method, or "
        elif e.registrable and e.type_name:
            fixes = f"register a digest with fleche.digest.register({e.type_name}, fn), or "
        raise CallableRefused(
            f"fleche({qualname}): cannot key a {type(func).__qualname__}: no digest for "
            f"{what} ({why}), so callables holding different values would share results. "
            f"To cache it, {fixes}decorate a function taking that value as an argument"
        ) from None
    except Exception as e:  # noqa: BLE001 - a digest rule that failed: no digest either
        raise CallableRefused(
            f"fleche({qualname}): cannot key a {type(func).__qualname__}: digesting {what} "
            f"failed ({e!r}); decorate a function taking that value as an argument instead"
        ) from None
