"""Where and how an SSH connection goes: options and ``~/.ssh/config`` resolved once.

``_resolve(host, options)`` reads ssh_config like ``ssh`` does (``HostName``,
``User``, ``Port``, ``IdentityFile``, ``IdentitiesOnly``,
``ProxyCommand``/``ProxyJump``, ``ConnectTimeout``, ``ServerAliveInterval``,
``UserKnownHostsFile``/``GlobalKnownHostsFile``, ``StrictHostKeyChecking``),
lets options given in code win over the file, and checks them: the
:class:`_Settings` that :class:`fleche.store._ssh.SSHFileSystem` connects (and
reconnects) with. Nothing here opens a connection.

"""

from __future__ import annotations

import getpass
import inspect
import os
import shlex
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import paramiko
from fsspec.spec import AbstractFileSystem
from paramiko.sftp import CMD_EXTENDED, CMD_EXTENDED_REPLY

from fleche.errors import ConfigError, FlecheError
from fleche.store._sftp_pipeline import _Failure, _Replies

_POLICIES = ("reject", "accept-new")
# StrictHostKeyChecking in ssh_config -> host_key_policy. "no" would also accept a
# *changed* key in OpenSSH; fleche never does.
_STRICT = {"yes": "reject", "ask": "reject", "accept-new": "accept-new", "no": "accept-new"}
_STRICT["off"] = _STRICT["no"]
# Options handled here; paramiko's SSHClient.connect takes the rest.
_OWN = {"hostname", "port", "username", "key_filename", "timeout", "sock"}
_CONNECT = set(inspect.signature(paramiko.SSHClient.connect).parameters) - _OWN - {"self"}
_STORE_OPTIONS: tuple[str, ...] = (
    "ssh_config",
    "known_hosts",
    "host_key_policy",
    "io_timeout",
    "keepalive",
)
_STORE_OPTIONS += ("max_sessions",)
_DEFAULT_KNOWN = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
_GLOBAL_KNOWN = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")


# -- settings: options and ssh_config -------------------------------------------------------


@dataclass(frozen=True)
class _Settings:
    """Everything needed to (re)connect, resolved once from options and ssh_config."""

    alias: str
    hostname: str
    port: int
    username: str
    key_filename: tuple[str, ...]
    known_hosts: tuple[str, ...]
    host_key_policy: Any
    proxy_command: str | None
    timeout: float
    io_timeout: float
    keepalive: int
    max_sessions: int
    connect: dict[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        """``user@host:port``, and the alias it came from: for error messages."""
        host = f"[{self.hostname}]" if ":" in self.hostname else self.hostname
        text = f"{self.username}@{host}:{self.port}"
        return text if self.alias == self.hostname else f"{text} (Host {self.alias})"


def _paths(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, (str, os.PathLike)):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{what} must be a path or a list of paths, not {type(value).__name__}")
    return tuple(os.path.expanduser(os.fspath(v)) for v in value)


def _load_ssh_config(path: Any) -> tuple[paramiko.SSHConfig, str | None]:
    """The ssh_config to read and its path when one was given.

    ``None``: ``~/.ssh/config`` if it exists; ``False``: none; a path: that file, which must exist.
    """
    if path is False:
        return paramiko.SSHConfig(), None
    given = path is not None
    path = os.path.expanduser(os.fspath(path) if given else "~/.ssh/config")
    try:
        return paramiko.SSHConfig.from_path(path), path if given else None
    except FileNotFoundError:
        if given:
            raise ConfigError(f"ssh_config={path!r} does not exist") from None
        return paramiko.SSHConfig(), None
    except (OSError, ValueError, paramiko.SSHException) as e:
        raise ConfigError(f"cannot read the ssh config {path}: {e}") from e


def _proxy(cfg: dict[str, Any], hostname: str, port: int, config_path: str | None) -> str | None:
    """A ProxyCommand, or ProxyJump turned into the ``ssh -W`` command OpenSSH would run."""
    command = cfg.get("proxycommand")
    if command and command.lower() != "none":
        return str(command)
    jump = cfg.get("proxyjump")
    if not jump or jump.lower() == "none":
        return None
    hops = jump.split(",")
    argv = ["ssh", *(["-F", config_path] if config_path else [])]
    argv += ["-J", ",".join(hops[:-1])] if len(hops) > 1 else []
    target = f"[{hostname}]" if ":" in hostname else hostname
    return shlex.join([*argv, "-W", f"{target}:{port}", hops[-1]])


def _resolve(host: str, options: dict[str, Any]) -> _Settings:
    """Settings for ``host`` (a name, address or ssh_config alias): options first, then ssh_config."""
    opts = dict(options)
    config, config_path = _load_ssh_config(opts.pop("ssh_config", None))
    cfg = config.lookup(host)
    hostname = str(cfg.get("hostname", host))
    try:
        port = int(opts.pop("port", None) or cfg.get("port", 22))
        timeout = float(opts.pop("timeout", None) or cfg.get("connecttimeout", 10))
        keepalive = int(opts.pop("keepalive", cfg.get("serveraliveinterval", 30)))
        io_timeout = float(opts.pop("io_timeout", 60))
        max_sessions = int(opts.pop("max_sessions", 8))
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid SSH option for {host!r}: {e}") from e
    if max_sessions < 1:
        raise ConfigError(f"max_sessions must be at least 1, not {max_sessions}")
    username = opts.pop("username", None) or cfg.get("user") or getpass.getuser()

    keys = opts.pop("key_filename", None)
    if keys is not None:
        key_filename = _paths(keys, "key_filename")
        for key in key_filename:
            if not os.path.isfile(key):
                raise ConfigError(f"key_filename {key!r} does not exist (connecting to {host!r})")
    else:  # like ssh: IdentityFile entries that do not exist are skipped
        key_filename = tuple(
            p for p in _paths(cfg.get("identityfile", []), "") if os.path.isfile(p)
        )
    if str(cfg.get("identitiesonly", "")).lower() == "yes":
        opts.setdefault("look_for_keys", False)
        opts.setdefault("allow_agent", False)

    known = opts.pop("known_hosts", None)
    if known is not None:
        known_hosts = _paths(known, "known_hosts")
    else:
        user_files = cfg.get("userknownhostsfile")
        global_files = cfg.get("globalknownhostsfile")
        known_hosts = _paths(user_files.split() if user_files else list(_DEFAULT_KNOWN), "")
        known_hosts += _paths(global_files.split() if global_files else list(_GLOBAL_KNOWN), "")

    policy = opts.pop("host_key_policy", None)
    if policy is None:
        policy = _STRICT.get(str(cfg.get("stricthostkeychecking", "yes")).lower(), "reject")
    if not (policy in _POLICIES or isinstance(policy, paramiko.MissingHostKeyPolicy)):
        raise ConfigError(
            f"host_key_policy={policy!r}: expected one of {', '.join(map(repr, _POLICIES))} "
            "or a paramiko.MissingHostKeyPolicy instance"
        )

    unknown = sorted(set(opts) - _CONNECT)
    if unknown:
        raise ConfigError(
            f"unknown SSH option(s) {', '.join(unknown)} for {host!r}; the SFTP store takes "
            f"port, username, key_filename, timeout, {', '.join(_STORE_OPTIONS)} and "
            f"paramiko's connect options ({', '.join(sorted(_CONNECT))})"
        )
    return _Settings(
        alias=host,
        hostname=hostname,
        port=port,
        username=str(username),
        key_filename=key_filename,
        known_hosts=known_hosts,
        host_key_policy=policy,
        proxy_command=_proxy(cfg, hostname, port, config_path),
        timeout=timeout,
        io_timeout=io_timeout,
        keepalive=keepalive,
        max_sessions=max_sessions,
        connect=opts,
    )


try:
    import paramiko
    from fsspec.implementations.sftp import SFTPFileSystem
except ImportError as e:  # pragma: no cover - exercised only without the ssh extra
    raise ImportError(f"sftp:// stores need paramiko ({e}): pip install 'fleche[ssh]'") from e


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
