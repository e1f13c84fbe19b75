"""ASGI ``http`` scopes on the loop's transports, parsed by httptools; upgrades go to the engine.

Theory of operation
-------------------
One :class:`HTTPProtocol` per TCP connection (an ``asyncio.Protocol``) feeds what it reads to an
``httptools.HttpRequestParser``. Each request head becomes a :class:`_Cycle`: the request goes
through the server's accept hook first (the observability routes, the firewall and connection
rate of an App's guards, the drain), exactly as a native request would; when the hook leaves it
to the app (``None``), the ASGI app runs with ``receive``/``send`` bound to the cycle.

1. The request body is streamed: ``receive()`` hands over what has arrived; reading pauses when
   more than :data:`HIGH_WATER` bytes wait for the app. ``Expect: 100-continue`` is answered at
   the app's first ``receive()``, so an app that refuses first never makes the client send.
2. The response is streamed: with a ``content-length`` it is checked against it; without one it
   is chunked (HTTP/1.1) or ends with the connection (HTTP/1.0). ``HEAD`` writes no body.
3. Keep-alive per httptools' ``should_keep_alive()``; a pipelined request waits for the one
   before it (reading pauses meanwhile); an idle connection closes after ``keep_alive_timeout``.
4. A WebSocket upgrade leaves this module: the protocol re-serialises the head, hands the
   transport to a fresh engine :class:`~fastws.Connection` (``transport.set_protocol``) and feeds
   it the head and what followed. From there the connection is native: the engine parses the
   handshake, runs the server's accept hook (guards, caps, access log) and the frames.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from http import HTTPStatus
from typing import Any

from urllib.parse import unquote

import httptools

from fastws._protocol import Connection
from fastws.exceptions import HandshakeError
from fastws.handshake import Headers, Request, Response, error_response
from fastws.metrics import access_logger, log_access

__all__ = ["HTTPConnections", "HTTPProtocol", "HIGH_WATER"]

logger = logging.getLogger("fastws")

#: request body bytes waiting for the app before reading pauses
HIGH_WATER = 65536

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_NO_BODY_STATUS = (204, 304)


_PHRASES = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}


def _phrase(status: int) -> bytes:
    return _PHRASES.get(status, b"")


class HTTPConnections:
    """The protocol factory ``fastws_http(server)`` returns; tracks the open HTTP connections
    for graceful shutdown."""

    def __init__(self, asgi: Any, server: Any, *, state: dict[str, Any] | None, root_path: str = "",
                 keep_alive_timeout: float = 5.0) -> None:
        self.asgi = asgi
        self.server = server
        self.state = state
        self.root_path = root_path
        self.keep_alive_timeout = keep_alive_timeout
        self.max_header_size = server.endpoint.max_header_size
        self.protocols: set[HTTPProtocol] = set()
        self.closing = False
        self._empty: asyncio.Future[None] | None = None

    def __call__(self) -> HTTPProtocol:
        return HTTPProtocol(self)

    def _discard(self, proto: HTTPProtocol) -> None:
        self.protocols.discard(proto)
        if not self.protocols and self._empty is not None and not self._empty.done():
            self._empty.set_result(None)

    def close(self) -> None:
        """Shutdown: idle connections close now, busy ones after their response."""
        self.closing = True
        for proto in list(self.protocols):
            proto.shutdown()

    async def wait_closed(self) -> None:
        if self.protocols:
            self._empty = asyncio.get_running_loop().create_future()
            await self._empty

    def abort(self) -> None:
        for proto in list(self.protocols):
            if proto.transport is not None:
                proto.transport.abort()


class HTTPProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection serving ASGI ``http`` scopes (see the module docstring)."""

    def __init__(self, conns: HTTPConnections) -> None:
        self.conns = conns
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None
        self.scheme = "http"
        self.cycle: _Cycle | None = None        # the latest request parsed
        self.running: _Cycle | None = None      # the one the app is answering
        self.pipeline: deque[_Cycle] = deque()
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.upgrade_head: bytes | None = None  # a WebSocket upgrade's head, rebuilt for the engine
        self.upgrade_rest = b""
        self.read_paused = False
        self.write_paused = False
        self.drained: asyncio.Event | None = None
        self.idle_timer: asyncio.TimerHandle | None = None
        self.head_size = 0
        self.head_too_large = False
        self.eof = False

    # ------------------------------------------------------------ asyncio protocol

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.conns.protocols.add(self)
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self.client = (peer[0], peer[1]) if isinstance(peer, tuple) else None
        self.server = (local[0], local[1]) if isinstance(local, tuple) else None
        self.scheme = "https" if transport.get_extra_info("sslcontext") is not None else "http"
        self._idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.conns._discard(self)
        self._cancel_idle()
        for cycle in (self.running, *self.pipeline, self.cycle):
            if cycle is not None and not cycle.complete:
                cycle.disconnected = True
                cycle.event.set()
        self.pipeline.clear()
        if self.drained is not None:
            self.drained.set()
        self.transport = None

    def eof_received(self) -> bool | None:
        # the client is done sending: answer what it asked, then close (a half-closed request
        # still gets its response)
        self.eof = True
        if self.running is None and not self.pipeline:
            return None
        last = self.cycle
        if last is not None and last.more_body and not last.body_done:
            return None  # a request cut short: the connection is over (the app sees a disconnect)
        return True

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.drained is None:
            self.drained = asyncio.Event()
        self.drained.clear()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.drained is not None:
            self.drained.set()

    def data_received(self, data: bytes) -> None:
        self._cancel_idle()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            if self.upgrade_head is not None:
                self.upgrade_rest = data[exc.args[0]:] if exc.args else b""
                if self.running is None:
                    self._hand_off()
                else:  # behind a response still being written: after it
                    self._pause_reading()
        except httptools.HttpParserError as exc:
            if self.head_too_large:
                self._refuse(HandshakeError(431, "Request Header Fields Too Large"))
                return
            logger.debug("fastws: bad HTTP request from %s: %s", self.client, exc)
            self._refuse(HandshakeError(400, "Invalid HTTP request"))

    # ------------------------------------------------------------ httptools callbacks

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.head_size = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))
        self._count_head(len(name) + len(value) + 4)

    def _count_head(self, n: int) -> None:
        self.head_size += n
        if self.head_size > self.conns.max_header_size:
            self.head_too_large = True
            raise HandshakeError(431, "Request Header Fields Too Large")

    def on_headers_complete(self) -> None:
        parser = self.parser
        method = parser.get_method().decode("ascii")
        version = parser.get_http_version()
        target = self.url.decode("latin-1")
        headers = self.headers
        if parser.should_upgrade() and any(n == b"upgrade" and b"websocket" in v.lower() for n, v in headers):
            lines = [f"{method} {target} HTTP/{version}".encode("latin-1")]
            lines += [n + b": " + v for n, v in headers]
            self.upgrade_head = b"\r\n".join(lines) + b"\r\n\r\n"
            return
        try:
            request = Request(method, target, Headers((n.decode("latin-1"), v.decode("latin-1")) for n, v in headers),
                              version, self.client)
        except HandshakeError as exc:
            self._refuse(exc)
            return
        expect = version == "1.1" and any(n == b"expect" and v.lower() == b"100-continue" for n, v in headers)
        cycle = _Cycle(self, request, headers, parser.should_keep_alive(), expect)
        self.cycle = cycle
        if self.running is None:
            self._start(cycle)
        else:
            self.pipeline.append(cycle)
            self._pause_reading()

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if cycle is None or cycle.complete or cycle.disconnected:
            return
        cycle.body += body
        if len(cycle.body) > HIGH_WATER:
            self._pause_reading()
        cycle.event.set()

    def on_message_complete(self) -> None:
        cycle = self.cycle
        if cycle is None:
            return
        cycle.more_body = False
        cycle.event.set()

    # ------------------------------------------------------------ cycles

    def _start(self, cycle: _Cycle) -> None:
        self.running = cycle
        cycle.task = self.loop.create_task(cycle.run())

    def response_done(self, cycle: _Cycle) -> None:
        """``cycle``'s response is written: next request, hand-off, or idle."""
        self.running = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not cycle.keep_alive or self.conns.closing or (self.eof and not self.pipeline):
            transport.close()
            return
        if self.pipeline:
            self._start(self.pipeline.popleft())
        elif self.upgrade_head is not None:
            self._hand_off()
            return
        else:
            self._idle()
        self._resume_reading()

    def shutdown(self) -> None:
        if self.running is None and not self.pipeline and self.transport is not None:
            self.transport.close()
        elif self.running is not None:
            self.running.keep_alive = False

    def _hand_off(self) -> None:
        """Give the connection to the engine: a native WebSocket connection from here on."""
        transport = self.transport
        head, rest = self.upgrade_head, self.upgrade_rest
        assert head is not None
        self.transport = None
        self.conns._discard(self)
        self._cancel_idle()
        conn = Connection(self.conns.server.endpoint)
        transport.set_protocol(conn)
        conn.connection_made(transport)
        if self.read_paused:
            self.read_paused = False
            transport.resume_reading()
        data = memoryview(head + rest)
        while data and conn.transport is not None and not transport.is_closing():
            buf = conn.get_buffer(len(data))
            view = memoryview(buf).cast("B")
            n = min(len(view), len(data))
            view[:n] = data[:n]
            view.release()
            conn.buffer_updated(n)
            data = data[n:]

    def _refuse(self, exc: HandshakeError) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(error_response(exc))
            self.transport.close()

    def _pause_reading(self) -> None:
        if not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.read_paused and self.transport is not None:
            self.read_paused = False
            self.transport.resume_reading()

    def _idle(self) -> None:
        self._cancel_idle()
        timeout = self.conns.keep_alive_timeout
        if timeout > 0:
            self.idle_timer = self.loop.call_later(timeout, self._idle_expired)

    def _idle_expired(self) -> None:
        self.idle_timer = None
        if self.running is None and self.transport is not None:
            self.transport.close()

    def _cancel_idle(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None


class _Cycle:
    """One request and its response."""

    __slots__ = ("proto", "request", "scope", "head", "keep_alive", "expect_100", "body", "more_body", "event",
                 "disconnected", "started", "complete", "chunked", "remaining", "task", "status", "started_at", "body_done", "out")

    def __init__(self, proto: HTTPProtocol, request: Request, headers: list[tuple[bytes, bytes]], keep_alive: bool,
                 expect_100: bool) -> None:
        self.proto = proto
        self.request = request
        self.head = request.method == "HEAD"
        self.keep_alive = keep_alive
        self.expect_100 = expect_100
        self.body = b""
        self.more_body = True
        self.body_done = False
        self.event = asyncio.Event()
        self.disconnected = False
        self.started = False
        self.complete = False
        self.chunked = False
        self.remaining: int | None = None
        self.task: asyncio.Task[None] | None = None
        self.status = 0
        self.out = b""
        self.started_at = time.monotonic()
        conns = proto.conns
        raw, _, query = request.target.partition("?")
        self.scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": request.http_version,
            "server": proto.server,
            "client": proto.client,
            "scheme": proto.scheme,
            "method": request.method,
            "root_path": conns.root_path,
            "path": conns.root_path + unquote(raw),
            "raw_path": raw.encode("latin-1"),
            "query_string": query.encode("latin-1"),
            "headers": headers,
        }
        if conns.state is not None:
            self.scope["state"] = dict(conns.state)

    async def run(self) -> None:
        proto = self.proto
        try:
            answer = proto.conns.server.accept_hook(None, self.request)
            while answer is not None and hasattr(type(answer), "__await__"):
                answer = await answer
        except HandshakeError as exc:
            self._write_response(Response(exc.status, exc.reason, exc.headers))
            return
        except Exception:
            logger.exception("fastws: error while accepting %s", self.request.path)
            self._write_response(Response(500, "Internal Server Error"))
            return
        if answer is not None:
            if not isinstance(answer, Response):
                logger.error("fastws: the accept hook answered a plain HTTP request with %r", answer)
                answer = Response(500, "Internal Server Error")
            self._write_response(answer)
            return
        try:
            await proto.conns.asgi(self.scope, self.receive, self.send)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            logger.error("fastws: exception in the ASGI application (%s %s)", self.request.method,
                         self.scope["path"], exc_info=exc)
            if not self.started:
                self.keep_alive = False
                self._write_response(Response(500, "Internal Server Error"))
            elif not self.complete:
                self._abort()
            return
        if not self.started:
            logger.error("fastws: the ASGI application returned without starting a response (%s %s)",
                         self.request.method, self.scope["path"])
            self.keep_alive = False
            self._write_response(Response(500, "Internal Server Error"))
        elif not self.complete:
            logger.error("fastws: the ASGI application returned without completing its response (%s %s)",
                         self.request.method, self.scope["path"])
            self._abort()

    # ------------------------------------------------------------ the app's side

    async def receive(self) -> dict[str, Any]:
        proto = self.proto
        if self.expect_100 and not self.started and not self.disconnected and proto.transport is not None:
            self.expect_100 = False
            proto.transport.write(_CONTINUE)
        while not (self.disconnected or self.complete):
            if not self.body_done and (self.body or not self.more_body):
                break
            if not self.body_done:
                proto._resume_reading()
            # woken by more body, the end of the body, the end of the response or of the connection
            self.event.clear()
            await self.event.wait()
        if self.disconnected or self.complete:
            return {"type": "http.disconnect"}
        message = {"type": "http.request", "body": self.body, "more_body": self.more_body}
        self.body = b""
        if self.more_body:
            proto._resume_reading()
        else:
            self.body_done = True  # every later receive() waits for the end of the response
        return message

    async def send(self, message: dict[str, Any]) -> None:
        proto = self.proto
        kind = message["type"]
        if proto.write_paused and proto.drained is not None and not self.disconnected:
            await proto.drained.wait()
        if self.disconnected:
            return
        if not self.started:
            if kind != "http.response.start":
                raise RuntimeError(f"Expected ASGI message 'http.response.start', but got {kind!r}")
            self._start(message)
            return
        if self.complete:
            raise RuntimeError(f"Unexpected ASGI message {kind!r} sent after the response completed")
        if kind != "http.response.body":
            raise RuntimeError(f"Expected ASGI message 'http.response.body', but got {kind!r}")
        body = message.get("body", b"")
        more = message.get("more_body", False)
        out = self.out  # the head, until the first body message: they leave in one write
        self.out = b""
        if self.head:
            pass
        elif self.chunked:
            if body:
                out += b"%x\r\n%b\r\n" % (len(body), body)
            if not more:
                out += b"0\r\n\r\n"
        else:
            if self.remaining is not None:
                if len(body) > self.remaining:
                    raise RuntimeError("Response content longer than Content-Length")
                self.remaining -= len(body)
            if body:
                out = out + body if out else body
        if out:
            proto.transport.write(out)
        if not more:
            if self.remaining and not self.head:
                raise RuntimeError("Response content shorter than Content-Length")
            self._done()

    def _start(self, message: dict[str, Any]) -> None:
        self.started = True
        status = int(message["status"])
        self.status = status
        headers = list(message.get("headers") or ())
        length = None
        chunked = False
        for name, value in headers:
            n = name.lower()
            if n == b"content-length":
                length = int(value)
            elif n == b"connection" and value.lower() == b"close":
                self.keep_alive = False
            elif n == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True  # the app asks for chunks: fastws frames its body chunks as such
        bodyless = self.head or status in _NO_BODY_STATUS or status < 200
        if length is not None:
            self.remaining = length
        elif chunked:
            self.chunked = not bodyless
        elif not bodyless:
            if self.request.http_version == "1.1":
                self.chunked = True
                headers.append((b"transfer-encoding", b"chunked"))
            else:
                self.keep_alive = False
        if self.expect_100:
            # the body was never asked for: the client may still send it or not; do not reuse
            self.keep_alive = False
        if self.proto.conns.closing:
            self.keep_alive = False
        if not self.keep_alive:
            headers.append((b"connection", b"close"))
        elif self.request.http_version == "1.0":
            headers.append((b"connection", b"keep-alive"))
        lines = [b"HTTP/1.1 %d %b" % (status, _phrase(status))]
        for name, value in headers:
            name = bytes(name)
            value = bytes(value)
            if b"\r" in value or b"\n" in value or b"\r" in name or b"\n" in name or b":" in name:
                raise RuntimeError(f"invalid response header {name!r}")
            lines.append(name + b": " + value)
        self.out = b"\r\n".join(lines) + b"\r\n\r\n"  # written with the first body message

    def _write_response(self, response: Response) -> None:
        transport = self.proto.transport
        self.started = True
        self.status = response.status
        if self.expect_100 or self.proto.conns.closing or self.more_body and response.status >= 400:
            self.keep_alive = False  # a body we will not read may follow: do not reuse the connection
        if transport is not None and not transport.is_closing():
            data = response.to_bytes(self.keep_alive)
            if self.head:
                data = data.partition(b"\r\n\r\n")[0] + b"\r\n\r\n"
            transport.write(data)
        self._done()

    def _done(self) -> None:
        self.complete = True
        self.event.set()
        self.proto.conns.server.endpoint.count_http_request()  # fastws_http_requests_total
        if access_logger.isEnabledFor(logging.INFO):
            log_access(self.request, self.status, None, self.started_at)
        self.proto.response_done(self)

    def _abort(self) -> None:
        self.complete = True
        self.event.set()
        if self.proto.transport is not None:
            self.proto.transport.close()
        self.proto.response_done(self)
