"""Ceph's radosgw on 127.0.0.1: a production S3 implementation for the S3 store tests.

``./tools/test`` starts one (``tools/services/radosgw``: a monitor, a memstore
OSD and radosgw) and passes it in ``FLECHE_TEST_RGW_*`` variables. A plain
``pytest`` run starts its own with the same script and stops it at the end of
the session. When radosgw truly cannot run here (not installed and no root to
install it), the script says why in ``FLECHE_TEST_RGW_SKIP`` and the tests that
need it skip with that reason. Isolate tests with a fresh bucket each.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from services import service_env


@dataclass(frozen=True)
class RadosGW:
    endpoint: str
    """``http://127.0.0.1:PORT``"""
    key: str
    secret: str

    def options(self, **extra: Any) -> dict[str, Any]:
        """Storage options for ``open_store`` / ``cache``: endpoint and the test user's keys."""
        return {"endpoint_url": self.endpoint, "key": self.key, "secret": self.secret, **extra}

    def client(self) -> Any:
        """A plain boto3 client on this server (for setting up, not for the code under test)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.key,
            aws_secret_access_key=self.secret,
            region_name="us-east-1",
        )

    def new_bucket(self, prefix: str = "fleche-test") -> str:
        """Create and return a bucket no other test uses."""
        name = f"{prefix}-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=name)
        return name


def _from_env(env: dict[str, str]) -> RadosGW | str:
    """The server described by ``env``, or the reason there is none."""
    if env.get("FLECHE_TEST_RGW_SKIP"):
        return env["FLECHE_TEST_RGW_SKIP"]
    return RadosGW(
        endpoint=env["FLECHE_TEST_RGW_ENDPOINT"],
        key=env["FLECHE_TEST_RGW_KEY"],
        secret=env["FLECHE_TEST_RGW_SECRET"],
    )


@contextmanager
def radosgw_service() -> Iterator[RadosGW | str]:
    """The running test radosgw (from ``tools/test``) or one started for this session."""
    with service_env("radosgw", "FLECHE_TEST_RGW_", "ENDPOINT") as env:
        yield env if isinstance(env, str) else _from_env(env)
