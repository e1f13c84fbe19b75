"""fastws.broadcast: one frame for many connections, corked to the end of the loop turn,
in order with each connection's other sends; and the engine-level auto response."""

from __future__ import annotations

import asyncio
import time

import pytest
import websockets

import fastws
from fastws import broadcast


class Hub(fastws.Listener):
    """Every connection joins one set; a message is broadcast to all, then the sender gets 'after'."""

    def __init__(self, members, seen, exclude_sender=False):
        self.members = members
        self.seen = seen
        self.exclude_sender = exclude_sender

    def on_connect(self, ws):
        self.members.append(ws)

    def on_message(self, ws, msg):
        self.seen.append(msg.data())
        data = msg.data()
        if data == "slow?":
            ws.send(repr(len(broadcast(self.members, "x" * 1000, max_buffer=1))))
            return
        broadcast(self.members, data, exclude=ws if self.exclude_sender else None)
        ws.send("after")

    def on_close(self, ws, code, reason):
        self.members.remove(ws)


def hub_app(members, seen, **kw):
    def accept(ws, request):
        return fastws.Accept(listener=Hub(members, seen, **kw))

    class App:
        fastws_accept = staticmethod(accept)

    return App()


async def test_broadcast_reaches_everyone_in_order_with_other_sends(serve):
    members, seen = [], []
    server = await serve(hub_app(members, seen))
    clients = [await fastws.connect(server.url) for _ in range(5)]
    await clients[0].send("hello")
    assert [await c.recv() for c in clients] == ["hello"] * 5
    assert await clients[0].recv() == "after"  # the sender's own reply leaves after the broadcast
    await clients[1].send(b"\x00\x01bin")
    assert [await c.recv() for c in clients] == [b"\x00\x01bin"] * 5  # BINARY stays BINARY
    assert await clients[1].recv() == "after"
    for c in clients:
        await c.close()


async def test_exclude_and_closed_connections_are_skipped(serve):
    members, seen = [], []
    server = await serve(hub_app(members, seen, exclude_sender=True))
    a, b, c = [await fastws.connect(server.url) for _ in range(3)]
    await c.close()
    for _ in range(100):
        if len(members) == 2:
            break
        await asyncio.sleep(0.01)
    await a.send("one")
    assert await a.recv() == "after"  # not "one": excluded
    assert await b.recv() == "one"
    await a.close()
    await b.close()


async def test_large_broadcast_is_sent_by_reference_and_intact(serve):
    members, seen = [], []
    server = await serve(hub_app(members, seen), max_size=4 << 20)
    clients = [await fastws.connect(server.url, max_size=4 << 20) for _ in range(3)]
    payload = bytes(range(256)) * 4096  # 1 MiB
    await clients[2].send(payload)
    got = [await c.recv() for c in clients]
    assert all(g == payload for g in got)
    assert await clients[2].recv() == "after"
    for c in clients:
        await c.close()


async def test_max_buffer_returns_the_skipped_connections(serve):
    members, seen = [], []
    server = await serve(hub_app(members, seen))
    a, b = [await fastws.connect(server.url) for _ in range(2)]
    await a.send("slow?")
    assert await a.recv() == "2"  # a 1-byte cap: nobody can take a 1000-byte frame
    await a.close()
    await b.close()


async def test_broadcast_to_a_third_party_client_with_compression(serve):
    """A browser-like peer that negotiated permessage-deflate gets uncompressed broadcast frames."""
    members, seen = [], []
    server = await serve(hub_app(members, seen), compression=True)
    async with websockets.connect(server.url, compression="deflate") as peer:
        own = await fastws.connect(server.url)
        for _ in range(100):
            if len(members) == 2:
                break
            await asyncio.sleep(0.01)
        await own.send("to all")
        assert await peer.recv() == "to all"
        assert await own.recv() == "to all"
        await own.close()


async def test_broadcast_rejects_what_is_not_a_server_connection(serve):
    with pytest.raises(TypeError):
        broadcast([object()], "x")
    members, seen = [], []
    server = await serve(hub_app(members, seen))
    client = await fastws.connect(server.url)
    with pytest.raises(ValueError):
        broadcast([client], "x")
    await client.close()


class Auto(fastws.Listener):
    def __init__(self, seen):
        self.seen = seen

    def on_connect(self, ws):
        ws.set_auto_response("ping", "pong")
        self.seen.append(ws)

    def on_message(self, ws, msg):
        self.seen.append(msg.text())
        if msg.text() == "off":
            ws.set_auto_response(None)
        ws.send("echo:" + msg.text())


async def test_auto_response_answers_without_the_listener(serve):
    seen = []

    class App:
        @staticmethod
        def fastws_accept(ws, request):
            return fastws.Accept(listener=Auto(seen))

    server = await serve(App())
    async with websockets.connect(server.url) as peer:
        before = time.time()
        await peer.send("ping")
        assert await peer.recv() == "pong"
        conn = seen[0]
        assert conn.auto_response_timestamp is not None and conn.auto_response_timestamp >= before - 1
        assert seen[1:] == []  # the listener never saw it
        await peer.send(b"ping")  # BINARY is not matched
        assert await peer.recv() == "echo:ping"
        await peer.send("pingx")
        assert await peer.recv() == "echo:pingx"
        await peer.send("off")
        assert await peer.recv() == "echo:off"
        await peer.send("ping")
        assert await peer.recv() == "echo:ping"


async def test_auto_response_validates_its_arguments(serve):
    seen = []

    class App:
        @staticmethod
        def fastws_accept(ws, request):
            return fastws.Accept(listener=Auto(seen))

    server = await serve(App())
    client = await fastws.connect(server.url)
    await client.send("x")
    assert await client.recv() == "echo:x"
    conn = seen[0]
    assert conn.auto_response_timestamp is None
    with pytest.raises(TypeError):
        conn.set_auto_response("a")
    with pytest.raises(ValueError):
        conn.set_auto_response("", "b")
    with pytest.raises(ValueError):
        conn.set_auto_response("a", "b" * 5000)
    await client.close()
