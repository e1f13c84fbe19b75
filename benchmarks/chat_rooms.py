"""Chat round trip through rooms: R rooms x M members (default 100 x 10), every member sends a
message, waits for it to come back through the room (stored first, in the storage modes), and
sends the next. Reports chat messages/s, deliveries/s and the round-trip p50/p99, per mode:

  nostore   the chat room without the storage write
  normal    examples/chat.py with SQLite synchronous=NORMAL (survives a process crash)
  full      examples/chat.py as shipped (synchronous=FULL: fsync before the message leaves)

The server runs in its own process (``fastws serve``) pinned to core 0, the client here on core 1.

    .venv/bin/python benchmarks/chat_rooms.py [--rooms 100 --members 10 --duration 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import orjson

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from examples.chat import ChatRoom  # noqa: E402
from fastws.rooms import RoomRouter  # noqa: E402


class NoStoreChat(ChatRoom):
    """The chat room without its storage write (history in memory only)."""

    async def on_message(self, ws: Any, message: str | bytes) -> None:
        try:
            content = orjson.loads(message)["content"]
        except (orjson.JSONDecodeError, TypeError, KeyError):
            return
        msg = {"id": "-", "userId": ws.id, "content": content, "timestamp": "-"}
        self.recent.append(msg)
        self.broadcast(msg)


class NormalChat(ChatRoom):
    synchronous = "NORMAL"


_opts = {"compression": False, "ping_interval": None, "backlog": 4096}
app_nostore = RoomRouter(NoStoreChat, server_options=_opts, new_rooms_per_ip=None)
app_normal = RoomRouter(NormalChat, server_options=_opts, new_rooms_per_ip=None)
app_full = RoomRouter(ChatRoom, server_options=_opts, new_rooms_per_ip=None)


def start(mode: str, data_dir: str, core: int | None) -> tuple[subprocess.Popen[str], int]:
    cmd = [sys.executable, "-m", "fastws", "serve", f"benchmarks.chat_rooms:app_{mode}", "--host", "127.0.0.1",
           "--port", "0"]
    if core is not None and shutil.which("taskset"):
        cmd = ["taskset", "-c", str(core)] + cmd
    proc = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, FASTWS_DATA_DIR=data_dir, PYTHONUNBUFFERED="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.search(r"ws://127\.0\.0\.1:(\d+)", line)
    if not m:
        proc.kill()
        raise SystemExit(f"server did not start: {line}{proc.stdout.read()}")
    return proc, int(m.group(1))


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_client(port: int, rooms: int, members: int, warmup: float, duration: float,
                     pid: int) -> dict[str, float]:
    import fastws

    url = f"ws://127.0.0.1:{port}"
    conns = []
    for r in range(rooms):
        for _ in range(members):
            conns.append(await fastws.connect(f"{url}/bench{r}", compression=False, ping_interval=None))
    await asyncio.sleep(0.5)
    state = {"measuring": False, "stop": False}
    rtts: list[float] = []
    counts = {"acked": 0, "delivered": 0}

    async def member(i: int, ws: Any) -> None:
        seq = 0
        while not state["stop"]:
            seq += 1
            token = f"m{i}-{seq}"
            t0 = time.perf_counter()
            await ws.send(f'{{"content":"{token}"}}')
            while True:
                msg = await ws.recv()
                if state["measuring"]:
                    counts["delivered"] += 1
                if token in msg:
                    break
            if state["measuring"]:
                rtts.append(time.perf_counter() - t0)
                counts["acked"] += 1

    tasks = [asyncio.ensure_future(member(i, ws)) for i, ws in enumerate(conns)]
    await asyncio.sleep(warmup)
    state["measuring"] = True
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    await asyncio.sleep(duration)
    state["measuring"] = False
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
    state["stop"] = True
    for ws in conns:
        ws.abort()
    await asyncio.gather(*tasks, return_exceptions=True)
    rtts.sort()
    q = (lambda p: rtts[min(len(rtts) - 1, int(p * len(rtts)))] * 1000) if rtts else (lambda p: float("nan"))
    return {"msgs_per_s": counts["acked"] / elapsed, "deliveries_per_s": counts["delivered"] / elapsed,
            "p50_ms": q(0.50), "p99_ms": q(0.99), "server_cpu": cpu / elapsed,
            "server_us_per_msg": cpu / max(1, counts["acked"]) * 1e6}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rooms", type=int, default=100)
    p.add_argument("--members", type=int, default=10)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--modes", default="nostore,normal,full")
    p.add_argument("--no-pin", action="store_true")
    a = p.parse_args()
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(65536, hard), hard))
    if not a.no_pin and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {1})
    try:
        import uvloop

        loop_factory: Any = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        loop_factory = asyncio.new_event_loop
    print(f"python {platform.python_version()}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cpus; {a.rooms} rooms x {a.members} members, {a.duration}s x {a.repeats}")
    results: dict[str, list[dict[str, float]]] = {m: [] for m in a.modes.split(",")}
    for rnd in range(a.repeats):
        modes = list(results)
        modes = modes[rnd % len(modes):] + modes[:rnd % len(modes)]  # rotate the order each round
        for mode in modes:
            data_dir = tempfile.mkdtemp(prefix="fastws-chat-bench-")
            proc, port = start(mode, data_dir, None if a.no_pin else 0)
            try:
                with asyncio.Runner(loop_factory=loop_factory) as runner:
                    r = runner.run(run_client(port, a.rooms, a.members, a.warmup, a.duration, proc.pid))
            finally:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                shutil.rmtree(data_dir, ignore_errors=True)
            results[mode].append(r)
            print(f"  round {rnd} {mode:8s} {r['msgs_per_s']:9.0f} msg/s {r['deliveries_per_s']:10.0f} deliveries/s "
                  f"p50 {r['p50_ms']:6.2f} ms p99 {r['p99_ms']:7.2f} ms server cpu {r['server_cpu']:.2f}", flush=True)
    print("\n| mode | chat messages/s | deliveries/s | p50 ms | p99 ms | server CPU (cores) | server µs per message |"
          "\n|---|---|---|---|---|---|---|")
    for mode, rs in results.items():
        med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        print(f"| {mode} | {med['msgs_per_s']:,.0f} | {med['deliveries_per_s']:,.0f} | {med['p50_ms']:.2f} | "
              f"{med['p99_ms']:.2f} | {med['server_cpu']:.2f} | {med['server_us_per_msg']:.0f} |")


if __name__ == "__main__":
    main()
