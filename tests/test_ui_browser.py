"""``fleche ui`` in a real browser: headless Chromium loads each page, filters a table, opens a call.

A screenshot of each page is written under the test's temporary directory
(``tools/ui_screenshots`` writes the ones docs/ui.md shows). Without Chromium
these tests skip, and under CI they fail (``tests/services.py``).
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from urllib.parse import urlencode

import pytest
from browser import Chromium, WebDriver
from ui_helpers import HOSTILE, populate

from fleche.ui import make_server

SIM = "ui_helpers.simulate"


@pytest.fixture(scope="module")
def populated(tmp_path_factory):
    return populate(tmp_path_factory.mktemp("ui-browser") / "store")


@pytest.fixture
def server(populated):
    s = make_server(str(populated.path)).start()
    yield s
    s.close()


def address(server, path: str, **params) -> str:
    return f"http://127.0.0.1:{server.port}{path}?" + urlencode({**params, "token": server.token})


def text_of(dom: str) -> str:
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom)))


class FormReader(HTMLParser):
    """The filter form as a browser submits it: action, method, and its fields in order."""

    def __init__(self) -> None:
        super().__init__()
        self.action = self.method = ""
        self.fields: list[tuple[str, str]] = []
        self._inside = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form" and "filter" in a.get("class", ""):
            self._inside, self.action, self.method = True, a["action"], a["method"]
        elif tag == "input" and self._inside:
            if a.get("type") == "checkbox" and "checked" not in a:
                return
            self.fields.append((a["name"], a.get("value", "")))

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._inside = False


def test_each_page_loads_in_chromium_with_its_stylesheet_and_no_csp_refusal(server, tmp_path):
    browser = Chromium(tmp_path)
    dom, log = browser.dom(address(server, "/"))
    assert SIM in dom and "ui_helpers.spectrum" in dom and 'id="functions"' in dom
    assert "Refused to" not in log  # no script, style or image the policy had to block
    shots = [browser.screenshot(address(server, "/"), tmp_path / "functions.png")]

    dom, log = browser.dom(address(server, "/health"))
    assert dom.count("<svg") == 2 and "calls stored over time" in dom
    assert "Refused to" not in log
    shots.append(browser.screenshot(address(server, "/health"), tmp_path / "health.png"))
    assert all(p.exists() for p in shots)


def test_filter_a_table_with_the_plain_get_form_then_open_a_call(server, tmp_path):
    browser = Chromium(tmp_path)
    dom, _ = browser.dom(address(server, "/fn", f=SIM))
    assert "121 calls match" in text_of(dom)
    form = FormReader()
    form.feed(dom)
    assert (form.action, form.method) == ("/fn", "get")
    # what the browser sends when the user types in the box and presses Filter
    fields = [(k, "n>=100 metadata.tags.project=paper" if k == "q" else v) for k, v in form.fields]
    url = f"http://127.0.0.1:{server.port}{form.action}?" + urlencode(fields)
    url += "&token=" + server.token  # each run is a new browser, without the first run's cookie
    dom, log = browser.dom(url)
    shown = text_of(dom)
    assert "5 calls match the filter" in shown, shown[:500]
    rows = re.findall(r'href="/call\?f=[^"]+?k=([0-9a-f]{32})[^"]*">', dom)
    assert len(rows) == 5
    browser.screenshot(url, tmp_path / "calls.png")

    call = address(server, "/call", f=SIM, k=rows[0], layer=0)
    dom, log = browser.dom(call)
    shown = text_of(dom)
    assert rows[0] in shown and "Arguments" in shown and "project 'paper'" in shown
    assert re.search(r"\bn 1(00|04|08|12|16)\b", shown)
    assert "msgpack" in shown and "Refused to" not in log
    browser.screenshot(call, tmp_path / "call.png")


def test_a_pickled_result_and_hostile_markup_in_the_browser(server, populated, tmp_path):
    browser = Chromium(tmp_path)
    dom, _ = browser.dom(address(server, "/fn", f="ui_helpers.trap"))
    (key,) = re.findall(r"k=([0-9a-f]{32})", dom)
    dom, _ = browser.dom(address(server, "/call", f="ui_helpers.trap", k=key))
    assert "not unpickled" in dom and not populated.marker.exists()

    dom, _ = browser.dom(address(server, "/fn", f=SIM, q="n=-1", c=1, col="created"))
    # the hostile argument is text in the page, not an element the browser built
    assert "<script>alert" not in dom and html.escape(HOSTILE, quote=False)[:20] in dom


def test_type_into_the_filter_and_click_in_a_driven_browser(server, tmp_path):
    driver = WebDriver(tmp_path)
    try:
        driver.go(address(server, "/fn", f=SIM))
        driver.type("input[name=q]", "n<30 alpha>=2.0")
        driver.follow("form.filter button[type=submit]")
        assert "q=n%3C30+alpha%3E%3D2.0" in driver.url and "token=" not in driver.url
        shown = text_of(driver.source)
        assert "10 calls match the filter" in shown, shown[:500]  # n = 20..29 (the cookie)
        driver.screenshot(tmp_path / "filtered.png")
        driver.follow("#calls tbody tr a")
        assert "/call?" in driver.url
        shown = text_of(driver.source)
        assert "Arguments" in shown and "Result" in shown
        driver.go(address(server, "/health"))
        driver.follow("form[action='/verify'] button")
        assert "/health" in driver.url and "no problems" in text_of(driver.source)
        driver.screenshot(tmp_path / "verified.png")
    finally:
        driver.close()
    assert all((tmp_path / n).stat().st_size > 5000 for n in ("filtered.png", "verified.png"))
