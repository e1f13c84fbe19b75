"""What the guards cost: handshakes/s and messages/s with every guard on against none.

    .venv/bin/python benchmarks/bench_guards.py [--rounds 3] [--duration 3]

Each server is ``fastws serve benchmarks.guard_apps:<app>`` in its own process,
pinned to CPU 0 (the load runs on CPU 1 when there are two). Figures: the
server's CPU time per handshake / per echoed message (from /proc, the primary
figure on a shared machine) and the rate; medians over rounds, apps rotated.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import Cython  # noqa: E402

import fastws  # noqa: E402
from benchmarks._serverproc import ServerProcess, cpu_seconds, setup_load_client  # noqa: E402


class Server(ServerProcess):
    def __init__(self, app: str) -> None:
        super().__init__(f"benchmarks.guard_apps:{app}")


REQUEST = ("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           "Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nOrigin: https://app.example.com\r\n"
           "User-Agent: bench\r\n\r\n")


async def handshakes(server: Server, duration: float, concurrency: int = 16) -> int:
    """Open, upgrade and close connections for ``duration`` seconds; return how many got 101."""
    done = 0
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            reader, writer = await asyncio.open_connection(server.host, server.port)
            key = base64.b64encode(os.urandom(16)).decode()
            writer.write(REQUEST.format(key=key).encode())
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 101"):
                raise RuntimeError(f"handshake refused: {head[:60]!r}")
            writer.write(b"\x88\x82\x00\x00\x00\x00\x03\xe8")  # CLOSE 1000, masked with a zero key
            await reader.read()
            writer.close()
            done += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done


async def messages(server: Server, duration: float, conns: int = 16) -> int:
    """Echo 16-byte messages on ``conns`` connections for ``duration`` seconds; return the count."""
    done = 0
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        nonlocal done
        async with fastws.connect(server.url, compression=False,
                                  headers=[("Origin", "https://app.example.com")]) as ws:
            payload = b"x" * 16
            while time.perf_counter() < deadline:
                for _ in range(8):
                    ws.send(payload)
                for _ in range(8):
                    await ws.recv()
                done += 8

    await asyncio.gather(*(worker() for _ in range(conns)))
    return done


def measure(app: str, kind: str, duration: float) -> tuple[float, float]:
    server = Server(app)
    try:
        fn = handshakes if kind == "handshake" else messages
        asyncio.run(fn(server, 0.3))  # warm up
        cpu0, t0 = cpu_seconds(server.proc.pid), time.perf_counter()
        n = asyncio.run(fn(server, duration))
        cpu, wall = cpu_seconds(server.proc.pid) - cpu0, time.perf_counter() - t0
    finally:
        server.stop()
    return n / wall, cpu / n * 1e6


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--only", choices=["handshake", "message"], default=None)
    p.add_argument("--apps", default=None, help="comma-separated guard_apps names (handshakes only)")
    args = p.parse_args()
    setup_load_client()
    print(f"fastws {fastws.__version__}, Python {platform.python_version()}, Cython {Cython.__version__}, "
          f"{os.cpu_count()} CPUs; {args.rounds} rounds x {args.duration:g} s, medians")
    cases = [("handshake", "off"), ("handshake", "on"), ("message", "off"), ("message", "on"),
             ("message", "off_listener"), ("message", "on_listener")]
    if args.only:
        cases = [c for c in cases if c[0] == args.only]
    if args.apps:
        cases = [("handshake", a) for a in args.apps.split(",")]
    results: dict[tuple[str, str], list[tuple[float, float]]] = {c: [] for c in cases}
    for r in range(args.rounds):
        order = cases[r % len(cases):] + cases[:r % len(cases)]
        for kind, app in order:
            results[(kind, app)].append(measure(app, kind, args.duration))
    print("| case | guards | rate /s | server CPU µs each | rate vs off |")
    print("|---|---|---|---|---|")
    med = {c: (statistics.median(x for x, _ in v), statistics.median(y for _, y in v)) for c, v in results.items()}
    for kind, app in cases:
        rate, cpu = med[(kind, app)]
        base = (kind, "off_listener" if "listener" in app else "off")
        ratio = rate / med[base][0] if base in med else float("nan")
        label = {"handshake": "handshakes", "message": "messages (handler API)"}[kind]
        if "listener" in app:
            label = "messages (listener API)"
        guards = "off" if app.startswith("off") else "all on" if app in ("on", "on_listener") else app
        print(f"| {label} | {guards} | {rate:,.0f} | {cpu:.1f} | {ratio:.2f}x |")


if __name__ == "__main__":
    main()
