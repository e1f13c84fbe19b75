"""The same FastAPI app (benchmarks/asgi_app.py) on fastws and on other ASGI servers, same run.

Two loads per server, each bounded by ``--duration``:

- ``ws``: ``fastws bench`` echo (64 B text messages, ``--conns`` connections, one in flight each);
- ``http``: a keep-alive GET /json loop on ``--conns`` connections (a uvloop raw-socket client).

Each server runs alone in its own process, pinned to CPU 0 with the load client on CPU 1 when
there are two CPUs; ``--rounds`` rounds rotate the order, and the medians are printed with the
ratio to fastws. The figures are messages (requests) per second and the server's own CPU time per
message (µs, from /proc), which moves much less than the rate on a shared machine.

    python benchmarks/bench_asgi.py --rounds 3 --duration 3 --conns 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
APP = "benchmarks.asgi_app:app"
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def servers(port: int) -> dict[str, list[str]]:
    uv = [PY, "-m", "uvicorn", APP, "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop",
          "--http", "httptools", "--log-level", "warning", "--no-access-log", "--ws-per-message-deflate", "false"]
    out = {
        "fastws": [PY, "-m", "fastws", "--log-level", "warning", "serve", APP, "--host", "127.0.0.1",
                   "--port", str(port), "--no-compression"],
        "uvicorn+websockets": uv + ["--ws", "websockets"],
        "uvicorn+wsproto": uv + ["--ws", "wsproto"],
    }
    if _importable("hypercorn"):
        out["hypercorn"] = [PY, "-m", "hypercorn", APP, "--bind", f"127.0.0.1:{port}", "--worker-class", "uvloop",
                            "--log-level", "warning"]
    granian = shutil.which("granian") or os.path.join(os.path.dirname(PY), "granian")
    if os.path.exists(granian):
        out["granian"] = [granian, "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port), "--loop",
                          "uvloop", "--workers", "1", "--log-level", "warning", APP]
    return out


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid``, its threads and its child processes (hypercorn and granian
    serve from a worker process)."""
    total = 0.0
    todo = [pid]
    for _ in range(64):
        if not todo:
            break
        p = todo.pop()
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICK
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return total


def pin(cpu: int) -> list[str]:
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", str(cpu)]
    return []


def start(cmd: list[str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(pin(0) + cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            time.sleep(0.3)
            return proc
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{cmd[2:4]} did not start: {proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def ws_load(port: int, conns: int, duration: float) -> tuple[float, int]:
    out = subprocess.run(pin(1) + [PY, "-m", "fastws", "bench", f"ws://127.0.0.1:{port}/ws", "-c", str(conns),
                                   "-n", "0", "--duration", str(duration), "--text", "--json", "--quiet"],
                         cwd=ROOT, capture_output=True, text=True, timeout=duration + 60,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    doc = json.loads(out.stdout)
    m = doc["metrics"]
    return m["msgs_per_s"], m["messages_received"]


REQUEST = b"GET /json HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


async def _http_conn(port: int, until: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    n = 0
    try:
        for _ in range(10_000_000):
            if time.monotonic() >= until:
                break
            writer.write(REQUEST)
            head = await reader.readuntil(b"\r\n\r\n")
            i = head.lower().find(b"content-length:")
            length = int(head[i + 15:head.index(b"\r\n", i)])
            await reader.readexactly(length)
            n += 1
    finally:
        counts.append(n)
        writer.close()


def http_load(port: int, conns: int, duration: float) -> tuple[float, int]:
    script = f"""
import asyncio, sys, time, uvloop
sys.path.insert(0, {ROOT!r})
from benchmarks.bench_asgi import _http_conn
async def main():
    counts = []
    t0 = time.monotonic()
    await asyncio.gather(*[_http_conn({port}, t0 + {duration}, counts) for _ in range({conns})])
    print(sum(counts), time.monotonic() - t0)
uvloop.run(main())
"""
    out = subprocess.run(pin(1) + [PY, "-c", script], capture_output=True, text=True, timeout=duration + 60)
    n, elapsed = out.stdout.split()
    return int(n) / float(elapsed), int(n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--only", default="", help="comma-separated server names")
    ap.add_argument("--json", default="", help="write the raw results here")
    args = ap.parse_args()
    port = free_port()
    names = list(servers(port))
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    print(f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, "
          f"{args.rounds} rounds x {args.duration} s, {args.conns} connections; "
          f"servers: {', '.join(names)}", flush=True)
    results: dict[str, dict[str, list[tuple[float, float]]]] = {n: {"ws": [], "http": []} for n in names}
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            port = free_port()
            proc = start(servers(port)[name], port)
            try:
                for kind, load in (("ws", ws_load), ("http", http_load)):
                    before = cpu_seconds(proc.pid)
                    rate, count = load(port, args.conns, args.duration)
                    used = cpu_seconds(proc.pid) - before
                    results[name][kind].append((rate, used / count * 1e6 if count else float("nan")))
                    print(f"  round {r + 1} {name:20} {kind:4} {rate:10.0f}/s {used / max(count, 1) * 1e6:7.1f} µs "
                          "server CPU each", flush=True)
            finally:
                stop(proc)
    print()
    print(f"{'server':20} {'ws msgs/s':>10} {'ratio':>6} {'µs/msg':>7}   {'http req/s':>10} {'ratio':>6} "
          f"{'µs/req':>7}")
    base = {k: statistics.median(x[0] for x in results.get("fastws", {}).get(k, [(float("nan"), 0)]))
            for k in ("ws", "http")}
    for name in names:
        row = []
        for kind in ("ws", "http"):
            rate = statistics.median(x[0] for x in results[name][kind])
            cpu = statistics.median(x[1] for x in results[name][kind])
            row.append(f"{rate:10.0f} {rate / base[kind]:6.2f} {cpu:7.1f}")
        print(f"{name:20} {row[0]}   {row[1]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
