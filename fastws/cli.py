"""The ``fastws`` command: ``serve`` an app, ``connect`` to a server, ``bench`` a server.

``fastws serve module:attr`` imports ``attr`` from ``module`` with the current
directory on ``sys.path`` (as uvicorn does) and serves it. An app may carry a
``server_options`` dict (for example ``{"max_size": 32 << 20}``); a ``--config``
TOML file wins over it, and flags given on the command line win over both. ``--workers N`` runs N processes that share the
port with SO_REUSEPORT, each on its own uvloop, supervised by the parent.

The serve command is assembled by functions that other layers extend:
:func:`add_serve_arguments` (the flags), :func:`resolve_serve_config` (the
``--config`` file), :func:`serve_options` (server options) and
:func:`apply_guards` (guard settings).

Exit codes: 0 success; 1 a failed run (a connection that did not close cleanly,
a benchmark with errors); 2 a usage error (bad flag, unimportable module,
missing attribute, port in use); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import errno
import importlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

from fastws import __version__

log = logging.getLogger("fastws")


class CLIError(Exception):
    """A clear, one-line error for the user (exit code 2 unless given)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------ logging


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time (UTC ISO-8601), level, logger, message, pid, and the
    exception's traceback as ``exc`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        import orjson

        doc: dict[str, Any] = {
            "time": _dt.datetime.fromtimestamp(record.created, _dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for key in _ACCESS_FIELDS:  # the access log's fields (logger fastws.access)
            value = getattr(record, key, None)
            if value is not None:
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode("utf-8")


_ACCESS_FIELDS = ("client", "method", "path", "status", "close_code", "duration_ms")


LOG_LEVELS = ["debug", "info", "warning", "error", "critical"]


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of each record (not the stream of the
    moment the handler was made, which a caller such as a test runner may have closed since)."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override,unused-ignore]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def setup_logging(level: str = "info", fmt: str = "plain") -> None:
    """Log to stderr at ``level`` in the ``plain`` or ``json`` format (replaces earlier handlers)."""
    handler = _StderrHandler()
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))


# ------------------------------------------------------------------ serve


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


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return v


def _common_parent() -> argparse.ArgumentParser:
    """--log-level / --log-format, accepted before or after the subcommand."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--log-level", choices=LOG_LEVELS, default=argparse.SUPPRESS,
                   help="logging threshold (default: info)")
    p.add_argument("--log-format", choices=["plain", "json"], default=argparse.SUPPRESS,
                   help="plain text or one JSON object per line (default: plain)")
    return p


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

    app = load_app(args.app, args.app_dir)
    options = serve_options(args, app)
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
    return 0


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


class Supervisor:
    """``--workers N``: N forked processes, each importing the app and listening on the same
    port with SO_REUSEPORT; the parent restarts a worker that dies and stops them all
    (SIGTERM, then SIGKILL after the shutdown timeout) on SIGINT/SIGTERM."""

    RESTART_WINDOW = 10.0   # a worker that dies sooner than this after starting counts as a crash loop
    MAX_FAST_CRASHES = 5

    def __init__(self, args: argparse.Namespace) -> None:
        import multiprocessing as mp

        self.args = args
        self.ctx = mp.get_context("fork")
        self.workers: dict[int, Any] = {}  # slot -> Process
        self.started: dict[int, float] = {}
        self.stopping = False
        self.fast_crashes = 0
        self.queue = self.ctx.SimpleQueue()
        self.url = ""
        self._reserve: socket.socket | None = None

    def _reserve_port(self) -> None:
        """Bind (without listening) with SO_REUSEPORT: a port held by a socket without
        SO_REUSEPORT fails here with one clear error, and port 0 becomes one concrete port
        that every worker then binds (a bound socket that does not listen gets no connections)."""
        a = self.args
        try:
            infos = socket.getaddrinfo(a.host, a.port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise CLIError(f"cannot resolve --host {a.host!r}: {exc}") from None
        family, type_, proto, _, addr = infos[0]
        sock = socket.socket(family, type_, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(addr)
        except OSError as exc:
            sock.close()
            raise _listen_error(a, exc) from None
        a.port = sock.getsockname()[1]
        self._reserve = sock

    def _child(self, slot: int) -> None:
        from fastws.bench import die_with_parent

        signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent stops us with SIGTERM
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        die_with_parent(signal.SIGTERM)  # graceful shutdown even when the parent is SIGKILLed
        if self._reserve is not None:
            self._reserve.close()
        code = 0
        try:
            def ready(server: Any) -> None:
                self.queue.put(("ready", slot, os.getpid(), server.url))

            serve_one(self.args, reuse_port=True, on_ready=ready)
        except CLIError as exc:
            self.queue.put(("error", slot, os.getpid(), str(exc)))
            code = exc.code
        except BaseException as exc:  # the parent reports it; a traceback helps the app's author
            log.exception("fastws: worker %d failed", slot)
            self.queue.put(("error", slot, os.getpid(), f"{type(exc).__name__}: {exc}"))
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    def _start(self, slot: int) -> Any:
        p = self.ctx.Process(target=self._child, args=(slot,), name=f"fastws-worker-{slot}")
        p.start()
        self.workers[slot] = p
        self.started[slot] = time.monotonic()
        return p

    def _wait_ready(self, slots: list[int], timeout: float = 60.0) -> None:
        waiting = set(slots)
        deadline = time.monotonic() + timeout
        while waiting and not self.stopping:
            if time.monotonic() > deadline:
                raise CLIError("workers did not start in time", 1)
            if not self.queue.empty():
                kind, slot, pid, detail = self.queue.get()
                if kind == "ready":
                    log.info("fastws: worker %d ready (pid %d)", slot, pid)
                    self.url = detail
                    waiting.discard(slot)
                else:
                    raise CLIError(detail)
                continue
            for slot in list(waiting):
                p = self.workers[slot]
                if not p.is_alive() and self.queue.empty():
                    raise CLIError(f"worker {slot} exited during startup (exit code {p.exitcode})",
                                   p.exitcode if p.exitcode in (1, 2) else 1)
            time.sleep(0.01)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def run(self) -> int:
        a = self.args
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._reserve_port()
            # the first worker alone: an import error is reported once, not N times
            self._start(0)
            self._wait_ready([0])
            for slot in range(1, a.workers):
                self._start(slot)
            self._wait_ready(list(range(1, a.workers)))
            if not self.stopping:
                pids = ",".join(str(p.pid) for p in self.workers.values())
                print(f"fastws {__version__} serving {a.app} on {self.url} with {a.workers} workers "
                      f"(pid {os.getpid()}, workers {pids})", flush=True)
            self._supervise()
            return 0 if self.fast_crashes < self.MAX_FAST_CRASHES else 1
        finally:
            self._stop_all()
            for s, h in old.items():
                signal.signal(s, h)
            if self._reserve is not None:
                self._reserve.close()

    def _supervise(self) -> None:
        from multiprocessing.connection import wait

        while not self.stopping:
            sentinels = {p.sentinel: slot for slot, p in self.workers.items()}
            ready = wait(list(sentinels), timeout=0.2)
            while not self.queue.empty():
                self.queue.get()  # "ready" of restarted workers
            for s in ready:
                slot = sentinels[s]
                p = self.workers[slot]
                p.join()
                if self.stopping:
                    break
                lived = time.monotonic() - self.started[slot]
                self.fast_crashes = self.fast_crashes + 1 if lived < self.RESTART_WINDOW else 0
                if self.fast_crashes >= self.MAX_FAST_CRASHES:
                    log.error("fastws: workers keep dying (worker %d exit code %s); stopping", slot, p.exitcode)
                    self.stopping = True
                    break
                log.warning("fastws: worker %d (pid %s) exited with code %s; restarting it", slot, p.pid, p.exitcode)
                self._start(slot)

    def _stop_all(self) -> None:
        live = [p for p in self.workers.values() if p.is_alive()]
        for p in live:
            try:
                os.kill(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        grace = (self.args.shutdown_timeout if self.args.shutdown_timeout is not None else 10.0) + 5.0
        deadline = time.monotonic() + grace
        for p in live:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in live:
            if p.is_alive():
                log.warning("fastws: worker pid %s did not stop in %.0f s; killing it", p.pid, grace)
                p.kill()
                p.join(1)


# ------------------------------------------------------------------ connect


def _headers(args: argparse.Namespace) -> list[tuple[str, str]]:
    headers = []
    for h in args.header or []:
        name, sep, value = h.partition(":")
        if not sep or not name.strip():
            raise CLIError(f"header must look like 'Name: value', got {h!r}")
        headers.append((name.strip(), value.strip()))
    if getattr(args, "token", None):
        headers.append(("Authorization", f"Bearer {args.token}"))
    return headers


def _tls(args: argparse.Namespace) -> Any:
    from fastws.bench.runner import tls_context

    try:
        return tls_context(args.cafile, args.insecure)
    except OSError as exc:
        raise CLIError(f"--cafile {args.cafile!r}: {exc.strerror or exc}") from None


def _add_tls_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cafile", default=None, help="wss://: trust the CA certificates in this PEM file")
    p.add_argument("--insecure", "-k", action="store_true", help="wss://: do not verify the server's certificate")


def _show(data: str | bytes) -> str:
    """Text as is; binary as hex (so a terminal never gets raw bytes)."""
    return data if isinstance(data, str) else data.hex()


class _Session:
    """``fastws connect``: a listener connection, stdin lines read by a thread."""

    HELP = ("commands: /ping [text]  /close [code [reason]]  /binary HEX  /quit; "
            "a line starting with // sends it without the first /")

    def __init__(self, args: argparse.Namespace, interactive: bool) -> None:
        self.args = args
        self.interactive = interactive
        self.loop = asyncio.get_running_loop()
        self.closed = self.loop.create_future()
        self.first: asyncio.Future[str | bytes] = self.loop.create_future()
        self.last_rx = time.monotonic()
        self.ws: Any = None
        # messages that arrive with the handshake response are shown after the "connected" line
        self._held: list[tuple[bool, str]] | None = []

    # -- output
    def release(self) -> None:
        held, self._held = self._held, None
        for is_status, text in held or ():
            (self.status if is_status else self.out)(text)

    def out(self, text: str) -> None:
        if self._held is not None:
            self._held.append((False, text))
            return
        self._write_out(text)

    def _write_out(self, text: str) -> None:
        if self.interactive:
            sys.stdout.write(f"\r\x1b[K{text}\n> ")
        else:
            sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def status(self, text: str, now: bool = False) -> None:
        if self._held is not None and not now:
            self._held.append((True, text))
            return
        if self.interactive:
            self._write_out(f"* {text}")
        else:
            sys.stderr.write(f"* {text}\n")
            sys.stderr.flush()

    def listener(self) -> Any:
        from fastws import Listener

        session = self

        class Printer(Listener):
            __slots__ = ()

            def on_message(self, ws: Any, msg: Any) -> None:
                data = msg.data()
                session.last_rx = time.monotonic()
                if not session.first.done():
                    session.first.set_result(data)
                    if session.args.execute is not None:
                        return
                if session.interactive:
                    session.out(f"< {_show(data)}" if isinstance(data, str) else f"< [binary {len(data)} B] {data.hex()}")
                else:
                    session.out(_show(data))

            def on_ping(self, ws: Any, payload: bytes) -> None:
                session.status(f"ping {payload.hex() if payload else ''}".rstrip() + " (answered)")

            def on_close(self, ws: Any, code: int, reason: str) -> None:
                if not session.closed.done():
                    session.closed.set_result((code, reason))

        return Printer()

    # -- input
    def start_reader(self, queue: asyncio.Queue[bytes | None]) -> None:
        loop = self.loop

        def read() -> None:
            buf = b""
            while True:
                try:
                    chunk = os.read(0, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    if buf:
                        loop.call_soon_threadsafe(queue.put_nowait, buf)
                    loop.call_soon_threadsafe(queue.put_nowait, None)
                    return
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    loop.call_soon_threadsafe(queue.put_nowait, line)

        threading.Thread(target=read, name="fastws-connect-stdin", daemon=True).start()

    async def command(self, line: str) -> bool:
        """An interactive /command; False to stop reading."""
        ws = self.ws
        name, _, rest = line[1:].partition(" ")
        if name == "ping":
            try:
                rtt = await asyncio.wait_for(ws.ping(rest.encode() if rest else None), self.args.timeout)
            except asyncio.TimeoutError:
                self.status("no pong")
            else:
                self.status(f"pong in {rtt * 1000:.2f} ms")
        elif name == "close":
            code_s, _, reason = rest.partition(" ")
            try:
                code = int(code_s) if code_s else 1000
                ws.close(code, reason)
            except ValueError as exc:
                self.status(f"cannot close: {exc}")
                return True
            return False
        elif name == "binary":
            try:
                ws.send(bytes.fromhex(rest))
            except ValueError:
                self.status("/binary wants hex digits, e.g. /binary 68656c6c6f")
        elif name in ("quit", "exit"):
            ws.close(1000)
            return False
        else:
            self.status(self.HELP)
        return True

    async def run(self) -> int:
        from fastws.bench._client import ClientFactory
        from fastws.exceptions import ConnectionClosed, InvalidHandshake

        a = self.args
        try:
            factory = ClientFactory(a.url, compression=not a.no_compression, subprotocols=a.subprotocol or (),
                                    headers=_headers(a), open_timeout=a.timeout, ping_interval=0.0,
                                    max_size=a.max_size, ssl_context=_tls(a))
        except ValueError as exc:
            raise CLIError(str(exc)) from None
        try:
            self.ws = ws = await factory.open(self.listener())
        except InvalidHandshake as exc:
            raise CLIError(f"cannot connect to {a.url}: {exc}", 1) from None
        except OSError as exc:
            raise CLIError(f"cannot connect to {a.url}: {exc.strerror or exc}", 1) from None
        try:
            if self.interactive:
                proto = f", subprotocol {ws.subprotocol}" if ws.subprotocol else ""
                comp = ", permessage-deflate" if ws.compression is not None else ""
                self.status(f"connected to {a.url}{proto}{comp} (/help for commands, Ctrl-D to close)", now=True)
            elif ws.subprotocol:
                self.status(f"subprotocol {ws.subprotocol}", now=True)
            self.release()
            if a.execute is not None:
                return await self._execute()
            queue: asyncio.Queue[bytes | None] = asyncio.Queue()
            self.start_reader(queue)
            eof = False
            while not self.closed.done():
                get = asyncio.ensure_future(queue.get())
                await asyncio.wait([get, self.closed], return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    break
                raw = get.result()
                if raw is None:
                    eof = True
                    break
                line = raw.decode("utf-8", "replace").rstrip("\r")
                try:
                    if self.interactive and line.startswith("/") and not line.startswith("//"):
                        if not await self.command(line):
                            break
                        continue
                    if line.startswith("//"):
                        line = line[1:]
                    if self.interactive and not line:
                        sys.stdout.write("> ")
                        sys.stdout.flush()
                        continue
                    ws.send(line)
                except ConnectionClosed:
                    break
            if eof and not self.closed.done():
                await self._quiet()
            if not self.closed.done() and ws.open:
                ws.close(1000)
            try:
                await asyncio.wait_for(asyncio.shield(self.closed), a.timeout)
            except asyncio.TimeoutError:
                pass
            await asyncio.wait_for(ws.wait_closed(), a.timeout)
        finally:
            if not ws.closed:
                ws.abort()
            factory.stop()
        return self._finish()

    async def _quiet(self) -> None:
        """After EOF on stdin: wait for replies until the connection has been quiet for a
        moment (or --wait seconds have passed)."""
        deadline = time.monotonic() + self.args.wait
        while time.monotonic() < deadline and not self.closed.done():
            if time.monotonic() - self.last_rx > min(0.25, self.args.wait):
                return
            await asyncio.sleep(0.02)

    async def _execute(self) -> int:
        ws = self.ws
        ws.send(self.args.execute)
        done, _ = await asyncio.wait([self.first, self.closed], timeout=self.args.timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if self.first.done():
            sys.stdout.write(_show(self.first.result()) + "\n")
            sys.stdout.flush()
            if ws.open:
                ws.close(1000)
            await asyncio.wait_for(ws.wait_closed(), self.args.timeout)
            return 0 if self.closed.done() and self.closed.result()[0] in (1000, 1001, 1005) or \
                ws.close_code in (1000, 1001, 1005) else 1
        if not done:
            ws.abort()
            raise CLIError(f"no reply within {self.args.timeout:g} s", 1)
        return self._finish()

    def _finish(self) -> int:
        ws = self.ws
        code = ws.close_code
        reason = ws.close_reason
        self.status(f"closed {code}{' ' + reason if reason else ''}")
        if self.interactive:
            sys.stdout.write("\r\x1b[K")
            sys.stdout.flush()
        return 0 if code in (1000, 1001) else 1


def cmd_connect(args: argparse.Namespace) -> int:
    interactive = sys.stdin.isatty() and sys.stdout.isatty() and args.execute is None

    async def main() -> int:
        return await _Session(args, interactive).run()

    from fastws.server import _loop_factory

    factory = _loop_factory()
    if factory is None:
        return asyncio.run(main())
    loop = factory()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


# ------------------------------------------------------------------ bench


def cmd_bench(args: argparse.Namespace) -> int:
    from fastws.bench import BenchConfig, Progress, capacity_for, load_previous, run_bench, write_plot
    from fastws.bench.report import compare, format_table

    previous = None
    if args.compare:
        try:
            previous = load_previous(args.compare)
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    cfg = BenchConfig(url=args.url, mode=args.mode, count=args.count, num=args.num, size=args.size,
                      rate=args.rate, duration=args.duration, compression=args.compression, text=args.text,
                      procs=args.procs, concurrency=args.concurrency, window=args.window, inflight=args.inflight,
                      room_size=args.room_size, open_timeout=args.timeout, drain_timeout=args.drain_timeout,
                      headers=_headers(args), subprotocols=args.subprotocol or [], cafile=args.cafile,
                      insecure=args.insecure)
    _tls(args)  # a bad --cafile is a usage error, before any connection
    try:
        cfg.validate()
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    progress = Progress(cfg, sys.stderr) if sys.stderr.isatty() and not args.quiet else None
    report = run_bench(cfg, progress=progress, server_pid=args.server_pid)
    if previous is not None:
        report["compare"] = {"previous_file": args.compare, "metrics": compare(report, previous)}
    if args.capacity:
        capacity_for(report, target_connections=args.target_connections, target_rate=args.target_rate,
                     cores_per_machine=args.cores_per_machine, memory_per_machine_gb=args.memory_per_machine,
                     server_cores=args.server_cores)
    if args.plot:
        try:
            write_plot(report, args.plot)
        except OSError as exc:
            raise CLIError(f"cannot write {args.plot}: {exc.strerror or exc}") from None
    if args.json:
        import json

        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    else:
        sys.stdout.write(format_table(report, previous) + "\n")
    sys.stdout.flush()
    if report["interrupted"]:
        return 130
    return 0 if report["ok"] else 1


def build_bench_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    b: argparse.ArgumentParser = sub.add_parser("bench", parents=parents, help="load-test a WebSocket server",
                       description="Load-test a WebSocket server (every run is bounded by --num and --duration).")
    b.add_argument("url", help="ws://host:port/path")
    b.add_argument("--mode", "-m", choices=["echo", "storm", "fanout", "chat"], default="echo")
    b.add_argument("--count", "-c", type=_positive_int, default=10,
                   help="connections (fanout: subscribers, plus one publisher; chat: members). Default 10")
    b.add_argument("--num", "-n", type=int, default=100,
                   help="messages per connection (fanout: publishes; 0: until --duration). Default 100")
    b.add_argument("--size", "-s", type=int, default=64, help="payload bytes (default 64)")
    b.add_argument("--rate", "-r", type=float, default=0.0,
                   help="messages/s over all connections (fanout: publishes/s; storm: connections/s); 0 (default): as fast as "
                        "the server answers, one message in flight per connection")
    b.add_argument("--duration", "-d", type=float, default=10.0, help="seconds of load at most (default 10)")
    b.add_argument("--compression", action="store_true", help="offer permessage-deflate (compressible payloads)")
    b.add_argument("--text", action="store_true", help="echo: TEXT frames instead of BINARY")
    b.add_argument("--procs", "-p", type=_positive_int, default=1,
                   help="spread the connections over this many processes (one event loop each)")
    b.add_argument("--concurrency", type=_positive_int, default=100, help="handshakes in flight (default 100)")
    b.add_argument("--window", type=_positive_int, default=16,
                   help="fanout: publishes in flight ahead of the slowest subscriber (default 16)")
    b.add_argument("--room-size", type=_positive_int, default=10, help="chat: members per room (default 10)")
    b.add_argument("--inflight", type=_positive_int, default=1,
                   help="echo: messages in flight per connection (default 1: strict request/response)")
    b.add_argument("--timeout", type=float, default=10.0, help="handshake timeout per connection (s)")
    b.add_argument("--drain-timeout", type=float, default=5.0,
                   help="wait at most this long for replies in flight at the end (s)")
    b.add_argument("-H", "--header", action="append", help="extra header 'Name: value'")
    b.add_argument("--token", default=None, help="send 'Authorization: Bearer TOKEN'")
    b.add_argument("--subprotocol", action="append", help="offer this subprotocol")
    _add_tls_arguments(b)
    b.add_argument("--json", action="store_true", help="print the report as JSON (schema fastws-bench/1)")
    b.add_argument("--compare", metavar="PREVIOUS.json", default=None,
                   help="show the change against a report written by --json")
    b.add_argument("--plot", metavar="FILE.html", default=None,
                   help="write a latency histogram and throughput over time (self-contained HTML)")
    b.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    b.add_argument("--server-pid", type=int, default=0,
                   help="a local server's PID: measure its CPU and memory during the run")
    cap = b.add_argument_group("capacity")
    cap.add_argument("--capacity", action="store_true",
                     help="estimate per-core capacity and the machines a target load needs")
    cap.add_argument("--target-connections", type=int, default=0)
    cap.add_argument("--target-rate", type=float, default=0.0, help="messages/s (storm: connections/s)")
    cap.add_argument("--cores-per-machine", type=int, default=0, help="default: this machine's")
    cap.add_argument("--memory-per-machine", type=float, default=0.0, metavar="GB",
                     help="with --server-pid: size machines for memory too")
    cap.add_argument("--server-cores", type=float, default=0.0,
                     help="cores the server used in the run when not measured (default 1)")
    b.set_defaults(func=cmd_bench)
    return b


# ------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    common = _common_parent()
    p = argparse.ArgumentParser(prog="fastws", description="fastws: a fast WebSocket platform")
    p.add_argument("--version", action="version", version=f"fastws {__version__}")
    p.add_argument("--log-level", choices=LOG_LEVELS, default="info", help="logging threshold (default: info)")
    p.add_argument("--log-format", choices=["plain", "json"], default="plain")
    sub = p.add_subparsers(dest="command", required=True)
    build_serve_parser(sub, [common])

    c = sub.add_parser("connect", parents=[common], help="open a WebSocket: type or pipe messages, see replies",
                       description="Open a WebSocket. On a terminal: typed lines are sent, messages printed "
                                   "(binary as hex), /help lists commands. Piped: one message per line; "
                                   "exit code 0 on a clean close.")
    c.add_argument("url")
    c.add_argument("-H", "--header", action="append", help="extra header 'Name: value'")
    c.add_argument("-s", "--subprotocol", action="append", help="offer this subprotocol (repeatable)")
    c.add_argument("--token", default=None, help="send 'Authorization: Bearer TOKEN' (a JWT, for example)")
    c.add_argument("-x", "--execute", default=None, help="send this message, print the reply, exit")
    c.add_argument("--timeout", type=float, default=10.0, help="connect / reply / close timeout (s)")
    c.add_argument("--wait", type=float, default=2.0,
                   help="piped: after the last line, wait at most this long for replies (s)")
    c.add_argument("--max-size", type=int, default=64 << 20, help="largest message accepted")
    c.add_argument("--no-compression", action="store_true")
    _add_tls_arguments(c)
    c.set_defaults(func=cmd_connect)

    build_bench_parser(sub, [common])
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"fastws: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
