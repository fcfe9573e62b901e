"""What fleche tells a watching human: DEBUG log lines for hits, misses and stores, and progress
bars that only a terminal gets."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from click.testing import CliRunner
from upkeep_helpers import populate

import fleche as fleche_pkg
from fleche import cache, fleche
from fleche.cli import main
from fleche.store import MemoryStore
from fleche.sync import sync

BAR = "━"  # what rich draws bars with


@fleche
def double(x):
    return x * 2


@fleche
def blob(n):
    return b"x" * n


# -- logging -------------------------------------------------------------------------------


def _lines(caplog: pytest.LogCaptureFixture, word: str, key: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name.startswith("fleche")
        and r.getMessage().startswith(word + " ")
        and key in r.getMessage()
    ]


def test_miss_store_and_hit_each_log_one_debug_line(tmp_path: Path, caplog):
    fid = double.__fleche__.function_id
    caplog.set_level(logging.DEBUG, logger="fleche")
    with cache(tmp_path / "store"):
        key = double.digest(21)
        assert double(21) == 42  # a miss, then a store
        assert double(21) == 42  # a hit
    for word in ("miss", "stored", "hit"):
        found = _lines(caplog, word, key)
        assert len(found) == 1, (word, [r.getMessage() for r in caplog.records])
        (record,) = found
        assert record.levelno == logging.DEBUG
        assert record.name == "fleche.decorator"
        assert fid in record.getMessage()
    stored = _lines(caplog, "stored", key)[0].getMessage()
    assert "builtins.int" in stored and "inline" in stored and "computed in" in stored


def test_a_stored_object_logs_its_size_and_oid(memory_store, caplog):
    caplog.set_level(logging.DEBUG, logger="fleche")
    with cache(memory_store):
        key = blob.digest(100_000)
        blob(100_000)
    (line,) = _lines(caplog, "stored", key)
    assert "97.7 KiB as object " in line.getMessage()


def test_nothing_is_logged_above_debug(memory_store, caplog):
    caplog.set_level(logging.INFO, logger="fleche")
    with cache(memory_store):
        double(1)
        double(1)
    assert not [r for r in caplog.records if r.name.startswith("fleche")]


def test_sync_logs_one_info_line(tmp_path: Path, caplog):
    populated = populate(tmp_path / "src")
    caplog.set_level(logging.INFO, logger="fleche")
    result = sync(populated.store, MemoryStore())
    lines = [r for r in caplog.records if r.name == "fleche.sync"]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert f"copied {len(result.transferred)}" in lines[0].getMessage()


# -- progress bars -------------------------------------------------------------------------


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.delenv("FLECHE_PROGRESS", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    return monkeypatch


def test_map_draws_no_bar_into_a_pipe(memory_store, capfd, no_env):
    with cache(memory_store):
        assert fleche_pkg.map(double, range(5)) == [0, 2, 4, 6, 8]  # default: automatic
        assert BAR not in capfd.readouterr().err
        fleche_pkg.map(double, range(5), progress=True)  # asked for: drawn even here
        assert BAR in capfd.readouterr().err
        no_env.setenv("FLECHE_PROGRESS", "0")  # the user's word wins
        fleche_pkg.map(double, range(5), progress=True)
        assert capfd.readouterr().err == ""


def test_sync_draws_no_bar_into_a_pipe(tmp_path: Path, capfd, no_env):
    populated = populate(tmp_path / "src")
    sync(populated.store, MemoryStore(), progress=None)
    assert capfd.readouterr().err == ""
    no_env.setenv("FLECHE_PROGRESS", "0")
    sync(populated.store, MemoryStore(), progress=True)
    assert capfd.readouterr().err == ""


def _cli(*args: str) -> tuple[str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout, result.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["verify"],
        ["gc", "--keep-latest", "1"],
        ["stats"],
        ["stats", "--plot", "{tmp}/report.html"],
    ],
    ids=["verify", "gc", "stats", "stats-plot"],
)
def test_long_commands_draw_no_bar_into_a_pipe(tmp_path: Path, command, no_env):
    populated = populate(tmp_path / "store")
    args = [a.format(tmp=tmp_path) for a in command]
    out, err = _cli(*args, "-s", populated.store.url)
    assert BAR not in err and BAR not in out
    assert "records" not in err

    # forced (a terminal rich cannot detect): the bar is drawn; --no-progress still wins
    no_env.setenv("FLECHE_PROGRESS", "1")
    no_env.setenv("FORCE_COLOR", "1")
    populated = populate(tmp_path / "again")
    _, err = _cli(*args, "-s", populated.store.url)
    assert "records" in err
    populated = populate(tmp_path / "once more")
    _, err = _cli("--no-progress", *args, "-s", populated.store.url)
    assert err == ""


def test_sync_command_bar_follows_the_global_switch(tmp_path: Path, no_env):
    populated = populate(tmp_path / "src")
    _, err = _cli("sync", "--progress", populated.store.url, str(tmp_path / "a"))
    assert BAR in err  # asked for on the command
    _, err = _cli("--no-progress", "sync", "--progress", populated.store.url, str(tmp_path / "b"))
    assert err == ""
    _, err = _cli("sync", populated.store.url, str(tmp_path / "c"))
    assert err == ""  # not a terminal: no bar unless asked
