"""Rooms under faults: storage full, a corrupt or missing database file, a burst of 10,000
connects and disconnects, and kill -9 of a real server process mid-traffic."""

from __future__ import annotations

import asyncio
import gc
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import orjson
import pytest

import fastws
from fastws.rooms import Room, RoomRouter, RoomSocket, StorageFull

T = 5.0
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


async def http_get(server_or_addr, path):
    host, port = server_or_addr if isinstance(server_or_addr, tuple) else server_or_addr.address
    r, w = await asyncio.open_connection(host, port)
    w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await asyncio.wait_for(r.read(), T)
    w.close()
    await w.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


class Hoarder(Room):
    storage_quota = 64 * 1024

    async def on_message(self, ws, message):
        try:
            for i in range(100):
                await self.storage.put(f"{message}:{i}", "x" * 2000)
        except StorageFull as exc:
            ws.send(f"full:{exc}")
            return
        ws.send("stored")


async def test_storage_full_is_a_clear_error(serve, tmp_path):
    server = await serve(RoomRouter(Hoarder, data_dir=str(tmp_path)))
    ws = await fastws.connect(server.url + "/h")
    await ws.send("a")
    reply = await asyncio.wait_for(ws.recv(), T)
    assert reply.startswith("full:") and "quota" in reply
    # the room goes on, and other rooms have their own quota
    other = await fastws.connect(server.url + "/other")
    await other.send("small")
    assert (await asyncio.wait_for(other.recv(), T)).startswith("full:")
    await ws.close()
    await other.close()


async def test_corrupt_database_refuses_that_room_only(serve, tmp_path, caplog):
    from examples.chat import ChatRoom

    bad = tmp_path / "ChatRoom" / "bad.sqlite3"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"garbage, not SQLite" * 512)
    server = await serve(RoomRouter(ChatRoom, data_dir=str(tmp_path)))
    with pytest.raises(fastws.InvalidHandshake) as info:
        await fastws.connect(server.url + "/bad")
    assert info.value.status == 503
    assert await http_get(server, "/bad") == (503, b"Room storage unavailable\n")
    assert any("'bad' is unavailable" in r.getMessage() and "not a database" in r.getMessage()
               for r in caplog.records)
    async with fastws.connect(server.url + "/good") as ws:
        await ws.send('{"content": "fine"}')
        assert orjson.loads(await asyncio.wait_for(ws.recv(), T))["content"] == "fine"
    assert bad.read_bytes().startswith(b"garbage")  # left alone for the operator


async def test_missing_database_file_starts_an_empty_room(tmp_path):
    from examples.chat import ChatRoom

    async with fastws.serve(RoomRouter(ChatRoom, data_dir=str(tmp_path)), "127.0.0.1", 0) as server:
        async with fastws.connect(server.url + "/gone") as ws:
            await ws.send('{"content": "soon lost"}')
            await asyncio.wait_for(ws.recv(), T)
    for f in (tmp_path / "ChatRoom").glob("gone.sqlite3*"):
        f.unlink()
    async with fastws.serve(RoomRouter(ChatRoom, data_dir=str(tmp_path)), "127.0.0.1", 0) as server:
        assert await http_get(server, "/gone") == (200, b'{"sessions":0,"messages":0}')


class Lobby(Room):
    joined = 0
    left = 0

    def on_connect(self, ws):
        Lobby.joined += 1

    def on_close(self, ws, code, reason, was_clean):
        Lobby.left += 1


@pytest.mark.slow
async def test_connect_disconnect_burst_leaks_nothing(serve, tmp_path):
    Lobby.joined = Lobby.left = 0
    router = RoomRouter(Lobby, data_dir=str(tmp_path))
    server = await serve(router)

    host, port = server.address
    loop = asyncio.get_running_loop()
    # a raw client (no client-side objects to blur the count): the upgrade and a masked CLOSE
    # in one write, then read until the server closes
    hello = (b"GET /lobby HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
             b"\x88\x82\x00\x00\x00\x00\x03\xe8")

    async def one():
        sock = socket.socket()
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (host, port))
            await loop.sock_sendall(sock, hello)
            data = b""
            while True:
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), T)
                if not chunk:
                    break
                data += chunk
            assert data.startswith(b"HTTP/1.1 101") and data.endswith(b"\x88\x02\x03\xe8")
        finally:
            sock.close()

    async def burst(n):
        for _ in range(n // 100):
            await asyncio.gather(*(one() for _ in range(100)))

    await burst(500)  # warm up: the room, its database, the allocator
    await asyncio.sleep(0.05)
    gc.collect()
    base = len(gc.get_objects())
    await burst(10_000)
    deadline = time.monotonic() + T
    while (Lobby.left < 10_500 or server.connections) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert Lobby.joined == Lobby.left == 10_500
    assert router.slot("lobby").sockets == {} and not server.connections
    gc.collect()
    assert sum(type(o) is RoomSocket for o in gc.get_objects()) == 0
    assert len(gc.get_objects()) - base < 2000  # back to the baseline (no per-session leftovers)


# ---------------------------------------------------------------- kill -9

def start_server(data_dir):
    env = dict(os.environ, FASTWS_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastws", "serve", "tests.integration.rooms_crash_app:app", "--host", "127.0.0.1",
         "--port", "0", "--no-compression"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        m = re.search(r"ws://127\.0\.0\.1:(\d+)", line)
        if m:
            return proc, int(m.group(1))
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"server did not start: {proc.stdout.read()}")


@pytest.mark.slow
async def test_kill_9_mid_traffic_loses_nothing_acknowledged(tmp_path):
    proc, port = start_server(tmp_path)
    url = f"ws://127.0.0.1:{port}"
    acked: set[str] = set()
    try:
        async with fastws.connect(url + "/alarm/wake") as ws:
            await ws.send("1.0")
            assert await asyncio.wait_for(ws.recv(), T) == "set"  # acknowledged: the alarm is on disk
        clients = [await fastws.connect(url + "/chat/crash") for _ in range(4)]
        stop = asyncio.Event()

        async def talk(i, ws):
            n = 0
            pending = set()
            while not stop.is_set() and n < 5000:
                content = f"c{i}-{n}"
                n += 1
                pending.add(content)
                await ws.send(orjson.dumps({"content": content}).decode())
                while len(pending) > 8:  # a window of unacknowledged messages
                    try:
                        m = orjson.loads(await asyncio.wait_for(ws.recv(), T))
                    except (fastws.ConnectionClosed, asyncio.TimeoutError):
                        return
                    c = m.get("content")
                    if c in pending:
                        pending.discard(c)
                        acked.add(c)

        tasks = [asyncio.ensure_future(talk(i, ws)) for i, ws in enumerate(clients)]
        deadline = time.monotonic() + 10
        while len(acked) < 300 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)  # mid-traffic
        proc.wait(10)
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for ws in clients:
            ws.abort()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()
    assert len(acked) >= 300
    # every acknowledged message is in the file
    conn = sqlite3.connect(tmp_path / "ChatRoom" / "crash.sqlite3")
    stored = {orjson.loads(v)["content"] for (v,) in conn.execute(
        "SELECT value FROM _fastws_kv WHERE key LIKE 'msg:%'")}
    count = orjson.loads(conn.execute("SELECT value FROM _fastws_kv WHERE key = 'count'").fetchone()[0])
    conn.close()
    assert acked <= stored
    assert count == len(stored)
    # restart: the history and the alarm are there
    proc, port = start_server(tmp_path)
    try:
        status, body = await http_get(("127.0.0.1", port), "/chat/crash")
        assert status == 200 and orjson.loads(body)["messages"] == len(stored)
        deadline = time.monotonic() + T
        while True:
            status, body = await http_get(("127.0.0.1", port), "/alarm/wake")
            state = orjson.loads(body)
            if state["fired"] is not None or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert state["fired"] is not None and state["alarm"] is None
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()
