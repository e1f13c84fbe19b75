"""Room history in a cluster: the log is a Redis stream (``<room>:log``) written by the owner's
fenced flush, so it follows the room when its owner moves. Real ``fastws serve --redis`` nodes,
a real redis-server, the fastws client."""

from __future__ import annotations

import asyncio

import orjson
import redis

import fastws
from tests.cluster.test_cluster_faults import TTL, until

T = 5.0
APP = "tests.integration.history_app:app"
SHORT = "tests.integration.history_app:short_app"


def node(fastws_proc, url, app=APP):
    return fastws_proc(app, "--redis", url, "--lease-ttl", TTL, "--log-level", "info")


async def recv_json(ws, timeout=T):
    return orjson.loads(await asyncio.wait_for(ws.recv(), timeout))


async def join(url, since=None):
    """Connect; (socket, the history/reset/error frame or None, the welcome)."""
    ws = await fastws.connect(url + (f"?since={since}" if since is not None else ""))
    first = await recv_json(ws)
    if first.get("type") == "welcome":
        return ws, None, first
    return ws, first, await recv_json(ws)


def log_key(room, cls="Chat"):
    return f"fastws:room:{{{cls}:{room}}}:log"


async def test_offsets_are_one_sequence_for_members_on_every_node_and_the_log_is_in_redis(fastws_proc,
                                                                                          redis_url):
    a, b = node(fastws_proc, redis_url), node(fastws_proc, redis_url)
    on_a, _, _ = await join(a.url + "/seq")         # a owns the room
    on_b, _, _ = await join(b.url + "/seq")
    for i in range(10):
        await (on_a if i % 2 else on_b).send(f"m{i}")
    got_a = [await recv_json(on_a) for _ in range(10)]
    got_b = [await recv_json(on_b) for _ in range(10)]
    assert got_a == got_b                         # one order for everyone, whichever node
    assert [e["offset"] for e in got_a] == list(range(1, 11))
    assert len({e["epoch"] for e in got_a}) == 1
    assert sorted(e["data"] for e in got_a) == sorted(f"m{i}" for i in range(10))
    r = redis.Redis.from_url(redis_url)
    try:
        entries = r.xrange(log_key("seq"))
        assert [sid.decode() for sid, _ in entries] == [f"{n}-1" for n in range(1, 11)]
        assert [orjson.loads(f[b"e"]) for _, f in entries] == got_a  # what members saw is what is stored
        meta = r.hgetall(f"fastws:room:{{Chat:seq}}:meta")
        assert meta[b"history_epoch"].decode() == got_a[0]["epoch"] and meta[b"history_last"] == b"10"
    finally:
        r.close()
    await on_a.close()
    await on_b.close()


async def test_a_member_of_another_node_resumes_from_the_owner(fastws_proc, redis_url):
    a, b = node(fastws_proc, redis_url), node(fastws_proc, redis_url)
    pub, _, _ = await join(a.url + "/r")           # a owns the room
    sub, _, _ = await join(b.url + "/r")
    for i in range(5):
        await pub.send(f"before{i}")
    seen = [await recv_json(sub) for _ in range(5)]
    await sub.close()
    for i in range(7):
        await pub.send(f"missed{i}")
    for _ in range(7):
        await recv_json(pub)
    last = seen[-1]
    sub2, hist, welcome = await join(b.url + "/r", f"{last['epoch']}:{last['offset']}")
    assert welcome["resumed"] is True
    assert hist["type"] == "history" and hist["since"] == 5 and hist["offset"] == 12
    assert [m["data"] for m in hist["messages"]] == [f"missed{i}" for i in range(7)]
    assert [m["offset"] for m in hist["messages"]] == list(range(6, 13))
    await pub.send("new")
    env = await recv_json(sub2)
    assert env["offset"] == 13 and env["data"] == "new"
    # another epoch, an offset the log never reached, and a malformed since: told so, joined anyway
    for since, want in ((f"{'0' * 16}:3", ("reset", "epoch")), (f"{last['epoch']}:99", ("reset", "ahead")),
                        ("nonsense", ("error", None))):
        ws, frame, welcome = await join(b.url + "/r", since)
        assert frame["type"] == want[0], frame
        if want[1] is not None:
            assert frame["reason"] == want[1] and frame["offset"] == 13
        assert welcome["type"] == "welcome"
        await ws.close()
    await sub2.close()
    await pub.close()


async def test_the_log_is_trimmed_in_redis_and_a_resume_past_it_is_a_reset(fastws_proc, redis_url):
    a, b = node(fastws_proc, redis_url, SHORT), node(fastws_proc, redis_url, SHORT)
    pub, _, _ = await join(a.url + "/t")
    envs = []
    for i in range(12):
        await pub.send(f"m{i}")
        envs.append(await recv_json(pub))
    r = redis.Redis.from_url(redis_url)
    try:
        await until(lambda: _async(r.xlen(log_key("t", "Short")) == 5))
        assert [sid for sid, _ in r.xrange(log_key("t", "Short"))] == [f"{n}-1".encode() for n in range(8, 13)]
    finally:
        r.close()
    ws, frame, _ = await join(b.url + "/t", f"{envs[0]['epoch']}:2")
    assert frame["type"] == "reset" and frame["reason"] == "trimmed"
    await ws.close()
    ws, frame, _ = await join(b.url + "/t", f"{envs[0]['epoch']}:7")  # 8..12 are all still there
    assert frame["type"] == "history" and [m["offset"] for m in frame["messages"]] == [8, 9, 10, 11, 12]
    await ws.close()
    await pub.close()


async def _async(value):
    return value


async def test_resume_after_the_owner_moved_misses_nothing_and_doubles_nothing(fastws_proc, redis_url):
    """kill -9 of the owner mid-stream; its member reconnects to a surviving node with ``since``."""
    a, b = node(fastws_proc, redis_url), node(fastws_proc, redis_url)
    sub, _, _ = await join(a.url + "/move")        # a owns the room; sub is on the owner
    pub, _, _ = await join(b.url + "/move")
    got: list[dict] = []
    sent = 0
    killed = False

    async def publish():
        nonlocal sent
        while sent < 2_000 and not killed:
            if sent - len(got) >= 100:
                await asyncio.sleep(0.002)
                continue
            await pub.send(f"p{sent}")
            sent += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(publish())
    while len(got) < 150:
        got.append(await recv_json(sub))
    a.kill()
    try:
        while True:
            got.append(await recv_json(sub, 2.0))  # what was already on its way
    except (fastws.ConnectionClosed, asyncio.TimeoutError):
        pass
    killed = True
    await asyncio.wait_for(task, T)
    # b takes the room over (within the lease TTL) and keeps its log: resume there
    last = got[-1]
    deadline = asyncio.get_running_loop().time() + 15
    while True:
        sub2, hist, welcome = await join(b.url + "/move", f"{last['epoch']}:{last['offset']}")
        if hist is not None:
            break
        await sub2.close()  # pragma: no cover - the takeover answered before any frame
        assert asyncio.get_running_loop().time() < deadline
    assert hist["type"] == "history", hist
    assert welcome["resumed"] is True
    got.extend(hist["messages"])
    await pub.send("after")
    while True:
        env = await recv_json(sub2)
        got.append(env)
        if env["data"] == "after":
            break
    offsets = [e["offset"] for e in got]
    assert offsets == list(range(1, len(got) + 1)), "a gap or a duplicate"
    assert len({e["epoch"] for e in got}) == 1             # the same log, on its new owner
    datas = [e["data"] for e in got[:-1]]
    assert datas == [f"p{i}" for i in range(len(datas))]   # in the order published, none lost
    await sub2.close()
    await pub.close()


async def test_a_takeover_after_sigstop_continues_the_log(fastws_proc, redis_url):
    """SIGSTOP of the owner past its lease: the node that takes the room over reads the log from
    Redis and its offsets follow on from the last committed one, in the same epoch."""
    a, b = node(fastws_proc, redis_url), node(fastws_proc, redis_url)
    on_a, _, _ = await join(a.url + "/fence")
    on_b, _, _ = await join(b.url + "/fence")
    await on_b.send("one")
    first = await recv_json(on_b)
    assert first["offset"] == 1
    a.sigstop()
    await asyncio.sleep(float(TTL) * 3)             # the lease runs out; b's next event takes it over
    await on_b.send("two")
    second = await recv_json(on_b, 15)
    a.sigcont()
    assert second["data"] == "two" and second["offset"] == 2 and second["epoch"] == first["epoch"]
    await asyncio.sleep(0.5)
    r = redis.Redis.from_url(redis_url)
    try:
        entries = r.xrange(log_key("fence"))
        assert [orjson.loads(f[b"e"])["data"] for _, f in entries] == ["one", "two"]
    finally:
        r.close()
    await on_b.close()


async def test_excluded_members_on_every_node_get_skip_frames(fastws_proc, redis_url):
    app = "tests.integration.history_app:echoless_app"
    a, b = node(fastws_proc, redis_url, app), node(fastws_proc, redis_url, app)
    on_a, _, _ = await join(a.url + "/ex")         # a owns the room: on_a is local, on_b remote
    on_b, _, _ = await join(b.url + "/ex")
    await on_b.send("from b")
    env = await recv_json(on_a)
    assert env["data"] == "from b" and env["offset"] == 1
    assert await recv_json(on_b) == {"type": "skip", "epoch": env["epoch"], "offset": 1}
    await on_a.send("from a")
    assert (await recv_json(on_b))["offset"] == 2
    assert await recv_json(on_a) == {"type": "skip", "epoch": env["epoch"], "offset": 2}
    await on_a.close()
    await on_b.close()
