"""Flow control against peers that do not read: ``await ws.send()`` blocks,
the listener API stops reading, and the server's write buffer stays bounded."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

import fastws
from tests.conftest import MS, EchoListener
from tests.helpers import build_frame
from tests.integration.test_bad_input import (  # noqa: F401  (fixtures)
    TIMEOUT,
    asyncio_read_bug,
    open_raw_ws,
    start_server,
)

WRITE_LIMIT = 65536


def small_buffer_socket(server, size: int = 32768) -> socket.socket:
    """A connected, non-blocking client socket with small kernel buffers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    sock.connect(server.address)
    sock.setblocking(False)
    return sock


async def sample_write_buffer(server, seconds: float, every: float = 0.01) -> int:
    """The largest write-buffer size of any server connection seen over ``seconds``."""
    top = 0
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        for conn in server.connections:
            top = max(top, conn.buffered_amount)
        await asyncio.sleep(every)
    return top


@pytest.mark.parametrize("size", [32 * 1024, 256 * 1024], ids=["32KiB", "256KiB"])
async def test_handler_send_blocks_on_a_peer_that_does_not_read(start_server, size):
    n = 100_000_000 // size  # ~100 MB in all: far more than socket buffers can hold
    big = b"\xab" * size
    progress = {"sent": 0}
    finished = asyncio.get_running_loop().create_future()

    async def handler(ws):
        try:
            for _ in range(n):
                await ws.send(big)
                progress["sent"] += 1
        finally:
            finished.set_result(progress["sent"])

    server = await start_server(handler, write_limit=WRITE_LIMIT)
    raw = await open_raw_ws(server, sock=small_buffer_socket(server))
    top = await sample_write_buffer(server, 0.6)
    stuck = progress["sent"]
    assert stuck < n, "every send completed although the peer reads nothing"
    assert not finished.done()
    top = max(top, await sample_write_buffer(server, 0.3))
    assert progress["sent"] == stuck, "sends went on while the peer still read nothing"
    # bounded: the high-water mark plus the message that crossed it
    assert top <= 2 * WRITE_LIMIT + size + 64, f"write buffer grew to {top} bytes"

    # the peer reads ~2 MB: the handler gets going again
    got = 0
    while got < 2_000_000:
        _, opcode, data = await raw.read_frame()
        assert opcode == 2 and data == big
        got += len(data)
    deadline = asyncio.get_running_loop().time() + TIMEOUT
    while progress["sent"] <= stuck and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    assert progress["sent"] > stuck

    # the peer goes away: the blocked send ends and the handler finishes
    raw.close()
    assert await asyncio.wait_for(finished, TIMEOUT) < n


async def test_listener_stops_reading_when_peer_does_not_read(start_server):
    server = await start_server(EchoListener, write_limit=WRITE_LIMIT)
    raw = await open_raw_ws(server, sock=small_buffer_socket(server))
    count = 1536
    size = 16 * 1024
    # 24 MiB; on this machine's kernel the peer's writes stall after about 6 MiB
    frames = [build_frame(2, struct.pack("!I", i) + bytes(size - 4)) for i in range(count)]
    written = {"n": 0}

    async def writer():
        for frame in frames:
            raw.writer.write(frame)
            await raw.writer.drain()
            written["n"] += 1

    task = asyncio.ensure_future(writer())
    paused_seen = False
    top = 0
    loop = asyncio.get_running_loop()
    end = loop.time() + 1.0
    while loop.time() < end:
        for conn in server.connections:
            top = max(top, conn.buffered_amount)
            if conn.transport is not None and not conn.transport.is_reading():
                paused_seen = True
        await asyncio.sleep(0.005)
    assert paused_seen, "the server never paused reading"
    assert not task.done(), "the peer wrote 24 MiB although neither side read"
    assert written["n"] < count
    # a read can echo at most one scratch buffer (256 KiB) past the limit
    assert top <= WRITE_LIMIT + 2 * (256 * 1024) + 4096, f"write buffer grew to {top} bytes"

    # the peer reads again: every message comes back, in order, and reading resumes
    for i in range(count):
        _, opcode, data = await raw.read_frame(timeout=10_000 * MS)
        assert opcode == 2 and len(data) == size
        assert struct.unpack("!I", data[:4])[0] == i
    await asyncio.wait_for(task, TIMEOUT)
    (conn,) = server.connections
    assert conn.transport.is_reading()
    raw.close()


async def test_listener_on_drain_called(start_server):
    drained = asyncio.get_running_loop().create_future()

    class Flood(fastws.Listener):
        def on_connect(self, ws):
            for _ in range(64):
                ws.send(b"\x00" * 65536)  # 4 MiB: above write_limit, below max_write_buffer

        def on_drain(self, ws):
            if not drained.done():
                drained.set_result(ws.buffered_amount)

    server = await start_server(Flood, write_limit=WRITE_LIMIT)
    raw = await open_raw_ws(server, sock=small_buffer_socket(server))
    await asyncio.sleep(0.1)
    assert not drained.done()
    for _ in range(64):
        _, opcode, data = await raw.read_frame()
        assert opcode == 2 and len(data) == 65536
    assert await asyncio.wait_for(drained, TIMEOUT) <= WRITE_LIMIT
    raw.close()


async def test_listener_over_max_write_buffer_is_dropped(start_server):
    errors = []

    class Flood(fastws.Listener):
        def on_connect(self, ws):
            try:
                for _ in range(64):
                    ws.send(b"\x00" * (1 << 20))  # 64 MiB for a peer that reads nothing
            except fastws.BufferFull as exc:  # the listener may see it...
                errors.append(exc)
                raise  # ...and fastws drops the connection

    server = await start_server(Flood, write_limit=WRITE_LIMIT, max_write_buffer=4 << 20)
    raw = await open_raw_ws(server, sock=small_buffer_socket(server))
    assert errors and isinstance(errors[0], fastws.BufferFull)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while server.connections and loop.time() < deadline:
        await asyncio.sleep(0.01)
    assert not server.connections, "the flooding connection was not dropped"
    raw.close()


async def test_buffered_amount_drains(start_server):
    async def handler(ws):
        for _ in range(20):
            await ws.send(b"\x01" * 100_000)
        await ws.recv()

    server = await start_server(handler, write_limit=WRITE_LIMIT)
    raw = await open_raw_ws(server, sock=small_buffer_socket(server))
    for _ in range(20):
        _, opcode, data = await raw.read_frame()
        assert len(data) == 100_000
    await asyncio.sleep(0.05)
    (conn,) = server.connections
    assert conn.buffered_amount == 0
    raw.close()
