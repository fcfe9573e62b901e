"""A real PostgreSQL on 127.0.0.1 for the SQL index tests.

``./tools/test`` starts one (``tools/services/postgres``) and passes its URL in
``FLECHE_TEST_PG_URL``. A plain ``pytest`` run starts its own with the same
script and stops it at the end of the session. When PostgreSQL truly cannot run
here (not installed and no root to install it), the script says why in
``FLECHE_TEST_PG_SKIP`` and the tests that need it skip with that reason.

Tests isolate themselves with a fresh schema each (:func:`schema_url`): cheaper
than a database, and the index's tables are created in the first schema of the
connection's ``search_path``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

from services import service_env


def _from_env(env: dict[str, str]) -> str:
    """The server's URL, or ``skip:`` and the reason there is none."""
    if env.get("FLECHE_TEST_PG_SKIP"):
        return "skip:" + env["FLECHE_TEST_PG_SKIP"]
    return env["FLECHE_TEST_PG_URL"]


@contextmanager
def postgres_service() -> Iterator[str]:
    """The running test PostgreSQL's URL (from ``tools/test``), or one started for this session.

    Yields ``skip:REASON`` when there is none.
    """
    with service_env("postgres", "FLECHE_TEST_PG_", "URL") as env:
        yield "skip:" + env if isinstance(env, str) else _from_env(env)


def schema_url(url: str) -> str:
    """A fresh, empty schema on the server at ``url``, as a URL whose connections use it."""
    import sqlalchemy as sa

    name = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE SCHEMA {name}"))
    finally:
        engine.dispose()
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-csearch_path={name}')}"
