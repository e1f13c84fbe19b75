"""``fastws.asgi.mount(target)``: fastws rooms and routes as an ASGI app, under any ASGI server.

Theory of operation
-------------------
``target`` is anything with ``fastws_accept(ws, request)`` (an App, a RoomRouter, ...) or
anything ``fastws.serve`` takes (a handler, a Listener). :class:`Mount` is an ASGI app for
``app.mount("/rooms", fastws.asgi.mount(rooms))`` in FastAPI or Starlette.

1. Served by fastws (``fastws serve``, :class:`~fastws.asgi.ASGIApp`): the websocket scope
   carries the ``fastws`` extension, the engine's connection and request. The mount calls
   ``target.fastws_accept`` with them and hands the answer back to the engine, so the
   connection runs on the engine exactly as a native one: no ASGI message per frame, and
   hibernation, auto-response and the C-level broadcast all work.
2. Served by another ASGI server (uvicorn, ...): each websocket scope gets an engine
   :class:`~fastws.Connection` on a :class:`_Pipe`, an in-memory transport. The mount writes
   the opening request (rebuilt from the scope) into it, so the engine runs its own handshake
   and accept hook; the answer (a 101 or a refusal) becomes ``websocket.accept`` or the
   ``websocket.http.response`` denial. From then on each ``websocket.receive`` is written into
   the connection as a client frame, and the frames the engine writes are parsed back into
   ``websocket.send``/``websocket.close``. The target cannot tell the difference, but every
   message is framed once more, and the ASGI server's own frames, limits and keepalive are
   in front of fastws' (the mount's engine sends no pings and negotiates no compression).
3. Plain HTTP under the mount goes to ``target.fastws_accept`` too (a room's ``on_request``,
   an App's ``@app.route``), answered with the :class:`~fastws.Response` it returns.
4. Lifespan: the mount answers the ``lifespan`` scope itself when it is the app being served,
   and offers :meth:`Mount.startup`/:meth:`Mount.shutdown` for the app that mounts it (call them
   from FastAPI's lifespan); under fastws, ``fastws_startup``/``fastws_shutdown`` run them.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
from typing import Any

import httptools

from fastws._endpoint import Endpoint
from fastws._frames import FrameParser, Opcode, build_close, build_frame
from fastws._protocol import Connection
from fastws.exceptions import HandshakeError, ProtocolError
from fastws.handshake import Headers, Request, Response

__all__ = ["Mount", "route_path"]

logger = logging.getLogger("fastws")

_HOP = {"upgrade", "connection", "sec-websocket-accept", "sec-websocket-protocol", "sec-websocket-extensions",
        "content-length", "content-type"}


def route_path(scope: dict[str, Any]) -> str:
    """The path under the mount point (Starlette's rule: ``path`` minus ``root_path``)."""
    path = scope.get("path", "/")
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    return path or "/"


class Mount:
    """An ASGI app serving a fastws target; build it with :func:`fastws.asgi.mount`.

    Under fastws a websocket scope goes straight to the engine; under another ASGI server it
    runs on an engine connection bridged to the ASGI messages. :meth:`startup` and
    :meth:`shutdown` run the target's own hooks (call them from the mounting app's lifespan).
    """

    def __init__(self, target: Any, *, max_size: int = 1 << 20, max_queue: int = 32) -> None:
        from fastws.server import resolve_app  # the server module builds accept hooks; it knows no ASGI

        self.target = target
        self._accept = resolve_app(target)
        self._max_size = max_size
        self._max_queue = max_queue
        self._endpoint: Endpoint | None = None
        self._started = False

    # ------------------------------------------------------------ lifespan

    async def startup(self, server: Any = None) -> None:
        """Run the target's ``fastws_startup`` (rooms schedule their stored alarms there)."""
        if self._started:
            return
        self._started = True
        hook = None if isinstance(self.target, type) else getattr(self.target, "fastws_startup", None)
        if hook is not None:
            result = hook(server)
            if asyncio.iscoroutine(result):
                await result

    async def shutdown(self, server: Any = None) -> None:
        """Run the target's ``fastws_shutdown`` (rooms commit and close their databases)."""
        if not self._started:
            return
        self._started = False
        hook = None if isinstance(self.target, type) else getattr(self.target, "fastws_shutdown", None)
        if hook is not None:
            result = hook(server)
            if asyncio.iscoroutine(result):
                await result

    fastws_startup = startup
    fastws_shutdown = shutdown

    # ------------------------------------------------------------ ASGI

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "websocket":
            native = scope.get("extensions", {}).get("fastws")
            if native is not None:
                self._native(scope, native)
                return
            await self._bridge(scope, receive, send)
        elif kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    def _request(self, scope: dict[str, Any], body: bytes = b"") -> Request:
        path = route_path(scope)
        query = scope.get("query_string", b"").decode("latin-1")
        target = (scope.get("raw_path") and _raw_under(scope)) or path
        if query:
            target += "?" + query
        headers = Headers((k.decode("latin-1"), v.decode("latin-1")) for k, v in scope.get("headers", ()))
        client = scope.get("client")
        request = Request(scope.get("method", "GET"), target, headers, scope.get("http_version", "1.1"),
                          tuple(client) if client else None)
        request.scope["params"] = {"path": request.path.lstrip("/")}
        request.body = body
        return request

    def _native(self, scope: dict[str, Any], native: dict[str, Any]) -> None:
        """On fastws: answer the engine's accept for this connection with the target's answer."""
        try:
            request = self._request(scope)
        except HandshakeError as exc:
            native["answer"](Response(exc.status, exc.reason, exc.headers))
            return
        request.remote_address = native["request"].remote_address
        for key in ("client_ip", "user"):
            if key in native["request"].scope:
                request.scope[key] = native["request"].scope[key]
        native["answer"](_accept_call(self._accept, native["ws"], request))

    async def _http(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > (1 << 20):
                await _send_response(send, Response(413, "Request body too large"), scope)
                return
        try:
            request = self._request(scope, body)
            answer = await _resolve(_accept_call(self._accept, None, request))
        except HandshakeError as exc:
            answer = Response(exc.status, exc.reason, exc.headers)
        if not isinstance(answer, Response):
            answer = Response(426, "Expected WebSocket", [("Upgrade", "websocket")])
        await _send_response(send, answer, scope)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # ------------------------------------------------------------ under another ASGI server

    def _engine(self) -> Endpoint:
        if self._endpoint is None:
            self._endpoint = Endpoint(False, ping_interval=0.0, ping_timeout=0.0, idle_timeout=0.0,
                                      handshake_timeout=0.0, compression=None, accept=self._accept_bridged,
                                      max_size=self._max_size, max_queue=self._max_queue)
            self._endpoint.loop = asyncio.get_running_loop()
        return self._endpoint

    def _accept_bridged(self, ws: Any, request: Request) -> Any:
        request.scope["params"] = {"path": request.path.lstrip("/")}
        return self._accept(ws, request)

    async def _bridge(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        try:
            request = self._request(scope)
        except HandshakeError as exc:
            await _deny(send, scope, Response(exc.status, exc.reason, exc.headers))
            return
        pipe = _Pipe(scope)
        conn = Connection(self._engine())
        conn.connection_made(pipe)
        try:
            pipe.feed(conn, _upgrade_head(request))
            head = await pipe.response_head()
            if head is None:
                return
            status, headers, rest = head
            if status != 101:
                body = rest[: int(headers.get("content-length") or 0)]
                await _deny(send, scope, Response(status, body, [(k, v) for k, v in headers.items()
                                                                 if k not in _HOP],
                                                  headers.get("content-type", "text/plain; charset=utf-8")))
                return
            accept: dict[str, Any] = {"type": "websocket.accept",
                                      "headers": [(k.encode("latin-1"), v.encode("latin-1"))
                                                  for k, v in headers.items() if k not in _HOP]}
            if headers.get("sec-websocket-protocol"):
                accept["subprotocol"] = headers["sec-websocket-protocol"]
            await send(accept)
            await pipe.run(conn, rest, receive, send)
        finally:
            pipe.lose(conn)


def _raw_under(scope: dict[str, Any]) -> str:
    raw: str = scope["raw_path"].decode("latin-1")
    root = scope.get("root_path", "")
    return raw[len(root):] if root and raw.startswith(root) else raw


def _accept_call(accept: Any, ws: Any, request: Request) -> Any:
    try:
        return accept(ws, request)
    except HandshakeError as exc:
        return Response(exc.status, exc.reason, exc.headers)


async def _resolve(answer: Any) -> Any:
    while answer is not None and hasattr(type(answer), "__await__"):
        answer = await answer
    return answer


async def _send_response(send: Any, response: Response, scope: dict[str, Any]) -> None:
    body = response.body.encode("utf-8") if isinstance(response.body, str) else bytes(response.body)
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
    if not any(k == b"content-type" for k, _ in headers) and (body or response.status >= 400):
        headers.append((b"content-type", response.content_type.encode("latin-1")))
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if scope.get("method") == "HEAD" else body})


async def _deny(send: Any, scope: dict[str, Any], response: Response) -> None:
    if "websocket.http.response" in (scope.get("extensions") or {}):
        headers = [(k, v) for k, v in response.headers]
        await _send_response(lambda m: send({**m, "type": "websocket." + m["type"]}), Response(
            response.status, response.body, headers, response.content_type), scope)
    else:
        await send({"type": "websocket.close", "code": 1008})


def _upgrade_head(request: Request) -> bytes:
    lines = [f"GET {request.target} HTTP/1.1"]
    names = set()
    for k, v in request.headers:
        low = k.lower()
        if low in ("sec-websocket-extensions",):
            continue  # the ASGI server negotiates compression; the engine's frames stay plain
        names.add(low)
        lines.append(f"{k}: {v}")
    if "sec-websocket-key" not in names:  # an ASGI server need not pass it on
        lines.append("Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)).decode())
    for name, value in (("upgrade", "websocket"), ("connection", "Upgrade"), ("sec-websocket-version", "13"),
                        ("host", "localhost")):
        if name not in names:
            lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Pipe(asyncio.Transport):
    """The in-memory transport between an engine Connection and an ASGI websocket scope."""

    def __init__(self, scope: dict[str, Any]) -> None:
        super().__init__()
        self._extra = {"peername": tuple(scope["client"]) if scope.get("client") else None,
                       "sockname": tuple(scope["server"]) if scope.get("server") else None}
        self._out = bytearray()
        self._wake = asyncio.Event()
        self._reading = asyncio.Event()
        self._reading.set()
        self._closing = False
        self._lost = False

    # the engine's side
    def write(self, data: Any) -> None:
        if self._closing:
            return
        self._out += data
        self._wake.set()

    def writelines(self, chunks: Any) -> None:
        for c in chunks:
            self.write(c)

    def close(self) -> None:
        self._closing = True
        self._wake.set()

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self._closing

    def can_write_eof(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def pause_reading(self) -> None:
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    def is_reading(self) -> bool:
        return self._reading.is_set()

    def set_write_buffer_limits(self, high: Any = None, low: Any = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    # the mount's side
    def feed(self, conn: Any, data: bytes) -> None:
        view = memoryview(data)
        while view and not self._lost:
            buf = memoryview(conn.get_buffer(len(view))).cast("B")
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            buf.release()
            conn.buffer_updated(n)
            view = view[n:]

    def lose(self, conn: Any) -> None:
        if not self._lost:
            self._lost = True
            self._closing = True
            conn.connection_lost(None)

    async def response_head(self) -> tuple[int, dict[str, str], bytes] | None:
        """The engine's answer to the opening request: status, headers, what followed."""
        for _ in range(1 << 20):
            end = self._out.find(b"\r\n\r\n")
            if end >= 0:
                head = bytes(self._out[:end + 4])
                rest = bytes(self._out[end + 4:])
                self._out.clear()
                return _parse_head(head) + (rest,)
            if self._closing:
                return None
            self._wake.clear()
            await self._wake.wait()
        return None

    async def run(self, conn: Any, rest: bytes, receive: Any, send: Any) -> None:
        """Messages both ways until one side closes."""
        reader = asyncio.ensure_future(self._inbound(conn, receive))
        try:
            await self._outbound(conn, rest, send)
        finally:
            reader.cancel()
            try:
                await reader
            except (asyncio.CancelledError, Exception):
                pass

    async def _inbound(self, conn: Any, receive: Any) -> None:
        """The client's messages into the engine, as masked frames (reading pauses as the engine says)."""
        for _ in iter(int, 1):
            if not self._reading.is_set():
                await self._reading.wait()
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                text = message.get("text")
                if text is not None:
                    self.feed(conn, build_frame(Opcode.TEXT, text.encode("utf-8"), mask=True))
                else:
                    self.feed(conn, build_frame(Opcode.BINARY, message.get("bytes") or b"", mask=True))
            elif kind == "websocket.disconnect":
                code = message.get("code") or 1005
                payload = build_close(code, message.get("reason") or "") if code not in (1005, 1006) else b""
                if code != 1006:
                    self.feed(conn, build_frame(Opcode.CLOSE, payload, mask=True))
                self.lose(conn)
                self._wake.set()
                return

    async def _outbound(self, conn: Any, rest: bytes, send: Any) -> None:
        """The engine's frames out to the client, as ASGI messages."""
        parser = FrameParser(True, 1 << 62)
        pending = bytearray(rest)
        for _ in iter(int, 1):
            if pending:
                data, pending = bytes(pending), bytearray()
                try:
                    events = parser.feed_data(data)
                except ProtocolError:  # pragma: no cover - the engine writes valid frames
                    logger.exception("fastws: the mount could not parse the engine's frames")
                    return
                for opcode, payload in events:
                    if opcode == Opcode.TEXT:
                        await send({"type": "websocket.send", "text": payload.decode("utf-8")})
                    elif opcode == Opcode.BINARY:
                        await send({"type": "websocket.send", "bytes": payload})
                    elif opcode == Opcode.CLOSE:
                        code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1000
                        reason = payload[2:].decode("utf-8", "replace")
                        if not self._lost:
                            await send({"type": "websocket.close", "code": code, "reason": reason})
                            # the client's answer, as the ASGI server completes the handshake itself
                            self.feed(conn, build_frame(Opcode.CLOSE, payload, mask=True))
                        self.lose(conn)
                        return
                    # PING/PONG: the ASGI server keeps its own connection alive
            if self._lost:
                return
            if self._closing and not self._out:
                if not self._lost:
                    await send({"type": "websocket.close", "code": 1006 if conn.close_code == 1006 else 1011})
                self.lose(conn)
                return
            if not self._out:
                self._wake.clear()
                await self._wake.wait()
            pending += self._out
            self._out.clear()


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    headers: dict[str, str] = {}

    class _CB:
        def on_header(self, name: bytes, value: bytes) -> None:
            headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    parser = httptools.HttpResponseParser(_CB())
    try:
        parser.feed_data(head)
    except httptools.HttpParserUpgrade:
        pass
    return parser.get_status_code(), headers

