"""A real S3 server for tests: moto's standalone server, in this process, on 127.0.0.1.

Not a mock: requests go over HTTP through s3fs/aiobotocore to moto's werkzeug
server, which implements S3 semantics (``If-None-Match: *`` refused with 412,
``NoSuchBucket`` vs ``NoSuchKey``, and IAM-checked credentials when asked).
Start one per session; isolate tests with a fresh bucket each.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
import warnings
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fleche.store import ObjectStore, S3Store
from fleche.testing import StoreConformance

KEY, SECRET = "fleche-test-key", "fleche-test-secret"  # moto accepts any until auth is enforced

_ALLOW_S3 = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    }
)


def _keep_replaced_keys_readable() -> None:
    """Work around a race in moto's in-memory S3 (seen with moto 5.2.6).

    moto closes an object's value buffer as soon as a PUT or DELETE replaces it
    (``FakeKey.dispose``), while another request may still be computing that object's
    ETag for its PUT response or sending it to a GET: that request then fails with
    500 "I/O operation on closed file". Real S3 and radosgw serve the old version to
    the request that already has it. Here a replaced key's buffer is closed
    :data:`_DISPOSE_AFTER` seconds later (by a later dispose), long after any request
    holding it has answered, so concurrent replacement tests exercise fleche, not
    moto's bookkeeping. Idempotent.
    """
    from moto.s3.models import FakeKey

    if getattr(FakeKey.dispose, "_fleche_deferred", False):
        return
    close_now = FakeKey.dispose
    waiting: deque[tuple[float, Any]] = deque()
    lock = threading.Lock()

    def dispose(self: Any, garbage: bool = False) -> None:
        if garbage:  # the key object is being freed: nobody can be reading it
            close_now(self)
            return
        self.disposed = True
        now = time.monotonic()
        with lock:
            waiting.append((now, self))
            due = []
            while waiting and waiting[0][0] < now - _DISPOSE_AFTER:
                due.append(waiting.popleft()[1])
        for key in due:
            close_now(key)

    dispose._fleche_deferred = True  # type: ignore[attr-defined]
    FakeKey.dispose = dispose  # type: ignore[method-assign]


_DISPOSE_AFTER = 30.0


class MotoS3:
    """moto's S3 server on an ephemeral port of 127.0.0.1, with helpers for tests."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        _keep_replaced_keys_readable()

        # werkzeug logs every request to stderr unless its logger already has a handler.
        werkzeug = logging.getLogger("werkzeug")
        werkzeug.setLevel(logging.WARNING)
        if not werkzeug.handlers:
            werkzeug.addHandler(logging.NullHandler())
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"

    def stop(self) -> None:
        self._server.stop()

    def options(self, **extra: Any) -> dict[str, Any]:
        """Storage options for ``open_store``: endpoint and dummy credentials."""
        return {"endpoint_url": self.endpoint, "key": KEY, "secret": SECRET, **extra}

    def client(self, service: str = "s3", **extra: Any) -> Any:
        """A plain boto3 client on this server (for setting up, not for the code under test)."""
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            aws_access_key_id=extra.pop("key", KEY),
            aws_secret_access_key=extra.pop("secret", SECRET),
            region_name="us-east-1",
            **extra,
        )

    def new_bucket(self, prefix: str = "fleche-test") -> str:
        """Create and return a bucket no other test uses."""
        name = f"{prefix}-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name

    def iam_user(self, name: str, *, allow_s3: bool) -> tuple[str, str]:
        """A moto IAM user's (access key, secret), allowed s3:* or nothing."""
        iam = self.client("iam")
        iam.create_user(UserName=name)
        if allow_s3:
            iam.put_user_policy(UserName=name, PolicyName="s3", PolicyDocument=_ALLOW_S3)
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    @contextmanager
    def enforce_auth(self) -> Iterator[None]:
        """Make moto check every request's credentials and IAM policy, like AWS does.

        moto accepts any credentials by default. Its (process-global) setting
        is in this process because the server is; restored on exit.
        """
        from moto import settings
        from moto.core.responses import ActionAuthenticatorMixin

        before = settings.INITIAL_NO_AUTH_ACTION_COUNT
        settings.INITIAL_NO_AUTH_ACTION_COUNT = 0
        ActionAuthenticatorMixin.request_count = 0
        try:
            yield
        finally:
            settings.INITIAL_NO_AUTH_ACTION_COUNT = before


@contextmanager
def count_requests(fs: Any) -> Iterator[list[tuple[str, str, dict[str, str]]]]:
    """Record ``(method, url, headers)`` of every HTTP request ``fs`` (an S3FileSystem) sends."""
    seen: list[tuple[str, str, dict[str, str]]] = []

    def record(request: Any, **_: Any) -> None:
        headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
        seen.append((request.method, request.url, headers))

    events = fs.s3.meta.events
    events.register("before-send.s3", record)
    try:
        yield seen
    finally:
        events.unregister("before-send.s3", record)


def methods(seen: list[tuple[str, str, dict[str, str]]]) -> list[str]:
    """The HTTP methods of requests recorded by :func:`count_requests`, in order."""
    return [method for method, _, _ in seen]


class S3StoreConformance(StoreConformance):
    """The conformance suite for an S3-compatible server: subclasses give the ``store`` fixture."""

    def reopen(self, store: ObjectStore, *, read_only: bool = False) -> ObjectStore:
        return S3Store(store.url, fs=store.fs, read_only=read_only)


class S3UploadCleanup:
    """Incomplete multipart uploads, on a real S3 server: subclasses give the ``server`` fixture.

    Run on moto's server (``test_store_s3``) and on radosgw (``test_store_rgw``).
    The network between fleche and the server is cut (``torture_helpers.Proxy``)
    after an upload began: the upload fails, its abort fails too, and its parts
    stay in the bucket. That warns, and ``fleche gc`` finds and aborts it.
    """

    def _upload_cut_midway(
        self, server: Any, url: str, tmp_path: Any
    ) -> tuple[list[str], list[dict[str, Any]]]:
        """A large value whose upload loses the network after it began: the warnings, the uploads."""
        from torture_helpers import Proxy

        from fleche.errors import FlecheWarning
        from fleche.store import open_store
        from fleche.testing import digest_of

        host, _, port = server.endpoint.partition("//")[2].partition(":")
        proxy = Proxy((host, int(port)))
        # no retries: the network is gone, and retrying only makes the test slower
        store = open_store(
            url,
            **server.options(
                endpoint_url=f"http://127.0.0.1:{proxy.port}",
                config_kwargs={"retries": {"max_attempts": 1}, "connect_timeout": 5},
            ),
        )
        store.info()  # fleche.json written before the network goes

        def chunks() -> Iterator[bytes]:
            proxy.cut()  # the upload was created; now the network goes down
            yield b"part of a large value" * 1000

        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    store.put_stream(chunks(), oid=digest_of("a large value"))
                except OSError:
                    pass
                else:
                    raise AssertionError("an upload over a cut network succeeded")
        finally:
            proxy.close()
        said = [str(w.message) for w in caught if issubclass(w.category, FlecheWarning)]
        bucket = url.partition("//")[2].partition("/")[0]
        listed = server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        return said, listed

    def test_a_failed_upload_that_cannot_be_aborted_warns_and_gc_aborts_it(
        self, server: Any, tmp_path: Any
    ) -> None:
        from fleche.store import open_store
        from fleche.upkeep import apply_gc, plan_gc

        bucket = server.new_bucket()
        url = f"s3://{bucket}/team/cache"
        said, listed = self._upload_cut_midway(server, url, tmp_path)
        assert len(listed) == 1, listed  # its parts stay: the abort never reached the server
        upload = listed[0]
        assert upload["Key"].startswith("team/cache/objects/")
        # one warning, naming the upload, where it is, and what removes it
        assert len(said) == 1, said
        assert upload["UploadId"] in said[0] and repr(bucket) in said[0]
        assert upload["Key"] in said[0] and "fleche gc" in said[0]

        # Another user's upload in the same bucket, outside the store's prefix: never touched.
        client = server.client()
        foreign = client.create_multipart_upload(Bucket=bucket, Key="team/other/data.bin")
        store = open_store(url, **server.options())
        began = upload["Initiated"].timestamp()  # the server's clock, as gc reads it
        # younger than the grace: may be a write in flight, left alone
        assert plan_gc(store, grace=time.time() - began + 86400).uploads == []
        plan = plan_gc(store, grace=0)
        assert [(u.key, u.upload_id) for u in plan.uploads] == [
            (upload["Key"].removeprefix("team/cache/"), upload["UploadId"])
        ]
        assert plan.to_dict()["uploads"][0]["upload_id"] == upload["UploadId"]
        assert len(client.list_multipart_uploads(Bucket=bucket)["Uploads"]) == 2  # a plan: listed

        result = apply_gc(store, plan)
        assert result.uploads == 1 and not result.errors
        left = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        assert [u["UploadId"] for u in left] == [foreign["UploadId"]]
        assert plan_gc(store, grace=0).uploads == []  # nothing left to abort
        apply_gc(store, plan)  # aborting one already gone is not an error
        client.abort_multipart_upload(
            Bucket=bucket, Key="team/other/data.bin", UploadId=foreign["UploadId"]
        )

    def test_fleche_gc_lists_then_aborts_incomplete_uploads(
        self, server: Any, tmp_path: Any, monkeypatch: Any
    ) -> None:
        from click.testing import CliRunner

        from fleche.cli import main

        bucket = server.new_bucket()
        url = f"s3://{bucket}/cache"
        _, listed = self._upload_cut_midway(server, url, tmp_path)
        (upload,) = listed
        opts = {k: v for k, v in server.options().items()}
        table = ", ".join(f"{k} = {json.dumps(v)}" for k, v in opts.items())
        (tmp_path / "fleche.toml").write_text(
            f'root = true\n[caches.team]\nurl = "{url}"\nstorage_options = {{ {table} }}\n'
        )
        monkeypatch.chdir(tmp_path)

        dry = CliRunner().invoke(main, ["gc", "-s", "team", "--grace", "0s", "-n"])
        assert dry.exit_code == 0, dry.output
        assert "1 incomplete upload older than --grace" in dry.output
        assert (
            upload["UploadId"] in dry.output and upload["Key"].removeprefix("cache/") in dry.output
        )
        client = server.client()
        assert len(client.list_multipart_uploads(Bucket=bucket)["Uploads"]) == 1  # dry run

        done = CliRunner().invoke(main, ["gc", "-s", "team", "--grace", "0s", "--json"])
        assert done.exit_code == 0, done.output
        doc = json.loads(done.stdout)
        assert [u["upload_id"] for u in doc["plan"]["uploads"]] == [upload["UploadId"]]
        assert doc["result"]["uploads"] == 1
        assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
