#!/usr/bin/env python3
"""Write the screenshots docs/ui.md shows: each page of ``fleche ui`` over a small demo store.

    python tools/ui_screenshots.py [OUT_DIR]      # default: docs/images

Builds a parameter sweep in a temporary store (numbers, arrays, a data frame,
a pickled object, tagged calls), starts ``fleche ui`` on it in this process,
runs verify from the health page, and has headless Chromium
(``chromium --headless --screenshot``) photograph each page. Needs Debian's
``chromium`` (``./tools/test`` installs it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import fleche  # noqa: E402 - from this checkout


class Model:
    """A result only pickle can store: the call page shows it as "pickled, N bytes"."""

    def __init__(self, weights: list[float]) -> None:
        self.weights = weights


def _in(module: str, fn: object) -> object:
    fn.__module__ = module
    return fleche.fleche(fn)


def simulate(n, alpha=0.1, method="euler"):
    import numpy as np

    rng = np.random.default_rng(n)
    return {"n": n, "alpha": alpha, "energy": float(rng.normal() * alpha + n)}


def trajectory(n, steps=1000):
    import numpy as np

    return np.cumsum(np.random.default_rng(n).normal(size=(steps, 3)), axis=0)


def summary(n):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(n)
    return pd.DataFrame(
        {"run": range(n), "energy": rng.normal(size=n), "method": ["euler", "rk4"] * (n // 2)}
    )


def fit(n):
    return Model([i / n for i in range(n)])


def build(store: Path) -> None:
    sim, traj, summ, fitted = (_in("experiments", f) for f in (simulate, trajectory, summary, fit))
    with fleche.cache(str(store)):
        for n in range(200):
            method = "rk4" if n % 3 == 0 else "euler"
            with fleche.tags(project="paper" if n % 2 else "draft"):
                sim(n, alpha=round((n % 10) / 10, 1), method=method)
        for n in range(1, 6):
            traj(n)
        summ(40)
        fitted(8)


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=60) as r:
        return r.read().decode()


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "images"
    out.mkdir(parents=True, exist_ok=True)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("tools/ui_screenshots: no chromium (apt-get install chromium)")
    from fleche.ui import make_server

    with tempfile.TemporaryDirectory(prefix="fleche-ui-shots-") as tmp:
        store = Path(tmp) / "demo-store"
        os.chdir(tmp)  # the calls' metadata records the working directory (and its git state)
        build(store)
        server = make_server(str(store)).start()
        try:
            base = f"http://127.0.0.1:{server.port}"

            def url(path: str, **params: object) -> str:
                return f"{base}{path}?" + urlencode({**params, "token": server.token}, doseq=True)

            def key(fid: str, **params: object) -> str:
                return re.findall(r"k=([0-9a-f]{32})", get(url("/fn", f=fid, **params)))[0]

            server.source.run_verify(0)
            pages = {
                "ui-functions.png": url("/"),
                "ui-calls.png": url(
                    "/fn",
                    f="experiments.simulate",
                    q="alpha>=0.5 method=rk4 metadata.tags.project=paper",
                    c=1,
                    col=["created", "duration", "tags.project"],
                    sort="arg:n",
                    desc=0,
                ),
                "ui-call-array.png": url(
                    "/call", f="experiments.trajectory", k=key("experiments.trajectory")
                ),
                "ui-call-frame.png": url(
                    "/call", f="experiments.summary", k=key("experiments.summary")
                ),
                "ui-call-pickled.png": url("/call", f="experiments.fit", k=key("experiments.fit")),
                "ui-health.png": url("/health"),
            }
            for name, address in pages.items():
                profile = Path(tmp) / f"profile-{name}"
                subprocess.run(
                    [
                        chromium,
                        "--headless",
                        "--no-sandbox",
                        "--disable-gpu",
                        "--hide-scrollbars",
                        f"--user-data-dir={profile}",
                        "--window-size=1100,760",
                        f"--screenshot={out / name}",
                        address,
                    ],
                    check=True,
                    capture_output=True,
                    timeout=120,
                )
                print(f"wrote {out / name}")
        finally:
            server.close()


if __name__ == "__main__":
    main()
