"""examples/auth.py and examples/proxy.py run as ``fastws serve examples.NAME:app`` subprocesses
(real processes, real sockets), with the websockets client as a peer nobody here wrote; and
JWTAuth and Proxy inside a fastws.App in-process."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time

import jwt
import pytest
import websockets
import websockets.exceptions

import fastws
from fastws.proxy import Proxy
from tests.helpers import raw_connect, read_http_response

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SECRET = "example-secret-0123456789abcdef-0123456789"
TIMEOUT = 5.0


class Served:
    """A ``fastws serve`` subprocess on 127.0.0.1:0; its URL is read from its first line."""

    def __init__(self, spec: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fastws", "serve", spec, "--host", "127.0.0.1", "--port", "0"],
            cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        line = self.proc.stdout.readline()  # "fastws 0.1.0 serving SPEC on ws://127.0.0.1:PORT (pid N)"
        match = re.search(r"on (ws://\S+)", line)
        if match is None:
            self.proc.kill()
            raise AssertionError(f"{spec} did not start: {line!r} {self.proc.stderr.read()!r}")
        self.url = match.group(1)
        self.port = int(self.url.rsplit(":", 1)[1])

    def stop(self) -> str:
        """Stop it (SIGINT, graceful) and return what it logged."""
        if self.proc.poll() is None:
            self.proc.send_signal(2)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.stderr.read()


def token(sub: str = "alice", ttl: float = 60, key: str = SECRET, **claims) -> str:
    return jwt.encode({"sub": sub, "exp": time.time() + ttl, **claims}, key, algorithm="HS256")


@pytest.fixture(scope="module")
def auth_example():
    served = Served("examples.auth:app", {"JWT_SECRET": SECRET})
    yield served
    served.stop()


@pytest.fixture(scope="module")
def proxy_example():
    backend = Served("examples.echo:app")
    proxy = Served("examples.proxy:app", {"BACKEND_URL": backend.url})
    yield proxy, backend
    proxy.stop()
    backend.stop()


async def http_status(port: int, request: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        status, _, body = await read_http_response(reader, TIMEOUT)
    finally:
        writer.transport.abort()
    return status, body


# ---------------------------------------------------------------- examples/auth.py


async def test_auth_example_echoes_for_a_valid_token(auth_example):
    async with websockets.connect(auth_example.url + f"/?token={token('u-17')}") as ws:
        await ws.send("hello")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "Authenticated echo: hello"
    async with fastws.connect(auth_example.url + "/any/path",
                              headers={"Authorization": f"Bearer {token('bob', userId='b-2')}"}) as ws:
        await ws.send("there")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "Authenticated echo: there"


async def test_auth_example_refuses(auth_example):
    with pytest.raises(websockets.exceptions.InvalidStatus) as info:
        async with websockets.connect(auth_example.url + "/"):
            pass
    assert (info.value.response.status_code, info.value.response.body) == (401, b"Unauthorized")
    for bad in (token(key="not-the-secret-0123456789abcdef-0123456"), token(ttl=-60), "x.y.z"):
        with pytest.raises(websockets.exceptions.InvalidStatus) as info:
            async with websockets.connect(auth_example.url + f"/?token={bad}"):
                pass
        assert (info.value.response.status_code, info.value.response.body) == (401, b"Invalid token")


async def test_auth_example_refresh_then_expiry(auth_example):
    async with websockets.connect(auth_example.url + f"/?token={token('carol', ttl=1.5)}") as ws:
        await ws.send(json.dumps({"type": "auth", "token": token("carol", ttl=2.5)}, separators=(",", ":")))
        reply = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
        assert reply["ok"] is True
        with pytest.raises(websockets.exceptions.ConnectionClosedError):
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert (ws.close_code, ws.close_reason) == (1008, "Token expired")


def test_auth_example_logs_the_user_id():
    served = Served("examples.auth:app", {"JWT_SECRET": SECRET})

    async def client():
        async with websockets.connect(served.url + f"/?token={token('user-4242')}") as ws:
            await ws.send("x")
            await asyncio.wait_for(ws.recv(), TIMEOUT)

    try:
        asyncio.run(client())
    finally:
        log = served.stop()
    assert "user user-4242 connected" in log
    assert "Traceback" not in log


def test_examples_need_their_environment():
    for spec, var in (("examples.auth:app", "JWT_SECRET"), ("examples.proxy:app", "BACKEND_URL")):
        env = {k: v for k, v in os.environ.items() if k not in ("JWT_SECRET", "BACKEND_URL")}
        out = subprocess.run([sys.executable, "-m", "fastws", "serve", spec, "--port", "0"], cwd=ROOT, env=env,
                             capture_output=True, text=True, timeout=30)
        assert out.returncode != 0
        assert var in out.stderr
        assert "Traceback" not in out.stderr


# ---------------------------------------------------------------- examples/proxy.py


async def test_proxy_example_relays(proxy_example):
    proxy, _ = proxy_example
    async with websockets.connect(proxy.url + "/room?x=1") as ws:
        for i in range(50):
            await ws.send(f"m{i}" if i % 2 else bytes([i]) * (i + 1))
        for i in range(50):
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == (f"m{i}" if i % 2 else bytes([i]) * (i + 1))
        big = os.urandom(500_000)
        await ws.send(big)
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == big


async def test_proxy_example_plain_http_is_400(proxy_example):
    proxy, _ = proxy_example
    status, body = await http_status(proxy.port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert (status, body) == (400, b"WebSocket endpoint only")


def test_proxy_example_unreachable_backend_is_502():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proxy = Served("examples.proxy:app", {"BACKEND_URL": f"ws://127.0.0.1:{port}"})

    async def client():
        with pytest.raises(websockets.exceptions.InvalidStatus) as info:
            async with websockets.connect(proxy.url + "/"):
                pass
        return info.value.response.status_code, info.value.response.body

    try:
        assert asyncio.run(client()) == (502, b"Bad Gateway")
    finally:
        log = proxy.stop()
    assert "Traceback" not in log


def test_proxy_example_backend_killed_mid_stream():
    backend = Served("examples.echo:app")
    proxy = Served("examples.proxy:app", {"BACKEND_URL": backend.url})

    async def client():
        async with websockets.connect(proxy.url + "/") as ws:
            await ws.send("before")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "before"
            backend.proc.kill()  # SIGKILL: no closing handshake from the backend
            backend.proc.wait()
            with pytest.raises(websockets.exceptions.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), TIMEOUT)
        return ws.close_code

    try:
        assert asyncio.run(client()) == 1014
    finally:
        proxy.stop()
        backend.stop()


# ---------------------------------------------------------------- inside an App


async def test_app_auth_with_jwtauth(serve):
    auth = fastws.JWTAuth(SECRET)
    app = fastws.App(auth=auth)
    seen = []

    @app.websocket("/me")
    async def me(ws):
        seen.append(ws.user)
        async for message in ws:
            if auth.on_message(ws, message):
                continue
            await ws.send(f"{ws.user['sub']}:{message}")

    server = await serve(app)
    with pytest.raises(fastws.InvalidHandshake) as info:
        await fastws.connect(server.url + "/me")
    assert (info.value.status, info.value.body) == (401, b"Unauthorized")
    async with fastws.connect(server.url + f"/me?token={token('dora', ttl=1.5)}") as ws:
        await ws.send("a")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "dora:a"
        with pytest.raises(fastws.ConnectionClosedError):
            await asyncio.wait_for(ws.recv(), TIMEOUT)  # App called auth.on_open: 1008 on expiry
        assert (ws.close_code, ws.close_reason) == (1008, "Token expired")
    assert seen[0]["sub"] == "dora"


async def test_app_auth_on_a_listener_route(serve):
    auth = fastws.JWTAuth(SECRET)
    app = fastws.App(auth=auth)

    @app.websocket("/l")
    class Echo(fastws.Listener):
        def on_message(self, ws, msg):
            if not auth.on_message(ws, msg):
                ws.send(f"{ws.user['sub']}:{msg.text()}")

    server = await serve(app)
    async with fastws.connect(server.url + f"/l?token={token('eve', ttl=1.5)}") as ws:
        await ws.send(json.dumps({"type": "auth", "token": token("eve", ttl=120)}, separators=(",", ":")))
        assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["ok"] is True
        await ws.send("b")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "eve:b"


async def test_proxy_mounted_in_an_app(serve):
    async def info(ws):
        async for _ in ws:
            await ws.send(json.dumps({"target": ws.request.target,
                                      "xff": ws.request.headers.get_all("x-forwarded-for")}))

    backend = await serve(info)
    app = fastws.App(trusted_proxies=["127.0.0.1/32"])
    app.mount("/api", Proxy(backend.url, strip_prefix="/api"))
    server = await serve(app)
    # the App trusts 127.0.0.1 as a proxy: the client address comes from its X-Forwarded-For
    async with fastws.connect(server.url + "/api/chat?room=2", headers={"X-Forwarded-For": "203.0.113.7"}) as ws:
        await ws.send("?")
        seen = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    assert seen == {"target": "/chat?room=2", "xff": ["203.0.113.7"]}
    reader, writer = await raw_connect(server, b"GET /api/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    try:
        status, _, body = await read_http_response(reader, TIMEOUT)
    finally:
        writer.transport.abort()
    assert (status, body) == (400, b"WebSocket endpoint only")


async def test_proxy_in_an_app_ignores_spoofed_forwarded_for(serve):
    async def info(ws):
        async for _ in ws:
            await ws.send(json.dumps(ws.request.headers.get_all("x-forwarded-for")))

    backend = await serve(info)
    app = fastws.App()  # no trusted proxy: X-Forwarded-For from the client is ignored
    app.mount("/", Proxy(backend.url))
    server = await serve(app)
    async with websockets.connect(server.url + "/x", additional_headers={"X-Forwarded-For": "1.2.3.4"}) as ws:
        await ws.send("?")
        assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)) == ["127.0.0.1"]


async def test_app_refresh_through_message_limits(serve):
    """With message limits the handler's ws is the guards' wrapper: a refresh through it
    still moves the expiry of the real connection."""
    auth = fastws.JWTAuth(SECRET)
    app = fastws.App(auth=auth, message_rate="1000/s")

    @app.websocket("/")
    async def handler(ws):
        async for message in ws:
            if auth.on_message(ws, message):
                continue
            await ws.send(f"{ws.user['sub']}:{message}")

    server = await serve(app)
    first_exp = time.time() + 1.5
    t = jwt.encode({"sub": "finn", "exp": first_exp}, SECRET, algorithm="HS256")
    async with fastws.connect(server.url + f"/?token={t}") as ws:
        await ws.send(json.dumps({"type": "auth", "token": token("finn", ttl=120)}, separators=(",", ":")))
        assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["ok"] is True
        await asyncio.sleep(max(0.0, first_exp - time.time()) + 0.3)
        await ws.send("alive")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "finn:alive"
