"""The WebSocket client: ``fastws.connect(url, ...)``.

Same engine and same :class:`~fastws.Connection` API as the server side.
``await connect(url)`` or ``async with connect(url) as ws`` opens one
connection; with ``reconnect=True`` they give a
:class:`~fastws.ReconnectingConnection` that reconnects under your
``recv()``/``send()`` (and with ``resume=True`` catches up on a room's history);
``async for ws in connect(url, reconnect=True)`` yields a new connection after
each drop. Both back off exponentially with full jitter.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl as _ssl
from collections.abc import AsyncIterator, Callable, Collection, Generator, Sequence
from typing import Any, Generic, Literal, TypeVar, cast, overload
from urllib.parse import urlsplit

from fastws._endpoint import Endpoint
from fastws._protocol import Connection, attach_socket
from fastws.exceptions import ConnectionClosed, InvalidHandshake
from fastws.handshake import ClientHandshake, CompressionOptions
from fastws.reconnect import RECONNECT_CODES, ReconnectingConnection
from fastws.server import compression_options

__all__ = ["connect", "parse_url", "open_connection"]

logger = logging.getLogger("fastws.client")

_C = TypeVar("_C")  # what awaiting connect() gives: Connection, or ReconnectingConnection with reconnect=True


async def open_connection(endpoint: Endpoint, host: str, port: int, handshake: ClientHandshake, *,
                          listener: Any = None, ssl: _ssl.SSLContext | None = None,
                          server_hostname: str | None = None,
                          addresses: Sequence[tuple[Any, ...]] | None = None) -> Connection:
    """Dial ``host:port`` and run the opening handshake; returns the open client Connection.

    Plain TCP runs on fastws' own socket transport (C-level ``recv``/``send``, no Python call per
    read), like the server's connections; TLS runs on the event loop's transport. Every address
    ``host`` resolves to is tried in turn (``addresses``: ``getaddrinfo`` results to use instead).
    On any failure, or when the caller's timeout cancels it, nothing is left open.

    Raises:
        OSError: no address accepted the TCP connection (the last error, or all of them).
        InvalidHandshake: the server refused the upgrade or broke off the handshake.
    """
    loop = asyncio.get_running_loop()
    opened: asyncio.Future[Connection] = loop.create_future()

    def make() -> Connection:
        return Connection(endpoint, client_handshake=handshake, open_waiter=opened, listener=listener)

    transport: Any = None
    try:
        if ssl is not None:
            transport, _ = await loop.create_connection(make, host, port, ssl=ssl,
                                                        server_hostname=server_hostname or host)
        else:
            sock, peer = await _dial(loop, host, port, addresses)
            conn = make()
            attach_socket(endpoint, sock, peer, conn)
            transport = conn.transport
        return await opened
    except BaseException:
        if transport is not None:
            transport.abort()
        raise


async def _dial(loop: asyncio.AbstractEventLoop, host: str, port: int,
                addresses: Sequence[tuple[Any, ...]] | None) -> tuple[socket.socket, Any]:
    """A connected non-blocking TCP socket (TCP_NODELAY set) and its peer address."""
    infos = addresses if addresses is not None else await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    errors: list[OSError] = []
    for family, _type, proto, _name, addr in infos:
        sock = socket.socket(family, socket.SOCK_STREAM, proto)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, addr)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            sock.close()
            errors.append(exc)
            continue
        except BaseException:
            sock.close()
            raise
        return sock, addr
    if len(errors) == 1:
        raise errors[0]
    raise OSError(f"could not connect to {host}:{port}: " + "; ".join(str(e) for e in errors))


def header_list(headers: Any) -> list[tuple[str, str]]:
    """Extra request headers as given (None, a dict or ``(name, value)`` pairs) as a new list."""
    if headers is None:
        return []
    if isinstance(headers, dict):
        return list(headers.items())
    return list(headers)


def parse_url(url: str) -> tuple[bool, str, int, str, str]:
    """Split a ws:// or wss:// URL into ``(secure, host, port, target, host_header)``.

    Raises:
        ValueError: not a WebSocket URL.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"not a WebSocket URL (ws:// or wss://): {url!r}")
    if not parts.hostname:
        raise ValueError(f"no host in {url!r}")
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    host = parts.hostname
    host_header = f"[{host}]" if ":" in host else host
    if parts.port is not None and parts.port != (443 if secure else 80):
        host_header += f":{parts.port}"
    return secure, host, port, target, host_header


class connect(Generic[_C]):
    """Open a client connection to ``url``.

    ``await connect(url)`` and ``async with connect(url) as ws`` give a
    :class:`~fastws.Connection`; with ``reconnect=True`` they give a
    :class:`~fastws.ReconnectingConnection`, whose ``recv``/``async for``/``send`` outlive drops
    (reconnecting by the rules in :mod:`fastws.reconnect`). ``async for ws in connect(url,
    reconnect=True)`` instead yields a new plain Connection after each drop.

    Args:
        url: ``ws://host[:port]/path?query`` or ``wss://...``.
        subprotocols: offered subprotocols, in preference order.
        compression: offer permessage-deflate (True by default, offering
            ``client_no_context_takeover``; False to turn off, or a CompressionOptions).
        headers: extra request headers, a dict or ``(name, value)`` pairs.
        origin: an Origin header.
        max_size: largest incoming message (1009 beyond). Default 1 MiB.
        max_queue: messages buffered for ``recv()`` before reading pauses.
        open_timeout: bound on TCP connect plus handshake, seconds (each attempt).
        ping_interval, ping_timeout: keepalive (None: off).
        close_timeout: bound on the closing handshake.
        ssl: an SSLContext for wss:// (default: the system's default context).
        server_hostname: TLS server name override.
        reconnect: reconnect after a drop or a failed attempt (see above).
        resume: with ``reconnect=True``, for rooms with ``history``: track the position of the
            message envelopes, reconnect with ``?since=``, and deliver what was missed once each,
            in order (:mod:`fastws.reconnect`). A ``since=`` already in ``url`` is where it starts.
        backoff_initial, backoff_max, backoff_factor: attempt n of an outage waits a random
            ``uniform(0, min(backoff_max, backoff_initial * backoff_factor ** n))`` seconds.
        max_attempts: give up after this many failed attempts in a row (None: never).
        reconnect_timeout: give up when one outage (or the first connection) has lasted this
            many seconds (None: never).
        send_timeout: how long ``send()`` on a ReconnectingConnection waits for a reconnection
            before raising ConnectionClosedError (None: as long as reconnecting goes on).
        reconnect_codes: close codes that reconnect (default :data:`fastws.reconnect.RECONNECT_CODES`:
            1001, 1005, 1006, 1011, 1012, 1013, 1014); any other close code is final.
        on_reconnect: ``on_reconnect(ws)``, sync or async, after each reconnection.
        on_disconnect: ``on_disconnect(ws, exc)``, sync or async, when a connection is lost
            (``exc``: a ConnectionClosed with its code), before any reconnection.
        listener: a :class:`fastws.Listener` for the low-level callback API on this client
            connection (``on_connect``, ``on_message`` with a zero-copy Message, ...); ``recv()``
            is then unavailable.

    Raises:
        ValueError: not a ws:// or wss:// URL, or options that do not go together.
    """

    @overload
    def __init__(self: connect[Connection], url: str, *, subprotocols: Sequence[str] = (), compression: Any = True,
                 headers: Any = None, origin: str | None = None, max_size: int = 1 << 20,
                 max_queue: int = 32, write_limit: int = 65536, max_write_buffer: int = 16 << 20,
                 open_timeout: float = 10.0, ping_interval: float | None = 20.0,
                 ping_timeout: float | None = 20.0, close_timeout: float = 10.0,
                 ssl: _ssl.SSLContext | bool | None = None, server_hostname: str | None = None,
                 user_agent: str | None = "fastws", reconnect: Literal[False] = False, resume: bool = False,
                 backoff_initial: float = 0.5, backoff_max: float = 30.0, backoff_factor: float = 2.0,
                 max_attempts: int | None = None, reconnect_timeout: float | None = None,
                 send_timeout: float | None = 10.0, reconnect_codes: Collection[int] = RECONNECT_CODES,
                 on_reconnect: Callable[..., Any] | None = None, on_disconnect: Callable[..., Any] | None = None,
                 max_header_size: int = 16384, listener: Any = None) -> None: ...
    @overload
    def __init__(self: connect[ReconnectingConnection], url: str, *, subprotocols: Sequence[str] = (), compression: Any = True,
                 headers: Any = None, origin: str | None = None, max_size: int = 1 << 20,
                 max_queue: int = 32, write_limit: int = 65536, max_write_buffer: int = 16 << 20,
                 open_timeout: float = 10.0, ping_interval: float | None = 20.0,
                 ping_timeout: float | None = 20.0, close_timeout: float = 10.0,
                 ssl: _ssl.SSLContext | bool | None = None, server_hostname: str | None = None,
                 user_agent: str | None = "fastws", reconnect: Literal[True], resume: bool = False,
                 backoff_initial: float = 0.5, backoff_max: float = 30.0, backoff_factor: float = 2.0,
                 max_attempts: int | None = None, reconnect_timeout: float | None = None,
                 send_timeout: float | None = 10.0, reconnect_codes: Collection[int] = RECONNECT_CODES,
                 on_reconnect: Callable[..., Any] | None = None, on_disconnect: Callable[..., Any] | None = None,
                 max_header_size: int = 16384, listener: Any = None) -> None: ...
    @overload
    def __init__(self: connect[Connection | ReconnectingConnection], url: str, *, subprotocols: Sequence[str] = (), compression: Any = True,
                 headers: Any = None, origin: str | None = None, max_size: int = 1 << 20,
                 max_queue: int = 32, write_limit: int = 65536, max_write_buffer: int = 16 << 20,
                 open_timeout: float = 10.0, ping_interval: float | None = 20.0,
                 ping_timeout: float | None = 20.0, close_timeout: float = 10.0,
                 ssl: _ssl.SSLContext | bool | None = None, server_hostname: str | None = None,
                 user_agent: str | None = "fastws", reconnect: bool, resume: bool = False,
                 backoff_initial: float = 0.5, backoff_max: float = 30.0, backoff_factor: float = 2.0,
                 max_attempts: int | None = None, reconnect_timeout: float | None = None,
                 send_timeout: float | None = 10.0, reconnect_codes: Collection[int] = RECONNECT_CODES,
                 on_reconnect: Callable[..., Any] | None = None, on_disconnect: Callable[..., Any] | None = None,
                 max_header_size: int = 16384, listener: Any = None) -> None: ...

    def __init__(self, url: str, *, subprotocols: Sequence[str] = (), compression: Any = True,
                 headers: Any = None, origin: str | None = None, max_size: int = 1 << 20,
                 max_queue: int = 32, write_limit: int = 65536, max_write_buffer: int = 16 << 20,
                 open_timeout: float = 10.0, ping_interval: float | None = 20.0,
                 ping_timeout: float | None = 20.0, close_timeout: float = 10.0,
                 ssl: _ssl.SSLContext | bool | None = None, server_hostname: str | None = None,
                 user_agent: str | None = "fastws", reconnect: bool = False, resume: bool = False,
                 backoff_initial: float = 0.5, backoff_max: float = 30.0, backoff_factor: float = 2.0,
                 max_attempts: int | None = None, reconnect_timeout: float | None = None,
                 send_timeout: float | None = 10.0, reconnect_codes: Collection[int] = RECONNECT_CODES,
                 on_reconnect: Callable[..., Any] | None = None, on_disconnect: Callable[..., Any] | None = None,
                 max_header_size: int = 16384, listener: Any = None) -> None:
        self.url = url
        self.listener = listener
        self.secure, self.host, self.port, self.target, self.host_header = parse_url(url)
        self.subprotocols = list(subprotocols)
        if compression is True:
            # Offer client_no_context_takeover: the server may then drop its inflate context
            # between our messages (client messages are usually small, so little ratio is lost).
            compression = CompressionOptions(client_no_context_takeover=True)
        self.compression = compression_options(compression)
        self.headers: list[tuple[str, str]] = header_list(headers)
        if origin is not None:
            self.headers.append(("Origin", origin))
        self.max_size = max_size
        self.max_queue = max_queue
        self.write_limit = write_limit
        self.max_write_buffer = max_write_buffer
        self.open_timeout = open_timeout
        self.ping_interval = ping_interval or 0.0
        self.ping_timeout = ping_timeout or 0.0
        self.close_timeout = close_timeout
        if self.secure and ssl is False:
            raise ValueError("ssl=False given for a wss:// URL")
        if self.secure and (ssl is None or ssl is True):
            ssl = _ssl.create_default_context()
        elif not self.secure and ssl:
            raise ValueError("ssl= given for a ws:// URL")
        self.ssl: _ssl.SSLContext | None = ssl if isinstance(ssl, _ssl.SSLContext) else None
        self.server_hostname = server_hostname
        self.user_agent = user_agent
        if resume and not reconnect:
            raise ValueError("resume=True needs reconnect=True")
        if not backoff_initial > 0 or not backoff_factor >= 1 or not backoff_max >= backoff_initial:
            raise ValueError("backoff: need backoff_initial > 0, backoff_factor >= 1, backoff_max >= backoff_initial")
        if max_attempts is not None and max_attempts < 1:
            raise ValueError("max_attempts must be >= 1 (or None: no limit)")
        if reconnect_timeout is not None and not reconnect_timeout > 0:
            raise ValueError("reconnect_timeout must be > 0 seconds (or None: no limit)")
        if send_timeout is not None and send_timeout < 0:
            raise ValueError("send_timeout must be >= 0 seconds (or None: no limit)")
        self.reconnect = reconnect
        self.resume = resume
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.backoff_factor = backoff_factor
        self.max_attempts = max_attempts
        self.reconnect_timeout = reconnect_timeout
        self.send_timeout = send_timeout
        self.reconnect_codes = frozenset(reconnect_codes)
        self.on_reconnect = on_reconnect
        self.on_disconnect = on_disconnect
        self.max_header_size = max_header_size
        self._conn: Any = None

    async def _open(self, target: str) -> Connection:
        """One attempt: TCP connect and handshake for ``target`` (path and query)."""
        loop = asyncio.get_running_loop()
        endpoint = Endpoint(
            True,
            max_size=self.max_size,
            max_queue=self.max_queue,
            write_limit=self.write_limit,
            max_write_buffer=self.max_write_buffer,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_timeout,
            close_timeout=self.close_timeout,
            handshake_timeout=0.0,
            max_header_size=self.max_header_size,
            compression=self.compression,
            loop=loop,
        )
        hs = ClientHandshake(self.host_header, target, self.subprotocols, self.compression, self.headers,
                             self.max_header_size, self.user_agent)
        try:
            async with _timeout(self.open_timeout):
                conn = await open_connection(endpoint, self.host, self.port, hs, listener=self.listener,
                                             ssl=self.ssl, server_hostname=self.server_hostname)
        except asyncio.TimeoutError:
            raise InvalidHandshake(f"timed out opening {self.url}") from None
        return conn

    async def _connect(self) -> Connection:
        return await self._open(self.target)

    def _reconnecting(self) -> ReconnectingConnection:
        if self.listener is not None:
            raise ValueError("listener= with reconnect=True: use `async for ws in connect(...)`, "
                             "which gives each new connection to the listener")
        return ReconnectingConnection(self, resume=self.resume, reconnect_timeout=self.reconnect_timeout,
                                      send_timeout=self.send_timeout, reconnect_codes=self.reconnect_codes,
                                      on_reconnect=self.on_reconnect, on_disconnect=self.on_disconnect)

    async def _open_any(self) -> _C:
        if self.reconnect:
            return cast(_C, await self._reconnecting()._start())
        return cast(_C, await self._connect())

    def __await__(self) -> Generator[Any, None, _C]:
        return self._open_any().__await__()

    async def __aenter__(self) -> _C:
        self._conn = await self._open_any()
        return cast(_C, self._conn)

    async def __aexit__(self, *exc: object) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    def _delay(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(backoff_max, backoff_initial * backoff_factor ** attempt)]."""
        try:
            base = min(self.backoff_max, self.backoff_initial * (self.backoff_factor ** attempt))
        except OverflowError:
            base = self.backoff_max
        return random.uniform(0.0, base)

    async def __aiter__(self) -> AsyncIterator[Connection]:
        """Yield a connection; with ``reconnect=True``, a new one after each drop."""
        if self.resume:
            raise ValueError("resume=True works with `await connect(...)` / `async with connect(...)`, "
                             "not `async for ws in connect(...)` (it yields plain connections)")
        failures = 0
        while True:
            try:
                conn = await self._connect()
            except (OSError, InvalidHandshake, asyncio.TimeoutError) as exc:
                if not self.reconnect:
                    raise
                status = getattr(exc, "status", 0)
                if status and 400 <= status < 500 and status not in (408, 429):
                    raise  # the server refuses us on purpose: retrying will not help
                failures += 1
                if self.max_attempts is not None and failures >= self.max_attempts:
                    raise
                delay = self._delay(failures - 1)
                logger.info("fastws: connecting to %s failed (%s); retrying in %.2fs", self.url, exc, delay)
                await asyncio.sleep(delay)
                continue
            failures = 0
            try:
                yield conn
            except ConnectionClosed:
                pass
            finally:
                if not conn.closed:
                    await conn.close()
            if not self.reconnect:
                return
            await asyncio.sleep(self._delay(0))


class _timeout:
    """asyncio.timeout for Python 3.10."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[Any] | None = None
        self._expired = False

    async def __aenter__(self) -> _timeout:
        self._task = asyncio.current_task()
        if self.delay and self.delay > 0:
            self._handle = asyncio.get_running_loop().call_later(self.delay, self._expire)
        return self

    def _expire(self) -> None:
        self._expired = True
        if self._task is not None:
            self._task.cancel()

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if self._handle is not None:
            self._handle.cancel()
        if self._expired and exc_type is asyncio.CancelledError:
            if hasattr(self._task, "uncancel"):
                self._task.uncancel()  # type: ignore[union-attr]
            raise asyncio.TimeoutError()
        return False
