"""Type stubs for the protocol layer (fastws/_protocol.pyx)."""

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from fastws._endpoint import Endpoint
from fastws._frames import Deflate
from fastws._message import Message
from fastws.handshake import Headers, Request

def monotonic() -> float:
    """The clock the timeouts use (seconds)."""

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
    def add_close_callback(self, callback: Callable[[], Any]) -> None:
        """Call ``callback()`` once when the connection is gone (at once if it is already)."""
    def set_message_gate(self, gate: Any, on_over: Callable[[Connection], Any] | None = None) -> None:
        """Check incoming messages against a ``fastws._limits.MessageGate`` before dispatch; over the
        limit, ``on_over(ws)`` returns True (deliver), False (drop) or ``(code, reason)`` (drop, close)."""
    @property
    def message_gate(self) -> Any: ...
    def pause_reading(self) -> None:
        """Stop reading from the peer until resume_reading() (application flow control)."""
    def resume_reading(self) -> None: ...
    @property
    def writing_paused(self) -> bool:
        """True while the peer does not read what we write."""
    def set_auto_response(self, request: str | bytes | None, response: str | bytes | None = None) -> None:
        """Answer a TEXT message equal to ``request`` with ``response`` inside the engine (None: off)."""
    @property
    def auto_response_timestamp(self) -> float | None:
        """``time.time()`` of the last auto response, or None."""
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
    def _going_away(self, code: int = 1001, reason: str = "server shutting down") -> None: ...

def attach_socket(endpoint: Endpoint, sock: socket.socket, peername: Any, conn: Connection | None = None) -> Connection:
    """Run a WebSocket connection (a server one, or the client ``conn``) on fastws' own transport."""
