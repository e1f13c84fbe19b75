"""A passthrough WebSocket proxy: forward upgrades to a backend WebSocket origin.

``Proxy(backend_url)`` is an app (it has ``fastws_accept``): serve it alone
(``fastws.serve(Proxy(url), ...)``) or mount it in an App. For each upgrade it

1. answers a non-WebSocket request with 400 ``WebSocket endpoint only``;
2. opens a connection to the backend with the request's path and query
   appended to the backend URL's path, the client's offered subprotocols, the
   configured ``headers``, the client headers named in ``pass_headers``, and
   ``X-Forwarded-For`` / ``X-Real-IP`` set to the client's address (whatever
   the client sent in them is dropped), ``X-Forwarded-Host`` to its Host;
3. answers 502 ``Bad Gateway`` when the backend cannot be reached or fails the
   handshake (a backend 4xx refusal is passed on with its status);
4. accepts the client with the backend's chosen subprotocol and relays, with
   two listeners (no task, no queue): each received message is sent on the
   other side from the zero-copy view with its opcode (TEXT stays TEXT, no
   decode/encode of the payload), PINGs are forwarded (each hop's engine
   answers the PONG itself), and a CLOSE is passed on with its code and
   reason. A dropped backend closes the client with 1014 (Bad Gateway); a
   dropped client closes the backend with 1001.

Flow control: when one side's peer does not read (its send returns a pending
awaitable), reading from the other side pauses until it drains, so a fast
producer behind a slow consumer does not fill the proxy's memory.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as _ssl
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from fastws import handshake as _hs
from fastws._endpoint import Endpoint
from fastws._protocol import Connection
from fastws.client import header_list, open_connection, parse_url
from fastws.connection import Listener, Message
from fastws.exceptions import ConnectionClosed, FastWSError, HandshakeError, InvalidHandshake
from fastws.handshake import ClientHandshake, Request
from fastws.server import Accept, compression_options

__all__ = ["Proxy"]

logger = logging.getLogger("fastws.proxy")

#: request headers never forwarded (hop-by-hop, handshake, or set by the proxy)
_DROP = frozenset({
    "host", "upgrade", "connection", "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
    "sec-websocket-protocol", "sec-websocket-accept", "content-length", "transfer-encoding", "keep-alive",
    "te", "trailer", "proxy-connection", "proxy-authorization", "x-forwarded-for", "x-real-ip",
    "x-forwarded-host", "forwarded",
})


def _send_close_code(code: int) -> int:
    """A received/failure code as one we may send on: 1005 (no status) -> 1000."""
    if code == 1005:
        return 1000
    if 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999:
        return code
    return 1011


class _Relay:
    """The two connections of one proxied session and the flow control between them."""

    __slots__ = ("client", "backend", "pending", "backend_close", "paused_client", "paused_backend", "opened")

    def __init__(self) -> None:
        self.client: Any = None                   # the client-facing connection, once open
        self.backend: Any = None                  # the backend connection
        self.pending: list[tuple[int, bytes]] | None = None   # backend messages before the client opened
        self.backend_close: tuple[int, str] | None = None
        self.paused_client = False                # we paused reading from the client
        self.paused_backend = False               # we paused reading from the backend
        self.opened = False

    # ---- flow control: pause the source while the target's peer does not read.
    # ws.pause_reading() is the application's own pause reason in the engine: the engine's
    # reasons (a peer that does not read our writes, a full queue) combine with it.

    @staticmethod
    def _pause(conn: Any) -> None:
        conn.pause_reading()

    @staticmethod
    def _unpause(conn: Any) -> None:
        conn.resume_reading()

    _resume = _unpause


class _ClientSide(Listener):
    """Listener of the client-facing connection."""

    __slots__ = ("relay",)

    def __init__(self, relay: _Relay) -> None:
        self.relay = relay

    def on_connect(self, ws: Connection) -> None:
        relay = self.relay
        relay.client = ws
        relay.opened = True
        backend = relay.backend
        if relay.pending:
            for opcode, data in relay.pending:
                ws.send(data, binary=opcode == 2)
        relay.pending = None
        if relay.backend_close is not None:
            code, reason = relay.backend_close
            ws.close(code, reason)
            return
        if relay.paused_backend:
            relay.paused_backend = False
            relay._resume(backend)

    def on_message(self, ws: Connection, msg: Message) -> None:
        relay = self.relay
        backend = relay.backend
        try:
            backend.send(msg)
        except ConnectionClosed:
            return
        if backend.writing_paused:
            relay.paused_client = True
            relay._pause(ws)

    def on_ping(self, ws: Connection, payload: bytes) -> None:
        backend = self.relay.backend
        if backend.open:
            try:
                backend.send_frame(9, payload)
            except FastWSError:
                pass

    def on_drain(self, ws: Connection) -> None:
        relay = self.relay
        if relay.paused_backend:
            relay.paused_backend = False
            relay._resume(relay.backend)

    def on_close(self, ws: Connection, code: int, reason: str) -> None:
        relay = self.relay
        backend = relay.backend
        if relay.paused_backend:
            # the backend must read its answer to our CLOSE: undo our pause
            relay.paused_backend = False
            relay._unpause(backend)
        if backend.open:
            if code == 1006:
                backend.close(1001, "client went away")
            else:
                backend.close(_send_close_code(code), reason)


class _BackendSide(Listener):
    """Listener of the connection to the backend."""

    __slots__ = ("relay",)

    def __init__(self, relay: _Relay) -> None:
        self.relay = relay

    def on_message(self, ws: Connection, msg: Message) -> None:
        relay = self.relay
        client = relay.client
        if client is None:
            # the client's 101 is not sent yet: keep the message, stop reading until it is
            if relay.pending is None:
                relay.pending = []
            relay.pending.append((msg.opcode, msg.bytes()))
            if not relay.paused_backend:
                relay.paused_backend = True
                relay._pause(ws)
            return
        try:
            client.send(msg)
        except ConnectionClosed:
            return
        if client.writing_paused:
            relay.paused_backend = True
            relay._pause(ws)

    def on_ping(self, ws: Connection, payload: bytes) -> None:
        client = self.relay.client
        if client is not None and client.open:
            try:
                client.send_frame(9, payload)
            except FastWSError:
                pass

    def on_drain(self, ws: Connection) -> None:
        relay = self.relay
        if relay.paused_client and relay.client is not None:
            relay.paused_client = False
            relay._resume(relay.client)

    def on_close(self, ws: Connection, code: int, reason: str) -> None:
        relay = self.relay
        if code == 1006:
            code, reason = 1014, "backend connection lost"
        else:
            code = _send_close_code(code)
        client = relay.client
        if relay.paused_client and client is not None:
            relay.paused_client = False
            relay._unpause(client)
        if client is None:
            relay.backend_close = (code, reason)
        elif client.open:
            client.close(code, reason)


class Proxy:
    """Forward WebSocket connections to a backend origin (an app: serve it or mount it).

    Args:
        backend_url: ``ws://host:port[/prefix][?query]`` or ``wss://...``; the
            client's path and query are appended.
        headers: extra headers sent to the backend (a dict or pairs).
        pass_headers: client request headers copied to the backend.
        strip_prefix: removed from the start of the client's path before it is appended
            (for a proxy mounted under a prefix).
        open_timeout: bound on connecting to the backend and its handshake (502 beyond).
        compression: permessage-deflate on the backend leg (off by default: relayed
            payloads are then neither inflated nor deflated again on that leg). The
            client leg follows the server's ``compression``.
        max_size: largest message accepted from the backend (1009 beyond).
        write_limit, max_write_buffer: the backend leg's flow-control limits.
        ping_interval, ping_timeout: keepalive on the backend leg (None: off; client
            PINGs are forwarded anyway).
        close_timeout: closing handshake bound on the backend leg.
        ssl: an SSLContext for a wss:// backend (default: the system's default context).
    """

    def __init__(self, backend_url: str, *, headers: Any = None,
                 pass_headers: Sequence[str] = ("authorization", "cookie", "origin", "user-agent"),
                 strip_prefix: str = "", open_timeout: float = 10.0, compression: Any = False,
                 max_size: int = 1 << 20, write_limit: int = 65536, max_write_buffer: int = 16 << 20,
                 ping_interval: float | None = None, ping_timeout: float | None = 20.0,
                 close_timeout: float = 10.0, ssl: _ssl.SSLContext | None = None,
                 max_header_size: int = 16384) -> None:
        secure, host, port, target, host_header = parse_url(backend_url)
        self.backend_url = backend_url
        self._secure, self._host, self._port, self._host_header = secure, host, port, host_header
        parts = urlsplit(backend_url)
        self._prefix = parts.path.rstrip("/")
        self._query = parts.query
        self.headers: list[tuple[str, str]] = header_list(headers)
        for name, value in self.headers:
            if any(c in name for c in "\r\n:") or "\r" in value or "\n" in value:
                raise ValueError(f"invalid header {name!r}")
        self.pass_headers = frozenset(h.lower() for h in pass_headers) - _DROP
        self.strip_prefix = strip_prefix.rstrip("/")
        self.open_timeout = open_timeout
        self.compression = compression_options(compression)
        self.max_size = max_size
        self.write_limit = write_limit
        self.max_write_buffer = max_write_buffer
        self.ping_interval = ping_interval or 0.0
        self.ping_timeout = ping_timeout or 0.0
        self.close_timeout = close_timeout
        self.max_header_size = max_header_size
        if secure and ssl is None:
            ssl = _ssl.create_default_context()
        self.ssl = ssl if secure else None
        # one client endpoint per event loop: one keepalive sweep and one cork for all backend legs
        self._endpoints: dict[int, tuple[asyncio.AbstractEventLoop, Endpoint]] = {}

    def __repr__(self) -> str:
        return f"Proxy({self.backend_url!r})"

    # ------------------------------------------------------------ handshake

    def backend_target(self, request: Request) -> str:
        """The request target sent to the backend: its URL's path + the client's path and query."""
        target = request.target
        if not target.startswith("/"):  # absolute-form target
            parts = urlsplit(target)
            target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        path, sep, query = target.partition("?")
        if self.strip_prefix and (path == self.strip_prefix or path.startswith(self.strip_prefix + "/")):
            path = path[len(self.strip_prefix):] or "/"
        path = self._prefix + path if self._prefix else path
        if self._query:
            query = self._query + ("&" + query if query else "")
        return path + ("?" + query if query else "")

    def backend_headers(self, request: Request) -> list[tuple[str, str]]:
        """Headers sent to the backend for ``request``."""
        out = list(self.headers)
        if self.pass_headers:
            for name, value in request.headers:
                if name.lower() in self.pass_headers:
                    out.append((name, value))
        client_ip = request.scope.get("client_ip") if request.scope else None
        if client_ip is None and request.remote_address:
            client_ip = request.remote_address[0]
        if client_ip:
            out.append(("X-Forwarded-For", str(client_ip)))
            out.append(("X-Real-IP", str(client_ip)))
        host = request.headers.get("host")
        if host:
            out.append(("X-Forwarded-Host", host))
        return out

    def fastws_accept(self, ws: Connection, request: Request) -> Any:
        """The accept hook: refuse plain HTTP (400), else connect to the backend (a coroutine)."""
        if not request.is_websocket:
            raise HandshakeError(400, "WebSocket endpoint only")
        _hs.validate_upgrade(request)  # a malformed upgrade gets its 4xx before we dial the backend
        return self._accept(ws, request)

    def _endpoint(self, loop: asyncio.AbstractEventLoop) -> Endpoint:
        entry = self._endpoints.get(id(loop))
        if entry is not None and entry[0] is loop:
            return entry[1]
        if len(self._endpoints) > 8:  # loops come and go in tests: keep only live ones
            self._endpoints = {k: v for k, v in self._endpoints.items() if not v[0].is_closed()}
        endpoint = Endpoint(True, max_size=self.max_size, max_queue=1, write_limit=self.write_limit,
                            max_write_buffer=self.max_write_buffer, ping_interval=self.ping_interval,
                            ping_timeout=self.ping_timeout, close_timeout=self.close_timeout,
                            handshake_timeout=0.0, max_header_size=self.max_header_size,
                            compression=self.compression, loop=loop)
        self._endpoints[id(loop)] = (loop, endpoint)
        return endpoint

    async def _accept(self, ws: Connection, request: Request) -> Accept:
        loop = asyncio.get_running_loop()
        relay = _Relay()
        offered = [p.strip() for v in request.headers.get_all("sec-websocket-protocol") for p in v.split(",")
                   if p.strip()]
        hs = ClientHandshake(self._host_header, self.backend_target(request), offered, self.compression,
                             self.backend_headers(request), self.max_header_size, None)
        endpoint = self._endpoint(loop)
        listener = _BackendSide(relay)
        try:
            async with asyncio.timeout(self.open_timeout) if hasattr(asyncio, "timeout") else _Timeout(
                    self.open_timeout):
                backend = await open_connection(endpoint, self._host, self._port, hs, listener=listener,
                                                ssl=self.ssl)
        except (OSError, InvalidHandshake, asyncio.TimeoutError) as exc:
            status = getattr(exc, "status", 0)
            logger.warning("fastws: backend %s unavailable for %s: %s", self.backend_url, request.path,
                           exc or type(exc).__name__)
            if 400 <= status < 500:
                raise HandshakeError(status, _phrase(status)) from None
            raise HandshakeError(502, "Bad Gateway") from None
        relay.backend = backend
        if ws.closed:  # the client left while we dialled
            backend.abort()
            raise HandshakeError(499, "Client Closed Request")
        # if the engine drops this Accept (the client left meanwhile), do not leak the backend
        loop.call_soon(loop.call_soon, self._check_opened, relay)
        return Accept(listener=_ClientSide(relay), subprotocol=backend.subprotocol)

    @staticmethod
    def _check_opened(relay: _Relay) -> None:
        if not relay.opened and relay.backend is not None and not relay.backend.closed:
            if relay.paused_backend:
                relay.paused_backend = False
                relay._unpause(relay.backend)
            relay.backend.close(1001, "client went away")


def _phrase(status: int) -> str:
    from http import HTTPStatus
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Bad Gateway"


class _Timeout:
    """asyncio.timeout for Python 3.10."""

    def __init__(self, delay: float) -> None:
        from fastws.client import _timeout
        self._inner = _timeout(delay)

    async def __aenter__(self) -> Any:
        return await self._inner.__aenter__()

    async def __aexit__(self, *exc: Any) -> bool:
        return await self._inner.__aexit__(*exc)
