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
from tests.integration.test_bad_input import (
    TIMEOUT,
    open_raw_ws,
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


def shrink_send_buffer(ws, size: int = 32768) -> None:
    """Give the server side of ``ws`` a small kernel send buffer, so that a peer that does not
    read fills it at once (left to autotuning it grows by megabytes, slowly)."""
    ws.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


class SmallBufferEcho(EchoListener):
    def on_connect(self, ws):
        shrink_send_buffer(ws)


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
async def test_handler_send_blocks_on_a_peer_that_does_not_read(serve, size):
    n = 100_000_000 // size  # ~100 MB in all: far more than socket buffers can hold
    big = b"\xab" * size
    progress = {"sent": 0}
    finished = asyncio.get_running_loop().create_future()

    async def handler(ws):
        shrink_send_buffer(ws)
        try:
            for _ in range(n):
                await ws.send(big)
                progress["sent"] += 1
        finally:
            finished.set_result(progress["sent"])

    server = await serve(handler, write_limit=WRITE_LIMIT)
    raw = await open_raw_ws(server, sock=small_buffer_socket(server))
    top = await sample_write_buffer(server, 0.4)
    stuck = progress["sent"]
    assert stuck < n, "every send completed although the peer reads nothing"
    assert not finished.done()
    top = max(top, await sample_write_buffer(server, 0.2))
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


async def test_listener_stops_reading_when_peer_does_not_read(serve):
    server = await serve(SmallBufferEcho, write_limit=WRITE_LIMIT)
    raw = await open_raw_ws(server, sock=small_buffer_socket(server))
    count = 1024
    size = 16 * 1024
    frames = [build_frame(2, struct.pack("!I", i) + bytes(size - 4)) for i in range(count)]  # 16 MiB
    written = {"n": 0}

    async def writer():
        for frame in frames:
            raw.writer.write(frame)
            await raw.writer.drain()
            written["n"] += 1

    task = asyncio.ensure_future(writer())
    loop = asyncio.get_running_loop()

    async def watch(seconds: float, until_paused: bool) -> tuple[bool, int]:
        paused, top = False, 0
        end = loop.time() + seconds
        while loop.time() < end and not (until_paused and paused):
            for conn in server.connections:
                top = max(top, conn.buffered_amount)
                if conn.transport is not None and not conn.transport.is_reading():
                    paused = True
            await asyncio.sleep(0.005)
        return paused, top

    paused_seen, top = await watch(5.0, until_paused=True)
    assert paused_seen, "the server never paused reading"
    _, top2 = await watch(0.3, until_paused=False)
    assert not task.done(), "the peer wrote 16 MiB although neither side read"
    assert written["n"] < count
    # a read can echo at most one scratch buffer (256 KiB) past the limit
    top = max(top, top2)
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


async def test_listener_on_drain_called(serve):
    drained = asyncio.get_running_loop().create_future()

    class Flood(fastws.Listener):
        def on_connect(self, ws):
            for _ in range(64):
                ws.send(b"\x00" * 65536)  # 4 MiB: above write_limit, below max_write_buffer

        def on_drain(self, ws):
            if not drained.done():
                drained.set_result(ws.buffered_amount)

    server = await serve(Flood, write_limit=WRITE_LIMIT)
    raw = await open_raw_ws(server, sock=small_buffer_socket(server))
    await asyncio.sleep(0.1)
    assert not drained.done()
    for _ in range(64):
        _, opcode, data = await raw.read_frame()
        assert opcode == 2 and len(data) == 65536
    assert await asyncio.wait_for(drained, TIMEOUT) <= WRITE_LIMIT
    raw.close()


async def test_listener_over_max_write_buffer_is_dropped(serve):
    errors = []

    class Flood(fastws.Listener):
        def on_connect(self, ws):
            try:
                for _ in range(64):
                    ws.send(b"\x00" * (1 << 20))  # 64 MiB for a peer that reads nothing
            except fastws.BufferFull as exc:  # the listener may see it...
                errors.append(exc)
                raise  # ...and fastws drops the connection

    server = await serve(Flood, write_limit=WRITE_LIMIT, max_write_buffer=4 << 20)
    raw = await open_raw_ws(server, sock=small_buffer_socket(server))
    assert errors and isinstance(errors[0], fastws.BufferFull)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while server.connections and loop.time() < deadline:
        await asyncio.sleep(0.01)
    assert not server.connections, "the flooding connection was not dropped"
    raw.close()


async def test_buffered_amount_drains(serve):
    async def handler(ws):
        for _ in range(20):
            await ws.send(b"\x01" * 100_000)
        await ws.recv()

    server = await serve(handler, write_limit=WRITE_LIMIT)
    raw = await open_raw_ws(server, sock=small_buffer_socket(server))
    for _ in range(20):
        _, opcode, data = await raw.read_frame()
        assert len(data) == 100_000
    await asyncio.sleep(0.05)
    (conn,) = server.connections
    assert conn.buffered_amount == 0
    raw.close()
