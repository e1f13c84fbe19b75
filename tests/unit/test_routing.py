"""Route patterns and the App's request pipeline, driven without sockets."""

from __future__ import annotations

import asyncio

import pytest

import fastws
from fastws.app import to_response
from fastws.handshake import Headers, Request
from fastws.routing import Router, compile_path


def req(path: str, method: str = "GET", upgrade: bool = False, headers: dict[str, str] | None = None,
        peer: str = "127.0.0.1") -> Request:
    items = [("Host", "x")]
    if upgrade:
        items += [("Upgrade", "websocket"), ("Connection", "Upgrade")]
    items += list((headers or {}).items())
    r = Request(method, path, Headers(items))
    r.remote_address = (peer, 5000)
    return r


def test_static_and_params():
    r = Router()
    a = r.entry("/a", lambda: "A")
    room = r.entry("/rooms/{name}", lambda: "R")
    n = r.entry("/n/{id:int}", lambda: "N")
    rest = r.entry("/files/{rest:path}", lambda: "F")
    assert (a, room, n, rest) == ("A", "R", "N", "F")
    assert r.match("/a") == ("A", {})
    assert r.match("/rooms/lobby") == ("R", {"name": "lobby"})
    assert r.match("/rooms/") is None
    assert r.match("/rooms/a/b") is None
    assert r.match("/n/42") == ("N", {"id": 42})
    assert r.match("/n/x") is None
    assert r.match("/files/a/b/c.txt") == ("F", {"rest": "a/b/c.txt"})
    assert r.match("/files/") == ("F", {"rest": ""})
    assert r.match("/nothing") is None
    assert r.entry("/rooms/{name}", lambda: "other") == "R"  # same pattern, same entry
    assert len(r) == 4


def test_regex_characters_in_paths_are_literal():
    r = Router()
    r.entry("/a.b/{x}", lambda: 1)
    assert r.match("/a.b/1") == (1, {"x": "1"})
    assert r.match("/aXb/1") is None


@pytest.mark.parametrize("bad", ["rooms", "/a/{x}/{x}", "/a/{x", "/a/}x", "/a/{1x}"])
def test_bad_patterns(bad):
    with pytest.raises(ValueError):
        compile_path(bad)


def test_to_response():
    assert to_response({"a": 1}).body == b'{"a":1}'
    assert to_response({"a": 1}).content_type == "application/json"
    assert to_response([1, 2]).body == b"[1,2]"
    assert to_response("hi").body == "hi"
    assert to_response(b"\x00").content_type == "application/octet-stream"
    assert to_response(None).status == 204
    resp = fastws.Response(201, "made")
    assert to_response(resp) is resp
    with pytest.raises(TypeError):
        to_response(3.5)


def status_of(fn):
    with pytest.raises(fastws.HandshakeError) as info:
        fn()
    return info.value.status, info.value.reason


def test_pipeline_statuses():
    app = fastws.App()

    @app.websocket("/ws")
    async def ws_handler(ws):
        pass

    @app.route("/items/{id:int}", methods=["GET", "DELETE"])
    def item(request):
        return {"id": request.scope["params"]["id"]}

    assert status_of(lambda: app.fastws_accept(None, req("/nope"))) == (404, "Not Found")
    st, reason = status_of(lambda: app.fastws_accept(None, req("/items/1", "PUT")))
    assert (st, reason) == (405, "Method Not Allowed")
    assert status_of(lambda: app.fastws_accept(None, req("/ws"))) == (426, "Expected WebSocket")
    assert status_of(lambda: app.fastws_accept(None, req("/ws", "POST")))[0] == 405
    resp = app.fastws_accept(None, req("/items/7"))
    assert isinstance(resp, fastws.Response) and resp.body == b'{"id":7}'
    head = app.fastws_accept(None, req("/items/7", "HEAD"))
    assert head.status == 200 and head.to_bytes().endswith(b"Content-Length: 8\r\nConnection: close\r\n\r\n")
    body = req("/items/7", headers={"Content-Length": "5"})
    assert status_of(lambda: app.fastws_accept(None, body))[0] == 413
    spec = app.fastws_accept(None, req("/ws", upgrade=True))
    assert isinstance(spec, fastws.Accept) and spec.handler is ws_handler and spec.data == {}


def test_registration_errors():
    app = fastws.App()

    @app.websocket("/x")
    async def h(ws):
        pass

    with pytest.raises(ValueError):
        app.websocket("/x")(h)
    with pytest.raises(TypeError):
        app.websocket("/y")(lambda ws: None)  # not async
    with pytest.raises(TypeError):
        app.websocket("/z", bogus=1)(h)
    with pytest.raises(TypeError):
        app.mount("/m", object())
    with pytest.raises(TypeError):
        fastws.App(origins=["https://a.example"], guards=fastws.Guards())
    with pytest.raises(TypeError, match="nonsense"):
        fastws.App(nonsense=1)
    app.route("/r")(lambda r: "x")
    with pytest.raises(ValueError):
        app.route("/r")(lambda r: "y")


def test_server_options_kept_apart_from_guards():
    app = fastws.App(max_size=1234, origins=["https://a.example"], ping_interval=5)
    assert app.server_options == {"max_size": 1234, "ping_interval": 5}
    assert app.guards.origin is not None


class FakeAuth:
    def __init__(self):
        self.opened = []

    def authenticate(self, request):
        token = request.query_param("token")
        if token is None:
            raise fastws.HandshakeError(401, "Unauthorized")
        if token != "good":
            raise fastws.HandshakeError(401, "Invalid token")
        return {"sub": "u1"}

    def on_open(self, ws):
        self.opened.append(ws)


def test_auth_sets_user_and_wraps_on_open():
    auth = FakeAuth()
    app = fastws.App(auth=auth)

    @app.websocket("/ws")
    async def h(ws):
        pass

    @app.websocket("/public", auth=False)
    async def pub(ws):
        pass

    assert status_of(lambda: app.fastws_accept(None, req("/ws", upgrade=True))) == (401, "Unauthorized")
    assert status_of(lambda: app.fastws_accept(None, req("/ws?token=bad", upgrade=True))) == (401, "Invalid token")
    spec = app.fastws_accept(None, req("/ws?token=good", upgrade=True))
    assert spec.user == {"sub": "u1"} and spec.handler is not h  # wrapped to call on_open first
    spec = app.fastws_accept(None, req("/public", upgrade=True))
    assert spec.user is None and spec.handler is pub


async def test_async_upgrade_handler_and_async_auth():
    class AsyncAuth:
        async def authenticate(self, request):
            await asyncio.sleep(0)
            return {"userId": 9}

    app = fastws.App()

    @app.upgrade("/w/{room}", auth=AsyncAuth())
    async def decide(request):
        if request.scope["params"]["room"] == "closed":
            return fastws.Response(403, "room closed")
        assert request.scope["user"] == {"userId": 9}

        async def h(ws):
            pass
        return fastws.Accept(handler=h, subprotocol="chat", data={"room": request.scope["params"]["room"]})

    refused = await app.fastws_accept(None, req("/w/closed", upgrade=True))
    assert refused.status == 403
    spec = await app.fastws_accept(None, req("/w/a", upgrade=True))
    assert spec.subprotocol == "chat" and spec.data == {"room": "a"} and spec.user == {"userId": 9}
