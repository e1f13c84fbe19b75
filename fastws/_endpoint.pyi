"""Type stubs for the endpoint (fastws/_endpoint.pyx)."""

import asyncio
from collections.abc import Callable
from typing import Any

from fastws._protocol import Connection
from fastws.handshake import Request

from fastws._transport import ReadSink

class ConnectionBase(ReadSink):
    """What an Endpoint needs of its connections (a C-level base of Connection)."""
    endpoint: Endpoint

class Endpoint:
    """Settings and shared state of the connections of one server (or of one client connection)."""

    is_client: bool
    max_size: int
    max_queue: int
    write_limit: int
    max_write_buffer: int
    ping_interval: float
    ping_timeout: float
    idle_timeout: float
    close_timeout: float
    handshake_timeout: float
    max_header_size: int
    compression: Any
    accept: Callable[[Connection, Request], Any] | None
    loop: asyncio.AbstractEventLoop | None
    connections: set[Connection]
    draining: bool
    stats_enabled: bool
    """Keep the latency and duration histograms (the counters are always kept)."""
    def __init__(self, is_client: bool = False, *, max_size: int = ..., max_queue: int = ..., write_limit: int = ...,
                 max_write_buffer: int = ..., ping_interval: float = ..., ping_timeout: float = ...,
                 idle_timeout: float = ..., close_timeout: float = ..., handshake_timeout: float = ...,
                 max_header_size: int = ..., compression: Any = None, accept: Any = None,
                 loop: asyncio.AbstractEventLoop | None = None) -> None: ...
    def stop(self) -> None: ...
    def count_http_request(self) -> None:
        """Count one plain HTTP request answered outside the engine (an ASGI app's http scope)."""
    def stats(self) -> dict[str, Any]:
        """A snapshot of the endpoint's C-level counters and histograms: attempted, established,
        failed, closed, active, http_requests, messages/bytes received and sent, errors,
        auto_responses, broadcasts, broadcast_skipped, close_codes, refused (by status),
        latency and duration (cumulative buckets, sum, count; seconds)."""
