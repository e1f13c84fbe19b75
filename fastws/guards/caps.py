"""Connection caps: a global and a per-IP maximum, with a bounded wait queue."""

from __future__ import annotations

import asyncio
from collections import deque
from functools import partial
from typing import Any

from fastws.exceptions import HandshakeError
from fastws.metrics import recorder

__all__ = ["ConnectionCaps"]


class ConnectionCaps:
    """At most ``max_connections`` open WebSocket connections, at most
    ``max_connections_per_ip`` from one client IP.

    When full, an upgrade waits for a free slot, first come first served, in a
    queue of ``queue_size``; a full queue gets ``503 Connection pool full``, a
    wait longer than ``queue_timeout`` seconds gets ``503 Connection timeout``.
    A slot is held from acceptance until the TCP connection is closed.

    Args:
        max_connections: the global cap (None: none).
        max_connections_per_ip: the per-IP cap (None: none).
        queue_size: upgrades allowed to wait (0: refuse at once).
        queue_timeout: seconds an upgrade may wait.
    """

    __slots__ = ("max_connections", "max_per_ip", "queue_size", "queue_timeout", "total", "by_ip", "_waiters")

    def __init__(self, max_connections: int | None = None, max_connections_per_ip: int | None = None,
                 queue_size: int = 10, queue_timeout: float = 5.0) -> None:
        for name, v in (("max_connections", max_connections), ("max_connections_per_ip", max_connections_per_ip)):
            if v is not None and v < 1:
                raise ValueError(f"{name} must be at least 1")
        if queue_size < 0 or queue_timeout < 0:
            raise ValueError("queue_size and queue_timeout must be >= 0")
        self.max_connections = max_connections
        self.max_per_ip = max_connections_per_ip
        self.queue_size = queue_size
        self.queue_timeout = queue_timeout
        self.total = 0
        self.by_ip: dict[str, int] = {}
        self._waiters: deque[tuple[str, asyncio.Future[None]]] = deque()

    @property
    def waiting(self) -> int:
        """Upgrades waiting for a slot."""
        return len(self._waiters)

    def _free(self, ip: str) -> bool:
        return ((self.max_connections is None or self.total < self.max_connections)
                and (self.max_per_ip is None or self.by_ip.get(ip, 0) < self.max_per_ip))

    def _count(self, ip: str) -> None:
        self.total += 1
        self.by_ip[ip] = self.by_ip.get(ip, 0) + 1

    def _hold(self, ws: Any, ip: str) -> None:
        """The slot (already counted) is released when the TCP connection closes."""
        ws.add_close_callback(partial(self._release, ip))

    def _release(self, ip: str) -> None:
        self.total -= 1
        n = self.by_ip[ip] - 1
        if n:
            self.by_ip[ip] = n
        else:
            del self.by_ip[ip]
        if self._waiters:
            for entry in list(self._waiters):
                wip, fut = entry
                if fut.done():
                    continue
                if self._free(wip):
                    self._waiters.remove(entry)
                    self._count(wip)  # counted now: nobody can take it before the waiter resumes
                    fut.set_result(None)
                    return

    def acquire(self, ws: Any, ip: str) -> Any:
        """Take a slot for ``ws`` now (returns None) or return an awaitable that takes one.

        Raises:
            HandshakeError: 503 ``Connection pool full`` when the queue is full.
        """
        # _free, _count and _hold inlined: this runs for every accepted upgrade
        by_ip = self.by_ip
        n = by_ip.get(ip, 0)
        if ((self.max_connections is None or self.total < self.max_connections)
                and (self.max_per_ip is None or n < self.max_per_ip)):
            self.total += 1
            by_ip[ip] = n + 1
            ws.add_close_callback(partial(self._release, ip))
            return None
        if len(self._waiters) >= self.queue_size:
            recorder.guard("queue_full", "max_connections")
            raise HandshakeError(503, "Connection pool full", [("Retry-After", "1")])
        return self._wait(ws, ip)

    async def _wait(self, ws: Any, ip: str) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        recorder.guard("queue_wait", "max_connections")
        entry = (ip, fut)
        self._waiters.append(entry)

        def expire() -> None:
            if not fut.done():
                self._waiters.remove(entry)
                recorder.guard("queue_timeout", "max_connections")
                fut.set_exception(HandshakeError(503, "Connection timeout", [("Retry-After", "1")]))

        timer = loop.call_later(self.queue_timeout, expire)
        try:
            await fut
        except asyncio.CancelledError:
            if entry in self._waiters:
                self._waiters.remove(entry)
            elif fut.done() and not fut.cancelled() and fut.exception() is None:
                self._release(ip)  # granted, then cancelled before it could use the slot
            raise
        finally:
            timer.cancel()
        if ws.closed:  # the client left while waiting: pass the slot on
            self._release(ip)
            raise HandshakeError(503, "Connection timeout")
        self._hold(ws, ip)
