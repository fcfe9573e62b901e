"""The store conformance suite on Ceph's radosgw (a production S3 server on 127.0.0.1), plus the
behaviours a real server shows: create-only PUTs refused with 412, one GET per small read,
real credential checks, large bodies, the whole decorator stack."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from rgw_server import RadosGW, radosgw_service
from s3_server import S3StoreConformance, S3UploadCleanup, count_requests, methods
from services import need_module, need_service

from fleche import Cache, ConfigError, cache, fleche
from fleche.errors import CacheMiss
from fleche.store import S3Store, open_store
from fleche.store._s3 import HEAD_FIRST
from fleche.testing import digest_of
from fleche.testing._suite import FID

for _module in ("s3fs", "boto3"):
    need_module(_module, f"{_module} is not installed: run ./tools/test, which installs it")


@pytest.fixture(scope="session")
def _rgw_session() -> Iterator[RadosGW | str]:
    with radosgw_service() as server:
        yield server


@pytest.fixture
def rgw(_rgw_session: RadosGW | str) -> RadosGW:
    """The test radosgw on 127.0.0.1; skips (fails in CI), saying why, without one."""
    if isinstance(_rgw_session, str):
        need_service(f"no radosgw on 127.0.0.1: {_rgw_session}")
    return _rgw_session


@pytest.fixture
def bucket(rgw: RadosGW) -> str:
    return rgw.new_bucket()


@pytest.fixture
def rgw_store(rgw: RadosGW, bucket: str) -> S3Store:
    store = open_store(f"s3://{bucket}/team/cache", **rgw.options())
    assert isinstance(store, S3Store)
    return store


class TestRadosGWStore(S3StoreConformance):
    @pytest.fixture
    def store(self, rgw_store: S3Store) -> S3Store:
        return rgw_store


class TestRadosGWUploads(S3UploadCleanup):
    @pytest.fixture
    def server(self, rgw: RadosGW) -> RadosGW:
        return rgw


# -- create-only writes, as the server does them --------------------------------------------


def test_server_refuses_a_create_only_put_on_an_existing_key(rgw: RadosGW, bucket: str) -> None:
    """The server side, with a plain client: radosgw honours If-None-Match: * (412)."""
    from botocore.exceptions import ClientError

    client = rgw.client()
    client.put_object(Bucket=bucket, Key="k", Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as info:
        client.put_object(Bucket=bucket, Key="k", Body=b"second", IfNoneMatch="*")
    assert info.value.response["Error"]["Code"] == "PreconditionFailed"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"first"


def test_a_refused_create_only_put_is_success_for_the_store(
    rgw: RadosGW, rgw_store: S3Store
) -> None:
    oid = digest_of("contested")
    rgw_store.put(b"first writer", oid=oid)
    # Another process: its own S3FileSystem and connections.
    other = S3Store(rgw_store.url, **rgw.options(skip_instance_cache=True))
    assert other.fs is not rgw_store.fs
    other.info()  # the marker read: only the write below is counted
    with count_requests(other.fs) as seen:
        assert other.put(b"second writer", oid=oid) == oid  # no error: the name exists
    assert methods(seen) == ["PUT"]  # answered 412, not retried, no HEAD
    assert seen[0][2].get("If-None-Match") == "*"
    # Bypassing the store's own logic: the server itself refuses the create-only PUT.
    assert other._write_new(other._oid_path(oid), b"third writer") is False
    assert rgw_store.get(oid) == b"first writer"
    assert other.get(oid) == b"first writer"


def test_writes_are_one_put_each(rgw_store: S3Store) -> None:
    rgw_store.info()
    with count_requests(rgw_store.fs) as seen:
        oid = rgw_store.put(b"new value")
    assert methods(seen) == ["PUT"]
    assert seen[0][2].get("If-None-Match") == "*"
    with count_requests(rgw_store.fs) as seen:
        rgw_store.put_call(FID, digest_of(1), b"record")
        rgw_store.put_call(FID, digest_of(1), b"record, replaced")
    assert methods(seen) == ["PUT", "PUT"]  # call records: plain PUTs, last writer wins
    assert all("If-None-Match" not in headers for _, _, headers in seen)
    assert rgw_store.get_call(FID, digest_of(1)) == b"record, replaced"
    assert rgw_store.get(oid) == b"new value"


def test_large_existing_value_is_not_uploaded_again(rgw_store: S3Store) -> None:
    big = os.urandom(HEAD_FIRST + 1)
    with count_requests(rgw_store.fs) as seen:
        oid = rgw_store.put(big)
    assert methods(seen) == ["HEAD", "PUT", "PUT"]  # 404, fleche.json, the object
    with count_requests(rgw_store.fs) as seen:
        assert rgw_store.put(big) == oid
    assert methods(seen) == ["HEAD"]
    assert rgw_store.get(oid) == big


# -- reads ------------------------------------------------------------------------------------


def test_a_small_read_is_one_get(rgw: RadosGW, rgw_store: S3Store) -> None:
    digest = digest_of("hit")
    rgw_store.put_call(FID, digest, b"x" * 200)
    oid = rgw_store.put(b"small value")
    with count_requests(rgw_store.fs) as seen:
        other = S3Store(rgw_store.url, fs=rgw_store.fs)
    assert methods(seen) == ["GET"]  # fleche.json, once
    assert seen[0][1].endswith("/team/cache/fleche.json")
    with count_requests(rgw_store.fs) as seen:
        assert other.get_call(FID, digest) == b"x" * 200
    assert methods(seen) == ["GET"]
    with count_requests(rgw_store.fs) as seen:
        assert other.get(oid) == b"small value"
    assert methods(seen) == ["GET"]
    with count_requests(rgw_store.fs) as seen, pytest.raises(CacheMiss):
        other.get_call(FID, digest_of("miss"))
    # the first miss of a handle also lists packs/ (docs/format.md, "Packs")
    assert methods(seen) == ["GET", "GET"] and "packs%2F" in seen[1][1]
    with count_requests(rgw_store.fs) as seen, pytest.raises(CacheMiss):
        other.get_call(FID, digest_of("another miss"))
    assert methods(seen) == ["GET"]  # a miss is one 404 (NoSuchKey): no HEAD, no LIST


def test_listing_pages(rgw_store: S3Store) -> None:
    oids = {rgw_store.put(str(i).encode()) for i in range(5)}
    calls = {(f"mod.f{i % 2}", digest_of(i)) for i in range(5)}
    for fid, digest in calls:
        rgw_store.put_call(fid, digest, b"r")
    with count_requests(rgw_store.fs) as seen:
        assert set(rgw_store.iter_oids()) == oids
        assert set(rgw_store.iter_calls()) == calls
    assert methods(seen) == ["GET", "GET", "GET"]  # one ListObjectsV2 each, one of packs/
    rgw_store._page_size = 2
    with count_requests(rgw_store.fs) as seen:
        assert set(rgw_store.iter_oids()) == oids
    assert len(seen) == 3  # 5 keys, 2 per page: radosgw's continuation tokens work


def test_16_mib_value_round_trip(rgw: RadosGW, rgw_store: S3Store) -> None:
    data = os.urandom(16 * 2**20)
    with count_requests(rgw_store.fs) as seen:
        oid = rgw_store.put([memoryview(data)[: 5 * 2**20], memoryview(data)[5 * 2**20 :]])
    assert methods(seen) == ["HEAD", "PUT", "PUT"]  # one PUT for the body, not a multipart upload
    fresh = open_store(rgw_store.url, **rgw.options(skip_instance_cache=True))
    assert fresh.size(oid) == len(data)
    with count_requests(fresh.fs) as seen:
        assert fresh.get(oid) == data
    assert methods(seen) == ["GET"]


# -- errors -------------------------------------------------------------------------------------


def test_missing_bucket_is_a_config_error(rgw: RadosGW) -> None:
    name = f"fleche-absent-{uuid.uuid4().hex[:12]}"
    for read_only in (False, True):
        with pytest.raises(ConfigError) as info:
            open_store(f"s3://{name}/cache", read_only=read_only, **rgw.options())
        message = str(info.value)
        assert repr(name) in message and "does not exist" in message
        assert "create it" in message and rgw.endpoint in message


def test_bucket_deleted_after_open_is_an_error_not_a_miss(rgw: RadosGW, bucket: str) -> None:
    store = open_store(f"s3://{bucket}", **rgw.options())
    rgw.client().delete_bucket(Bucket=bucket)
    with pytest.raises(ConfigError, match=bucket):
        store.get_call(FID, digest_of(1))
    with pytest.raises(ConfigError, match=bucket):
        list(store.iter_oids())
    with pytest.raises(ConfigError, match=bucket):
        store.put(b"nowhere to go")


def test_wrong_credentials_are_permission_errors(rgw: RadosGW, bucket: str) -> None:
    url = f"s3://{bucket}/cache"
    good = open_store(url, **rgw.options())
    digest = digest_of("secret")
    good.put_call(FID, digest, b"record")
    for key, secret, code in (
        ("AKIDOESNOTEXIST00000", "x", "InvalidAccessKeyId"),
        (rgw.key, "not-the-secret", "SignatureDoesNotMatch"),
    ):
        opts = rgw.options(key=key, secret=secret, skip_instance_cache=True)
        for read_only in (False, True):  # opening reads fleche.json: refused, not a miss
            with pytest.raises(PermissionError) as info:
                open_store(url, read_only=read_only, **opts)
            assert code in str(info.value) and bucket in str(info.value)
            assert "AWS_ACCESS_KEY_ID" in str(info.value)
            assert not isinstance(info.value, CacheMiss)
    assert good.get_call(FID, digest) == b"record"


# -- the whole stack ----------------------------------------------------------------------------


def test_decorator_end_to_end(rgw: RadosGW, bucket: str) -> None:
    url = f"s3://{bucket}/team-cache"
    calls: list[int] = []

    @fleche
    def simulate(n: int, alpha: float = 0.1) -> dict[str, Any]:
        calls.append(n)
        return {"n": n, "alpha": alpha, "big": bytes(range(256)) * 64}  # > inline: an object

    @fleche
    def small(n: int) -> int:
        calls.append(-n)
        return n * n

    with cache(url, endpoint_url=rgw.endpoint, key=rgw.key, secret=rgw.secret) as active:
        assert isinstance(active.store, S3Store)
        first = simulate(10)
        assert simulate(n=10, alpha=0.1) == first
        assert small(3) == 9
    assert calls == [10, -3]

    # Another process's view: a second Cache on its own filesystem.
    fresh = open_store(url, **rgw.options(skip_instance_cache=True))
    assert isinstance(fresh, S3Store)
    second = Cache(fresh)
    fid = simulate.__fleche__.function_id  # type: ignore[attr-defined]
    assert (fid, simulate.digest(10)) in set(fresh.iter_calls())
    assert len(list(fresh.iter_oids())) == 1  # the small result is inline in its record
    with cache(second):
        assert simulate.contains(10)
        assert simulate(10) == first
        assert simulate.load(10) == first
        with count_requests(fresh.fs) as seen:
            assert small(3) == 9
        assert methods(seen) == ["GET"]  # a small hit: one request
    assert calls == [10, -3]


def test_decorated_16_mib_result(rgw: RadosGW, bucket: str) -> None:
    url = f"s3://{bucket}/big"
    calls: list[int] = []

    @fleche
    def noise(seed: int) -> bytes:
        calls.append(seed)
        return os.urandom(16 * 2**20)

    with cache(url, **rgw.options()):
        value = noise(1)
    assert len(value) == 16 * 2**20
    with cache(Cache(open_store(url, **rgw.options(skip_instance_cache=True)))):
        assert noise(1) == value
    assert calls == [1]
