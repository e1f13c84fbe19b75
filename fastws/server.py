"""The WebSocket server: ``fastws.serve`` (embeddable) and ``fastws.run`` (blocking).

``serve()`` wraps ``loop.create_server`` with the Cython protocol, and owns
graceful shutdown: stop accepting, close every connection with 1001, wait for
the handlers, abort what is left after the timeout. uvloop is used by ``run()``
when it is installed; ``serve()`` runs on whatever loop is running.
"""

from __future__ import annotations

import asyncio
import errno
import inspect
import logging
import signal
import socket
import ssl as _ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastws._endpoint import Endpoint
from fastws._protocol import Connection, attach_socket
from fastws.accept import Accept, Handler
from fastws.connection import Listener
from fastws.exceptions import HandshakeError
from fastws.handshake import CompressionOptions, Request, Response, validate_upgrade
from fastws.metrics import Observability, access_logger, log_access

__all__ = ["Accept", "Server", "serve", "run", "resolve_app", "compression_options"]

logger = logging.getLogger("fastws")

def compression_options(value: Any) -> CompressionOptions | None:
    """Normalise ``compression=`` (True / False / None / CompressionOptions / 'deflate')."""
    if value is None or value is False:
        return None
    if value is True or value == "deflate":
        return CompressionOptions()
    if isinstance(value, CompressionOptions):
        return value
    raise TypeError(f"compression must be a bool or CompressionOptions, not {value!r}")


def resolve_app(app: Any, subprotocols: Sequence[str] = ()) -> Callable[[Connection, Request], Any]:
    """Turn what the user gave ``serve()`` into an accept hook ``(ws, request) -> Accept | Response``.

    Accepted forms: an object with ``fastws_accept(ws, request)`` (an App), a
    :class:`Listener` subclass (one instance per connection), a Listener
    instance (shared), or ``async def handler(ws)``.
    """
    hook = getattr(app, "fastws_accept", None)
    if hook is not None and not isinstance(app, type):
        return hook  # type: ignore[no-any-return]
    protos = list(subprotocols)
    if isinstance(app, type) and issubclass(app, Listener):
        factory = app

        def accept_listener(ws: Connection, request: Request) -> Accept:
            return Accept(listener=factory(), subprotocols=protos)

        return accept_listener
    if isinstance(app, Listener):
        shared = app

        def accept_shared(ws: Connection, request: Request) -> Accept:
            return Accept(listener=shared, subprotocols=protos)

        return accept_shared
    if callable(app):
        target = app.__call__ if not inspect.isfunction(app) and not inspect.ismethod(app) else app
        if not inspect.iscoroutinefunction(target):
            raise TypeError(f"{app!r} is not an async handler, a Listener or an App")
        handler = app

        def accept_handler(ws: Connection, request: Request) -> Accept:
            return Accept(handler=handler, subprotocols=protos)

        return accept_handler
    raise TypeError(f"cannot serve {app!r}: expected an async handler, a Listener or an App")


class Server:
    """A running (or ready to run) WebSocket server. Create it with :func:`serve`.

    ``async with serve(...) as server`` starts it and shuts it down gracefully
    on exit; ``server = await serve(...)`` starts it and returns it.
    """

    def __init__(self, app: Any, host: str | None = "127.0.0.1", port: int = 8000, *,
                 ssl: _ssl.SSLContext | None = None,
                 subprotocols: Sequence[str] = (),
                 compression: Any = True,
                 max_size: int = 1 << 20,
                 max_queue: int = 32,
                 write_limit: int = 65536,
                 max_write_buffer: int = 16 << 20,
                 ping_interval: float | None = 30.0,
                 ping_timeout: float | None = 20.0,
                 idle_timeout: float | None = 100.0,
                 close_timeout: float = 10.0,
                 handshake_timeout: float = 10.0,
                 max_header_size: int = 16384,
                 shutdown_timeout: float = 10.0,
                 backlog: int = 4096,
                 reuse_port: bool = False,
                 sock: socket.socket | None = None,
                 transport: str = "auto",
                 metrics: bool = True,
                 metrics_path: str = "/metrics",
                 metrics_port: int | None = None,
                 metrics_token: str | None = None,
                 dashboard: bool = False,
                 health: bool = True,
                 js_client: bool = True,
                 drain_delay: float = 0.0,
                 accept: Callable[[Connection, Request], Any] | None = None) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.ssl = ssl
        self.backlog = backlog
        self.reuse_port = reuse_port
        self.sock = sock
        self.shutdown_timeout = shutdown_timeout
        if transport not in ("auto", "socket", "loop", "aiofastnet"):
            raise ValueError("transport must be 'auto', 'socket', 'loop' or 'aiofastnet'")
        if transport == "socket" and ssl is not None:
            raise ValueError("transport='socket' is plain TCP; TLS runs on the loop's transports")
        self.transport = transport
        self._accept = accept or resolve_app(app, subprotocols)
        self.endpoint = Endpoint(
            False,
            max_size=max_size,
            max_queue=max_queue,
            write_limit=write_limit,
            max_write_buffer=max_write_buffer,
            ping_interval=ping_interval or 0.0,
            ping_timeout=ping_timeout or 0.0,
            idle_timeout=idle_timeout or 0.0,
            close_timeout=close_timeout,
            handshake_timeout=handshake_timeout,
            max_header_size=max_header_size,
            compression=compression_options(compression),
            accept=self._accept_hook,
        )
        self._server: Any = None  # asyncio.Server or _SocketServer
        self._closing = False
        self._ready = True
        self.drain_delay = drain_delay
        self.metrics_port = metrics_port
        self.observability = Observability(lambda: [self.endpoint], self._is_ready, metrics=metrics,
                                           metrics_path=metrics_path, token=metrics_token,
                                           dashboard=dashboard, health=health)
        if not metrics:
            self.endpoint.stats_enabled = False  # the histograms; the counters cost nothing to keep
        obs = self.observability
        if metrics_port is None:
            self._routes = dict(obs.routes)
        else:  # the main port keeps the health checks; the rest moves to metrics_port
            self._routes = {p: r for p, r in obs.routes.items() if p in ("/healthz", "/readyz")}
        if js_client:  # on the main port: the pages that import it come from there
            from fastws import jsclient

            self._routes.update(jsclient.routes())
        self._metrics_server: Server | None = None
        # an app that answers plain HTTP on its own connections (fastws.asgi.ASGIApp): its
        # fastws_http(server) gives the protocol factory; upgrades go back to the engine
        self._http_hook = None if isinstance(app, type) else getattr(app, "fastws_http", None)
        self._http: Any = None
        if self._http_hook is not None and transport == "socket":
            raise ValueError("an app with fastws_http (an ASGI app) runs on the loop's transports, not 'socket'")

    # -------------------------------------------------------------- lifecycle

    def _is_ready(self) -> bool:
        return self._ready and not self._closing

    @property
    def accept_hook(self) -> Callable[[Any, Request], Any]:
        """The hook that answers each request ``(ws, request)``. It tries the observability
        routes and the drain first, then the app's accept hook, and gives an :class:`Accept`, a
        :class:`Response`, None or an awaitable of one."""
        return self._accept_hook

    def _accept_hook(self, ws: Connection, request: Request) -> Any:
        if access_logger.isEnabledFor(logging.INFO):
            return self._accept_logged(ws, request)
        if self._closing:
            raise HandshakeError(503, "Server shutting down")
        route = self._routes.get(request.path) if self._routes else None
        if route is not None:
            return route(ws, request)
        return self._accept(ws, request)

    def _accept_logged(self, ws: Connection, request: Request) -> Any:
        """The accept hook with an access line per request (``fastws.access`` at INFO)."""
        started = time.monotonic()
        try:
            if self._closing:
                raise HandshakeError(503, "Server shutting down")
            route = self._routes.get(request.path) if self._routes else None
            result = route(ws, request) if route is not None else self._accept(ws, request)
        except HandshakeError as exc:
            log_access(request, exc.status, None, started)
            raise
        except Exception:
            log_access(request, 500, None, started)
            raise
        if result is not None and hasattr(type(result), "__await__"):
            return self._log_later(ws, request, result, started)
        self._log_result(ws, request, result, started)
        return result

    async def _log_later(self, ws: Connection, request: Request, pending: Any, started: float) -> Any:
        try:
            result = await pending
        except HandshakeError as exc:
            log_access(request, exc.status, None, started)
            raise
        except BaseException:
            log_access(request, 500, None, started)
            raise
        self._log_result(ws, request, result, started)
        return result

    def _log_result(self, ws: Connection, request: Request, result: Any, started: float) -> None:
        if result is None and not request.is_websocket:
            return  # the app streams its own response (fastws.asgi) and logs it
        if isinstance(result, Response):
            log_access(request, result.status, None, started)
            return
        try:
            validate_upgrade(request)  # what the engine checks next (426 for plain HTTP): log its refusal here
        except HandshakeError as exc:
            log_access(request, exc.status, None, started)
            return
        # written when the connection is gone, with its close code and duration (no future: an
        # idle connection keeps only this closure)
        ws.add_close_callback(lambda: log_access(request, 101, ws.close_code, started))

    def _factory(self) -> Connection:
        return Connection(self.endpoint)

    async def start(self) -> Server:
        """Listen. Returns self.

        An app with a ``fastws_startup(server)`` method (sync or async) has it called first
        (rooms schedule their stored alarms there); ``fastws_shutdown(server)`` runs at shutdown
        once the connections are closed.
        """
        loop = asyncio.get_running_loop()
        self.endpoint.loop = loop
        await _call_hook(self.app, "fastws_startup", self)
        self._warn_open_metrics()
        if self.metrics_port is not None and self._metrics_server is None:
            self._metrics_server = Server(None, self.host, self.metrics_port, accept=self.observability.fastws_accept,
                                          metrics=False, health=False, compression=False)
            await self._metrics_server.start()
        factory: Callable[[], Any] = self._factory
        if self._http_hook is not None:
            self._http = factory = self._http_hook(self)
        elif self.transport == "socket" or (self.transport == "auto" and self.ssl is None):
            self._server = _SocketServer(loop, self.endpoint, self._listen_sockets())
            return self
        create_server = loop.create_server
        fast = _aiofastnet() if self.transport == "aiofastnet" else None
        if self.transport == "aiofastnet" and fast is None:
            raise RuntimeError("transport='aiofastnet' needs the aiofastnet package (pip install fastws[speedups])")
        if fast is not None:
            def create_server(*args: Any, **kw: Any) -> Any:
                return fast.create_server(loop, *args, **kw)
        if self.sock is not None:
            self._server = await create_server(factory, sock=self.sock, ssl=self.ssl, backlog=self.backlog)
        else:
            kw: dict[str, Any] = {}
            if self.reuse_port:
                kw["reuse_port"] = True
            self._server = await create_server(factory, self.host, self.port, ssl=self.ssl,
                                               backlog=self.backlog, **kw)
        return self

    def _warn_open_metrics(self) -> None:
        """Metrics, analytics and the dashboard stay open by default (for a Prometheus next to
        the server); on an address other hosts can reach, with no token, say so once."""
        obs = self.observability
        paths = [p for p in obs.routes if p not in ("/healthz", "/readyz")]
        if not paths or obs.token:
            return
        host = self.host
        if self.sock is not None:
            try:
                host = self.sock.getsockname()[0]
            except OSError:
                return
        if _is_loopback(host):
            return
        where = f"port {self.metrics_port}" if self.metrics_port is not None else "the main port"
        logger.warning("fastws: %s on %s of %s are open to anyone who can reach it (traffic figures and "
                       "room names): set metrics_token (--metrics-token), or serve them on a private "
                       "interface (metrics_port), or turn them off (metrics=False, --no-metrics)",
                       ", ".join(sorted(paths)), where, host or "every interface")

    def _listen_sockets(self) -> list[socket.socket]:
        if self.sock is not None:
            self.sock.setblocking(False)
            return [self.sock]
        infos = socket.getaddrinfo(self.host, self.port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0,
                                   socket.AI_PASSIVE)
        seen = set()
        socks: list[socket.socket] = []
        try:
            for family, type_, proto, _, addr in infos:
                if (family, addr) in seen:
                    continue
                seen.add((family, addr))
                sock = socket.socket(family, type_, proto)
                socks.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if self.reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(addr)
                sock.listen(self.backlog)
                sock.setblocking(False)
        except BaseException:
            for sock in socks:
                sock.close()
            raise
        return socks

    @property
    def sockets(self) -> list[socket.socket]:
        return list(self._server.sockets) if self._server is not None else []

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` actually bound (useful with port 0)."""
        addr = self.sockets[0].getsockname()
        return addr[0], addr[1]

    @property
    def url(self) -> str:
        host, port = self.address
        scheme = "wss" if self.ssl is not None else "ws"
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{port}"

    @property
    def connections(self) -> set[Connection]:
        """The live connections (handshaking ones included)."""
        return set(self.endpoint.connections)

    @property
    def draining(self) -> bool:
        """True once shutdown has begun (``/readyz`` answers 503)."""
        return not self._is_ready()

    @property
    def metrics_address(self) -> tuple[str, int]:
        """``(host, port)`` of the metrics port (``metrics_port=``), else the server's own address."""
        if self._metrics_server is not None:
            return self._metrics_server.address
        return self.address

    async def serve_forever(self) -> None:
        assert self._server is not None, "call start() first"
        await self._server.serve_forever()

    async def shutdown(self, code: int = 1001, reason: str = "server shutting down",
                       timeout: float | None = None) -> None:
        """Graceful shutdown: stop accepting, close every connection with ``code``, wait for the
        handlers (at most ``timeout`` seconds, default ``shutdown_timeout``), then abort the rest."""
        if self._closing or not self._ready:
            return
        self._ready = False
        if self.drain_delay > 0:
            # not ready, still serving: load balancers see /readyz fail and stop sending
            await asyncio.sleep(self.drain_delay)
        self._closing = True
        self.endpoint.draining = True
        timeout = self.shutdown_timeout if timeout is None else timeout
        if self._server is not None:
            self._server.close()
        if self._http is not None:
            self._http.close()  # idle keep-alive connections now, busy ones after their response
        conns = list(self.endpoint.connections)
        for conn in conns:
            conn._going_away(code, reason)
        waits = [asyncio.ensure_future(conn.wait_closed()) for conn in conns]
        tasks = [conn.task for conn in conns if conn.task is not None and not conn.task.done()]
        pending = set(waits) | set(tasks)
        if self._http is not None:
            waits.append(asyncio.ensure_future(self._http.wait_closed()))
            pending.add(waits[-1])
        if pending:
            done, pending = await asyncio.wait(pending, timeout=timeout)
        for conn in list(self.endpoint.connections):
            conn.abort()
        if self._http is not None:
            self._http.abort()
        for t in tasks:
            if not t.done():
                t.cancel()
        for w in waits:
            if not w.done():
                w.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await _call_hook(self.app, "fastws_shutdown", self)
        except Exception:
            logger.exception("fastws: the app's shutdown hook failed")
        self.endpoint.stop()
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            except (asyncio.TimeoutError, Exception):
                pass
        if self._metrics_server is not None:
            await self._metrics_server.shutdown(timeout=1.0)

    async def close(self) -> None:
        """Alias of :meth:`shutdown` with the default settings."""
        await self.shutdown()

    async def __aenter__(self) -> Server:
        if self._server is None:
            await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    def __await__(self) -> Any:
        return self.start().__await__()


async def _call_hook(app: Any, name: str, server: Server) -> None:
    hook = getattr(app, name, None)
    if hook is None or isinstance(app, type):
        return
    result = hook(server)
    if inspect.isawaitable(result):
        await result


class _SocketServer:
    """Listening sockets whose connections run on fastws' own SocketTransport
    (the accept loop is ``loop.add_reader`` on each listening socket)."""

    ACCEPT_BATCH = 128

    def __init__(self, loop: asyncio.AbstractEventLoop, endpoint: Endpoint, sockets: list[socket.socket]) -> None:
        self._loop = loop
        self._endpoint = endpoint
        self.sockets = sockets
        self._closed = False
        self._serving: asyncio.Future[None] | None = None
        for sock in sockets:
            loop.add_reader(sock.fileno(), self._accept, sock)

    def _accept(self, lsock: socket.socket) -> None:
        for _ in range(self.ACCEPT_BATCH):
            try:
                sock, addr = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # out of descriptors or memory: stop accepting for a moment instead of spinning
                    logger.warning("fastws: cannot accept connections (%s); retrying in 1 s", exc)
                    self._loop.remove_reader(lsock.fileno())
                    self._loop.call_later(1.0, self._resume, lsock)
                    return
                if exc.errno == errno.ECONNABORTED:
                    continue
                logger.warning("fastws: accept failed: %s", exc)
                return
            try:
                sock.setblocking(False)
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                attach_socket(self._endpoint, sock, addr)
            except OSError as exc:  # the peer is already gone
                logger.debug("fastws: dropping a connection from %s: %s", addr, exc)
                sock.close()

    def _resume(self, lsock: socket.socket) -> None:
        if not self._closed:
            self._loop.add_reader(lsock.fileno(), self._accept, lsock)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sock in self.sockets:
            try:
                self._loop.remove_reader(sock.fileno())
            except (ValueError, OSError):
                pass
            sock.close()
        if self._serving is not None and not self._serving.done():
            self._serving.set_result(None)

    async def wait_closed(self) -> None:
        return None

    async def serve_forever(self) -> None:
        if self._serving is None:
            self._serving = self._loop.create_future()
        await self._serving


def _aiofastnet() -> Any:
    """The aiofastnet module when installed (faster transports than the loop's own), else None."""
    try:
        import aiofastnet  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return None
    return aiofastnet


def serve(app: Any, host: str | None = "127.0.0.1", port: int = 8000, **kwargs: Any) -> Server:
    """Create a WebSocket server for ``app``; use as ``async with`` or ``await`` it.

    Args:
        app: ``async def handler(ws)``, a :class:`Listener` subclass, or an App.
        host: interface to bind (loopback by default).
        port: TCP port (0 picks a free one; see ``server.address``).
        ssl: an ``ssl.SSLContext`` for wss://.
        subprotocols: supported subprotocols in preference order.
        compression: permessage-deflate: True (default), False, or CompressionOptions.
        max_size: largest incoming message in bytes (1009 beyond). Default 1 MiB.
        max_queue: messages buffered for ``recv()`` before reading pauses.
        write_limit: write buffer high-water mark; ``await send()`` waits above it.
        max_write_buffer: hard cap on bytes buffered for one peer (BufferFull beyond).
        ping_interval: seconds of silence before a keepalive PING (default 30; None: off).
        ping_timeout: seconds to wait for its PONG before closing with 1011.
        idle_timeout: close with 1001 after this many seconds without any frame
            (default 100; None: off). A peer that answers pings never idles out.
        close_timeout: seconds to wait for the closing handshake.
        handshake_timeout: seconds a client has to complete the opening handshake.
        max_header_size: largest request head (431 beyond). Default 16 KiB.
        shutdown_timeout: bound on graceful shutdown.
        backlog, reuse_port, sock: passed to ``loop.create_server``.
        transport: ``"auto"`` (the default: fastws' own socket transport for plain TCP,
            the loop's transports for TLS), ``"socket"``, ``"loop"`` (the event loop's
            transports) or ``"aiofastnet"`` (aiofastnet's, when installed).
        metrics: serve ``/metrics`` (Prometheus) and ``/analytics`` (JSON) from the
            engine's counters (default True); False also turns off the latency and
            duration histograms.
        metrics_path: the Prometheus path (default ``/metrics``).
        metrics_port: serve the metrics, analytics and dashboard on this port
            instead (same host); the main port keeps ``/healthz`` and ``/readyz``.
        metrics_token: a bearer token the metrics, analytics and dashboard need
            (``Authorization: Bearer ...`` or ``?token=...``).
        dashboard: serve the live dashboard at ``/dashboard`` (default False).
        health: serve ``/healthz`` and ``/readyz`` (503 once shutdown begins).
        js_client: serve the JavaScript client at ``/fastws-client.js`` (and its types at
            ``/fastws-client.d.ts``; default True; :mod:`fastws.jsclient`).
        drain_delay: on shutdown, seconds to keep serving with ``/readyz`` at 503
            before closing connections (so load balancers stop sending first).

    An app's ``server_options`` dict (``fastws.App(max_size=...)``) gives
    defaults for these; keyword arguments win.
    """
    return Server(app, host, port, **_with_app_options(app, kwargs))


def _with_app_options(app: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    opts = getattr(app, "server_options", None)
    return {**opts, **kwargs} if isinstance(opts, dict) and opts else kwargs


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop  # type: ignore[no-any-return,unused-ignore]


def run(app: Any, host: str | None = "127.0.0.1", port: int = 8000, *, use_uvloop: bool = True,
        ready: Callable[[Server], None] | None = None, **kwargs: Any) -> None:
    """Serve ``app`` until SIGINT/SIGTERM, then shut down gracefully (blocking).

    Runs on uvloop when it is installed (and ``use_uvloop``), else on asyncio's loop.
    """

    async def main() -> None:
        server = Server(app, host, port, **_with_app_options(app, kwargs))
        await server.start()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - not on the main thread
                pass
        if ready is not None:
            ready(server)
        else:
            logger.info("fastws listening on %s", server.url)
        await stop.wait()
        await server.shutdown()

    factory = _loop_factory() if use_uvloop else None
    if factory is not None:
        with asyncio.Runner(loop_factory=factory) if hasattr(asyncio, "Runner") else _Runner(factory) as runner:
            runner.run(main())
    else:
        asyncio.run(main())


class _Runner:
    """asyncio.Runner for Python 3.10."""

    def __init__(self, factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
        self.loop = factory()

    def __enter__(self) -> _Runner:
        asyncio.set_event_loop(self.loop)
        return self

    def run(self, coro: Awaitable[Any]) -> Any:
        return self.loop.run_until_complete(coro)

    def __exit__(self, *exc: object) -> None:
        try:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            self.loop.close()


def _is_loopback(host: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; False for every interface ("", 0.0.0.0, ::)."""
    if not host:
        return False
    if host == "localhost":
        return True
    import ipaddress

    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
