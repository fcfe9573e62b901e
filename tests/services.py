"""The real services tests use (``tools/services/NAME``): from ``tools/test``, or started here.

``./tools/test`` starts every service and passes each one's ``DIR/env`` on in
``FLECHE_TEST_*`` variables. A plain ``pytest`` run starts the service itself
with the same script, for the session, and stops it at the end. When a
service truly cannot run here, its script says why in ``..._SKIP``.

A test that cannot run because a service (or the package that talks to it) is
missing calls :func:`need_service` / :func:`need_module`: it skips, saying
why, on a developer's machine, and **fails** when ``CI`` is set, so that a CI
run can never be green over a backend that was silently left out.
"""

from __future__ import annotations

import importlib
import os
import shlex
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

SERVICES = Path(__file__).resolve().parent.parent / "tools" / "services"


def in_ci() -> bool:
    """True when the ``CI`` environment variable is set (to anything but ``""``, ``0``, ``false``)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def need_service(reason: str) -> NoReturn:
    """Stop a test whose service is missing: skip with ``reason``, or fail with it in CI.

    Works in a test, a fixture or at module level (a module that cannot even be
    imported without the service's client package).
    """
    if in_ci():
        pytest.fail(f"{reason} (CI is set: a missing service fails the run, never skips)", False)
    pytest.skip(reason, allow_module_level=True)


def need_module(name: str, reason: str | None = None) -> ModuleType:
    """Import ``name`` (a service's client or test server package), or :func:`need_service`."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        why = reason or f"{name} is not installed: run ./tools/test, which installs it"
        need_service(f"{why} ({e})")


def read_env_file(path: Path) -> dict[str, str]:
    """The variables of an ``export NAME=value`` file a service script wrote."""
    env = {}
    for line in path.read_text().splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = shlex.split(value)[0] if value else ""
    return env


@contextmanager
def service_env(name: str, prefix: str, marker: str) -> Iterator[dict[str, str] | str]:
    """The variables describing service ``name``, or the reason it did not start.

    ``prefix + marker`` (or ``prefix + "SKIP"``) in the environment means
    ``tools/test`` already started it; otherwise the script starts it in a
    temporary directory, stopped when the block ends.
    """
    if prefix + marker in os.environ or prefix + "SKIP" in os.environ:
        yield dict(os.environ)
        return
    script = SERVICES / name
    with tempfile.TemporaryDirectory(prefix=f"fleche-{name}-") as tmp:
        try:
            # daemons' output goes to files under tmp, never to these pipes
            started = subprocess.run(
                [str(script), "start", tmp],
                capture_output=True,
                text=True,
                check=False,
                timeout=600,  # a first run may install the service's packages
            )
        except subprocess.TimeoutExpired:
            yield f"tools/services/{name} did not finish starting within 600 s"
            subprocess.run([str(script), "stop", tmp], check=False, timeout=60)
            return
        env_file = Path(tmp) / "env"
        if started.returncode or not env_file.exists():
            yield f"tools/services/{name} failed: {started.stderr.strip()[-500:]}"
            return
        try:
            yield read_env_file(env_file)
        finally:
            subprocess.run([str(script), "stop", tmp], check=False, timeout=60)
