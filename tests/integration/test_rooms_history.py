"""Room history: offsets and an epoch on every broadcast, ``?since=`` catch-up after a
reconnect, resets when the log cannot serve it, and the log surviving restarts and a kill -9.
Real sockets on 127.0.0.1, real SQLite files, the fastws and websockets clients."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess

import orjson
import pytest
import websockets

import fastws
from fastws.rooms import RoomRouter
from tests.helpers import start_history_server, until
from tests.integration.history_app import Chat, Echoless, Plain, Short

T = 5.0


async def recv_json(ws):
    return orjson.loads(await asyncio.wait_for(ws.recv(), T))


async def join(url, since=None):
    """Connect; the welcome (and the history or reset frame before it, when ``since``)."""
    ws = await fastws.connect(url + (f"?since={since}" if since is not None else ""))
    first = await recv_json(ws)
    if first.get("type") == "welcome":
        return ws, None, first
    return ws, first, await recv_json(ws)


async def send_all(ws, texts, reader):
    """Send each text and wait for its envelope on ``reader`` (so the offsets are known)."""
    envs = []
    for t in texts:
        await ws.send(t)
        env = await recv_json(reader)
        assert list(env) == ["epoch", "offset", "data"] and env["data"] == t, env
        envs.append(env)
    return envs


async def test_broadcasts_carry_consecutive_offsets_and_one_epoch(serve, tmp_path):
    server = await serve(RoomRouter(Chat, data_dir=str(tmp_path)))
    a, _, welcome = await join(server.url + "/r")
    assert welcome == {"type": "welcome", "resumed": None}
    envs = await send_all(a, [f"m{i}" for i in range(1, 6)], a)
    assert [e["offset"] for e in envs] == [1, 2, 3, 4, 5]
    assert len({e["epoch"] for e in envs}) == 1 and len(envs[0]["epoch"]) == 8
    # a JSON value is carried as such; a tag broadcast and a bytes broadcast are not logged
    await a.send("json:7")
    assert await recv_json(a) == {"epoch": envs[0]["epoch"], "offset": 6, "data": {"n": 7}}
    await a.send("bytes")
    assert await asyncio.wait_for(a.recv(), T) == b"raw"
    await a.send("m7")
    assert (await recv_json(a))["offset"] == 7
    await a.close()


async def test_resume_gets_exactly_what_was_missed_in_order_before_anything_new(serve, tmp_path):
    server = await serve(RoomRouter(Chat, data_dir=str(tmp_path)))
    url = server.url + "/lobby"
    a, _, _ = await join(url)
    b, _, _ = await join(url)
    seen = await send_all(a, ["one", "two"], b)
    assert [(await recv_json(a))["data"] for _ in range(2)] == ["one", "two"]
    await b.close()
    epoch = seen[-1]["epoch"]
    await send_all(a, ["three", "four", "five"], a)
    b, hist, welcome = await join(url, f"{epoch}:{seen[-1]['offset']}")
    assert hist["type"] == "history" and hist["epoch"] == epoch and hist["since"] == 2 and hist["offset"] == 5
    assert [(m["offset"], m["data"]) for m in hist["messages"]] == [(3, "three"), (4, "four"), (5, "five")]
    assert welcome == {"type": "welcome", "resumed": True}
    await a.send("six")
    assert (await recv_json(b))["offset"] == 6
    # nothing missed: an empty catch-up
    c, hist, welcome = await join(url, f"{epoch}:6")
    assert hist["messages"] == [] and hist["offset"] == 6 and welcome["resumed"] is True
    # the websockets client sees the same (a client nobody here wrote)
    async with websockets.connect(url + f"?since={epoch}:4") as w:
        hist = orjson.loads(await asyncio.wait_for(w.recv(), T))
        assert [m["data"] for m in hist["messages"]] == ["five", "six"]
    for ws in (a, b, c):
        await ws.close()


async def test_a_thousand_missed_messages_come_in_one_frame(serve, tmp_path):
    server = await serve(RoomRouter(Chat, data_dir=str(tmp_path)))
    url = server.url + "/busy"
    a, _, _ = await join(url)
    first = (await send_all(a, ["start"], a))[0]
    for i in range(1000):
        await a.send(f"n{i}")
    for i in range(1000):
        assert (await recv_json(a))["data"] == f"n{i}"
    b, hist, _ = await join(url, f"{first['epoch']}:{first['offset']}")
    assert [m["data"] for m in hist["messages"]] == [f"n{i}" for i in range(1000)]
    assert [m["offset"] for m in hist["messages"]] == list(range(2, 1002))
    await a.close()
    await b.close()


@pytest.mark.parametrize("since,reason", [("{epoch}:1", "trimmed"), ("0123abcd:1", "epoch"),
                                          ("{epoch}:99", "ahead")])
async def test_a_log_that_cannot_serve_says_reset(serve, tmp_path, since, reason):
    server = await serve(RoomRouter(Short, data_dir=str(tmp_path)))
    url = server.url + "/s"
    a, _, _ = await join(url)
    envs = await send_all(a, [f"m{i}" for i in range(10)], a)
    b, reset, welcome = await join(url, since.format(epoch=envs[0]["epoch"]))
    assert reset == {"type": "reset", "epoch": envs[0]["epoch"], "offset": 10, "reason": reason}
    assert welcome == {"type": "welcome", "resumed": False}
    # the oldest kept entry is still served (history = 5 keeps 6..10)
    c, hist, _ = await join(url, f"{envs[0]['epoch']}:5")
    assert [m["offset"] for m in hist["messages"]] == [6, 7, 8, 9, 10]
    for ws in (a, b, c):
        await ws.close()


@pytest.mark.parametrize("since", ["", "abc", "xyz:1", "ab:-1", "ab:1:2", "a" * 40 + ":1", "ab:" + "9" * 30,
                                   "%00", "ab%3A1%0A"])
async def test_a_malformed_since_gets_an_error_and_a_normal_join(serve, tmp_path, since):
    server = await serve(RoomRouter(Chat, data_dir=str(tmp_path)))
    url = server.url + "/m"
    a, _, _ = await join(url)
    await send_all(a, ["x"], a)
    ws = await fastws.connect(url + "?since=" + since)
    err = await recv_json(ws)
    assert err["type"] == "error" and "since" in err["reason"]
    assert await recv_json(ws) == {"type": "welcome", "resumed": None}
    await a.send("y")
    assert (await recv_json(ws))["data"] == "y"  # joined: gets what is new, nothing replayed
    await ws.close()
    await a.close()


async def test_a_room_without_history_says_so(serve, tmp_path):
    server = await serve(RoomRouter(Plain, data_dir=str(tmp_path)))
    ws = await fastws.connect(server.url + "/p?since=abcd:3")
    assert await recv_json(ws) == {"type": "error", "reason": "this room keeps no history"}
    assert await recv_json(ws) == {"type": "welcome", "resumed": None}
    await ws.send("plain")
    assert await asyncio.wait_for(ws.recv(), T) == "plain"  # no envelope without history
    await ws.close()


async def test_one_rooms_offsets_do_not_serve_another_room(serve, tmp_path):
    server = await serve(RoomRouter(Chat, data_dir=str(tmp_path)))
    a, _, _ = await join(server.url + "/one")
    env = (await send_all(a, ["secret"], a))[0]
    b, _, _ = await join(server.url + "/two")
    await send_all(b, ["other"], b)
    c, reset, _ = await join(server.url + "/two", f"{env['epoch']}:0")
    assert reset["type"] == "reset" and reset["reason"] == "epoch" and reset["epoch"] != env["epoch"]
    for ws in (a, b, c):
        await ws.close()


async def test_the_log_survives_a_restart_and_a_lost_file_is_a_new_epoch(serve, tmp_path):
    data = str(tmp_path)
    server = await serve(RoomRouter(Chat, data_dir=data))
    a, _, _ = await join(server.url + "/keep")
    envs = await send_all(a, ["a", "b", "c"], a)
    await a.close()
    await server.shutdown(timeout=2)

    server = await serve(RoomRouter(Chat, data_dir=data))
    b, hist, _ = await join(server.url + "/keep", f"{envs[0]['epoch']}:1")
    assert [m["data"] for m in hist["messages"]] == ["b", "c"]
    await b.send("d")
    assert await recv_json(b) == {"epoch": envs[0]["epoch"], "offset": 4, "data": "d"}
    await b.close()
    await server.shutdown(timeout=2)

    for name in os.listdir(os.path.join(data, "Chat")):
        os.remove(os.path.join(data, "Chat", name))
    server = await serve(RoomRouter(Chat, data_dir=data))
    c, reset, welcome = await join(server.url + "/keep", f"{envs[0]['epoch']}:4")
    assert reset["type"] == "reset" and reset["reason"] == "epoch" and reset["epoch"] != envs[0]["epoch"]
    assert reset["offset"] == 0 and welcome["resumed"] is False
    await c.close()


class Sleepy(Chat):
    hibernate = 0.2


async def test_a_hibernated_room_reads_its_log_back_when_it_wakes(serve, tmp_path):
    router = RoomRouter(Sleepy, data_dir=str(tmp_path))
    server = await serve(router)
    url = server.url + "/zz"
    a, _, _ = await join(url)
    envs = await send_all(a, ["1", "2", "3"], a)
    await until(lambda: router.slot("zz") is not None and router.slot("zz").room is None)
    assert router.slot("zz").history is None  # the log left memory with the room
    b, hist, _ = await join(url, f"{envs[0]['epoch']}:1")
    assert [m["data"] for m in hist["messages"]] == ["2", "3"]
    await b.send("4")
    assert (await recv_json(b))["offset"] == 4
    assert (await recv_json(a))["offset"] == 4  # the socket kept open while the room slept
    await a.close()
    await b.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_start_server = start_history_server


async def test_kill_9_mid_stream_then_resume_misses_nothing_and_doubles_nothing(tmp_path):
    port, data = _free_port(), str(tmp_path)
    url = f"ws://127.0.0.1:{port}/stream"
    proc = _start_server(port, data)
    got: list[dict] = []
    try:
        pub = await fastws.connect(url)
        await recv_json(pub)
        sub = await fastws.connect(url)
        await recv_json(sub)
        sent = 0
        killed = False

        async def publish():
            nonlocal sent
            try:
                while sent < 100_000 and not killed:
                    if sent - len(got) >= 200:  # keep within the room's history (2,000)
                        await asyncio.sleep(0.001)
                        continue
                    await pub.send(f"p{sent}")
                    sent += 1
            except fastws.ConnectionClosed:
                pass

        task = asyncio.create_task(publish())
        while len(got) < 300:
            got.append(await recv_json(sub))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed = True  # a publisher throttled when the server died never sends again, so never sees it
        try:
            while True:
                got.append(await recv_json(sub))  # what was already on its way
        except (fastws.ConnectionClosed, asyncio.TimeoutError):
            pass
        await asyncio.wait_for(task, T)
        proc = _start_server(port, data)
        last = got[-1]
        sub2, hist, welcome = await join(url, f"{last['epoch']}:{last['offset']}")
        assert hist is not None and hist["type"] == "history", hist
        got.extend(hist["messages"])
        pub2, _, _ = await join(url)
        await pub2.send("after")
        while True:
            env = await recv_json(sub2)
            got.append(env)
            if env["data"] == "after":
                break
        offsets = [e["offset"] for e in got]
        assert offsets == list(range(1, len(got) + 1)), "a gap or a duplicate"
        assert len({e["epoch"] for e in got}) == 1
        datas = [e["data"] for e in got[:-1]]
        assert datas == [f"p{i}" for i in range(len(datas))]  # in the order published, none lost in between
        await sub2.close()
        await pub2.close()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()



@pytest.mark.allow_errors
async def test_a_log_that_cannot_be_read_fails_broadcasts_loudly_and_the_server_goes_on(serve, tmp_path, caplog):
    """The room's file opens but its log table is damaged: a resume is told the history is
    unavailable, a broadcast raises StorageError in the hook (never leaves without an offset,
    never waits for ever), and another room of the same server is unaffected."""
    import sqlite3

    from fastws.rooms.storage import room_path

    data = str(tmp_path)
    server = await serve(RoomRouter(Chat, data_dir=data))
    a, _, _ = await join(server.url + "/broken")
    await send_all(a, ["a"], a)
    await a.close()
    await server.shutdown(timeout=2)
    db = sqlite3.connect(room_path(data, "Chat", "broken"))
    db.execute("ALTER TABLE _fastws_log RENAME COLUMN data TO damaged")
    db.commit()
    db.close()

    errors: list[BaseException] = []

    class Watched(Chat):
        def on_error(self, ws, exc):
            errors.append(exc)

    Watched.__name__ = "Chat"
    server = await serve(RoomRouter(Watched, data_dir=data))
    ws, frame, welcome = await join(server.url + "/broken", "00:1")
    assert frame == {"type": "error", "reason": "this room's history is unavailable"}
    assert welcome["resumed"] is None
    await ws.send("hello")
    await until(lambda: errors)
    assert "history could not be read" in str(errors[0])
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(ws.recv(), 0.3)    # nothing went out without its offset
    other, _, _ = await join(server.url + "/fine")
    envs = await send_all(other, ["ok"], other)
    assert envs[0]["offset"] == 1
    assert any("reading its history failed" in r.getMessage() for r in caplog.records)
    await ws.close()
    await other.close()


class Brief(Chat):
    history_ttl = 0.2


async def test_history_ttl_drops_old_entries_and_offsets_go_on_after_a_restart(serve, tmp_path):
    data = str(tmp_path)
    server = await serve(RoomRouter(Brief, data_dir=data))
    a, _, _ = await join(server.url + "/ttl")
    envs = await send_all(a, ["a", "b", "c"], a)
    epoch = envs[0]["epoch"]
    await asyncio.sleep(0.5)                          # all three are older than history_ttl now
    b, frame, _ = await join(server.url + "/ttl", f"{epoch}:1")
    assert frame["type"] == "reset" and frame["reason"] == "trimmed"
    await b.close()
    await a.close()
    await server.shutdown(timeout=2)

    server = await serve(RoomRouter(Brief, data_dir=data))
    c, frame, welcome = await join(server.url + "/ttl", f"{epoch}:3")
    # the log is empty of live entries, yet it knows where it stopped: nothing missed, same epoch
    assert frame == {"type": "history", "epoch": epoch, "since": 3, "offset": 3, "messages": []}
    assert welcome["resumed"] is True
    await c.send("d")
    assert (await recv_json(c))["offset"] == 4
    await c.close()


async def test_an_excluded_socket_gets_the_offset_it_skipped(serve, tmp_path):
    server = await serve(RoomRouter(Echoless, data_dir=str(tmp_path)))
    a, _, _ = await join(server.url + "/ex")
    b, _, _ = await join(server.url + "/ex")
    await a.send("from a")
    env = await recv_json(b)
    assert env["offset"] == 1 and env["data"] == "from a"
    assert await recv_json(a) == {"type": "skip", "epoch": env["epoch"], "offset": 1}
    await b.send("from b")
    assert (await recv_json(a))["offset"] == 2
    assert await recv_json(b) == {"type": "skip", "epoch": env["epoch"], "offset": 2}
    # a client that resumes from before gets the entries themselves
    c, hist, _ = await join(server.url + "/ex", f"{env['epoch']}:0")
    assert [m["data"] for m in hist["messages"]] == ["from a", "from b"]
    for ws in (a, b, c):
        await ws.close()
