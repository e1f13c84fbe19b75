"""What metrics cost: echo throughput with metrics on (scraped every second) against off.

    .venv/bin/python benchmarks/bench_metrics.py [--rounds 5] [--duration 3]

Each server is ``fastws serve examples.echo:app`` (the listener echo) in its own
process, pinned to CPU 0 (the load runs on CPU 1 when there are two):
``--no-metrics`` (no /metrics, latency and duration histograms off) against
the default (counters and histograms on) with ``/metrics`` and ``/analytics``
fetched once a second during the run. Figures: messages/s and the server's CPU
time per echoed message (from /proc); medians over rounds, the order of the
two cases alternating per round.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import fastws  # noqa: E402
from benchmarks._serverproc import ServerProcess, cpu_seconds, setup_load_client  # noqa: E402

PAYLOAD = b"x" * 16


class Server(ServerProcess):
    def __init__(self, *flags: str) -> None:
        super().__init__("examples.echo:app", "--no-compression", *flags)


async def scrape(address: tuple[str, int], path: str) -> int:
    reader, writer = await asyncio.open_connection(*address)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    if not data.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"{path}: {data[:60]!r}")
    return len(data)


async def load(server: Server, duration: float, scraping: bool, conns: int = 16) -> tuple[int, int]:
    """Echo 16-byte messages on ``conns`` connections for ``duration`` s; returns (messages, scrapes)."""
    done = 0
    scrapes = 0
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        nonlocal done
        async with fastws.connect(server.url, compression=False) as ws:
            while time.perf_counter() < deadline:
                for _ in range(8):
                    ws.send(PAYLOAD)
                for _ in range(8):
                    await ws.recv()
                done += 8

    async def scraper() -> None:
        nonlocal scrapes
        while time.perf_counter() < deadline - 0.5:
            await scrape(server.address, "/metrics")
            await scrape(server.address, "/analytics")
            scrapes += 1
            await asyncio.sleep(1.0)

    jobs = [worker() for _ in range(conns)]
    if scraping:
        jobs.append(scraper())
    await asyncio.gather(*jobs)
    return done, scrapes


CASES = {"off": "off (--no-metrics)", "on": "on, not scraped", "scraped": "on, scraped every 1 s"}


def measure(case: str, duration: float) -> tuple[float, float, int]:
    server = Server("--no-metrics") if case == "off" else Server()
    try:
        asyncio.run(load(server, 0.3, False))  # warm up
        cpu0, t0 = cpu_seconds(server.proc.pid), time.perf_counter()
        n, scrapes = asyncio.run(load(server, duration, case == "scraped"))
        cpu, wall = cpu_seconds(server.proc.pid) - cpu0, time.perf_counter() - t0
    finally:
        server.stop()
    return n / wall, cpu / n * 1e6, scrapes


async def engine(pairs: int, batch: int, blobs: int) -> None:
    """In one process: the echo listener fed by a raw client that writes ``batch`` frames at a time;
    the histograms (``endpoint.stats_enabled``) toggled between measurements, ``pairs`` times each
    way. Both cases share the process, the core and whatever else the machine runs at that moment,
    so their ratio is steadier than two servers measured one after the other."""
    import base64

    from tests.helpers import build_frame

    class Echo(fastws.Listener):
        def on_message(self, ws, msg):
            ws.send(msg)

    server = await fastws.serve(Echo, "127.0.0.1", 0, compression=False)
    reader, writer = await asyncio.open_connection(*server.address)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    await reader.readuntil(b"\r\n\r\n")
    blob = build_frame(2, PAYLOAD) * batch
    reply = (2 + len(PAYLOAD)) * batch

    async def run(stats: bool) -> float:
        server.endpoint.stats_enabled = stats
        t0 = time.process_time()
        for _ in range(blobs):
            writer.write(blob)
            await reader.readexactly(reply)
        return (time.process_time() - t0) / (blobs * batch) * 1e9

    await run(True)  # warm up
    results: dict[bool, list[float]] = {False: [], True: []}
    for i in range(pairs):
        for stats in ((False, True) if i % 2 == 0 else (True, False)):
            results[stats].append(await run(stats))
    writer.close()
    await server.shutdown()
    off, on = statistics.median(results[False]), statistics.median(results[True])
    print(f"engine, {pairs} pairs of {blobs} x {batch} messages (process CPU per echoed message, medians):")
    print("| histograms | ns per message | vs off |")
    print("|---|---|---|")
    print(f"| off (stats_enabled=False) | {off:.0f} | 1.000x |")
    print(f"| on (the default) | {on:.0f} | {on / off:.3f}x |")
    obs = server.observability
    t0 = time.perf_counter()
    for _ in range(200):
        obs.render_prometheus()
    render = (time.perf_counter() - t0) / 200
    print(f"one /metrics render: {render * 1e3:.2f} ms ({render / 15 * 100:.3f}% of a core at a 15 s scrape interval)")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--engine", action="store_true", help="in-process: histograms on vs off, interleaved")
    p.add_argument("--pairs", type=int, default=21)
    p.add_argument("--blobs", type=int, default=800)
    args = p.parse_args()
    if args.engine:
        import uvloop

        uvloop.run(engine(args.pairs, 256, args.blobs))
        return
    setup_load_client()
    print(f"fastws {fastws.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPUs; "
          f"{args.rounds} rounds x {args.duration:g} s, medians")
    cases = list(CASES)
    results: dict[str, list[tuple[float, float, int]]] = {c: [] for c in cases}
    for r in range(args.rounds):
        for case in cases[r % len(cases):] + cases[:r % len(cases)]:
            results[case].append(measure(case, args.duration))
            rate, cpu, scrapes = results[case][-1]
            print(f"  round {r + 1} {CASES[case]}: {rate:,.0f} msg/s, {cpu:.2f} µs CPU/msg"
                  + (f", {scrapes} scrapes" if scrapes else ""), flush=True)
    med = {c: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for c, v in results.items()}
    print("| metrics | messages/s | server CPU µs per message | rate vs off | CPU vs off |")
    print("|---|---|---|---|---|")
    for case in cases:
        rate, cpu = med[case]
        print(f"| {CASES[case]} | {rate:,.0f} | {cpu:.2f} | {rate / med['off'][0]:.3f}x | "
              f"{cpu / med['off'][1]:.3f}x |")


if __name__ == "__main__":
    main()
