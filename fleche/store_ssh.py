"""SSH connections for the SFTP store: ssh_config, host keys, a pool of SFTP sessions.

:class:`SSHFileSystem` is fsspec's ``SFTPFileSystem`` (paramiko) with what a
shared cache needs from its connection:

- **ssh_config.** ``~/.ssh/config`` (or ``ssh_config=``) is read like ``ssh``
  does: ``HostName``, ``User``, ``Port``, ``IdentityFile``,
  ``IdentitiesOnly``, ``ProxyCommand``/``ProxyJump``, ``ConnectTimeout``,
  ``ServerAliveInterval``, ``UserKnownHostsFile``/``GlobalKnownHostsFile``
  and ``StrictHostKeyChecking``. Options given in code win over the file.
- **Host keys.** Unknown host keys are refused unless
  ``host_key_policy="accept-new"`` (or ``StrictHostKeyChecking accept-new``
  / ``no`` for the host): fsspec's default accepts any key, which lets a man
  in the middle read and poison a team's cache. A changed key is always
  refused. fleche never writes ``known_hosts``.
- **One connection, a pool of sessions.** paramiko's ``SFTPClient`` is not
  thread-safe (two threads reading replies steal each other's), so each
  operation borrows an SFTP session (one SSH channel) from a pool over one
  SSH connection; ``max_sessions`` (8) stays under OpenSSH's default
  ``MaxSessions`` (10). A dropped connection is reopened at the next
  operation; a forked child opens its own and never touches its parent's.
  TCP_NODELAY is set: pipelined requests are small packets.
- **Errors** that say what to do: :class:`SSHConnectionError` (unreachable,
  lost), :class:`SSHAuthenticationError` (login refused, host key unknown or
  changed), :class:`SSHPermissionError`; all ``OSError`` and ``FlecheError``.

The options and ssh_config entries are resolved in :mod:`fleche.store_ssh_settings`;
``_Replies`` (:mod:`fleche.store_sftp_pipeline`) sends SFTP requests without
waiting for each reply, which is what makes the store fast (see ``store_sftp``).
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

try:
    import paramiko
    from fsspec.implementations.sftp import SFTPFileSystem
except ImportError as e:  # pragma: no cover - exercised only without the ssh extra
    raise ImportError(f"sftp:// stores need paramiko ({e}): pip install 'fleche[ssh]'") from e
from fsspec.spec import AbstractFileSystem
from paramiko.sftp import CMD_EXTENDED, CMD_EXTENDED_REPLY

from fleche.errors import ConfigError, FlecheError
from fleche.store_sftp_pipeline import _Failure, _Replies
from fleche.store_ssh_settings import _resolve, _Settings

__all__ = [
    "SSHAuthenticationError",
    "SSHConnectionError",
    "SSHError",
    "SSHFileSystem",
    "SSHPermissionError",
]

_CHUNK = 32768  # the request size every SFTP server takes (draft-ietf-secsh-filexfer-02)
_MAX_CHUNK = 1 << 18
# Receive window of a session: paramiko's 2 MiB default made 10 MiB reads ~35% slower here.
_CHANNEL_WINDOW = 8 << 20
_TIMEOUTS = ("banner_timeout", "auth_timeout")  # default to timeout= rather than paramiko's


# -- errors --------------------------------------------------------------------------------


class SSHError(FlecheError, OSError):
    """An SSH server or connection failed an operation (an ``OSError``: the decorator fails open)."""


class SSHConnectionError(SSHError, ConnectionError):
    """The SSH server cannot be reached, or the connection to it was lost."""


class SSHPermissionError(SSHError, PermissionError):
    """The SSH server refused a file operation, the login, or its host key is not trusted."""


class SSHAuthenticationError(SSHPermissionError):
    """The login was refused, or the server's host key is unknown or changed."""


class _RefuseUnknownHost(paramiko.MissingHostKeyPolicy):  # type: ignore[misc]
    """Refuse a host whose key is in no known_hosts file, saying how to check and record it."""

    def __init__(self, settings: _Settings) -> None:
        self.settings = settings

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        s = self.settings
        files = ", ".join(s.known_hosts) or "no known_hosts file"
        port = f"-p {s.port} " if s.port != 22 else ""
        raise SSHAuthenticationError(
            f"the host key of {hostname} ({key.get_name()} {key.fingerprint}) is not in "
            f"{files}, and fleche does not trust unknown hosts: check the fingerprint with the "
            f"server's admin, then record it (`ssh {port}{s.username}@{s.hostname}` once and "
            "answer yes), or pass host_key_policy='accept-new' (or set StrictHostKeyChecking "
            "accept-new for this host in ~/.ssh/config) to accept keys not seen before"
        )


# -- the filesystem: one connection, a pool of SFTP sessions ---------------------------------


class SSHFileSystem(SFTPFileSystem):  # type: ignore[misc]
    """fsspec's ``SFTPFileSystem``, with ssh_config, checked host keys and thread-safe sessions.

    ``SSHFileSystem("host", port=..., username=..., key_filename=...,
    ssh_config=..., known_hosts=..., host_key_policy="reject")`` connects at
    once, so a bad host, key or host key fails here. ``session()`` lends one
    SFTP session from a pool (what the store uses); ``ftp`` is this thread's
    own session for fsspec's methods (``ls``, ``open``, ``find``...).
    ``close()`` disconnects; the next use connects again.

    Not in fsspec's instance cache (``cachable = False``): each store owns its
    connection and ``store.close()`` may close it without breaking another.
    """

    cachable = False

    def __init__(self, host: str, **options: Any) -> None:
        AbstractFileSystem.__init__(self)
        self.settings = _resolve(host, options)
        self.host = self.settings.hostname
        self.temppath = "/tmp"  # fsspec's transactions (autocommit=False) stage files there
        self.client: paramiko.SSHClient | None = None
        self.read_chunk = self.write_chunk = _CHUNK  # raised to the server's limits when known
        self._limits_known = False
        self.posix_rename = True  # False once the server has refused posix-rename@openssh.com
        self._lock = threading.Lock()  # connecting
        self._pool = threading.Condition()  # the sessions below
        self._idle: list[paramiko.SFTPClient] = []
        self._open_sessions = 0
        self._local = threading.local()
        self._pid = os.getpid()
        self._inherited: list[Any] = []  # a parent's connection, after fork: kept, never used
        self._connect()

    @property
    def where(self) -> str:
        return self.settings.where

    # -- connecting -----------------------------------------------------------------------

    def _socket(self) -> Any:
        s = self.settings
        if s.proxy_command:
            try:
                return paramiko.ProxyCommand(s.proxy_command)
            except (OSError, paramiko.SSHException) as e:
                raise SSHConnectionError(
                    f"cannot start the proxy command for {s.where} ({s.proxy_command}): {e}"
                ) from e
        try:
            sock = socket.create_connection((s.hostname, s.port), timeout=s.timeout)
        except socket.gaierror as e:
            raise SSHConnectionError(
                f"cannot resolve the host name {s.hostname!r} ({e}) to reach {s.where}: check "
                f"the URL, or define Host {s.alias} (with HostName) in ~/.ssh/config or in the "
                "file given as ssh_config="
            ) from e
        except TimeoutError as e:
            raise SSHConnectionError(
                f"no answer from {s.where} within {s.timeout:g} s: check the host and port, "
                "and any firewall or VPN between (timeout= waits longer)"
            ) from e
        except OSError as e:
            raise SSHConnectionError(
                f"cannot connect to {s.where}: {e.strerror or e}. Is sshd running there and "
                f"listening on port {s.port}? (`ssh -p {s.port} {s.username}@{s.hostname}` "
                "should work)"
            ) from e
        # Pipelined requests are small packets: with Nagle's algorithm and delayed ACKs
        # a 10 MiB read stalled from ~20 ms to ~110 ms here.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _connect(self) -> None:
        """Open the SSH connection (authenticated, host key checked) as ``self.client``."""
        s = self.settings
        client = paramiko.SSHClient()
        for path in s.known_hosts:
            try:  # "system" host keys: paramiko never writes them back
                client.load_system_host_keys(path)
            except FileNotFoundError:
                continue
            except OSError as e:
                raise ConfigError(f"cannot read the known hosts file {path}: {e}") from e
        policy = s.host_key_policy
        if policy == "reject":
            policy = _RefuseUnknownHost(s)
        elif policy == "accept-new":
            # Remembered in memory only: no known_hosts file was loaded for writing.
            policy = paramiko.AutoAddPolicy()
        client.set_missing_host_key_policy(policy)
        sock = self._socket()
        try:
            client.connect(
                s.hostname,
                port=s.port,
                username=s.username,
                key_filename=list(s.key_filename) or None,
                sock=sock,
                timeout=s.timeout,
                banner_timeout=s.connect.get("banner_timeout", s.timeout),
                auth_timeout=s.connect.get("auth_timeout", s.timeout),
                **{k: v for k, v in s.connect.items() if k not in _TIMEOUTS},
            )
        except BaseException as e:
            transport = client.get_transport()
            # Handshake done, host key accepted, not logged in: paramiko reports a refused
            # key as AuthenticationException, or as the last key-parsing error it met.
            in_auth = bool(transport and transport.is_active() and not transport.is_authenticated())
            client.close()
            if isinstance(e, FlecheError):
                raise
            if isinstance(e, paramiko.BadHostKeyException):
                raise SSHAuthenticationError(
                    f"the host key of {s.where} has CHANGED: known_hosts has "
                    f"{e.expected_key.get_name()} {e.expected_key.fingerprint}, the server sent "
                    f"{e.key.get_name()} {e.key.fingerprint}. Someone may be intercepting the "
                    "connection, or the server was reinstalled: ask its admin, then fix "
                    f"known_hosts (`ssh-keygen -R '[{s.hostname}]:{s.port}'`)"
                ) from e
            if isinstance(e, paramiko.AuthenticationException) or (
                in_auth and isinstance(e, paramiko.SSHException)
            ):
                keys = ", ".join(s.key_filename) or "the default keys and the ssh agent"
                raise SSHAuthenticationError(
                    f"{s.where} refused the login of user {s.username!r} ({e}); tried {keys}. "
                    "Check that the public key is in ~/.ssh/authorized_keys on the server, or "
                    "pass key_filename= / username= (or set IdentityFile / User in ~/.ssh/config)"
                ) from e
            if isinstance(e, (paramiko.SSHException, EOFError, OSError)):
                raise SSHConnectionError(f"SSH connection to {s.where} failed: {e}") from e
            raise
        transport = client.get_transport()
        if transport is not None and s.keepalive > 0:
            transport.set_keepalive(s.keepalive)  # NAT and firewalls drop idle connections
        self.client = client

    def _check_fork(self) -> None:
        """In a forked child, forget the parent's connection (its reader thread did not fork)."""
        if os.getpid() != self._pid:
            # The child starts with this one thread, so no lock is taken (one held at the
            # fork would never be released). The parent's objects stay referenced: garbage-
            # collecting them would send SSH close messages on the socket the parent still uses.
            self._inherited.append((self.client, self._idle, self._local))
            self.client, self._idle, self._open_sessions = None, [], 0
            self._local = threading.local()
            self._lock = threading.Lock()
            self._pool = threading.Condition()
            self._pid = os.getpid()

    def _transport(self) -> paramiko.Transport:
        with self._lock:
            transport = self.client.get_transport() if self.client is not None else None
            if transport is None or not transport.is_active():
                if self.client is not None:
                    self.client.close()
                self._connect()
                assert self.client is not None
                transport = self.client.get_transport()
            return transport

    def _open_session(self) -> paramiko.SFTPClient:
        transport = self._transport()
        try:
            sftp = paramiko.SFTPClient.from_transport(transport, window_size=_CHANNEL_WINDOW)
        except (paramiko.SSHException, EOFError, OSError) as e:
            sftp, error = None, e
        else:
            error = None
        if sftp is None:
            raise SSHConnectionError(
                f"{self.where} refused an SFTP session ({error or 'channel refused'}): the server "
                "needs the sftp subsystem (Subsystem sftp in sshd_config) and MaxSessions >= "
                "max_sessions (8 by default; pass a smaller max_sessions=)"
            ) from error
        sftp.get_channel().settimeout(self.settings.io_timeout)
        if not self._limits_known:
            self._learn_limits(sftp)
        return sftp

    def _learn_limits(self, sftp: paramiko.SFTPClient) -> None:
        """Request sizes from ``limits@openssh.com``; 32 KiB where the server does not say."""
        r = _Replies(sftp)
        try:
            t, msg = r.call("limits@openssh.com", CMD_EXTENDED, "limits@openssh.com")
        except _Failure:  # not OpenSSH (>= 8.6): keep 32 KiB, which every server takes
            t = None
        if t == CMD_EXTENDED_REPLY:
            msg.get_int64()  # maximum packet length
            read, write = msg.get_int64(), msg.get_int64()
            self.read_chunk = min(max(read, _CHUNK), _MAX_CHUNK) if read else _CHUNK
            self.write_chunk = min(max(write, _CHUNK), _MAX_CHUNK) if write else _CHUNK
        self._limits_known = True

    # -- sessions -------------------------------------------------------------------------

    @contextmanager
    def session(self) -> Iterator[paramiko.SFTPClient]:
        """Borrow an SFTP session for one operation (at most ``max_sessions`` at once)."""
        self._check_fork()
        with self._pool:
            while True:
                sftp = self._idle.pop() if self._idle else None
                if sftp is not None and _alive(sftp):
                    break
                if sftp is not None:  # its connection died while idle
                    self._open_sessions -= 1
                    continue
                if self._open_sessions < self.settings.max_sessions:
                    self._open_sessions += 1
                    break
                self._pool.wait()
        if sftp is None:
            try:
                sftp = self._open_session()
            except BaseException:
                with self._pool:
                    self._open_sessions -= 1
                    self._pool.notify()
                raise
        try:
            yield sftp
        except BaseException as e:
            # A failure status leaves the session usable; anything else (a timeout in
            # the middle of a reply, an interrupt) may have left it mid-packet.
            keep = isinstance(e, OSError) and not isinstance(e, (TimeoutError, ConnectionError))
            self._give_back(sftp, keep and _alive(sftp))
            if isinstance(e, TimeoutError):
                self._drop_connection()  # the network path may be dead: reconnect next time
            raise
        self._give_back(sftp, True)

    def _give_back(self, sftp: paramiko.SFTPClient, keep: bool) -> None:
        with self._pool:
            if keep and sftp.get_channel().get_transport() is self._current_transport():
                self._idle.append(sftp)
            else:
                self._open_sessions -= 1
                with suppress(Exception):
                    sftp.close()
            self._pool.notify()

    @property
    def connected(self) -> bool:
        """Whether the SSH connection is up (it is reopened on demand when not)."""
        transport = self._current_transport()
        return transport is not None and transport.is_active()

    def _current_transport(self) -> paramiko.Transport | None:
        return self.client.get_transport() if self.client is not None else None

    def _drop_connection(self) -> None:
        with self._lock:
            if self.client is not None:
                self.client.close()

    @property
    def ftp(self) -> paramiko.SFTPClient:
        """This thread's SFTP session, for fsspec's own methods (paramiko's client is not thread-safe)."""
        self._check_fork()
        sftp = getattr(self._local, "sftp", None)
        if sftp is None or not _alive(sftp):
            sftp = self._local.sftp = self._open_session()
        return sftp

    def close(self) -> None:
        """Close every session and the connection; the next operation reconnects."""
        self._check_fork()
        with self._pool:
            idle, self._idle = self._idle, []
            self._open_sessions -= len(idle)
        for sftp in idle:
            with suppress(Exception):
                sftp.close()
        self._local = threading.local()
        self._drop_connection()


def _alive(sftp: paramiko.SFTPClient) -> bool:
    channel = sftp.get_channel()
    transport = channel.get_transport() if channel is not None else None
    return (
        channel is not None
        and not channel.closed
        and transport is not None
        and transport.is_active()
    )
