"""``fastws serve --config FILE``: server and guard settings from a TOML file.

Example::

    app = "examples.guarded:app"        # optional; the command line's module:app wins

    [server]
    host = "127.0.0.1"
    port = 9001
    max_size = 1048576
    ping_interval = 30                  # 0 turns keepalive pings off
    idle_timeout = 100                  # 0 turns the idle timeout off
    ssl_certfile = "cert.pem"
    ssl_keyfile = "key.pem"

    [guards]
    origins = ["https://example.com"]
    trusted_proxies = ["10.0.0.0/8"]
    connection_rate = "10/60s"          # or a table: { rate = "10/60s", ban = 300, action = "log" }
    message_rate = { count = 100, per = 1, action = "close" }
    max_connections = 10000
    max_connections_per_ip = 20
    queue_size = 10
    queue_timeout = 5.0

    [cluster]                           # rooms shared by every process naming this Redis
    redis = "redis://127.0.0.1:6379/0"
    lease_ttl = 3.0

    [guards.firewall]
    default = "allow"
    [[guards.firewall.rules]]
    action = "deny"
    ip = ["203.0.113.0/24"]

Every key is checked: a key fastws does not know, or a value of the wrong type,
fails with :class:`ConfigError` naming the file and the key.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]


__all__ = ["Config", "ConfigError", "load_config", "parse_config"]


class ConfigError(Exception):
    """A config file that cannot be used; the message names the file and the key."""


@dataclass
class Config:
    """What a config file says.

    Attributes:
        app: ``module:attr`` to serve, or None.
        server: server options (``fastws.serve`` keywords) and ``host``, ``port``,
            ``ssl_certfile``, ``ssl_keyfile``.
        guards: guard settings (:class:`fastws.Guards` keywords).
        cluster: ``redis`` (URL), ``lease_ttl`` (seconds), ``prefix`` (of keys and channels).
    """

    app: str | None = None
    server: dict[str, Any] = field(default_factory=dict)
    guards: dict[str, Any] = field(default_factory=dict)
    cluster: dict[str, Any] = field(default_factory=dict)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _rate(v: Any) -> bool:
    return isinstance(v, (str, dict)) or _is_int(v)


# key -> (check, description of the expected type)
_Check = tuple[Callable[[Any], bool], str]
SERVER_KEYS: dict[str, _Check] = {
    "host": (lambda v: isinstance(v, str), "a string"),
    "port": (lambda v: _is_int(v) and 0 <= v <= 65535, "a port number (0-65535)"),
    "max_size": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "max_queue": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "write_limit": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "max_write_buffer": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "max_header_size": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "ping_interval": (lambda v: _is_num(v) and v >= 0, "a number of seconds (0: off)"),
    "ping_timeout": (lambda v: _is_num(v) and v >= 0, "a number of seconds (0: off)"),
    "idle_timeout": (lambda v: _is_num(v) and v >= 0, "a number of seconds (0: off)"),
    "close_timeout": (lambda v: _is_num(v) and v > 0, "a positive number of seconds"),
    "handshake_timeout": (lambda v: _is_num(v) and v > 0, "a positive number of seconds"),
    "shutdown_timeout": (lambda v: _is_num(v) and v >= 0, "a number of seconds"),
    "compression": (lambda v: isinstance(v, bool), "true or false"),
    "subprotocols": (_str_list, "a list of strings"),
    "transport": (lambda v: v in ("auto", "socket", "loop", "aiofastnet"), "auto, socket, loop or aiofastnet"),
    "backlog": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "reuse_port": (lambda v: isinstance(v, bool), "true or false"),
    "ssl_certfile": (lambda v: isinstance(v, str), "a file name"),
    "ssl_keyfile": (lambda v: isinstance(v, str), "a file name"),
    # observability (fastws.metrics)
    "metrics": (lambda v: isinstance(v, bool), "true or false"),
    "metrics_path": (lambda v: isinstance(v, str) and v.startswith("/"), "a path starting with /"),
    "metrics_port": (lambda v: _is_int(v) and 0 <= v <= 65535, "a port number (0-65535)"),
    "metrics_token": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "dashboard": (lambda v: isinstance(v, bool), "true or false"),
    "health": (lambda v: isinstance(v, bool), "true or false"),
    "js_client": (lambda v: isinstance(v, bool), "true or false"),
    "drain_delay": (lambda v: _is_num(v) and v >= 0, "a number of seconds"),
}
GUARD_KEYS: dict[str, _Check] = {
    "origins": (_str_list, "a list of origins"),
    "allow_missing_origin": (lambda v: isinstance(v, bool), "true or false"),
    "trusted_proxies": (_str_list, "a list of CIDRs"),
    "firewall": (lambda v: isinstance(v, (dict, list)), "a table with rules and default"),
    "connection_rate": (_rate, "a rate like \"10/60s\" or a table"),
    "message_rate": (_rate, "a rate like \"100/s\" or a table"),
    "user_message_rate": (_rate, "a rate like \"100/s\" or a table"),
    "max_connections": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "max_connections_per_ip": (lambda v: _is_int(v) and v > 0, "a positive integer"),
    "queue_size": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "queue_timeout": (lambda v: _is_num(v) and v >= 0, "a number of seconds"),
    "max_buckets": (lambda v: _is_int(v) and v > 0, "a positive integer"),
}
CLUSTER_KEYS: dict[str, _Check] = {
    "redis": (lambda v: isinstance(v, str) and v.split("://", 1)[0] in ("redis", "rediss", "unix"),
              "a Redis URL (redis://host:port/db)"),
    "lease_ttl": (lambda v: _is_num(v) and v >= 0.3, "a number of seconds (at least 0.3)"),
    "prefix": (lambda v: isinstance(v, str) and v != "" and "{" not in v, "a non-empty string without braces"),
}
# server keys where 0 means "off" (None for fastws.serve)
_ZERO_OFF = ("ping_interval", "ping_timeout", "idle_timeout")


def load_config(path: str) -> Config:
    """Read and check a TOML config file.

    Raises:
        ConfigError: the file is missing or unreadable, is not TOML, or has an
            unknown key or a bad value (the message names the file and the key).
    """
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    return parse_config(data, path)


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
    """Check a parsed config (see :func:`load_config`)."""
    cfg = Config()
    for key, value in data.items():
        if key == "app":
            if not isinstance(value, str) or ":" not in value:
                raise ConfigError(f"{source}: app must be a string like \"module:app\", got {value!r}")
            cfg.app = value
        elif key in ("server", "guards", "cluster"):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: [{key}] must be a table")
        else:
            raise ConfigError(f"{source}: unknown key {key!r} (expected app, [server], [guards] or [cluster])")
    for section, keys, out in (("server", SERVER_KEYS, cfg.server), ("guards", GUARD_KEYS, cfg.guards),
                               ("cluster", CLUSTER_KEYS, cfg.cluster)):
        for key, value in data.get(section, {}).items():
            name = f"{section}.{key}"
            if key not in keys:
                raise ConfigError(f"{source}: unknown key {name!r}")
            check, expected = keys[key]
            if not check(value):
                raise ConfigError(f"{source}: {name} must be {expected}, got {value!r}")
            if section == "server" and key in _ZERO_OFF and value == 0:
                value = None
            out[key] = value
    _check_guard_values(cfg.guards, source)
    if ("ssl_certfile" in cfg.server) != ("ssl_keyfile" in cfg.server):
        raise ConfigError(f"{source}: server.ssl_certfile and server.ssl_keyfile go together")
    return cfg


def _check_guard_values(guards: dict[str, Any], source: str) -> None:
    """Build what the guards would build, so a bad value is reported with its key now."""
    from fastws.guards import Guards

    for key, value in guards.items():  # one at a time, so the error names its key
        try:
            Guards(**{key: value})
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{source}: guards.{key}: {exc}") from None
    try:
        Guards(**guards)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{source}: [guards]: {exc}") from None
