"""The opening handshake as seen on the wire: HTTP statuses, headers and bodies
of refused requests, and the handshake timeout."""

from __future__ import annotations

import asyncio
import base64
import os

import pytest
import websockets

import fastws
from tests.conftest import MS, echo_handler
from tests.helpers import raw_connect, read_http_response, upgrade_request
from tests.integration.test_bad_input import (
    TIMEOUT,
    check_responsive,
)


def request(method: str = "GET", path: str = "/", headers: dict[str, str] | None = None,
            version: str = "1.1") -> bytes:
    lines = [f"{method} {path} HTTP/{version}"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def upgrade_headers(**overrides: str | None) -> dict[str, str]:
    headers = {
        "Host": "127.0.0.1",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
    }
    for k, v in overrides.items():
        k = k.replace("_", "-")
        if v is None:
            headers.pop(k, None)
        else:
            headers[k] = v
    return headers


async def exchange(server, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``data``, read one HTTP response, and check the server then closes the connection."""
    reader, writer = await raw_connect(server, data)
    try:
        response = await read_http_response(reader, TIMEOUT)
        assert await asyncio.wait_for(reader.read(), TIMEOUT) == b"", "connection left open after a refusal"
    finally:
        writer.transport.abort()
    return response


async def test_plain_get_is_426(serve):
    server = await serve(echo_handler)
    status, headers, body = await exchange(server, request(headers={"Host": "127.0.0.1"}))
    assert status == 426
    assert body == b"Expected WebSocket"
    assert headers["upgrade"].lower() == "websocket"
    assert headers["sec-websocket-version"] == "13"
    assert headers["content-length"] == str(len(body))
    assert headers["connection"].lower() == "close"


async def test_post_upgrade_is_405(serve):
    server = await serve(echo_handler)
    status, headers, body = await exchange(server, request("POST", headers=upgrade_headers(Content_Length="0")))
    assert status == 405
    assert headers.get("allow") == "GET"
    assert body and b"\n" not in body


@pytest.mark.parametrize("key", ["not base64!", base64.b64encode(b"short").decode(),
                                 base64.b64encode(os.urandom(17)).decode(), None],
                         ids=["not-base64", "short", "long", "missing"])
async def test_bad_key_is_400_with_one_line_body(serve, key):
    server = await serve(echo_handler)
    status, headers, body = await exchange(server, request(headers=upgrade_headers(Sec_WebSocket_Key=key)))
    assert status == 400
    assert body and b"\n" not in body and b"\r" not in body
    assert headers["content-length"] == str(len(body))


async def test_version_12_is_426_with_version_13(serve):
    server = await serve(echo_handler)
    status, headers, body = await exchange(server, request(headers=upgrade_headers(Sec_WebSocket_Version="12")))
    assert status == 426
    assert headers["sec-websocket-version"] == "13"


@pytest.mark.parametrize("overrides", [
    {"Connection": "keep-alive"},
    {"Host": None},
    {"Sec-WebSocket-Version": None},
    {"Upgrade": "h2c"},
], ids=["no-connection-upgrade", "no-host", "no-version", "upgrade-not-websocket"])
async def test_other_invalid_upgrades_are_400(serve, overrides):
    server = await serve(echo_handler)
    status, _, body = await exchange(server, request(headers=upgrade_headers(**overrides)))
    assert status == 400
    assert body and b"\n" not in body


async def test_http_1_0_upgrade_is_400(serve):
    server = await serve(echo_handler)
    status, _, _ = await exchange(server, request(headers=upgrade_headers(), version="1.0"))
    assert status == 400


async def test_header_block_over_16k_is_431(serve):
    server = await serve(echo_handler)
    big = upgrade_headers(X_Big="a" * 17_000)
    status, _, body = await exchange(server, request(headers=big))
    assert status == 431
    assert body and b"\n" not in body


async def test_many_small_headers_over_16k_is_431(serve):
    server = await serve(echo_handler)
    headers = upgrade_headers()
    for i in range(100):
        headers[f"X-Filler-{i}"] = "b" * 200
    status, _, _ = await exchange(server, request(headers=headers))
    assert status == 431


async def test_header_block_just_under_limit_is_accepted(serve):
    server = await serve(echo_handler)
    head = upgrade_request(extra="X-Pad: " + "c" * 15_000 + "\r\n")
    assert len(head) < 16384
    reader, writer = await raw_connect(server, head)
    status, _, _ = await read_http_response(reader, TIMEOUT)
    assert status == 101
    writer.transport.abort()


async def test_max_header_size_option(serve):
    server = await serve(echo_handler, max_header_size=1024)
    status, _, _ = await exchange(server, request(headers=upgrade_headers(X_Pad="d" * 2000)))
    assert status == 431


async def test_header_block_over_limit_in_small_writes_is_431(serve):
    """The limit holds when the head trickles in: the server does not wait for CRLFCRLF forever."""
    server = await serve(echo_handler)
    reader, writer = await raw_connect(server, b"GET / HTTP/1.1\r\nHost: x\r\n")
    response = asyncio.ensure_future(read_http_response(reader, TIMEOUT))
    try:
        for _ in range(40):  # 40 KB in all; stop writing once the server has answered
            if response.done():
                break
            writer.write(b"X-Trickle: " + b"e" * 1000 + b"\r\n")
            await writer.drain()
            await asyncio.sleep(0.005)
        status, _, _ = await response
    finally:
        writer.transport.abort()
    assert status == 431


@pytest.mark.parametrize("garbage", [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40) + b"\r\n\r\n",  # a TLS ClientHello
    b"\x00\xff\xfe garbage \x01\x02\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost\r\n\r\n",                                      # header without a colon
    b"GET / HTTP/9.9.9\r\n\r\n",
], ids=["tls-hello", "binary", "header-no-colon", "bad-version"])
async def test_garbage_is_400(serve, garbage):
    server = await serve(echo_handler)
    status, _, body = await exchange(server, garbage)
    assert status == 400
    assert b"\n" not in body
    await check_responsive(server)


async def test_incomplete_handshake_dropped_after_timeout(serve):
    server = await serve(echo_handler, handshake_timeout=0.3)
    loop = asyncio.get_running_loop()
    # one sends half a request, one sends nothing at all
    r1, w1 = await raw_connect(server, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websock")
    r2, w2 = await raw_connect(server)
    started = loop.time()
    try:
        assert await asyncio.wait_for(r1.read(), 5000 * MS) == b""
        assert await asyncio.wait_for(r2.read(), 5000 * MS) == b""
    except ConnectionError:
        pass  # an abort (RST) is a drop too
    finally:
        w1.transport.abort()
        w2.transport.abort()
    assert loop.time() - started >= 0.2, "dropped before handshake_timeout"
    await check_responsive(server)
    # a connection that completed its handshake in time is not dropped by the handshake timer
    async with websockets.connect(server.url, compression=None) as ws:
        await asyncio.sleep(0.5)
        await ws.send("late")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "late"


async def test_handshake_completed_in_pieces_before_timeout(serve):
    server = await serve(echo_handler, handshake_timeout=2.0)
    head = upgrade_request()
    reader, writer = await raw_connect(server)
    for i in range(0, len(head), 7):
        writer.write(head[i:i + 7])
        await writer.drain()
        await asyncio.sleep(0.002)
    status, _, _ = await read_http_response(reader, TIMEOUT)
    assert status == 101
    writer.transport.abort()


async def test_101_response_headers(serve):
    server = await serve(echo_handler)
    key = base64.b64encode(os.urandom(16)).decode()
    reader, writer = await raw_connect(server, upgrade_request(key=key))
    status, headers, _ = await read_http_response(reader, TIMEOUT)
    writer.transport.abort()
    assert status == 101
    assert headers["upgrade"].lower() == "websocket"
    assert "upgrade" in headers["connection"].lower()
    assert headers["sec-websocket-accept"] == fastws.handshake.accept_key(key)
    assert "sec-websocket-extensions" not in headers  # none offered
    assert "sec-websocket-protocol" not in headers


async def test_http_response_from_app_hook(serve):
    """An accept hook may answer plain HTTP (e.g. a health check) with a Response."""

    def accept(ws, req):
        if req.path == "/health":
            return fastws.Response(200, "ok")
        return fastws.Accept(handler=echo_handler)

    server = await serve(echo_handler, accept=accept)
    status, _, body = await exchange(server, request(path="/health", headers={"Host": "x"}))
    assert (status, body) == (200, b"ok")
    await check_responsive(server)


async def test_handshake_error_from_app_hook(serve):
    def accept(ws, req):
        if req.headers.get("authorization") != "Bearer good":
            raise fastws.HandshakeError(401, "Unauthorized", [("WWW-Authenticate", "Bearer")])
        return fastws.Accept(handler=echo_handler)

    server = await serve(echo_handler, accept=accept)
    status, headers, body = await exchange(server, request(headers=upgrade_headers()))
    assert (status, body) == (401, b"Unauthorized")
    assert headers["www-authenticate"] == "Bearer"
    async with websockets.connect(server.url, additional_headers={"Authorization": "Bearer good"},
                                  compression=None) as ws:
        await ws.send("in")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "in"


@pytest.mark.allow_errors
async def test_app_hook_exception_is_500(serve):
    def accept(ws, req):
        raise RuntimeError("boom")

    server = await serve(echo_handler, accept=accept)
    status, _, body = await exchange(server, request(headers=upgrade_headers()))
    assert status == 500
    assert b"boom" not in body  # no details leak to the peer


async def test_async_accept_hook(serve):
    async def accept(ws, req):
        await asyncio.sleep(0.01)
        if req.path == "/no":
            raise fastws.HandshakeError(403, "Forbidden")
        return fastws.Accept(handler=echo_handler)

    server = await serve(echo_handler, accept=accept)
    status, _, _ = await exchange(server, request(path="/no", headers=upgrade_headers()))
    assert status == 403
    await check_responsive(server)
