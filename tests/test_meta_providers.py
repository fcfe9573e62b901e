"""The original fleche's metadata providers: ``@fleche(meta=...)``, ``fleche.meta(...)`` and
``fleche.metadata.Runtime``/``Environment``/``Git``/``Tags``, on the metadata groups here.

Each provider chooses its group; the facts it recorded in 0.22 are read back and
queried under 0.22's keys too (``metadata["runtime"]["walltime"]``); a provider of
the user's own has no counterpart and is skipped with one warning.
"""

from __future__ import annotations

import socket
import warnings
from pathlib import Path
from typing import Any

import pytest

import fleche
from fleche import ConfigError, FlecheWarning, Q, cache, meta, tags
from fleche.metadata import CONFIGURABLE, Environment, Git, MetaData, Runtime, Tags, configurable

RUNTIME = {"created", "duration", "finished", "cpu"}
ENVIRONMENT = {"host", "user", "pid", "cwd", "python", "fleche"}


@fleche.fleche
def plain(x: int) -> int:
    return x


@pytest.fixture(params=["memory", "local"])
def active(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    with cache("memory://" if request.param == "memory" else tmp_path / "s") as c:
        yield c


def keys(f: Any, *args: Any) -> set[str]:
    """The metadata keys of a stored call; ``packages`` (there once numpy is imported) aside."""
    return set(f.call(*args).metadata) - {"packages"}


def test_the_original_names_are_importable_where_they_were() -> None:
    assert set(CONFIGURABLE) == {"Runtime", "Environment", "Git"}
    assert Runtime().name == "runtime" and Environment().name == "environment"
    assert Git().name == "git" and Tags({"a": 1}).name == "tags"
    assert set(Runtime().keys) == {"timestart", "timestop", "walltime", "cputime"}
    assert Tags({"a": 1}).keys == {"a": int}
    assert fleche.meta is meta and "meta" in fleche.__all__


def test_meta_on_the_decorator_adds_groups_and_tags(active: Any) -> None:
    @fleche.fleche(meta=(Git(), Tags({"stage": "fit"})), metadata=["runtime"])
    def fit(x: int) -> int:
        return x

    with tags(project="p"):
        fit(1)
    md = fit.call(1).metadata
    assert set(md) == RUNTIME | {"git", "tags"}  # runtime chosen, git and tags added
    assert md["tags"] == {"project": "p", "stage": "fit"}
    assert fit.query(metadata={"tags": {"stage": "fit"}}).count() == 1

    @fleche.fleche(meta=["Environment"], metadata=False)  # by name, as fleche.toml named them
    def where(x: int) -> int:
        return x

    where(1)
    assert keys(where, 1) == {"created"} | ENVIRONMENT


def test_fleche_meta_replaces_the_choice_for_a_context(active: Any) -> None:
    with meta(Runtime()):
        plain(1)
        with tags(run=7):  # tags() inside meta() are kept, as 0.22 stacked them
            plain(2)
    plain(3)  # the block is over: the cache's choice (all) again
    assert keys(plain, 1) == RUNTIME
    assert keys(plain, 2) == RUNTIME | {"tags"}
    assert ENVIRONMENT <= keys(plain, 3)
    with meta(Environment(), Tags({"a": 1})):
        with meta(Runtime(), stack=True):
            plain(4)
        plain(5)
    assert plain.call(4).metadata["tags"] == {"a": 1}
    assert keys(plain, 4) == RUNTIME | ENVIRONMENT | {"tags"}
    assert keys(plain, 5) == {"created", "tags"} | ENVIRONMENT
    with meta():  # no provider: created only, as 0.22's meta() recorded nothing
        plain(6)
    assert keys(plain, 6) == {"created"}


def test_meta_without_with_stays_until_reset(active: Any) -> None:
    token = meta(Git())
    try:
        plain(7)
    finally:
        token.__exit__(None, None, None)
    assert keys(plain, 7) <= {"created", "git"}
    plain(8)
    assert RUNTIME <= keys(plain, 8)


def test_the_original_keys_read_and_query(active: Any) -> None:
    plain(10)
    md = plain.call(10).metadata
    assert md["runtime"]["walltime"] == md["duration"]
    assert md["runtime"]["timestart"] == md["created"]
    assert md.get("runtime", {}).get("timestop") == md["finished"]
    assert md["environment"]["hostname"] == md["host"] == socket.gethostname()
    assert md.get("nothing") is None and "runtime" not in md
    with pytest.raises(KeyError):
        md["nothing"]
    assert plain.query(metadata={"runtime": {"walltime": Q.ge(0)}}).count() == 1
    assert plain.query(metadata={"runtime": {"walltime": Q.gt(3600)}}).count() == 0
    host = {"environment": {"hostname": socket.gethostname()}}
    assert plain.query(metadata=host).count() == 1
    assert fleche.query(plain, metadata={"environment": {"hostname": "elsewhere"}}).empty()
    assert plain.query().oldest().metadata["runtime"]["timestop"] == md["finished"]


def test_a_provider_of_your_own_warns_once_and_is_skipped(active: Any) -> None:
    @configurable
    class Slurm(MetaData):
        def pre(self, call: Any) -> dict[str, Any]:
            raise AssertionError("never run")

    assert Slurm.name == "slurm" and CONFIGURABLE.pop("Slurm") is Slurm
    with pytest.warns(FlecheWarning, match="Slurm has no counterpart here.*fleche.tags"):

        @fleche.fleche(meta=[Slurm()])
        def job(x: int) -> int:
            return x

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        meta(Slurm(), stack=True).__exit__(None, None, None)  # warned once per class
        job(1)
    assert job.call(1).stored


def test_what_is_not_a_provider_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="unknown metadata provider 'Slurm'"):
        fleche.fleche(meta=["Slurm"])(lambda x: x)
    with pytest.raises(ConfigError, match="is not a metadata provider"):
        meta(42)


def test_bind_carries_the_meta_choice(tmp_path: Path) -> None:
    """0.22's BoundWrapper froze the cache and the metadata providers: so does f.bind here."""
    import pickle
    from concurrent.futures import ThreadPoolExecutor

    with cache(tmp_path / "s"):
        with meta(Runtime()):
            bound = plain.bind(40)
        with ThreadPoolExecutor(1) as ex:
            assert ex.submit(pickle.loads(pickle.dumps(bound))).result(timeout=30) == 40
        assert keys(plain, 40) == RUNTIME
        plain(41)  # outside it: the cache's choice
        assert ENVIRONMENT <= keys(plain, 41)
