"""Rooms feed the metrics layer (rooms active/hibernated, storage commits, alarms) and a room
router mounted in an App gets its startup/shutdown hooks."""

from __future__ import annotations

import asyncio
import time

import orjson

import fastws
from fastws.rooms import Room, RoomRouter

T = 5.0


async def http_get(server, path):
    r, w = await asyncio.open_connection(*server.address)
    w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = await asyncio.wait_for(r.read(), T)
    w.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


class Counter(Room):
    async def on_message(self, ws, message):
        n = (await self.storage.get("n") or 0) + 1
        await self.storage.put("n", n)
        ws.send(str(n))

    async def alarm(self, info):
        await self.storage.put("alarm_ran", True)


async def test_rooms_and_storage_show_in_analytics_and_metrics(serve, tmp_path):
    server = await serve(RoomRouter(Counter, data_dir=str(tmp_path)))
    ws = await fastws.connect(server.url + "/r1")
    for i in range(3):
        await ws.send("x")
        assert await asyncio.wait_for(ws.recv(), T) == str(i + 1)
    status, body = await http_get(server, "/analytics")
    assert status == 200
    rooms = orjson.loads(body)["rooms"]
    assert rooms["active"] >= 1
    assert {"name": "r1", "sessions": 1, "messages": 3} in rooms["busiest"]
    status, text = await http_get(server, "/metrics")
    assert status == 200
    lines = text.decode().splitlines()
    commits = [ln for ln in lines if ln.startswith("fastws_storage_operations_total") and 'op="commit"' in ln]
    assert commits and float(commits[0].split()[-1]) >= 3
    assert any(ln.startswith("fastws_rooms_active") and float(ln.split()[-1]) >= 1 for ln in lines)
    await ws.close()


class Alarmed(Room):
    async def on_request(self, request):
        await self.set_alarm(time.time() + 0.05)
        return {"set": True}

    async def alarm(self, info):
        await self.storage.put("fired", info.retry_count)


async def test_mounted_router_gets_startup_and_shutdown_and_alarms_count(serve, tmp_path):
    from fastws.metrics import recorder

    before = recorder.alarms["fired"]
    router = RoomRouter(Alarmed, data_dir=str(tmp_path))
    calls = []
    real_start, real_stop = router.fastws_startup, router.fastws_shutdown

    async def startup(server):
        calls.append("startup")
        await real_start(server)

    async def shutdown(server):
        calls.append("shutdown")
        await real_stop(server)

    router.fastws_startup, router.fastws_shutdown = startup, shutdown
    app = fastws.App()
    app.mount("/rooms", router)
    server = await serve(app)
    assert calls == ["startup"]
    assert await http_get(server, "/rooms/a") == (200, b'{"set":true}')
    for _ in range(200):
        if recorder.alarms["fired"] > before:
            break
        await asyncio.sleep(0.01)
    assert recorder.alarms["fired"] > before
    await server.shutdown(timeout=2)
    assert calls == ["startup", "shutdown"]

