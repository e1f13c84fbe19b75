"""fastws.App over real loopback sockets: routes, statuses, worker-style upgrades, mounts, auth hooks."""

from __future__ import annotations

import asyncio

import pytest
import websockets

import fastws
from fastws.server import resolve_app
from tests.conftest import EchoListener
from tests.helpers import raw_connect, read_http_response, upgrade_request

TIMEOUT = 5.0


async def http(server, method: str, path: str, headers: str = "") -> tuple[int, dict[str, str], bytes]:
    reader, writer = await raw_connect(server, f"{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
    try:
        return await read_http_response(reader, TIMEOUT)
    finally:
        writer.close()


def make_app(**options) -> fastws.App:
    app = fastws.App(**options)

    @app.websocket("/rooms/{name}")
    async def room(ws):
        async for message in ws:
            await ws.send(f"{ws.data['name']}|{ws.request.scope['params']['name']}|{message}")

    @app.route("/health")
    async def health(request):
        return {"ok": True, "ip": request.scope["client_ip"]}

    @app.route("/text/{word}", methods=["GET", "DELETE"])
    def text(request):
        return fastws.Response(202, f"gone {request.scope['params']['word']}", headers=[("X-Word", "yes")])

    @app.upgrade("/worker/{mode}")
    async def worker(request):
        mode = request.scope["params"]["mode"]
        if mode == "refuse":
            return fastws.Response(403, "no entry")
        if mode == "raise":
            raise fastws.HandshakeError(429, "slow down", [("Retry-After", "3")])

        async def handler(ws):
            async for message in ws:
                await ws.send(f"{ws.data['tag']}:{ws.subprotocol}:{message}")
        return fastws.Accept(handler=handler, subprotocols=["chat.v2", "chat.v1"], headers=[("X-Tag", "t1")],
                             data={"tag": mode})

    app.mount("/echo", resolve_app(EchoListener) and _Target(EchoListener))
    return app


class _Target:
    """A mount target: anything with fastws_accept."""

    def __init__(self, app):
        self.fastws_accept = resolve_app(app)
        self.seen: list[str] = []


async def test_websocket_route_with_params(serve):
    server = await serve(make_app())
    async with fastws.connect(server.url + "/rooms/lobby") as ws:
        await ws.send("hi")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "lobby|lobby|hi"


async def test_http_routes(serve):
    server = await serve(make_app())
    status, headers, body = await http(server, "GET", "/health")
    assert status == 200 and headers["content-type"] == "application/json"
    assert body == b'{"ok":true,"ip":"127.0.0.1"}'
    status, headers, body = await http(server, "DELETE", "/text/abc")
    assert (status, body, headers["x-word"]) == (202, b"gone abc", "yes")
    reader, writer = await raw_connect(server, b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n")
    raw = await asyncio.wait_for(reader.read(), TIMEOUT)  # the server closes after the head
    writer.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 28" in head  # the GET body's length
    assert rest == b""


@pytest.mark.parametrize("method,path,status,body", [
    ("GET", "/missing", 404, b"Not Found"),
    ("POST", "/health", 405, b"Method Not Allowed"),
    ("PUT", "/text/x", 405, b"Method Not Allowed"),
    ("GET", "/rooms/lobby", 426, b"Expected WebSocket"),
])
async def test_refusals_on_the_wire(serve, method, path, status, body):
    server = await serve(make_app())
    got, headers, got_body = await http(server, method, path)
    assert (got, got_body) == (status, body)
    if status == 405:
        assert "GET" in headers["allow"]
    if status == 426:
        assert headers["upgrade"] == "websocket"


async def test_post_with_body_is_413_not_ignored(serve):
    app = fastws.App()
    app.route("/p", methods=["POST"])(lambda request: "nope")
    server = await serve(app)
    status, _, body = await http(server, "POST", "/p", "Content-Length: 4\r\n\r\nabcd")
    assert (status, body) == (413, b"Request body not supported")


async def test_worker_style_accept_with_subprotocol_headers_and_data(serve):
    server = await serve(make_app())
    async with websockets.connect(server.url + "/worker/w1", subprotocols=["chat.v1", "chat.v2"],
                                  compression=None) as ws:
        assert ws.subprotocol == "chat.v2"
        assert ws.response.headers["X-Tag"] == "t1"
        await ws.send("m")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "w1:chat.v2:m"


@pytest.mark.parametrize("mode,status,body", [("refuse", 403, b"no entry"), ("raise", 429, b"slow down")])
async def test_worker_style_refusal(serve, mode, status, body):
    server = await serve(make_app())
    reader, writer = await raw_connect(server, upgrade_request(f"/worker/{mode}"))
    got, headers, got_body = await read_http_response(reader, TIMEOUT)
    writer.close()
    assert (got, got_body) == (status, body)
    if mode == "raise":
        assert headers["retry-after"] == "3"


async def test_mount_delegates_websocket(serve):
    server = await serve(make_app())
    for path in ("/echo", "/echo/deeper/path?x=1"):
        async with fastws.connect(server.url + path) as ws:
            await ws.send(b"\x01\x02")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == b"\x01\x02"


async def test_app_wrap_serves_a_plain_handler_behind_guards(serve):
    async def handler(ws):
        async for m in ws:
            await ws.send(m)
    app = fastws.App.wrap(handler, origins=["https://ok.example"])
    server = await serve(app)
    async with fastws.connect(server.url + "/any/path", headers=[("Origin", "https://ok.example")]) as ws:
        await ws.send("x")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "x"
    with pytest.raises(fastws.InvalidHandshake) as info:
        await fastws.connect(server.url + "/", headers=[("Origin", "https://evil.example")])
    assert info.value.status == 403


class OrderAuth:
    def __init__(self):
        self.events: list[str] = []

    def authenticate(self, request):
        if request.query_param("token") != "t":
            raise fastws.HandshakeError(401, "Unauthorized")
        return {"userId": "u7"}

    async def on_open(self, ws):
        await asyncio.sleep(0)
        self.events.append(f"open {ws.user['userId']}")


async def test_auth_claims_on_ws_user_and_on_open_before_handler(serve):
    auth = OrderAuth()
    app = fastws.App(auth=auth)

    @app.websocket("/me")
    async def me(ws):
        auth.events.append("handler")
        await ws.send(ws.user["userId"])
        await ws.close()

    server = await serve(app)
    with pytest.raises(fastws.InvalidHandshake) as info:
        await fastws.connect(server.url + "/me")
    assert (info.value.status, info.value.body) == (401, b"Unauthorized")
    async with fastws.connect(server.url + "/me?token=t") as ws:
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "u7"
    assert auth.events == ["open u7", "handler"]


async def test_server_options_apply_with_fastws_serve(serve):
    app = fastws.App(max_size=16)

    @app.websocket("/")
    async def h(ws):
        async for m in ws:
            await ws.send(m)

    server = await serve(app)
    async with fastws.connect(server.url, max_size=1 << 20) as ws:
        await ws.send("x" * 64)
        with pytest.raises(fastws.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert ws.close_code == 1009


async def test_listener_route(serve):
    app = fastws.App()
    app.websocket("/l")(EchoListener)
    server = await serve(app)
    async with fastws.connect(server.url + "/l") as ws:
        await ws.send("z")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "z"


class _WsOnly:
    """A mount target that answers plain HTTP itself (as the proxy does)."""

    def fastws_accept(self, ws, request):
        if not request.is_websocket:
            return fastws.Response(400, "WebSocket endpoint only")
        return fastws.Accept(listener=EchoListener())


async def test_mount_answers_its_own_plain_http(serve):
    app = fastws.App()
    app.mount("/ws", _WsOnly())
    server = await serve(app)
    status, _, body = await http(server, "GET", "/ws/x")
    assert (status, body) == (400, b"WebSocket endpoint only")
    async with fastws.connect(server.url + "/ws/x") as ws:
        await ws.send("m")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "m"


async def test_per_route_connection_cap_is_its_own_pool(serve):
    app = fastws.App(max_connections=100)

    @app.websocket("/small", max_connections=1, queue_size=0)
    async def small(ws):
        async for m in ws:
            await ws.send(m)

    @app.websocket("/big")
    async def big(ws):
        async for m in ws:
            await ws.send(m)

    server = await serve(app)
    held = await fastws.connect(server.url + "/small")
    with pytest.raises(fastws.InvalidHandshake) as info:
        await fastws.connect(server.url + "/small")
    assert (info.value.status, info.value.body) == (503, b"Connection pool full")
    async with fastws.connect(server.url + "/big") as ws:  # the app-wide pool still has room
        await ws.send("b")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "b"
    await held.close()


async def test_configure_changes_app_wide_guards_but_route_overrides_win(serve):
    app = fastws.App()

    @app.websocket("/a")
    async def a(ws):
        await ws.send("a")

    @app.websocket("/b", origins=["https://b.example"])
    async def b(ws):
        await ws.send("b")

    app.configure(origins=["https://a.example"])
    server = await serve(app)
    with pytest.raises(fastws.InvalidHandshake) as info:
        await fastws.connect(server.url + "/a", headers=[("Origin", "https://b.example")])
    assert info.value.status == 403
    async with fastws.connect(server.url + "/a", headers=[("Origin", "https://a.example")]) as ws:
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "a"
    async with fastws.connect(server.url + "/b", headers=[("Origin", "https://b.example")]) as ws:
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "b"


@pytest.mark.allow_errors
async def test_handler_returning_garbage_is_500_not_a_hang(serve):
    app = fastws.App()

    @app.route("/bad")
    async def bad(request):
        return 3.5

    @app.upgrade("/badws")
    async def badws(request):
        return "not an Accept"

    server = await serve(app)
    status, _, body = await http(server, "GET", "/bad")
    assert (status, body) == (500, b"Internal Server Error")
    reader, writer = await raw_connect(server, upgrade_request("/badws"))
    status, _, body = await read_http_response(reader, TIMEOUT)
    writer.close()
    assert status == 500
