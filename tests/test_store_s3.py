"""The store conformance suite on a real S3 server (moto's, on 127.0.0.1), plus what only S3 shows."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from s3_server import MotoS3, S3StoreConformance, S3UploadCleanup, count_requests, methods
from services import need_module

from fleche import Cache, ConfigError, cache, fleche
from fleche.errors import CacheMiss, FlecheWarning
from fleche.store import S3Store, open_store
from fleche.store._s3 import HEAD_FIRST, MAX_ATTEMPTS
from fleche.testing import digest_of
from fleche.testing._suite import FID

need_module(
    "moto", reason="moto (the S3 test server) is not installed: run ./tools/test, which installs it"
)


@pytest.fixture(scope="session")
def s3() -> Iterator[MotoS3]:
    server = MotoS3()
    yield server
    server.stop()


@pytest.fixture
def bucket(s3: MotoS3) -> str:
    return s3.new_bucket()


@pytest.fixture
def s3_store(s3: MotoS3, bucket: str) -> S3Store:
    store = open_store(f"s3://{bucket}/team/cache", **s3.options())
    assert isinstance(store, S3Store)
    return store


class TestS3Store(S3StoreConformance):
    @pytest.fixture
    def store(self, s3_store: S3Store) -> S3Store:
        return s3_store


class TestS3Uploads(S3UploadCleanup):
    @pytest.fixture
    def server(self, s3: MotoS3) -> MotoS3:
        return s3


# -- requests on the hot paths -------------------------------------------------------


def test_the_test_server_answers_concurrent_replacements_of_one_key(
    s3: MotoS3, bucket: str
) -> None:
    """moto 5.2 closes a replaced object's buffer while another request still reads it
    (500 "I/O operation on closed file"); s3_server defers that close. Without it about
    one request in 200 fails here, and the conformance suite's replacement test with it."""
    from botocore.config import Config

    def replace(i: int) -> list[str]:
        client = s3.client(config=Config(retries={"max_attempts": 1, "mode": "standard"}))
        errors = []
        for _ in range(50):
            try:
                client.put_object(Bucket=bucket, Key="k", Body=bytes([i]) * 20_000)
                client.get_object(Bucket=bucket, Key="k")["Body"].read()
            except Exception as e:  # noqa: BLE001 - collected and asserted below
                errors.append(repr(e))
        return errors

    with ThreadPoolExecutor(8) as pool:
        errors = [e for found in pool.map(replace, range(8)) for e in found]
    assert errors == []


def test_open_store_builds_an_s3_store(s3_store: S3Store, bucket: str) -> None:
    assert s3_store.url == f"s3://{bucket}/team/cache"
    assert s3_store.bucket == bucket
    oid = s3_store.put(b"remote")
    assert s3_store.local_path(oid) is None


def test_a_small_hit_is_one_get(s3: MotoS3, s3_store: S3Store) -> None:
    digest = digest_of("hit")
    s3_store.put_call(FID, digest, b"x" * 200)
    with count_requests(s3_store.fs) as seen:
        other = S3Store(s3_store.url, fs=s3_store.fs)
    assert methods(seen) == ["GET"]  # fleche.json, once
    assert seen[0][1].endswith("/team/cache/fleche.json")
    with count_requests(s3_store.fs) as seen:
        assert other.get_call(FID, digest) == b"x" * 200
    assert methods(seen) == ["GET"]
    with count_requests(s3_store.fs) as seen, pytest.raises(CacheMiss):
        other.get_call(FID, digest_of("miss"))
    # the first miss of a handle also lists packs/ (docs/format.md, "Packs")
    assert methods(seen) == ["GET", "GET"] and "packs%2F" in seen[1][1]
    with count_requests(s3_store.fs) as seen, pytest.raises(CacheMiss):
        other.get_call(FID, digest_of("another miss"))
    assert methods(seen) == ["GET"]  # a miss is one 404, no HEAD, no LIST


def test_writes_are_one_put_each(s3_store: S3Store) -> None:
    s3_store.info()  # the marker exists: only the writes below are counted
    with count_requests(s3_store.fs) as seen:
        oid = s3_store.put(b"new value")
    assert methods(seen) == ["PUT"]
    assert seen[0][2].get("If-None-Match") == "*"
    with count_requests(s3_store.fs) as seen:
        assert s3_store.put(b"new value") == oid
    assert methods(seen) == ["PUT"]  # refused with 412 by the server: nothing rewritten
    with count_requests(s3_store.fs) as seen:
        s3_store.put_call(FID, digest_of(1), b"record")
        s3_store.put_call(FID, digest_of(1), b"record, replaced")
    assert methods(seen) == ["PUT", "PUT"]
    assert all("If-None-Match" not in headers for _, _, headers in seen)
    assert s3_store.get_call(FID, digest_of(1)) == b"record, replaced"


def test_large_existing_value_is_not_uploaded_again(s3_store: S3Store) -> None:
    big = os.urandom(HEAD_FIRST + 1)
    with count_requests(s3_store.fs) as seen:
        oid = s3_store.put(big)
    assert methods(seen) == ["HEAD", "PUT", "PUT"]  # 404, fleche.json, the object
    with count_requests(s3_store.fs) as seen:
        assert s3_store.put(big) == oid
    assert methods(seen) == ["HEAD"]
    assert s3_store.get(oid) == big


def test_a_second_writer_never_overwrites_an_object(s3: MotoS3, s3_store: S3Store) -> None:
    oid = digest_of("contested")
    s3_store.put(b"first writer", oid=oid)
    # Another process: its own S3FileSystem and connections.
    other = S3Store(s3_store.url, **s3.options(skip_instance_cache=True))
    assert other.fs is not s3_store.fs
    assert other.put(b"second writer", oid=oid) == oid
    # Bypassing the store's own check: the server itself refuses the create-only PUT.
    assert other._write_new(other._oid_path(oid), b"third writer") is False
    assert s3_store.get(oid) == b"first writer"


def test_listing_is_one_paginated_list(s3_store: S3Store) -> None:
    oids = {s3_store.put(str(i).encode()) for i in range(5)}
    calls = {(f"mod.f{i % 2}", digest_of(i)) for i in range(5)}
    for fid, digest in calls:
        s3_store.put_call(fid, digest, b"r")
    with count_requests(s3_store.fs) as seen:
        assert set(s3_store.iter_oids()) == oids
        assert set(s3_store.iter_calls()) == calls
    assert methods(seen) == ["GET", "GET", "GET"]  # one ListObjectsV2 each, one of packs/
    s3_store._page_size = 2
    with count_requests(s3_store.fs) as seen:
        assert set(s3_store.iter_oids()) == oids
    assert len(seen) == 3  # 5 keys, 2 per page


def test_server_without_conditional_puts(
    s3_store: S3Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that answers If-None-Match with 501 (AWS before 2024) gets HEAD-then-PUT."""
    from botocore.exceptions import ClientError
    from s3fs.errors import translate_boto_error

    fs = s3_store.fs
    plain = fs.pipe_file
    refused: list[str] = []

    def pipe_file(path: str, data: bytes, mode: str = "overwrite", **kw: Any) -> Any:
        if mode == "create":
            refused.append(path)
            error = {"Code": "NotImplemented", "Message": "If-None-Match is not implemented"}
            raise translate_boto_error(ClientError({"Error": error}, "PutObject"))
        return plain(path, data, **kw)

    monkeypatch.setattr(fs, "pipe_file", pipe_file)
    oid = digest_of("fallback")
    assert s3_store.put(b"one", oid=oid) == oid
    assert s3_store.put(b"two", oid=oid) == oid
    assert s3_store.get(oid) == b"one"
    assert s3_store.info()["format"] == 1
    assert len(refused) == 1  # asked once, then remembered


# -- errors that are not misses --------------------------------------------------------


def test_missing_bucket_is_a_clear_config_error(s3: MotoS3) -> None:
    name = f"fleche-absent-{uuid.uuid4().hex[:12]}"
    for read_only in (False, True):
        with pytest.raises(ConfigError) as info:
            open_store(f"s3://{name}/cache", read_only=read_only, **s3.options())
        message = str(info.value)
        assert repr(name) in message and "does not exist" in message
        assert "create it" in message and s3.endpoint in message


def test_bucket_deleted_after_open_is_an_error_not_a_miss(s3: MotoS3, bucket: str) -> None:
    store = open_store(f"s3://{bucket}", **s3.options())
    s3.client().delete_bucket(Bucket=bucket)
    with pytest.raises(ConfigError, match=bucket):
        store.get_call(FID, digest_of(1))
    with pytest.raises(ConfigError, match=bucket):
        list(store.iter_oids())


def test_no_bucket_in_url(s3: MotoS3) -> None:
    with pytest.raises(ConfigError, match="no bucket"):
        open_store("s3://", **s3.options())


def test_wrong_credentials_are_errors_not_misses(s3: MotoS3, bucket: str) -> None:
    url = f"s3://{bucket}/cache"
    owner = s3.iam_user(f"owner-{bucket}", allow_s3=True)
    nobody = s3.iam_user(f"nobody-{bucket}", allow_s3=False)

    def opts(creds: tuple[str, str]) -> dict[str, Any]:
        return s3.options(key=creds[0], secret=creds[1], skip_instance_cache=True)

    # Opened while moto still accepts anything: the errors below come on first use.
    stale = open_store(url, **opts(("AKIDOESNOTEXIST00000", "x")))
    powerless = open_store(url, **opts(nobody))
    with s3.enforce_auth():
        good = open_store(url, **opts(owner))
        digest = digest_of("secret")
        good.put_call(FID, digest, b"record")
        assert good.get_call(FID, digest) == b"record"
        with pytest.raises(CacheMiss):
            good.get_call(FID, digest_of("absent"))  # the owner's 404 is still a miss

        bad_secret = (owner[0], "not-the-secret")
        for creds, code in (
            (("AKIDOESNOTEXIST00000", "x"), "InvalidAccessKeyId"),
            (bad_secret, "SignatureDoesNotMatch"),
        ):
            with pytest.raises(PermissionError) as info:
                open_store(url, **opts(creds))
            assert code in str(info.value) and bucket in str(info.value)
            assert "AWS_ACCESS_KEY_ID" in str(info.value)
            assert not isinstance(info.value, CacheMiss)
        with pytest.raises(PermissionError, match="InvalidAccessKeyId"):
            stale.get_call(FID, digest)
        with pytest.raises(PermissionError, match="403"):  # a HEAD's answer has no body
            stale.has_call(FID, digest)

        # Allowed nothing: S3 answers 403 even for a missing key; that is not a miss either.
        with pytest.raises(PermissionError, match="s3:ListBucket"):
            open_store(url, **opts(nobody))
        with pytest.raises(PermissionError, match="AccessDenied"):
            powerless.get_call(FID, digest_of("absent"))
        with pytest.raises(PermissionError, match="AccessDenied"):
            powerless.put(b"not allowed")
        with pytest.raises(PermissionError, match="AccessDenied"):
            list(powerless.iter_oids())


def test_a_decorated_function_warns_on_refused_reads(s3: MotoS3, bucket: str) -> None:
    """The decorator fails open on store errors, but says so: an auth error is not a quiet miss."""
    url = f"s3://{bucket}/cache"
    stale = open_store(url, **s3.options(key="AKIDOESNOTEXIST00000", skip_instance_cache=True))
    calls: list[int] = []

    @fleche
    def double(x: int) -> int:
        calls.append(x)
        return 2 * x

    with (
        s3.enforce_auth(),
        cache(Cache(stale)),
        pytest.warns(FlecheWarning, match="InvalidAccessKeyId"),
    ):
        assert double(4) == 8
    assert calls == [4]


# -- configuration ----------------------------------------------------------------------


@pytest.mark.parametrize("variable", ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"])
def test_credentials_and_endpoint_from_the_environment(
    s3: MotoS3, bucket: str, monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    written = open_store(f"s3://{bucket}/env", **s3.options())
    digest = digest_of("env")
    written.put_call(FID, digest, b"from env")
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(variable, s3.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "env-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    # skip_instance_cache: fsspec would hand back a filesystem made before the variables changed.
    store = open_store(f"s3://{bucket}/env", skip_instance_cache=True)
    assert store.fs.s3.meta.endpoint_url == s3.endpoint
    assert store.get_call(FID, digest) == b"from env"


def test_endpoint_url_option_and_client_kwargs_agree(s3: MotoS3, bucket: str) -> None:
    opts = s3.options(client_kwargs={"endpoint_url": "http://127.0.0.1:1"})
    with pytest.raises(ConfigError, match="disagree"):
        open_store(f"s3://{bucket}", **opts)
    with pytest.raises(ConfigError, match="use_listings_cache"):
        open_store(f"s3://{bucket}", use_listings_cache=True, **s3.options())
    store = open_store(f"s3://{bucket}", **s3.options(client_kwargs={"endpoint_url": s3.endpoint}))
    assert store.fs.dircache.use_listings_cache is False
    assert store.url == f"s3://{bucket}"


# -- the failure budget: a dead endpoint costs a few attempts, once ----------------------


@pytest.fixture
def dead_endpoint() -> Iterator[Any]:
    """A listener that accepts and counts connections, then drops them: an S3 server gone.

    (``torture_helpers.Proxy`` in front of a port nothing listens on: the client
    connects, the proxy cannot reach its upstream, and the connection closes.)
    """
    import socket

    from torture_helpers import Proxy

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proxy = Proxy(("127.0.0.1", port))
    yield proxy
    proxy.close()


def _open_dead(s3: MotoS3, proxy: Any, **extra: Any) -> OSError:
    with pytest.raises(OSError) as caught:
        open_store(
            "s3://fleche-gone/cache",  # opening reads fleche.json: one request
            **s3.options(endpoint_url=f"http://127.0.0.1:{proxy.port}", **extra),
        )
    return caught.value


def test_a_dead_endpoint_costs_one_request_a_few_attempts(s3: MotoS3, dead_endpoint: Any) -> None:
    err = _open_dead(s3, dead_endpoint)
    assert f"127.0.0.1:{dead_endpoint.port}" in str(err) and "fleche-gone" in str(err)
    # botocore's standard mode tries the request MAX_ATTEMPTS times, each over at most two
    # connections (aiohttp resends an idempotent request once when its connection drops);
    # s3fs's own loops (5 x 5 around botocore's legacy 5 attempts) are off: 10-98 without.
    assert MAX_ATTEMPTS <= dead_endpoint.attempts <= 2 * MAX_ATTEMPTS


def test_the_retry_budget_is_the_callers_to_change(
    s3: MotoS3, dead_endpoint: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _open_dead(s3, dead_endpoint, config_kwargs={"retries": {"total_max_attempts": 1}})
    assert 1 <= dead_endpoint.attempts <= 2  # the caller's botocore settings win
    # so do AWS_MAX_ATTEMPTS / AWS_RETRY_MODE: fleche's default applies only when nothing is said
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    before = dead_endpoint.attempts
    _open_dead(s3, dead_endpoint, skip_instance_cache=True)
    assert 1 <= dead_endpoint.attempts - before <= 2
    monkeypatch.delenv("AWS_MAX_ATTEMPTS")
    # and the profile's max_attempts in the AWS config file
    aws_config = tmp_path / "aws-config"
    aws_config.write_text("[default]\nmax_attempts = 1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(aws_config))
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    before = dead_endpoint.attempts
    _open_dead(s3, dead_endpoint, skip_instance_cache=True)
    assert 1 <= dead_endpoint.attempts - before <= 2
    monkeypatch.delenv("AWS_CONFIG_FILE")
    # timeouts given keep the default retries; the defaults fill in only what is missing
    store = open_store(f"s3://{s3.new_bucket()}", **s3.options(config_kwargs={"read_timeout": 60}))
    config = store.fs.s3.meta.config
    assert (config.read_timeout, config.connect_timeout) == (60, 5)
    assert config.retries == {"mode": "standard", "total_max_attempts": MAX_ATTEMPTS}
    assert store.fs.retries == 1  # s3fs's loop: off by default, on with retries=
    assert open_store(store.url, retries=3, **s3.options()).fs.retries == 3


@pytest.fixture
def throttled() -> Iterator[tuple[str, list[str]]]:
    """An S3 endpoint that answers every request 503 SlowDown (``fleche.json``: 404, so a
    store opens): ``(endpoint, paths requested)``. s3fs's own loop retries a SlowDown and
    botocore's is set to one attempt, so each operation costs exactly ``retries=`` requests.
    """
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[str] = []

    class Busy(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            path = self.path.partition("?")[0]
            seen.append(path)
            code, error = (
                (404, "<Code>NoSuchKey</Code><Message>none</Message>")
                if path.endswith("/fleche.json")
                else (
                    503,
                    "<Code>SlowDown</Code><Message>Please reduce your request rate.</Message>",
                )
            )
            body = f"<Error>{error}</Error>".encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("first", [1, 3])
def test_stores_that_differ_only_in_retries_each_keep_their_own(
    throttled: tuple[str, list[str]], first: int
) -> None:
    """fsspec shares a filesystem between equal constructor arguments: ``retries=`` is one
    of them, so a store opened later with another value never changes an earlier one's."""
    endpoint, seen = throttled
    stores = {
        n: open_store(
            "s3://busy/cache",
            read_only=True,
            retries=n,
            endpoint_url=endpoint,
            key="k",
            secret="s",
            config_kwargs={"retries": {"total_max_attempts": 1}},
        )
        for n in (first, 4 - first)
    }
    for n, store in stores.items():
        before = len(seen)
        with pytest.raises(OSError, match="reduce your request rate"):
            store.get_call(FID, digest_of(f"call {n}"))
        assert len(seen) - before == n, seen[before:]  # tried as often as this store says


@pytest.mark.parametrize(
    "bad", [{"config_kwargs": "read_timeout=5"}, {"retries": 0}, {"retries": True}]
)
def test_a_malformed_budget_is_a_config_error(s3: MotoS3, bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=next(iter(bad))):
        open_store("s3://fleche-any/cache", **s3.options(**bad))


# -- the whole stack --------------------------------------------------------------------


def test_fleche_round_trip_on_s3(s3: MotoS3, bucket: str) -> None:
    url = f"s3://{bucket}/team-cache"
    calls: list[int] = []

    @fleche
    def simulate(n: int, alpha: float = 0.1) -> dict[str, Any]:
        calls.append(n)
        return {"n": n, "alpha": alpha, "big": bytes(range(256)) * 64}  # > inline: an object

    with cache(url, **s3.options()) as active:  # storage options reach open_store
        assert isinstance(active.store, S3Store)
        first = simulate(10)
        assert simulate(n=10, alpha=0.1) == first
    assert calls == [10]

    fresh = open_store(url, **s3.options(skip_instance_cache=True))
    fid = simulate.__fleche__.function_id  # type: ignore[attr-defined]
    assert (fid, simulate.digest(10)) in set(fresh.iter_calls())
    assert len(list(fresh.iter_oids())) == 1
    with cache(Cache(fresh)):
        assert simulate.contains(10)
        assert simulate(10) == first
        assert simulate.load(10) == first
        assert simulate.call(10).arguments["n"] == 10
    assert calls == [10]


def test_same_bucket_on_two_endpoints_has_two_catalogues(s3: MotoS3, bucket: str) -> None:
    from fleche.index import default_location

    url = f"s3://{bucket}/cache"
    here = open_store(url, **s3.options())
    there = open_store(
        url, **s3.options(endpoint_url=s3.endpoint.replace("127.0.0.1", "localhost"))
    )
    assert here.url == there.url
    assert default_location(here) != default_location(there)
    assert default_location(here) == default_location(open_store(url, **s3.options()))
