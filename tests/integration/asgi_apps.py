"""Real FastAPI and Starlette apps the ASGI tests serve (also ``fastws serve`` targets)."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import FastAPI, WebSocket, WebSocketDisconnect
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute

# what the apps saw, for the tests to read (one process, one test at a time)
events: list[tuple] = []


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    events.append(("startup",))
    yield {"greeting": "hello from lifespan"}
    events.append(("shutdown",))


api = FastAPI(lifespan=lifespan)


@api.get("/json")
async def get_json() -> dict:
    return {"message": "hello", "items": [1, 2, 3]}


@api.get("/state")
async def get_state(request: Request) -> dict:
    return {"greeting": request.state.greeting}


@api.post("/items")
async def post_item(item: dict) -> dict:
    return {"received": item}


@api.websocket("/ws/echo")
async def ws_echo(ws: WebSocket) -> None:
    await ws.accept()
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                events.append(("disconnect", message.get("code")))
                return
            if message.get("text") is not None:
                await ws.send_text(message["text"])
            else:
                await ws.send_bytes(message["bytes"])
    except WebSocketDisconnect as exc:  # pragma: no cover - receive() above returns the disconnect
        events.append(("disconnect", exc.code))


@api.websocket("/ws/chat")
async def ws_chat(ws: WebSocket) -> None:
    offered = ws.scope["subprotocols"]
    chosen = "chat.v2" if "chat.v2" in offered else None
    await ws.accept(subprotocol=chosen, headers=[(b"x-room", b"lobby")])
    await ws.send_json({"path": ws.scope["path"], "query": ws.scope["query_string"].decode(),
                        "subprotocols": offered, "greeting": ws.scope.get("state", {}).get("greeting")})
    try:
        async for text in ws.iter_text():
            if text == "bye":
                await ws.close(code=4001, reason="see you")
                return
            await ws.send_text(text.upper())
    except WebSocketDisconnect as exc:  # pragma: no cover - iter_text ends on a disconnect
        events.append(("disconnect", exc.code))


@api.websocket("/ws/deny")
async def ws_deny(ws: WebSocket) -> None:
    await ws.send_denial_response(JSONResponse({"error": "no token"}, status_code=401,
                                               headers={"www-authenticate": "Bearer"}))


@api.websocket("/ws/close-first")
async def ws_close_first(ws: WebSocket) -> None:
    await ws.close(code=1008)


@api.websocket("/ws/fail-before")
async def ws_fail_before(ws: WebSocket) -> None:
    raise RuntimeError("boom before accept")


@api.websocket("/ws/fail-after")
async def ws_fail_after(ws: WebSocket) -> None:
    await ws.accept()
    await ws.receive_text()
    raise RuntimeError("boom after accept")


@api.websocket("/ws/wait-close")
async def ws_wait_close(ws: WebSocket) -> None:
    await ws.accept()
    try:
        while True:
            await ws.receive_text()
    except WebSocketDisconnect as exc:
        events.append(("disconnect", exc.code, exc.reason))


# ---------------------------------------------------------------- Starlette


async def home(request: Request) -> Response:
    return PlainTextResponse("Hello, world")


async def upload(request: Request) -> Response:
    chunks = 0
    size = 0
    async for chunk in request.stream():
        if chunk:
            chunks += 1
            size += len(chunk)
    return JSONResponse({"chunks": chunks, "size": size})


async def echo(request: Request) -> Response:
    return Response(await request.body(), media_type="application/octet-stream")


async def refuse_upload(request: Request) -> Response:
    return PlainTextResponse("too big", status_code=413)


gate: dict[str, asyncio.Event] = {}


async def stream(request: Request) -> Response:
    async def body():
        yield b"first\n"
        step = gate.get("step")
        if step is not None:  # the test lets the rest go once it has read the first chunk
            await asyncio.wait_for(step.wait(), 5)
        for i in range(3):
            yield f"part {i}\n".encode()

    return StreamingResponse(body(), media_type="text/plain")


async def length(request: Request) -> Response:
    return Response(b"0123456789", headers={"x-kind": "fixed"})


async def starlette_echo(ws) -> None:
    await ws.accept()
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await ws.send_text(message["text"])
        else:
            await ws.send_bytes(message["bytes"])


site = Starlette(routes=[
    Route("/", home),
    Route("/upload", upload, methods=["POST"]),
    Route("/echo", echo, methods=["POST", "PUT"]),
    Route("/refuse", refuse_upload, methods=["POST"]),
    Route("/stream", stream),
    Route("/length", length),
    WebSocketRoute("/echo", starlette_echo),
])


async def failing_startup(scope, receive, send):
    """A bare ASGI app whose lifespan startup fails (``fastws serve`` must say so and exit)."""
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})


not_an_app = 42
