"""Where and how an SSH connection goes: options and ``~/.ssh/config`` resolved once.

``_resolve(host, options)`` reads ssh_config like ``ssh`` does (``HostName``,
``User``, ``Port``, ``IdentityFile``, ``IdentitiesOnly``,
``ProxyCommand``/``ProxyJump``, ``ConnectTimeout``, ``ServerAliveInterval``,
``UserKnownHostsFile``/``GlobalKnownHostsFile``, ``StrictHostKeyChecking``),
lets options given in code win over the file, and checks them: the
:class:`_Settings` that :class:`fleche.store_ssh.SSHFileSystem` connects (and
reconnects) with. Nothing here opens a connection.
"""

from __future__ import annotations

import getpass
import inspect
import os
import shlex
from dataclasses import dataclass, field
from typing import Any

import paramiko

from fleche.errors import ConfigError

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
