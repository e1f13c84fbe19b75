"""Worker-style apps: ``fastws.App`` routes requests by path to WebSocket handlers,
plain HTTP handlers, worker-style upgrade handlers and mounted targets, behind
the edge guards of :mod:`fastws.guards`.

What happens to a request (every HTTP request reaches :meth:`App.fastws_accept`):

1. the client IP is found (``X-Forwarded-For`` only from a trusted proxy);
2. the firewall rules run (403), then the per-IP connection rate (429);
3. the path is routed (404; 405 for a method no route takes);
4. for an upgrade: the Origin allow-list (403), ``auth`` (401), the endpoint
   (a handler, a worker-style ``upgrade`` handler or a mounted target), then a
   connection slot (waiting in a bounded queue; 503 when full or late);
5. for plain HTTP: ``auth``, then the route's handler; its result becomes a
   :class:`~fastws.Response` (dict/list: JSON, str: text, bytes: octet-stream).

Every step that needs no I/O runs synchronously, so an upgrade that passes the
guards costs no coroutine; an async ``auth`` or handler, or a wait for a slot,
turns the rest of the pipeline into one coroutine (the engine stops reading the
connection until it resolves).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson

from fastws.connection import Listener
from fastws.exceptions import HandshakeError
from fastws.guards import Guards
from fastws.handshake import Request, Response, _HeadResponse
from fastws.routing import Router
from fastws.server import Accept, _call_hook

__all__ = ["App", "to_response"]

logger = logging.getLogger("fastws")

_WS_OPTIONS = ("subprotocols", "compression", "max_size", "headers")
_REFUSED_HEADERS = [("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")]


def to_response(result: Any) -> Response:
    """Turn what an HTTP handler returned into a :class:`Response`.

    ``Response`` as is; ``dict``/``list`` as JSON (orjson); ``str`` as text;
    bytes-like as ``application/octet-stream``; ``None`` as ``204 No Content``.

    Raises:
        TypeError: any other type.
    """
    if isinstance(result, Response):
        return result
    if isinstance(result, (dict, list)):
        return Response(200, orjson.dumps(result), content_type="application/json")
    if isinstance(result, str):
        return Response(200, result)
    if isinstance(result, (bytes, bytearray, memoryview)):
        return Response(200, bytes(result), content_type="application/octet-stream")
    if result is None:
        return Response(204)
    raise TypeError(f"an HTTP handler returned {type(result).__name__}; expected Response, dict, list, str or bytes")


def _awaitable(value: Any) -> bool:
    # cheaper than inspect.isawaitable on the common results (None, Accept, Response)
    return value is not None and hasattr(type(value), "__await__")


def _then(value: Any, fn: Callable[[Any], Any]) -> Any:
    """``fn(value)`` now, or a coroutine doing it once ``value`` (an awaitable) resolves."""
    if _awaitable(value):
        return _chain(value, fn)
    return fn(value)


async def _chain(value: Awaitable[Any], fn: Callable[[Any], Any]) -> Any:
    result = fn(await value)
    while _awaitable(result):
        result = await result
    return result


class _Endpoint:
    """What one route pattern serves: at most one WebSocket endpoint, HTTP handlers by method."""

    __slots__ = ("path", "kind", "target", "options", "accept_kw", "http", "http_options", "guards", "_gen")

    def __init__(self, path: str) -> None:
        self.path = path
        self.kind = ""                       # "websocket" | "upgrade" | "mount" | "" (HTTP only)
        self.target: Any = None
        self.options: dict[str, Any] = {}
        self.accept_kw: dict[str, Any] = {}  # the Accept keywords among the options
        self.http: dict[str, Callable[..., Any]] = {}
        self.http_options: dict[str, dict[str, Any]] = {}
        self.guards: dict[str, Any] = {}     # per-route guard overrides
        self._gen = -1


class App:
    """A router of WebSocket and HTTP endpoints behind the edge guards.

    Args:
        auth: app-wide authenticator: an object with ``authenticate(request)``
            (sync or async) returning the verified claims or raising
            ``HandshakeError(401, ...)``; optionally ``on_open(ws)``, called when
            a connection opens, before its handler. A route's ``auth=`` wins;
            ``auth=None`` on a route keeps the app's, ``auth=False`` turns it off.
        guards: a :class:`~fastws.guards.Guards`, or None for one built from
            the guard keywords below.
        **options: guard settings (``origins``, ``firewall``, ``trusted_proxies``,
            ``connection_rate``, ``message_rate``, ``user_message_rate``,
            ``max_connections``, ``max_connections_per_ip``, ``queue_size``,
            ``queue_timeout``, ``max_buckets``; see :class:`~fastws.guards.Guards`)
            and server options (anything else: ``max_size``, ``ping_interval``,
            ...), kept in ``server_options`` for ``fastws serve`` and
            ``fastws.serve(app, ...)``.

    Example::

        app = fastws.App(origins=["https://example.com"], connection_rate="10/60s")

        @app.websocket("/rooms/{name}")
        async def room(ws):
            async for message in ws:
                await ws.send(f"{ws.data['name']}: {message}")

        @app.route("/health")
        async def health(request):
            return {"ok": True}
    """

    def __init__(self, *, auth: Any = None, guards: Guards | None = None, **options: Any) -> None:
        guard_opts = {k: options.pop(k) for k in list(options) if k in Guards.OPTIONS}
        if guards is not None and guard_opts:
            raise TypeError("give either guards= or guard keywords, not both")
        unknown = set(options) - _server_options()
        if unknown:
            raise TypeError(f"unknown App option(s): {', '.join(sorted(unknown))} (not a guard or server option)")
        self.guards = guards if guards is not None else Guards(**guard_opts)
        self.auth = auth
        self.server_options: dict[str, Any] = options
        self._router = Router()
        self._gen = 0
        self._mounted: list[Any] = []  # mount targets, for their startup/shutdown hooks

    # ------------------------------------------------------------ registration

    def _entry(self, path: str) -> _Endpoint:
        return self._router.entry(path, lambda: _Endpoint(path))  # type: ignore[no-any-return]

    def _set_ws(self, path: str, kind: str, target: Any, opts: dict[str, Any]) -> None:
        entry = self._entry(path)
        if entry.kind:
            raise ValueError(f"{path!r} already has a WebSocket endpoint ({entry.kind})")
        guard_opts = {k: opts.pop(k) for k in list(opts) if k in Guards.OPTIONS}
        unknown = set(opts) - set(_WS_OPTIONS) - {"auth"}
        if unknown:
            raise TypeError(f"unknown route option(s) for {path!r}: {', '.join(sorted(unknown))}")
        Guards.check_overrides(guard_opts)
        entry.kind = kind
        entry.target = target
        entry.options = opts
        entry.accept_kw = {k: opts[k] for k in _WS_OPTIONS if k in opts}
        entry.guards = guard_opts
        self._gen += 1

    def websocket(self, path: str, **route_opts: Any) -> Callable[[Any], Any]:
        """Decorator: serve WebSocket connections on ``path`` with ``async def handler(ws)``
        (or a :class:`Listener` subclass, one instance per connection).

        Path parameters are in ``ws.data`` (a dict) and ``ws.request.scope["params"]``.

        Args:
            path: the route pattern, e.g. ``"/rooms/{name}"``.
            **route_opts: ``subprotocols``, ``compression``, ``max_size``, ``headers``
                (extra 101 response headers), ``auth``, and guard overrides
                (any :class:`~fastws.guards.Guards` setting).
        """
        def register(handler: Any) -> Any:
            if not (isinstance(handler, type) and issubclass(handler, Listener)):
                if not inspect.iscoroutinefunction(handler):
                    raise TypeError(f"@app.websocket needs an async def handler(ws) or a Listener class, "
                                    f"not {handler!r}")
            self._set_ws(path, "websocket", handler, dict(route_opts))
            return handler
        return register

    def upgrade(self, path: str, **route_opts: Any) -> Callable[[Any], Any]:
        """Decorator: a worker-style handler ``async def h(request)`` decides each upgrade on ``path``.

        It returns a :class:`~fastws.Response` to refuse (401, 403, 429, ...) or a
        :class:`~fastws.Accept` to accept (with a subprotocol, extra headers,
        per-connection ``data``); it may also raise ``HandshakeError``. The
        request's path parameters are in ``request.scope["params"]``, the
        verified claims (when ``auth`` is set) in ``request.scope["user"]``.
        """
        def register(handler: Any) -> Any:
            if not callable(handler):
                raise TypeError(f"@app.upgrade needs a callable, not {handler!r}")
            self._set_ws(path, "upgrade", handler, dict(route_opts))
            return handler
        return register

    def mount(self, path: str, target: Any, **route_opts: Any) -> None:
        """Delegate ``path`` and everything under it to ``target.fastws_accept(ws, request)``
        (a proxy, a room router, another App), after this app's guards.

        The part of the path under the mount point is ``request.scope["params"]["path"]``.
        """
        if getattr(target, "fastws_accept", None) is None:
            raise TypeError(f"mount target {target!r} has no fastws_accept(ws, request)")
        base = path.rstrip("/")
        self._set_ws(base or "/", "mount", target, dict(route_opts))
        top = self._entry(base or "/")
        sub = self._entry(base + "/{path:path}")
        if sub.kind:
            raise ValueError(f"{base + '/'!r} already has a WebSocket endpoint ({sub.kind})")
        sub.kind, sub.target, sub.options, sub.guards = "mount", target, top.options, top.guards
        self._gen += 1
        if not any(t is target for t in self._mounted):
            self._mounted.append(target)

    async def fastws_startup(self, server: Any) -> None:
        """Run the mounted targets' ``fastws_startup(server)`` hooks (a room router schedules
        its stored alarms there); the server calls this before it listens."""
        for target in self._mounted:
            await _call_hook(target, "fastws_startup", server)

    async def fastws_shutdown(self, server: Any) -> None:
        """Run the mounted targets' ``fastws_shutdown(server)`` hooks (rooms commit and close
        their databases), after the connections are closed."""
        for target in self._mounted:
            try:
                await _call_hook(target, "fastws_shutdown", server)
            except Exception:
                logger.exception("fastws: the shutdown hook of %r failed", target)

    def route(self, path: str, methods: Iterable[str] = ("GET",), **route_opts: Any) -> Callable[[Any], Any]:
        """Decorator: a plain HTTP handler ``async def h(request)`` (or a sync one) for ``path``.

        It returns a :class:`~fastws.Response`, a dict or list (JSON), a str
        (text) or bytes; ``HEAD`` is answered by the ``GET`` handler without the
        body. ``request.body`` holds the request's body (read whole, up to 1 MiB;
        413 beyond).

        Args:
            path: the route pattern.
            methods: the HTTP methods served.
            **route_opts: ``auth``.
        """
        names = [m.upper() for m in methods]

        def register(handler: Any) -> Any:
            if not callable(handler):
                raise TypeError(f"@app.route needs a callable, not {handler!r}")
            entry = self._entry(path)
            opts = dict(route_opts)
            unknown = set(opts) - {"auth"}
            if unknown:
                raise TypeError(f"unknown route option(s) for {path!r}: {', '.join(sorted(unknown))}")
            for m in names:
                if m in entry.http:
                    raise ValueError(f"{m} {path!r} is already routed")
                entry.http[m] = handler
                entry.http_options[m] = opts
            return handler
        return register

    # ------------------------------------------------------------ configuration

    def configure(self, **guard_opts: Any) -> None:
        """Change app-wide guard settings (``fastws serve --config`` and its flags use this).

        Per-route overrides given in code still win.
        """
        self.guards = self.guards.override(**guard_opts)
        self._gen += 1

    @classmethod
    def wrap(cls, target: Any, **options: Any) -> App:
        """An App serving ``target`` (anything ``fastws.serve`` takes) on every path, behind guards."""
        from fastws.server import resolve_app

        app = cls(**options)
        hook = resolve_app(target)

        class _Hook:
            fastws_accept = staticmethod(hook)

        wrapped = _Hook()
        for name in ("fastws_startup", "fastws_shutdown"):  # an ASGI app's lifespan, ...
            fn = None if isinstance(target, type) else getattr(target, name, None)
            if fn is not None:
                setattr(wrapped, name, fn)
        http = None if isinstance(target, type) else getattr(target, "fastws_http", None)
        if http is not None:
            app.fastws_http = http  # type: ignore[attr-defined]  # the target answers plain HTTP itself
        app.mount("/", wrapped)
        opts = getattr(target, "server_options", None)
        if opts:
            for k, v in opts.items():
                app.server_options.setdefault(k, v)
        return app

    def _guards_for(self, entry: _Endpoint) -> Guards:
        if entry._gen != self._gen:
            entry._gen = self._gen
            entry_guards = self.guards.override(**entry.guards) if entry.guards else self.guards
            entry.options["_guards"] = entry_guards
        return entry.options["_guards"]  # type: ignore[no-any-return]

    # ------------------------------------------------------------ requests

    def fastws_accept(self, ws: Any, request: Request) -> Any:
        """The engine's accept hook: route, guard and answer one request.

        Returns an :class:`~fastws.Accept`, a :class:`~fastws.Response`, or an
        awaitable of one of them.

        Raises:
            HandshakeError: the request is refused (403, 404, 405, 429, ...).
        """
        scope = request.scope
        matched = self._router.match(request.path)
        entry: _Endpoint | None = matched[0] if matched is not None else None
        guards = self._guards_for(entry) if entry is not None and entry.kind else self.guards
        ip = guards._check_request(request)      # client IP, firewall, connection rate
        scope["client_ip"] = ip
        if entry is None:
            raise HandshakeError(404, "Not Found")
        assert matched is not None
        scope["params"] = matched[1]
        upgrade = request.is_websocket
        if entry.kind == "mount" or (upgrade and entry.kind):
            if not upgrade:
                # a mounted target answers its own plain HTTP (a proxy says 400, ...)
                return self._delegate(ws, request, entry, None, guards, http=True)
            if guards.origin is not None:
                guards._check_upgrade(request)   # Origin allow-list
            auth = self._auth(entry.options)
            claims: Any = auth.authenticate(request) if auth is not None else None
            if _awaitable(claims):
                return _chain(claims, lambda c: self._websocket(ws, request, entry, c, guards, auth))
            return self._websocket(ws, request, entry, claims, guards, auth)
        method = request.method
        handler = entry.http.get(method)
        if handler is None and method == "HEAD":
            handler = entry.http.get("GET")
            method = "GET"
        if handler is None:
            if entry.kind and method == "GET":
                raise HandshakeError(426, "Expected WebSocket", _REFUSED_HEADERS)
            allowed = sorted(set(entry.http) | ({"GET"} if entry.kind else set()))
            if "GET" in allowed and "HEAD" not in allowed:
                allowed.append("HEAD")
            raise HandshakeError(405, "Method Not Allowed", [("Allow", ", ".join(allowed))])
        auth = self._auth(entry.http_options[method])
        claims = auth.authenticate(request) if auth is not None else None
        head = request.method == "HEAD"
        return _then(claims, lambda c: self._http(request, handler, c, head))

    def _auth(self, opts: dict[str, Any]) -> Any:
        auth = opts.get("auth")
        if auth is False:
            return None
        return auth if auth is not None else self.auth

    def _http(self, request: Request, handler: Callable[..., Any], claims: Any, head: bool) -> Any:
        if claims is not None:
            request.scope["user"] = claims

        def finish(result: Any) -> Response:
            resp = to_response(result)
            if head:
                return _HeadResponse(resp.status, resp.body, resp.headers, resp.content_type)
            return resp
        return _then(handler(request), finish)

    def _websocket(self, ws: Any, request: Request, entry: _Endpoint, claims: Any, guards: Guards,
                   auth: Any) -> Any:
        if claims is not None:
            request.scope["user"] = claims
        if entry.kind == "websocket":
            target = entry.target
            params = dict(request.scope["params"])  # type: ignore[call-overload]
            kw = entry.accept_kw
            if isinstance(target, type):
                spec = Accept(listener=target(), user=claims, data=params, **kw)
            else:
                spec = Accept(handler=target, user=claims, data=params, **kw)
            return self._finish(ws, request, spec, guards, auth)
        if entry.kind == "upgrade":
            result = entry.target(request)
        else:
            return self._delegate(ws, request, entry, claims, guards, auth=auth)
        return _then(result, lambda spec: self._finish(ws, request, spec, guards, auth))

    def _delegate(self, ws: Any, request: Request, entry: _Endpoint, claims: Any, guards: Guards, *,
                  auth: Any = None, http: bool = False) -> Any:
        if entry.target is not None and "path" not in request.scope["params"]:  # type: ignore[operator]
            request.scope["params"]["path"] = ""  # type: ignore[index]
        result = entry.target.fastws_accept(ws, request)
        if http:
            return result
        return _then(result, lambda spec: self._finish(ws, request, spec, guards, auth))

    def _finish(self, ws: Any, request: Request, spec: Any, guards: Guards, auth: Any) -> Any:
        """Apply the connection-level guards to an accepted upgrade."""
        if not isinstance(spec, Accept):
            if isinstance(spec, Response):
                return spec
            raise TypeError(f"an upgrade handler returned {type(spec).__name__}; expected Accept or Response")
        claims = request.scope.get("user")
        if spec.user is None and claims is not None:
            spec.user = claims
        if spec.data is None and request.scope.get("params"):
            spec.data = dict(request.scope["params"])  # type: ignore[call-overload]
        on_open = getattr(auth, "on_open", None) if auth is not None else None
        # message limits on the connection, on_open around the handler, a connection slot
        waiting = guards._admit(ws, spec, str(request.scope.get("client_ip", "")), on_open)
        if waiting is None:
            return spec
        return _chain(waiting, lambda _: spec)


def _server_options() -> set[str]:
    from fastws.server import Server

    params = inspect.signature(Server.__init__).parameters
    return {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY} - {"accept"}

