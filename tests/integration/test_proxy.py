"""The passthrough proxy over real loopback sockets: a real backend server, the proxy
server in front of it, and fastws, websockets and aiohttp clients."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct

import aiohttp
import pytest
import websockets
import websockets.exceptions

import fastws
from fastws.proxy import Proxy
from tests.helpers import build_frame, raw_connect, read_http_response, upgrade_request

TIMEOUT = 5.0


async def info_handler(ws):
    """Backend: answers a TEXT "info" with what it saw of the request, echoes everything else."""
    async for message in ws:
        if message == "info":
            req = ws.request
            await ws.send(json.dumps({
                "target": req.target,
                "xff": req.headers.get_all("x-forwarded-for"),
                "real_ip": req.headers.get("x-real-ip"),
                "fwd_host": req.headers.get("x-forwarded-host"),
                "custom": req.headers.get("x-custom"),
                "cookie": req.headers.get("cookie"),
                "subprotocol": ws.subprotocol,
            }))
        else:
            await ws.send(message)


class Recorder(fastws.Listener):
    """Backend listener that records pings and the close it got, and echoes."""

    events: list = []

    def __init__(self):
        self.events = Recorder.events

    def on_message(self, ws, msg):
        ws.send(msg)

    def on_ping(self, ws, payload):
        self.events.append(("ping", payload))

    def on_close(self, ws, code, reason):
        self.events.append(("close", code, reason))


async def wait_for(predicate, timeout: float = TIMEOUT):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


@pytest.fixture
async def pair(serve):
    """(backend, proxy) servers: ``await pair(backend_app, **proxy_options)``."""

    async def start(backend_app, server_options=None, **proxy_options):
        backend = await serve(backend_app)
        front = await serve(Proxy(backend.url, **proxy_options), **(server_options or {}))
        return backend, front

    return start


async def test_messages_relayed_in_order_with_opcodes(pair):
    _, front = await pair(info_handler)
    async with fastws.connect(front.url + "/echo") as ws:
        sent = []
        for i in range(300):
            sent.append(f"text {i} é" if i % 3 else os.urandom(i % 50 + 1))
        for m in sent:
            await ws.send(m)
        got = [await asyncio.wait_for(ws.recv(), TIMEOUT) for _ in sent]
        assert got == sent  # order kept, str stays TEXT and bytes BINARY
        await ws.send(b"")
        assert await ws.recv() == b""
        await ws.send("")
        assert await ws.recv() == ""


async def test_large_messages_both_ways(pair):
    _, front = await pair(info_handler, max_size=4 << 20)
    async with fastws.connect(front.url + "/", max_size=4 << 20) as ws:
        for size in (70_000, 300_000, 1 << 20):
            payload = os.urandom(size)
            await ws.send(payload)
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == payload
        text = "ü" * 200_000
        await ws.send(text)
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == text


async def test_client_compression_is_relayed(pair):
    _, front = await pair(info_handler, server_options={"compression": True})
    async with fastws.connect(front.url + "/", compression=True) as ws:
        assert ws.compression is not None
        text = "compressible " * 5000
        await ws.send(text)
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == text


async def test_path_query_and_forwarding_headers(pair):
    _, front = await pair(info_handler, headers={"X-Custom": "from-proxy"})
    headers = [("X-Forwarded-For", "6.6.6.6"), ("X-Real-IP", "6.6.6.6"), ("Cookie", "session=abc")]
    async with fastws.connect(front.url + "/rooms/a%20b?x=1&y=%C3%A9", headers=headers) as ws:
        await ws.send("info")
        seen = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    assert seen["target"] == "/rooms/a%20b?x=1&y=%C3%A9"
    assert seen["xff"] == ["127.0.0.1"]  # the client's own claim is dropped, not appended
    assert seen["real_ip"] == "127.0.0.1"
    assert seen["fwd_host"] == "{}:{}".format(*front.address)
    assert seen["custom"] == "from-proxy"
    assert seen["cookie"] == "session=abc"


async def test_backend_url_prefix_and_strip_prefix(serve):
    backend = await serve(info_handler)
    front = await serve(Proxy(backend.url + "/base?k=v", strip_prefix="/api"))
    async with fastws.connect(front.url + "/api/chat?x=1") as ws:
        await ws.send("info")
        assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["target"] == "/base/chat?k=v&x=1"


async def test_subprotocol_chosen_by_backend(serve):
    backend = await serve(info_handler, subprotocols=["v2", "v1"])
    front = await serve(Proxy(backend.url))
    async with fastws.connect(front.url + "/", subprotocols=["v1", "v2"]) as ws:
        assert ws.subprotocol == "v2"
        await ws.send("info")
        assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["subprotocol"] == "v2"
    async with fastws.connect(front.url + "/", subprotocols=["v9"]) as ws:
        assert ws.subprotocol is None


async def test_plain_http_gets_400(pair):
    _, front = await pair(info_handler)
    reader, writer = await raw_connect(front, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        status, _, body = await read_http_response(reader, TIMEOUT)
    finally:
        writer.transport.abort()
    assert (status, body) == (400, b"WebSocket endpoint only")


async def test_malformed_upgrade_refused_without_dialling(serve):
    dialled = []

    async def backend_handler(ws):
        dialled.append(ws)

    backend = await serve(backend_handler)
    front = await serve(Proxy(backend.url))
    request = upgrade_request("/", key="short")
    reader, writer = await raw_connect(front, request)
    try:
        status, _, body = await read_http_response(reader, TIMEOUT)
    finally:
        writer.transport.abort()
    assert (status, body) == (400, b"Invalid Sec-WebSocket-Key header")
    assert dialled == []


async def test_unreachable_backend_gets_502(serve):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    front = await serve(Proxy(f"ws://127.0.0.1:{port}/"))
    with pytest.raises(fastws.InvalidHandshake) as info:
        await fastws.connect(front.url + "/")
    assert info.value.status == 502
    assert info.value.body == b"Bad Gateway"
    # websockets sees the same
    with pytest.raises(websockets.exceptions.InvalidStatus) as winfo:
        async with websockets.connect(front.url + "/"):
            pass
    assert winfo.value.response.status_code == 502


async def test_backend_not_answering_the_handshake_gets_502(serve):
    async def silent(reader, writer):
        await reader.read()  # never answers

    silent_server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = silent_server.sockets[0].getsockname()[1]
    try:
        front = await serve(Proxy(f"ws://127.0.0.1:{port}/", open_timeout=0.3))
        with pytest.raises(fastws.InvalidHandshake) as info:
            await fastws.connect(front.url + "/")
        assert info.value.status == 502
    finally:
        silent_server.close()


async def test_backend_refusal_status_passed_on(serve):
    def refuse(ws, request):
        raise fastws.HandshakeError(403, "Forbidden")

    class App:
        fastws_accept = staticmethod(refuse)

    backend = await serve(App())
    front = await serve(Proxy(backend.url))
    with pytest.raises(fastws.InvalidHandshake) as info:
        await fastws.connect(front.url + "/")
    assert info.value.status == 403


async def test_client_close_code_and_reason_reach_backend(pair):
    Recorder.events = []
    _, front = await pair(Recorder)
    ws = await fastws.connect(front.url + "/")
    await ws.send("x")
    assert await ws.recv() == "x"
    await ws.close(4001, "client bye")
    await wait_for(lambda: ("close", 4001, "client bye") in Recorder.events)


async def test_backend_close_code_and_reason_reach_client(pair):
    async def closer(ws):
        await ws.recv()
        await ws.close(4002, "backend bye")

    _, front = await pair(closer)
    async with websockets.connect(front.url + "/") as ws:
        await ws.send("go")
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert (ws.close_code, ws.close_reason) == (4002, "backend bye")


async def test_pings_forwarded_both_ways(pair):
    Recorder.events = []

    async def pinger(ws):
        await ws.recv()
        ws.ping(b"from-backend")
        await ws.send("pinged")
        async for _ in ws:
            pass

    _, front = await pair(Recorder)
    async with fastws.connect(front.url + "/") as ws:
        rtt = await asyncio.wait_for(ws.ping(b"from-client"), TIMEOUT)
        assert rtt >= 0
        await wait_for(lambda: ("ping", b"from-client") in Recorder.events)

    _, front2 = await pair(pinger)
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(front2.url + "/", autoping=False) as ws:
            await ws.send_str("go")
            msgs = []
            while True:
                msg = await asyncio.wait_for(ws.receive(), TIMEOUT)
                msgs.append((msg.type, msg.data))
                if msg.type == aiohttp.WSMsgType.TEXT:
                    break
            assert (aiohttp.WSMsgType.PING, b"from-backend") in msgs


async def test_backend_dying_mid_stream_closes_client(pair):
    async def dies(ws):
        await ws.send("first")
        await ws.recv()
        ws.abort()  # the backend process "crashes": no closing handshake

    _, front = await pair(dies)
    async with fastws.connect(front.url + "/") as ws:
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "first"
        await ws.send("boom")
        with pytest.raises(fastws.ConnectionClosedError):
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert ws.close_code == 1014
        assert ws.close_reason == "backend connection lost"


async def test_backend_server_shutdown_mid_stream(pair):
    backend, front = await pair(info_handler)
    async with websockets.connect(front.url + "/") as ws:
        await ws.send("a")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "a"
        await backend.shutdown(timeout=1)
        with pytest.raises(websockets.exceptions.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert ws.close_code == 1001  # the backend's going-away close, passed on


async def test_client_dying_closes_backend(pair):
    Recorder.events = []
    _, front = await pair(Recorder)
    reader, writer = await raw_connect(front, upgrade_request("/"))
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    await wait_for(lambda: len(front.connections) == 1)
    writer.transport.abort()
    await wait_for(lambda: ("close", 1001, "client went away") in Recorder.events)


async def test_client_protocol_error_closes_both_sides(pair):
    Recorder.events = []
    _, front = await pair(Recorder)
    reader, writer = await raw_connect(front, upgrade_request("/"))
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    writer.write(b"\x81\x05hello")  # unmasked client frame: 1002
    data = await asyncio.wait_for(reader.read(100), TIMEOUT)
    assert data[0] == 0x88 and data[2:4] == b"\x03\xea"  # CLOSE 1002
    writer.transport.abort()
    await wait_for(lambda: any(e[0] == "close" for e in Recorder.events))


async def test_slow_client_backpressures_the_backend(pair):
    """A client that does not read makes the backend's sends wait; the proxy does not
    buffer the backend's whole output."""
    chunk = os.urandom(256 * 1024)
    count = 200  # 50 MiB: more than the socket buffers of both legs and the queues can hold
    progress = {"sent": 0}

    async def flood(ws):
        await ws.recv()
        for _ in range(count):
            await ws.send(chunk)
            progress["sent"] += 1
        await ws.recv()

    backend, front = await pair(flood)
    async with fastws.connect(front.url + "/", max_queue=2) as ws:
        await ws.send("go")
        await asyncio.sleep(0.5)
        stalled = progress["sent"]
        assert stalled < count, "the backend sent everything although nobody reads"
        buffered = sum(c.buffered_amount for c in front.connections)
        assert buffered < 8 << 20
        for i in range(count):
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == chunk, i
        assert progress["sent"] == count
        await ws.send("done")


async def test_many_sessions_and_clients(pair):
    _, front = await pair(info_handler)

    async def one(i):
        async with fastws.connect(front.url + f"/c{i}") as ws:
            for j in range(20):
                await ws.send(f"{i}:{j}")
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == f"{i}:{j}"

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(30))), 20)
    await wait_for(lambda: len(front.connections) == 0)


async def test_websockets_client_through_proxy(pair):
    _, front = await pair(info_handler)
    async with websockets.connect(front.url + "/w?q=1", subprotocols=None) as ws:
        await ws.send("hello")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "hello"
        await ws.send(b"\x00\xff")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == b"\x00\xff"
        await ws.send("info")
        assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["target"] == "/w?q=1"


async def test_proxy_to_a_websockets_backend(serve):
    async def echo(ws):
        async for m in ws:
            await ws.send(m)

    async with websockets.serve(echo, "127.0.0.1", 0) as backend:
        port = backend.sockets[0].getsockname()[1]
        front = await serve(Proxy(f"ws://127.0.0.1:{port}/"))
        async with fastws.connect(front.url + "/") as ws:
            await ws.send("to websockets")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "to websockets"
            await ws.send(b"bin")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == b"bin"


async def test_slow_backend_backpressures_the_client(pair):
    """A backend that does not read makes the client's sends wait; the proxy stops reading
    from the client instead of buffering what it sends."""
    chunk = os.urandom(256 * 1024)
    count = 200  # 50 MiB: more than the socket buffers of both legs and the queues can hold
    release = asyncio.Event()
    got = []

    async def lazy(ws):
        await release.wait()
        async for message in ws:
            got.append(message)
            if len(got) == count:
                await ws.send("all")

    _, front = await pair(lazy)
    async with fastws.connect(front.url + "/") as ws:
        sent = {"n": 0}

        async def flood():
            for _ in range(count):
                await ws.send(chunk)
                sent["n"] += 1

        task = asyncio.ensure_future(flood())
        await asyncio.sleep(0.5)
        assert not task.done(), "the client sent 50 MiB although the backend reads nothing"
        assert sum(c.buffered_amount for c in front.connections) < 8 << 20
        release.set()
        await asyncio.wait_for(task, TIMEOUT)
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "all"
        assert all(m == chunk for m in got) and len(got) == count


async def test_client_leaving_while_the_backend_is_dialled(serve):
    """The client goes away while the proxy waits for the backend's handshake: the backend
    connection is closed, not leaked."""
    closes = []

    class SlowAccept:
        async def _accept(self, ws, request):
            await asyncio.sleep(0.3)
            return fastws.Accept(listener=Tracker())

        def fastws_accept(self, ws, request):
            return self._accept(ws, request)

    class Tracker(fastws.Listener):
        def on_close(self, ws, code, reason):
            closes.append(code)

    backend = await serve(SlowAccept())
    front = await serve(Proxy(backend.url))
    reader, writer = await raw_connect(front, upgrade_request("/"))
    await asyncio.sleep(0.1)
    writer.transport.abort()
    await wait_for(lambda: len(backend.connections) == 0 and len(front.connections) == 0)
    await wait_for(lambda: closes != [])


async def test_closing_while_backpressured_is_prompt(pair):
    """The client closes while the proxy holds the flooding backend paused: the backend leg
    still completes its closing handshake at once (not after close_timeout)."""
    chunk = os.urandom(256 * 1024)
    backend_close = []

    async def flood(ws):
        await ws.recv()
        try:
            for _ in range(200):
                await ws.send(chunk)
        except fastws.ConnectionClosed:
            pass
        backend_close.append(ws.close_code)

    backend, front = await pair(flood)
    reader, writer = await raw_connect(front, upgrade_request("/"))
    try:
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        writer.write(build_frame(1, b"go"))
        await asyncio.sleep(0.3)  # not reading: the proxy pauses the backend
        started = asyncio.get_running_loop().time()
        writer.write(build_frame(8, struct.pack("!H", 4003) + b"bye"))
        # read (and skip) frames until the proxy's CLOSE
        while True:
            head = await asyncio.wait_for(reader.readexactly(2), TIMEOUT)
            n = head[1] & 0x7F
            if n == 126:
                n = struct.unpack("!H", await reader.readexactly(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", await reader.readexactly(8))[0]
            payload = await asyncio.wait_for(reader.readexactly(n), TIMEOUT)
            if head[0] & 0x0F == 8:
                assert payload[:2] == struct.pack("!H", 4003)
                break
    finally:
        writer.transport.abort()
    await wait_for(lambda: len(backend.connections) == 0, timeout=3)
    assert asyncio.get_running_loop().time() - started < 3
    assert backend_close == [4003]


async def test_client_dropping_while_backpressured_closes_backend_promptly(pair):
    """The client drops while the proxy holds the flooding backend paused: the backend leg
    reads its closing handshake at once instead of waiting out close_timeout."""
    chunk = os.urandom(256 * 1024)
    backend_close = []

    async def flood(ws):
        await ws.recv()
        try:
            for _ in range(200):
                await ws.send(chunk)
        except fastws.ConnectionClosed:
            pass
        backend_close.append((ws.close_code, ws.close_reason))

    backend, front = await pair(flood)
    reader, writer = await raw_connect(front, upgrade_request("/"))
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT)
    writer.write(build_frame(1, b"go"))
    await asyncio.sleep(0.3)  # not reading: the proxy pauses the backend
    writer.transport.abort()
    await wait_for(lambda: len(backend.connections) == 0, timeout=3)
    assert backend_close == [(1001, "client went away")]


@pytest.fixture(scope="module")
def tls_contexts(tmp_path_factory):
    import ssl

    from tests.integration.test_tls import make_certificate

    cert, key = make_certificate(tmp_path_factory.mktemp("proxy-tls"))
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=cert)
    return server_ctx, client_ctx


async def test_wss_backend(serve, tls_contexts):
    server_ctx, client_ctx = tls_contexts
    backend = await serve(info_handler, ssl=server_ctx)
    assert backend.url.startswith("wss://")
    front = await serve(Proxy(backend.url + "/tls", ssl=client_ctx))
    async with fastws.connect(front.url + "/x?y=1") as ws:
        await ws.send("info")
        assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["target"] == "/tls/x?y=1"
        big = os.urandom(300_000)
        await ws.send(big)
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == big
    # a backend certificate the proxy does not trust: 502
    untrusting = await serve(Proxy(backend.url))
    with pytest.raises(fastws.InvalidHandshake) as info:
        await fastws.connect(untrusting.url + "/")
    assert info.value.status == 502


async def test_fragmented_message_relayed_whole(pair):
    _, front = await pair(info_handler)
    async with fastws.connect(front.url + "/", compression=False) as ws:
        await ws.send_frame(1, "frag", fin=False)
        await ws.ping(b"in-between")  # a control frame between fragments
        await ws.send_frame(0, "mented ", fin=False)
        await ws.send_frame(0, "é", fin=True)
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "fragmented é"
