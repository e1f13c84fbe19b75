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
    status, headers, body = await http(server, "HEAD", "/health")
    assert (status, body) == (200, b"")


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
