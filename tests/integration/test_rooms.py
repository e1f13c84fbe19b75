"""Rooms end to end on 127.0.0.1:0 with real SQLite files: the chat example, the room model
(one instance per name, serial events, hooks that fail or hang), sockets, tags, attachments,
the durability gate, slow consumers, batching."""

from __future__ import annotations

import asyncio
import logging
import socket
import sqlite3
import threading

import orjson
import pytest

import fastws
from fastws.rooms import AttachmentTooLarge, Room, RoomRouter
from fastws.rooms import storage as storage_mod

T = 5.0  # generous bound on every wait; nothing here is timed


async def recv_json(ws):
    return orjson.loads(await asyncio.wait_for(ws.recv(), T))


async def http_get(server, path):
    host, port = server.address
    r, w = await asyncio.open_connection(host, port)
    w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await asyncio.wait_for(r.read(), T)
    w.close()
    await w.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


# ---------------------------------------------------------------- the chat example

async def test_chat_example_protocol(serve, tmp_path):
    from examples.chat import ChatRoom

    server = await serve(RoomRouter(ChatRoom, data_dir=str(tmp_path)))
    a = await fastws.connect(server.url + "/lobby")
    b = await fastws.connect(server.url + "/lobby")
    joined = await recv_json(a)
    assert joined["type"] == "user_joined" and "timestamp" in joined
    b_id = joined["userId"]
    await a.send(orjson.dumps({"content": "hello"}).decode())
    m1, m2 = await recv_json(a), await recv_json(b)
    assert m1 == m2
    assert m1["content"] == "hello" and m1["userId"] != b_id and len(m1["id"]) == 36
    assert m1["timestamp"].endswith("Z") and "T" in m1["timestamp"]
    for bad in ("not json", '{"text": 1}', '{"content": 5}', "[1]", b"\x00"):
        await b.send(bad)
        assert await recv_json(b) == {"type": "error", "message": "Invalid message format"}
    assert await http_get(server, "/lobby") == (200, b'{"sessions":2,"messages":1}')
    assert await http_get(server, "/") == (200, b'{"sessions":0,"messages":0}')
    await b.close()
    left = await recv_json(a)
    assert left["type"] == "user_left" and left["userId"] == b_id
    # a newcomer gets the history first, then the others hear about it
    c = await fastws.connect(server.url + "/lobby")
    assert await recv_json(c) == m1
    joined = await recv_json(a)
    assert joined["type"] == "user_joined"
    await a.close()
    await c.close()


async def test_chat_history_survives_restart_and_keeps_the_last_50(tmp_path):
    from examples.chat import ChatRoom

    async with fastws.serve(RoomRouter(ChatRoom, data_dir=str(tmp_path)), "127.0.0.1", 0) as server:
        async with fastws.connect(server.url + "/r") as ws:
            for i in range(60):
                await ws.send(orjson.dumps({"content": f"m{i}"}).decode())
            for i in range(60):
                assert (await recv_json(ws))["content"] == f"m{i}"
    async with fastws.serve(RoomRouter(ChatRoom, data_dir=str(tmp_path)), "127.0.0.1", 0) as server:
        async with fastws.connect(server.url + "/r") as ws:
            history = [(await recv_json(ws))["content"] for _ in range(50)]
            assert history == [f"m{i}" for i in range(10, 60)]
        assert await http_get(server, "/r") == (200, b'{"sessions":0,"messages":60}')


# ---------------------------------------------------------------- the room model

class Counter(Room):
    created: list[str] = []

    def __init__(self) -> None:
        Counter.created.append(self.name)
        self.n = 0

    async def on_message(self, ws, message):
        if message == "get":
            ws.send(str(self.n))
            return
        if message == "block":
            await self.blocked.wait()  # type: ignore[attr-defined]
            return
        v = self.n
        await asyncio.sleep(0.001)  # interleaving here would lose increments
        self.n = v + 1


async def test_one_instance_per_name_and_serial_events(serve, tmp_path):
    Counter.created = []
    router = RoomRouter(Counter, data_dir=str(tmp_path))
    server = await serve(router)
    clients = [await fastws.connect(server.url + "/c") for _ in range(5)]
    other = await fastws.connect(server.url + "/d")
    await asyncio.gather(*(ws.send("inc") for ws in clients for _ in range(20)))
    await clients[0].send("get")
    assert await asyncio.wait_for(clients[0].recv(), T) == "100"
    assert sorted(Counter.created) == ["c", "d"]
    # a second router of the same class and data directory shares the live rooms
    assert RoomRouter(Counter, data_dir=str(tmp_path)).room("c") is router.room("c")
    for ws in clients + [other]:
        await ws.close()


async def test_rooms_run_concurrently(serve, tmp_path):
    router = RoomRouter(Counter, data_dir=str(tmp_path))
    server = await serve(router)
    a = await fastws.connect(server.url + "/a")
    b = await fastws.connect(server.url + "/b")
    await a.send("get")
    await a.recv()
    room_a = router.room("a")
    room_a.blocked = asyncio.Event()
    await a.send("block")
    await a.send("get")  # waits behind the blocked event of room a
    await b.send("get")
    assert await asyncio.wait_for(b.recv(), T) == "0"  # room b is not held up
    room_a.blocked.set()
    assert await asyncio.wait_for(a.recv(), T) == "0"
    await a.close()
    await b.close()


class Loader(Room):
    def __init__(self) -> None:
        self.state = None
        self.block_concurrency_while(self.load())

    async def load(self) -> None:
        await asyncio.sleep(0.05)
        self.state = await self.storage.get("state") or "loaded"

    def on_connect(self, ws):
        ws.send(f"connect:{self.state}")

    def on_message(self, ws, message):
        ws.send(f"{message}:{self.state}")


async def test_block_concurrency_while_holds_events(serve, tmp_path):
    server = await serve(RoomRouter(Loader, data_dir=str(tmp_path)))
    ws = await fastws.connect(server.url + "/x")
    await ws.send("early")
    assert await asyncio.wait_for(ws.recv(), T) == "connect:loaded"
    assert await asyncio.wait_for(ws.recv(), T) == "early:loaded"
    await ws.close()


class Faulty(Room):
    hook_timeout = 0.3

    async def on_message(self, ws, message):
        if message == "raise":
            raise RuntimeError("boom in the hook")
        if message == "hang":
            await asyncio.sleep(3600)
        ws.send("ok:" + message)

    def on_error(self, ws, exc):
        if ws is not None:
            ws.send(f"error:{type(exc).__name__}")


@pytest.mark.allow_errors
async def test_hook_that_raises_or_hangs(serve, tmp_path, caplog):
    server = await serve(RoomRouter(Faulty, data_dir=str(tmp_path)))
    ws = await fastws.connect(server.url + "/f")
    with caplog.at_level(logging.ERROR, logger="fastws.rooms"):
        await ws.send("raise")
        assert await asyncio.wait_for(ws.recv(), T) == "error:RuntimeError"
        await ws.send("after")
        assert await asyncio.wait_for(ws.recv(), T) == "ok:after"
        await ws.send("hang")
        await ws.send("next")  # queued behind the hang, runs once the hang is cancelled
        assert await asyncio.wait_for(ws.recv(), T) == "error:TimeoutError"
        assert await asyncio.wait_for(ws.recv(), T) == "ok:next"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert sum("'f'" in m and "on_message failed" in m for m in errors) == 1  # logged once
    assert sum("'f'" in m and "did not finish within" in m for m in errors) == 1
    assert ws.open
    await ws.close()


# ---------------------------------------------------------------- sockets, tags, attachments

class Tagged(Room):
    def accept(self, request):
        team = request.query_param("team")
        if team == "refused":
            return fastws.Response(403, "no\n")
        return {"tags": [team or "none"], "attachment": {"user": request.query_param("user")}}

    def on_message(self, ws, message):
        if message == "who":
            ws.send(orjson.dumps([s.attachment["user"] for s in self.sockets(tag=ws.tags[0])]).decode())
        elif message == "big":
            try:
                ws.attachment = {"blob": "x" * 20000}
            except AttachmentTooLarge as exc:
                ws.send(str(exc))
        elif message == "tags":
            try:
                ws.set_tags([str(i) for i in range(11)])
            except ValueError as exc:
                ws.send(str(exc))
        else:
            self.broadcast(message, tag=ws.tags[0], exclude=ws)


async def test_tags_attachments_and_accept(serve, tmp_path):
    server = await serve(RoomRouter(Tagged, data_dir=str(tmp_path)))
    red1 = await fastws.connect(server.url + "/t?team=red&user=ann")
    red2 = await fastws.connect(server.url + "/t?team=red&user=bob")
    blue = await fastws.connect(server.url + "/t?team=blue&user=cid")
    with pytest.raises(fastws.InvalidHandshake) as info:
        await fastws.connect(server.url + "/t?team=refused")
    assert info.value.status == 403
    await red1.send("who")
    assert sorted(orjson.loads(await asyncio.wait_for(red1.recv(), T))) == ["ann", "bob"]
    await red1.send("hello reds")
    assert await asyncio.wait_for(red2.recv(), T) == "hello reds"
    await blue.send("who")
    assert orjson.loads(await asyncio.wait_for(blue.recv(), T)) == ["cid"]  # blue never got the red message
    await red1.send("big")
    assert "16384" in await asyncio.wait_for(red1.recv(), T)
    await red1.send("tags")
    assert "at most 10 tags" in await asyncio.wait_for(red1.recv(), T)
    for ws in (red1, red2, blue):
        await ws.close()


# ---------------------------------------------------------------- durability before visibility

class Ledger(Room):
    async def on_message(self, ws, message):
        await self.storage.put(f"entry:{message}", message)
        self.broadcast(f"ack:{message}")


async def test_messages_after_a_write_leave_only_once_it_is_committed(serve, tmp_path, monkeypatch):
    release = threading.Event()
    original = storage_mod._Db.sync_wal

    def slow_sync(self):
        release.wait(5)  # hold the fsync that makes a commit durable (on the room's thread)
        return original(self)

    monkeypatch.setattr(storage_mod._Db, "sync_wal", slow_sync)
    server = await serve(RoomRouter(Ledger, data_dir=str(tmp_path)))
    a = await fastws.connect(server.url + "/book")
    b = await fastws.connect(server.url + "/book")
    await a.send("1")
    got = asyncio.ensure_future(b.recv())
    await asyncio.sleep(0.2)
    assert not got.done()  # the write is not on disk: nobody has seen the ack
    threading.Timer(0.05, release.set).start()
    assert await asyncio.wait_for(got, T) == "ack:1"
    # when the ack arrived the entry was committed: another connection reads it from the file
    conn = sqlite3.connect(tmp_path / "Ledger" / "book.sqlite3")
    assert conn.execute("SELECT value FROM _fastws_kv WHERE key = 'entry:1'").fetchone() == (b'"1"',)
    conn.close()
    assert await asyncio.wait_for(a.recv(), T) == "ack:1"
    await a.close()
    await b.close()


# ---------------------------------------------------------------- slow consumers

N_FRAMES = 200


class Firehose(Room):
    max_buffered = 1 << 20
    drops: list[str] = []

    def on_message(self, ws, message):
        if message == "stats":
            ws.send(f"dropped:{self.dropped}")
        else:
            self.broadcast(message, exclude=ws)

    def on_slow_consumer(self, ws, message):
        Firehose.drops.append(ws.id)


class FirehoseClose(Firehose):
    slow_consumer = "close"


@pytest.mark.parametrize("policy", ["drop", "close"])
async def test_slow_consumer_does_not_stall_the_room(serve, tmp_path, policy):
    Firehose.drops = []
    cls = Firehose if policy == "drop" else FirehoseClose
    router = RoomRouter(cls, data_dir=str(tmp_path))
    server = await serve(router, ping_interval=None, close_timeout=1.0)
    fast = await fastws.connect(server.url + "/h", max_size=1 << 20)
    # a raw client that completes the handshake and then never reads
    host, port = server.address
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
    writer.write(b"GET /h HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), T)
    publisher = await fastws.connect(server.url + "/h")
    received = 0
    for _ in range(N_FRAMES):  # in lockstep with the member that reads: only the raw one falls behind
        await publisher.send(b"x" * 65536)
        assert len(await asyncio.wait_for(fast.recv(), T)) == 65536
        received += 1
    assert received == N_FRAMES
    # what the server holds for the member that never reads stays bounded (max_buffered plus
    # about one message), though 12.5 MiB were broadcast past it
    held = max(s.conn.buffered_amount for s in router.slot("h").sockets if s.conn is not None)
    assert held <= (1 << 20) + 2 * 65536, held
    await publisher.send("stats")
    reply = await asyncio.wait_for(publisher.recv(), T)
    if policy == "drop":
        dropped = int(reply.split(":")[1])
        assert dropped > 0 and len(Firehose.drops) == dropped
    else:
        # the slow socket was closed with 1013 (after what was already queued for it)
        assert Firehose.drops == []
        data = bytearray()
        try:
            while True:
                chunk = await asyncio.wait_for(reader.read(1 << 20), T)
                if not chunk:
                    break
                data += chunk
        except (ConnectionResetError, asyncio.TimeoutError):
            pass
        assert b"\x88\x0f\x03\xf5slow consumer" in data
    writer.close()
    await fast.close()
    await publisher.close()


# ---------------------------------------------------------------- batching

class Batched(Room):
    batch = True
    batch_delay = 0.05

    def on_message(self, ws, message):
        for i in range(int(message)):
            self.broadcast({"n": i})
        ws.send({"done": True})


async def test_batches_of_ten_then_by_time(serve, tmp_path):
    server = await serve(RoomRouter(Batched, data_dir=str(tmp_path)))
    ws = await fastws.connect(server.url + "/b")
    await ws.send("24")
    frames = [await recv_json(ws) for _ in range(3)]
    assert [f["type"] for f in frames] == ["batch"] * 3
    assert [len(f["messages"]) for f in frames] == [10, 10, 5]
    flat = [m for f in frames for m in f["messages"]]
    assert flat == [{"n": i} for i in range(24)] + [{"done": True}]
    await ws.close()


class Fragile(Room):
    created = 0

    def __init__(self) -> None:
        Fragile.created += 1

    async def on_message(self, ws, message):
        if message != "read":
            await self.storage.put("v", message)
        ws.send(f"{Fragile.created}:{await self.storage.get('v')}")


async def test_a_failed_commit_sends_nothing_that_depended_on_it(serve, tmp_path, monkeypatch):
    Fragile.created = 0
    original = storage_mod._Db.commit
    fail = {"next": False}

    def flaky_commit(self, *args, **kw):
        if fail["next"]:
            fail["next"] = False
            raise storage_mod.StorageError("disk I/O error (injected)")
        return original(self, *args, **kw)

    monkeypatch.setattr(storage_mod._Db, "commit", flaky_commit)
    router = RoomRouter(Fragile, data_dir=str(tmp_path))
    server = await serve(router)
    ws = await fastws.connect(server.url + "/x")
    await ws.send("one")
    assert await asyncio.wait_for(ws.recv(), T) == "1:one"
    fail["next"] = True
    await ws.send("lost")  # its reply ("1:lost") waits for a commit that fails: never sent
    for _ in range(500):
        if router.room("x") is None:  # the room drops its in-memory state after the failure
            break
        await asyncio.sleep(0.01)
    await ws.send("read")  # rebuilt from disk, which still says "one"
    assert await asyncio.wait_for(ws.recv(), T) == "2:one"
    await ws.send("two")
    assert await asyncio.wait_for(ws.recv(), T) == "2:two"
    await ws.close()


class Named(Room):
    def on_connect(self, ws):
        ws.send(self.name)


async def test_worker_style_handler_picks_the_room(serve, tmp_path):
    router = RoomRouter(Named, data_dir=str(tmp_path))

    class Worker:
        def fastws_accept(self, ws, request):
            if request.path == "/new":
                return router.forward(router.unique_id(), ws, request)
            if request.path.startswith("/game/"):
                return router.forward("game-" + request.path.rsplit("/", 1)[1], ws, request)
            return fastws.Response(404, "no such room\n")

    server = await serve(Worker())
    async with fastws.connect(server.url + "/game/7") as ws:
        assert await asyncio.wait_for(ws.recv(), T) == "game-7"
    names = set()
    for _ in range(3):
        async with fastws.connect(server.url + "/new") as ws:
            names.add(await asyncio.wait_for(ws.recv(), T))
    assert len(names) == 3 and all(len(n) == 32 for n in names)
    with pytest.raises(fastws.InvalidHandshake) as info:
        await fastws.connect(server.url + "/elsewhere")
    assert info.value.status == 404


async def test_router_mounted_in_an_app(serve, tmp_path):
    from examples.chat import ChatRoom

    app = fastws.App()
    app.mount("/chat", RoomRouter(ChatRoom, data_dir=str(tmp_path)))
    server = await serve(app)
    async with fastws.connect(server.url + "/chat/lobby") as ws:
        await ws.send('{"content": "mounted"}')
        assert (await recv_json(ws))["content"] == "mounted"
    assert await http_get(server, "/chat/lobby") == (200, b'{"sessions":0,"messages":1}')
    assert await http_get(server, "/chat") == (200, b'{"sessions":0,"messages":0}')  # room "default"
    assert (tmp_path / "ChatRoom" / "lobby.sqlite3").exists()
