"""Type stubs for the protocol layer (fastws/_protocol.pyx)."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from fastws._frames import Deflate
from fastws.handshake import Headers, Request

def monotonic() -> float:
    """The clock the timeouts use (seconds)."""

class Message:
    """A received message handed to ``Listener.on_message``: a zero-copy view valid only during the call.

    Supports the buffer protocol; ``bytes()`` / ``text()`` copy the payload out.
    """

    opcode: int
    @property
    def is_text(self) -> bool: ...
    @property
    def is_binary(self) -> bool: ...
    def __len__(self) -> int: ...
    def bytes(self) -> bytes: ...
    def text(self) -> str: ...
    def data(self) -> str | bytes: ...
    def __buffer__(self, flags: int, /) -> memoryview: ...

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
    def __init__(self, is_client: bool = False, *, max_size: int = ..., max_queue: int = ..., write_limit: int = ...,
                 max_write_buffer: int = ..., ping_interval: float = ..., ping_timeout: float = ...,
                 idle_timeout: float = ..., close_timeout: float = ..., handshake_timeout: float = ...,
                 max_header_size: int = ..., compression: Any = None, accept: Any = None,
                 loop: asyncio.AbstractEventLoop | None = None) -> None: ...
    def stop(self) -> None: ...

class Connection(asyncio.BufferedProtocol):
    """One WebSocket connection: the protocol the loop drives and the ``ws`` object handlers receive."""

    endpoint: Endpoint
    transport: asyncio.Transport | None
    request: Request | None
    response_headers: Headers | None
    subprotocol: str | None
    task: asyncio.Task[Any] | None
    close_code: int
    close_reason: str
    latency: float
    user: Any
    data: Any
    def __init__(self, endpoint: Endpoint, *, handler: Any = None, listener: Any = None,
                 client_handshake: Any = None, open_waiter: asyncio.Future[Any] | None = None) -> None: ...
    @property
    def remote_address(self) -> Any: ...
    @property
    def local_address(self) -> Any: ...
    @property
    def open(self) -> bool: ...
    @property
    def closed(self) -> bool: ...
    @property
    def state(self) -> str: ...
    @property
    def is_client(self) -> bool: ...
    @property
    def compression(self) -> Deflate | None: ...
    @property
    def path(self) -> str | None: ...
    @property
    def headers(self) -> Headers | None: ...
    @property
    def buffered_amount(self) -> int: ...
    def send(self, data: str | bytes | bytearray | memoryview | Message, *, binary: bool | None = None) -> Awaitable[None]: ...
    def send_frame(self, opcode: int, data: bytes | str = b"", *, fin: bool = True, rsv1: bool = False) -> Awaitable[None]: ...
    def ping(self, data: bytes | str | None = None) -> asyncio.Future[float]: ...
    def pong(self, data: bytes | str = b"") -> Awaitable[None]: ...
    def close(self, code: int = 1000, reason: str = "") -> Awaitable[None]: ...
    def abort(self) -> None: ...
    def wait_closed(self) -> Awaitable[None]: ...
    def wait_open(self) -> Awaitable[Connection] | None: ...
    def recv(self) -> asyncio.Future[str | bytes]:
        """Await the next message (str for TEXT, bytes for BINARY)."""
    def __aiter__(self) -> Connection: ...
    def __anext__(self) -> asyncio.Future[str | bytes]: ...
