"""``Ignored[T]`` / ``Required[T]``: ``ignore=`` / ``require=`` written in the annotation.

fleche 0.22 let a parameter's annotation say it is left out of the key
(``verbose: Ignored[bool] = False``) or needed for a call to be cached
(``seed: Required[int] = None``); see 0.22's ``fleche.call.Ignored``. They are
``typing.Annotated`` aliases, so a type checker sees ``bool`` and ``int``; the
decorator reads them once, when it decorates, and unions them with
``ignore=`` / ``require=``: the call path does no more work than before.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable

TYPE_CHECKING = False  # typing's constant; import fleche does not load typing
if TYPE_CHECKING:
    from typing import Annotated, Any, TypeVar

_FUNCTION = type(lambda: None)


class _Marker:
    """What ``Annotated[T, marker]`` carries: which of ignore/require the parameter is in."""

    __slots__ = ("option",)

    def __init__(self, option: str) -> None:
        self.option = option

    def __repr__(self) -> str:
        return f"fleche.{'Ignored' if self.option == 'ignore' else 'Required'}"

    def __reduce__(self) -> tuple[Any, ...]:  # an annotation pickled with a function
        return (_marker, (self.option,))


IGNORE = _Marker("ignore")
REQUIRE = _Marker("require")


def _marker(option: str) -> _Marker:
    return IGNORE if option == "ignore" else REQUIRE


if TYPE_CHECKING:
    T = TypeVar("T")

    Ignored = Annotated[T, IGNORE]
    """``x: Ignored[T]``: the parameter is left out of the key, as with ``ignore="x"``."""

    Required = Annotated[T, REQUIRE]
    """``x: Required[T]``: a call is cached only when ``x`` is given (not None), as ``require="x"``."""

else:

    def __getattr__(name):
        # Ignored and Required are typing.Annotated aliases, made on first use: importing
        # typing costs ~13 M instructions, and most programs never name them.
        if name not in ("Ignored", "Required"):
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        from typing import Annotated, TypeVar

        t = TypeVar("T")
        made = {"Ignored": Annotated[t, IGNORE], "Required": Annotated[t, REQUIRE]}
        for k, v in made.items():
            globals().setdefault(k, v)  # two threads at once: the first one's stay
        return globals()[name]


# A string annotation (``from __future__ import annotations``) whose names cannot be
# resolved where the function is (a class defined later, a local type) is read by its
# outermost name: ``Ignored[...]``, ``fleche.Ignored[...]``.
_STRING = r"^\s*(?:[A-Za-z_][\w]*\.)*(Ignored|Required)\b"  # compiled when one may match


_NOT_MADE = object()


def _option(hint: Any) -> str | None:
    from typing import Annotated, get_args, get_origin

    if get_origin(hint) is Annotated:
        for meta in get_args(hint)[1:]:
            if isinstance(meta, _Marker):
                return meta.option
            # Annotated[int, fleche.Ignored]: the aliases exist once made (module __getattr__)
            made = globals()
            if meta is made.get("Ignored", _NOT_MADE) or meta is made.get("Required", _NOT_MADE):
                return _option(meta)
    return None


def _may_be_marked(annotations: dict[str, Any]) -> bool:
    """False when no annotation can hold a marker: each is a typing.Annotated made by a
    program that imported typing, or a string naming Ignored/Required (or an alias of one,
    which the program made with typing). So a process without typing reads none."""
    if "typing" in sys.modules:
        return True
    return any(
        isinstance(a, str) and ("Ignored" in a or "Required" in a) for a in annotations.values()
    )


def marked(func: Callable[..., Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The parameters of ``func`` annotated ``Ignored[...]`` and ``Required[...]``."""
    if getattr(func, "__annotations__", None) == {}:  # most functions: no signature to read
        return (), ()
    own = getattr(func, "__dict__", {})
    if type(func) is _FUNCTION and "__wrapped__" not in own and "__signature__" not in own:
        # A Python function's parameters are annotated in __annotations__: inspect (~37 M
        # instructions to import) is for callables whose signature is found elsewhere.
        raw = {n: a for n, a in func.__annotations__.items() if n != "return"}
        if not _may_be_marked(raw):
            return (), ()
    else:
        import inspect

        try:
            params = inspect.signature(func).parameters
        except (TypeError, ValueError):  # a builtin without a signature: no annotations either
            return (), ()
        raw = {n: p.annotation for n, p in params.items() if p.annotation is not p.empty}
    if not raw:
        return (), ()
    resolved = True
    try:  # string annotations resolved in the function's module (include_extras keeps markers)
        from typing import get_type_hints

        hints = get_type_hints(func, include_extras=True)
    except (NameError, AttributeError, TypeError, SyntaxError, ValueError):
        # an unresolvable name or malformed string, or a callable it cannot read
        hints, resolved = {}, False
    ignore: list[str] = []
    require: list[str] = []
    for name, annotation in raw.items():
        option = _option(hints.get(name, annotation))
        if option is None and not resolved and isinstance(annotation, str):
            m = (
                re.match(_STRING, annotation)
                if "Ignored" in annotation or "Required" in annotation
                else None
            )
            if m:
                option = "ignore" if m.group(1) == "Ignored" else "require"
        if option == "ignore":
            ignore.append(name)
        elif option == "require":
            require.append(name)
    return tuple(ignore), tuple(require)
