"""The edge guards over real loopback sockets: every status and close code they produce."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc

import pytest

import fastws
from tests.conftest import EchoListener
from tests.helpers import raw_connect, read_http_response, upgrade_request

TIMEOUT = 5.0


def echo_app(**guards) -> fastws.App:
    app = fastws.App(**guards)

    @app.websocket("/")
    async def echo(ws):
        async for message in ws:
            await ws.send(message)

    return app


async def upgrade_status(server, path: str = "/", extra: str = "") -> tuple[int, dict[str, str], bytes]:
    """Send a raw upgrade; return the status (101 included), headers and body of the answer."""
    reader, writer = await raw_connect(server, upgrade_request(path, extra=extra))
    try:
        return await read_http_response(reader, TIMEOUT)
    finally:
        writer.close()


async def refused(url: str, **kw) -> fastws.InvalidHandshake:
    with pytest.raises(fastws.InvalidHandshake) as info:
        await asyncio.wait_for(fastws.connect(url, **kw), TIMEOUT)
    return info.value


async def echo_once(url: str, **kw) -> None:
    async with fastws.connect(url, **kw) as ws:
        await ws.send("ping")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "ping"


# ------------------------------------------------------------------ origin


async def test_origin_allow_list(serve):
    server = await serve(echo_app(origins=["https://example.com", "https://app.example.com"]))
    await echo_once(server.url, headers=[("Origin", "https://app.example.com")])
    err = await refused(server.url, headers=[("Origin", "https://evil.example.com")])
    assert (err.status, err.body) == (403, b"Forbidden")
    err = await refused(server.url)  # no Origin at all
    assert err.status == 403


async def test_per_route_origin_override(serve):
    app = echo_app(origins=["https://example.com"])

    @app.websocket("/open", origins=["https://other.example"])
    async def other(ws):
        await ws.send("other")

    server = await serve(app)
    err = await refused(server.url + "/open", headers=[("Origin", "https://example.com")])
    assert err.status == 403
    async with fastws.connect(server.url + "/open", headers=[("Origin", "https://other.example")]) as ws:
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "other"


# ------------------------------------------------------------------ firewall


@pytest.mark.parametrize("rules,default,path,extra,status", [
    ([{"action": "deny", "ip": "127.0.0.0/8"}], "allow", "/", "", 403),
    ([{"action": "deny", "ip": "::1"}], "allow", "/", "", 101),
    ([{"action": "deny", "path": "/admin*"}], "allow", "/admin/x", "", 403),
    ([{"action": "deny", "header": {"User-Agent": "*bot*"}}], "allow", "/", "User-Agent: evilbot\r\n", 403),
    ([{"action": "deny", "header": {"User-Agent": "*bot*"}}], "allow", "/", "User-Agent: firefox\r\n", 101),
    ([{"action": "allow", "header": {"X-Api-Key": "k-*"}}], "deny", "/", "X-Api-Key: k-1\r\n", 101),
    ([{"action": "allow", "header": {"X-Api-Key": "k-*"}}], "deny", "/", "", 403),
])
async def test_firewall_rules(serve, rules, default, path, extra, status):
    app = fastws.App(firewall={"rules": rules, "default": default})
    app.mount("/", _Echo())
    server = await serve(app)
    got, _, body = await upgrade_status(server, path, extra)
    assert got == status
    if status == 403:
        assert body == b"Forbidden"


class _Echo:
    def fastws_accept(self, ws, request):
        return fastws.Accept(listener=EchoListener())


# ------------------------------------------------------------------ connection rate and client IP


async def test_connection_rate_eleventh_gets_429(serve):
    server = await serve(echo_app(connection_rate="10/60s"))
    for _ in range(10):
        await echo_once(server.url)
    err = await refused(server.url)
    assert (err.status, err.body) == (429, b"Too Many Requests")
    assert int(dict((k.lower(), v) for k, v in err.headers.items())["retry-after"]) == 6


async def test_spoofed_forwarded_for_from_untrusted_peer_is_ignored(serve):
    server = await serve(echo_app(connection_rate="1/60s"))
    assert (await upgrade_status(server, extra="X-Forwarded-For: 198.51.100.1\r\n"))[0] == 101
    status, _, _ = await upgrade_status(server, extra="X-Forwarded-For: 198.51.100.2\r\n")
    assert status == 429  # a new X-Forwarded-For does not buy a new bucket


async def test_forwarded_for_from_trusted_proxy_is_the_client(serve):
    app = echo_app(connection_rate="1/60s", trusted_proxies=["127.0.0.1/32", "::1"])

    @app.route("/ip")
    def ip(request):
        return request.scope["client_ip"]

    server = await serve(app)
    assert (await upgrade_status(server, extra="X-Forwarded-For: 198.51.100.1\r\n"))[0] == 101
    assert (await upgrade_status(server, extra="X-Forwarded-For: 198.51.100.2\r\n"))[0] == 101
    assert (await upgrade_status(server, extra="X-Forwarded-For: 198.51.100.1\r\n"))[0] == 429
    reader, writer = await raw_connect(server, b"GET /ip HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6, "
                                               b"203.0.113.5\r\n\r\n")
    assert (await read_http_response(reader, TIMEOUT))[2] == b"203.0.113.5"
    writer.close()


async def test_ban_after_limit_trips(serve):
    server = await serve(echo_app(connection_rate={"rate": "1/60s", "ban": 600}))
    await echo_once(server.url)
    err = await refused(server.url)
    assert err.status == 429 and dict((k.lower(), v) for k, v in err.headers.items())["retry-after"] == "600"


# ------------------------------------------------------------------ connection caps


async def test_caps_queue_full_and_timeout(serve):
    app = echo_app(max_connections=2, queue_size=1, queue_timeout=0.3)
    server = await serve(app)
    caps = app.guards.caps
    a = await fastws.connect(server.url)
    b = await fastws.connect(server.url)
    waiter = asyncio.ensure_future(fastws.connect(server.url))
    for _ in range(100):
        if caps.waiting:
            break
        await asyncio.sleep(0.005)
    assert caps.waiting == 1
    err = await refused(server.url)  # the queue holds one: the next one is refused at once
    assert (err.status, err.body) == (503, b"Connection pool full")
    with pytest.raises(fastws.InvalidHandshake) as info:
        await asyncio.wait_for(waiter, TIMEOUT)
    assert (info.value.status, info.value.body) == (503, b"Connection timeout")
    await a.close()
    await b.close()
    for _ in range(100):
        if caps.total == 0:
            break
        await asyncio.sleep(0.005)
    assert caps.total == 0 and caps.by_ip == {} and caps.waiting == 0


async def test_caps_waiter_gets_the_freed_slot(serve):
    app = echo_app(max_connections=1, queue_timeout=5.0)
    server = await serve(app)
    first = await fastws.connect(server.url)
    waiter = asyncio.ensure_future(fastws.connect(server.url))
    for _ in range(100):
        if app.guards.caps.waiting:
            break
        await asyncio.sleep(0.005)
    await first.close()
    second = await asyncio.wait_for(waiter, TIMEOUT)
    await second.send("after the wait")
    assert await asyncio.wait_for(second.recv(), TIMEOUT) == "after the wait"
    assert app.guards.caps.total == 1
    await second.close()


async def test_per_ip_cap(serve):
    app = echo_app(max_connections_per_ip=1, queue_size=0, trusted_proxies=["127.0.0.1", "::1"])
    server = await serve(app)
    a = await fastws.connect(server.url, headers=[("X-Forwarded-For", "198.51.100.1")])
    err = await refused(server.url, headers=[("X-Forwarded-For", "198.51.100.1")])
    assert (err.status, err.body) == (503, b"Connection pool full")
    await echo_once(server.url, headers=[("X-Forwarded-For", "198.51.100.2")])  # another client IP
    await a.close()


# ------------------------------------------------------------------ message limits


class UserAuth:
    def authenticate(self, request):
        return {"sub": request.query_param("user", "anon")}


async def test_message_rate_drop_sends_error(serve):
    server = await serve(echo_app(message_rate={"count": 3, "per": 3600}))
    async with fastws.connect(server.url) as ws:
        for i in range(5):
            await ws.send(f"m{i}")
        got = [await asyncio.wait_for(ws.recv(), TIMEOUT) for _ in range(4)]
        assert got == ["m0", "m1", "m2", "Rate limit exceeded"]  # one notice; m3 and m4 dropped
        assert ws.open


async def test_message_rate_close_1008(serve):
    server = await serve(echo_app(message_rate={"count": 2, "per": 3600, "action": "close"}))
    async with fastws.connect(server.url) as ws:
        for i in range(3):
            await ws.send(f"m{i}")
        assert [await asyncio.wait_for(ws.recv(), TIMEOUT) for _ in range(2)] == ["m0", "m1"]
        with pytest.raises(fastws.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert (ws.close_code, ws.close_reason) == (1008, "Rate limit exceeded")


async def test_message_rate_log_mode_delivers(serve, caplog):
    server = await serve(echo_app(message_rate={"count": 1, "per": 3600, "action": "log"}))
    async with fastws.connect(server.url) as ws:
        for i in range(3):
            await ws.send(f"m{i}")
        assert [await asyncio.wait_for(ws.recv(), TIMEOUT) for _ in range(3)] == ["m0", "m1", "m2"]
    assert any("message rate exceeded" in r.getMessage() for r in caplog.records)


async def test_user_message_rate_shared_across_connections(serve):
    app = echo_app(user_message_rate={"count": 3, "per": 3600, "action": "close"})
    app.auth = UserAuth()
    server = await serve(app)
    a = await fastws.connect(server.url + "/?user=alice")
    b = await fastws.connect(server.url + "/?user=alice")
    c = await fastws.connect(server.url + "/?user=bob")
    for ws in (a, b, a):
        await ws.send("x")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "x"
    await b.send("fourth from alice")
    with pytest.raises(fastws.ConnectionClosed):
        await asyncio.wait_for(b.recv(), TIMEOUT)
    assert b.close_code == 1008
    await c.send("bob is fine")
    assert await asyncio.wait_for(c.recv(), TIMEOUT) == "bob is fine"
    for ws in (a, c):
        await ws.close()


async def test_message_rate_on_a_listener_route(serve):
    app = fastws.App(message_rate={"count": 2, "per": 3600})
    app.mount("/", _Echo())
    server = await serve(app)
    async with fastws.connect(server.url) as ws:
        for i in range(4):
            await ws.send(f"m{i}")
        got = [await asyncio.wait_for(ws.recv(), TIMEOUT) for _ in range(3)]
        assert got == ["m0", "m1", "Rate limit exceeded"]


# ------------------------------------------------------------------ bursts


async def test_burst_of_1000_upgrades_against_rate_limit_and_cap(serve):
    """1,000 upgrade attempts from a spray of (forwarded) addresses: every one gets an answer,
    the server stays responsive, the bucket table stays capped and the slots all come back."""
    app = echo_app(connection_rate="1/60s", max_connections=20, queue_size=5, queue_timeout=0.2,
                   trusted_proxies=["127.0.0.1", "::1"], max_buckets=300)
    server = await serve(app)
    guards = app.guards
    statuses: dict[int, int] = {}
    sem = asyncio.Semaphore(50)

    async def attempt(i: int) -> None:
        async with sem:
            ip = f"10.{(i >> 8) & 255}.{i & 255}.{i % 2}" if i % 3 else "10.0.0.1"  # a third reuse one IP
            reader, writer = await raw_connect(server, upgrade_request(extra=f"X-Forwarded-For: {ip}\r\n"))
            try:
                status, _, _ = await read_http_response(reader, TIMEOUT)
            finally:
                writer.close()
            statuses[status] = statuses.get(status, 0) + 1

    tracemalloc.start()
    try:
        await asyncio.gather(*(attempt(i) for i in range(100)))  # warm up the allocator and caches
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        statuses.clear()
        await asyncio.wait_for(asyncio.gather(*(attempt(i) for i in range(1000, 2000))), 60)
        assert sum(statuses.values()) == 1000
        assert statuses.get(429, 0) >= 300  # the repeated IP and repeated sprayed ones
        assert set(statuses) <= {101, 429, 503}
        assert len(guards.conn_rate.table) <= 300
        for _ in range(200):
            if guards.caps.total == 0:
                break
            await asyncio.sleep(0.01)
        assert guards.caps.total == 0 and guards.caps.waiting == 0 and guards.caps.by_ip == {}
        await echo_once(server.url, headers=[("X-Forwarded-For", "192.0.2.99")])  # still responsive
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 512 * 1024, f"memory grew by {grown} bytes over a 1,000-upgrade burst"


async def test_ipv6_client_firewall_and_rate_key():
    import socket

    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    app = fastws.App(firewall=[{"action": "deny", "ip": "::1/128", "path": "/private"}],
                     connection_rate="3/60s")

    @app.websocket("/{name}")
    async def h(ws):
        await ws.send(ws.request.scope["client_ip"])

    server = fastws.serve(app, "::1", 0)
    async with server:
        url = server.url
        assert url.startswith("ws://[::1]:")
        async with fastws.connect(url + "/public") as ws:
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "::1"
        err = await refused(url + "/private")  # the firewall runs first: not counted by the rate limit
        assert err.status == 403
        await echo_once_v6(url)
        await echo_once_v6(url)
        err = await refused(url + "/public")  # the fourth counted request: over 3/60s
        assert err.status == 429
        assert "::/64" in app.guards.conn_rate.table  # IPv6 keyed by its /64


async def echo_once_v6(url: str) -> None:
    async with fastws.connect(url + "/x") as ws:
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "::1"


async def test_message_ban_outlasts_the_refill(serve):
    # 20/s with a burst of 1: a burst of 5 in one write trips it; 0.2 s later the bucket has
    # refilled, but the 600 s ban still drops (a drop without a ban would pass it)
    server = await serve(echo_app(message_rate={"count": 20, "per": 1, "burst": 1, "ban": 600}))
    async with fastws.connect(server.url) as ws:
        for i in range(5):
            ws.send(f"m{i}")
        await ws.send("flush")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "m0"
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "Rate limit exceeded"
        await asyncio.sleep(0.2)
        await ws.send("after the refill")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(ws.recv(), 0.3)
        assert ws.open
