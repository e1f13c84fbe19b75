"""Client connections driven by a :class:`~fastws.Listener` (the low-level API).

``fastws.connect`` gives the high-level ``recv()`` API; the load generator and
``fastws connect`` need callbacks instead (no task and no future per message,
and PINGs from the server are visible through ``on_ping``). Many connections
share one client :class:`Endpoint`, so they share its corking writer and its
single keepalive sweep, like a server's connections do.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from typing import Any

from fastws._protocol import Connection, Endpoint, attach_socket
from fastws.client import parse_url
from fastws.exceptions import InvalidHandshake
from fastws.handshake import ClientHandshake, CompressionOptions

__all__ = ["ClientFactory"]


class ClientFactory:
    """Opens listener-driven client connections to one URL.

    Args:
        url: ``ws://host:port/path`` or ``wss://...``.
        compression: offer permessage-deflate.
        subprotocols: offered subprotocols.
        headers: extra request headers.
        max_size: largest incoming message.
        open_timeout: bound on TCP connect plus handshake, seconds.
        ping_interval: client keepalive (0: off, the default for load).
        ssl_context: for wss:// (default: the system's default context).
    """

    def __init__(self, url: str, *, compression: bool = False, subprotocols: Sequence[str] = (),
                 headers: Sequence[tuple[str, str]] = (), max_size: int = 64 << 20,
                 open_timeout: float = 10.0, ping_interval: float = 0.0, close_timeout: float = 5.0,
                 ssl_context: Any = None, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.url = url
        self.secure, self.host, self.port, self.target, self.host_header = parse_url(url)
        self.compression = CompressionOptions(client_no_context_takeover=True) if compression else None
        self.subprotocols = list(subprotocols)
        self.headers = list(headers)
        self.open_timeout = open_timeout
        self.loop = loop or asyncio.get_running_loop()
        self.endpoint = Endpoint(True, max_size=max_size, max_queue=32, write_limit=1 << 20,
                                 max_write_buffer=64 << 20, ping_interval=ping_interval,
                                 ping_timeout=ping_interval, close_timeout=close_timeout, handshake_timeout=0.0,
                                 compression=self.compression, loop=self.loop)
        self._ssl: Any = None
        if self.secure:
            import ssl

            self._ssl = ssl_context or ssl.create_default_context()
        self._addr: tuple[Any, ...] | None = None

    def with_target(self, target: str) -> ClientFactory:
        """A factory for another path on the same server sharing this one's endpoint."""
        other = object.__new__(ClientFactory)
        other.__dict__.update(self.__dict__)
        other.target = target
        return other

    async def _resolve(self) -> tuple[Any, ...]:
        if self._addr is None:
            infos = await self.loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
            self._addr = infos[0][4]
        return self._addr

    async def open(self, listener: Any) -> Connection:
        """Connect, complete the handshake and return the connection run by ``listener``.

        Raises:
            OSError: the TCP connection failed (refused, reset).
            InvalidHandshake: the server refused the upgrade, or the timeout expired.
        """
        hs = ClientHandshake(self.host_header, self.target, self.subprotocols, self.compression, self.headers,
                             16384, "fastws-bench")
        opened: asyncio.Future[Connection] = self.loop.create_future()
        transport = None
        kw: dict[str, Any] = {}
        if self._ssl is not None:
            kw = {"ssl": self._ssl, "server_hostname": self.host}
            addr: tuple[Any, ...] = (self.host, self.port)
        else:
            addr = (await self._resolve())[:2]
        endpoint = self.endpoint
        try:
            async def go() -> Connection:
                nonlocal transport
                if self._ssl is None:
                    # plain TCP: fastws' own socket transport (C-level recv/send, no Python call per read)
                    family = socket.AF_INET6 if ":" in str(addr[0]) else socket.AF_INET
                    sock = socket.socket(family, socket.SOCK_STREAM)
                    try:
                        sock.setblocking(False)
                        await self.loop.sock_connect(sock, addr)
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    except BaseException:
                        sock.close()
                        raise
                    conn = Connection(endpoint, listener=listener, client_handshake=hs, open_waiter=opened)
                    attach_socket(endpoint, sock, addr, conn)
                    transport = conn.transport
                    return await opened
                transport, _ = await self.loop.create_connection(
                    lambda: Connection(endpoint, listener=listener, client_handshake=hs, open_waiter=opened),
                    addr[0], addr[1], **kw)
                return await opened

            return await asyncio.wait_for(go(), self.open_timeout)
        except asyncio.TimeoutError:
            if transport is not None:
                transport.abort()
            raise InvalidHandshake(f"timed out opening {self.url}") from None
        except BaseException:
            if transport is not None:
                transport.abort()
            raise

    def stop(self) -> None:
        """Stop the shared endpoint's timers (after every connection is closed)."""
        self.endpoint.stop()
