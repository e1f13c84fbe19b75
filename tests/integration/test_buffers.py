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
from tests.conftest import echo_handler
from tests.helpers import build_frame, raw_connect, read_http_response, upgrade_request


async def _echo_round_trips(url: str, sizes: list[int], compression: str | None = None) -> None:
    """Send random payloads of these sizes one at a time; each must come back unchanged."""
    async with websockets.connect(url, max_size=None, compression=compression) as ws:
        for i, size in enumerate(sizes):
            payload = os.urandom(size)
            await ws.send(payload)
            assert await asyncio.wait_for(ws.recv(), 10) == payload, i


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
    await _echo_round_trips(server.url, [70_000 + 4_096 * (i % 5) for i in range(24)], compression)
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


async def test_the_most_recently_freed_buffer_is_reused_first(serve):
    """The pool is a stack: a steady stream of large messages keeps reusing the one buffer
    still in the CPU cache, instead of cycling through every pooled buffer."""
    ids: list[int] = []

    class Ids(fastws.Listener):
        def on_message(self, ws, msg):
            ids.append(id(msg.bytes()))  # the pooled bytes object itself (no copy)
            ws.send(b"ok")

    server = await serve(Ids, max_size=4 << 20)
    _frames.pool_trim(if_idle=False)
    size = 200_000
    key = os.urandom(4)
    payload = os.urandom(size)
    frame = build_frame(2, payload, key=key)
    # five peers each send half a frame, so five message buffers are live at once
    peers = []
    for _ in range(5):
        reader, writer = await raw_connect(server, upgrade_request())
        status, _, _ = await read_http_response(reader)
        assert status == 101
        writer.write(frame[: size // 2])
        await writer.drain()
        peers.append((reader, writer))
    await asyncio.sleep(0.3)
    for reader, writer in peers:
        writer.write(frame[size // 2:])
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(4), 10) == b"\x82\x02ok"
    assert _frames.pool_size() >= 2, "the premise: several buffers wait in the pool"
    ids.clear()
    reader, writer = peers[-1]
    for _ in range(10):
        writer.write(frame)
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(4), 10) == b"\x82\x02ok"
    assert len(ids) == 10 and len(set(ids)) == 1, ids
    for _, writer in peers:
        writer.close()


async def test_handler_messages_are_reused_only_once_dropped(serve):
    """With ``async for``, a large payload the handler dropped is reused for a later message;
    one it kept (in a list, behind a memoryview) never is, and reads back unchanged."""
    kept: list[tuple[object, bytes]] = []

    async def handler(ws):
        i = 0
        async for message in ws:
            if i % 4 == 0:
                kept.append((message, hashlib.sha256(message).digest()))
            elif i % 4 == 1:
                kept.append((memoryview(message), hashlib.sha256(message).digest()))
            await ws.send(message)
            i += 1

    server = await serve(handler, max_size=4 << 20)
    _frames.pool_trim(if_idle=False)
    await _echo_round_trips(server.url, [100_000 + 512 * (i % 3) for i in range(40)])
    assert len(kept) == 20
    for obj, digest in kept:
        assert hashlib.sha256(obj).digest() == digest
    # the payloads the handler dropped went back to the buffer pool (none did before)
    for _ in range(500):
        if _frames.pool_size():
            break
        await asyncio.sleep(0.01)
    assert _frames.pool_size() >= 1


async def test_a_quiet_connection_stops_pinning_its_last_payload(serve):
    """The last large payload a handler received stays with its connection (the handler may
    still hold it) until the connection has been quiet for about a second; then, once the
    handler has dropped it, it goes back to the buffer pool while the connection stays open."""
    dropped = asyncio.Event()
    done = asyncio.Event()

    async def handler(ws):
        message = await ws.recv()
        await ws.send(message)
        del message
        dropped.set()
        await done.wait()  # stay open and quiet

    server = await serve(handler, max_size=4 << 20)
    # The server frees idle pooled buffers when the monotonic clock crosses a multiple of 10 s;
    # start early in such a period so that the release (1-2 s from now) is seen before a trim.
    loop = asyncio.get_running_loop()
    while not 0.2 <= loop.time() % 10 < 6.0:
        await asyncio.sleep(0.05)
    _frames.pool_trim(if_idle=False)
    payload = os.urandom(200_000)
    async with websockets.connect(server.url, max_size=None, compression=None) as ws:
        await ws.send(payload)
        assert await asyncio.wait_for(ws.recv(), 10) == payload
        await asyncio.wait_for(dropped.wait(), 10)
        assert _frames.pool_size() == 0  # not yet: the connection keeps it for a while
        for _ in range(400):
            if _frames.pool_size():
                break
            await asyncio.sleep(0.01)
        assert _frames.pool_size() == 1
        done.set()


async def test_large_text_buffers_go_back_to_the_pool_once_decoded(serve):
    """A large TEXT message reaches ``async for`` as a str: its bytes buffer is free as soon
    as it has been decoded, and the next large message can be read into it."""
    server = await serve(echo_handler, max_size=4 << 20)
    _frames.pool_trim(if_idle=False)
    async with websockets.connect(server.url, max_size=None, compression=None) as ws:
        for i in range(6):
            text = f"{i}" * 200_000
            await ws.send(text)
            assert await asyncio.wait_for(ws.recv(), 10) == text
        assert _frames.pool_size() >= 1
