"""Ambiguous HTTP framing and duplicated headers, against a real server on 127.0.0.1: each case
gets one defined answer (the request-smuggling shapes are refused with 400 and a reason; a
connection carries one plain request, so a pipelined second one is never answered)."""

from __future__ import annotations

import asyncio

import pytest

import fastws
from tests.conftest import echo_handler

T = 5.0
KEY = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
UP = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"


@pytest.fixture
async def server(serve):
    app = fastws.App()

    @app.route("/h", methods=("GET", "POST"))
    async def h(request):
        return fastws.Response(200, f"{request.method} {request.path} body={request.body.decode()}")

    app.websocket("/")(echo_handler)
    return await serve(app)


async def exchange(server, data: bytes, wait: float = T) -> bytes:
    """Send ``data``, read until the server closes (bounded)."""
    r, w = await asyncio.open_connection(*server.address)
    w.write(data)
    out = b""
    try:
        while chunk := await asyncio.wait_for(r.read(65536), wait):
            out += chunk
    except (asyncio.TimeoutError, ConnectionError):
        pass
    w.close()
    return out


def status_and_body(resp: bytes) -> tuple[int, bytes]:
    head, _, body = resp.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.mark.parametrize("data,status,reason", [
    (b"POST /h HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
     400, b"Transfer-Encoding can't be present with Content-Length"),
    (b"POST /h HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde", 400,
     b"Duplicate Content-Length"),
    (b"POST /h HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabc", 400, b"Content-Length"),
    (b"POST /h HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nabc", 400, b"Transfer-Encoding"),
    (b"POST /h HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 400, b"Transfer-Encoding"),
    (b"POST /h HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 400,
     b"Transfer-Encoding"),
    (b"POST /h HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400, b"Malformed"),
    (b"GET /h HTTP/1.1\r\n\r\n", 400, b"Missing Host header"),
    (b"GET /h HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, b"Duplicate Host header"),
    ((UP + KEY + KEY.replace("dGhl", "aGVs") + "\r\n").encode(), 400, b"duplicate Sec-WebSocket-Key"),
    ((UP + KEY + "Sec-WebSocket-Version: 8\r\n\r\n").encode(), 426, b"only 13"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" + KEY.encode() + b"\r\n", 400,
     b"Sec-WebSocket-Version"),
])
async def test_ambiguous_requests_are_refused_with_a_reason(server, data, status, reason):
    got, body = status_and_body(await exchange(server, data))
    assert got == status and reason in body and body.count(b"\n") <= 1
    assert b"Traceback" not in body


async def test_chunked_body_is_read(server):
    data = b"POST /h HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    assert status_and_body(await exchange(server, data)) == (200, b"POST /h body=abcde")


async def test_http_1_0_without_host_is_fine(server):
    assert status_and_body(await exchange(server, b"GET /h HTTP/1.0\r\n\r\n"))[0] == 200


async def test_a_pipelined_second_request_is_not_answered(server):
    """One plain request per connection: the first is answered as sent (nothing of the second
    leaks into it), then the connection closes."""
    data = (b"POST /h HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            b"POST /other HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nxyz"
            b"GET /h HTTP/1.1\r\nHost: x\r\n\r\n")
    resp = await exchange(server, data)
    assert resp.count(b"HTTP/1.1 ") == 1 and b"Connection: close" in resp
    assert status_and_body(resp) == (200, b"POST /h body=abc")
    resp = await exchange(server, b"GET /h HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
    assert resp.count(b"HTTP/1.1 ") == 1 and status_and_body(resp) == (200, b"GET /h body=")


async def test_duplicated_upgrade_headers_with_one_meaning_are_accepted(server):
    data = (UP + KEY + "Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\r\n").encode()
    resp = await exchange(server, data, wait=0.5)
    assert resp.startswith(b"HTTP/1.1 101 ") and b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in resp


async def test_bytes_after_the_upgrade_request_are_websocket_frames(server):
    """What follows the upgrade request in the same packet is the first frames: an HTTP request
    there is a framing violation (an unmasked frame), closed 1002."""
    resp = await exchange(server, (UP + KEY + "\r\n").encode() + b"GET /h HTTP/1.1\r\nHost: x\r\n\r\n")
    head, _, rest = resp.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ")
    assert rest[0] == 0x88 and int.from_bytes(rest[2:4], "big") == 1002
    # and a masked text frame there is echoed
    frame = bytes([0x81, 0x80 | 2]) + b"\x00\x00\x00\x00" + b"hi"
    resp = await exchange(server, (UP + KEY + "\r\n").encode() + frame, wait=0.5)
    assert resp.partition(b"\r\n\r\n")[2].startswith(b"\x81\x02hi")
