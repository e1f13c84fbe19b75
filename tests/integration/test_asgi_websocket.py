"""ASGI ``websocket`` scopes on fastws' engine: a real FastAPI app, the ``websockets`` client.

Several cases follow uvicorn's own protocol tests (tests/protocols/test_websocket.py): accept,
subprotocols, extra headers, denial responses, close codes both ways, app errors, shutdown.
"""

from __future__ import annotations

import asyncio

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

import fastws
from fastws.asgi import ASGIApp
from tests.helpers import raw_connect, until, upgrade_request
from tests.integration import asgi_apps

T = 5.0


@pytest.fixture
async def api(serve):
    asgi_apps.events.clear()
    return await serve(ASGIApp(asgi_apps.api))


def url(server, path: str) -> str:
    host, port = server.address
    return f"ws://{host}:{port}{path}"


async def test_echo_text_and_bytes(api):
    async with websockets.connect(url(api, "/ws/echo"), open_timeout=T) as ws:
        await ws.send("héllo")
        assert await asyncio.wait_for(ws.recv(), T) == "héllo"
        await ws.send(b"\x00\x01\xff")
        assert await asyncio.wait_for(ws.recv(), T) == b"\x00\x01\xff"
        big = bytes(range(256)) * 4096  # 1 MiB: the engine's large-message path
        await ws.send(big)
        assert await asyncio.wait_for(ws.recv(), T) == big


async def test_scope_subprotocol_headers_and_lifespan_state(api):
    async with websockets.connect(url(api, "/ws/chat?room=1"), subprotocols=["chat.v1", "chat.v2"],
                                  open_timeout=T) as ws:
        assert ws.subprotocol == "chat.v2"
        assert ws.response.headers["x-room"] == "lobby"
        first = __import__("json").loads(await asyncio.wait_for(ws.recv(), T))
        assert first == {"path": "/ws/chat", "query": "room=1", "subprotocols": ["chat.v1", "chat.v2"],
                         "greeting": "hello from lifespan"}
        await ws.send("shout")
        assert await asyncio.wait_for(ws.recv(), T) == "SHOUT"


async def test_no_subprotocol_when_none_matches(api):
    async with websockets.connect(url(api, "/ws/chat"), subprotocols=["other"], open_timeout=T) as ws:
        assert ws.subprotocol is None


async def test_app_closes_with_code_and_reason(api):
    async with websockets.connect(url(api, "/ws/chat"), open_timeout=T) as ws:
        await asyncio.wait_for(ws.recv(), T)
        await ws.send("bye")
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), T)
    assert ws.close_code == 4001 and ws.close_reason == "see you"


async def test_client_close_code_and_reason_reach_the_app(api):
    async with websockets.connect(url(api, "/ws/wait-close"), open_timeout=T) as ws:
        await ws.send("x")
        await ws.close(4002, "client leaves")
    await until(lambda: len(asgi_apps.events) == 2, T)
    assert asgi_apps.events == [("startup",), ("disconnect", 4002, "client leaves")]


async def test_denial_response_is_the_apps_http_response(api):
    with pytest.raises(InvalidStatus) as info:
        await websockets.connect(url(api, "/ws/deny"), open_timeout=T)
    response = info.value.response
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["content-type"] == "application/json"
    assert response.body == b'{"error":"no token"}'


async def test_close_before_accept_is_403(api):
    with pytest.raises(InvalidStatus) as info:
        await websockets.connect(url(api, "/ws/close-first"), open_timeout=T)
    assert info.value.response.status_code == 403


async def test_unknown_websocket_route_is_refused(api):
    with pytest.raises(InvalidStatus) as info:
        await websockets.connect(url(api, "/nowhere"), open_timeout=T)
    assert info.value.response.status_code == 403  # Starlette closes unrouted websockets


@pytest.mark.allow_errors
async def test_app_errors_give_500_then_1011(api):
    with pytest.raises(InvalidStatus) as info:
        await websockets.connect(url(api, "/ws/fail-before"), open_timeout=T)
    assert info.value.response.status_code == 500
    async with websockets.connect(url(api, "/ws/fail-after"), open_timeout=T) as ws:
        await ws.send("go")
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), T)
    assert ws.close_code == 1011


async def test_server_shutdown_closes_with_1001(serve):
    asgi_apps.events.clear()
    server = await serve(ASGIApp(asgi_apps.api))
    async with websockets.connect(url(server, "/ws/wait-close"), open_timeout=T) as ws:
        await ws.send("x")
        await server.shutdown(timeout=2)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), T)
    assert ws.close_code == 1001
    assert ("disconnect", 1001, "server shutting down") in asgi_apps.events
    assert asgi_apps.events[-1] == ("shutdown",)  # lifespan shutdown after the connections closed


async def test_upgrade_after_http_on_the_same_connection(api):
    reader, writer = await raw_connect(api, b"GET /json HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
        assert head.startswith(b"HTTP/1.1 200")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await asyncio.wait_for(reader.readexactly(length), T)
        writer.write(upgrade_request("/ws/echo"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
        assert head.startswith(b"HTTP/1.1 101")
        writer.write(b"\x81\x82abcd" + bytes(a ^ b for a, b in zip(b"hi", b"ab")))  # masked "hi"
        frame = await asyncio.wait_for(reader.readexactly(4), T)
        assert frame == b"\x81\x02hi"
    finally:
        writer.close()


async def test_engine_guards_apply(serve):
    app = fastws.App.wrap(ASGIApp(asgi_apps.api), origins=["https://good.example"], max_connections=1)
    server = await serve(app)
    with pytest.raises(InvalidStatus) as info:
        await websockets.connect(url(server, "/ws/echo"), origin="https://evil.example", open_timeout=T)
    assert info.value.response.status_code == 403
    async with websockets.connect(url(server, "/ws/echo"), origin="https://good.example", open_timeout=T) as ws:
        await ws.send("in")
        assert await asyncio.wait_for(ws.recv(), T) == "in"
        stats = server.endpoint.stats()
        assert stats["established"] == 1


async def test_connection_rate_guard(serve):
    app = fastws.App.wrap(ASGIApp(asgi_apps.api), connection_rate="1/60s")
    server = await serve(app)
    async with websockets.connect(url(server, "/ws/echo"), open_timeout=T):
        pass
    with pytest.raises(InvalidStatus) as info:
        await websockets.connect(url(server, "/ws/echo"), open_timeout=T)
    assert info.value.response.status_code == 429


async def test_engine_limits_apply(serve):
    server = await serve(ASGIApp(asgi_apps.api), max_size=1000)
    async with websockets.connect(url(server, "/ws/echo"), open_timeout=T) as ws:
        await ws.send("x" * 2000)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), T)
    assert ws.close_code == 1009


async def test_metrics_count_asgi_websockets(api):
    async with websockets.connect(url(api, "/ws/echo"), open_timeout=T) as ws:
        await ws.send("a")
        await asyncio.wait_for(ws.recv(), T)
    await until(lambda: api.endpoint.stats()["closed"] == 1, T)
    stats = api.endpoint.stats()
    assert stats["attempted"] == 1 and stats["established"] == 1


async def test_compression_is_negotiated(serve):
    server = await serve(ASGIApp(asgi_apps.api), compression=True)
    async with websockets.connect(url(server, "/ws/echo"), open_timeout=T) as ws:
        assert "permessage-deflate" in ws.response.headers.get("sec-websocket-extensions", "")
        await ws.send("z" * 10000)
        assert await asyncio.wait_for(ws.recv(), T) == "z" * 10000


async def test_client_gone_during_accept(serve):
    started = asyncio.Event()
    results = []

    async def app(scope, receive, send):
        if scope["type"] != "websocket":
            return
        assert (await receive())["type"] == "websocket.connect"
        started.set()
        results.append(await receive())  # nothing before accept but the end of the connection

    # the engine does not read while an accept is pending: the handshake timeout ends it
    server = await serve(ASGIApp(app, lifespan="off"), handshake_timeout=0.2)
    reader, writer = await raw_connect(server, upgrade_request("/"))
    await asyncio.wait_for(started.wait(), T)
    writer.close()
    await until(lambda: results, T)
    assert results == [{"type": "websocket.disconnect", "code": 1006, "reason": ""}]


# ---------------------------------------------------------------- raw ASGI apps (uvicorn's cases)


async def raw_app(serve, app):
    async def asgi(scope, receive, send):
        if scope["type"] == "websocket":
            await app(scope, receive, send)

    return await serve(ASGIApp(asgi, lifespan="off"))


async def test_send_after_close_raises(serve):
    raised = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "123"})
        await send({"type": "websocket.close"})
        try:
            await send({"type": "websocket.send", "text": "456"})
        except Exception as exc:  # the spec: a subclass of OSError
            raised.append(exc)

    server = await raw_app(serve, app)
    async with websockets.connect(url(server, "/"), open_timeout=T) as ws:
        assert await asyncio.wait_for(ws.recv(), T) == "123"
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), T)
    assert ws.close_code == 1000
    await until(lambda: raised, T)
    assert isinstance(raised[0], OSError)


@pytest.mark.allow_errors
@pytest.mark.parametrize("first", [None, "websocket.send", "websocket.http.response.body"])
async def test_missing_or_wrong_handshake_is_500(serve, first):
    async def app(scope, receive, send):
        await receive()
        if first is not None:
            await send({"type": first, "text": "early", "body": b""})

    server = await raw_app(serve, app)
    with pytest.raises(InvalidStatus) as info:
        await websockets.connect(url(server, "/"), open_timeout=T)
    assert info.value.response.status_code == 500


@pytest.mark.allow_errors
async def test_duplicate_accept_closes_with_1011(serve):
    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.accept"})

    server = await raw_app(serve, app)
    async with websockets.connect(url(server, "/"), open_timeout=T) as ws:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), T)
    assert ws.close_code == 1011


async def test_messages_sent_before_the_close_are_read(serve):
    got = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "ready"})
        for _ in range(10):
            message = await receive()
            got.append(message)
            if message["type"] == "websocket.disconnect":
                return

    server = await raw_app(serve, app)
    async with websockets.connect(url(server, "/"), open_timeout=T) as ws:
        assert await asyncio.wait_for(ws.recv(), T) == "ready"
        await ws.send("one")
        await ws.send(b"two")
        await ws.close(1000)
    await until(lambda: got and got[-1]["type"] == "websocket.disconnect", T)
    assert got == [{"type": "websocket.receive", "text": "one"}, {"type": "websocket.receive", "bytes": b"two"},
                   {"type": "websocket.disconnect", "code": 1000, "reason": ""}]


async def test_denial_in_several_body_messages(serve):
    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.http.response.start", "status": 404,
                    "headers": [(b"content-type", b"text/plain"), (b"x-why", b"gone")]})
        await send({"type": "websocket.http.response.body", "body": b"not ", "more_body": True})
        await send({"type": "websocket.http.response.body", "body": b"here"})

    server = await raw_app(serve, app)
    with pytest.raises(InvalidStatus) as info:
        await websockets.connect(url(server, "/"), open_timeout=T)
    response = info.value.response
    assert (response.status_code, response.body, response.headers["x-why"]) == (404, b"not here", "gone")


async def test_scope_of_a_websocket(serve):
    scopes = []

    async def app(scope, receive, send):
        scopes.append(scope)
        await receive()
        await send({"type": "websocket.close"})

    server = await raw_app(serve, app)
    with pytest.raises(InvalidStatus):
        await websockets.connect(url(server, "/one%2Ftwo?x=1"), additional_headers={"X-Test": "yes"},
                                 open_timeout=T)
    scope = scopes[0]
    assert scope["path"] == "/one/two" and scope["raw_path"] == b"/one%2Ftwo"
    assert scope["query_string"] == b"x=1" and scope["scheme"] == "ws"
    assert scope["asgi"]["version"] == "3.0" and scope["client"][0] == "127.0.0.1"
    assert (b"x-test", b"yes") in scope["headers"]
    assert "websocket.http.response" in scope["extensions"]
