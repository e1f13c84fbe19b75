"""An ASGI ``websocket`` scope on a fastws :class:`~fastws.Connection`.

The ASGI app runs from the engine's accept hook: :meth:`WebSocketSession.accept` starts it and
returns a coroutine that resolves with what the app answered first: ``websocket.accept`` becomes
an :class:`~fastws.Accept` (the engine sends the 101 and the app keeps running as the
connection's handler), ``websocket.close`` a 403 and ``websocket.http.response.*`` the app's own
HTTP response. From then on ``receive()`` is ``ws.recv()`` and ``send()`` is ``ws.send()``: the
frames, their limits, keepalive, guards and metrics are the engine's, as for a native handler.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import unquote

from fastws.accept import Accept
from fastws.exceptions import ConnectionClosed
from fastws.handshake import Request, Response

__all__ = ["WebSocketSession", "ClientDisconnected", "asgi_headers"]

logger = logging.getLogger("fastws")

ASGI_VERSION = {"version": "3.0", "spec_version": "2.4"}

_CONNECTING, _ACCEPTING, _RESPONDING, _OPEN, _CLOSED = range(5)


class ClientDisconnected(OSError):
    """``send()`` on a connection the client has closed (ASGI spec 2.4: a subclass of OSError)."""


def asgi_headers(request: Request) -> list[tuple[bytes, bytes]]:
    """The request's headers as ASGI wants them: lower-case names, bytes."""
    return [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in request.headers]


def _path(target: str) -> tuple[str, bytes, bytes]:
    raw, _, query = target.partition("?")
    raw_b = raw.encode("latin-1")
    return unquote(raw), raw_b, query.encode("latin-1")


def websocket_scope(request: Request, ws: Any, state: dict[str, Any] | None, root_path: str = "") -> dict[str, Any]:
    path, raw_path, query = _path(request.target)
    transport = getattr(ws, "transport", None)
    tls = transport is not None and transport.get_extra_info("sslcontext") is not None
    offered = [p.strip() for v in request.headers.get_all("sec-websocket-protocol") for p in v.split(",") if p.strip()]
    scope: dict[str, Any] = {
        "type": "websocket",
        "asgi": ASGI_VERSION,
        "http_version": request.http_version,
        "scheme": "wss" if tls else "ws",
        "server": _addr(ws.local_address),
        "client": _addr(request.remote_address),
        "root_path": root_path,
        "path": path,
        "raw_path": raw_path,
        "query_string": query,
        "headers": asgi_headers(request),
        "subprotocols": offered,
        "extensions": {"websocket.http.response": {}, "fastws": {"ws": ws, "request": request}},
    }
    if state is not None:
        scope["state"] = dict(state)
    return scope


def _addr(addr: Any) -> tuple[str, int] | None:
    if isinstance(addr, tuple) and len(addr) >= 2:
        return addr[0], addr[1]
    return None


class WebSocketSession:
    """One ASGI websocket connection: the app's ``receive``/``send`` over a fastws Connection."""

    __slots__ = ("app", "ws", "scope", "phase", "answer", "opened", "task", "_status", "_headers", "_body",
                 "_lost")

    def __init__(self, app: Any, ws: Any, scope: dict[str, Any]) -> None:
        self.app = app
        self.ws = ws
        self.scope = scope
        self.phase = _CONNECTING
        loop = asyncio.get_running_loop()
        self.answer: asyncio.Future[Any] = loop.create_future()   # Accept | Response
        self.opened = asyncio.Event()                            # the handler runs: the 101 is out
        self._lost: asyncio.Future[None] = loop.create_future()  # the TCP connection is gone
        self.task: asyncio.Task[None] | None = None
        self._status = 0
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []

    async def accept(self) -> Any:
        """Run the app until it accepts, refuses or answers; the engine's accept hook awaits this."""
        ws = self.ws
        ws.add_close_callback(self._on_lost)
        self.task = asyncio.get_running_loop().create_task(self._run())
        try:
            return await asyncio.shield(self.answer)
        except asyncio.CancelledError:
            self.task.cancel()
            raise

    def hand_off(self, answer: Any) -> None:
        """The ``fastws`` scope extension: answer the engine's accept with a native answer (an
        :class:`~fastws.Accept`, a :class:`~fastws.Response` or an awaitable of one), so the
        connection runs on the engine without ASGI messages (``fastws.asgi.mount`` does this)."""
        if self.answer.done() or self.phase not in (_CONNECTING, _ACCEPTING):
            raise RuntimeError("the WebSocket was already answered")
        self.phase = _CLOSED
        if answer is not None and hasattr(type(answer), "__await__"):
            task = asyncio.ensure_future(answer)
            task.add_done_callback(self._handed)
        else:
            self.answer.set_result(answer)

    def _handed(self, task: asyncio.Future[Any]) -> None:
        if self.answer.done():
            return
        if task.cancelled():
            self.answer.cancel()
        elif task.exception() is not None:
            self.answer.set_exception(task.exception())  # type: ignore[arg-type]
        else:
            self.answer.set_result(task.result())

    def _on_lost(self) -> None:
        if not self._lost.done():
            self._lost.set_result(None)
        if not self.answer.done():  # gone during the handshake: the engine drops the answer
            self.answer.set_result(Response(400, "connection lost"))

    async def _handler(self, ws: Any) -> None:
        """The connection's handler (run by the engine once the 101 is sent): the app's task."""
        self.opened.set()
        assert self.task is not None
        await self.task

    async def _run(self) -> None:
        try:
            await self.app(self.scope, self.receive, self.send)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            if not self.answer.done():
                logger.error("fastws: exception in the ASGI application (%s) before it accepted", self.scope["path"],
                             exc_info=exc)
                self.answer.set_result(Response(500, "Internal Server Error"))
            elif self.phase == _OPEN:
                logger.error("fastws: exception in the ASGI application (%s)", self.scope["path"], exc_info=exc)
                self.phase = _CLOSED
                if not self.opened.is_set():  # accepted, the 101 not out yet: close after it
                    await _first(self.opened.wait(), self._lost)
                if self.ws.open:
                    self.ws.close(1011, "")
            return
        if not self.answer.done() and self.phase != _CLOSED:  # (_CLOSED: handed off, answer pending)
            logger.error("fastws: the ASGI application (%s) returned without accepting or closing the WebSocket",
                         self.scope["path"])
            self.answer.set_result(Response(500, "Internal Server Error"))

    # ------------------------------------------------------------ the app's side

    async def receive(self) -> dict[str, Any]:
        if self.phase == _CONNECTING:
            self.phase = _ACCEPTING
            return {"type": "websocket.connect"}
        if self.phase in (_ACCEPTING, _RESPONDING):
            # not accepted yet: nothing can arrive but the end of the connection
            await self._lost
            return {"type": "websocket.disconnect", "code": 1006, "reason": ""}
        ws = self.ws
        if not self.opened.is_set():
            await _first(self.opened.wait(), self._lost)
        try:
            message = await ws.recv()
        except ConnectionClosed as exc:
            self.phase = _CLOSED
            return {"type": "websocket.disconnect", "code": exc.code, "reason": exc.reason}
        if type(message) is str:
            return {"type": "websocket.receive", "text": message}
        return {"type": "websocket.receive", "bytes": message}

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        phase = self.phase
        if phase == _OPEN:
            if kind == "websocket.send":
                await self._send_data(message)
                return
            if kind == "websocket.close":
                await self._close(message)
                return
            raise RuntimeError(f"Expected ASGI message 'websocket.send' or 'websocket.close', but got {kind!r}")
        if phase in (_CONNECTING, _ACCEPTING) and self.answer.done():
            raise ClientDisconnected(f"cannot send {kind!r}: the client went away during the handshake")
        if phase in (_CONNECTING, _ACCEPTING):
            if kind == "websocket.accept":
                headers = [(_text(k), _text(v)) for k, v in message.get("headers") or ()]
                spec = Accept(handler=self._handler, subprotocol=message.get("subprotocol"), headers=headers)
                self.phase = _OPEN
                self.answer.set_result(spec)
                return
            if kind == "websocket.close":
                self.phase = _CLOSED
                self.answer.set_result(Response(403, "Forbidden"))
                return
            if kind == "websocket.http.response.start":
                self.phase = _RESPONDING
                self._status = int(message["status"])
                self._headers = [(_text(k), _text(v)) for k, v in message.get("headers") or ()]
                return
            raise RuntimeError("Expected ASGI message 'websocket.accept', 'websocket.close' or "
                               f"'websocket.http.response.start', but got {kind!r}")
        if phase == _RESPONDING:
            if self.answer.done():
                raise ClientDisconnected(f"cannot send {kind!r}: the client went away during the handshake")
            if kind != "websocket.http.response.body":
                raise RuntimeError(f"Expected ASGI message 'websocket.http.response.body', but got {kind!r}")
            self._body.append(bytes(message.get("body", b"")))
            if not message.get("more_body", False):
                self.phase = _CLOSED
                headers = [(k, v) for k, v in self._headers if k.lower() != "content-length"]
                ctype = next((v for k, v in headers if k.lower() == "content-type"), None)
                headers = [(k, v) for k, v in headers if k.lower() != "content-type"]
                resp = Response(self._status, b"".join(self._body), headers)
                if ctype is not None:
                    resp.content_type = ctype
                self.answer.set_result(resp)
            return
        if self._lost.done() or self.answer.done():
            raise ClientDisconnected(f"cannot send {kind!r}: the WebSocket is closed")
        raise RuntimeError(f"Unexpected ASGI message {kind!r} after the WebSocket closed")

    async def _send_data(self, message: dict[str, Any]) -> None:
        ws = self.ws
        if not self.opened.is_set():
            await _first(self.opened.wait(), self._lost)
        if not ws.open:
            self.phase = _CLOSED
            raise ClientDisconnected("cannot send: the WebSocket is closed")
        data = message.get("bytes")
        if data is None:
            data = message.get("text")
            if data is None:
                raise TypeError("'websocket.send' needs 'bytes' or 'text'")
        await ws.send(data)

    async def _close(self, message: dict[str, Any]) -> None:
        self.phase = _CLOSED
        code = int(message.get("code") or 1000)
        reason = message.get("reason") or ""
        ws = self.ws
        if not self.opened.is_set():
            await _first(self.opened.wait(), self._lost)
        if ws.open:
            ws.close(code, reason)


def _text(value: Any) -> str:
    return value.decode("latin-1") if isinstance(value, (bytes, bytearray)) else str(value)


async def _first(coro: Any, other: asyncio.Future[None]) -> None:
    """Wait for ``coro`` or ``other``, whichever finishes first."""
    task = asyncio.ensure_future(coro)
    try:
        await asyncio.wait({task, other}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        task.cancel()
