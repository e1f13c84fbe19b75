"""Large message buffers are pooled and reused after dispatch: a buffer the
application kept must never be reused, and a reused one must not carry a stale
hash or old bytes."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest
import websockets

import fastws
from fastws import _frames


@pytest.mark.parametrize("compression", [None, "deflate"])
async def test_kept_messages_stay_intact_while_buffers_are_reused(serve, compression):
    kept: list[tuple[bytes, bytes, int]] = []

    class Keep(fastws.Listener):
        def on_message(self, ws, msg):
            data = msg.bytes()
            if len(kept) < 3:  # keep the first three: their buffers must not come back
                kept.append((data, hashlib.sha256(data).digest(), hash(data)))
            else:
                hash(data)  # cache a hash on a buffer that will be reused
            ws.send(msg)

    server = await serve(Keep, compression=compression is not None, max_size=4 << 20)
    async with websockets.connect(server.url, max_size=None, compression=compression) as ws:
        for i in range(24):
            payload = os.urandom(70_000 + 4_096 * (i % 5))
            await ws.send(payload)
            assert await asyncio.wait_for(ws.recv(), 10) == payload, i
    assert len(kept) == 3
    for data, digest, h in kept:
        assert hashlib.sha256(data).digest() == digest
        assert hash(data) == h == hash(bytes(bytearray(data)))


async def test_reused_buffer_gets_a_fresh_hash(serve):
    seen: list[tuple[int, bytes]] = []

    class Hashes(fastws.Listener):
        def on_message(self, ws, msg):
            data = msg.bytes()
            seen.append((hash(data), bytes(bytearray(data[:64]))))
            ws.send(b"ok")

    server = await serve(Hashes, max_size=4 << 20)
    payloads = [bytes([i]) * 100_000 for i in range(6)]
    async with websockets.connect(server.url, max_size=None, compression=None) as ws:
        for p in payloads:
            await ws.send(p)
            assert await asyncio.wait_for(ws.recv(), 10) == b"ok"
    for (h, head), p in zip(seen, payloads, strict=True):
        assert h == hash(p) and head == p[:64]
    assert _frames.pool_size() >= 1  # the buffers did go back to the pool
