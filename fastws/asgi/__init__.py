"""ASGI: serve a FastAPI/Starlette (any ASGI 3) app on fastws, and fastws routes inside one.

- :class:`ASGIApp` wraps an ASGI app for ``fastws.serve`` / ``fastws serve``: ``websocket``
  scopes run on fastws' engine (its frames, limits, guards and metrics), ``http`` scopes on
  ``fastws/asgi/_http.py`` (httptools, keep-alive, streaming), ``lifespan`` as the spec says.
- :func:`mount` gives an ASGI app serving a fastws App, room router or handler under any ASGI
  server (``app.mount("/rooms", fastws.asgi.mount(rooms))`` in FastAPI).
"""

from __future__ import annotations

import inspect
from typing import Any

from fastws.asgi._http import HTTPConnections
from fastws.asgi._lifespan import Lifespan, LifespanFailed
from fastws.asgi._mount import Mount
from fastws.asgi._websocket import ClientDisconnected, WebSocketSession, websocket_scope
from fastws.handshake import Request

__all__ = ["ASGIApp", "ClientDisconnected", "LifespanFailed", "Mount", "is_asgi_app", "mount"]


def is_asgi_app(obj: Any) -> bool:
    """True when ``obj`` looks like an ASGI 3 application: ``async (scope, receive, send)``.

    fastws' own kinds of app (an App, a room router, a Listener, ``async def handler(ws)``)
    are not: they take one argument or have ``fastws_accept``.
    """
    if obj is None or isinstance(obj, type) or getattr(obj, "fastws_accept", None) is not None:
        return False
    target = obj if inspect.isfunction(obj) or inspect.ismethod(obj) else getattr(obj, "__call__", None)
    if target is None:
        return False
    if not (inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(obj)):
        return False
    try:
        params = [p for p in inspect.signature(target).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return False
    return len(params) == 3


class ASGIApp:
    """An ASGI 3 application served by fastws (``fastws.serve(ASGIApp(app))``).

    Args:
        app: the ASGI application (a FastAPI or Starlette app, ...).
        lifespan: ``"auto"`` (run the lifespan protocol; an app that does not speak it is
            served anyway), ``"on"`` (its failure to speak it stops the start) or ``"off"``.
        root_path: the scope's ``root_path`` (the app is mounted under this prefix by a proxy).
        keep_alive_timeout: seconds an idle HTTP keep-alive connection stays open.
    """

    def __init__(self, app: Any, *, lifespan: str = "auto", root_path: str = "",
                 keep_alive_timeout: float = 5.0) -> None:
        if lifespan not in ("auto", "on", "off"):
            raise ValueError("lifespan must be 'auto', 'on' or 'off'")
        if not callable(app):
            raise TypeError(f"{app!r} is not an ASGI application")
        self.app = app
        self.lifespan = lifespan
        self.root_path = root_path
        self.keep_alive_timeout = keep_alive_timeout
        self.state: dict[str, Any] = {}
        self._lifespan: Lifespan | None = None
        self.http: HTTPConnections | None = None

    # ------------------------------------------------------------ the fastws app protocol

    def fastws_http(self, server: Any) -> HTTPConnections:
        """The server's protocol factory for plain HTTP connections (see ``fastws.server``)."""
        self.http = HTTPConnections(self.app, server, state=None if self.lifespan == "off" else self.state,
                                    root_path=self.root_path, keep_alive_timeout=self.keep_alive_timeout)
        return self.http

    def fastws_accept(self, ws: Any, request: Request) -> Any:
        """A WebSocket upgrade: run the app's websocket scope until it accepts or refuses.

        A plain HTTP request answers None: the HTTP protocol streams the app's response itself.
        """
        if not request.is_websocket:
            return None
        state = None if self.lifespan == "off" else self.state
        scope = websocket_scope(request, ws, state, self.root_path)
        session = WebSocketSession(self.app, ws, scope)
        scope["extensions"]["fastws"]["answer"] = session.hand_off
        return session.accept()

    async def fastws_startup(self, server: Any) -> None:
        """Lifespan startup (before the server listens)."""
        if self.lifespan == "off" or self._lifespan is not None:
            return
        self._lifespan = Lifespan(self.app, self.state)
        await self._lifespan.startup()
        if not self._lifespan.supported and self.lifespan == "on":
            raise LifespanFailed("the ASGI app does not support the lifespan protocol (lifespan='on')")

    async def fastws_shutdown(self, server: Any) -> None:
        """Lifespan shutdown (once the connections are closed)."""
        lifespan, self._lifespan = self._lifespan, None
        if lifespan is not None:
            await lifespan.shutdown()

    def __repr__(self) -> str:
        return f"<fastws.asgi.ASGIApp {self.app!r}>"


def mount(target: Any, **options: Any) -> Any:
    """An ASGI app serving ``target`` (a fastws App, room router, Listener or handler), for
    ``app.mount("/rooms", fastws.asgi.mount(rooms))`` in FastAPI or Starlette.

    Under fastws the connections go straight to the engine; under another ASGI server they run
    on an engine connection bridged to the ASGI messages (see ``fastws/asgi/_mount.py``).

    Args:
        target: anything ``fastws.serve`` takes.
        **options: ``max_size``, ``max_queue`` for the bridged connections.
    """
    return Mount(target, **options)
