"""The ``fastws`` command: ``serve`` an app, ``connect`` to a server.

``fastws serve module:attr`` imports ``attr`` from ``module`` with the current
directory on ``sys.path`` (as uvicorn does) and serves it. An app may carry a
``server_options`` dict (for example ``{"max_size": 32 << 20}``); flags given on
the command line win over it.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
from typing import Any

from fastws import __version__

log = logging.getLogger("fastws")


class CLIError(Exception):
    """A clear, one-line error for the user (exit code 2)."""


def load_app(spec: str, app_dir: str = ".") -> Any:
    """Import ``module:attr`` (attr may be dotted) with ``app_dir`` first on ``sys.path``."""
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
        raise
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


def _serve(args: argparse.Namespace) -> int:
    from fastws.app import App
    from fastws.server import run

    config = None
    if args.config:
        from fastws.config import ConfigError, load_config

        try:
            config = load_config(args.config)
        except ConfigError as exc:
            raise CLIError(str(exc)) from None
    spec = args.app or (config.app if config is not None else None)
    if not spec:
        raise CLIError("no app to serve: give module:app (or app = \"module:app\" in the --config file)")
    app = load_app(spec, args.app_dir)
    options: dict[str, Any] = dict(getattr(app, "server_options", None) or {})
    server_cfg = dict(config.server) if config is not None else {}
    host = args.host or server_cfg.pop("host", None) or "127.0.0.1"
    port = args.port if args.port is not None else server_cfg.pop("port", 8000)
    server_cfg.pop("host", None)
    server_cfg.pop("port", None)
    certfile = args.ssl_certfile or server_cfg.pop("ssl_certfile", None)
    keyfile = args.ssl_keyfile or server_cfg.pop("ssl_keyfile", None)
    server_cfg.pop("ssl_certfile", None)
    server_cfg.pop("ssl_keyfile", None)
    options.update(server_cfg)
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
    if args.transport is not None:
        options["transport"] = args.transport
    if certfile:
        import ssl

        if not keyfile:
            raise CLIError("--ssl-certfile needs --ssl-keyfile")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(certfile, keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise CLIError(f"cannot load the TLS certificate {certfile!r} / key {keyfile!r}: {exc}") from None
        options["ssl"] = ctx
    # guards: the app's own settings, then the config file's, then the flags
    guards = dict(config.guards) if config is not None else {}
    guards.update(_guard_flags(args))
    if guards:
        if not isinstance(app, App):
            app = App.wrap(app)
        try:
            app.configure(**guards)
        except (TypeError, ValueError) as exc:
            raise CLIError(f"invalid guard settings: {exc}") from None
    def ready(server: Any) -> None:
        print(f"fastws {__version__} serving {spec} on {server.url} (pid {os.getpid()})", flush=True)

    try:
        run(app, host, port, use_uvloop=not args.no_uvloop, ready=ready, **options)
    except OSError as exc:
        raise CLIError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return 0


async def _connect(args: argparse.Namespace) -> int:
    from fastws import ConnectionClosed, connect

    headers = []
    for h in args.header or []:
        name, sep, value = h.partition(":")
        if not sep:
            raise CLIError(f"header must look like 'Name: value', got {h!r}")
        headers.append((name.strip(), value.strip()))
    async with connect(args.url, subprotocols=args.subprotocol or (), headers=headers,
                       compression=not args.no_compression) as ws:
        if args.execute is not None:
            await ws.send(args.execute)
            reply = await ws.recv()
            print(reply if isinstance(reply, str) else reply.hex())
            return 0
        loop = asyncio.get_running_loop()

        async def reader() -> None:
            try:
                async for message in ws:
                    print(message if isinstance(message, str) else message.hex(), flush=True)
            except ConnectionClosed:
                pass
            print(f"closed: {ws.close_code} {ws.close_reason}".rstrip(), file=sys.stderr, flush=True)

        task = asyncio.ensure_future(reader())
        while not task.done():
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            if ws.open:
                await ws.send(line.rstrip("\n"))
        if not task.done():
            await ws.close()
            await task
    return 0 if ws.close_code in (1000, 1001, 1005) else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastws", description="fastws: a fast WebSocket platform")
    p.add_argument("--version", action="version", version=f"fastws {__version__}")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="serve module:app")
    s.add_argument("app", nargs="?", default=None,
                   help="module:attribute, e.g. examples.echo:app (or app = ... in the --config file)")
    s.add_argument("--config", default=None, metavar="FILE", help="TOML file with [server] and [guards] settings")
    s.add_argument("--app-dir", default=".", help="directory to import the app from (default: the current one)")
    s.add_argument("--host", default=None, help="interface to bind (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=None, help="TCP port (default 8000)")
    s.add_argument("--max-size", type=int, default=None, help="largest message in bytes")
    s.add_argument("--no-compression", action="store_true", help="do not negotiate permessage-deflate")
    s.add_argument("--ping-interval", type=float, default=None, help="keepalive ping after N s of silence (0: off)")
    s.add_argument("--ping-timeout", type=float, default=None, help="close 1011 when the pong is N s late (0: off)")
    s.add_argument("--idle-timeout", type=float, default=None, help="close 1001 after N s without a frame (0: off)")
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
    s.set_defaults(func=_serve)

    c = sub.add_parser("connect", help="open a WebSocket, send stdin lines, print messages")
    c.add_argument("url")
    c.add_argument("-H", "--header", action="append", help="extra header 'Name: value'")
    c.add_argument("-s", "--subprotocol", action="append")
    c.add_argument("-x", "--execute", default=None, help="send this message, print the reply, exit")
    c.add_argument("--no-compression", action="store_true")
    c.set_defaults(func=lambda a: asyncio.run(_connect(a)))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"fastws: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
