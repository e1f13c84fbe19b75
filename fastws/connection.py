"""The connection API handlers see.

:class:`Connection` (the object a handler receives as ``ws``) and
:class:`Message` are implemented in the Cython protocol layer; this module
re-exports them and defines :class:`Listener`, the base of the low-level
callback API.

High level: ``async def handler(ws)`` with ``async for message in ws``,
``await ws.recv()``, ``await ws.send(data)``, ``await ws.ping()``,
``await ws.close(code, reason)``; ``ws.request`` (path, query, headers,
remote address) and ``ws.subprotocol``.

Low level: a :class:`Listener` subclass whose ``on_message(ws, msg)`` is called
synchronously from the read callback with a zero-copy :class:`Message`; no
coroutine, no task, no queue per message. Both APIs run on the same engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastws._message import Message
from fastws._protocol import Connection

__all__ = ["Connection", "Message", "Listener"]


class Listener:
    """Callbacks for one connection (low-level API). Subclass and override what you need.

    A listener class given to :func:`fastws.serve` is instantiated once per
    connection. Callbacks run inside the event loop's read callback: they must
    not block, and they cannot await. ``ws.send()`` may be called without
    awaiting; frames sent while handling one read leave in one write.

    .. warning:: ``on_message`` receives a zero-copy :class:`Message` that is
       valid only during the call. Use ``msg.bytes()`` / ``msg.text()`` to keep
       the payload.
    """

    __slots__ = ()

    def on_connect(self, ws: Connection) -> None:
        """The handshake completed; ``ws.request`` and ``ws.subprotocol`` are set."""

    def on_message(self, ws: Connection, msg: Message) -> None:
        """A whole TEXT or BINARY message arrived."""

    def on_ping(self, ws: Connection, payload: bytes) -> None:
        """A PING arrived (fastws has already answered it)."""

    def on_close(self, ws: Connection, code: int, reason: str) -> None:
        """The closing handshake started or the connection failed (called once)."""

    def on_pause_writing(self, ws: Connection) -> None:
        """The peer does not read: more than ``write_limit`` bytes wait (``on_drain`` follows)."""

    def on_drain(self, ws: Connection) -> None:
        """The peer caught up: the write buffer fell below ``write_limit``."""


if TYPE_CHECKING:  # pragma: no cover
    pass
