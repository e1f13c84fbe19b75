"""``await fastws.connect(url, reconnect=True[, resume=True])``: a connection that outlives drops.

Real servers on 127.0.0.1: the history room app in a subprocess (SIGTERM and kill -9 mid-stream,
the data directory wiped), fastws servers in-process restarted on the same port, scripted fastws
handlers that speak the room protocol with faults in it, and the ``websockets`` server."""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import time
from http import HTTPStatus

import orjson
import pytest
import websockets

import fastws
from fastws.reconnect import RECONNECT_CODES
from tests.helpers import start_history_server, until

T = 10.0
FAST = {"backoff_initial": 0.02, "backoff_max": 0.2}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Counting(fastws.connect):
    """fastws.connect that records the target of every connection attempt."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.targets: list[str] = []

    async def _open(self, target):
        self.targets.append(target)
        return await super()._open(target)


async def recv_json(ws):
    return orjson.loads(await asyncio.wait_for(ws.recv(), T))


# ---------------------------------------------------------------------------
# the history room in a subprocess


start_server = start_history_server


async def stop_server(proc: subprocess.Popen[str], sig: int) -> None:
    """Signal the server and wait (without blocking the loop: the clients answer its close)."""
    proc.send_signal(sig)
    deadline = time.monotonic() + 20
    while proc.poll() is None:
        assert time.monotonic() < deadline, "server did not exit"
        await asyncio.sleep(0.02)
    proc.communicate(timeout=5)


@pytest.fixture
def history_server(tmp_path):
    """Start/stop the history app on one port: ``srv.start()``, ``await srv.stop(sig)``, ``srv.url``."""

    class Srv:
        port = free_port()
        data = str(tmp_path / "data")
        proc: subprocess.Popen[str] | None = None
        url = ""

        async def start(self) -> None:
            self.proc = await asyncio.to_thread(start_server, self.port, self.data)

        async def stop(self, sig: int = signal.SIGTERM) -> None:
            if self.proc is not None and self.proc.poll() is None:
                await stop_server(self.proc, sig)

    srv = Srv()
    srv.url = f"ws://127.0.0.1:{srv.port}"
    yield srv
    if srv.proc is not None and srv.proc.poll() is None:
        srv.proc.kill()
        srv.proc.wait(10)


async def full_log(url: str, epoch: str) -> list[dict]:
    """Every entry the room's log holds (a plain client asking ``since=E:0``)."""
    async with fastws.connect(url + f"?since={epoch}:0") as ws:
        frame = await recv_json(ws)
        assert frame["type"] == "history", frame
        return frame["messages"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
async def test_resume_across_a_restart_mid_stream_misses_nothing_doubles_nothing(history_server, sig):
    await history_server.start()
    url = history_server.url + "/stream"
    events: list[tuple] = []
    sub = await fastws.connect(url, reconnect=True, resume=True, reconnect_timeout=60, **FAST,
                               on_reconnect=lambda ws: events.append(("reconnect", ws.reconnects)),
                               on_disconnect=lambda ws, exc: events.append(("disconnect", exc.code)))
    assert await recv_json(sub) == {"type": "welcome", "resumed": None}
    # the publisher reconnects too, and its sends wait out the outage
    pub = await fastws.connect(url, reconnect=True, reconnect_timeout=60, send_timeout=60, **FAST)
    got: list[dict] = []
    sent = 0
    stop = asyncio.Event()
    welcomes: list[dict] = []
    # (what is sent: "p<n>" in order, then "end")

    async def drain_pub():
        async for _ in pub:  # it gets every broadcast too; read them so it never looks slow
            pass

    async def publish():
        nonlocal sent
        waited = 0
        while not stop.is_set() and sent < 1500:  # the room keeps 2,000
            # keep within 100 of the last one seen, but not forever: sends made just before a
            # drop are lost (at most once), so what is seen may never come near ``sent``
            ahead = sent - (int(got[-1]["data"][1:]) if got else 0)
            if ahead >= 100 and waited < 100:
                waited += 1
                await asyncio.sleep(0.005)
                continue
            waited = 0
            await pub.send(f"p{sent}")
            sent += 1

    async def collect():
        while True:
            env = orjson.loads(await asyncio.wait_for(sub.recv(), 3 * T))
            if env.get("type") == "welcome":  # the room's on_connect, after each reconnection
                welcomes.append(env)
                continue
            assert list(env) == ["epoch", "offset", "data"], env  # a resume never shows a history/reset frame
            got.append(env)
            if env["data"] == "end":
                return

    drainer = asyncio.create_task(drain_pub())
    publisher = asyncio.create_task(publish())
    collector = asyncio.create_task(collect())
    try:
        await until(lambda: len(got) >= 200, timeout=T)
        await history_server.stop(sig)
        await history_server.start()
        try:
            await until(lambda: sub.reconnects >= 1 and len(got) >= 600, timeout=3 * T)
        except AssertionError:
            raise AssertionError(f"{sub!r} {pub!r} got={len(got)} sent={sent} tasks={[t.done() and t.exception() for t in (drainer, publisher, collector)]}") from None
        stop.set()
        await asyncio.wait_for(publisher, T)
        await pub.send("end")
        await asyncio.wait_for(collector, T)
    finally:
        for task in (drainer, publisher, collector):
            task.cancel()
        await asyncio.gather(drainer, publisher, collector, return_exceptions=True)

    offsets = [e["offset"] for e in got]
    assert offsets == list(range(1, len(got) + 1)), "a gap or a duplicate"
    assert len({e["epoch"] for e in got}) == 1
    assert sub.resumed is True and sub.reconnects >= 1 and sub.last_reset is None
    assert welcomes and all(w == {"type": "welcome", "resumed": True} for w in welcomes)
    assert events[0] == ("disconnect", 1001 if sig == signal.SIGTERM else 1006)
    assert ("reconnect", 1) in events
    assert sub.position == f"{got[-1]['epoch']}:{got[-1]['offset']}"
    # nothing missing: exactly what the room logged, in its order
    assert got == await full_log(url, got[0]["epoch"])
    datas = [int(e["data"][1:]) for e in got[:-1]]
    assert datas == sorted(datas) and len(set(datas)) == len(datas)  # published order, none twice
    await sub.close()
    await pub.close()
    await history_server.stop()


async def test_a_wiped_data_dir_is_a_reset_then_the_new_epoch(history_server):
    await history_server.start()
    url = history_server.url + "/wipe"
    sub = await fastws.connect(url, reconnect=True, resume=True, reconnect_timeout=60, **FAST)
    await recv_json(sub)
    async with fastws.connect(url) as pub:
        await recv_json(pub)
        for i in range(3):
            await pub.send(f"old{i}")
        old = [await recv_json(sub) for _ in range(3)]
    assert [e["offset"] for e in old] == [1, 2, 3]
    before = sub.position
    await history_server.stop()
    shutil.rmtree(history_server.data)
    await history_server.start()
    text = await asyncio.wait_for(sub.recv(), T)
    reset = sub.last_reset
    assert isinstance(reset, fastws.HistoryReset) and reset.text == text and type(text) is str
    assert (reset.reason, reset.offset, reset.previous) == ("epoch", 0, before)
    assert reset.epoch != old[0]["epoch"]
    assert orjson.loads(text) == {"type": "reset", "epoch": reset.epoch, "offset": 0, "reason": "epoch"}
    assert sub.resumed is False
    assert await recv_json(sub) == {"type": "welcome", "resumed": False}
    async with fastws.connect(url) as pub:
        await recv_json(pub)
        await pub.send("new")
        env = await recv_json(sub)
    assert (env["epoch"], env["offset"], env["data"]) == (reset.epoch, 1, "new")
    assert sub.position == f"{reset.epoch}:1"
    await sub.close()
    await history_server.stop()


# ---------------------------------------------------------------------------
# in-process fastws servers


async def commands(ws):
    """Echo; "close:<code>" closes with that code; "drop" aborts the TCP connection."""
    async for msg in ws:
        if isinstance(msg, str) and msg.startswith("close:"):
            await ws.send("closing")
            await ws.close(int(msg[6:]), "asked")
            return
        if msg == "drop":
            ws.abort()
            return
        await ws.send(msg)


class Restartable:
    """A fastws server on a fixed port that can be stopped and started again."""

    def __init__(self, handler) -> None:
        self.handler = handler
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/"
        self.server: fastws.Server | None = None
        self.connections = 0

    async def _count(self, ws):
        self.connections += 1
        await self.handler(ws)

    async def start(self) -> None:
        self.server = fastws.serve(self._count, "127.0.0.1", self.port, compression=False)
        await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown(timeout=2)
            self.server = None


@pytest.fixture
async def restartable():
    servers: list[Restartable] = []

    async def make(handler=commands) -> Restartable:
        srv = Restartable(handler)
        await srv.start()
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        await srv.stop()


@pytest.mark.parametrize("code", [1000, 1002, 1003, 1008, 3000, 4001, 4999])
async def test_a_final_close_code_is_not_retried(restartable, code):
    srv = await restartable()
    client = Counting(srv.url, reconnect=True, **FAST)
    ws = await client
    await ws.send("before")
    await ws.send(f"close:{code}")
    assert await asyncio.wait_for(ws.recv(), T) == "before"
    assert await asyncio.wait_for(ws.recv(), T) == "closing"  # what came before the close is delivered
    expected = fastws.ConnectionClosedOK if code == 1000 else fastws.ConnectionClosedError
    with pytest.raises(expected) as info:
        await asyncio.wait_for(ws.recv(), T)
    assert (info.value.code, info.value.reason) == (code, "asked")
    assert not isinstance(info.value, fastws.ReconnectFailed)
    assert ws.closed and ws.close_code == code
    with pytest.raises(expected):
        await ws.send("after")
    await asyncio.wait_for(ws.wait_closed(), T)
    await asyncio.sleep(0.3)  # would be time enough for several attempts
    assert len(client.targets) == 1 and srv.connections == 1


@pytest.mark.parametrize("code", sorted(RECONNECT_CODES - {1005, 1006}) + ["drop"])
async def test_a_transient_close_reconnects_and_recv_goes_on(restartable, code):
    srv = await restartable()
    seen: list = []
    ws = await fastws.connect(srv.url, reconnect=True, **FAST,
                              on_disconnect=lambda ws, exc: seen.append(exc.code),
                              on_reconnect=lambda ws: seen.append("up"))
    await ws.send("drop" if code == "drop" else f"close:{code}")
    if code != "drop":
        assert await asyncio.wait_for(ws.recv(), T) == "closing"
    reader = asyncio.create_task(ws.recv())  # a reader sees the close, and waits on across it
    await until(lambda: ws.reconnects == 1, timeout=T)
    await ws.send("again")
    assert await asyncio.wait_for(reader, T) == "again"
    assert seen == [1006 if code == "drop" else code, "up"]
    assert ws.reconnects == 1 and srv.connections == 2 and ws.open
    await ws.close()


async def test_async_for_goes_on_across_drops_and_ends_on_a_normal_close(restartable):
    srv = await restartable()
    ws = await fastws.connect(srv.url, reconnect=True, **FAST)
    got = []
    await ws.send("m0")
    async for msg in ws:
        got.append(msg)
        n = len(got)
        if n < 4:
            await ws.send("drop")
            await until(lambda: ws.reconnects == n, timeout=T)  # a send before it is seen could be lost
            await ws.send(f"m{n}")
        elif n == 4:
            await ws.send("close:1000")
        assert n < 10
    assert got == ["m0", "m1", "m2", "m3", "closing"]
    assert ws.reconnects == 3 and ws.close_code == 1000


async def test_close_stops_reconnecting_also_during_an_outage(restartable):
    srv = await restartable()
    client = Counting(srv.url, reconnect=True, backoff_initial=0.02, backoff_max=0.05)
    ws = await client
    await ws.close()
    assert ws.closed and not ws.open
    with pytest.raises(fastws.ConnectionClosedOK):
        await ws.recv()
    with pytest.raises(fastws.ConnectionClosedOK):
        await ws.send("x")
    await asyncio.sleep(0.2)
    assert len(client.targets) == 1 and srv.connections == 1

    client = Counting(srv.url, reconnect=True, backoff_initial=0.02, backoff_max=0.05)
    ws = await client
    reader = asyncio.create_task(ws.recv())
    await srv.stop()  # refused from now on: it keeps trying
    await until(lambda: len(client.targets) >= 3, timeout=T)
    await ws.close()
    with pytest.raises(fastws.ConnectionClosedOK):
        await asyncio.wait_for(reader, T)  # a waiting recv is woken
    attempts = len(client.targets)
    await asyncio.sleep(0.3)
    assert len(client.targets) == attempts and ws.attempts == attempts


async def test_sends_during_an_outage_wait_for_send_timeout_then_go_through(restartable):
    srv = await restartable()
    ws = await fastws.connect(srv.url, reconnect=True, send_timeout=0.2, **FAST)
    await srv.stop()
    await until(lambda: not ws.open, timeout=T)
    with pytest.raises(fastws.ConnectionClosedError) as info:
        await ws.send("lost")
    assert "send_timeout" in str(info.value) and not ws.closed  # still reconnecting
    await srv.start()
    ws.send_timeout = T
    await ws.send("through")
    assert await asyncio.wait_for(ws.recv(), T) == "through"
    assert ws.reconnects == 1
    await ws.close()


async def test_an_outage_past_the_bound_gives_up_with_reconnect_failed(restartable):
    srv = await restartable()
    ws = await fastws.connect(srv.url, reconnect=True, max_attempts=3, **FAST)
    await srv.stop()
    with pytest.raises(fastws.ReconnectFailed) as info:
        await asyncio.wait_for(ws.recv(), T)
    assert isinstance(info.value.__cause__, OSError)
    assert info.value.code == 1006 and ws.closed
    assert ws.attempts == 1 + 3 and info.value.attempts == 4
    with pytest.raises(fastws.ReconnectFailed):
        await ws.send("x")

    await srv.start()
    ws = await fastws.connect(srv.url, reconnect=True, reconnect_timeout=0.3, **FAST)
    await srv.stop()
    with pytest.raises(fastws.ReconnectFailed):
        await asyncio.wait_for(ws.recv(), T)
    assert 2 <= ws.attempts < 100


# ---------------------------------------------------------------------------
# first connection, URLs, options, backoff


def closed_port() -> int:
    return free_port()


async def test_a_refused_port_fails_within_the_attempt_bound():
    client = Counting(f"ws://127.0.0.1:{closed_port()}/x", reconnect=True, resume=True, max_attempts=3, **FAST)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.wait_for(client, T)
    assert client.targets == ["/x"] * 3
    client = Counting(f"ws://127.0.0.1:{closed_port()}/", reconnect=True, reconnect_timeout=0.2, **FAST)
    with pytest.raises(OSError):
        await asyncio.wait_for(client, T)
    assert 1 <= len(client.targets) < 100


@pytest.mark.parametrize("url", ["http://127.0.0.1/", "127.0.0.1:80", "ws:///nohost", "ws://127.0.0.1:99999/"])
def test_a_malformed_url_fails_at_once(url):
    with pytest.raises(ValueError):
        fastws.connect(url, reconnect=True, resume=True)


@pytest.mark.parametrize("options, message", [
    ({"resume": True}, "resume=True needs reconnect=True"),
    ({"reconnect": True, "backoff_initial": 0}, "backoff"),
    ({"reconnect": True, "backoff_factor": 0.5}, "backoff"),
    ({"reconnect": True, "backoff_max": 0.1, "backoff_initial": 1}, "backoff"),
    ({"reconnect": True, "max_attempts": 0}, "max_attempts"),
    ({"reconnect": True, "reconnect_timeout": 0}, "reconnect_timeout"),
    ({"reconnect": True, "send_timeout": -1}, "send_timeout"),
])
def test_options_that_do_not_go_together_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        fastws.connect("ws://127.0.0.1:1/", **options)


async def test_resume_is_refused_with_async_for_and_a_listener_with_await():
    with pytest.raises(ValueError, match="async for"):
        async for _ in fastws.connect("ws://127.0.0.1:1/", reconnect=True, resume=True):
            pass
    with pytest.raises(ValueError, match="listener"):
        await fastws.connect("ws://127.0.0.1:1/", reconnect=True, listener=fastws.Listener())


def test_backoff_is_full_jitter_within_its_bounds():
    c = fastws.connect("ws://127.0.0.1:1/", reconnect=True, backoff_initial=0.1, backoff_factor=2, backoff_max=5)
    for attempt in range(12):
        cap = min(5.0, 0.1 * 2 ** attempt)
        samples = [c._delay(attempt) for _ in range(2000)]
        assert all(0.0 <= d <= cap for d in samples), attempt
        assert max(samples) > 0.9 * cap and min(samples) < 0.1 * cap, attempt  # spread over [0, cap]
    assert 0.0 <= c._delay(100_000) <= 5.0  # no overflow far out


async def test_a_handshake_refusal_is_final_but_503_is_retried_after_its_retry_after():
    attempts: dict[str, int] = {}

    def process_request(conn, request):
        attempts[request.path] = attempts.get(request.path, 0) + 1
        if request.path == "/forbidden":
            return conn.respond(HTTPStatus.FORBIDDEN, "no entry")
        if request.path == "/busy" and attempts[request.path] < 3:
            response = conn.respond(HTTPStatus.SERVICE_UNAVAILABLE, "later")
            response.headers["Retry-After"] = "0"
            return response
        return None

    async def echo(conn):
        async for msg in conn:
            await conn.send(msg)

    async with websockets.serve(echo, "127.0.0.1", 0, process_request=process_request) as server:
        base = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        with pytest.raises(fastws.InvalidHandshake) as info:
            await fastws.connect(base + "/forbidden", reconnect=True, max_attempts=5, **FAST)
        assert info.value.status == 403 and attempts["/forbidden"] == 1
        ws = await fastws.connect(base + "/busy", reconnect=True, max_attempts=5, **FAST)
        assert attempts["/busy"] == 3 and ws.attempts == 3
        await ws.send("ok")
        assert await asyncio.wait_for(ws.recv(), T) == "ok"
        await ws.close()


# ---------------------------------------------------------------------------
# the websockets server (nobody here wrote it)


async def test_reconnect_without_resume_against_the_websockets_server():
    connections = []

    async def handler(conn):
        connections.append(conn)
        async for msg in conn:
            if msg == "drop":
                conn.transport.abort()
                return
            if msg == "going":
                await conn.close(1001, "going away")
                return
            await conn.send(msg)

    port = free_port()
    server = await websockets.serve(handler, "127.0.0.1", port)
    seen: list = []
    try:
        ws = await fastws.connect(f"ws://127.0.0.1:{port}/", reconnect=True, **FAST,
                                  on_disconnect=lambda ws, exc: seen.append(exc.code))
        got: list = []

        async def read():
            async for m in ws:
                got.append(m)

        reader = asyncio.create_task(read())
        for i, how in enumerate(["drop", "going", "drop"]):
            await ws.send(f"m{i}")
            await until(lambda: got[-1:] == [f"m{i}"], timeout=T)
            await ws.send(how)
            await until(lambda: ws.reconnects == i + 1, timeout=T)
        await ws.send("last")
        await until(lambda: got[-1:] == ["last"], timeout=T)
        assert seen == [1006, 1001, 1006] and ws.reconnects == 3 and len(connections) == 4
        # the websockets server goes away and comes back on the same port
        server.close()
        await server.wait_closed()
        await until(lambda: not ws.open, timeout=T)
        server = await websockets.serve(handler, "127.0.0.1", port)
        await ws.send("back")
        await until(lambda: got[-1:] == ["back"], timeout=T)
        assert got == ["m0", "m1", "m2", "last", "back"] and seen[3] == 1001
        # resume=True against a server without history: messages pass through untouched
        rs = await fastws.connect(f"ws://127.0.0.1:{port}/?since=ab:1", reconnect=True, resume=True, **FAST)
        await rs.send('{"epoch":"ab","offset":2,"data":1}')
        assert await asyncio.wait_for(rs.recv(), T) == '{"epoch":"ab","offset":2,"data":1}'
        assert rs.resumed is None and rs.position == "ab:2"
        # the envelope as logs written before it lost its "type" key hold it
        await rs.send('{"type":"message","epoch":"ab","offset":3,"data":1}')
        assert await asyncio.wait_for(rs.recv(), T) == '{"type":"message","epoch":"ab","offset":3,"data":1}'
        assert rs.position == "ab:3"
        # an app's own object that is not an envelope leaves the position alone
        await rs.send('{"epoch":"ab","offset":9}')
        assert await asyncio.wait_for(rs.recv(), T) == '{"epoch":"ab","offset":9}'
        assert rs.position == "ab:3"
        await rs.close()
        await ws.close()
        assert ws.close_code == 1000
        await asyncio.wait_for(reader, T)  # async for ends after close()
    finally:
        server.close()
        await server.wait_closed()


# ---------------------------------------------------------------------------
# a scripted room: gaps, duplicates, batches, a hole in the log


def env(offset: int, data: object = None, epoch: str = "e1") -> str:
    return orjson.dumps({"epoch": epoch, "offset": offset,
                         "data": f"d{offset}" if data is None else data}).decode()


def history(since: int, offsets: list[int], epoch: str = "e1") -> str:
    return orjson.dumps({"type": "history", "epoch": epoch, "since": since, "offset": max(offsets, default=since),
                         "messages": [orjson.loads(env(o, epoch=epoch)) for o in offsets]}).decode()


async def scripted(script):
    """A fastws server sending ``script[n]`` (a list of frames) to its n-th connection, then waiting."""
    targets: list[str] = []

    async def handler(ws):
        targets.append(ws.request.path + ("?" + ws.request.query_string if ws.request.query_string else ""))
        for frame in script[min(len(targets), len(script)) - 1]:
            if frame == "DROP":
                ws.abort()
                return
            await ws.send(frame)
        async for _ in ws:
            pass

    server = fastws.serve(handler, "127.0.0.1", 0, compression=False)
    await server.start()
    return server, targets


async def test_a_gap_in_the_live_stream_is_caught_up_from_the_log_and_duplicates_are_dropped():
    batch = orjson.dumps({"type": "batch", "messages": [env(1), "plain", env(2)]}).decode()
    server, targets = await scripted([
        [batch, env(4), env(5)],                         # 3 was skipped (a slow consumer's drop)
        [history(2, [2, 3, 4]), env(4), env(5), "DROP"],  # 2 and the second 4 are duplicates
        [history(5, []), env(6)],
    ])
    try:
        ws = await fastws.connect(server.url + "/room?x=1", reconnect=True, resume=True, **FAST)
        got = [await asyncio.wait_for(ws.recv(), T) for _ in range(7)]
        assert got == [env(1), "plain", env(2), env(3), env(4), env(5), env(6)]
        # the third asks from what was delivered when it dialled: 5, or 4 when 5 was still
        # queued on the dropped connection (read after, and 5 from the log then a duplicate)
        assert targets[:2] == ["/room?x=1", "/room?x=1&since=e1:2"]
        assert targets[2] in ("/room?x=1&since=e1:5", "/room?x=1&since=e1:4") and len(targets) == 3
        assert ws.duplicates == 2 and ws.reconnects == 2 and ws.resumed is True
        assert ws.position == "e1:6" and ws.last_reset is None
        await ws.close()
    finally:
        await server.shutdown(timeout=2)


async def test_a_hole_in_a_history_frame_and_an_unannounced_epoch_are_resets():
    server, targets = await scripted([
        [env(1), "DROP"],
        [history(1, [2, 4]), env(5), env(1, epoch="e2"), "DROP"],
        [orjson.dumps({"type": "error", "reason": "this room keeps no history"}).decode(), "hi"],
    ])
    try:
        ws = await fastws.connect(server.url + "/?since=e1:0", reconnect=True, resume=True, **FAST)
        got = [await asyncio.wait_for(ws.recv(), T) for _ in range(9)]
        assert got[:3] == [env(1), env(2, epoch="e1"), got[2]]
        assert orjson.loads(got[2]) == {"type": "reset", "epoch": "e1", "offset": 3, "reason": "gap"}
        assert got[3:5] == [env(4), env(5)]
        assert orjson.loads(got[5]) == {"type": "reset", "epoch": "e2", "offset": 0, "reason": "epoch"}
        assert got[6] == env(1, epoch="e2")
        assert orjson.loads(got[7])["type"] == "error" and got[8] == "hi"
        last = ws.last_reset
        assert ws.resumed is None and last is not None and last.text == got[5]
        assert (last.epoch, last.offset, last.reason, last.previous) == ("e2", 0, "epoch", "e1:5")
        # the third asks from what had been delivered when it dialled (reading goes on meanwhile)
        assert targets[:2] == ["/?since=e1:0", "/?since=e1:1"] and len(targets) == 3
        assert targets[2] in ("/?since=e1:1", "/?since=e1:2", "/?since=e1:4", "/?since=e1:5", "/?since=e2:1")
        await ws.close()
    finally:
        await server.shutdown(timeout=2)


# ---------------------------------------------------------------------------
# a real room that batches


class BatchedChat(fastws.Room):
    history = 500
    batch = True
    batch_delay = 0.02

    def on_connect(self, ws):
        ws.send({"type": "welcome", "resumed": ws.resumed})

    def on_message(self, ws, message):
        if message == "kick me":
            ws.close(1012, "restarting")
        else:
            self.broadcast(message)


async def test_resume_in_a_batching_room_unpacks_batches_and_misses_nothing(serve, tmp_path):
    server = await serve(fastws.RoomRouter(BatchedChat, data_dir=str(tmp_path)))
    url = server.url + "/b"
    away = asyncio.Event()
    ws = await fastws.connect(url, reconnect=True, resume=True, **FAST, on_disconnect=lambda ws, exc: away.set())
    assert await recv_json(ws) == {"type": "welcome", "resumed": None}  # unpacked from its batch
    got: list = []
    async with fastws.connect(url) as pub:
        first = await recv_json(pub)  # a plain client sees the batches themselves
        assert first["type"] == "batch" and first["messages"] == [{"type": "welcome", "resumed": None}]
        for i in range(25):
            await pub.send(f"m{i}")
        frame = await recv_json(pub)
        assert frame["type"] == "batch" and frame["messages"][0]["offset"] == 1
        while len(got) < 25:
            got.append(await recv_json(ws))
        await ws.send("kick me")
        reader = asyncio.create_task(ws.recv())  # sees the close
        await asyncio.wait_for(away.wait(), T)
        for i in range(25, 40):  # while it is away (or coming back: either way once each)
            await pub.send(f"m{i}")
        got.append(orjson.loads(await asyncio.wait_for(reader, T)))
        while len(got) < 41:
            got.append(await recv_json(ws))
    welcome = [m for m in got if m.get("type") == "welcome"]
    envs = [m for m in got if "offset" in m]
    assert welcome == [{"type": "welcome", "resumed": True}]
    assert [e["offset"] for e in envs] == list(range(1, 41))
    assert [e["data"] for e in envs] == [f"m{i}" for i in range(40)]
    assert ws.reconnects == 1 and ws.resumed is True and ws.duplicates == 0
    await ws.close()


async def test_close_from_a_hook_stops_it(restartable):
    srv = await restartable()
    ws = await fastws.connect(srv.url, reconnect=True, **FAST, on_reconnect=lambda ws: ws.close(4000, "enough"))
    reader = asyncio.create_task(ws.recv())
    await ws.send("drop")
    with pytest.raises(fastws.ConnectionClosedError) as info:
        await asyncio.wait_for(reader, T)
    assert info.value.code == 4000 and ws.closed and ws.reconnects == 1
    await asyncio.wait_for(ws.wait_closed(), T)
    await until(lambda: srv.connections == 2 and ws.connection is None, timeout=T)
    await asyncio.sleep(0.2)
    assert srv.connections == 2 and ws.attempts == 2


@pytest.mark.parametrize("batched", [False, True])
async def test_resume_moves_on_past_a_skip_frame_without_a_message_or_a_reconnect(serve, tmp_path, batched):
    from tests.integration.history_app import Echoless

    cls = type("BatchedEcholess", (Echoless,), {"batch": True}) if batched else Echoless
    server = await serve(fastws.RoomRouter(cls, data_dir=str(tmp_path)))
    url = server.url + "/s"
    ws = await fastws.connect(url, reconnect=True, resume=True, **FAST)
    assert await recv_json(ws) == {"type": "welcome", "resumed": None}
    async with fastws.connect(url) as other:
        await recv_json(other)                       # its welcome
        await other.send("one")
        assert (await recv_json(ws))["offset"] == 1
        await ws.send("mine")                          # to everyone but ws, which gets a skip frame
        await recv_json(other)
        await other.send("two")
        env = await recv_json(ws)
        assert env["offset"] == 3 and env["data"] == "two"  # no "mine", no gap, no reconnect
    assert ws.position == f"{env['epoch']}:3" and ws.reconnects == 0 and ws.duplicates == 0
    await ws.close()
