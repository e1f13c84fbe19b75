"""Server memory per idle connection, with and without permessage-deflate negotiated.

Starts the echo example in its own process, opens N raw WebSocket connections
(handshake only, optionally offering permessage-deflate), and reads the
server's RSS growth from /proc. Loopback only; bounded in count and time.

    .venv/bin/python benchmarks/bench_idle_memory.py [--conns 5000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def open_idle(port: int, n: int, deflate: bool, deadline: float) -> list:
    ext = b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" if deflate else b""
    req = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n" + ext + b"\r\n")
    sem = asyncio.Semaphore(128)
    writers = []

    async def one() -> None:
        async with sem:
            if time.monotonic() > deadline:
                raise TimeoutError("benchmark deadline")
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(req)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 101"), head[:40]
            assert (b"permessage-deflate" in head) == deflate, head
            writers.append(writer)

    await asyncio.gather(*(one() for _ in range(n)))
    return writers


def measure(n: int, deflate: bool) -> float:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c",
                             f"import sys; sys.path.insert(0, {str(ROOT)!r}); import fastws; "
                             f"from examples.echo import app; fastws.run(app, '127.0.0.1', {port}, compression=True)"],
                            cwd=ROOT)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)

        async def run() -> float:
            # warm up: a few connections so lazily created state is there before the baseline
            warm = await open_idle(port, 50, deflate, time.monotonic() + 30)
            await asyncio.sleep(0.5)
            before = rss_kib(proc.pid)
            writers = await open_idle(port, n, deflate, time.monotonic() + 60)
            await asyncio.sleep(1.0)
            after = rss_kib(proc.pid)
            for w in writers + warm:
                w.close()
            return (after - before) / n

        return asyncio.run(run())
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--conns", type=int, default=5000)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    print(f"python {sys.version.split()[0]}, {a.conns} idle connections, {a.rounds} rounds (median)")
    for deflate in (False, True):
        vals = [measure(a.conns, deflate) for _ in range(a.rounds)]
        print(f"permessage-deflate {'negotiated' if deflate else 'off       '}: "
              f"{statistics.median(vals):.2f} KiB per idle connection (rounds: {', '.join(f'{v:.2f}' for v in vals)})")


if __name__ == "__main__":
    main()
