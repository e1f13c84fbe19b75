"""JWT auth over real loopback connections: 401s on the wire, claims on ws.user,
1008 when the token expires, and refreshing the token on the open connection."""

from __future__ import annotations

import asyncio
import json
import time

import jwt
import pytest
import websockets
import websockets.exceptions

import fastws
from fastws.auth import JWTAuth, user_id
from tests.helpers import raw_connect, read_http_response, upgrade_request

SECRET = "integration-secret-0123456789abcdef-0123"
TIMEOUT = 5.0


def token(sub: str = "alice", ttl: float = 60, key: str = SECRET, **claims) -> str:
    body = {"sub": sub, "exp": time.time() + ttl}
    body.update(claims)
    return jwt.encode(body, key, algorithm="HS256")


class AuthEcho:
    """The smallest accept hook using JWTAuth the way the App does: authenticate, claims on
    ``Accept.user``, ``on_open`` when the connection opens, refresh messages to ``on_message``."""

    def __init__(self, auth: JWTAuth) -> None:
        self.auth = auth
        self.users: list[object] = []

    def fastws_accept(self, ws, request):
        return fastws.Accept(handler=self.handler, user=self.auth.authenticate(request))

    async def handler(self, ws):
        self.auth.on_open(ws)
        self.users.append(user_id(ws.user))
        async for message in ws:
            if self.auth.on_message(ws, message):
                continue
            await ws.send(f"{user_id(ws.user)}: {message}")


async def refused(server, target: str, extra: str = "") -> tuple[int, dict, bytes]:
    reader, writer = await raw_connect(server, upgrade_request(target, extra=extra))
    try:
        return await read_http_response(reader, TIMEOUT)
    finally:
        writer.transport.abort()


async def test_missing_token_gets_401_unauthorized(serve):
    server = await serve(AuthEcho(JWTAuth(SECRET)))
    status, headers, body = await refused(server, "/")
    assert (status, body) == (401, b"Unauthorized")
    assert headers.get("www-authenticate") == "Bearer"


@pytest.mark.parametrize("bad", [
    token(key="wrong-secret-0123456789abcdef-0123456789"),
    token(ttl=-30),
    token(nbf=int(time.time()) + 600),
    token()[:-3],
    "a.b",
    "x" * 12000,
], ids=["signature", "expired", "nbf", "truncated", "segments", "huge"])
async def test_bad_token_gets_401_invalid_token(serve, bad):
    server = await serve(AuthEcho(JWTAuth(SECRET)))
    status, _, body = await refused(server, f"/?token={bad}")
    assert (status, body) == (401, b"Invalid token")
    status, _, body = await refused(server, "/", f"Authorization: Bearer {bad}\r\n")
    assert (status, body) == (401, b"Invalid token")
    # the server is still fine
    async with fastws.connect(server.url + f"/?token={token()}") as ws:
        await ws.send("hi")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "alice: hi"


async def test_claims_reach_the_handler_from_query_and_header(serve):
    app = AuthEcho(JWTAuth(SECRET))
    server = await serve(app)
    async with fastws.connect(server.url + f"/chat?token={token('bob')}") as ws:
        await ws.send("one")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "bob: one"
    async with fastws.connect(server.url + "/", headers={"Authorization": f"Bearer {token('carol', userId=7)}"}) as ws:
        await ws.send("two")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "7: two"
    assert app.users == ["bob", 7]


async def test_websockets_client_gets_401_and_then_connects(serve):
    server = await serve(AuthEcho(JWTAuth(SECRET)))
    with pytest.raises(websockets.exceptions.InvalidStatus) as info:
        async with websockets.connect(server.url + "/?token=nope"):
            pass
    assert info.value.response.status_code == 401
    assert info.value.response.body == b"Invalid token"
    async with websockets.connect(server.url + "/", additional_headers={"Authorization": f"Bearer {token()}"}) as ws:
        await ws.send("hello")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "alice: hello"


async def test_expired_token_closes_with_1008(serve):
    auth = JWTAuth(SECRET)
    server = await serve(AuthEcho(auth))
    exp = time.time() + 1.5
    ws = await fastws.connect(server.url + f"/?token={jwt.encode({'sub': 'dave', 'exp': exp}, SECRET)}")
    await ws.send("before")
    assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "dave: before"
    with pytest.raises(fastws.ConnectionClosedError):
        await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert (ws.close_code, ws.close_reason) == (1008, "Token expired")
    assert time.time() >= exp


async def test_websockets_client_sees_1008_on_expiry(serve):
    server = await serve(AuthEcho(JWTAuth(SECRET)))
    async with websockets.connect(server.url + f"/?token={token(ttl=1.5)}") as ws:
        with pytest.raises(websockets.exceptions.ConnectionClosedError):
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert ws.close_code == 1008
    assert ws.close_reason == "Token expired"


async def test_refresh_keeps_the_connection_open(serve):
    auth = JWTAuth(SECRET)
    server = await serve(AuthEcho(auth))
    first_exp = time.time() + 1.5
    async with fastws.connect(server.url + f"/?token={jwt.encode({'sub': 'erin', 'exp': first_exp}, SECRET)}") as ws:
        fresh = token("erin", ttl=120)
        await ws.send(json.dumps({"type": "auth", "token": fresh}, separators=(",", ":")))
        reply = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        assert reply["type"] == "auth" and reply["ok"] is True
        assert reply["exp"] == jwt.decode(fresh, SECRET, algorithms=["HS256"])["exp"]
        # past the first token's expiry the connection still works
        await asyncio.sleep(max(0.0, first_exp - time.time()) + 0.3)
        await ws.send("still here")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "erin: still here"
        assert ws.open


async def test_refresh_refused_for_another_user_or_a_bad_token(serve):
    auth = JWTAuth(SECRET)
    server = await serve(AuthEcho(auth))
    async with fastws.connect(server.url + f"/?token={token('frank')}") as ws:
        for message, error in [
            ({"type": "auth", "token": token("mallory")}, "Token subject mismatch"),
            ({"type": "auth", "token": token("frank", key="bad-secret-0123456789abcdef-0123456789")},
             "Invalid token"),
            ({"type": "auth", "token": token("frank", ttl=-60)}, "Invalid token"),
            ({"type": "auth"}, "Invalid token"),
            ({"type": "auth", "token": 12}, "Invalid token"),
        ]:
            await ws.send(json.dumps(message, separators=(",", ":")))
            reply = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            assert reply == {"type": "auth", "ok": False, "error": error}
        await ws.send('{"type":"auth", not json')
        assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["error"] == "Invalid token"
        # other messages (even JSON ones) go to the handler; the identity did not change
        await ws.send('{"type":"chat","text":"hi"}')
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == 'frank: {"type":"chat","text":"hi"}'


async def test_expiry_watch_survives_many_connections(serve):
    """Connections closing before their token expires leave no live entry behind."""
    auth = JWTAuth(SECRET)
    server = await serve(AuthEcho(auth))
    t = token("gina", ttl=3600)
    for _ in range(100):
        async with fastws.connect(server.url + f"/?token={t}") as ws:
            await ws.send("x")
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    import gc
    gc.collect()
    watch = auth._watches[asyncio.get_running_loop()]
    assert len(watch.expiry) <= 1
    assert len(watch.heap) <= 2 * len(watch.expiry) + 65
