"""Rooms across nodes on a real Redis: several fastws servers in this process, each its own node
(its own fastws.Cluster), so every cross-node path runs through Redis: chat with members on
three nodes, HTTP and accept hooks on a remote owner, tags and attachments of remote members,
fencing of an owner that lost its lease, alarms that move with the owner."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

import fastws
from fastws import Response
from fastws.rooms import Room, RoomRouter

T = 5.0
TTL = 0.9


async def recv_json(ws, timeout=T):
    return orjson.loads(await asyncio.wait_for(ws.recv(), timeout))


async def until(pred, timeout=T, step=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await pred() if asyncio.iscoroutinefunction(pred) else pred():
            return True
        await asyncio.sleep(step)
    raise AssertionError("condition not met in time")


async def http_get(server, path):
    host, port = server.address
    r, w = await asyncio.open_connection(host, port)
    w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    data = await asyncio.wait_for(r.read(), T)
    w.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


@pytest.fixture
async def nodes(serve, redis_url, tmp_path):
    """``await nodes(RoomClass, n)``: n servers, one cluster node each, on the same Redis."""
    made = []

    async def start(room_class, n=2, **cluster_kw):
        out = []
        for _ in range(n):
            cluster = fastws.Cluster(redis_url, lease_ttl=TTL, **cluster_kw)
            router = RoomRouter(room_class, cluster=cluster, data_dir=str(tmp_path))
            server = await serve(router, close_timeout=1.0)
            made.append(cluster)
            out.append(server)
        return out

    yield start


def owner_of(cluster_servers, cls, name):
    for s in cluster_servers:
        router = s.app
        slot = router.slot(name)
        if slot is not None and slot.role == "owner":
            return s
    return None


async def test_chat_members_on_three_nodes(nodes):
    from examples.chat import ChatRoom

    s1, s2, s3 = await nodes(ChatRoom, 3)
    a = await fastws.connect(s1.url + "/lobby")          # s1 owns the room
    await a.send('{"content": "before"}')
    assert (await recv_json(a))["content"] == "before"
    b = await fastws.connect(s2.url + "/lobby")
    assert (await recv_json(b))["content"] == "before"    # history from the owner, on another node
    joined = await recv_json(a)
    assert joined["type"] == "user_joined"
    c = await fastws.connect(s3.url + "/lobby")
    assert (await recv_json(c))["content"] == "before"
    assert (await recv_json(a))["type"] == "user_joined"
    assert (await recv_json(b))["type"] == "user_joined"
    # order: every member sees the room's messages in the same order, whoever sent them
    for i in range(20):
        await (a, b, c)[i % 3].send(orjson.dumps({"content": f"m{i}"}).decode())
    seqs = []
    for ws in (a, b, c):
        got = [(await recv_json(ws))["content"] for _ in range(20)]
        seqs.append(got)
    assert seqs[0] == seqs[1] == seqs[2]
    for sender in range(3):  # per member, in the order sent
        mine = [m for m in seqs[0] if int(m[1:]) % 3 == sender]
        assert mine == sorted(mine, key=lambda m: int(m[1:]))
    # stats from any node count the members of every node
    for s in (s1, s2, s3):
        status, body = await http_get(s, "/lobby")
        assert status == 200 and orjson.loads(body) == {"sessions": 3, "messages": 21}
    await c.close()
    assert (await recv_json(a))["type"] == "user_left"
    assert (await recv_json(b))["type"] == "user_left"
    assert owner_of((s1, s2, s3), ChatRoom, "lobby") is s1
    await a.close()
    await b.close()


class Tagged(Room):
    def accept(self, request):
        team = request.query_param("team")
        if team == "none":
            return Response(403, "no team\n")
        return {"tags": [team or "red"], "attachment": {"name": request.query_param("name")}}

    async def on_message(self, ws, message):
        if message == "who":
            ws.send(orjson.dumps(sorted(s.attachment["name"] for s in self.sockets())).decode())
        elif message == "presence":
            ws.send(orjson.dumps(await self.presence()).decode())
        elif message.startswith("team:"):
            self.broadcast(f"to {message[5:]}", tag=message[5:])
        elif message == "others":
            self.broadcast("not you", exclude=ws)
        elif message == "bin":
            self.broadcast(b"\x00\x01\xff")
        elif message == "rename":
            ws.attachment = {"name": ws.attachment["name"] + "2"}
            ws.set_tags(["blue"])
            ws.send("renamed")
        elif message == "paths":
            ws.send(orjson.dumps(sorted(s.request.query_param("name") for s in self.sockets())).decode())
        elif message == "kick":
            for s in self.sockets():
                if s is not ws:
                    s.close(4000, "kicked")


async def test_remote_accept_tags_attachments_and_targets(nodes):
    s1, s2 = await nodes(Tagged, 2)
    a = await fastws.connect(s1.url + "/t?team=red&name=ann")
    b = await fastws.connect(s2.url + "/t?team=blue&name=bob")
    await until(lambda: len(s1.app.slot("t").sockets) == 2)
    with pytest.raises(fastws.InvalidHandshake) as info:  # the owner's accept() refuses, from the other node
        await fastws.connect(s2.url + "/t?team=none")
    assert info.value.status == 403
    await a.send("who")
    assert orjson.loads(await asyncio.wait_for(a.recv(), T)) == ["ann", "bob"]
    await a.send("paths")  # a remote member's ws.request is the request its node saw
    assert orjson.loads(await asyncio.wait_for(a.recv(), T)) == ["ann", "bob"]
    await b.send("presence")
    p = orjson.loads(await asyncio.wait_for(b.recv(), T))
    assert p["total"] == 2 and sorted(p["nodes"].values()) == [1, 1]
    await a.send("team:blue")
    assert await asyncio.wait_for(b.recv(), T) == "to blue"
    await b.send("others")
    assert await asyncio.wait_for(a.recv(), T) == "not you"
    await a.send("bin")
    assert await asyncio.wait_for(a.recv(), T) == b"\x00\x01\xff"
    assert await asyncio.wait_for(b.recv(), T) == b"\x00\x01\xff"
    # a remote member's tags and attachment change on the owner
    await a.send("rename")
    assert await asyncio.wait_for(a.recv(), T) == "renamed"
    await b.send("team:blue")
    assert await asyncio.wait_for(a.recv(), T) == "to blue"
    assert await asyncio.wait_for(b.recv(), T) == "to blue"
    await a.send("kick")
    with pytest.raises(fastws.ConnectionClosed):
        await asyncio.wait_for(b.recv(), T)
    assert b.close_code == 4000 and b.close_reason == "kicked"
    await a.close()


class Counter(Room):
    async def on_message(self, ws, message):
        n = (await self.storage.get("n") or 0) + 1
        await self.storage.put("n", n)
        self.broadcast(str(n))


async def test_fenced_owner_can_neither_write_nor_send(nodes, redis_url):
    """The owner's lease is taken by another node (as after a pause past the TTL): its next
    flush is refused by Redis, nothing it sent reaches anyone, and it stops the room."""
    import redis.asyncio as aioredis

    s1, s2 = await nodes(Counter, 2)
    a = await fastws.connect(s1.url + "/c")
    b = await fastws.connect(s2.url + "/c")
    slot1 = s1.app.slot("c")
    await until(lambda: len(slot1.sockets) == 2)  # b joins when the owner has run its connect event
    await a.send("x")
    assert await asyncio.wait_for(a.recv(), T) == "1"
    assert await asyncio.wait_for(b.recv(), T) == "1"
    r = aioredis.Redis.from_url(redis_url)
    lease_key = slot1.key("lease")
    old = (await r.get(lease_key)).decode()
    # another owner takes over behind s1's back (its lease "expired"): a new token
    await r.set(lease_key, "intruder 99", px=60_000)
    await a.send("y")
    with pytest.raises(fastws.ConnectionClosed):
        await asyncio.wait_for(a.recv(), T)
    assert a.close_code == 1012
    assert slot1.role is None
    got = []
    with pytest.raises(asyncio.TimeoutError):
        got.append(await asyncio.wait_for(b.recv(), 0.5))
    assert got == []
    kv = await r.hget(slot1.key("kv"), "n")
    assert orjson.loads(kv[1:]) == 1  # the refused write is not in Redis
    assert old != "intruder 99"
    await r.aclose()
    await b.close()


class Alarmed(Room):
    async def on_message(self, ws, message):
        await self.set_alarm(time.time() + float(message))
        ws.send("set")

    async def alarm(self, info):
        fired = (await self.storage.get("fired") or 0) + 1
        await self.storage.put("fired", fired)
        self.broadcast(f"fired {fired}")


async def test_alarm_fires_once_and_moves_with_the_owner(nodes, redis_url):
    import redis.asyncio as aioredis

    s1, s2 = await nodes(Alarmed, 2)
    a = await fastws.connect(s1.url + "/al")
    b = await fastws.connect(s2.url + "/al")
    await until(lambda: len(s1.app.slot("al").sockets) == 2)
    await a.send("1.5")
    assert await asyncio.wait_for(a.recv(), T) == "set"
    # s1 loses the room before the alarm is due (its lease goes away: as if it died)
    slot1 = s1.app.slot("al")
    r = aioredis.Redis.from_url(redis_url)
    await r.delete(slot1.key("lease"))
    slot1.lost("test: lease gone")
    with pytest.raises(fastws.ConnectionClosed):
        await asyncio.wait_for(a.recv(), T)
    # s2 (a member node) takes the room over and fires the alarm, once
    assert await asyncio.wait_for(b.recv(), 3 * TTL + 3) == "fired 1"
    await until(lambda: owner_of((s1, s2), Alarmed, "al") is s2)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(b.recv(), 1.0)
    assert await r.zcard(f"fastws:alarms") == 0
    await r.aclose()
    await b.close()


async def test_binary_and_text_from_remote_members_keep_their_type(nodes):
    class Echo(Room):
        def on_message(self, ws, message):
            ws.send(message)

    s1, s2 = await nodes(Echo, 2)
    a = await fastws.connect(s1.url + "/e")
    b = await fastws.connect(s2.url + "/e")
    await b.send(b"\x00\xffbin")
    await b.send("text")
    assert await asyncio.wait_for(b.recv(), T) == b"\x00\xffbin"
    assert await asyncio.wait_for(b.recv(), T) == "text"
    await a.close()
    await b.close()


async def test_websockets_client_on_a_member_node(nodes):
    from websockets.asyncio.client import connect

    from examples.chat import ChatRoom

    s1, s2 = await nodes(ChatRoom, 2)
    a = await fastws.connect(s1.url + "/ws")
    async with connect(s2.url + "/ws") as b:
        assert (await recv_json(a))["type"] == "user_joined"
        await b.send('{"content": "from websockets"}')
        assert orjson.loads(await asyncio.wait_for(b.recv(), T))["content"] == "from websockets"
        assert (await recv_json(a))["content"] == "from websockets"
    assert (await recv_json(a))["type"] == "user_left"
    await a.close()


async def test_shutdown_with_members_still_connected_ends(nodes):
    """Servers shut down while an owner and a member node both hold sockets of one room."""
    s1, s2 = await nodes(Counter, 2)
    a = await fastws.connect(s1.url + "/sd")
    b = await fastws.connect(s2.url + "/sd")
    await until(lambda: len(s1.app.slot("sd").sockets) == 2)
    await a.send("x")
    assert await asyncio.wait_for(a.recv(), T) == "1"
    assert await asyncio.wait_for(b.recv(), T) == "1"
    for s in (s2, s1):
        await asyncio.wait_for(s.shutdown(timeout=2), 10)
    with pytest.raises(fastws.ConnectionClosed):
        await asyncio.wait_for(b.recv(), T)


class Sleepy(Room):
    hibernate = 0.3
    woken = 0

    def __init__(self):
        type(self).woken += 1

    def on_message(self, ws, message):
        self.broadcast(f"{message} ({len(self.sockets())} here)")


async def test_hibernation_keeps_remote_members(nodes):
    s1, s2 = await nodes(Sleepy, 2)
    a = await fastws.connect(s1.url + "/h")
    b = await fastws.connect(s2.url + "/h")
    slot = s1.app.slot("h")
    await until(lambda: len(slot.sockets) == 2)
    await b.send("one")
    assert await asyncio.wait_for(a.recv(), T) == "one (2 here)"
    assert await asyncio.wait_for(b.recv(), T) == "one (2 here)"
    await until(lambda: slot.room is None, timeout=3)              # asleep, sockets kept
    woken = Sleepy.woken
    await b.send("two")                                            # a remote member wakes it
    assert await asyncio.wait_for(b.recv(), T) == "two (2 here)"
    assert await asyncio.wait_for(a.recv(), T) == "two (2 here)"
    assert Sleepy.woken == woken + 1
    await a.close()
    await b.close()


class Firehose(Room):
    max_buffered = 1 << 20
    slow_consumer = "close"

    async def on_message(self, ws, message):
        if message == "go":
            chunk = "x" * 2048
            for i in range(3000):
                self.broadcast(chunk)
                if i % 10 == 9:
                    await asyncio.sleep(0.005)  # a few turns: readers that read keep up
            self.broadcast("end")


async def test_slow_consumer_policy_on_a_member_node(nodes):
    """A member on a non-owner node that never reads is closed (the room's policy, applied by its
    node) once 6 MB are sent (more than the kernel's buffers hold); the other members, on both
    nodes, get every message."""
    import socket

    from tests.helpers import upgrade_request

    s1, s2 = await nodes(Firehose, 2)
    a = await fastws.connect(s1.url + "/f", max_size=1 << 20)
    b = await fastws.connect(s2.url + "/f", max_size=1 << 20)
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(s2.address)
    raw.sendall(upgrade_request("/f"))
    slot = s1.app.slot("f")
    await until(lambda: len(slot.sockets) == 3)
    await a.send("go")

    async def drain(ws):
        n = 0
        while True:
            m = await asyncio.wait_for(ws.recv(), T)
            if m == "end":
                return n
            n += 1

    assert await asyncio.gather(drain(a), drain(b)) == [3000, 3000]
    await until(lambda: len(slot.sockets) == 2)   # the slow one was closed on s2, and left the room
    raw.close()
    await a.close()
    await b.close()
