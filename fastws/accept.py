"""What an app's accept hook returns for a WebSocket it takes: :class:`Accept`.

It sits below the server, the metrics endpoints, the proxy, the App and the rooms (all of which
build one), so none of them needs to import the server for it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from fastws._protocol import Connection
    from fastws.connection import Listener

__all__ = ["Accept", "Handler"]

Handler = Callable[["Connection"], Awaitable[Any]]


class Accept:
    """How to run an accepted WebSocket connection (what an app's accept hook returns).

    Args:
        handler: ``async def handler(ws)``, run in a task (high-level API).
        listener: a :class:`Listener` instance for this connection (low-level API).
        subprotocol: the subprotocol to answer with, or None.
        subprotocols: the server's supported subprotocols, in preference order
            (the first one the client offered is chosen) when ``subprotocol`` is None.
        headers: extra response headers.
        compression: override the server's permessage-deflate options (False: off).
        user: stored on ``ws.user`` (e.g. verified token claims).
        data: stored on ``ws.data``.
        max_size: override the server's ``max_size`` for this connection.
    """

    __slots__ = ("handler", "listener", "subprotocol", "subprotocols", "headers", "compression", "user", "data",
                 "max_size")

    def __init__(self, handler: Handler | None = None, listener: Listener | None = None, *,
                 subprotocol: str | None = None, subprotocols: Sequence[str] = (),
                 headers: Sequence[tuple[str, str]] = (), compression: Any = None, user: Any = None,
                 data: Any = None, max_size: int = 0) -> None:
        if (handler is None) == (listener is None):
            raise TypeError("Accept needs exactly one of handler= or listener=")
        self.handler = handler
        self.listener = listener
        self.subprotocol = subprotocol
        self.subprotocols = list(subprotocols)
        self.headers = list(headers)
        self.compression = compression
        self.user = user
        self.data = data
        self.max_size = max_size
