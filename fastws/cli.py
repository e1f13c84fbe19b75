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


def _serve(args: argparse.Namespace) -> int:
    from fastws.server import run

    app = load_app(args.app, args.app_dir)
    options: dict[str, Any] = dict(getattr(app, "server_options", None) or {})
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
    if args.ssl_certfile:
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(args.ssl_certfile, args.ssl_keyfile)
        options["ssl"] = ctx

    def ready(server: Any) -> None:
        print(f"fastws {__version__} serving {args.app} on {server.url} (pid {os.getpid()})", flush=True)

    try:
        run(app, args.host, args.port, use_uvloop=not args.no_uvloop, ready=ready, **options)
    except OSError as exc:
        raise CLIError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
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
    s.add_argument("app", help="module:attribute, e.g. examples.echo:app")
    s.add_argument("--app-dir", default=".", help="directory to import the app from (default: the current one)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
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
