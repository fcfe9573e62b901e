"""Headless Chromium for ``fleche ui``'s browser tests, without a Python dependency.

Two ways in, both gated like the services (:func:`services.need_service`: a
skip on a developer's machine, a failure under CI; ``tools/test`` installs
Debian's ``chromium`` and ``chromium-driver``):

- :class:`Chromium` runs the browser once per page: ``--dump-dom`` (the DOM
  after the page loaded, stylesheet and all) and ``--screenshot``;
- :class:`WebDriver` speaks the W3C WebDriver protocol to ``chromedriver``
  over plain HTTP (urllib), to type into a form and click its button.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from services import need_service

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run"]
ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # the W3C web element key


def find_chromium() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    need_service(f"no headless Chromium ({', '.join(BROWSERS)}): ./tools/test installs chromium")


class Chromium:
    """One browser run per page, each with its own profile under ``tmp``."""

    def __init__(self, tmp: Path) -> None:
        self.binary = find_chromium()
        self.tmp = tmp
        self.runs = 0

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        self.runs += 1
        profile = self.tmp / f"profile-{self.runs}"
        return subprocess.run(
            [self.binary, *FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )

    def dom(self, url: str) -> tuple[str, str]:
        """The DOM after loading ``url``, and the browser's log (console messages, CSP refusals)."""
        done = self._run("--dump-dom", url)
        return done.stdout, done.stderr

    def screenshot(self, url: str, path: Path, size: str = "1280,900") -> Path:
        self._run(f"--window-size={size}", f"--screenshot={path}", url)
        assert path.stat().st_size > 5000, path  # a page, not a blank
        return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class WebDriver:
    """A headless Chromium session driven through ``chromedriver`` (W3C WebDriver over HTTP)."""

    def __init__(self, tmp: Path, size: tuple[int, int] = (1280, 900)) -> None:
        binary = find_chromium()
        driver = shutil.which("chromedriver")
        if driver is None:
            need_service("no chromedriver: ./tools/test installs chromium-driver")
        self.port = _free_port()
        self.proc = subprocess.Popen(
            [driver, f"--port={self.port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ},
        )
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if self._call("GET", "/status")["ready"]:
                    break
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError("chromedriver did not start within 30 s")
            time.sleep(0.1)
        args = [*FLAGS, f"--user-data-dir={tmp / 'webdriver-profile'}"]
        args.append(f"--window-size={size[0]},{size[1]}")
        caps = {"browserName": "chrome", "goog:chromeOptions": {"binary": binary, "args": args}}
        try:
            got = self._call("POST", "/session", {"capabilities": {"alwaysMatch": caps}})
        except BaseException:
            self.proc.kill()
            raise
        self.session = f"/session/{got['sessionId']}"

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.loads(r.read())["value"]
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"webdriver {method} {path}: {e.read().decode()[:500]}") from None

    def go(self, url: str) -> None:
        self._call("POST", self.session + "/url", {"url": url})

    @property
    def url(self) -> str:
        return str(self._call("GET", self.session + "/url"))

    @property
    def source(self) -> str:
        return str(self._call("GET", self.session + "/source"))

    def find(self, css: str) -> str:
        found = self._call(
            "POST", self.session + "/element", {"using": "css selector", "value": css}
        )
        return str(found[ELEMENT])

    def type(self, css: str, text: str) -> None:
        element = self.find(css)
        self._call("POST", f"{self.session}/element/{element}/clear", {})
        self._call("POST", f"{self.session}/element/{element}/value", {"text": text})

    def click(self, css: str) -> None:
        self._call("POST", f"{self.session}/element/{self.find(css)}/click", {})

    def follow(self, css: str, timeout: float = 30) -> None:
        """Click a link or a form's button and wait until the next page has loaded.

        A click returns once the event is dispatched, not once the navigation it
        starts is done: wait for the address to change and the new page's end.
        """
        before = self.url
        self.click(css)
        deadline = time.monotonic() + timeout
        while self.url == before or "</body>" not in self.source:
            if time.monotonic() > deadline:
                raise TimeoutError(f"clicking {css} on {before} led nowhere in {timeout} s")
            time.sleep(0.05)

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self._call("GET", self.session + "/screenshot")))
        return path

    def close(self) -> None:
        try:
            self._call("DELETE", self.session)
        finally:
            self.proc.terminate()
            self.proc.wait(timeout=30)
