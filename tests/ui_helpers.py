"""A store for ``fleche ui``'s tests, and a client that speaks to a server started in a thread."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np

from fleche import cache, fleche, tags

HOSTILE = "<script>alert('x')</script>"
N_CALLS = 120


@fleche
def simulate(n, alpha=0.1, label="plain"):
    return {"n": n, "alpha": alpha}


@fleche
def spectrum(n):
    return np.linspace(0.0, 1.0, n)


class Touch:
    """A value whose unpickling creates a file: what a hostile pickle could do, harmlessly."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (open, (self.path, "w"))


@fleche
def trap(path):
    return Touch(path)


def hostile_function():
    return 1


hostile_function.__module__ = "evil<b>module"
hostile_function.__qualname__ = "x<img src=y>"
hostile = fleche(hostile_function)


@dataclass
class Populated:
    path: Path
    marker: Path


def populate(path: Path) -> Populated:
    """120 calls of simulate (n = 0..119, alpha = n/10, 30 tagged project=paper), an array,
    a pickled trap, and a function whose module, qualname and argument are hostile markup."""
    marker = path.parent / "unpickled-marker"
    with cache(str(path)):
        for n in range(N_CALLS):
            if n % 4 == 0:
                with tags(project="paper"):
                    simulate(n, alpha=n / 10)
            else:
                simulate(n, alpha=n / 10)
        simulate(-1, label=HOSTILE)
        spectrum(11)
        trap(str(marker))
        hostile()
    assert not marker.exists()
    return Populated(path, marker)


@dataclass
class Response:
    status: int
    headers: Any
    body: str


def fetch(
    server: Any,
    path: str,
    params: dict[str, Any] | None = None,
    *,
    token: str | bool | None = True,
    host: str | None = None,
    cookie: str | None = None,
    form: dict[str, Any] | None = None,
) -> Response:
    """GET (or POST ``form``) ``path`` from ``server``; the token in the address unless told."""
    items = dict(params or {})
    if token is True:
        items["token"] = server.token
    elif isinstance(token, str):
        items["token"] = token
    url = f"http://127.0.0.1:{server.port}{path}" + (
        "?" + urlencode(items, doseq=True) if items else ""
    )
    data = urlencode(form, doseq=True).encode() if form is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if form is not None else "GET")
    if host is not None:
        req.add_header("Host", host)
    if cookie is not None:
        req.add_header("Cookie", cookie)

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(req, timeout=30) as r:
            return Response(r.status, r.headers, r.read().decode())
    except urllib.error.HTTPError as e:
        return Response(e.code, e.headers, e.read().decode())


def call_keys(page: str) -> list[str]:
    """The call digests a table links to, in order."""
    return re.findall(r'href="/call\?f=[^"&]+&amp;k=([0-9a-f]+)', page)


def column(page: str, index: int) -> list[str]:
    """The text of cell ``index`` of each row of the calls table."""
    body = page.split('id="calls"', 1)[1].split("</tbody>", 1)[0]
    rows = re.findall(r"<tr>(.*?)</tr>", body.split("<tbody>", 1)[1], re.S)
    out = []
    for row in rows:
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)
        out.append(re.sub(r"<[^>]+>", "", cells[index]))
    return out
