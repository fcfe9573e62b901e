"""A real S3 server for tests: moto's standalone server, in this process, on 127.0.0.1.

Not a mock: requests go over HTTP through s3fs/aiobotocore to moto's werkzeug
server, which implements S3 semantics (``If-None-Match: *`` refused with 412,
``NoSuchBucket`` vs ``NoSuchKey``, and IAM-checked credentials when asked).
Start one per session; isolate tests with a fresh bucket each.
"""

from __future__ import annotations

import json
import logging
import uuid
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


class MotoS3:
    """moto's S3 server on an ephemeral port of 127.0.0.1, with helpers for tests."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

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
