"""The WebSocket client: ``fastws.connect(url, ...)``.

Same engine and same :class:`~fastws.Connection` API as the server side.
``await connect(url)`` or ``async with connect(url) as ws`` opens one
connection; ``async for ws in connect(url, reconnect=True)`` reconnects with
exponential backoff and jitter whenever the connection drops.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
import ssl as _ssl
from collections.abc import AsyncIterator, Generator, Sequence
from typing import Any
from urllib.parse import urlsplit

from fastws._endpoint import Endpoint
from fastws._protocol import Connection, attach_socket
from fastws.exceptions import ConnectionClosed, InvalidHandshake
from fastws.handshake import ClientHandshake, CompressionOptions
from fastws.server import compression_options

__all__ = ["connect", "parse_url", "open_connection"]

logger = logging.getLogger("fastws.client")


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


class connect:
    """Open a client connection to ``url``.

    Args:
        url: ``ws://host[:port]/path?query`` or ``wss://...``.
        subprotocols: offered subprotocols, in preference order.
        compression: offer permessage-deflate (True by default, offering
            ``client_no_context_takeover``; False to turn off, or a CompressionOptions).
        headers: extra request headers, a dict or ``(name, value)`` pairs.
        origin: an Origin header.
        max_size: largest incoming message (1009 beyond). Default 1 MiB.
        max_queue: messages buffered for ``recv()`` before reading pauses.
        open_timeout: bound on TCP connect plus handshake, seconds.
        ping_interval, ping_timeout: keepalive (None: off).
        close_timeout: bound on the closing handshake.
        ssl: an SSLContext for wss:// (default: the system's default context).
        server_hostname: TLS server name override.
        reconnect: with ``async for``, reconnect after a drop or a failed attempt.
        backoff_initial, backoff_max, backoff_factor: reconnect delays (seconds),
            each multiplied by a random jitter in [0.5, 1.0].
        max_attempts: give up after this many failed attempts in a row (None: never).
        listener: a :class:`fastws.Listener` for the low-level callback API on this client
            connection (``on_connect``, ``on_message`` with a zero-copy Message, ...); ``recv()``
            is then unavailable.
    """

    def __init__(self, url: str, *, subprotocols: Sequence[str] = (), compression: Any = True,
                 headers: Any = None, origin: str | None = None, max_size: int = 1 << 20,
                 max_queue: int = 32, write_limit: int = 65536, max_write_buffer: int = 16 << 20,
                 open_timeout: float = 10.0, ping_interval: float | None = 20.0,
                 ping_timeout: float | None = 20.0, close_timeout: float = 10.0,
                 ssl: _ssl.SSLContext | bool | None = None, server_hostname: str | None = None,
                 user_agent: str | None = "fastws", reconnect: bool = False, backoff_initial: float = 0.5,
                 backoff_max: float = 30.0, backoff_factor: float = 2.0, max_attempts: int | None = None,
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
        self.reconnect = reconnect
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.backoff_factor = backoff_factor
        self.max_attempts = max_attempts
        self.max_header_size = max_header_size
        self._conn: Connection | None = None

    async def _connect(self) -> Connection:
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
        hs = ClientHandshake(self.host_header, self.target, self.subprotocols, self.compression, self.headers,
                             self.max_header_size, self.user_agent)
        try:
            async with _timeout(self.open_timeout):
                conn = await open_connection(endpoint, self.host, self.port, hs, listener=self.listener,
                                             ssl=self.ssl, server_hostname=self.server_hostname)
        except asyncio.TimeoutError:
            raise InvalidHandshake(f"timed out opening {self.url}") from None
        return conn

    def __await__(self) -> Generator[Any, None, Connection]:
        return self._connect().__await__()

    async def __aenter__(self) -> Connection:
        self._conn = await self._connect()
        return self._conn

    async def __aexit__(self, *exc: object) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    def _delay(self, attempt: int) -> float:
        base = min(self.backoff_max, self.backoff_initial * (self.backoff_factor ** attempt))
        return base * random.uniform(0.5, 1.0)

    async def __aiter__(self) -> AsyncIterator[Connection]:
        """Yield a connection; with ``reconnect=True``, a new one after each drop."""
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
