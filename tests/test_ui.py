"""``fleche ui``: the server, its guards, and what each page shows (urllib against a thread).

The browser's view of the same pages is in ``test_ui_browser.py``.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from test_render import parse_html
from ui_helpers import HOSTILE, N_CALLS, call_keys, column, fetch, populate

import fleche
from fleche.cache import Cache
from fleche.config import resolve
from fleche.ui import CSP, Source, UiServer, make_server, open_caches

SIM = "ui_helpers.simulate"


@pytest.fixture(scope="module")
def populated(tmp_path_factory):
    return populate(tmp_path_factory.mktemp("ui") / "store")


@pytest.fixture
def server(populated):
    s = make_server(str(populated.path)).start()
    yield s
    s.close()


def serve(source: Source) -> UiServer:
    return UiServer(source).start()


# -- guards -------------------------------------------------------------------------------


def test_it_listens_on_loopback_only_and_every_request_needs_the_token(server):
    assert server.server_address[0] == "127.0.0.1"
    assert server.url == f"http://127.0.0.1:{server.port}/?token={server.token}"
    assert len(server.token) >= 40
    for path in ("/", "/fn", "/call", "/health", "/style.css", "/nothing"):
        r = fetch(server, path, {"f": SIM}, token=False)
        assert r.status == 403, path
        assert SIM not in r.body and "simulate" not in r.body
        assert r.headers["Content-Security-Policy"] == CSP
    assert fetch(server, "/", token="wrong" + server.token).status == 403
    assert fetch(server, "/", token=False, cookie=f"{server.cookie}=nope").status == 403


def test_the_first_load_sets_a_cookie_that_then_replaces_the_token(server):
    r = fetch(server, "/")
    assert r.status == 200 and SIM in r.body
    cookie = r.headers["Set-Cookie"]
    assert cookie.startswith(f"{server.cookie}={server.token};")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    again = fetch(server, "/", token=False, cookie=f"{server.cookie}={server.token}")
    assert again.status == 200 and SIM in again.body
    assert "Set-Cookie" not in again.headers


def test_another_host_header_is_refused(server):
    """DNS rebinding: a page at evil.example that resolves to 127.0.0.1 sends its own Host."""
    for host in ("evil.example", f"evil.example:{server.port}", "127.0.0.1", "localhost:1"):
        r = fetch(server, "/", host=host)
        assert r.status == 403, host
        assert SIM not in r.body
    assert fetch(server, "/", host=f"localhost:{server.port}").status == 200
    assert fetch(server, "/", host=f"127.0.0.1:{server.port}").status == 200


def test_every_page_says_no_script_and_no_referrer(server):
    r = fetch(server, "/")
    assert r.headers["Content-Security-Policy"] == CSP
    assert "script-src" not in CSP and "default-src 'none'" in CSP
    assert r.headers["Referrer-Policy"] == "no-referrer"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Cache-Control"] == "no-store"
    assert "<script" not in r.body


def test_no_write_endpoint_without_write(server, populated):
    before = sorted(p.name for p in populated.path.rglob("*") if p.is_file())
    for path in ("/evict", "/gc"):
        assert fetch(server, path, {"f": SIM}).status == 404
        r = fetch(server, path, form={"f": SIM, "token": server.token})
        assert r.status == 404, path
    assert fetch(server, "/fn", {"f": SIM}).body.count("evict") == 0
    assert sorted(p.name for p in populated.path.rglob("*") if p.is_file()) == before
    assert all(cache.store.read_only for cache in server.source.layers)


def test_other_methods_are_refused(server):
    import urllib.request

    req = urllib.request.Request(f"{server.url}", method="DELETE")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 405


# -- what the pages show ------------------------------------------------------------------


def test_the_functions_page_counts_calls(server):
    r = fetch(server, "/")
    parse_html(r.body)
    rows = dict(re.findall(r">([\w.]+)</a></td><td class=\"n\">([\d,]+)<", r.body))
    assert rows[SIM] == f"{N_CALLS + 1:,}"
    assert rows["ui_helpers.spectrum"] == "1" and rows["ui_helpers.trap"] == "1"
    assert float(r.headers["Server-Timing"].split("dur=")[1]) >= 0


def test_hostile_names_and_reprs_are_escaped(server):
    pages = [fetch(server, "/").body]
    fid = next(f for f in re.findall(r'href="/fn\?f=([^"&]+)', pages[0]) if "evil" in f)
    table = fetch(server, "/fn", {"f": fid}).body
    pages.append(table)
    (key,) = call_keys(table)
    pages.append(fetch(server, "/call", {"f": fid, "k": key}).body)
    sim = fetch(server, "/fn", {"f": SIM, "q": "n=-1"}).body
    pages.append(sim)
    pages.append(fetch(server, "/call", {"f": SIM, "k": call_keys(sim)[0]}).body)
    pages.append(fetch(server, "/fn", {"f": SIM, "q": f"label={HOSTILE!r}"}).body)
    for page in pages:
        parse_html(page)
        assert "<script" not in page and "<img" not in page and "<b>module" not in page
    assert "evil&lt;b&gt;module" in pages[2] and "x&lt;img src=y&gt;" in pages[2]
    assert "&lt;script&gt;alert(" in pages[4]


def test_filters_are_fleche_query_terms_and_pages_come_from_the_index(server):
    r = fetch(server, "/fn", {"f": SIM, "q": "n>=100 alpha<11.5", "sort": "arg:n", "desc": 0})
    assert r.status == 200
    assert re.search(r"<b>15</b> calls match the filter", r.body)  # n = 100..114
    assert [int(v) for v in column(r.body, 1)] == list(range(100, 115))

    # a page in the middle, sorted by an argument, descending
    r = fetch(server, "/fn", {"f": SIM, "q": "n>=0", "sort": "arg:n", "desc": 1, "n": 7, "o": 14})
    assert re.search(r"<b>120</b> calls match", r.body)
    assert [int(v) for v in column(r.body, 1)] == list(range(119 - 14, 119 - 21, -1))
    assert "showing 15&ndash;21" in r.body and 'id="next"' in r.body

    # the last page is short and has no next
    r = fetch(server, "/fn", {"f": SIM, "q": "n>=0", "sort": "arg:n", "desc": 0, "n": 50, "o": 100})
    assert [int(v) for v in column(r.body, 1)] == list(range(100, 120))
    assert 'id="next"' not in r.body

    # metadata terms, as fleche query --where takes them
    r = fetch(server, "/fn", {"f": SIM, "q": "metadata.tags.project=paper n<40"})
    assert re.search(r"<b>10</b> calls match", r.body)
    assert sorted(int(v) for v in column(r.body, 1)) == list(range(0, 40, 4))

    # the same answer as fleche.query
    with fleche.cache(server.source.layers[0].store.url):
        want = fleche.query(SIM, n=fleche.Q.in_([3, 5, 7])).count()
    r = fetch(server, "/fn", {"f": SIM, "q": "n=[3,5,7]"})
    assert len(call_keys(r.body)) == want == 3


def test_every_page_of_a_sorted_table_is_disjoint_and_complete(server):
    seen = []
    for offset in range(0, N_CALLS + 1, 25):
        r = fetch(server, "/fn", {"f": SIM, "sort": "arg:alpha", "desc": 0, "n": 25, "o": offset})
        seen += call_keys(r.body)
    assert len(seen) == len(set(seen)) == N_CALLS + 1


def test_a_bad_filter_says_why(server):
    r = fetch(server, "/fn", {"f": SIM, "q": "nonsense"})
    assert r.status == 400 and "expected NAME=VALUE" in r.body
    assert f'name="f" value="{SIM}"' in r.body  # the form, to correct the filter and retry
    r = fetch(server, "/fn", {"f": SIM, "q": "zeta=1"})
    assert r.status == 200 and re.search(r"<b>0</b> calls match", r.body)
    r = fetch(server, "/fn", {"f": SIM, "sort": "bogus"})
    assert r.status == 400


def test_unknown_pages_functions_calls_and_layers_are_404(server):
    assert fetch(server, "/nothing").status == 404
    assert fetch(server, "/fn", {"f": "no.such.function"}).status == 404
    assert fetch(server, "/fn", {"f": "../../etc"}).status == 404
    assert fetch(server, "/call", {"f": SIM, "k": "0" * 32}).status == 404
    assert fetch(server, "/call", {"f": SIM, "k": "../../../etc/passwd"}).status in (400, 404)
    assert fetch(server, "/", {"layer": 3}).status == 404
    assert fetch(server, "/fn").status == 400  # which function?


def test_a_call_shows_arguments_metadata_digest_and_a_preview(server):
    table = fetch(server, "/fn", {"f": SIM, "q": "n=8"}).body
    (key,) = call_keys(table)
    page = fetch(server, "/call", {"f": SIM, "k": key}).body
    parse_html(page)
    assert key in page and "ui_helpers" in page
    args = page.split('id="arguments"')[1].split("</table>")[0]
    assert re.search(r"<th>n</th><td class='v'>8</td>", args)
    assert re.search(r"<th>alpha</th><td class='v'>0.8</td>", args)
    assert "project" in page.split('id="metadata"')[1] and "paper" in page
    preview = page.split('id="preview"')[1]
    assert "msgpack" in preview and "&#x27;n&#x27;: 8" in preview


def test_an_array_result_shows_shape_dtype_and_statistics(server):
    fid = "ui_helpers.spectrum"
    (key,) = call_keys(fetch(server, "/fn", {"f": fid}).body)
    preview = fetch(server, "/call", {"f": fid, "k": key}).body.split('id="preview"')[1]
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", preview))
    for needle in ("(11,)", "float64", "min 0 ", "max 1 ", "mean 0.5 ", "11 items"):
        assert needle in text, (needle, text)


def test_a_pickled_result_is_never_unpickled(server, populated):
    fid = "ui_helpers.trap"
    (key,) = call_keys(fetch(server, "/fn", {"f": fid}).body)
    page = fetch(server, "/call", {"f": fid, "k": key}).body
    assert re.search(r"pickle, [\d,]+ bytes: not unpickled", page)
    assert not populated.marker.exists()


def test_trust_unpickles_and_a_signed_store_is_trusted(tmp_path):
    """The converse, so the test above can fail: with --trust the pickle's code runs."""
    populated = populate(tmp_path / "store")
    s = make_server(str(populated.path), trust=True).start()
    try:
        (key,) = call_keys(fetch(s, "/fn", {"f": "ui_helpers.trap"}).body)
        page = fetch(s, "/call", {"f": "ui_helpers.trap", "k": key}).body
    finally:
        s.close()
    assert "not unpickled" not in page and populated.marker.exists()

    signed = Source([Cache(str(populated.path), secret_key=b"k" * 32)])
    unsigned = Source([Cache(str(populated.path), secret_key=False)])
    assert signed.trusted(0) and not signed.layers[0].safe
    assert not unsigned.trusted(0) and unsigned.layers[0].safe


def test_the_health_page_runs_verify_on_request(server):
    r = fetch(server, "/health")
    parse_html(r.body)
    assert "Not checked since this page started" in r.body
    assert "calls stored over time" in r.body and "bytes by function" in r.body
    assert r.body.count("<svg") == 2 and "<script" not in r.body
    assert fetch(server, "/verify", form={"layer": 0}).status == 403  # no token in the form
    done = fetch(server, "/verify", form={"token": server.token, "layer": 0})
    assert done.status == 303 and done.headers["Location"] == "/health?layer=0"
    r = fetch(server, "/health")
    assert re.search(r'id="verify"><b>no problems</b>: \d+ objects and 124 records', r.body)


def test_concurrent_requests_get_their_own_answers(server):
    from concurrent.futures import ThreadPoolExecutor

    def ask(n: int) -> list[str]:
        page = fetch(server, "/fn", {"f": SIM, "q": f"n={n}"}).body
        keys = call_keys(page)
        return [fetch(server, "/call", {"f": SIM, "k": k}).body for k in keys]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(40)))
    for n, pages in enumerate(answers):
        assert len(pages) == 1
        assert re.search(rf"<th>n</th><td class='v'>{n}</td>", pages[0])


# -- without an index, and layered ---------------------------------------------------------


def test_a_store_without_an_index_is_scanned_with_the_same_answers(populated):
    indexed = serve(Source([Cache(str(populated.path))]))
    scanned = serve(Source([Cache(str(populated.path), index=False)]))
    try:
        for params in (
            {"f": SIM, "q": "n>=100", "sort": "arg:n", "desc": 0, "n": 6, "o": 6},
            {"f": SIM, "q": "metadata.tags.project=paper", "sort": "arg:alpha", "desc": 1},
        ):
            a, b = fetch(indexed, "/fn", params).body, fetch(scanned, "/fn", params).body
            assert call_keys(a) == call_keys(b) and call_keys(a)
            assert "every record was read" in b and "every record was read" not in a
        assert fetch(scanned, "/").body.count("</tr>") == fetch(indexed, "/").body.count("</tr>")
    finally:
        indexed.close()
        scanned.close()


def test_a_layered_cache_is_shown_layer_by_layer_without_copying(tmp_path, populated):
    near = tmp_path / "near"
    layered = resolve([str(near), str(populated.path)])
    s = serve(Source(open_caches(layered)))
    try:
        home = fetch(s, "/").body
        assert "layer 1:" in home and "layer 2:" in home and "No calls stored yet" in home
        table = fetch(s, "/fn", {"f": SIM, "layer": 1, "q": "n=3"}).body
        (key,) = call_keys(table)
        assert fetch(s, "/call", {"f": SIM, "k": key, "layer": 1}).status == 200
        assert fetch(s, "/fn", {"f": SIM, "layer": 0}).status == 404
    finally:
        s.close()
    assert not (near / "calls").exists() or not any((near / "calls").rglob("*"))


# -- --write ------------------------------------------------------------------------------


def test_write_offers_evict_and_gc_behind_a_confirmation(tmp_path):
    populated = populate(tmp_path / "store")
    s = make_server(str(populated.path), write=True).start()
    try:
        table = fetch(s, "/fn", {"f": SIM, "q": "n<10 label=plain"}).body
        assert "evict these 10 calls" in table
        confirm = fetch(s, "/evict", {"f": SIM, "q": "n<10 label=plain"})
        assert confirm.status == 200 and "<b>10</b> calls" in confirm.body
        assert 'method="post"' in confirm.body and s.token in confirm.body
        assert (
            fetch(s, "/fn", {"f": SIM, "q": "n<10 label=plain"}).body.count("<b>10</b>") == 1
        )  # not yet
        refused = fetch(
            s,
            "/evict",
            token=False,
            cookie=f"{s.cookie}={s.token}",
            form={"f": SIM, "q": "n<10 label=plain"},
        )
        assert refused.status == 403  # the cookie alone does not authorize a change
        done = fetch(s, "/evict", form={"f": SIM, "q": "n<10 label=plain", "token": s.token})
        assert done.status == 200 and "Removed 10 call records" in done.body
        assert re.search(
            r"<b>0</b> calls match", fetch(s, "/fn", {"f": SIM, "q": "n<10 label=plain"}).body
        )
        plan = fetch(s, "/gc")
        assert plan.status == 200 and "gc would remove" in plan.body
        ran = fetch(s, "/gc", form={"token": s.token})
        assert ran.status == 200 and "Removed" in ran.body
    finally:
        s.close()


# -- the command --------------------------------------------------------------------------


def test_the_command_prints_the_address_and_serves(populated):
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleche", "ui", "-s", str(populated.path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(2)]
        url = lines[1].strip()
        m = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/\?token=([\w-]+)", url)
        assert m, lines

        class Remote:
            port = int(m.group(1))
            token = m.group(2)

        assert SIM in fetch(Remote, "/").body
        assert fetch(Remote, "/", token=False).status == 403
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_import_fleche_does_not_load_the_ui():
    code = "import sys, fleche; print(any(m.startswith('fleche.ui') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_each_response_says_how_long_it_took_to_render(server):
    """Server-Timing carries the render time: docs/ui.md's figures come from it."""
    for path in ("/", "/health"):
        header = fetch(server, path).headers["Server-Timing"]
        assert re.fullmatch(r"render;dur=\d+\.\d\d", header), header
