"""A CI run cannot be green over a skipped backend.

A test whose service (sshd, radosgw, PostgreSQL, moto, Dask, rsync...) is
missing skips, saying why, on a developer's machine, and fails when ``CI`` is
set (``services.need_service``). ``tools/test`` fails when a service it was
asked to start did not start (``tools/_services.sh``). Both are checked here
for real: pytest run in a subprocess over the real service fixtures, told the
service is missing the way ``tools/test`` tells them (``FLECHE_TEST_*_SKIP``),
and the shell functions ``tools/test`` uses, run on a service that fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from services import in_ci, need_module, need_service

ROOT = Path(__file__).resolve().parent.parent

# service: (the variable tools/test sets when it did not start, a test that needs it)
MISSING = {
    "sshd": (
        "FLECHE_TEST_SSH_SKIP",
        "tests/test_store_sftp.py::test_open_store_builds_an_sftp_store",
    ),
    "radosgw": (
        "FLECHE_TEST_RGW_SKIP",
        "tests/test_store_rgw.py::test_server_refuses_a_create_only_put_on_an_existing_key",
    ),
    "postgres": (
        "FLECHE_TEST_PG_SKIP",
        "tests/test_index_sql.py::test_postgresql_index_of_a_local_store",
    ),
}


def _pytest(test: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rfs", test],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def _env(service: str, ci: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env[MISSING[service][0]] = f"fake-missing {service}: not started for this test"
    if ci:
        env["CI"] = "true"
    return env


@pytest.mark.parametrize("service", sorted(MISSING))
def test_a_missing_service_fails_the_test_in_ci(service: str) -> None:
    done = _pytest(MISSING[service][1], _env(service, ci=True))
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    # failed in the test, or in its fixture (pytest says "error"): either way, not green
    assert re.search(r"\d+ (failed|errors?)", out) and "skipped" not in out, out
    assert f"fake-missing {service}: not started for this test" in out  # the reason, said
    assert "CI is set" in out


def test_outside_ci_a_missing_service_skips_saying_why() -> None:
    done = _pytest(MISSING["sshd"][1], _env("sshd", ci=False))
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert (
        re.search(r"\d+ skipped", out) and "fake-missing sshd: not started for this test" in out
    ), out


@pytest.mark.parametrize(
    ("value", "ci"), [("true", True), ("1", True), ("yes", True), ("", False), ("false", False)]
)
def test_ci_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, ci: bool
) -> None:
    monkeypatch.setenv("CI", value)
    assert in_ci() is ci
    expected = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(expected, match="the reason"):
        need_service("the reason")
    with pytest.raises(expected, match="fleche_no_such_module"):
        need_module("fleche_no_such_module")


# -- tools/test ---------------------------------------------------------------------------------

FAKE_SERVICE = """#!/usr/bin/env bash
# a service that cannot run here: exits 0, and says why in its env file, as the real ones do
set -euo pipefail
echo "export FLECHE_TEST_FAKE_SKIP=$(printf %q 'fake is not installed here')" > "$2/env"
echo "tools/services/fake: not started: fake is not installed here" >&2
"""
GOOD_SERVICE = """#!/usr/bin/env bash
set -euo pipefail
echo "export FLECHE_TEST_GOOD_URL=good://127.0.0.1" > "$2/env"
"""
BROKEN_SERVICE = """#!/usr/bin/env bash
echo "tools/services/broken: crashed" >&2
exit 3
"""


def _services(tmp_path: Path, *names: str) -> subprocess.CompletedProcess[str]:
    """tools/test's start_services + wait_services over fake services; then GOOD's variable."""
    src = tmp_path / "services"
    src.mkdir(exist_ok=True)
    for name, text in (("fake", FAKE_SERVICE), ("good", GOOD_SERVICE), ("broken", BROKEN_SERVICE)):
        (src / name).write_text(text)
        (src / name).chmod(0o755)
    script = (
        f"source {ROOT / 'tools' / '_services.sh'}\n"
        f"SERVICES_SRC={src}\n"
        f"start_services {tmp_path / 'run'} {' '.join(names)}\n"
        f"wait_services {tmp_path / 'run'} {' '.join(names)} || exit\n"
        'echo "good=${FLECHE_TEST_GOOD_URL:-}"\n'
    )
    return subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=60, check=False
    )


def test_tools_test_goes_on_when_every_service_started(tmp_path: Path) -> None:
    done = _services(tmp_path, "good")
    assert done.returncode == 0, done.stderr
    assert "good=good://127.0.0.1" in done.stdout  # its variables reach pytest


@pytest.mark.parametrize("bad", ["fake", "broken"])
def test_tools_test_fails_when_a_service_it_started_did_not_start(tmp_path: Path, bad: str) -> None:
    done = _services(tmp_path, "good", bad)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "good=" not in done.stdout  # stopped there: pytest never runs
    assert "did not start" in done.stderr and f"{bad}:" in done.stderr
    if bad == "fake":
        assert "fake is not installed here" in done.stderr  # the service's own reason
    assert "FLECHE_TEST_SERVICES" in done.stderr  # and how to leave it out
