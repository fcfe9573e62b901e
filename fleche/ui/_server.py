"""The HTTP side of ``fleche ui``: the standard library's threading server, and its guards.

Why :class:`http.server.ThreadingHTTPServer` and not a web framework: the page
is a handful of GET routes rendering HTML on the server, with two POST forms
behind ``--write``. A framework would add a dependency (and its own defaults
to audit) for routing we write in twenty lines; the guards below are explicit
either way. Every request, in this order:

1. **Host**: the ``Host`` header must be ``127.0.0.1:PORT`` or
   ``localhost:PORT``. A page elsewhere that rebinds its own name to
   127.0.0.1 (DNS rebinding) sends its own name, and is refused (403).
2. **Token**: a random ``secrets.token_urlsafe(32)`` printed at start, in the
   address (``?token=``) or in the cookie the first such request sets
   (HttpOnly, SameSite=Strict, named after the port). Without it: 403.
3. **POST** (verify; evict and gc with ``--write``) must also carry the token
   in its form: a cookie alone does not authorize a change.

Responses carry a Content-Security-Policy that allows no script at all, only
this server's stylesheet and forms posting back to it, and
``Referrer-Policy: no-referrer`` so the token never leaves in a Referer.
The server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import hmac
import secrets
import sys
import threading
import time
import traceback
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from fleche.errors import CacheMiss, CorruptObjectError, FlecheError
from fleche.render import escape, format_size
from fleche.store import is_function_id, is_oid
from fleche.ui import _pages as pages
from fleche.ui._source import ORDERS, PAGE_SIZE, Source
from fleche.upkeep import ParseError, apply_gc, parse_filter, plan_gc, query_result

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
MAX_BODY = 64 << 10
"""Bytes a POST form may have (they hold a few fields)."""
MAX_PAGE = 500


class HttpError(Exception):
    """A response other than 200, with the reason shown on the page."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class UiServer(ThreadingHTTPServer):
    """The page's server: a :class:`Source`, the session token, bound to 127.0.0.1 only."""

    daemon_threads = True

    def __init__(
        self, source: Source, port: int = 0, token: str | None = None, *, quiet: bool = True
    ) -> None:
        self.source = source
        self.token = token or secrets.token_urlsafe(32)
        self.quiet = quiet
        super().__init__(("127.0.0.1", port), Handler)
        self.port = int(self.server_address[1])
        self.cookie = f"fleche_ui_{self.port}"
        self.hosts = {f"127.0.0.1:{self.port}", f"localhost:{self.port}"}
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The address to open, with the token."""
        return f"http://127.0.0.1:{self.port}/?token={self.token}"

    def start(self) -> UiServer:
        """Serve on a daemon thread (tests, notebooks); :meth:`close` stops it."""
        self._thread = threading.Thread(target=self.serve_forever, name="fleche-ui", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()


class Handler(BaseHTTPRequestHandler):
    server: UiServer
    server_version = "fleche-ui"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    # -- plumbing -------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        """Requests without their query strings (which may hold the token), unless quiet."""
        if not self.server.quiet:
            path = urlsplit(self.path).path
            sys.stderr.write(
                f"fleche ui: {self.command} {path} {args[1] if len(args) > 1 else ''}\n"
            )

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_HEAD(self) -> None:
        self._refuse(HTTPStatus.METHOD_NOT_ALLOWED)

    def do_PUT(self) -> None:
        self._refuse(HTTPStatus.METHOD_NOT_ALLOWED)

    def do_DELETE(self) -> None:
        self._refuse(HTTPStatus.METHOD_NOT_ALLOWED)

    def _refuse(self, status: HTTPStatus) -> None:
        # a refused request's body is never read: end the connection rather than parse it next
        self.close_connection = True
        self._send(
            status,
            f"{status.value} {status.phrase}\n".encode(),
            "text/plain; charset=utf-8",
            {"Connection": "close"},
        )

    def _send(
        self,
        status: HTTPStatus,
        body: bytes,
        ctype: str = "text/html; charset=utf-8",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    # -- guards ---------------------------------------------------------------------------

    def _host_ok(self) -> bool:
        host = self.headers.get("Host", "")
        return host.lower() in self.server.hosts

    def _token_from(self, query: dict[str, list[str]]) -> tuple[bool, bool]:
        """``(authorized, came in the address)``."""
        want = self.server.token.encode()
        given = query.get("token", [""])[0]
        if given and hmac.compare_digest(given.encode(), want):
            return True, True
        try:
            jar = SimpleCookie(self.headers.get("Cookie", ""))
        except CookieError:
            return False, False
        morsel = jar.get(self.server.cookie)
        if morsel is not None and hmac.compare_digest(morsel.value.encode(), want):
            return True, False
        return False, False

    def _form(self) -> dict[str, list[str]]:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            raise HttpError(HTTPStatus.BAD_REQUEST, "bad Content-Length") from None
        if length < 0 or length > MAX_BODY:
            raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "form too large")
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip()
        raw = self.rfile.read(length)
        if ctype != "application/x-www-form-urlencoded":
            raise HttpError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "expected a form")
        return parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)

    # -- dispatch -------------------------------------------------------------------------

    def _handle(self, method: str) -> None:
        started = time.perf_counter()
        if not self._host_ok():
            self._refuse(HTTPStatus.FORBIDDEN)  # DNS rebinding, or another site's request
            return
        url = urlsplit(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        ok, in_address = self._token_from(query)
        if not ok:
            self._refuse(HTTPStatus.FORBIDDEN)
            return
        headers: dict[str, str] = {}
        if in_address:
            headers["Set-Cookie"] = (
                f"{self.server.cookie}={self.server.token}; Path=/; HttpOnly; SameSite=Strict"
            )
        source = self.server.source
        layer = 0
        try:
            form: dict[str, list[str]] = {}
            if method == "POST":
                form = self._form()
                given = form.get("token", [""])[0]
                if not hmac.compare_digest(given.encode(), self.server.token.encode()):
                    raise HttpError(HTTPStatus.FORBIDDEN, "a change needs the token in its form")
            params = form if method == "POST" else query
            layer = _int(params, "layer", 0)
            source.layer(layer)  # LookupError: 404
            route = ROUTES.get((method, url.path))
            if route is None or (route.write and not source.write):
                raise HttpError(HTTPStatus.NOT_FOUND, f"no page {url.path}")
            status, body, ctype, extra = route.fn(self, source, layer, params)
            headers.update(extra)
        except HttpError as e:
            status, ctype = e.status, "text/html; charset=utf-8"
            body = pages.message_page(source, layer, f"{e.status.value} {e.status.phrase}", str(e))
        except (LookupError, CacheMiss, FileNotFoundError) as e:
            status, ctype = HTTPStatus.NOT_FOUND, "text/html; charset=utf-8"
            body = pages.message_page(source, 0, "404 Not Found", _one_line(e))
        except (FlecheError, OSError, ValueError) as e:
            status, ctype = HTTPStatus.INTERNAL_SERVER_ERROR, "text/html; charset=utf-8"
            body = pages.message_page(source, 0, "could not answer", _one_line(e))
        except Exception:  # noqa: BLE001 - a bug: a 500 page, its traceback on the terminal
            traceback.print_exc(file=sys.stderr)
            status, ctype = HTTPStatus.INTERNAL_SERVER_ERROR, "text/html; charset=utf-8"
            body = pages.message_page(source, 0, "500", "a bug in fleche ui: see the terminal")
        data = body.encode("utf-8", "surrogateescape") if isinstance(body, str) else body
        if method == "POST":  # its body may be unread after an error: no second request on it
            self.close_connection = True
            headers["Connection"] = "close"
        headers["Server-Timing"] = f"render;dur={(time.perf_counter() - started) * 1000:.2f}"
        self._send(status, data, ctype, headers)


def _one_line(e: BaseException) -> str:
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(text.split()) or type(e).__name__


def _int(params: dict[str, list[str]], name: str, default: int) -> int:
    raw = params.get(name, [""])[0]
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"{name}={raw!r}: expected a number") from None


def _one(params: dict[str, list[str]], name: str) -> str:
    value = params.get(name, [""])[0]
    if not value:
        raise HttpError(HTTPStatus.BAD_REQUEST, f"missing {name}=")
    return value


Result = tuple[HTTPStatus, str | bytes, str, dict[str, str]]
HTML = "text/html; charset=utf-8"


# -- routes -------------------------------------------------------------------------------


def _style(h: Handler, source: Source, layer: int, params: dict[str, list[str]]) -> Result:
    return HTTPStatus.OK, pages.CSS, "text/css; charset=utf-8", {}


def _functions(h: Handler, source: Source, layer: int, params: dict[str, list[str]]) -> Result:
    return HTTPStatus.OK, pages.functions_page(source, layer, source.functions(layer)), HTML, {}


def _calls(h: Handler, source: Source, layer: int, params: dict[str, list[str]]) -> Result:
    fid = _one(params, "f")
    known = {r for r in source.layer(layer).store.iter_functions()}
    if fid not in known:
        raise HttpError(HTTPStatus.NOT_FOUND, f"no function {fid!r} in this store")
    text = params.get("q", [""])[0]
    order = params.get("sort", ["created"])[0] or "created"
    if order not in ORDERS and not order.startswith(("arg:", "meta:")):
        raise HttpError(HTTPStatus.BAD_REQUEST, f"sort={order!r}: not a column")
    descending = params.get("desc", ["1"])[0] != "0"
    chosen = "c" in params
    columns = [c for c in params.get("col", []) if c] if chosen else list(pages.DEFAULT_COLUMNS)
    limit = min(max(_int(params, "n", PAGE_SIZE), 1), MAX_PAGE)
    offset = max(_int(params, "o", 0), 0)
    try:
        page = source.page(
            layer, fid, text, order=order, descending=descending, offset=offset, limit=limit
        )
    except ParseError as e:
        body = pages.calls_page(
            source,
            layer,
            fid,
            None,
            text=text,
            order=order,
            descending=descending,
            columns=columns,
            chosen=chosen,
            error=str(e),
        )
        return (
            HTTPStatus.BAD_REQUEST,
            body,
            HTML,
            {},
        )
    body = pages.calls_page(
        source,
        layer,
        fid,
        page,
        text=text,
        order=order,
        descending=descending,
        columns=columns,
        chosen=chosen,
    )
    return HTTPStatus.OK, body, HTML, {}


def _call(h: Handler, source: Source, layer: int, params: dict[str, list[str]]) -> Result:
    fid, key = _one(params, "f"), _one(params, "k")
    if not is_oid(key) or not is_function_id(fid):
        raise HttpError(HTTPStatus.BAD_REQUEST, f"{fid!r}/{key!r} does not name a call")
    try:
        rec, size = source.call(layer, fid, key)
    except (KeyError, FileNotFoundError):
        raise HttpError(HTTPStatus.NOT_FOUND, f"no call {key} of {fid} in this store") from None
    except CorruptObjectError as e:
        raise HttpError(HTTPStatus.INTERNAL_SERVER_ERROR, str(e)) from None
    return HTTPStatus.OK, pages.call_page(source, layer, rec, size), HTML, {}


def _health(h: Handler, source: Source, layer: int, params: dict[str, list[str]]) -> Result:
    body = pages.health_page(
        source,
        layer,
        source.functions(layer),
        source.stored_times(layer),
        source.verified.get(layer),
        h.server.token,
    )
    return HTTPStatus.OK, body, HTML, {}


def _redirect(to: str) -> Result:
    return HTTPStatus.SEE_OTHER, b"", "text/plain; charset=utf-8", {"Location": to}


def _verify(h: Handler, source: Source, layer: int, params: dict[str, list[str]]) -> Result:
    source.run_verify(layer)
    return _redirect(f"/health?layer={layer}")


def _evict_query(source: Source, layer: int, params: dict[str, list[str]]) -> tuple[str, str, Any]:
    fid = _one(params, "f")
    text = params.get("q", [""])[0]
    args, meta = parse_filter(text)
    return fid, text, query_result(source.layer(layer), fid, args, meta)


def _evict_confirm(h: Handler, source: Source, layer: int, params: dict[str, list[str]]) -> Result:
    fid, text, result = _evict_query(source, layer, params)
    n = result.count(verify=False)
    what = (
        f"Remove the records of <b>{n:,}</b> calls of {escape(fid)}"
        + (f" matching <code>{escape(text)}</code>" if text else "")
        + "? Their values stay until gc removes what nothing uses."
    )
    body = pages.confirm_page(
        source, layer, "evict calls", what, "/evict", {"f": fid, "q": text}, h.server.token
    )
    return HTTPStatus.OK, body, HTML, {}


def _evict(h: Handler, source: Source, layer: int, params: dict[str, list[str]]) -> Result:
    fid, _, result = _evict_query(source, layer, params)
    n = result.evict()
    body = pages.done_page(
        source, layer, "evicted", f"Removed {n:,} call records of {escape(fid)}."
    )
    return HTTPStatus.OK, body, HTML, {}


def _gc_confirm(h: Handler, source: Source, layer: int, params: dict[str, list[str]]) -> Result:
    plan = plan_gc(source.layer(layer).store)
    what = (
        f"gc would remove {len(plan.records):,} records, {len(plan.objects):,} unused objects "
        f"and {len(plan.tmp):,} leftover temporary files, freeing "
        f"{escape(format_size(plan.freed))}."
    )
    body = pages.confirm_page(source, layer, "run gc", what, "/gc", {}, h.server.token)
    return HTTPStatus.OK, body, HTML, {}


def _gc(h: Handler, source: Source, layer: int, params: dict[str, list[str]]) -> Result:
    store = source.layer(layer).store
    result = apply_gc(store, plan_gc(store))
    what = (
        f"Removed {result.records:,} records, {result.objects:,} objects and {result.tmp:,} "
        f"temporary files ({escape(format_size(result.bytes))})."
    )
    if result.errors:
        what += " Errors: " + escape("; ".join(result.errors[:20]))
    return HTTPStatus.OK, pages.done_page(source, layer, "gc done", what), HTML, {}


class Route:
    def __init__(self, fn: Any, write: bool = False) -> None:
        self.fn = fn
        self.write = write


ROUTES: dict[tuple[str, str], Route] = {
    ("GET", "/style.css"): Route(_style),
    ("GET", "/"): Route(_functions),
    ("GET", "/fn"): Route(_calls),
    ("GET", "/call"): Route(_call),
    ("GET", "/health"): Route(_health),
    ("POST", "/verify"): Route(_verify),
    ("GET", "/evict"): Route(_evict_confirm, write=True),
    ("POST", "/evict"): Route(_evict, write=True),
    ("GET", "/gc"): Route(_gc_confirm, write=True),
    ("POST", "/gc"): Route(_gc, write=True),
}
