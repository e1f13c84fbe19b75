"""``fastws.connect`` against other servers: a ``websockets`` server and an
aiohttp web server, both on 127.0.0.1:0."""

from __future__ import annotations

import asyncio
import socket
from http import HTTPStatus
from types import SimpleNamespace

import aiohttp
import pytest
import websockets
from aiohttp import web

import fastws
from tests.conftest import MS
from tests.integration.test_bad_input import (
    TIMEOUT,
)
from tests.integration.test_server import SIZES, payload, text

CLIENT_CLOSE_REPLY_BUG = (
    "BUG: the client discards the server's CLOSE reply after starting the closing handshake "
    "(CLOSING state parses nothing), so after a clean close ws.close_code is 1006, not the code echoed"
)

# ---------------------------------------------------------------------------
# peers
#
# Both echo TEXT and BINARY, record what they saw of each connection, and obey
# a few commands sent as TEXT: "close:<code>:<reason>" (closing handshake),
# "drop" (TCP connection aborted without a CLOSE), "fragments" (a fragmented
# reply), "ping" (a server PING, answered with "pong:ok").


async def _websockets_handler(conn, seen):
    seen.append(SimpleNamespace(
        headers=conn.request.headers, path=conn.request.path, subprotocol=conn.subprotocol,
        extensions=[e.name for e in conn.protocol.extensions],
    ))
    async for msg in conn:
        if isinstance(msg, str) and msg.startswith("close:"):
            _, code, reason = msg.split(":", 2)
            await conn.close(int(code), reason)
            return
        if msg == "drop":
            conn.transport.abort()
            return
        if msg == "fragments":
            await conn.send(["frag", "men", "ted"])
            continue
        if msg == "ping":
            await asyncio.wait_for(await conn.ping(b"srv"), TIMEOUT)
            await conn.send("pong:ok")
            continue
        await conn.send(msg)


SEEN = web.AppKey("seen", list)


async def _aiohttp_handler(request):
    seen = request.app[SEEN]
    ws = web.WebSocketResponse(protocols=("chat",), compress=True, max_msg_size=0, autoping=True)
    await ws.prepare(request)
    seen.append(SimpleNamespace(
        headers=request.headers, path=request.path_qs, subprotocol=ws.ws_protocol,
        extensions=["permessage-deflate"] if ws.compress else [],
    ))
    async for msg in ws:
        if msg.type == aiohttp.WSMsgType.TEXT:
            data = msg.data
            if data.startswith("close:"):
                _, code, reason = data.split(":", 2)
                await ws.close(code=int(code), message=reason.encode())
                break
            if data == "drop":
                request.transport.abort()
                break
            if data == "fragments":
                await ws.send_str("fragmented")  # aiohttp cannot fragment; same result expected
                continue
            if data == "ping":
                await ws.ping(b"srv")
                await ws.send_str("pong:ok")
                continue
            await ws.send_str(data)
        elif msg.type == aiohttp.WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def _forbidden(request):
    return web.Response(status=403, text="no entry")


async def _plain(request):
    return web.Response(status=200, text="just http")


def _websockets_select(conn, offered):
    return "chat" if "chat" in offered else None


def _websockets_process_request(conn, request):
    if request.path == "/forbidden":
        return conn.respond(HTTPStatus.FORBIDDEN, "no entry")
    return None


@pytest.fixture(params=["websockets", "aiohttp"])
async def peer(request):
    """A running third-party echo server: ``peer.url`` (ws://127.0.0.1:port/ws), ``peer.seen``."""
    seen: list = []
    if request.param == "websockets":
        async with websockets.serve(
            lambda conn: _websockets_handler(conn, seen), "127.0.0.1", 0, max_size=None,
            compression="deflate", select_subprotocol=_websockets_select, subprotocols=["chat"],
            process_request=_websockets_process_request,
        ) as server:
            port = server.sockets[0].getsockname()[1]
            yield SimpleNamespace(kind="websockets", base=f"ws://127.0.0.1:{port}", url=f"ws://127.0.0.1:{port}/ws",
                                  seen=seen, server=server)
    else:
        app = web.Application()
        app[SEEN] = seen
        app.router.add_get("/ws", _aiohttp_handler)
        app.router.add_get("/forbidden", _forbidden)
        app.router.add_get("/plain", _plain)
        runner = web.AppRunner(app, shutdown_timeout=1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            yield SimpleNamespace(kind="aiohttp", base=f"ws://127.0.0.1:{port}", url=f"ws://127.0.0.1:{port}/ws",
                                  seen=seen, server=runner)
        finally:
            await runner.cleanup()


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------
# data


@pytest.mark.parametrize("compression", [False, True], ids=["plain", "deflate"])
async def test_echo_sizes(peer, compression):
    async with fastws.connect(peer.url, compression=compression, max_size=2 << 20) as ws:
        for n in SIZES:
            data = payload(n, 3)
            await ws.send(data)
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == data, n
            t = text(n)
            await ws.send(t)
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == t, n


async def test_send_bytes_like_and_forced_types(peer):
    async with fastws.connect(peer.url, compression=False) as ws:
        await ws.send(bytearray(b"ba"))
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == b"ba"
        await ws.send(memoryview(b"xmvx")[1:3])
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == b"mv"
        await ws.send(b"as text", binary=False)
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "as text"
        await ws.send("as binary", binary=True)
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == b"as binary"


async def test_async_for_over_messages(peer):
    async with fastws.connect(peer.url, compression=False) as ws:
        for i in range(5):
            await ws.send(str(i))
        await ws.send("close:1000:done")
        got = [m async for m in ws]
    assert got == [str(i) for i in range(5)]


async def test_fragmented_message_from_server(peer):
    async with fastws.connect(peer.url, compression=False) as ws:
        await ws.send("fragments")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "fragmented"


async def test_client_ping_and_server_ping(peer):
    async with fastws.connect(peer.url, compression=False) as ws:
        latency = await asyncio.wait_for(ws.ping(b"cli"), TIMEOUT)
        assert latency >= 0
        await ws.send("ping")  # the server pings us and reports its PONG
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "pong:ok"


async def test_many_messages_in_order(peer):
    async with fastws.connect(peer.url, compression=False) as ws:
        for i in range(300):
            await ws.send(f"m{i}")
        for i in range(300):
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == f"m{i}"


# ---------------------------------------------------------------------------
# negotiation and headers


async def test_compression_negotiated(peer):
    async with fastws.connect(peer.url) as ws:  # compression offered by default
        ext = ws.response_headers.get("sec-websocket-extensions")
        assert ext and ext.startswith("permessage-deflate")
        assert ws.compression is not None
        for data in ("q" * 300_000, "short", b"\x00" * 100_000):
            await ws.send(data)
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == data
    assert peer.seen[0].extensions == ["permessage-deflate"]


async def test_compression_off(peer):
    async with fastws.connect(peer.url, compression=False) as ws:
        assert ws.response_headers.get("sec-websocket-extensions") is None
        assert ws.compression is None
        await ws.send("r" * 10_000)
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "r" * 10_000
    assert peer.seen[0].extensions == []


@pytest.mark.parametrize("offered, expected", [(["other", "chat"], "chat"), (["other"], None), ([], None)])
async def test_subprotocols(peer, offered, expected):
    async with fastws.connect(peer.url, subprotocols=offered, compression=False) as ws:
        assert ws.subprotocol == expected
        await ws.send("sp")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "sp"
    assert peer.seen[0].subprotocol == expected


async def test_extra_headers_arrive(peer):
    headers = {"X-Extra": "one", "Authorization": "Bearer t0ken"}
    async with fastws.connect(peer.url + "?q=1", headers=headers, origin="http://origin.test",
                              compression=False) as ws:
        await ws.send("h")
        await asyncio.wait_for(ws.recv(), TIMEOUT)
    seen = peer.seen[0]
    assert seen.path == "/ws?q=1"
    assert seen.headers["X-Extra"] == "one"
    assert seen.headers["Authorization"] == "Bearer t0ken"
    assert seen.headers["Origin"] == "http://origin.test"
    assert seen.headers["User-Agent"] == "fastws"
    assert seen.headers["Host"] == peer.base.removeprefix("ws://")


async def test_header_pairs_and_user_agent(peer):
    async with fastws.connect(peer.url, headers=[("X-Pair", "a"), ("User-Agent", "custom/1")],
                              compression=False) as ws:
        await ws.send("h")
        await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert peer.seen[0].headers["X-Pair"] == "a"
    assert peer.seen[0].headers["User-Agent"] == "custom/1"


# ---------------------------------------------------------------------------
# opening and closing


async def test_await_connect(peer):
    ws = await fastws.connect(peer.url, compression=False)
    try:
        assert ws.open and ws.is_client
        await ws.send(b"awaited")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == b"awaited"
    finally:
        await asyncio.wait_for(ws.close(), TIMEOUT)
    assert ws.closed


async def test_async_with_closes_on_exit(peer):
    async with fastws.connect(peer.url, compression=False) as ws:
        await ws.send("in")
        await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert ws.closed
    with pytest.raises(fastws.ConnectionClosedOK):
        await ws.recv()


async def test_close_code_after_clean_client_close(peer):
    async with fastws.connect(peer.url, compression=False) as ws:
        await ws.send("in")
        await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert ws.close_code == 1000


async def test_recv_after_client_close_raises_ok(peer):
    ws = await fastws.connect(peer.url, compression=False)
    await asyncio.wait_for(ws.close(1000, "bye"), TIMEOUT)
    with pytest.raises(fastws.ConnectionClosedOK):
        await ws.recv()
    with pytest.raises(fastws.ConnectionClosed):
        await ws.send("late")


@pytest.mark.parametrize("code", [1000, 1001])
async def test_recv_after_server_normal_close_raises_ok(peer, code):
    async with fastws.connect(peer.url, compression=False) as ws:
        await ws.send(f"close:{code}:server done")
        with pytest.raises(fastws.ConnectionClosedOK) as info:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert (info.value.code, info.value.reason) == (code, "server done")
        with pytest.raises(fastws.ConnectionClosedOK):
            await ws.recv()  # again: still the same answer
        await asyncio.wait_for(ws.wait_closed(), TIMEOUT)
    assert ws.close_code == code


async def test_recv_after_server_error_close_raises_error(peer):
    async with fastws.connect(peer.url, compression=False) as ws:
        await ws.send("close:4000:custom failure")
        with pytest.raises(fastws.ConnectionClosedError) as info:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert (info.value.code, info.value.reason) == (4000, "custom failure")


async def test_recv_after_tcp_drop_raises_error_1006(peer):
    async with fastws.connect(peer.url, compression=False) as ws:
        await ws.send("drop")
        with pytest.raises(fastws.ConnectionClosedError) as info:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert info.value.code == 1006
        assert ws.closed


async def test_messages_before_close_are_delivered(peer):
    async with fastws.connect(peer.url, compression=False) as ws:
        for i in range(3):
            await ws.send(f"q{i}")
        await ws.send("close:1000:")
        await asyncio.sleep(0.1)  # everything has arrived; the queue holds it
        assert [await ws.recv() for _ in range(3)] == ["q0", "q1", "q2"]
        with pytest.raises(fastws.ConnectionClosedOK):
            await ws.recv()


# ---------------------------------------------------------------------------
# handshake failures


async def test_forbidden_raises_invalid_handshake_with_status(peer):
    with pytest.raises(fastws.InvalidHandshake) as info:
        await fastws.connect(peer.base + "/forbidden", compression=False)
    assert info.value.status == 403
    assert b"no entry" in info.value.body


async def test_forbidden_is_not_retried(peer):
    client = CountingConnect(peer.base + "/forbidden", reconnect=True, backoff_initial=0.01, max_attempts=5)
    with pytest.raises(fastws.InvalidHandshake) as info:
        async for _ in client:
            pytest.fail("connected to a 403")
    assert info.value.status == 403
    assert client.attempts == 1


async def test_plain_http_server_raises_invalid_handshake():
    app = web.Application()
    app.router.add_get("/", _plain)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        with pytest.raises(fastws.InvalidHandshake) as info:
            await fastws.connect(f"ws://127.0.0.1:{port}/")
        assert info.value.status == 200
    finally:
        await runner.cleanup()


class RawServer:
    """``asyncio.start_server`` running ``script(reader, writer)`` per connection; on exit it
    stops and awaits every connection task (so none is left to the loop's teardown)."""

    def __init__(self, script) -> None:
        self.script = script
        self.tasks: set[asyncio.Task] = set()
        self.stop = asyncio.Event()

    async def _run(self, reader, writer) -> None:
        self.tasks.add(asyncio.current_task())
        try:
            await self.script(reader, writer, self.stop)
        finally:
            writer.transport.abort()

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._run, "127.0.0.1", 0)
        return f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/"

    async def __aexit__(self, *exc) -> None:
        self.stop.set()
        self.server.close()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def test_open_timeout_when_server_never_answers():
    async def silent(reader, writer, stop):
        await reader.read(65536)
        await stop.wait()

    async with RawServer(silent) as url:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(fastws.InvalidHandshake):
            await fastws.connect(url, open_timeout=0.3)
        assert loop.time() - started < 3


async def test_connection_refused_raises_oserror():
    with pytest.raises(OSError):
        await fastws.connect(f"ws://127.0.0.1:{closed_port()}/")


async def test_every_resolved_address_is_tried_in_turn(serve):
    """open_connection dials the addresses one after the other (``localhost`` may resolve to
    ::1 first while the server listens on 127.0.0.1 only); all refused raises OSError."""
    from fastws._endpoint import Endpoint
    from fastws.client import open_connection
    from fastws.handshake import ClientHandshake
    from tests.conftest import echo_handler

    server = await serve(echo_handler)
    host, port = server.address
    dead = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", closed_port()))
    live = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))
    loop = asyncio.get_running_loop()

    def handshake() -> ClientHandshake:
        return ClientHandshake(f"{host}:{port}", "/", [], None, [], 16384, None)

    endpoint = Endpoint(True, loop=loop)
    ws = await open_connection(endpoint, host, port, handshake(), addresses=[dead, live])
    try:
        await ws.send("through the second address")
        assert await asyncio.wait_for(ws.recv(), 5) == "through the second address"
        assert type(ws.transport).__name__ == "SocketTransport"  # plain TCP: fastws' own transport
    finally:
        await ws.close()
    with pytest.raises(OSError):
        await open_connection(endpoint, host, port, handshake(), addresses=[dead, dead])
    endpoint.stop()


@pytest.mark.parametrize("response", [
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: d3Jvbmc=\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: never-offered\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Extensions: x-unknown\r\n\r\n",
    b"garbage\r\n\r\n",
    b"HTTP/1.1 101 Switching",  # then EOF
], ids=["wrong-accept", "no-upgrade", "unoffered-subprotocol", "unoffered-extension", "garbage", "truncated"])
async def test_bad_101_responses_raise_invalid_handshake(response):
    async def liar(reader, writer, stop):
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                   if line.lower().startswith(b"sec-websocket-key:"))
        writer.write(response.replace(b"{accept}", fastws.handshake.accept_key(key).encode()))
        await writer.drain()
        if response.endswith(b"Switching"):
            writer.close()
            return
        await stop.wait()

    async with RawServer(liar) as url:
        with pytest.raises(fastws.InvalidHandshake):
            await fastws.connect(url, open_timeout=TIMEOUT)


@pytest.mark.parametrize("url", ["http://127.0.0.1/", "127.0.0.1:80", "ws:///nohost"])
def test_invalid_urls(url):
    with pytest.raises(ValueError):
        fastws.connect(url)


# ---------------------------------------------------------------------------
# reconnect


class CountingConnect(fastws.connect):
    """fastws.connect that counts its connection attempts."""

    attempts = 0

    async def _connect(self):
        self.attempts += 1
        return await super()._connect()


@pytest.mark.parametrize("how", ["close", "drop"])
async def test_reconnects_after_server_drops(peer, how):
    got = []
    client = CountingConnect(peer.url, reconnect=True, backoff_initial=0.05, max_attempts=3, compression=False)

    async def run():
        async for ws in client:
            await ws.send(f"hello {len(got)}")
            got.append(await asyncio.wait_for(ws.recv(), TIMEOUT))
            if len(got) == 3:
                await ws.close()
                break
            await ws.send("close:1001:bye" if how == "close" else "drop")
            try:
                await asyncio.wait_for(ws.recv(), TIMEOUT)
            except fastws.ConnectionClosed:
                pass  # the server went away: the loop reconnects

    await asyncio.wait_for(run(), 10)
    assert got == ["hello 0", "hello 1", "hello 2"]
    assert client.attempts == 3
    assert len(peer.seen) == 3


async def test_reconnect_gives_up_after_max_attempts():
    client = CountingConnect(f"ws://127.0.0.1:{closed_port()}/", reconnect=True, backoff_initial=0.05,
                             backoff_max=0.1, max_attempts=4)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(OSError):
        async for _ in client:
            pytest.fail("connected to a closed port")
    assert client.attempts == 4
    assert loop.time() - started < 5000 * MS


async def test_no_reconnect_raises_at_once():
    client = CountingConnect(f"ws://127.0.0.1:{closed_port()}/", reconnect=False)
    with pytest.raises(OSError):
        async for _ in client:
            pass
    assert client.attempts == 1


async def test_reconnect_until_server_comes_up():
    port = closed_port()
    seen: list = []
    client = CountingConnect(f"ws://127.0.0.1:{port}/", reconnect=True, backoff_initial=0.05, backoff_max=0.1,
                             max_attempts=50, compression=False)

    async def run():
        async for ws in client:
            await ws.send("up?")
            reply = await asyncio.wait_for(ws.recv(), TIMEOUT)
            await ws.close()
            return reply

    task = asyncio.ensure_future(run())
    await asyncio.sleep(0.3)
    assert not task.done()
    async with websockets.serve(lambda conn: _websockets_handler(conn, seen), "127.0.0.1", port):
        assert await asyncio.wait_for(task, TIMEOUT) == "up?"
    assert client.attempts >= 2
