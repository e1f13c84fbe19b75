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

from fastws._endpoint import Endpoint
from fastws._protocol import Connection
from fastws.client import open_connection, parse_url
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
            self._addr = infos[0]  # resolved once for the whole run
        return self._addr

    async def open(self, listener: Any) -> Connection:
        """Connect, complete the handshake and return the connection run by ``listener``.

        Raises:
            OSError: the TCP connection failed (refused, reset).
            InvalidHandshake: the server refused the upgrade, or the timeout expired.
        """
        hs = ClientHandshake(self.host_header, self.target, self.subprotocols, self.compression, self.headers,
                             16384, "fastws-bench")
        addresses = None if self._ssl is not None else [await self._resolve()]
        try:
            return await asyncio.wait_for(
                open_connection(self.endpoint, self.host, self.port, hs, listener=listener, ssl=self._ssl,
                                addresses=addresses), self.open_timeout)
        except asyncio.TimeoutError:
            raise InvalidHandshake(f"timed out opening {self.url}") from None

    def stop(self) -> None:
        """Stop the shared endpoint's timers (after every connection is closed)."""
        self.endpoint.stop()
