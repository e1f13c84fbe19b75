"""The one exception hierarchy of fastws.

Every protocol violation is a :class:`ProtocolError` carrying the close code the
connection must be failed with; every refused handshake is a
:class:`HandshakeError` carrying the HTTP status. The protocol layer maps these
to close frames and HTTP responses in one place each.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "FastWSError",
    "ProtocolError",
    "PayloadTooBig",
    "HandshakeError",
    "InvalidHandshake",
    "ConnectionClosed",
    "ConnectionClosedOK",
    "ConnectionClosedError",
    "ReconnectFailed",
    "BufferFull",
]


class FastWSError(Exception):
    """Base class of every exception fastws raises on purpose."""


class ProtocolError(FastWSError):
    """The peer broke RFC 6455 / RFC 7692; the connection fails with ``code``.

    Attributes:
        code: the close code to send (1002 protocol error, 1007 invalid data,
            1009 message too big, ...).
        reason: a short human-readable reason (also sent in the close frame).
    """

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.code} {self.reason}".strip()


class PayloadTooBig(ProtocolError):
    """A message exceeded ``max_size`` (close code 1009)."""

    def __init__(self, reason: str = "message too big") -> None:
        super().__init__(1009, reason)


class HandshakeError(FastWSError):
    """An opening handshake the server refuses.

    Attributes:
        status: HTTP status of the response (400, 426, 431, ...).
        reason: one line, sent as the response body.
        headers: extra response headers.
    """

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
        self.headers = headers or []

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"


class InvalidHandshake(FastWSError):
    """The client's opening handshake failed (bad status, bad accept key, ...).

    Attributes:
        status: the HTTP status the server answered with, or 0 when the
            response never arrived or could not be parsed.
        body: the response body, when there was one.
    """

    def __init__(self, reason: str, status: int = 0, body: bytes = b"",
                 headers: Any = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.body = body
        self.headers = headers


class ConnectionClosed(FastWSError):
    """The connection is closed; raised by ``recv``/``send`` afterwards.

    Attributes:
        code: the close code received from the peer (1005 when the close frame
            had none, 1006 when the TCP connection dropped without one).
        reason: the close reason received.
    """

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"connection closed: {self.code} {self.reason}".strip()


class ConnectionClosedOK(ConnectionClosed):
    """Closed with 1000, 1001 or without a code after a clean closing handshake."""


class ConnectionClosedError(ConnectionClosed):
    """Closed with an error code, or the TCP connection dropped."""


class ReconnectFailed(ConnectionClosedError):
    """A reconnecting client gave up (``max_attempts`` failed attempts in a row, an outage past
    ``reconnect_timeout``, or a refusal that retrying cannot fix); code 1006. Its ``__cause__``
    is the last attempt's error (an ``OSError`` or :class:`fastws.InvalidHandshake`).

    Attributes:
        attempts: connection attempts made in all.
    """

    def __init__(self, reason: str, attempts: int = 0) -> None:
        super().__init__(1006, reason)
        self.attempts = attempts


class BufferFull(FastWSError):
    """Sending would buffer more than ``max_write_buffer`` bytes for a peer that does not read."""
