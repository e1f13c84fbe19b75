"""Engine counters (Endpoint.stats()): C-level counts read at scrape time."""

from __future__ import annotations

import asyncio

import websockets

import fastws
from fastws import broadcast
from tests.helpers import build_frame


async def echo(ws):
    async for m in ws:
        await ws.send(m)


async def _raw(server, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(*server.address)
    writer.write(data)
    out = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return out


async def _settle(cond, n=200):
    for _ in range(n):
        if cond():
            return
        await asyncio.sleep(0.01)


async def test_counts_connections_messages_and_close_codes(serve):
    server = await serve(echo)
    for _ in range(3):
        async with fastws.connect(server.url) as c:
            for _ in range(4):
                await c.send("x" * 10)
                assert await c.recv() == "x" * 10
    async with websockets.connect(server.url) as peer:
        await peer.send(b"\x01\x02")
        await peer.recv()
    await _settle(lambda: server.endpoint.stats()["closed"] == 4)
    st = server.endpoint.stats()
    assert st["attempted"] == 4 and st["established"] == 4 and st["failed"] == 0
    assert st["closed"] == 4 and st["active"] == 0
    assert st["messages_received"] == 13 and st["bytes_received"] == 12 * 10 + 2
    assert st["messages_sent"] == 13 and st["bytes_sent"] == 12 * 10 + 2
    assert st["close_codes"] == {"1000": 4}
    assert st["latency"]["count"] == 13  # one sample per handled message
    assert st["duration"]["count"] == 4
    assert st["duration"]["buckets"][-1] == (float("inf"), 4)


async def test_counts_refusals_by_status_and_protocol_errors(serve):
    server = await serve(echo)
    # a plain HTTP request to a WebSocket route: 426, not an upgrade attempt
    assert (await _raw(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(b"HTTP/1.1 426")
    # an upgrade with a bad version: 426 too, counted as a failed attempt
    bad = (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n")
    assert (await _raw(server, bad)).startswith(b"HTTP/1.1 426")
    # a protocol violation after the handshake: an unmasked frame closes with 1002
    good = bad.replace(b"Version: 8", b"Version: 13")
    reply = await _raw(server, good + build_frame(1, b"hi", mask=False))
    assert b"\r\n\r\n\x88\x1c\x03\xea" in reply  # CLOSE 1002 with its reason
    await _settle(lambda: server.endpoint.stats()["closed"] == 1)
    st = server.endpoint.stats()
    assert st["refused"] == {"426": 2}
    assert st["attempted"] == 2 and st["failed"] == 1 and st["established"] == 1
    assert st["errors"] == 1 and st["close_codes"] == {"1002": 1}


async def test_counts_broadcasts_and_auto_responses(serve):
    members = []

    class Member(fastws.Listener):
        def on_connect(self, ws):
            members.append(ws)
            ws.set_auto_response("ping", "pong")

        def on_message(self, ws, msg):
            broadcast(members, msg.data())

    server = await serve(Member)
    clients = [await fastws.connect(server.url) for _ in range(3)]
    await clients[0].send("hello")
    assert [await c.recv() for c in clients] == ["hello"] * 3
    await clients[1].send("ping")
    assert await clients[1].recv() == "pong"
    st = server.endpoint.stats()
    assert st["broadcasts"] == 3 and st["auto_responses"] == 1
    assert st["messages_received"] == 2
    for c in clients:
        await c.close()
    # the client side counts too
    assert clients[0].endpoint.stats()["messages_received"] == 1


async def test_histograms_can_be_turned_off(serve):
    server = await serve(echo)
    server.endpoint.stats_enabled = False
    async with fastws.connect(server.url) as c:
        await c.send("a")
        await c.recv()
    await _settle(lambda: server.endpoint.stats()["closed"] == 1)
    st = server.endpoint.stats()
    assert st["messages_received"] == 1  # counters stay on
    assert st["latency"]["count"] == 0 and st["duration"]["count"] == 0


async def test_async_refusal_reads_on_and_sees_the_client_leave(serve):
    """An asynchronous accept hook that answers with a Response: the server half-closes and keeps
    reading, so the connection ends when the client leaves, not at the closing timeout."""

    class App:
        @staticmethod
        async def fastws_accept(ws, request):
            await asyncio.sleep(0)
            return fastws.Response(403, "Forbidden")

    server = await serve(App(), close_timeout=60)
    reader, writer = await asyncio.open_connection(*server.address)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    reply = await asyncio.wait_for(reader.read(), 5)
    assert reply.startswith(b"HTTP/1.1 403") and reply.endswith(b"Forbidden")
    writer.close()
    await _settle(lambda: not server.connections, 500)
    assert not server.connections
    assert server.endpoint.stats()["refused"] == {"403": 1}
