"""/metrics, /analytics, /healthz, /readyz, the dashboard feed and the access log, on real sockets."""

from __future__ import annotations

import asyncio
import json
import logging
import re

import orjson
import pytest

import fastws
from fastws.metrics import JSONAccessFormatter, RoomInfo, recorder


async def echo(ws):
    async for m in ws:
        await ws.send(m)


class EchoListener(fastws.Listener):
    def on_message(self, ws, msg):
        ws.send(msg)


async def http_get(address, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection(*address)
    lines = [f"GET {path} HTTP/1.1", f"Host: {address[0]}"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    hdrs = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), hdrs, body


def sample(text: str, name: str, labels: str = "") -> float:
    """The value of one sample in a Prometheus text exposition."""
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else r"(\{\})?") + r" (\S+)"
    m = re.search(r"^" + pattern + r"(?: \d+)?$", text, re.M)
    assert m is not None, f"{name}{{{labels}}} not in the exposition"
    return float(m.group(m.lastindex))


async def settle(cond, n=200):
    for _ in range(n):
        if cond():
            return
        await asyncio.sleep(0.01)


async def traffic(server, connections=2, messages=5, payload="hello"):
    for _ in range(connections):
        async with fastws.connect(server.url) as c:
            for _ in range(messages):
                await c.send(payload)
                assert await c.recv() == payload


@pytest.mark.parametrize("kind", ["handler", "listener", "app"])
async def test_metrics_for_every_kind_of_app(serve, kind):
    if kind == "handler":
        target = echo
    elif kind == "listener":
        target = EchoListener
    else:
        target = fastws.App()
        target.websocket("/")(echo)
    server = await serve(target)
    await traffic(server, connections=2, messages=5)
    await settle(lambda: server.endpoint.stats()["closed"] == 2)
    status, headers, body = await http_get(server.address, "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    text = body.decode()
    assert "# TYPE fastws_connections_active gauge" in text
    assert sample(text, "fastws_connections_attempted_total") == 2
    assert sample(text, "fastws_connections_established_total") == 2
    assert sample(text, "fastws_connections_closed_total", 'code="1000"') == 2
    assert sample(text, "fastws_messages_received_total") == 10
    assert sample(text, "fastws_bytes_sent_total") == 50
    assert sample(text, "fastws_message_latency_seconds_count") == 10
    assert sample(text, "fastws_message_latency_seconds_bucket", 'le="+Inf"') == 10
    assert sample(text, "fastws_connection_duration_seconds_count") == 2
    for family in ("fastws_rooms_active", "fastws_guard_outcomes_total", "fastws_backpressure_drops_total",
                   "fastws_storage_operations_total", "fastws_alarms_fired_total", "fastws_alarms_retried_total"):
        assert f"# TYPE {family} " in text


async def test_analytics_shape_and_values(serve):
    server = await serve(echo)
    await traffic(server, connections=3, messages=4, payload="abc")
    await settle(lambda: server.endpoint.stats()["closed"] == 3)
    status, headers, body = await http_get(server.address, "/analytics")
    assert status == 200 and headers["content-type"] == "application/json"
    doc = orjson.loads(body)
    assert set(doc) == {"connections", "messages", "bandwidth", "performance", "rooms"}
    assert doc["connections"] == {"attempted": 3, "established": 3, "failed": 0, "active": 0}
    assert doc["messages"] == {"sent": 12, "received": 12, "errors": 0}
    assert doc["bandwidth"] == {"sent": 36, "received": 36}
    perf = doc["performance"]
    assert set(perf) == {"avgConnectionDuration", "avgMessageLatency"}
    assert 0 < perf["avgConnectionDuration"] < 5000 and 0 < perf["avgMessageLatency"] < 1000
    assert set(doc["rooms"]) == {"active", "hibernated", "busiest"}


async def test_analytics_lists_the_busiest_rooms():
    rooms = [RoomInfo("lobby", 5, 100), RoomInfo("quiet", 1, 2, True), RoomInfo("big", 9, 10)]

    def source():
        return rooms

    recorder.add_rooms_source(source)
    try:
        obs = fastws.Server(echo).observability
        obs.top_rooms = 2
        section = obs.analytics()["rooms"]
        assert section["active"] == 2 and section["hibernated"] == 1
        assert section["busiest"] == [{"name": "big", "sessions": 9, "messages": 10},
                                      {"name": "lobby", "sessions": 5, "messages": 100}]
        body, _ = obs.render_prometheus()
        assert sample(body.decode(), "fastws_rooms_hibernated") == 1
    finally:
        recorder.remove_rooms_source(source)


async def test_token_protects_metrics_analytics_and_dashboard(serve):
    server = await serve(echo, metrics_token="s3cret", dashboard=True)
    for path in ("/metrics", "/analytics", "/dashboard"):
        status, headers, body = await http_get(server.address, path)
        assert status == 401 and headers["www-authenticate"] == "Bearer" and body == b"Unauthorized"
        status, _, _ = await http_get(server.address, path, {"Authorization": "Bearer wrong"})
        assert status == 401
        status, _, _ = await http_get(server.address, path, {"Authorization": "Bearer s3cret"})
        assert status == 200
        status, _, _ = await http_get(server.address, path + "?token=s3cret")
        assert status == 200
    # the health checks are never protected
    assert (await http_get(server.address, "/healthz"))[0] == 200
    with pytest.raises(fastws.InvalidHandshake):
        await fastws.connect(server.url + "/dashboard/ws")
    async with fastws.connect(server.url + "/dashboard/ws?token=s3cret") as feed:
        update = json.loads(await feed.recv())
        assert "connections" in update


async def test_off_switch_and_custom_path(serve):
    server = await serve(echo, metrics=False)
    assert (await http_get(server.address, "/metrics"))[0] == 426  # the app's own answer again
    assert server.endpoint.stats_enabled is False
    server2 = await serve(echo, metrics_path="/internal/prom")
    assert (await http_get(server2.address, "/internal/prom"))[0] == 200
    assert (await http_get(server2.address, "/metrics"))[0] == 426


async def test_separate_metrics_port(serve):
    server = await serve(echo, metrics_port=0, dashboard=True)
    assert server.metrics_address != server.address
    await traffic(server, connections=1, messages=3)
    status, _, body = await http_get(server.metrics_address, "/metrics")
    assert status == 200 and sample(body.decode(), "fastws_messages_received_total") == 3
    assert (await http_get(server.metrics_address, "/dashboard"))[0] == 200
    assert (await http_get(server.metrics_address, "/elsewhere"))[0] == 404
    # the main port no longer answers /metrics, still answers the health checks
    assert (await http_get(server.address, "/metrics"))[0] == 426
    assert (await http_get(server.address, "/readyz"))[0] == 200


async def test_readyz_fails_while_draining(serve):
    server = await serve(echo, drain_delay=0.3, metrics_port=0)
    status, _, body = await http_get(server.address, "/readyz")
    assert (status, body) == (200, b"ready\n")
    async with fastws.connect(server.url) as client:
        shutdown = asyncio.ensure_future(server.shutdown(timeout=2))
        await asyncio.sleep(0.05)
        # draining: not ready, still alive, still serving the open connection
        assert (await http_get(server.address, "/readyz"))[:1] == (503,)
        assert (await http_get(server.metrics_address, "/readyz"))[:1] == (503,)
        assert (await http_get(server.address, "/healthz"))[0] == 200
        await client.send("still here")
        assert await client.recv() == "still here"
        await shutdown
    assert client.close_code == 1001


async def test_dashboard_feed_updates_while_traffic_flows(serve):
    server = await serve(echo, dashboard=True)
    server.observability.interval = 0.05
    status, headers, page = await http_get(server.address, "/dashboard")
    assert status == 200 and headers["content-type"].startswith("text/html") and b"<canvas" in page
    assert (await http_get(server.address, "/dashboard/"))[2] == page
    async with fastws.connect(server.url + "/dashboard/ws") as feed:
        first = json.loads(await feed.recv())
        await traffic(server, connections=1, messages=20)
        for _ in range(100):
            later = json.loads(await feed.recv())
            if later["messages"]["received"] >= first["messages"]["received"] + 20:
                break
        assert later["messages"]["received"] - first["messages"]["received"] == 20
        assert set(later["latency"]) == {"p50", "p90", "p99"}
        assert set(later["rates"]) == {"messagesIn", "messagesOut", "bytesIn", "bytesOut"}


async def test_guard_outcomes_are_counted(serve):
    recorder.reset()
    app = fastws.App(origins=["https://ok.example"], connection_rate={"rate": "1/60s"},
                     firewall={"rules": [{"action": "deny", "path": "/private*"}]})
    app.websocket("/")(echo)
    app.websocket("/private")(echo)
    server = await serve(app)
    with pytest.raises(fastws.InvalidHandshake):
        await fastws.connect(server.url + "/", headers={"Origin": "https://evil.example"})
    with pytest.raises(fastws.InvalidHandshake):
        await fastws.connect(server.url + "/private", headers={"Origin": "https://ok.example"})
    with pytest.raises(fastws.InvalidHandshake):
        await fastws.connect(server.url + "/", headers={"Origin": "https://ok.example"})  # the third: 429
    body = (await http_get(server.address, "/metrics"))[2].decode()
    assert sample(body, "fastws_guard_outcomes_total", 'outcome="origin_rejected",rule="origin"') == 1
    assert sample(body, "fastws_guard_outcomes_total", 'outcome="blocked",rule="firewall"') == 1
    assert sample(body, "fastws_guard_outcomes_total", 'outcome="rate_limited",rule="connection_rate"') >= 1


async def test_queue_waits_and_timeouts_are_counted(serve):
    recorder.reset()
    app = fastws.App(max_connections=1, queue_size=1, queue_timeout=0.2)
    app.websocket("/")(echo)
    server = await serve(app)
    async with fastws.connect(server.url):
        with pytest.raises(fastws.InvalidHandshake):
            await fastws.connect(server.url)      # waits 0.2 s, then 503
    assert recorder.guards[("queue_wait", "max_connections")] == 1
    assert recorder.guards[("queue_timeout", "max_connections")] == 1


async def test_access_log_plain_and_json(serve, caplog):
    app = fastws.App(origins=["https://ok.example"])
    app.websocket("/chat")(echo)
    server = await serve(app)
    with caplog.at_level(logging.INFO, logger="fastws.access"):
        async with fastws.connect(server.url + "/chat", headers={"Origin": "https://ok.example"}) as c:
            await c.send("x")
            await c.recv()
        with pytest.raises(fastws.InvalidHandshake):
            await fastws.connect(server.url + "/chat", headers={"Origin": "https://no.example"})
        assert (await http_get(server.address, "/nowhere"))[0] == 404
        assert (await http_get(server.address, "/chat"))[0] == 426  # plain HTTP on a WebSocket route
        await settle(lambda: len([r for r in caplog.records if r.name == "fastws.access"]) >= 4)
    records = [r for r in caplog.records if r.name == "fastws.access"]
    by_status = {r.status: r for r in records}
    assert set(by_status) == {101, 403, 404, 426}
    ok = by_status[101]
    assert ok.client == "127.0.0.1" and ok.path == "/chat" and ok.close_code == 1000 and ok.duration_ms > 0
    assert re.fullmatch(r'127\.0\.0\.1 "GET /chat" 101 1000 \d+\.\dms', ok.getMessage())
    assert by_status[403].close_code is None and by_status[404].path == "/nowhere"
    line = json.loads(JSONAccessFormatter().format(ok))
    assert {k: line[k] for k in ("client", "path", "status", "close_code")} == {
        "client": "127.0.0.1", "path": "/chat", "status": 101, "close_code": 1000}
    assert line["logger"] == "fastws.access" and line["time"].endswith("Z")


async def test_fastws_serve_flags(tmp_path):
    """``fastws serve`` with the observability flags, in a subprocess; access lines on stderr."""
    from tests.integration.test_examples_guards import Served

    served = Served("examples.echo:app", "--metrics-token", "tok", "--dashboard", "--metrics-path", "/prom",
                    "--drain-delay", "0.1")
    try:
        host, port = served.url.removeprefix("ws://").rsplit(":", 1)
        address = (host, int(port))
        assert (await http_get(address, "/prom"))[0] == 401
        status, _, body = await http_get(address, "/prom", {"Authorization": "Bearer tok"})
        assert status == 200 and b"fastws_connections_active" in body
        assert (await http_get(address, "/dashboard?token=tok"))[0] == 200
        async with fastws.connect(served.url + "/x") as c:
            await c.send("hi")
            assert await c.recv() == "hi"
    finally:
        served.stop()
    err = served.proc.stderr.read()
    assert '"GET /prom" 401 -' in err and '"GET /x" 101 1000' in err


async def test_observability_paths_take_get_and_head_only(serve):
    server = await serve(echo)
    reader, writer = await asyncio.open_connection(*server.address)
    writer.write(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"\r\n\r\n")
    reader, writer = await asyncio.open_connection(*server.address)
    writer.write(b"DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert data.startswith(b"HTTP/1.1 405") and b"Allow: GET, HEAD" in data
    with pytest.raises(fastws.InvalidHandshake):
        await fastws.connect(server.url + "/metrics")
