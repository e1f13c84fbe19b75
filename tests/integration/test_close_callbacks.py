"""Connection.add_close_callback: called once when the TCP connection is gone."""

from __future__ import annotations

import asyncio

import pytest

import fastws


async def test_close_callbacks_run_once_when_the_connection_is_gone(serve):
    calls: list = []
    conns: list = []

    class Keep(fastws.Listener):
        def on_connect(self, ws):
            conns.append(ws)
            ws.add_close_callback(lambda: calls.append("a"))
            ws.add_close_callback(lambda: calls.append("b"))

    server = await serve(Keep)
    client = await fastws.connect(server.url)
    for _ in range(200):
        if conns:
            break
        await asyncio.sleep(0.005)
    assert calls == []
    await client.close()
    await asyncio.wait_for(conns[0].wait_closed(), 5)
    await asyncio.sleep(0)
    assert calls == ["a", "b"]
    conns[0].add_close_callback(lambda: calls.append("late"))  # already gone: at once
    assert calls == ["a", "b", "late"]


@pytest.mark.allow_errors
async def test_a_failing_close_callback_is_logged_and_the_others_run(serve, caplog):
    calls: list = []

    class Keep(fastws.Listener):
        def on_connect(self, ws):
            ws.add_close_callback(lambda: 1 / 0)
            ws.add_close_callback(lambda: calls.append("ran"))

    server = await serve(Keep)
    client = await fastws.connect(server.url)
    await client.close()
    for _ in range(200):
        if calls:
            break
        await asyncio.sleep(0.01)
    assert calls == ["ran"]
    assert any("close callback" in r.getMessage() for r in caplog.records)



@pytest.mark.parametrize("app", ["handler", "listener"])
async def test_a_closed_connection_is_freed_without_the_garbage_collector(serve, app):
    """No reference cycle is left behind a closed connection: the Connection, its socket
    transport and its Request go as soon as nothing refers to them (the GC finds nothing)."""
    import base64
    import gc
    import os

    from tests.conftest import EchoListener, echo_handler

    server = await serve(echo_handler if app == "handler" else EchoListener)
    host, port = server.address

    async def upgrade_and_close() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
        writer.write(b"\x88\x82\x00\x00\x00\x00\x03\xe8")  # CLOSE 1000, zero mask key
        assert await asyncio.wait_for(reader.read(), 5) == b"\x88\x02\x03\xe8"  # the reply, then EOF
        writer.close()
        await writer.wait_closed()

    for _ in range(3):  # warm up: first-use caches are not garbage
        await upgrade_and_close()
    await asyncio.sleep(0.05)
    gc.collect()
    gc.disable()
    try:
        for _ in range(5):
            await upgrade_and_close()
        await asyncio.sleep(0.05)  # connection_lost and the handlers' ends run
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = sorted({type(o).__name__ for o in gc.garbage
                       if isinstance(o, (fastws.Connection, fastws.Request)) or type(o).__name__ == "SocketTransport"})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert left == []
