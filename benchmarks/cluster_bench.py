"""Cluster benchmarks: rooms across ``fastws serve --redis`` processes, against the same on one process
and against python-socketio's ``AsyncRedisManager``, all in one run (ratios against peers of the
same run, medians over the rounds; loopback only; every loop bounded in count and time).

    .venv/bin/python -m benchmarks.cluster_bench [--rounds 5] [--members 1000] [--seconds 5] \\
        [--json out.json] [--profile DIR]

It starts its own ``redis-server`` (a free port, a temporary directory, ``appendonly yes``,
``appendfsync everysec``; FLUSHALL before every configuration) and stops it at the end.

1. **Fan-out, one room**, ``--members`` subscribers plus one publisher, 32-byte text messages
   (``benchmarks/cluster_fanclient.py`` in its own process: the approach of
   ``../shared/fanout/fanclient.py``; at most ``--window`` publishes in flight on the publisher's
   own copy, never more than max(100, 10 x window) ahead of the slowest subscriber), a
   ``--seconds`` window after 1 s of warm-up. Room: ``benchmarks.cluster_apps:app`` (``Fan``).
   By default the window is 100 and the client reads its counting subscribers in passes every
   50 ms (``--poll-ms``, see ``poll_loop`` in the client): on a 2-core host the load client shares
   the cores with the servers, and a client that reads every socket once per server write costs
   as much CPU per delivery as a server (it then sets the ceiling, and a second server process
   has no core to run on). Read in passes, the client takes about 0.2 cores, and the figure is
   what the servers do. ``--window 10 --poll-ms 0`` gives the per-readiness figures.
   Configurations, fresh processes each, order rotated every round:

   - ``single``: 1 process, no Redis (plain single-process rooms);
   - ``cluster1``: 1 process with ``--redis`` (cluster mode, every member local);
   - ``cluster2``: 2 processes with ``--redis``, members split in half; the publisher connects
     first, to A, so A owns the room;
   - ``sio2``: 2 python-socketio processes (aiohttp, uvloop) with ``AsyncRedisManager`` on the
     same Redis (``benchmarks/cluster_sio_server.py``), members split in half, publisher on A.

   Deliveries/s = frames received by all subscribers in the window / its length; CPU per delivery
   = utime+stime (``/proc/PID/stat``) of the server processes, summed, over the window / the
   deliveries (Redis separately). Nothing is pinned: the client, the servers and Redis share the
   machine's cores, as they would in a real deployment on one host.
2. **Round trip**: a member sends a message to a room and waits for its own broadcast; on A (the
   owner, same node) and on B (cross node), interleaved, ``--rtt-count`` each (after 100 of
   warm-up); rooms ``examples.chat:app`` (``ChatRoom``: stores, then broadcasts) and the ``Fan``
   room; and the same two sockets on one process without Redis for reference.
3. **Failover**: 2 nodes with ``--lease-ttl`` 1 and 3; a member on B sends a numbered message
   every 10 ms (room ``cluster_apps:app_node``, whose broadcasts carry the pid of the process that
   ran ``on_message``); ``kill -9`` of A (the owner); time from the kill to the first broadcast
   that B's member gets from the new owner (B). Fresh processes and a flushed Redis each run;
   ``--failover-runs`` runs per TTL; lost / duplicated messages counted over the whole run.

``--profile DIR``: one extra ``cluster2`` fan-out run (not in the table) with ``py-spy record``
(raw collapsed stacks, ``--native``) on both nodes; the top frames are printed and saved.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

PY = sys.executable
TICK = os.sysconf("SC_CLK_TCK")
PYSPY = shutil.which("py-spy", path=os.path.dirname(PY)) or "py-spy"


def log(*a: Any) -> None:
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def stop_proc(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Stop one process that this script started, by its pid."""
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(sig)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    except ProcessLookupError:
        pass


# ------------------------------------------------------------------ processes

class Redis:
    def __init__(self, tmp: str) -> None:
        self.port = free_port()
        self.dir = os.path.join(tmp, "redis")
        os.makedirs(self.dir)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = open(os.path.join(self.dir, "redis.log"), "w")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "everysec", "--daemonize", "no", "--dir", self.dir],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        import redis

        self.r = redis.Redis(host="127.0.0.1", port=self.port)
        t0 = time.monotonic()
        while True:
            try:
                self.r.ping()
                break
            except Exception:
                if time.monotonic() - t0 > 10 or self.proc.poll() is not None:
                    raise SystemExit(f"redis-server did not start: {open(self.log.name).read()[-2000:]}")
                time.sleep(0.05)
        self.version = self.r.info("server")["redis_version"]

    def flush(self) -> None:
        self.r.flushall()

    def stop(self) -> None:
        stop_proc(self.proc)
        self.log.close()


class Server:
    """``fastws serve TARGET`` (or the socket.io peer), read until it prints its URL."""

    def __init__(self, kind: str, target: str, tmp: str, redis_url: str | None = None,
                 lease_ttl: float | None = None) -> None:
        if kind == "fastws":
            cmd = [PY, "-m", "fastws", "--log-level", "warning", "serve", target, "--host", "127.0.0.1",
                   "--port", "0"]
            if redis_url:
                cmd += ["--redis", redis_url]
            if lease_ttl is not None:
                cmd += ["--lease-ttl", str(lease_ttl)]
        else:
            cmd = [PY, os.path.join(ROOT, "benchmarks", "cluster_sio_server.py"), "--port", "0", "--redis",
                   redis_url or ""]
        data_dir = tempfile.mkdtemp(prefix="data-", dir=tmp)
        self.errlog = os.path.join(data_dir, "stderr.log")
        self._err = open(self.errlog, "w")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=self._err, text=True,
                                     env=dict(os.environ, FASTWS_DATA_DIR=data_dir, PYTHONUNBUFFERED="1"))
        self.pid = self.proc.pid
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if " on ws://" not in line:
            self.proc.kill()
            raise SystemExit(f"server did not start: {cmd}\n{line}{open(self.errlog).read()[-3000:]}")
        self.port = int(line.split(" on ws://")[1].split()[0].rsplit(":", 1)[1])

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_proc(self.proc, sig)
        self._err.close()

    def log_problems(self) -> list[str]:
        try:
            text = open(self.errlog).read()
        except OSError:
            return []
        return [ln for ln in text.splitlines() if "Traceback" in ln or "ERROR" in ln or "Error" in ln][:10]


def busy_cores(seconds: float = 1.0) -> float:
    """Busy cores of the whole machine over ``seconds`` (from /proc/stat)."""
    def read() -> tuple[float, float]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return float(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]), time.monotonic()
    (b0, t0) = read()
    time.sleep(seconds)
    (b1, t1) = read()
    return (b1 - b0) / TICK / (t1 - t0)


class Quiet:
    """Before a measurement: wait (1 s samples) until the machine is nearly idle (other tenants
    below ``limit`` cores), at most ``per_wait`` s each time and ``budget`` s in all; the level
    seen is recorded."""

    def __init__(self, limit: float, per_wait: float, budget: float) -> None:
        self.limit, self.per_wait, self.budget = limit, per_wait, budget
        self.waited = 0.0

    def wait(self) -> float:
        t0 = time.monotonic()
        level = busy_cores(0.5)
        while level > self.limit and time.monotonic() - t0 < self.per_wait and self.waited < self.budget:
            level = busy_cores(1.0)
            self.waited += 1.0
        if level > self.limit:
            log(f"machine busy before a measurement: {level:.2f} cores used by other processes")
        return level


QUIET = Quiet(0.3, 20.0, 90.0)


# ------------------------------------------------------------------ 1. fan-out

FANOUT_CONFIGS = ("single", "cluster1", "cluster2", "sio2")


def run_fanout(config: str, a: argparse.Namespace, redis: Redis, tmp: str,
               profile_dir: str | None = None) -> dict[str, Any]:
    redis.flush()
    idle_before = QUIET.wait()
    half = a.members // 2
    servers: list[Server] = []
    prof: list[subprocess.Popen[Any]] = []
    try:
        if config == "single":
            servers = [Server("fastws", "benchmarks.cluster_apps:app", tmp)]
        elif config == "cluster1":
            servers = [Server("fastws", "benchmarks.cluster_apps:app", tmp, redis.url)]
        elif config == "cluster2":
            servers = [Server("fastws", "benchmarks.cluster_apps:app", tmp, redis.url) for _ in range(2)]
        elif config == "sio2":
            servers = [Server("sio", "", tmp, redis.url.rsplit("/", 1)[0] + "/1") for _ in range(2)]
        else:
            raise ValueError(config)
        ports = [s.port for s in servers]
        if len(servers) == 1:
            subs = f"{ports[0]}:{a.members}"
        else:
            subs = f"{ports[0]}:{half},{ports[1]}:{a.members - half}"
        cmd = [PY, "-m", "benchmarks.cluster_fanclient", "--pub", str(ports[0]), "--subs", subs,
               "--proto", "sio" if config.startswith("sio") else "fastws", "--size", str(a.size),
               "--window", str(a.window), "--duration", str(a.seconds), "--warmup", "1",
               "--server-pids", ",".join(str(s.pid) for s in servers), "--redis-pid", str(redis.pid),
               "--poll-ms", str(a.poll_ms)]
        if not config.startswith("sio"):
            cmd += ["--ready-url", f"http://127.0.0.1:{ports[0]}/bench"]
        else:
            cmd += ["--settle", "0.5"]
        client = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        if profile_dir:
            time.sleep(2.5)  # connected and warmed up by then
            for name, s in zip("AB", servers):
                out = os.path.join(profile_dir, f"{config}-{name}.txt")
                prof.append(subprocess.Popen([PYSPY, "record", "-d", str(min(5, int(a.seconds))), "-r", "100",
                                              "--native", "-f", "raw", "-o", out, "--pid", str(s.pid)],
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        try:
            out_text, _ = client.communicate(timeout=a.seconds + 90)
        except subprocess.TimeoutExpired:
            client.kill()
            out_text, _ = client.communicate()
        for p in prof:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        try:
            doc = json.loads(out_text.strip().splitlines()[-1])
        except (json.JSONDecodeError, IndexError):
            doc = {"ok": False, "error": f"client printed {out_text[-500:]!r}"}
        if not doc.get("ok"):
            return {"ok": False, "error": doc.get("error"), "log": [p for s in servers for p in s.log_problems()]}
        r = doc["result"]
        r["ok"] = r["errors"] == 0 and r["drained"]
        r["busy_before"] = idle_before
        r["server_log_problems"] = [p for s in servers for p in s.log_problems()]
        return r
    finally:
        for s in servers:
            s.stop()


def fanout_part(a: argparse.Namespace, redis: Redis, tmp: str) -> dict[str, Any]:
    configs = [c for c in FANOUT_CONFIGS if c in a.fanout_configs.split(",")]
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
    for rnd in range(a.rounds):
        order = configs[rnd % len(configs):] + configs[:rnd % len(configs)]
        for c in order:
            r = run_fanout(c, a, redis, tmp)
            runs[c].append(r)
            if r.get("ok"):
                log(f"fan-out round {rnd} {c:8s} {r['deliveries_per_s']:12,.0f} deliveries/s  server "
                    f"{r['server_us_per_delivery']:.3f} us/delivery ({r['server_cpu_cores']:.2f} cores)  redis "
                    f"{r['redis_us_per_delivery']:.4f} us/delivery  client {r['client_cpu_cores']:.2f} cores  "
                    f"frames/read {r['frames_per_read']:.1f}  p50 {r['lat_ms_p50']:.1f} ms  "
                    f"other tenants {r['other_cpu_cores']:.2f} cores")
            else:
                log(f"fan-out round {rnd} {c}: FAILED {r.get('error') or r.get('error_samples')} {r.get('log') or ''}")
    return {"runs": runs, "summary": fanout_summary(runs)}


def med(vals: list[float]) -> float | None:
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def fanout_summary(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    keys = ("deliveries_per_s", "server_us_per_delivery", "redis_us_per_delivery", "server_cpu_cores",
            "redis_cpu_cores", "client_cpu_cores", "client_us_per_delivery", "frames_per_read", "lat_ms_p50",
            "lat_ms_p99", "other_cpu_cores")
    rows = {}
    for c, rs in runs.items():
        ok = [r for r in rs if r.get("ok")]
        rows[c] = {k: med([r.get(k) for r in ok]) for k in keys}
        rows[c]["runs_ok"] = len(ok)
        rows[c]["runs"] = len(rs)
        rows[c]["server_plus_redis_us_per_delivery"] = med(
            [r["server_us_per_delivery"] + r["redis_us_per_delivery"] for r in ok])
    ratios: dict[str, Any] = {}

    def per_round(num: str, den: str, key: str, f: Any = None) -> float | None:
        vals = []
        for x, y in zip(runs.get(num, []), runs.get(den, [])):
            if x.get("ok") and y.get("ok"):
                xv, yv = (f(x), f(y)) if f else (x[key], y[key])
                if yv:
                    vals.append(xv / yv)
        return med(vals)

    both = lambda r: r["server_us_per_delivery"] + r["redis_us_per_delivery"]  # noqa: E731
    for num, den in (("cluster2", "single"), ("cluster2", "cluster1"), ("cluster1", "single"),
                     ("cluster2", "sio2")):
        if num in runs and den in runs:
            ratios[f"{num}/{den}"] = {
                "deliveries_per_s": per_round(num, den, "deliveries_per_s"),
                "server_us_per_delivery": per_round(num, den, "server_us_per_delivery"),
                "server_plus_redis_us_per_delivery": per_round(num, den, "", both),
            }
    return {"rows": rows, "ratios": ratios}


# ------------------------------------------------------------------ 2. round trip

async def _rtt_run(ports: tuple[int, int], room: str, chat: bool, count: int, warmup: int) -> dict[str, Any]:
    import fastws

    a = await fastws.connect(f"ws://127.0.0.1:{ports[0]}/{room}", compression=False, ping_interval=None)
    await asyncio.sleep(0.2)  # A is the owner (first request for the room)
    b = await fastws.connect(f"ws://127.0.0.1:{ports[1]}/{room}", compression=False, ping_interval=None)
    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 10:
        body = await loop.run_in_executor(
            None, lambda: urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/{room}", timeout=5).read())
        if json.loads(body)["sessions"] == 2:
            break
        await asyncio.sleep(0.05)
    seq = [0]

    async def rt(ws: Any) -> float:
        seq[0] += 1
        token = f"rt{seq[0]:09d}"
        msg = json.dumps({"content": token}) if chat else token
        t = time.perf_counter()
        await ws.send(msg)
        deadline = t + 5.0
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError(f"no broadcast of {token} within 5 s")
            got = await asyncio.wait_for(ws.recv(), left)
            if token in got:
                return (time.perf_counter() - t) * 1e3

    try:
        for _ in range(warmup):
            await rt(a)
            await rt(b)
        la: list[float] = []
        lb: list[float] = []
        t_end = time.monotonic() + 120
        for _ in range(count):
            la.append(await rt(a))
            lb.append(await rt(b))
            if time.monotonic() > t_end:
                break
    finally:
        a.abort()
        b.abort()
    return {"a": la, "b": lb}


def pctl(vals: list[float], q: float) -> float | None:
    if not vals:
        return None
    s = sorted(vals)
    return s[min(len(s) - 1, int(q * len(s)))]


async def _redis_floor(url: str, n: int) -> dict[str, Any]:
    """What one redis-py asyncio round trip costs here: PING, and a pipeline of one EVALSHA."""
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(url)
    sha = await r.script_load("return 1")
    out = {}
    try:
        for name in ("ping", "pipeline_evalsha"):
            lat = []
            for i in range(n + 100):
                t = time.perf_counter()
                if name == "ping":
                    await r.ping()
                else:
                    pipe = r.pipeline(transaction=False)
                    pipe.evalsha(sha, 0)
                    await pipe.execute()
                if i >= 100:
                    lat.append((time.perf_counter() - t) * 1e3)
            out[name] = {"n": n, "p50_ms": pctl(lat, 0.5), "p99_ms": pctl(lat, 0.99)}
    finally:
        await r.aclose()
    return out


def rtt_part(a: argparse.Namespace, redis: Redis, tmp: str) -> dict[str, Any]:
    import uvloop

    out: dict[str, Any] = {}
    QUIET.wait()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        floor = runner.run(_redis_floor(redis.url, a.rtt_count))
    out["redis-py/floor"] = floor
    log("redis-py asyncio round trip: " + "  ".join(f"{k} p50 {v['p50_ms']:.3f} ms p99 {v['p99_ms']:.3f} ms"
                                                    for k, v in floor.items()))
    for app_name, target, chat in (("chat", "examples.chat:app", True), ("fan", "benchmarks.cluster_apps:app", False)):
        for mode in ("cluster", "single"):
            redis.flush()
            QUIET.wait()
            if mode == "cluster":
                servers = [Server("fastws", target, tmp, redis.url) for _ in range(2)]
                ports = (servers[0].port, servers[1].port)
            else:
                servers = [Server("fastws", target, tmp)]
                ports = (servers[0].port, servers[0].port)
            try:
                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                    r = runner.run(_rtt_run(ports, f"rtt-{app_name}", chat, a.rtt_count, 100))
            except Exception as exc:  # noqa: BLE001 - reported
                r = {"error": repr(exc)}
                log(f"round trip {app_name} {mode}: FAILED {exc!r} {[p for s in servers for p in s.log_problems()]}")
            finally:
                for s in servers:
                    s.stop()
            if "error" in r:
                out[f"{app_name}/{mode}"] = r
                continue
            row = {}
            for side, lat in (("same_node", r["a"]), ("cross_node" if mode == "cluster" else "same_node_2", r["b"])):
                row[side] = {"n": len(lat), "p50_ms": pctl(lat, 0.5), "p99_ms": pctl(lat, 0.99),
                             "max_ms": max(lat) if lat else None}
            out[f"{app_name}/{mode}"] = row
            log(f"round trip {app_name:4s} {mode:7s} " + "  ".join(
                f"{k}: p50 {v['p50_ms']:.3f} ms p99 {v['p99_ms']:.3f} ms (n={v['n']})" for k, v in row.items()))
    return out


# ------------------------------------------------------------------ 3. failover

async def _failover_run(ports: tuple[int, int], a_srv: Server, b_pid: int, ttl: float) -> dict[str, Any]:
    import fastws

    room = "failover"
    holder = await fastws.connect(f"ws://127.0.0.1:{ports[0]}/{room}", compression=False, ping_interval=None)
    await asyncio.sleep(0.2)
    member = await fastws.connect(f"ws://127.0.0.1:{ports[1]}/{room}", compression=False, ping_interval=None)
    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 10:
        body = await loop.run_in_executor(
            None, lambda: urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/{room}", timeout=5).read())
        if json.loads(body)["sessions"] == 2:
            break
        await asyncio.sleep(0.05)
    a_tag, b_tag = f" @{a_srv.pid}", f" @{b_pid}"
    state: dict[str, Any] = {"stop": False, "sent": 0, "t_kill": None, "t_first_b": None, "closed": None,
                             "first_b_seq": None}
    received: collections.Counter[int] = collections.Counter()
    from_a_after_kill = [0]
    before_kill: collections.Counter[str] = collections.Counter()
    sent_at_kill = [0]

    async def sender() -> None:
        nxt = time.perf_counter()
        while not state["stop"]:
            state["sent"] += 1
            try:
                await member.send(f"s{state['sent']}")
            except Exception as exc:  # noqa: BLE001 - the member's socket was closed
                state["closed"] = f"send: {exc!r}"
                return
            nxt += 0.010
            await asyncio.sleep(max(0.0, nxt - time.perf_counter()))

    async def reader() -> None:
        while not state["stop"]:
            try:
                msg = await asyncio.wait_for(member.recv(), 0.5)
            except asyncio.TimeoutError:
                continue
            except Exception as exc:  # noqa: BLE001 - the member's socket was closed
                state["closed"] = f"recv: {exc!r}"
                return
            now = time.perf_counter()
            text, _, tag = msg.partition(" @")
            received[int(text[1:])] += 1
            if state["t_kill"] is None:
                before_kill[tag] += 1
            else:
                if msg.endswith(b_tag) and state["t_first_b"] is None:
                    state["t_first_b"] = now
                    state["first_b_seq"] = int(text[1:])
                elif msg.endswith(a_tag):
                    from_a_after_kill[0] += 1

    tasks = [asyncio.ensure_future(sender()), asyncio.ensure_future(reader())]
    try:
        await asyncio.sleep(0.5)
        steady = sum(received.values())
        sent_at_kill[0] = state["sent"]
        state["t_kill"] = time.perf_counter()
        os.kill(a_srv.pid, signal.SIGKILL)
        deadline = time.perf_counter() + 3 * ttl + 8
        while state["t_first_b"] is None and time.perf_counter() < deadline and state["closed"] is None:
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.3)  # a few more after the takeover
        state["stop"] = True
        sent = state["sent"]
        t_drain = time.perf_counter()
        while time.perf_counter() - t_drain < 3 and len(received) < sent and state["closed"] is None:
            await asyncio.sleep(0.02)
    finally:
        state["stop"] = True
        await asyncio.gather(*tasks, return_exceptions=True)
        holder.abort()
        member.abort()
    sent = state["sent"]
    lost = [s for s in range(1, sent + 1) if received[s] == 0]
    dups = sum(c - 1 for c in received.values() if c > 1)
    return {"failover_s": (state["t_first_b"] - state["t_kill"]) if state["t_first_b"] else None,
            "received_before_kill": steady, "sent": sent, "sent_at_kill": sent_at_kill[0],
            "lost": len(lost), "lost_sample": lost[:10], "duplicates": dups,
            "from_old_owner_after_kill": from_a_after_kill[0], "member_closed": state["closed"],
            "first_new_owner_seq": state["first_b_seq"],
            "owner_before_kill": {("A" if f" @{t}" == a_tag else "B" if f" @{t}" == b_tag else t): n
                                  for t, n in before_kill.items()}}


def failover_part(a: argparse.Namespace, redis: Redis, tmp: str) -> dict[str, Any]:
    import uvloop

    out: dict[str, Any] = {}
    for ttl in a.failover_ttls:
        runs = []
        for i in range(a.failover_runs):
            redis.flush()
            servers = [Server("fastws", "benchmarks.cluster_apps:app_node", tmp, redis.url, lease_ttl=ttl)
                       for _ in range(2)]
            try:
                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                    r = runner.run(asyncio.wait_for(
                        _failover_run((servers[0].port, servers[1].port), servers[0], servers[1].pid, ttl),
                        4 * ttl + 30))
            except Exception as exc:  # noqa: BLE001 - reported
                r = {"failover_s": None, "error": repr(exc)}
            finally:
                servers[0].proc.wait(5) if servers[0].proc.poll() is not None else None
                r["b_log_problems"] = servers[1].log_problems()
                for s in servers:
                    s.stop()
            runs.append(r)
            log(f"failover ttl {ttl} run {i}: {r.get('failover_s') if r.get('failover_s') is None else round(r['failover_s'], 3)} s"
                f"  sent {r.get('sent')} lost {r.get('lost')} dup {r.get('duplicates')}"
                f"  broadcasts before the kill by {r.get('owner_before_kill')}"
                f"{'  member closed: ' + str(r['member_closed']) if r.get('member_closed') else ''}"
                f"{'  ERROR ' + r['error'] if r.get('error') else ''}")
        vals = [r["failover_s"] for r in runs if r.get("failover_s") is not None]
        out[str(ttl)] = {"runs": runs, "median_s": med(vals), "min_s": min(vals) if vals else None,
                         "max_s": max(vals) if vals else None, "completed": len(vals),
                         "lost_total": sum(r.get("lost") or 0 for r in runs),
                         "duplicates_total": sum(r.get("duplicates") or 0 for r in runs)}
    return out


# ------------------------------------------------------------------ profile

def summarize_profile(path: str, top: int = 25) -> dict[str, Any]:
    """py-spy raw output (collapsed stacks ``a;b;c N``) -> top frames by self and by total samples."""
    self_c: collections.Counter[str] = collections.Counter()
    total_c: collections.Counter[str] = collections.Counter()
    n = 0
    try:
        lines = open(path).read().splitlines()
    except OSError:
        return {"error": f"no profile at {path}"}
    for ln in lines:
        stack, _, cnt = ln.rpartition(" ")
        if not stack or not cnt.isdigit():
            continue
        c = int(cnt)
        frames = stack.split(";")
        n += c
        self_c[_short(frames[-1])] += c
        for f in {_short(f) for f in frames}:
            total_c[f] += c
    return {"samples": n, "self": [(f, c, round(100 * c / n, 1)) for f, c in self_c.most_common(top)] if n else [],
            "total": [(f, c, round(100 * c / n, 1)) for f, c in total_c.most_common(top)] if n else []}


def _short(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit("/", 1)[-1].split(":")[0]
    return f"{name} ({where})" if where else name


# ------------------------------------------------------------------ output

def fmt(v: Any, spec: str = ",.0f") -> str:
    return "-" if v is None else format(v, spec)


def print_tables(res: dict[str, Any]) -> None:
    fo = res.get("fanout")
    if fo:
        rows, ratios = fo["summary"]["rows"], fo["summary"]["ratios"]
        print(f"\nFan-out, one room, {res['args']['members']} subscribers + 1 publisher, {res['args']['size']} B text, "
              f"window {res['args']['window']}, client reads "
              f"{'in passes every %g ms' % res['args']['poll_ms'] if res['args'].get('poll_ms') else 'per readiness'} (medians of {res['args']['rounds']} rounds x {res['args']['seconds']} s)\n")
        print("| configuration | deliveries/s | server µs/delivery | Redis µs/delivery | server cores | Redis cores "
              "| client cores | other tenants' cores | frames/read | p50 / p99 ms to last subscriber | runs ok |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        names = {"single": "1 process, no Redis", "cluster1": "1 process, --redis", "cluster2": "2 processes, --redis (500/500)",
                 "sio2": "python-socketio AsyncRedisManager, 2 processes (500/500)"}
        for c, r in rows.items():
            print(f"| {names[c]} | {fmt(r['deliveries_per_s'])} | {fmt(r['server_us_per_delivery'], '.3f')} | "
                  f"{fmt(r['redis_us_per_delivery'], '.4f')} | {fmt(r['server_cpu_cores'], '.2f')} | "
                  f"{fmt(r['redis_cpu_cores'], '.3f')} | {fmt(r['client_cpu_cores'], '.2f')} | "
                  f"{fmt(r['other_cpu_cores'], '.2f')} | "
                  f"{fmt(r['frames_per_read'], '.1f')} | {fmt(r['lat_ms_p50'], '.1f')} / {fmt(r['lat_ms_p99'], '.1f')} | "
                  f"{r['runs_ok']}/{r['runs']} |")
        print("\nRatios (median of the per-round ratios):\n")
        print("| ratio | deliveries/s | server CPU per delivery | server + Redis CPU per delivery |")
        print("|---|---|---|---|")
        for k, v in ratios.items():
            print(f"| {k} | {fmt(v['deliveries_per_s'], '.2f')} | {fmt(v['server_us_per_delivery'], '.2f')} | "
                  f"{fmt(v['server_plus_redis_us_per_delivery'], '.2f')} |")
    rt = res.get("rtt")
    if rt:
        print(f"\nRound trip (send, wait for the own broadcast), {res['args']['rtt_count']} each, interleaved\n")
        print("| room | setup | member on | p50 ms | p99 ms | max ms |")
        print("|---|---|---|---|---|---|")
        for key, row in rt.items():
            app_name, mode = key.split("/")
            if app_name == "redis-py":
                continue
            if "error" in row:
                print(f"| {app_name} | {mode} | FAILED: {row['error']} | | | |")
                continue
            for side, v in row.items():
                label = {"same_node": "A (owner, same node)" if mode == "cluster" else "the one process",
                         "cross_node": "B (cross node)", "same_node_2": "the one process (2nd socket)"}[side]
                print(f"| {app_name} | {'2 nodes, --redis' if mode == 'cluster' else '1 process, no Redis'} | {label} | "
                      f"{fmt(v['p50_ms'], '.3f')} | {fmt(v['p99_ms'], '.3f')} | {fmt(v['max_ms'], '.2f')} |")
        if "redis-py/floor" in rt:
            f = rt["redis-py/floor"]
            print(f"\nFor reference, one redis-py asyncio round trip to the same Redis: PING p50 "
                  f"{f['ping']['p50_ms']:.3f} ms (p99 {f['ping']['p99_ms']:.3f}), a pipeline of one EVALSHA "
                  f"p50 {f['pipeline_evalsha']['p50_ms']:.3f} ms (p99 {f['pipeline_evalsha']['p99_ms']:.3f})")
    fl = res.get("failover")
    if fl:
        print("\nFailover after kill -9 of the owner (time to the first broadcast from the new owner)\n")
        print("| lease TTL | median s | min s | max s | completed | messages lost | duplicated |")
        print("|---|---|---|---|---|---|---|")
        for ttl, v in fl.items():
            print(f"| {ttl} s | {fmt(v['median_s'], '.3f')} | {fmt(v['min_s'], '.3f')} | {fmt(v['max_s'], '.3f')} | "
                  f"{v['completed']}/{len(v['runs'])} | {v['lost_total']} | {v['duplicates_total']} |")
    pr = res.get("profile")
    if pr:
        for name, p in pr.items():
            if "error" in p:
                print(f"\nprofile {name}: {p['error']}")
                continue
            print(f"\npy-spy, {name}: {p['samples']} samples; top frames by own samples:")
            for f, c, pc in p["self"][:15]:
                print(f"  {pc:5.1f}%  {f}")
            print("  by total (inclusive) samples:")
            for f, c, pc in p["total"][:20]:
                print(f"  {pc:5.1f}%  {f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--members", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--window", type=int, default=100)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--poll-ms", type=float, default=50,
                   help="the load client reads its counting subscribers in passes every N ms (0: per readiness)")
    p.add_argument("--fanout-configs", default=",".join(FANOUT_CONFIGS))
    p.add_argument("--rtt-count", type=int, default=2000)
    p.add_argument("--failover-runs", type=int, default=10)
    p.add_argument("--failover-ttls", default="1,3")
    p.add_argument("--parts", default="fanout,rtt,failover", help="any of fanout,rtt,failover")
    p.add_argument("--profile", default="", metavar="DIR", help="also profile one cluster2 run with py-spy")
    p.add_argument("--json", default="", metavar="PATH")
    a = p.parse_args()
    a.failover_ttls = [float(x) for x in a.failover_ttls.split(",") if x]
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(65536, hard), hard))
    if not shutil.which("redis-server"):
        raise SystemExit("redis-server not found (apt-get install redis-server)")
    parts = a.parts.split(",")
    tmp = tempfile.mkdtemp(prefix="fastws-cluster-bench-")
    t_start = time.time()
    res: dict[str, Any] = {"args": {k: v for k, v in vars(a).items()},
                           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                       "platform": platform.platform()}}
    redis = Redis(tmp)
    res["machine"]["redis"] = redis.version
    try:
        import socketio  # noqa: F401

        res["machine"]["python_socketio"] = __import__("importlib.metadata").metadata.version("python-socketio")
    except ImportError:
        pass
    log(f"redis-server {redis.version} on port {redis.port} (pid {redis.pid}); {os.cpu_count()} cpus")
    try:
        if "fanout" in parts:
            res["fanout"] = fanout_part(a, redis, tmp)
        if a.profile:
            os.makedirs(a.profile, exist_ok=True)
            log("profiling one cluster2 fan-out run with py-spy")
            r = run_fanout("cluster2", a, redis, tmp, profile_dir=a.profile)
            res["profile_run"] = {k: r.get(k) for k in ("deliveries_per_s", "server_us_per_delivery", "ok")}
            res["profile"] = {f"cluster2 node {n} ({'owner' if n == 'A' else 'member node'})":
                              summarize_profile(os.path.join(a.profile, f"cluster2-{n}.txt")) for n in "AB"}
        if "rtt" in parts:
            res["rtt"] = rtt_part(a, redis, tmp)
        if "failover" in parts:
            res["failover"] = failover_part(a, redis, tmp)
    finally:
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    res["wall_s"] = time.time() - t_start
    print_tables(res)
    print(f"\nwall time {res['wall_s']:.0f} s")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
