"""``fastws connect``: an interactive (or piped) WebSocket session on the terminal.

Theory of operation: :class:`_Session` opens one client connection with the bench's
:class:`~fastws.bench._client.ClientFactory` and a :class:`~fastws.Listener` whose
callbacks print what arrives (text as is, binary as hex) and resolve two futures: the
first message (for ``-x/--execute``) and the close. Standard input is read by a daemon
thread with blocking ``os.read`` and split into lines, which it hands to the event loop
through ``call_soon_threadsafe`` and an ``asyncio.Queue``; ``None`` in the queue means
end of input.

On a terminal (stdin and stdout both ttys, no ``--execute``) lines are messages and
lines starting with ``/`` are commands (``/ping``, ``/close``, ``/binary``, ``/quit``);
output is redrawn around a ``> `` prompt and status lines start with ``*``. Piped, each
line is one message, replies go to stdout one per line, status lines to stderr; after
end of input the session waits for replies until the connection has been quiet for a
moment (at most ``--wait`` seconds) and then closes. Messages that arrive together with
the handshake response are held back until the "connected" line has been shown.

The exit code is 0 on a clean close (1000 or 1001; with ``--execute`` also 1005) and 1
otherwise (also when the connection cannot be opened or, with ``--execute``, no reply
comes within ``--timeout``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
from typing import Any

from fastws.cli._common import CLIError, _add_tls_arguments, _headers, _tls


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


def build_connect_parser(sub: Any, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Add the ``connect`` subcommand to ``sub`` (an argparse subparsers object)."""
    c: argparse.ArgumentParser = sub.add_parser(
        "connect", parents=parents, help="open a WebSocket: type or pipe messages, see replies",
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
    return c
