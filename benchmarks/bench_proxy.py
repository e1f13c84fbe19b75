"""Proxy overhead: the same echo load straight to a backend and through ``examples/proxy.py``.

    .venv/bin/python benchmarks/bench_proxy.py [--sizes 16,1024,65536] [--conns 1,64]
                                               [--duration 3] [--repeats 3]

The backend is ``examples/echo.py`` and the proxy ``examples/proxy.py`` (``BACKEND_URL`` pointing at
it), each a ``fastws serve`` process on 127.0.0.1 pinned to core 0; the load client is the shared
harness' ``loadclient.py`` (``--loadclient``, default ``../shared/perf/loadclient.py``), pinned to
core 1: request/response echo, one message in flight per connection, pre-framed payloads, so the
client does the same work in both runs. Every run is bounded (the client has a message cap and a
wall-clock deadline; this script kills what it started, by PID).

Reported per size and connection count (medians over repeats):
  - messages/s direct and through the proxy, and their ratio;
  - round trip (µs) at one connection (1 / msgs/s: one message in flight);
  - CPU per echoed message (µs) of the backend and of the proxy process (from /proc), the figure that
    moves least on this shared machine. The proxy relays two messages per echo (one each way).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def pinned(core: int) -> list[str]:
    return ["taskset", "-c", str(core)] if shutil.which("taskset") and (os.cpu_count() or 1) > 1 else []


def start_server(spec: str, port: int, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    cmd = pinned(0) + [sys.executable, "-m", "fastws", "--log-level", "warning", "serve", spec,
                       "--app-dir", ROOT, "--no-compression", "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, cwd=ROOT)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{spec} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{spec} did not listen on {port}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def load(a: argparse.Namespace, port: int, size: int, conns: int, pids: list[int]) -> dict[str, float]:
    """One loadclient echo run; CPU seconds of each pid over the whole run, divided by messages."""
    cmd = pinned(1) + [sys.executable, a.loadclient, "--mode", "echo", "--port", str(port), "--sizes", str(size),
                       "--conns", str(conns), "--warmup", str(a.warmup), "--duration", str(a.duration),
                       "--max-msgs", str(a.max_msgs), "--server-pid", str(pids[0])]
    before = [cpu_seconds(p) for p in pids]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=a.warmup + a.duration + 60)
    after = [cpu_seconds(p) for p in pids]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    if not res.get("ok"):
        raise RuntimeError(f"load client failed: {res}")
    r = res["result"]
    if r.get("errors"):
        raise RuntimeError(f"echo errors: {r}")
    total = max(1, r["total_msgs"])
    return {
        "msgs_s": r["msgs"] / r["seconds"],
        **{f"cpu_us_{i}": (after[i] - before[i]) / total * 1e6 for i in range(len(pids))},
    }


def fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="16,1024,65536")
    p.add_argument("--conns", default="1,64")
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--warmup", type=float, default=0.5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-msgs", type=int, default=5_000_000)
    p.add_argument("--loadclient", default=os.path.join(ROOT, "..", "shared", "perf", "loadclient.py"))
    p.add_argument("--out", default="", help="write every run as JSON here")
    a = p.parse_args()
    if not os.path.exists(a.loadclient):
        sys.exit(f"bench_proxy: no load client at {a.loadclient} (give --loadclient)")
    sizes = [int(s) for s in a.sizes.split(",")]
    conns_list = [int(c) for c in a.conns.split(",")]
    import uvloop

    import fastws
    try:
        import Cython
        cython_version = Cython.__version__
    except ImportError:  # a build-only dependency
        cython_version = "?"
    print(f"fastws {fastws.__version__}, Python {platform.python_version()}, Cython {cython_version}, "
          f"uvloop {uvloop.__version__}, {os.cpu_count()} CPUs; servers on core 0, client on core 1")
    backend_port, proxy_port = free_port(), free_port()
    backend = start_server("examples.echo:app", backend_port)
    proxy = None
    runs: list[dict[str, object]] = []
    try:
        proxy = start_server("examples.proxy:app", proxy_port, {"BACKEND_URL": f"ws://127.0.0.1:{backend_port}"})
        for rep in range(a.repeats):
            for size in sizes:
                for conns in conns_list:
                    order = ("direct", "proxy") if rep % 2 == 0 else ("proxy", "direct")
                    for mode in order:
                        if mode == "direct":
                            r = load(a, backend_port, size, conns, [backend.pid])
                        else:
                            r = load(a, proxy_port, size, conns, [proxy.pid, backend.pid])
                        runs.append({"mode": mode, "size": size, "conns": conns, "repeat": rep, **r})
                        print(f"  round {rep + 1} {mode:6} {size:>7} B x {conns:<3} {r['msgs_s']:>10,.0f} msg/s",
                              flush=True)
    finally:
        if proxy is not None:
            stop(proxy)
        stop(backend)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(runs, f, indent=1)

    def med(mode: str, size: int, conns: int, key: str) -> float:
        return statistics.median(float(r[key]) for r in runs  # type: ignore[arg-type]
                                 if r["mode"] == mode and r["size"] == size and r["conns"] == conns)

    print()
    print("| size | conns | direct msg/s | proxied msg/s | ratio | direct RTT µs | proxied RTT µs "
          "| backend CPU µs/echo | proxy CPU µs/echo |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in sizes:
        for conns in conns_list:
            d, q = med("direct", size, conns, "msgs_s"), med("proxy", size, conns, "msgs_s")
            rtt_d = f"{1e6 / d:.0f}" if conns == 1 else "-"
            rtt_q = f"{1e6 / q:.0f}" if conns == 1 else "-"
            print(f"| {size} | {conns} | {fmt(d)} | {fmt(q)} | {q / d:.2f} | {rtt_d} | {rtt_q} "
                  f"| {med('direct', size, conns, 'cpu_us_0'):.2f} | {med('proxy', size, conns, 'cpu_us_0'):.2f} |")


if __name__ == "__main__":
    main()
