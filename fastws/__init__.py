"""fastws: a fast WebSocket platform for Python.

A Cython frame engine driven by uvloop, a server and a client with a
high-level ``async for`` API and a zero-copy listener API.
"""

from fastws._frames import CloseCode, Opcode
from fastws._fanout import broadcast
from fastws.auth import JWTAuth
from fastws.client import connect
from fastws.reconnect import HistoryReset, ReconnectingConnection
from fastws.connection import Connection, Listener, Message
from fastws.exceptions import (
    BufferFull,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    FastWSError,
    HandshakeError,
    InvalidHandshake,
    PayloadTooBig,
    ProtocolError,
    ReconnectFailed,
)
from fastws.handshake import CompressionOptions, Headers, Request, Response
from fastws.metrics import Observability, Recorder, RoomInfo, recorder
from fastws.proxy import Proxy
from fastws.server import Accept, Server, run, serve
from fastws.app import App  # noqa: E402  (after server: it builds on Accept)
from fastws.guards import Firewall, Guards, RateLimit, Rule  # noqa: E402
from fastws.rooms import Room, RoomRouter  # noqa: E402  (after server: rooms build on it)
from fastws.cluster import Cluster  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Accept",
    "App",
    "BufferFull",
    "CloseCode",
    "Cluster",
    "CompressionOptions",
    "Connection",
    "ConnectionClosed",
    "ConnectionClosedError",
    "ConnectionClosedOK",
    "FastWSError",
    "Firewall",
    "Guards",
    "HandshakeError",
    "Headers",
    "HistoryReset",
    "InvalidHandshake",
    "JWTAuth",
    "Listener",
    "Message",
    "Opcode",
    "PayloadTooBig",
    "ProtocolError",
    "Proxy",
    "Observability",
    "RateLimit",
    "ReconnectFailed",
    "ReconnectingConnection",
    "Recorder",
    "Request",
    "Response",
    "Room",
    "RoomInfo",
    "RoomRouter",
    "Rule",
    "Server",
    "__version__",
    "broadcast",
    "connect",
    "recorder",
    "run",
    "serve",
]
