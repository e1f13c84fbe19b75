"""An idle connection that negotiated permessage-deflate holds no zlib context:
contexts are created by the first message that needs one (both directions)."""

from __future__ import annotations

import asyncio

import websockets

import fastws


async def test_zlib_contexts_are_created_lazily(serve):
    conns = []

    class Keep(fastws.Listener):
        def on_connect(self, ws):
            conns.append(ws)

        def on_message(self, ws, msg):
            ws.send(msg)

    server = await serve(Keep, compression=True)
    async with websockets.connect(server.url, compression="deflate") as peer:
        for _ in range(200):
            if conns:
                break
            await asyncio.sleep(0.005)
        (ws,) = conns
        assert ws.compression is not None  # negotiated
        assert ws.compression.contexts_allocated == 0  # but nothing allocated while idle
        await peer.send("x" * 1000)  # compressed by the peer: the server needs its inflater
        assert await peer.recv() == "x" * 1000  # and its deflater for the reply
        assert ws.compression.contexts_allocated == 2


async def test_many_idle_compressed_connections_allocate_no_context(serve):
    conns = []

    class Keep(fastws.Listener):
        def on_connect(self, ws):
            conns.append(ws)

    server = await serve(Keep, compression=True)
    clients = [await fastws.connect(server.url, compression=True) for _ in range(50)]
    for _ in range(200):
        if len(conns) == 50:
            break
        await asyncio.sleep(0.005)
    assert len(conns) == 50
    assert all(c.compression is not None and c.compression.contexts_allocated == 0 for c in conns)
    assert all(c.compression is not None and c.compression.contexts_allocated == 0 for c in clients)
    for c in clients:
        await c.close()
