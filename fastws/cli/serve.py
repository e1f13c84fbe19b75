"""``fastws serve``: load an app, turn flags and a ``--config`` file into settings, serve it.

The command is assembled by functions that other layers extend:
:func:`add_serve_arguments` (the flags), :func:`resolve_serve_config` (the ``--config``
file), :func:`serve_options` (server options) and :func:`apply_guards` (guard settings).

Theory of operation: :func:`cmd_serve` first resolves the configuration into ``args``
(:func:`resolve_serve_config`: the command line wins over the ``--config`` file, which
fills in what the command line left out), then exports what the app's own modules read at
import time as environment variables (``FASTWS_DATA_DIR``, ``FASTWS_REDIS_URL``,
``FASTWS_LEASE_TTL``, ``FASTWS_MAX_ROOMS``, ``FASTWS_NEW_ROOMS_PER_IP``), and only then
imports the app. With one worker it calls :func:`serve_one` in this process; with
``--workers N`` it hands over to :class:`fastws.cli.workers.Supervisor`, which runs
:func:`serve_one` in every forked worker.

:func:`serve_one` layers the settings in a fixed order: the app's ``server_options``,
then the file's ``[server]`` table, then the flags (:func:`serve_options`); guard
settings likewise go file first, flags on top (:func:`apply_guards`), wrapping a plain
handler in an :class:`~fastws.app.App` when there are any. What only some runs need (the
config parser, TLS, the rooms, the server's ``run``) is imported inside the functions
that need it, so ``fastws --help`` stays fast.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys
from typing import Any

from fastws import __version__
from fastws.cli._common import CLIError, _positive_int

log = logging.getLogger("fastws")


def load_app(spec: str, app_dir: str = ".") -> Any:
    """Import ``module:attr`` (attr may be dotted) with ``app_dir`` first on ``sys.path``.

    Raises:
        CLIError: bad spec, unimportable module, missing attribute.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CLIError(f"app must look like module:attribute, got {spec!r}")
    path = os.path.abspath(app_dir)
    if not os.path.isdir(path):
        raise CLIError(f"--app-dir {app_dir!r} is not a directory")
    if path not in sys.path:
        sys.path.insert(0, path)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise CLIError(f"cannot import module {module_name!r}: {exc}") from None
        raise CLIError(f"importing {module_name!r} failed: {exc}") from None
    except SyntaxError as exc:
        raise CLIError(f"importing {module_name!r} failed: {exc.msg} ({exc.filename}, line {exc.lineno})") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CLIError(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


class _FirewallRule(argparse.Action):
    """--allow-ip / --deny-ip append to one ordered list of rules (first match wins)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        rules = list(getattr(namespace, self.dest, None) or [])
        rules.append({"action": "allow" if option_string == "--allow-ip" else "deny", "ip": values})
        setattr(namespace, self.dest, rules)


def add_serve_arguments(s: argparse.ArgumentParser) -> None:
    """The flags of ``fastws serve`` (extend here; turn them into options in :func:`serve_options`)."""
    s.add_argument("app", nargs="?", default=None,
                   help="module:attribute, e.g. examples.echo:app (or app = ... in the --config file)")
    s.add_argument("--config", default=None, metavar="FILE", help="TOML file with [server] and [guards] settings")
    s.add_argument("--app-dir", default=".", help="directory to import the app from (default: the current one)")
    s.add_argument("--host", default=None, help="interface to bind (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=None, help="TCP port (default 8000)")
    s.add_argument("--workers", type=_positive_int, default=1,
                   help="processes sharing the port with SO_REUSEPORT, each on its own event loop (default 1)")
    s.add_argument("--data-dir", default=None,
                   help="directory for the app's data (rooms' databases); exported as FASTWS_DATA_DIR")
    s.add_argument("--redis", default=None, metavar="URL",
                   help="run the rooms as one cluster with every process naming this Redis "
                        "(redis://host:port/db); exported as FASTWS_REDIS_URL")
    s.add_argument("--lease-ttl", type=float, default=None, metavar="S",
                   help="cluster: seconds a room owner's lease lasts unrenewed (default 3)")
    s.add_argument("--max-rooms", default=None, metavar="N",
                   help="rooms: at most N in memory per process (default 10000; 0: no cap); "
                        "exported as FASTWS_MAX_ROOMS")
    s.add_argument("--new-rooms-per-ip", default=None, metavar="RATE",
                   help="rooms: how fast one client IP may open rooms, e.g. 10/s (the default, bursts of 100) "
                        "or off; exported as FASTWS_NEW_ROOMS_PER_IP")
    s.add_argument("--max-size", type=int, default=None, help="largest message in bytes")
    s.add_argument("--no-compression", action="store_true", help="do not negotiate permessage-deflate")
    s.add_argument("--ping-interval", type=float, default=None, help="keepalive ping after N s of silence (0: off)")
    s.add_argument("--ping-timeout", type=float, default=None, help="close 1011 when the pong is N s late (0: off)")
    s.add_argument("--idle-timeout", type=float, default=None, help="close 1001 after N s without a frame (0: off)")
    s.add_argument("--shutdown-timeout", type=float, default=None, help="bound on graceful shutdown (s)")
    s.add_argument("--ssl-certfile", default=None)
    s.add_argument("--ssl-keyfile", default=None)
    s.add_argument("--no-uvloop", action="store_true", help="run on asyncio's own event loop")
    s.add_argument("--interface", choices=["auto", "asgi", "fastws"], default="auto",
                   help="auto (default): an ASGI 3 app (FastAPI, Starlette: async (scope, receive, send)) "
                        "is served as one; asgi: always; fastws: never")
    s.add_argument("--transport", choices=["auto", "socket", "loop", "aiofastnet"], default=None,
                   help="auto (default): fastws' socket transport for TCP, the loop's for TLS")
    g = s.add_argument_group("guards (override the app's settings and the --config file's)")
    g.add_argument("--origin", action="append", metavar="URL", help="allowed Origin for upgrades (repeat)")
    g.add_argument("--trusted-proxy", action="append", metavar="CIDR",
                   help="proxy whose X-Forwarded-For is believed (repeat)")
    g.add_argument("--allow-ip", "--deny-ip", dest="firewall_rules", action=_FirewallRule, metavar="CIDR",
                   help="firewall rule, evaluated in the order given (repeat)")
    g.add_argument("--firewall-default", choices=["allow", "deny"], default=None)
    g.add_argument("--connection-rate", metavar="RATE", help="new connections per client IP, e.g. 10/60s")
    g.add_argument("--message-rate", metavar="RATE", help="messages per connection, e.g. 100/s")
    g.add_argument("--user-message-rate", metavar="RATE", help="messages per authenticated user")
    g.add_argument("--rate-action", choices=["drop", "close", "log"], default=None,
                   help="over a rate limit: drop (429 for connections), close (1008), log only")
    g.add_argument("--ban", type=float, default=None, metavar="S", help="refuse a key for S s after a limit trips")
    g.add_argument("--max-connections", type=int, default=None, metavar="N")
    g.add_argument("--max-connections-per-ip", type=int, default=None, metavar="N")
    g.add_argument("--queue-size", type=int, default=None, metavar="N", help="upgrades waiting for a slot (10)")
    g.add_argument("--queue-timeout", type=float, default=None, metavar="S", help="how long they wait (5 s)")
    m = s.add_argument_group("observability")
    m.add_argument("--no-metrics", action="store_true", help="no /metrics or /analytics (and no latency histograms)")
    m.add_argument("--metrics-path", default=None, metavar="PATH", help="Prometheus path (default /metrics)")
    m.add_argument("--metrics-port", type=int, default=None, metavar="P",
                   help="serve metrics, analytics and the dashboard on this port instead")
    m.add_argument("--metrics-token", default=None, metavar="TOKEN",
                   help="bearer token for metrics, analytics and the dashboard (or FASTWS_METRICS_TOKEN)")
    m.add_argument("--dashboard", action="store_true", help="serve the live dashboard at /dashboard")
    m.add_argument("--drain-delay", type=float, default=None, metavar="S",
                   help="on shutdown, serve S s with /readyz at 503 before closing")


def _metrics_flags(args: argparse.Namespace) -> dict[str, Any]:
    """Server options from the observability flags (only those given)."""
    opts: dict[str, Any] = {}
    if args.no_metrics:
        opts["metrics"] = False
    if args.metrics_path is not None:
        opts["metrics_path"] = args.metrics_path
    if args.metrics_port is not None:
        opts["metrics_port"] = args.metrics_port
    token = args.metrics_token or os.environ.get("FASTWS_METRICS_TOKEN")
    if token:
        opts["metrics_token"] = token
    if args.dashboard:
        opts["dashboard"] = True
    if args.drain_delay is not None:
        opts["drain_delay"] = args.drain_delay
    return opts


def build_serve_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add the ``serve`` subcommand to ``sub`` (an argparse subparsers object)."""
    s: argparse.ArgumentParser = sub.add_parser("serve", help="serve module:app", parents=parents,
                                                description="Serve a fastws app (module:attribute).")
    add_serve_arguments(s)
    s.set_defaults(func=cmd_serve)
    return s


def resolve_serve_config(args: argparse.Namespace) -> None:
    """Read ``--config`` (if any) into ``args``: the app spec, host, port and TLS files where the
    command line gives none, the rest of ``[server]`` as ``args.server_config`` and ``[guards]``
    as ``args.guard_config``. Raises CLIError naming the file and the key."""
    config = None
    if args.config:
        from fastws.config import ConfigError, load_config

        try:
            config = load_config(args.config)
        except ConfigError as exc:
            raise CLIError(str(exc)) from None
    server_cfg = dict(config.server) if config is not None else {}
    args.app = args.app or (config.app if config is not None else None)
    if not args.app:
        raise CLIError("no app to serve: give module:app (or app = \"module:app\" in the --config file)")
    host = server_cfg.pop("host", None)
    port = server_cfg.pop("port", None)
    certfile = server_cfg.pop("ssl_certfile", None)
    keyfile = server_cfg.pop("ssl_keyfile", None)
    args.host = args.host or host or "127.0.0.1"
    args.port = args.port if args.port is not None else (port if port is not None else 8000)
    args.ssl_certfile = args.ssl_certfile or certfile
    args.ssl_keyfile = args.ssl_keyfile or keyfile
    args.server_config = server_cfg
    args.guard_config = dict(config.guards) if config is not None else {}
    cluster_cfg = dict(config.cluster) if config is not None else {}
    args.redis = args.redis or cluster_cfg.get("redis")
    if args.lease_ttl is None:
        args.lease_ttl = cluster_cfg.get("lease_ttl")
    if args.lease_ttl is not None and args.lease_ttl < 0.3:
        raise CLIError("--lease-ttl must be at least 0.3 s")
    if cluster_cfg.get("prefix"):
        os.environ["FASTWS_CLUSTER_PREFIX"] = cluster_cfg["prefix"]


def _guard_flags(args: argparse.Namespace) -> dict[str, Any]:
    """Guard settings given as ``fastws serve`` flags."""
    guards: dict[str, Any] = {}
    if args.origin:
        guards["origins"] = args.origin
    if args.trusted_proxy:
        guards["trusted_proxies"] = args.trusted_proxy
    if args.firewall_rules or args.firewall_default:
        guards["firewall"] = {"rules": args.firewall_rules or [], "default": args.firewall_default or "allow"}
    for key in ("connection_rate", "message_rate", "user_message_rate"):
        spec = getattr(args, key)
        if spec is not None:
            rate: dict[str, Any] = {"rate": spec}
            if args.rate_action is not None:
                rate["action"] = args.rate_action
            if args.ban is not None:
                rate["ban"] = args.ban
            guards[key] = rate
    for key in ("max_connections", "max_connections_per_ip", "queue_size", "queue_timeout"):
        if getattr(args, key) is not None:
            guards[key] = getattr(args, key)
    if guards:
        from fastws.config import ConfigError, parse_config

        try:
            parse_config({"guards": guards}, "command line")
        except ConfigError as exc:
            import re

            raise CLIError(re.sub(r"guards\.(\w+)", lambda m: "--" + m.group(1).replace("_", "-"),
                                  str(exc))) from None
    return guards


def apply_guards(args: argparse.Namespace, app: Any) -> Any:
    """The app with the guard settings of the config file and the flags (flags win); a plain
    handler or Listener is wrapped in an App when there are any."""
    guards = dict(getattr(args, "guard_config", None) or {})
    guards.update(_guard_flags(args))
    if not guards:
        return app
    from fastws.app import App

    if not isinstance(app, App):
        app = App.wrap(app)
    try:
        app.configure(**guards)
    except (TypeError, ValueError) as exc:
        raise CLIError(f"invalid guard settings: {exc}") from None
    return app


def serve_options(args: argparse.Namespace, app: Any) -> dict[str, Any]:
    """Server options: the app's ``server_options``, then the config file's ``[server]``, then
    the flags (each wins over the one before)."""
    options: dict[str, Any] = dict(getattr(app, "server_options", None) or {})
    options.update(getattr(args, "server_config", None) or {})
    if args.max_size is not None:
        options["max_size"] = args.max_size
    if args.no_compression:
        options["compression"] = False
    if args.ping_interval is not None:
        options["ping_interval"] = args.ping_interval or None
    if args.ping_timeout is not None:
        options["ping_timeout"] = args.ping_timeout or None
    if args.idle_timeout is not None:
        options["idle_timeout"] = args.idle_timeout or None
    if args.shutdown_timeout is not None:
        options["shutdown_timeout"] = args.shutdown_timeout
    if args.transport is not None:
        options["transport"] = args.transport
    options.update(_metrics_flags(args))
    certfile, keyfile = args.ssl_certfile, args.ssl_keyfile
    if certfile or keyfile:
        if not (certfile and keyfile):
            raise CLIError("--ssl-certfile needs --ssl-keyfile")
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(certfile, keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise CLIError(f"cannot load the TLS certificate {certfile!r} / key {keyfile!r}: {exc}") from None
        options["ssl"] = ctx
    return options


def prepare_data_dir(path: str) -> str:
    """Create ``path`` if needed, check it is a writable directory and export FASTWS_DATA_DIR
    (before the app is imported: the rooms layer reads it)."""
    full = os.path.abspath(path)
    try:
        os.makedirs(full, exist_ok=True)
    except OSError as exc:
        raise CLIError(f"--data-dir {path!r}: {exc.strerror or exc}") from None
    if not os.path.isdir(full):
        raise CLIError(f"--data-dir {path!r} is not a directory")
    if not os.access(full, os.W_OK | os.X_OK):
        raise CLIError(f"--data-dir {path!r} is not writable")
    os.environ["FASTWS_DATA_DIR"] = full
    return full


def _listen_error(args: argparse.Namespace, exc: OSError) -> CLIError:
    if exc.errno == errno.EADDRINUSE:
        return CLIError(f"cannot listen on {args.host}:{args.port}: address already in use")
    return CLIError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")


def serve_one(args: argparse.Namespace, *, reuse_port: bool = False, on_ready: Any = None) -> int:
    """Import the app and serve it in this process until SIGINT/SIGTERM."""
    from fastws.server import run

    app = as_interface(args, load_app(args.app, args.app_dir))
    options = serve_options(args, app)
    if getattr(app, "fastws_http", None) is not None and options.get("transport") == "socket":
        raise CLIError("an ASGI app runs on the loop's transports: use --transport auto or loop")
    app = apply_guards(args, app)

    def ready(server: Any) -> None:
        log.debug("fastws: listening on %s (pid %d)", server.url, os.getpid())
        if on_ready is not None:
            on_ready(server)
        else:
            print(f"fastws {__version__} serving {args.app} on {server.url} (pid {os.getpid()})", flush=True)

    try:
        run(app, args.host, args.port, use_uvloop=not args.no_uvloop, ready=ready, reuse_port=reuse_port, **options)
    except OSError as exc:
        raise _listen_error(args, exc) from None
    except RuntimeError as exc:
        from fastws.asgi import LifespanFailed

        if isinstance(exc, LifespanFailed):
            raise CLIError(str(exc)) from None
        raise
    return 0


def as_interface(args: argparse.Namespace, app: Any) -> Any:
    """``app`` wrapped in :class:`fastws.asgi.ASGIApp` when ``--interface`` says it is an ASGI
    app (``auto``: when it looks like one)."""
    interface = getattr(args, "interface", "auto") or "auto"
    if interface == "fastws":
        return app
    from fastws.asgi import ASGIApp, is_asgi_app

    if interface == "asgi" or is_asgi_app(app):
        try:
            return ASGIApp(app)
        except TypeError as exc:
            raise CLIError(f"--interface asgi: {exc}") from None
    return app


def cmd_serve(args: argparse.Namespace) -> int:
    resolve_serve_config(args)
    if args.data_dir is not None:
        prepare_data_dir(args.data_dir)
    if args.redis:
        os.environ["FASTWS_REDIS_URL"] = args.redis
    if args.lease_ttl is not None:
        os.environ["FASTWS_LEASE_TTL"] = str(args.lease_ttl)
    if args.max_rooms is not None:
        if not args.max_rooms.isdigit():
            raise CLIError(f"--max-rooms must be a whole number (0: no cap), not {args.max_rooms!r}")
        os.environ["FASTWS_MAX_ROOMS"] = args.max_rooms
    if args.new_rooms_per_ip is not None:
        if args.new_rooms_per_ip.lower() not in ("0", "off", "none"):
            from fastws.guards.ratelimit import RateLimit

            try:
                RateLimit.parse(args.new_rooms_per_ip)
            except ValueError as exc:
                raise CLIError(f"--new-rooms-per-ip: {exc}") from None
        os.environ["FASTWS_NEW_ROOMS_PER_IP"] = args.new_rooms_per_ip
    if args.workers == 1:
        return serve_one(args)
    if not os.environ.get("FASTWS_REDIS_URL") and _serves_rooms(load_app(args.app, args.app_dir)):
        raise CLIError(f"--workers {args.workers} with rooms needs --redis URL: each worker would hold its own "
                       "copy of every room")
    from fastws.cli.workers import Supervisor  # workers.py builds on this module (serve_one)

    return Supervisor(args).run()


def _serves_rooms(app: Any) -> bool:
    """True when ``app`` is a room router or an App with one mounted (seen through guards)."""
    from fastws.rooms import RoomRouter

    seen = 0
    while app is not None and seen < 8:
        seen += 1
        if isinstance(app, RoomRouter):
            return True
        mounted = getattr(app, "_mounted", None)
        if mounted and any(_serves_rooms(t) for t in mounted):
            return True
        app = getattr(app, "app", None)
    return False
