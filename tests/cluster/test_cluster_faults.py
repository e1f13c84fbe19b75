"""The cluster under faults, with real processes: several ``fastws serve --redis`` nodes and one
real redis-server on loopback. kill -9 of a room's owner with a writer running, SIGSTOP of an
owner past its lease then SIGCONT, Redis killed and restarted, 1,000 rooms over 3 processes each
owned exactly once, and ``--workers`` with and without Redis."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import orjson
import pytest
import redis

import fastws

T = 5.0
TTL = "1"
ROOT = __file__.rsplit("/tests/", 1)[0]


def chat_node(fastws_proc, url, *extra):
    return fastws_proc("examples.chat:app", "--redis", url, "--lease-ttl", TTL, "--log-level", "info", *extra)


async def http_get(port, path, timeout=T):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = await asyncio.wait_for(r.read(), timeout)
    w.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def until(pred, timeout=T, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await pred():
            return
        await asyncio.sleep(step)
    raise AssertionError("condition not met in time")


def stored_contents(url, room):
    """Every chat message stored for ``room`` in Redis, in key (time) order."""
    r = redis.Redis.from_url(url)
    base = f"fastws:room:{{ChatRoom:{room}}}"
    keys = [k.decode() for k in r.zrangebylex(f"{base}:keys", "[msg:", "(msg;")]
    vals = r.hmget(f"{base}:kv", keys) if keys else []
    r.close()
    return [orjson.loads(v[1:])["content"] for v in vals]


class Reader:
    """A chat member that records every message content it sees (and whether it was cut)."""

    def __init__(self, ws):
        self.ws = ws
        self.seen: list[str] = []
        self.closed: int | None = None
        self.task = asyncio.ensure_future(self._run())

    async def _run(self):
        try:
            async for m in self.ws:
                d = orjson.loads(m)
                if "content" in d:
                    self.seen.append(d["content"])
        except fastws.ConnectionClosed:
            pass
        self.closed = self.ws.close_code


async def test_kill9_of_the_owner_with_a_writer_running(fastws_proc, redis_url):
    a, b, c = (chat_node(fastws_proc, redis_url) for _ in range(3))
    on_a = Reader(await fastws.connect(a.url + "/kill"))          # a owns the room
    await asyncio.sleep(0.2)
    on_b = Reader(await fastws.connect(b.url + "/kill"))
    on_c = Reader(await fastws.connect(c.url + "/kill"))
    writer = await fastws.connect(b.url + "/kill")
    wr = Reader(writer)
    await asyncio.sleep(0.3)
    killed_at = None
    for i in range(300):
        await writer.send(orjson.dumps({"content": f"m{i}"}).decode())
        await asyncio.sleep(0.005)
        if i == 100:
            a.kill()
            killed_at = time.monotonic()
    sent = [f"m{i}" for i in range(300)]

    async def all_arrived():
        return len(on_b.seen) >= 300 and len(on_c.seen) >= 300 and len(wr.seen) >= 300

    await until(all_arrived, timeout=15)
    took = time.monotonic() - killed_at
    # every member still connected saw every message once, in the order sent
    assert on_b.seen == sent and on_c.seen == sent and wr.seen == sent
    # what the owner's own member saw before the kill is a prefix, and all of it is stored
    assert on_a.seen == sent[:len(on_a.seen)] and on_a.closed == 1006
    stored = stored_contents(redis_url, "kill")
    assert sorted(stored, key=lambda m: int(m[1:])) == sent       # nothing lost, nothing twice
    assert took < 15
    # the new owner is b or c, and the history answers from every live node
    for node in (b, c):
        status, body = await http_get(node.port, "/kill")
        assert status == 200 and orjson.loads(body)["messages"] == 300
    for r in (on_b, on_c, wr):
        await r.ws.close()


async def test_sigstop_of_the_owner_past_its_lease(fastws_proc, redis_url):
    a, b = chat_node(fastws_proc, redis_url), chat_node(fastws_proc, redis_url)
    on_a = Reader(await fastws.connect(a.url + "/pause"))        # a owns the room
    await asyncio.sleep(0.2)
    on_b = Reader(await fastws.connect(b.url + "/pause"))
    await asyncio.sleep(0.3)
    await on_b.ws.send('{"content": "before"}')
    await until(lambda: _async(len(on_a.seen) == 1 and len(on_b.seen) == 1))
    a.sigstop()
    try:
        await on_a.ws.send('{"content": "zombie"}')               # waits in a's socket buffer
        await asyncio.sleep(2.5)                                   # past the lease (1 s) and a renewal
        await on_b.ws.send('{"content": "after"}')                # b takes the room over
        await until(lambda: _async(on_b.seen == ["before", "after"]), timeout=10)
    finally:
        a.sigcont()
    # a wakes up, reads "zombie", runs the room hook: its flush is fenced, it stops the room
    await until(lambda: _async(on_a.closed is not None), timeout=10)
    assert on_a.closed == 1012
    await asyncio.sleep(1.0)
    assert "zombie" not in on_a.seen and on_a.seen == ["before"]
    assert on_b.seen == ["before", "after"]
    assert stored_contents(redis_url, "pause") == ["before", "after"]
    assert "stopped room ChatRoom:pause" in a.stderr_text()
    # the room goes on at b; a serves it again as a member node
    again = Reader(await fastws.connect(a.url + "/pause"))
    await asyncio.sleep(0.3)
    await again.ws.send('{"content": "back"}')
    await until(lambda: _async(on_b.seen[-1:] == ["back"] and "back" in again.seen))
    await again.ws.close()
    await on_b.ws.close()


async def _async(v):
    return v


async def test_redis_restart(fastws_proc, redis_server):
    srv = redis_server()
    node = chat_node(fastws_proc, srv.url)
    ws = Reader(await fastws.connect(node.url + "/rr"))
    await ws.ws.send('{"content": "kept"}')
    await until(lambda: _async(ws.seen == ["kept"]))
    srv.kill()

    async def refused():
        status, body = await http_get(node.port, "/rr")
        return status == 503 and body == b"Room unavailable\n"

    await until(refused, timeout=5)
    with pytest.raises(fastws.InvalidHandshake) as info:
        await fastws.connect(node.url + "/other")
    assert info.value.status == 503
    await until(lambda: _async(ws.closed is not None), timeout=5)  # no Redis for a whole lease
    assert ws.closed == 1012
    srv.start()

    async def back():
        status, body = await http_get(node.port, "/rr")
        return status == 200

    await until(back, timeout=10)
    status, body = await http_get(node.port, "/rr")
    assert orjson.loads(body)["messages"] == 1                    # AOF: the write survived
    again = Reader(await fastws.connect(node.url + "/rr"))
    await until(lambda: _async(again.seen == ["kept"]))            # history from Redis
    await again.ws.send('{"content": "after restart"}')
    await until(lambda: _async(again.seen == ["kept", "after restart"]))
    await again.ws.close()
    assert node.alive()


async def test_a_thousand_rooms_over_three_processes_each_owned_once(fastws_proc, redis_url):
    # one client IP opens 1,000 rooms at once: past the default per-IP pace of new rooms
    nodes = [chat_node(fastws_proc, redis_url, "--new-rooms-per-ip", "off") for _ in range(3)]
    sem = asyncio.Semaphore(30)

    async def get(i, shift):
        async with sem:
            status, body = await http_get(nodes[(i + shift) % 3].port, f"/room{i}", timeout=20)
            assert status == 200, (i, status, body)
            return orjson.loads(body)

    docs = await asyncio.gather(*(get(i, 0) for i in range(1000)))
    assert all(d == {"sessions": 0, "messages": 0} for d in docs)
    r = redis.Redis.from_url(redis_url)

    def ownership():
        leases = {}
        for i in range(1000):
            base = f"fastws:room:{{ChatRoom:room{i}}}"
            leases[i] = (r.get(f"{base}:lease"), int(r.get(f"{base}:fence") or 0))
        return leases

    first = ownership()
    assert all(v is not None and fence == 1 for v, fence in first.values())   # acquired once each
    owners = {v.split(b" ")[0] for v, _ in first.values()}
    assert len(owners) == 3                                                  # spread over the 3 nodes
    # the same rooms from the other nodes: answered by their owners, nobody takes them again
    docs = await asyncio.gather(*(get(i, 1) for i in range(1000)))
    assert all(d["sessions"] == 0 for d in docs)
    assert ownership() == first
    r.close()


def test_workers_with_rooms_and_no_redis_refuse_to_start():
    proc = subprocess.run([sys.executable, "-m", "fastws", "serve", "examples.chat:app", "--workers", "2",
                           "--port", "0"], cwd=ROOT, capture_output=True, text=True, timeout=30,
                          env={**__import__("os").environ, "FASTWS_REDIS_URL": ""})
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--workers 2 with rooms needs --redis URL" in lines[0], proc.stderr


async def test_workers_share_rooms_through_redis(fastws_proc, redis_url):
    node = fastws_proc("examples.chat:app", "--workers", "2", "--redis", redis_url, "--lease-ttl", TTL)
    readers = [Reader(await fastws.connect(node.url + "/w")) for _ in range(8)]  # spread over both workers
    await asyncio.sleep(0.5)
    await readers[0].ws.send('{"content": "to all"}')
    await until(lambda: _async(all(rd.seen == ["to all"] for rd in readers)))
    status, body = await http_get(node.port, "/w")
    assert status == 200 and orjson.loads(body)["sessions"] == 8
    r = redis.Redis.from_url(redis_url)
    assert r.get("fastws:room:{ChatRoom:w}:fence") == b"1"
    r.close()
    for rd in readers:
        await rd.ws.close()
