"""``fastws.asgi.mount``: fastws rooms and an App inside a FastAPI app, served by fastws (straight
to the engine) and by uvicorn (with its websockets and wsproto backends)."""

from __future__ import annotations

import asyncio
import contextlib
import json

import httpx
import pytest
import uvicorn
import websockets
from fastapi import FastAPI
from websockets.exceptions import ConnectionClosed, InvalidStatus

import fastws
from fastws.asgi import ASGIApp, mount
from fastws.rooms import Room, RoomRouter

T = 5.0


class Counter(Room):
    """Every message is broadcast to the room with a running count; GET gives the count."""

    def __init__(self) -> None:
        self.n = 0

    def on_connect(self, ws) -> None:
        ws.send(json.dumps({"joined": self.name, "sessions": len(self.sockets())}))

    def on_message(self, ws, message) -> None:
        if message == "close":
            ws.close(4005, "asked to")
            return
        self.n += 1
        text = message if isinstance(message, str) else "bytes:" + message.hex()
        self.broadcast(json.dumps({"n": self.n, "text": text}))

    def on_request(self, request):
        return {"room": self.name, "n": self.n}


def build(tmp_path):
    rooms = RoomRouter(Counter, data_dir=str(tmp_path))
    tools = fastws.App()

    @tools.websocket("/echo/{name}")
    async def echo(ws):
        async for message in ws:
            await ws.send(f"{ws.data['name']}:{message}")

    @tools.route("/hello")
    async def hello(request):
        return {"hello": "from fastws"}

    rooms_app = mount(rooms)
    tools_app = mount(tools)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await rooms_app.startup()
        yield
        await rooms_app.shutdown()

    api = FastAPI(lifespan=lifespan)

    @api.get("/api/ping")
    async def ping():
        return {"pong": True}

    api.mount("/rooms", rooms_app)
    api.mount("/tools", tools_app)
    return api, rooms_app, tools_app


@contextlib.asynccontextmanager
async def on_uvicorn(app, ws: str):
    config = uvicorn.Config(app, host="127.0.0.1", port=0, ws=ws, lifespan="on", log_level="warning")
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # pytest owns the signals
    task = asyncio.ensure_future(server.serve())
    for _ in range(500):
        if server.started or task.done():
            break
        await asyncio.sleep(0.01)
    assert server.started, "uvicorn did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


@contextlib.asynccontextmanager
async def on_fastws(app):
    server = fastws.serve(ASGIApp(app), "127.0.0.1", 0, compression=False)
    await server.start()
    try:
        host, port = server.address
        yield f"{host}:{port}"
    finally:
        await server.shutdown(timeout=2)


async def exercise(addr: str) -> None:
    """The same checks whatever the server: HTTP beside the mounts, a room shared by two
    clients, room HTTP, an App's WebSocket and HTTP routes, close codes, refusals."""
    async with httpx.AsyncClient(base_url=f"http://{addr}") as client:
        assert (await client.get("/api/ping")).json() == {"pong": True}
        assert (await client.get("/tools/hello")).json() == {"hello": "from fastws"}
    async with websockets.connect(f"ws://{addr}/rooms/lobby", open_timeout=T) as a, \
            websockets.connect(f"ws://{addr}/rooms/lobby", open_timeout=T) as b:
        assert json.loads(await asyncio.wait_for(a.recv(), T))["joined"] == "lobby"
        assert json.loads(await asyncio.wait_for(b.recv(), T)) == {"joined": "lobby", "sessions": 2}
        await a.send("hi")
        assert json.loads(await asyncio.wait_for(a.recv(), T)) == {"n": 1, "text": "hi"}
        assert json.loads(await asyncio.wait_for(b.recv(), T)) == {"n": 1, "text": "hi"}
        await b.send(b"\x01\x02")  # a binary message reaches the room as bytes
        assert json.loads(await asyncio.wait_for(a.recv(), T)) == {"n": 2, "text": "bytes:0102"}
        await a.send("close")
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(a.recv(), T)
        assert (a.close_code, a.close_reason) == (4005, "asked to")
    async with httpx.AsyncClient(base_url=f"http://{addr}") as client:
        r = await client.get("/rooms/lobby")
        assert r.json() == {"room": "lobby", "n": 2}
    async with websockets.connect(f"ws://{addr}/tools/echo/x1", open_timeout=T) as ws:
        await ws.send("abc")
        assert await asyncio.wait_for(ws.recv(), T) == "x1:abc"
    with pytest.raises(InvalidStatus) as info:
        await websockets.connect(f"ws://{addr}/tools/nowhere", open_timeout=T)
    assert info.value.response.status_code == 404
    with pytest.raises(InvalidStatus) as info:
        await websockets.connect(f"ws://{addr}/rooms/bad%00name", open_timeout=T)
    assert info.value.response.status_code in (400, 403)  # 403: a server without the denial extension


async def test_mount_on_fastws_goes_straight_to_the_engine(tmp_path):
    api, rooms_app, tools_app = build(tmp_path)
    async with on_fastws(api) as addr:
        await exercise(addr)
    # no bridged engine was ever made: every connection ran on the server's own engine
    assert rooms_app._endpoint is None and tools_app._endpoint is None


@pytest.mark.parametrize("backend", ["websockets", "wsproto"])
async def test_mount_under_uvicorn(tmp_path, backend):
    api, rooms_app, tools_app = build(tmp_path)
    async with on_uvicorn(api, backend) as addr:
        await exercise(addr)
    assert rooms_app._endpoint is not None  # bridged
