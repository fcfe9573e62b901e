"""A real OpenSSH sshd on 127.0.0.1 for the SFTP and ``remote --serve`` tests.

``./tools/test`` starts one (``tools/services/sshd``) and passes it in
``FLECHE_TEST_SSH_*`` variables. A plain ``pytest`` run starts its own with
the same script and stops it at the end of the session. When sshd truly cannot
run here (not installed and no root to install it), the script says why in
``FLECHE_TEST_SSH_SKIP`` and the tests that need it skip with that reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from services import service_env


@dataclass(frozen=True)
class SSHServer:
    host: str
    port: int
    user: str
    key: str
    """Path of the client's private key (ed25519, no passphrase)."""
    config: str
    """An ``ssh_config`` with a ``fleche-test`` host alias for this server."""

    def url(self, path: str, scheme: str = "sftp") -> str:
        """``scheme://user@host:port/path`` for an absolute ``path``."""
        return f"{scheme}://{self.user}@{self.host}:{self.port}/{str(path).lstrip('/')}"

    def ssh_command(self) -> list[str]:
        """An ``ssh`` argv prefix reaching this server (append the remote command)."""
        return ["ssh", "-F", self.config, "fleche-test"]


def _from_env(env: dict[str, str]) -> SSHServer | str:
    """The server described by ``env``, or the reason there is none."""
    if env.get("FLECHE_TEST_SSH_SKIP"):
        return env["FLECHE_TEST_SSH_SKIP"]
    return SSHServer(
        host=env["FLECHE_TEST_SSH_HOST"],
        port=int(env["FLECHE_TEST_SSH_PORT"]),
        user=env["FLECHE_TEST_SSH_USER"],
        key=env["FLECHE_TEST_SSH_KEY"],
        config=env["FLECHE_TEST_SSH_CONFIG"],
    )


@contextmanager
def sshd_service() -> Iterator[SSHServer | str]:
    """The running test sshd (from ``tools/test``) or one started for this session."""
    with service_env("sshd", "FLECHE_TEST_SSH_", "HOST") as env:
        yield env if isinstance(env, str) else _from_env(env)
