"""ASGI ``http`` scopes on fastws: real FastAPI and Starlette apps, httpx and raw sockets as clients.

Several cases follow uvicorn's own protocol tests (tests/protocols/test_http.py), run here
against a real server on 127.0.0.1 instead of a mock transport.
"""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

import fastws
from fastws.asgi import ASGIApp, LifespanFailed, is_asgi_app
from tests.helpers import raw_connect
from tests.integration import asgi_apps

T = 5.0

GET = b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n"


async def read_response(reader) -> tuple[int, dict[str, str], bytes]:
    """One response: a Content-Length body, a chunked one, or (no framing) up to EOF."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        return status, headers, await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), T)
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        for _ in range(10000):
            size = int((await asyncio.wait_for(reader.readuntil(b"\r\n"), T)).strip(), 16)
            chunk = await asyncio.wait_for(reader.readexactly(size + 2), T)
            if size == 0:
                return status, headers, body
            body += chunk[:-2]
        raise AssertionError("too many chunks")
    return status, headers, b""


async def closed(reader) -> bool:
    """True once the server closed the connection (EOF within the timeout)."""
    data = await asyncio.wait_for(reader.read(1), T)
    return data == b""


@pytest.fixture
async def site(serve):
    return await serve(ASGIApp(asgi_apps.site))


@pytest.fixture
async def api(serve):
    asgi_apps.events.clear()
    return await serve(ASGIApp(asgi_apps.api))


def base(server) -> str:
    host, port = server.address
    return f"http://{host}:{port}"


def test_detects_asgi_apps():
    assert is_asgi_app(asgi_apps.api) and is_asgi_app(asgi_apps.site)

    async def raw(scope, receive, send):
        pass

    async def handler(ws):
        pass

    assert is_asgi_app(raw)
    assert not is_asgi_app(handler)
    assert not is_asgi_app(fastws.App())
    assert not is_asgi_app(fastws.Listener)


async def test_fastapi_json_and_post(api):
    async with httpx.AsyncClient(base_url=base(api)) as client:
        r = await client.get("/json")
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        assert r.json() == {"message": "hello", "items": [1, 2, 3]}
        r = await client.post("/items", json={"name": "cup", "n": 2})
        assert r.json() == {"received": {"name": "cup", "n": 2}}
        r = await client.post("/items", content=b"not json", headers={"content-type": "application/json"})
        assert r.status_code == 422
        r = await client.get("/missing")
        assert r.status_code == 404


async def test_asgi_http_requests_are_counted_like_native_ones(api):
    before = api.endpoint.stats()["http_requests"]
    async with httpx.AsyncClient(base_url=base(api)) as client:   # one keep-alive connection
        for path in ("/json", "/json", "/missing"):
            await client.get(path)
    assert api.endpoint.stats()["http_requests"] - before == 3


async def test_lifespan_startup_state_and_shutdown(serve):
    asgi_apps.events.clear()
    server = await serve(ASGIApp(asgi_apps.api))
    assert asgi_apps.events == [("startup",)]  # before the server took a request
    async with httpx.AsyncClient(base_url=base(server)) as client:
        r = await client.get("/state")
    assert r.json() == {"greeting": "hello from lifespan"}
    await server.shutdown(timeout=2)
    assert asgi_apps.events == [("startup",), ("shutdown",)]


async def test_lifespan_failure_stops_the_start():
    async def app(scope, receive, send):
        assert scope["type"] == "lifespan"
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})

    server = fastws.serve(ASGIApp(app), "127.0.0.1", 0)
    with pytest.raises(LifespanFailed, match="no database"):
        await server.start()
    assert server.sockets == []  # never listened


async def test_app_without_lifespan_is_served(serve, caplog):
    async def app(scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"unsupported scope {scope['type']}")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    server = await serve(ASGIApp(app))
    async with httpx.AsyncClient(base_url=base(server)) as client:
        assert (await client.get("/")).text == "ok"

    with pytest.raises(LifespanFailed):
        await fastws.serve(ASGIApp(app, lifespan="on"), "127.0.0.1", 0).start()


async def test_keep_alive_serves_requests_on_one_connection(site):
    reader, writer = await raw_connect(site)
    try:
        for _ in range(3):
            writer.write(GET)
            status, headers, body = await read_response(reader)
            assert status == 200 and body == b"Hello, world"
            assert headers.get("connection") != "close"
    finally:
        writer.close()


async def test_connection_close_and_http10_close_after_the_response(site):
    reader, writer = await raw_connect(site, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert (status, body, headers["connection"]) == (200, b"Hello, world", "close")
    assert await closed(reader)
    writer.close()
    reader, writer = await raw_connect(site, b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert (status, body) == (200, b"Hello, world")
    assert await closed(reader)
    writer.close()


async def test_pipelined_requests_are_answered_in_order(site):
    reader, writer = await raw_connect(site, GET + b"GET /length HTTP/1.1\r\nHost: x\r\n\r\n" + GET)
    try:
        answers = [await read_response(reader) for _ in range(3)]
        assert [a[2] for a in answers] == [b"Hello, world", b"0123456789", b"Hello, world"]
        assert answers[1][1]["x-kind"] == "fixed"
    finally:
        writer.close()


async def test_head_has_the_headers_and_no_body(site):
    reader, writer = await raw_connect(site, b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)  # not the announced body
        assert head.startswith(b"HTTP/1.1 200") and b"content-length: 12\r\n" in head
        writer.write(GET)  # a body left on the wire would be read as the next response's head
        status, _, body = await read_response(reader)
        assert (status, body) == (200, b"Hello, world")
    finally:
        writer.close()


async def test_request_body_is_streamed_to_the_app(site):
    body = b"x" * (1 << 20)
    reader, writer = await raw_connect(site, b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                                       % len(body))
    try:
        for i in range(0, len(body), 65536):
            writer.write(body[i:i + 65536])
            await writer.drain()
        status, _, answer = await read_response(reader)
        assert status == 200
        result = httpx.Response(200, content=answer).json()
        assert result["size"] == len(body)
        assert result["chunks"] > 1  # handed over as it arrived, not read whole
    finally:
        writer.close()


async def test_chunked_request_body(site):
    async def parts():
        for i in range(5):
            yield b"%d" % i * 1000

    async with httpx.AsyncClient(base_url=base(site)) as client:
        r = await client.post("/echo", content=parts())
    assert r.status_code == 200 and r.content == b"".join(b"%d" % i * 1000 for i in range(5))


async def test_streaming_response_arrives_before_it_is_complete(site):
    asgi_apps.gate["step"] = step = asyncio.Event()
    try:
        reader, writer = await raw_connect(site, b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
        assert b"transfer-encoding: chunked" in head.lower()
        first = await asyncio.wait_for(reader.readuntil(b"first\n\r\n"), T)
        assert first.endswith(b"6\r\nfirst\n\r\n")  # out while the app still waits on the test
        step.set()
        rest = await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), T)
        assert b"part 2\n" in rest
        writer.write(GET)  # the chunked response ended cleanly: the connection is reusable
        assert (await read_response(reader))[2] == b"Hello, world"
        writer.close()
    finally:
        asgi_apps.gate.clear()


async def test_expect_100_continue_when_the_app_reads(site):
    body = b'{"hello": "world"}'
    reader, writer = await raw_connect(site, b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                                       b"Content-Length: %d\r\n\r\n" % len(body))
    try:
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body)
        status, _, answer = await read_response(reader)
        assert (status, answer) == (200, body)
    finally:
        writer.close()


async def test_expect_100_continue_not_sent_when_the_app_refuses(site):
    reader, writer = await raw_connect(site, b"POST /refuse HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                                       b"Content-Length: 1000000\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert (status, body) == (413, b"too big")  # no 100 Continue before it
    assert headers["connection"] == "close"
    assert await closed(reader)
    writer.close()


async def test_early_response_then_the_body_keeps_the_connection(site):
    reader, writer = await raw_connect(site, b"POST /refuse HTTP/1.1\r\nHost: x\r\nContent-Length: 18\r\n\r\n")
    try:
        status, _, _ = await read_response(reader)
        assert status == 413
        writer.write(b'{"hello": "world"}' + GET)
        assert (await read_response(reader))[2] == b"Hello, world"
    finally:
        writer.close()


async def test_observability_routes_stay_fastws(site):
    async with httpx.AsyncClient(base_url=base(site)) as client:
        r = await client.get("/healthz")
        assert r.status_code == 200
        r = await client.get("/metrics")
        assert r.status_code == 200 and "fastws_connections" in r.text


@pytest.mark.allow_errors
async def test_app_errors_give_500_or_a_cut_connection(serve):
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        path = scope["path"]
        if path == "/raise":
            raise RuntimeError("boom")
        if path == "/nothing":
            return
        if path == "/no-start":
            await send({"type": "http.response.body", "body": b""})
        await send({"type": "http.response.start", "status": 200})
        if path == "/partial":
            await send({"type": "http.response.body", "body": b"1", "more_body": True})
            if scope["query_string"] == b"raise":
                raise RuntimeError("boom during the body")
            return
        if path == "/split":
            return
        if path == "/short":
            return
        await send({"type": "http.response.body", "body": b"done"})

    server = await serve(ASGIApp(app, lifespan="off"))
    for path in ("/raise", "/nothing", "/no-start"):
        reader, writer = await raw_connect(server, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        status, headers, _ = await read_response(reader)
        assert status == 500 and headers["connection"] == "close", path
        assert await closed(reader)
        writer.close()
    for path in ("/partial", "/partial?raise"):
        reader, writer = await raw_connect(server, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
        assert head.startswith(b"HTTP/1.1 200")
        rest = await asyncio.wait_for(reader.read(), T)  # up to EOF: the connection is cut
        assert b"0\r\n\r\n" not in rest  # never a clean end for an incomplete response
        writer.close()


@pytest.mark.allow_errors
async def test_bad_responses_are_cut_not_forwarded(serve):
    async def app(scope, receive, send):
        if scope["path"] == "/split":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"key", b"value\r\nCookie: smuggled=value")]})
        elif scope["path"] == "/long":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"3")]})
            await send({"type": "http.response.body", "body": b"toolong"})
        else:
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"10")]})
            await send({"type": "http.response.body", "body": b"xxx"})

    server = await serve(ASGIApp(app, lifespan="off"))
    for path in ("/split", "/long", "/short"):
        reader, writer = await raw_connect(server, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), T)
        assert b"smuggled" not in data and b"toolong" not in data
        writer.close()


async def test_invalid_http_and_huge_headers(site):
    for request in (b"G?T / HTTP/1.1\r\nHost: x\r\n\r\n", b"GET / HTTP1.1\r\nHost: x\r\n\r\n"):
        reader, writer = await raw_connect(site, request)
        status, _, _ = await read_response(reader)
        assert status == 400
        writer.close()
    reader, writer = await raw_connect(site, b"GET / HTTP/1.1\r\nHost: x\r\nCookie: " + b"x" * 40000 + b"\r\n\r\n")
    status, _, _ = await read_response(reader)
    assert status == 431
    writer.close()


async def test_split_reads_and_raw_path(serve):
    seen = []

    async def app(scope, receive, send):
        seen.append((scope["path"], scope["raw_path"], scope["query_string"], scope["root_path"]))
        await send({"type": "http.response.start", "status": 204})
        await send({"type": "http.response.body"})

    server = await serve(ASGIApp(app, lifespan="off", root_path="/app"))
    reader, writer = await raw_connect(server)
    request = b"GET /one%2Ftwo%2Dthree?a=b HTTP/1.1\r\nHost: x\r\n\r\n"
    for i in range(len(request)):  # one byte per write: the parser keeps its place
        writer.write(request[i:i + 1])
        await writer.drain()
    status, _, _ = await read_response(reader)
    writer.close()
    assert status == 204
    assert seen == [("/app/one/two-three", b"/one%2Ftwo%2Dthree", b"a=b", "/app")]


async def test_read_after_response_is_disconnect(serve):
    after = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body"})
        after.append(await receive())

    server = await serve(ASGIApp(app, lifespan="off"))
    async with httpx.AsyncClient(base_url=base(server)) as client:
        assert (await client.post("/", content=b"data")).status_code == 200
    assert after == [{"type": "http.disconnect"}]


async def test_client_gone_mid_request_gives_disconnect(serve):
    got = asyncio.get_running_loop().create_future()

    async def app(scope, receive, send):
        for _ in range(100):
            message = await receive()
            if message["type"] == "http.disconnect":
                got.set_result(message)
                return

    server = await serve(ASGIApp(app, lifespan="off"))
    reader, writer = await raw_connect(server, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
    await asyncio.sleep(0)
    writer.close()
    assert (await asyncio.wait_for(got, T)) == {"type": "http.disconnect"}


async def test_idle_keep_alive_connections_time_out_and_close_on_shutdown(serve):
    server = await serve(ASGIApp(asgi_apps.site, keep_alive_timeout=0.05))
    reader, writer = await raw_connect(server, GET)
    assert (await read_response(reader))[0] == 200
    assert await closed(reader)  # the idle timeout closed it
    writer.close()

    server = await serve(ASGIApp(asgi_apps.site))
    reader, writer = await raw_connect(server, GET)
    assert (await read_response(reader))[0] == 200
    await server.shutdown(timeout=2)
    assert await closed(reader)
    writer.close()


async def test_access_log_has_the_real_status(site, caplog):
    caplog.set_level(logging.INFO, logger="fastws.access")
    async with httpx.AsyncClient(base_url=base(site)) as client:
        assert (await client.get("/")).status_code == 200
        assert (await client.get("/nope")).status_code == 404
    lines = [r.getMessage() for r in caplog.records if r.name == "fastws.access"]
    assert any("GET /" in line and " 200" in line for line in lines), lines
    assert any("GET /nope" in line and " 404" in line for line in lines), lines


async def test_guards_apply_to_http_requests(serve):
    app = fastws.App.wrap(ASGIApp(asgi_apps.site), firewall={"rules": [{"action": "deny", "ip": "127.0.0.1"}],
                                                             "default": "allow"})
    server = await serve(app)
    async with httpx.AsyncClient(base_url=base(server)) as client:
        r = await client.get("/")
    assert r.status_code == 403


async def test_half_closed_request_still_gets_its_response(site):
    reader, writer = await raw_connect(site, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
    writer.write_eof()  # the client is done sending
    status, _, body = await read_response(reader)
    assert (status, body) == (200, b"hello")
    assert await closed(reader)
    writer.close()
