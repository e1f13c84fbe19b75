"""fastws.testing: TestServer (async) and ThreadedTestServer (a server on its
own loop in a thread, for synchronous clients such as websockets.sync)."""

from __future__ import annotations

import asyncio
import threading

import pytest
import websockets
from websockets.sync.client import connect as sync_connect

import fastws
from fastws.testing import TestServer, ThreadedTestServer
from tests.conftest import EchoListener, echo_handler
from tests.integration.test_bad_input import (
    TIMEOUT,
)


async def test_test_server_url_port_and_connect():
    async with TestServer(echo_handler, compression=False) as ts:
        assert ts.url == f"ws://127.0.0.1:{ts.port}"
        port = ts.port
        assert port > 0
        async with ts.connect("/room?x=1") as ws:
            await ws.send("via TestServer.connect")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "via TestServer.connect"
        async with ts.connect("no-leading-slash") as ws:
            await ws.send(b"\x00")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == b"\x00"
    # stopped: the port no longer accepts connections
    with pytest.raises(OSError):
        await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)


async def test_test_server_passes_options_and_sees_path():
    seen = []

    async def handler(ws):
        seen.append((ws.request.path, ws.request.query_param("x"), ws.subprotocol))
        await echo_handler(ws)

    async with TestServer(handler, subprotocols=["p1"], max_size=100, compression=False) as ts:
        async with ts.connect("/a?x=7", subprotocols=["p1"]) as ws:
            assert ws.subprotocol == "p1"
            await ws.send("x" * 100)
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "x" * 100
            await ws.send("x" * 101)  # over the server's max_size
            with pytest.raises(fastws.ConnectionClosedError) as info:
                await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert info.value.code == 1009
    assert seen == [("/a", "7", "p1")]


async def test_test_server_with_listener_and_third_party_client():
    async with TestServer(EchoListener) as ts:  # compression on by default
        async with websockets.connect(ts.url) as ws:
            assert "permessage-deflate" in ws.response.headers.get("Sec-WebSocket-Extensions", "")
            await ws.send("listener")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "listener"


async def test_test_server_start_stop_explicit():
    ts = TestServer(echo_handler)
    await ts.start()
    try:
        async with ts.connect() as ws:
            await ws.send("explicit")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "explicit"
    finally:
        await ts.stop()


async def test_test_server_stop_closes_open_clients_with_1001():
    ts = TestServer(echo_handler, close_timeout=0.3)
    await ts.start()
    ws = await ts.connect()
    await ts.stop()
    with pytest.raises(fastws.ConnectionClosedOK) as info:
        await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert info.value.code == 1001


# ---------------------------------------------------------------------------
# ThreadedTestServer (synchronous tests: the server's loop is created by
# asyncio.new_event_loop() in its thread, so the policy in force decides which
# loop it is; both are exercised)


def _uvloop_policy():
    import uvloop

    return uvloop.EventLoopPolicy()


@pytest.fixture(params=["asyncio", "uvloop"])
def thread_loop(request):
    """The loop policy the server thread's asyncio.new_event_loop() uses."""
    if request.param == "asyncio":
        yield "asyncio"
        return
    old = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(_uvloop_policy())
    try:
        yield "uvloop"
    finally:
        asyncio.set_event_loop_policy(old)


def test_threaded_server_with_sync_client(thread_loop):
    with ThreadedTestServer(echo_handler, compression=False) as ts:
        assert ts.url.startswith("ws://127.0.0.1:")
        with sync_connect(ts.url + "/sync", open_timeout=TIMEOUT) as ws:
            ws.send("sync hello")
            assert ws.recv(timeout=TIMEOUT) == "sync hello"
            ws.send(b"\x01" * 70_000)
            assert ws.recv(timeout=TIMEOUT) == b"\x01" * 70_000


def test_threaded_server_runs_in_its_own_thread(thread_loop):
    threads = []

    async def handler(ws):
        threads.append(threading.current_thread().name)
        await echo_handler(ws)

    with ThreadedTestServer(handler) as ts:
        with sync_connect(ts.url, open_timeout=TIMEOUT) as ws:
            ws.send("t")
            assert ws.recv(timeout=TIMEOUT) == "t"
    assert threads == ["fastws-test-server"]
    assert threading.current_thread().name != "fastws-test-server"


def test_threaded_server_stops_on_exit(thread_loop):
    import socket

    with ThreadedTestServer(EchoListener) as ts:
        url = ts.url
        with sync_connect(url, open_timeout=TIMEOUT) as ws:
            ws.send("before exit")
            assert ws.recv(timeout=TIMEOUT) == "before exit"
    port = int(url.rsplit(":", 1)[1])
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()


def test_threaded_server_reports_start_errors():
    with pytest.raises(TypeError):
        with ThreadedTestServer(echo_handler, no_such_option=1):
            pass
