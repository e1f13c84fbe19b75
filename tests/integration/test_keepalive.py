"""Keepalive and idle timers: pings to silent peers, 1011 when no PONG comes
back, 1001 after idle_timeout, and peers that do answer stay connected."""

from __future__ import annotations

import asyncio
import struct

import aiohttp
import websockets

from tests.conftest import MS, EchoListener, echo_handler
from tests.helpers import build_frame
from tests.integration.test_bad_input import (  # noqa: F401  (app: a fixture)
    TIMEOUT,
    app,
    open_raw_ws,
)


async def test_silent_client_receives_ping(serve, app):
    server = await serve(app, ping_interval=0.2, ping_timeout=5.0)
    raw = await open_raw_ws(server)
    loop = asyncio.get_running_loop()
    started = loop.time()
    _, opcode, payload = await raw.read_frame(timeout=3000 * MS)
    assert opcode == 9
    assert len(payload) <= 125
    assert loop.time() - started >= 0.1, "pinged before ping_interval of silence"
    # answering keeps the connection open and usable
    await raw.send(build_frame(10, payload))
    await raw.send(build_frame(1, b"after pong"))
    while True:
        _, opcode, data = await raw.read_frame()
        if opcode != 9:
            break
        await raw.send(build_frame(10, data))
    assert (opcode, data) == (1, b"after pong")
    raw.close()


async def test_unanswered_ping_closes_1011(serve, app):
    server = await serve(app, ping_interval=0.2, ping_timeout=0.3, close_timeout=0.2)
    raw = await open_raw_ws(server)
    opcodes = []
    while True:
        _, opcode, payload = await raw.read_frame(timeout=3000 * MS)
        opcodes.append(opcode)
        if opcode == 8:
            break
    assert opcodes[0] == 9
    assert struct.unpack("!H", payload[:2])[0] == 1011
    # then the TCP connection goes away (at close_timeout at the latest)
    assert await raw.read_eof(timeout=3000 * MS) == b""
    raw.close()


async def test_answering_client_stays_connected(serve, app):
    """websockets answers the server's pings: the connection outlives several ping_timeouts."""
    server = await serve(app, ping_interval=0.1, ping_timeout=0.2)
    async with websockets.connect(server.url, compression=None, ping_interval=None) as ws:
        for i in range(3):
            await asyncio.sleep(0.1)
            await ws.send(f"tick {i}")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == f"tick {i}"
        # it also stayed connected while completely silent, through several ping cycles
        await asyncio.sleep(0.5)
        await ws.send("still here")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "still here"


async def test_aiohttp_client_answers_pings(serve):
    """aiohttp answers PINGs from inside receive(): keep one pending, stay connected."""
    server = await serve(echo_handler, ping_interval=0.1, ping_timeout=0.2)
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(server.url, autoping=True, heartbeat=None) as ws:
            receiving = asyncio.ensure_future(ws.receive(timeout=TIMEOUT))
            await asyncio.sleep(0.5)
            assert not receiving.done(), "the connection closed although the client answered pings"
            await ws.send_str("alive")
            msg = await receiving
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.TEXT, "alive")


async def test_keepalive_latency_is_measured(serve):
    server = await serve(EchoListener, ping_interval=0.1, ping_timeout=1.0)
    async with websockets.connect(server.url, compression=None, ping_interval=None):
        await asyncio.sleep(0.3)
        (conn,) = server.connections
        assert conn.latency > 0


async def test_idle_timeout_closes_1001(serve, app):
    server = await serve(app, ping_interval=None, idle_timeout=0.3, close_timeout=0.2)
    raw = await open_raw_ws(server)
    loop = asyncio.get_running_loop()
    started = loop.time()
    code, _ = await raw.read_close(timeout=3000 * MS)
    assert code == 1001
    assert loop.time() - started >= 0.2, "closed before idle_timeout"
    raw.close()


async def test_idle_timeout_reset_by_traffic(serve):
    server = await serve(echo_handler, ping_interval=None, idle_timeout=0.3)
    async with websockets.connect(server.url, compression=None, ping_interval=None) as ws:
        for i in range(6):  # 0.6 s of traffic every 0.1 s: longer than idle_timeout
            await ws.send(str(i))
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == str(i)
            await asyncio.sleep(0.1)
        assert ws.state is websockets.protocol.State.OPEN


async def test_idle_timeout_with_websockets_client(serve):
    server = await serve(echo_handler, ping_interval=None, idle_timeout=0.3, close_timeout=0.2)
    async with websockets.connect(server.url, compression=None, ping_interval=None) as ws:
        try:
            await asyncio.wait_for(ws.recv(), 3000 * MS)
        except websockets.exceptions.ConnectionClosed:
            pass
    assert ws.close_code == 1001


async def test_pings_disabled(serve):
    server = await serve(echo_handler, ping_interval=None, idle_timeout=None)
    raw = await open_raw_ws(server)
    try:
        await raw.read_frame(timeout=0.4)
    except asyncio.TimeoutError:
        pass
    else:
        raise AssertionError("a frame arrived although keepalive is off")
    await raw.send(build_frame(1, b"quiet"))
    assert (await raw.read_frame())[1:] == (1, b"quiet")
    raw.close()
