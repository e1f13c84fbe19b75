"""The FastAPI app benchmarks/bench_asgi.py serves on every ASGI server: a WebSocket echo and a
plain JSON endpoint."""

from __future__ import annotations

from fastapi import FastAPI, WebSocket

app = FastAPI()


@app.get("/json")
async def json_endpoint() -> dict:
    return {"message": "Hello, World!"}


@app.websocket("/ws")
async def echo(ws: WebSocket) -> None:
    await ws.accept()
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await ws.send_text(message["text"])
        else:
            await ws.send_bytes(message["bytes"])
