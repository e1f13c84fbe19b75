"""Memory of N rooms with one idle socket each (default 10,000): hibernated against awake.

Starts ``fastws serve benchmarks.rooms_memory:app_<mode>`` (its own process), opens one
WebSocket to each of N rooms (``/r0`` ... ``/r9999``, each socket gets an attachment), waits for
the hibernating rooms to be evicted, and reads the server's RSS (``/proc/PID/status``).

    .venv/bin/python benchmarks/rooms_memory.py [--rooms 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from fastws.rooms import Room, RoomRouter  # noqa: E402


class AwakeRoom(Room):
    """A small chat-like room: a little state, an attachment per socket."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.topic = f"room {self.name}"

    def on_connect(self, ws: Any) -> None:
        ws.attachment = {"userId": ws.id, "joined": time.time()}

    def on_message(self, ws: Any, message: str | bytes) -> None:
        self.broadcast(message)


class SleepingRoom(AwakeRoom):
    hibernate = 1.0


_opts = {"compression": False, "ping_interval": None, "backlog": 4096}
# one client IP opens every room: no per-IP pace of new rooms, no cap
app_awake = RoomRouter(AwakeRoom, server_options=_opts, max_rooms=None, new_rooms_per_ip=None)
app_hibernate = RoomRouter(SleepingRoom, server_options=_opts, max_rooms=None, new_rooms_per_ip=None)


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def measure(mode: str, rooms: int) -> dict[str, float]:
    import fastws

    data_dir = tempfile.mkdtemp(prefix="fastws-mem-")
    proc = subprocess.Popen([sys.executable, "-m", "fastws", "serve", f"benchmarks.rooms_memory:app_{mode}",
                             "--host", "127.0.0.1", "--port", "0"], cwd=ROOT,
                            env=dict(os.environ, FASTWS_DATA_DIR=data_dir), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    port = int(re.search(r":(\d+) ", line).group(1))  # type: ignore[union-attr]
    try:
        await asyncio.sleep(0.5)
        base = rss_kib(proc.pid)
        conns = []
        for i in range(0, rooms, 100):
            conns += await asyncio.gather(*(fastws.connect(f"ws://127.0.0.1:{port}/r{j}", compression=False,
                                                           ping_interval=None) for j in range(i, min(rooms, i + 100))))
        await asyncio.sleep(12.0)  # rooms hibernate after 1 s; idle databases close after 10 s
        loaded = rss_kib(proc.pid)
        # every socket still works (and a hibernated room wakes for it)
        sample = conns[:: max(1, rooms // 50)]
        for ws in sample:
            await ws.send("hi")
            assert await asyncio.wait_for(ws.recv(), 10) == "hi"
        for ws in conns:
            ws.abort()
        return {"base_kib": base, "loaded_kib": loaded, "per_room_kib": (loaded - base) / rooms}
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rooms", type=int, default=10_000)
    a = p.parse_args()
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(65536, hard), hard))
    print(f"{a.rooms} rooms, one idle socket each (server RSS)")
    print("| rooms | baseline RSS | with the sockets | per room + socket |\n|---|---|---|---|")
    for mode in ("hibernate", "awake"):
        r = asyncio.run(measure(mode, a.rooms))
        print(f"| {mode} | {r['base_kib'] / 1024:.1f} MiB | {r['loaded_kib'] / 1024:.1f} MiB | "
              f"{r['per_room_kib']:.2f} KiB |", flush=True)


if __name__ == "__main__":
    main()
