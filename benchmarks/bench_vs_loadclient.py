"""`fastws bench` (echo) against the shared peer harness's load client, same server, same run.

    .venv/bin/python benchmarks/bench_vs_loadclient.py [--rounds 3] [--duration 3] [--conns 1,64] [--size 64]

Starts ``fastws serve examples.echo:app`` pinned to core 0 (``taskset``, when there is more
than one core), then for each round and each connection count runs both clients pinned to
core 1, in alternating order: ``../shared/perf/loadclient.py --mode echo`` (pre-framed raw
uvloop sockets: the cheapest possible client) and ``fastws bench --mode echo -n 0 -d D``.
Both keep one message in flight per connection; a third row runs ``fastws bench --inflight K``
(K messages in flight per connection: a different, pipelined load, shown for the headroom). Prints a markdown table of medians:
messages/s, the client's CPU per message and the server's CPU per message (from /proc).
Loopback only; every run is bounded by --duration.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOADCLIENT = os.environ.get("FASTWS_LOADCLIENT", os.path.join(ROOT, "..", "shared", "perf", "loadclient.py"))


def pin(core: int) -> list[str]:
    if shutil.which("taskset") and (os.cpu_count() or 1) > 1:
        return ["taskset", "-c", str(core)]
    return []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_loadclient(port: int, pid: int, conns: int, size: int, duration: float) -> dict[str, float]:
    out = subprocess.run(pin(1) + [sys.executable, LOADCLIENT, "--port", str(port), "--conns", str(conns),
                                   "--sizes", str(size), "--duration", str(duration), "--warmup", "0.5",
                                   "--server-pid", str(pid)], capture_output=True, text=True,
                         timeout=duration + 60, check=True).stdout
    d = json.loads(out)
    if not d.get("ok"):
        raise RuntimeError(d)
    r = d["result"]
    rate = r["msgs"] / r["seconds"]
    return {"msgs_per_s": rate, "client_us": r["client_cpu"] / rate * 1e6, "server_us": r["server_cpu"] / rate * 1e6}


def run_bench(port: int, pid: int, conns: int, size: int, duration: float, inflight: int = 1) -> dict[str, float]:
    fastws = os.path.join(os.path.dirname(sys.executable), "fastws")
    out = subprocess.run(pin(1) + [fastws, "bench", f"ws://127.0.0.1:{port}/", "-c", str(conns), "-n", "0",
                                   "-s", str(size), "-d", str(duration), "--server-pid", str(pid), "--json", "-q",
                                   "--inflight", str(inflight)],
                         capture_output=True, text=True, timeout=duration + 60).stdout
    d = json.loads(out)
    m = d["metrics"]
    if not d["ok"]:
        raise RuntimeError(d["errors"])
    rate = m["msgs_per_s"]
    return {"msgs_per_s": rate, "client_us": m["client_cpu_cores"] / rate * 1e6,
            "server_us": m["server_cpu_cores"] / rate * 1e6}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--conns", default="1,64")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--inflight", type=int, default=4,
                   help="also run fastws bench with this many messages in flight per connection (0: skip)")
    a = p.parse_args()
    port = free_port()
    fastws = os.path.join(os.path.dirname(sys.executable), "fastws")
    server = subprocess.Popen(pin(0) + [fastws, "serve", "examples.echo:app", "--app-dir", ROOT, "--no-compression",
                                        "--port", str(port), "--log-level", "warning"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        server.stdout.readline()
        results: dict[tuple[str, int], list[dict[str, float]]] = {}
        clients: list[tuple[str, Any]] = [("loadclient.py (raw)", run_loadclient), ("fastws bench", run_bench)]
        if a.inflight > 1:
            k = a.inflight
            clients.append((f"fastws bench --inflight {k}",
                            lambda port, pid, c, size, d: run_bench(port, pid, c, size, d, k)))
        for rnd in range(a.rounds):
            for conns in [int(c) for c in a.conns.split(",")]:
                order = clients if rnd % 2 == 0 else clients[::-1]
                for name, fn in order:
                    results.setdefault((name, conns), []).append(fn(port, server.pid, conns, a.size, a.duration))
                    time.sleep(0.3)
        print(f"echo, {a.size} B, {a.rounds} rounds x {a.duration:g} s, medians; server examples/echo.py "
              f"on core 0, client on core 1\n")
        print("| client | connections | messages/s | client CPU µs/msg | server CPU µs/msg |")
        print("|---|---|---|---|---|")
        for (name, conns), rs in results.items():
            med = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
            print(f"| {name} | {conns} | {med['msgs_per_s']:,.0f} | {med['client_us']:.2f} | {med['server_us']:.2f} |")
    finally:
        server.terminate()
        server.wait(15)


if __name__ == "__main__":
    main()
