"""Room alarms (stored, retried, fired after a restart) and hibernation (sockets stay open,
auto responses without waking, closes delivered on wake), on 127.0.0.1:0 with real SQLite."""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
import pytest

import fastws
from fastws.rooms import Room, RoomRouter
from tests.helpers import until

T = 5.0




# ---------------------------------------------------------------- alarms

class Alarmed(Room):
    alarm_retry_base = 0.01
    fired: list[tuple[str, int]] = []
    fail_times = 0

    async def on_message(self, ws, message):
        if message.startswith("set:"):
            await self.set_alarm(time.time() + float(message[4:]))
            ws.send("set")
        elif message == "get":
            ws.send(orjson.dumps(await self.get_alarm()).decode())
        elif message == "del":
            await self.delete_alarm()
            ws.send("deleted")

    async def alarm(self, info):
        Alarmed.fired.append((self.name, info.retry_count))
        assert info.is_retry == (info.retry_count > 0)
        if len(Alarmed.fired) <= Alarmed.fail_times:
            raise RuntimeError("alarm failed")
        await self.storage.put("fired", info.retry_count)


@pytest.fixture
def alarms():
    Alarmed.fired = []
    Alarmed.fail_times = 0
    return Alarmed


async def test_alarm_fires_once_and_is_cleared(serve, tmp_path, alarms):
    router = RoomRouter(Alarmed, data_dir=str(tmp_path))
    server = await serve(router)
    ws = await fastws.connect(server.url + "/a")
    # far enough ahead that the "get" below sees it scheduled on a loaded machine
    await ws.send("set:0.5")
    assert await asyncio.wait_for(ws.recv(), T) == "set"
    await ws.send("get")
    assert float(await asyncio.wait_for(ws.recv(), T)) > time.time() - 1
    await until(lambda: alarms.fired)
    assert alarms.fired == [("a", 0)]
    await ws.send("get")
    assert await asyncio.wait_for(ws.recv(), T) == "null"
    assert await router.room("a").storage.get("fired") == 0
    await ws.close()


@pytest.mark.allow_errors
async def test_failing_alarm_is_retried_with_backoff(serve, tmp_path, alarms, caplog):
    alarms.fail_times = 3
    server = await serve(RoomRouter(Alarmed, data_dir=str(tmp_path)))
    ws = await fastws.connect(server.url + "/r")
    await ws.send("set:0")
    assert await asyncio.wait_for(ws.recv(), T) == "set"
    await until(lambda: len(alarms.fired) == 4)
    assert [n for _, n in alarms.fired] == [0, 1, 2, 3]
    # it gives up after 6 tries
    alarms.fired = []
    alarms.fail_times = 100
    with caplog.at_level(logging.ERROR, logger="fastws.rooms"):
        await ws.send("set:0")
        assert await asyncio.wait_for(ws.recv(), T) == "set"
        await until(lambda: any("giving up" in r.getMessage() for r in caplog.records))
    assert [n for _, n in alarms.fired] == [0, 1, 2, 3, 4, 5]
    await ws.send("get")
    assert await asyncio.wait_for(ws.recv(), T) == "null"
    await ws.close()


async def test_deleted_alarm_does_not_fire(serve, tmp_path, alarms):
    server = await serve(RoomRouter(Alarmed, data_dir=str(tmp_path)))
    ws = await fastws.connect(server.url + "/d")
    await ws.send("set:0.2")
    await ws.send("del")
    assert await asyncio.wait_for(ws.recv(), T) == "set"
    assert await asyncio.wait_for(ws.recv(), T) == "deleted"
    await ws.send("set:0.25")  # a later alarm in another room proves time went by
    await asyncio.wait_for(ws.recv(), T)
    await ws.send("del")
    await asyncio.wait_for(ws.recv(), T)
    ws2 = await fastws.connect(server.url + "/other")
    await ws2.send("set:0.3")
    await until(lambda: alarms.fired)
    assert alarms.fired == [("other", 0)]
    await ws.close()
    await ws2.close()


async def test_alarm_fires_after_a_restart(tmp_path, alarms):
    async with fastws.serve(RoomRouter(Alarmed, data_dir=str(tmp_path)), "127.0.0.1", 0) as server:
        async with fastws.connect(server.url + "/later") as ws:
            await ws.send("set:0.4")
            assert await asyncio.wait_for(ws.recv(), T) == "set"
    assert alarms.fired == []  # the server stopped before it was due
    # a new server: nobody visits the room, the stored alarm runs anyway
    router = RoomRouter(Alarmed, data_dir=str(tmp_path))
    async with fastws.serve(router, "127.0.0.1", 0):
        await until(lambda: alarms.fired)
        assert alarms.fired == [("later", 0)]


# ---------------------------------------------------------------- hibernation

class Sleepy(Room):
    hibernate = 0.2
    created = 0
    closes: list[tuple[object, int]] = []

    def __init__(self) -> None:
        Sleepy.created += 1
        self.set_auto_response("ping", "pong")

    def on_connect(self, ws):
        ws.attachment = {"n": len(self.sockets())}
        ws.set_tags(["member"])

    def on_message(self, ws, message):
        ws.send(f"{message}:{Sleepy.created}:{ws.attachment['n']}:{len(self.sockets(tag='member'))}")

    def on_close(self, ws, code, reason, was_clean):
        Sleepy.closes.append((ws.attachment, code))
        self.broadcast(f"left:{ws.attachment['n']}:{was_clean}")


async def test_hibernation_keeps_sockets_and_wakes_on_events(serve, tmp_path):
    Sleepy.created = 0
    Sleepy.closes = []
    router = RoomRouter(Sleepy, data_dir=str(tmp_path))
    server = await serve(router)
    a = await fastws.connect(server.url + "/s")
    b = await fastws.connect(server.url + "/s")
    await a.send("hi")
    assert await asyncio.wait_for(a.recv(), T) == "hi:1:1:2"
    await until(lambda: router.room("s") is None)  # asleep
    slot = router.slot("s")
    assert slot is not None and len(slot.sockets) == 2 and a.open and b.open
    # the engine answers ping without waking the room
    await a.send("ping")
    assert await asyncio.wait_for(a.recv(), T) == "pong"
    assert router.room("s") is None and Sleepy.created == 1
    assert [s.auto_response_timestamp is not None for s in slot.sockets].count(True) == 1
    # a socket closes while the room sleeps: the room wakes and runs on_close
    await b.close()
    assert await asyncio.wait_for(a.recv(), T) == "left:2:True"
    assert Sleepy.created == 2
    assert Sleepy.closes == [({"n": 2}, 1000)]
    # tags and attachments survived the sleep
    await a.send("again")
    assert await asyncio.wait_for(a.recv(), T) == "again:2:1:1"
    await a.close()


async def test_hibernating_chat_example(serve, tmp_path):
    from examples.hibernating_chat import HibernatingChat

    class QuickNap(HibernatingChat):
        hibernate = 0.1

    router = RoomRouter(QuickNap, data_dir=str(tmp_path))
    server = await serve(router)
    a = await fastws.connect(server.url + "/room?user=ann")
    b = await fastws.connect(server.url + "/room?user=bob")
    await a.send('{"content": "hello"}')
    for ws in (a, b):
        m = orjson.loads(await asyncio.wait_for(ws.recv(), T))
        assert (m["type"], m["userId"], m["content"]) == ("message", "ann", "hello")
    await until(lambda: router.room("room") is None)
    await b.send("ping")
    assert await asyncio.wait_for(b.recv(), T) == "pong"
    assert router.room("room") is None
    await b.close()
    m = orjson.loads(await asyncio.wait_for(a.recv(), T))
    assert (m["type"], m["userId"]) == ("user_left", "bob")
    await a.close()


async def test_persistent_room_example_saves_by_alarm(tmp_path):
    from examples.persistent_room import PersistentRoom

    class Fast(PersistentRoom):
        save_every = 0.1
        keep_for = 0.5

    router = RoomRouter(Fast, data_dir=str(tmp_path))
    async with fastws.serve(router, "127.0.0.1", 0) as server:
        async with fastws.connect(server.url + "/p") as ws:
            await ws.send("one")
            assert orjson.loads(await asyncio.wait_for(ws.recv(), T))["content"] == "one"
            await until(lambda: router.room("p") is not None and router.room("p").saved == 1)
            stored = await router.room("p").storage.get("messages")
            assert [m["content"] for m in stored] == ["one"]
            # older than keep_for: dropped by a later alarm
            await until(lambda: router.room("p").saved == 0)
            assert await router.room("p").storage.get("messages") == []
            await ws.send("two")
            await until(lambda: router.room("p").saved == 1)
    async with fastws.serve(RoomRouter(Fast, data_dir=str(tmp_path)), "127.0.0.1", 0) as server:
        async with fastws.connect(server.url + "/p") as ws:
            await ws.send("three")
            await asyncio.wait_for(ws.recv(), T)
        router2 = RoomRouter(Fast, data_dir=str(tmp_path))
        assert [m["content"] for m in router2.room("p").messages] == ["two", "three"]
