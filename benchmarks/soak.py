"""Soak: echo, chat and connection churn against the examples as shipped, for a set time, with the
servers' RSS, open file descriptors and open SQLite connections sampled all along.

    .venv/bin/python -m benchmarks.soak [--minutes 10] [--sample 5] [--json soak.json] [--svg soak.svg]

Two server processes, started here on 127.0.0.1 (free ports), fresh data directory:

- ``fastws serve examples.echo:app``: ``--echo`` connections (default 50), each sends a 256-byte
  message and waits for it back, ``--echo-rate`` times a second;
- ``fastws serve examples.chat:app --new-rooms-per-ip off`` (all the load comes from one address):
  ``--chat-rooms`` rooms (20) of ``--chat-members`` members (5), each member sends
  ``{"content": ...}`` every ``--chat-interval`` s (0.5) and reads everything its room sends
  (history on join, joins, leaves, messages; every message is stored in SQLite first);
- churn, every ``--churn-every`` s (2): a burst of ``--churn`` connections (100) to random rooms
  among ``--churn-rooms`` (200) of the current generation (a new set of rooms every
  ``--churn-generation`` s, 60: so rooms are created, filled, emptied, dropped from memory and their
  databases closed all the time, while the example's own state per room, its last 50 messages,
  stays small), half of them send one chat message, all close (half cleanly, half by dropping the
  TCP connection), plus as many short-lived echo connections.

Every ``--sample`` s: each server's VmRSS (``/proc/PID/status``), its open fds and, for the chat
server, the fds open on ``*.sqlite3`` files (SQLite connections: one per open room database), and
the client's counts (messages, errors). Flat after warm-up is the claim: the report gives, over
the part after ``--warmup`` (default the first 20%), the least-squares slope (KiB per minute) and
the min/max of each series. ``--svg`` draws the three series over time (no plotting library).

Everything is bounded: the run stops at ``--minutes`` (and a hard deadline a minute later),
loads are paced, every wait has a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import orjson  # noqa: E402

import fastws  # noqa: E402

PY = sys.executable
T = 10.0


def log(*a: Any) -> None:
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proc:
    def __init__(self, target: str, data_dir: str, *extra: str) -> None:
        self.port = free_port()
        self.errlog = open(os.path.join(data_dir, f"{target.replace(':', '_')}.log"), "w")
        self.proc = subprocess.Popen(
            [PY, "-m", "fastws", "--log-level", "warning", "serve", target, "--host", "127.0.0.1", "--port",
             str(self.port), "--data-dir", data_dir, *extra],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=self.errlog, text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"))
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        if " on ws://" not in line:
            self.proc.kill()
            raise SystemExit(f"{target} did not start: {line!r}")
        self.pid = self.proc.pid
        self.url = f"ws://127.0.0.1:{self.port}"

    def rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def fds(self) -> tuple[int, int]:
        """(open fds, fds on a .sqlite3 file)"""
        n = sq = 0
        d = f"/proc/{self.pid}/fd"
        for fd in os.listdir(d):
            n += 1
            try:
                if os.readlink(os.path.join(d, fd)).endswith(".sqlite3"):
                    sq += 1
            except OSError:
                pass
        return n, sq

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.errlog.close()

    def problems(self) -> list[str]:
        try:
            text = open(self.errlog.name).read()
        except OSError:
            return []
        return [ln for ln in text.splitlines() if "Traceback" in ln or "ERROR" in ln][:10]


class Load:
    def __init__(self, a: argparse.Namespace, echo: Proc, chat: Proc) -> None:
        self.a, self.echo, self.chat = a, echo, chat
        self.stop = asyncio.Event()
        self.t0 = time.monotonic()
        self.counts = {"echo_msgs": 0, "chat_sent": 0, "chat_recv": 0, "churn_conns": 0, "errors": 0}
        self.error_samples: list[str] = []

    def error(self, where: str, exc: BaseException) -> None:
        self.counts["errors"] += 1
        if len(self.error_samples) < 10:
            self.error_samples.append(f"{where}: {exc!r}"[:300])

    async def pause(self, s: float) -> None:
        try:
            await asyncio.wait_for(self.stop.wait(), s)
        except asyncio.TimeoutError:
            pass

    async def echo_conn(self) -> None:
        payload = os.urandom(128).hex()
        period = 1.0 / self.a.echo_rate
        while not self.stop.is_set():
            try:
                async with fastws.connect(self.echo.url + "/", compression=None) as ws:
                    while not self.stop.is_set():
                        await ws.send(payload)
                        if await asyncio.wait_for(ws.recv(), T) != payload:
                            raise AssertionError("echo mismatch")
                        self.counts["echo_msgs"] += 1
                        await self.pause(period)
            except Exception as exc:  # noqa: BLE001 - counted; the soak goes on
                self.error("echo", exc)
                await self.pause(1.0)

    async def chat_member(self, room: str, i: int) -> None:
        while not self.stop.is_set():
            try:
                async with fastws.connect(f"{self.chat.url}/{room}", compression=None) as ws:
                    reader = asyncio.ensure_future(self._drain(ws))
                    try:
                        n = 0
                        while not self.stop.is_set():
                            n += 1
                            await ws.send(orjson.dumps({"content": f"{room}/{i}/{n}"}).decode())
                            self.counts["chat_sent"] += 1
                            await self.pause(self.a.chat_interval * random.uniform(0.8, 1.2))
                            if reader.done():
                                reader.result()
                                break
                    finally:
                        reader.cancel()
            except Exception as exc:  # noqa: BLE001
                self.error("chat", exc)
                await self.pause(1.0)

    async def _drain(self, ws: Any) -> None:
        async for _ in ws:
            self.counts["chat_recv"] += 1

    async def churn_one(self) -> None:
        gen = int((time.monotonic() - self.t0) // self.a.churn_generation)
        room = f"churn{gen}-{random.randrange(self.a.churn_rooms)}"
        try:
            ws = await asyncio.wait_for(fastws.connect(f"{self.chat.url}/{room}", compression=None), T)
            self.counts["churn_conns"] += 1
            if random.random() < 0.5:
                await ws.send(orjson.dumps({"content": "hello"}).decode())
            if random.random() < 0.5:
                await asyncio.wait_for(ws.close(), T)
            else:
                ws.transport.abort()
            ws2 = await asyncio.wait_for(fastws.connect(self.echo.url + "/", compression=None), T)
            self.counts["churn_conns"] += 1
            await ws2.send("x")
            await asyncio.wait_for(ws2.recv(), T)
            await asyncio.wait_for(ws2.close(), T)
        except Exception as exc:  # noqa: BLE001
            self.error("churn", exc)

    async def churn(self) -> None:
        while not self.stop.is_set():
            await asyncio.gather(*(self.churn_one() for _ in range(self.a.churn)))
            await self.pause(self.a.churn_every)

    async def run(self, samples: list[dict[str, Any]]) -> None:
        tasks = [asyncio.ensure_future(self.echo_conn()) for _ in range(self.a.echo)]
        tasks += [asyncio.ensure_future(self.chat_member(f"room{r}", i))
                  for r in range(self.a.chat_rooms) for i in range(self.a.chat_members)]
        tasks.append(asyncio.ensure_future(self.churn()))
        t0 = time.monotonic()
        end = t0 + self.a.minutes * 60
        try:
            while time.monotonic() < end:
                await asyncio.sleep(min(self.a.sample, max(0.0, end - time.monotonic())))
                s = self.sample(time.monotonic() - t0)
                samples.append(s)
                if len(samples) % max(1, int(60 / self.a.sample)) == 0:
                    log(f"t={s['t']:.0f}s echo RSS {s['echo_rss_kib']} KiB fds {s['echo_fds']}  chat RSS "
                        f"{s['chat_rss_kib']} KiB fds {s['chat_fds']} sqlite {s['chat_sqlite']}  {self.counts}")
        finally:
            self.stop.set()
            await asyncio.wait(tasks, timeout=30)
            for t in tasks:
                t.cancel()

    def sample(self, t: float) -> dict[str, Any]:
        efd, _ = self.echo.fds()
        cfd, csq = self.chat.fds()
        return {"t": t, "echo_rss_kib": self.echo.rss_kib(), "echo_fds": efd, "chat_rss_kib": self.chat.rss_kib(),
                "chat_fds": cfd, "chat_sqlite": csq, **self.counts}


def slope_per_min(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    return 60.0 * sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else 0.0


def report(samples: list[dict[str, Any]], warmup: float) -> dict[str, Any]:
    t_end = samples[-1]["t"]
    after = [s for s in samples if s["t"] >= warmup * t_end]
    out: dict[str, Any] = {}
    for key in ("echo_rss_kib", "chat_rss_kib", "echo_fds", "chat_fds", "chat_sqlite"):
        xs, ys = [s["t"] for s in after], [float(s[key]) for s in after]
        out[key] = {"first": samples[0][key], "after_warmup_min": min(ys), "after_warmup_max": max(ys),
                    "last": samples[-1][key], "slope_per_min": slope_per_min(xs, ys)}
    return out


def svg(samples: list[dict[str, Any]], path: str, warmup: float) -> None:
    """Three panels: RSS (KiB) of both servers, open fds of both, SQLite connections."""
    w, h, pad, gap = 900, 200, 60, 40
    panels = [("RSS (MiB)", [("echo server", "echo_rss_kib", "#1f77b4", 1 / 1024),
                             ("chat server", "chat_rss_kib", "#d62728", 1 / 1024)]),
              ("open file descriptors", [("echo server", "echo_fds", "#1f77b4", 1),
                                         ("chat server", "chat_fds", "#d62728", 1)]),
              ("SQLite connections (chat server)", [("chat server", "chat_sqlite", "#2ca02c", 1)])]
    total_h = len(panels) * (h + gap) + gap
    t_end = max(s["t"] for s in samples) or 1.0
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w + 2 * pad}" height="{total_h}" '
             f'font-family="sans-serif" font-size="12"><rect width="100%" height="100%" fill="white"/>']
    for i, (title, series) in enumerate(panels):
        y0 = gap + i * (h + gap)
        vals = [s[k] * f for _, k, _, f in series for s in samples]
        top = max(vals) * 1.1 or 1.0
        parts.append(f'<text x="{pad}" y="{y0 - 8}" font-weight="bold">{title}</text>')
        parts.append(f'<rect x="{pad}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#999"/>')
        wx = pad + w * warmup
        parts.append(f'<line x1="{wx:.1f}" y1="{y0}" x2="{wx:.1f}" y2="{y0 + h}" stroke="#bbb" stroke-dasharray="4"/>')
        for frac in (0, 0.5, 1.0):
            yy = y0 + h - h * frac / 1.1 * 1.1
            parts.append(f'<text x="{pad - 6}" y="{yy + 4:.1f}" text-anchor="end">{top * frac:.0f}</text>')
        for j, (label, key, color, f) in enumerate(series):
            pts = " ".join(f"{pad + w * s['t'] / t_end:.1f},{y0 + h - h * s[key] * f / top:.1f}" for s in samples)
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{pts}"/>')
            parts.append(f'<text x="{pad + w - 150}" y="{y0 + 18 + 18 * j}" fill="{color}">{label}</text>')
        parts.append(f'<text x="{pad + w}" y="{y0 + h + 14}" text-anchor="end">{t_end / 60:.1f} min</text>')
        parts.append(f'<text x="{pad}" y="{y0 + h + 14}">0</text>')
    parts.append("</svg>")
    with open(path, "w") as fh:
        fh.write("\n".join(parts))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--sample", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=0.2, help="fraction of the run left out of the flatness figures")
    p.add_argument("--echo", type=int, default=50)
    p.add_argument("--echo-rate", type=float, default=20.0)
    p.add_argument("--chat-rooms", type=int, default=20)
    p.add_argument("--chat-members", type=int, default=5)
    p.add_argument("--chat-interval", type=float, default=0.5)
    p.add_argument("--churn", type=int, default=100)
    p.add_argument("--churn-every", type=float, default=2.0)
    p.add_argument("--churn-rooms", type=int, default=200)
    p.add_argument("--churn-generation", type=float, default=60.0)
    p.add_argument("--json", default="")
    p.add_argument("--svg", default="")
    a = p.parse_args()
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(65536, hard), hard))
    tmp = tempfile.mkdtemp(prefix="fastws-soak-")
    echo = Proc("examples.echo:app", tmp)
    chat = Proc("examples.chat:app", tmp, "--new-rooms-per-ip", "off")
    samples: list[dict[str, Any]] = []
    load = Load(a, echo, chat)
    log(f"soak for {a.minutes} min: echo pid {echo.pid}, chat pid {chat.pid}, data in {tmp}")
    try:
        import uvloop

        uvloop.run(asyncio.wait_for(load.run(samples), a.minutes * 60 + 60))
    finally:
        problems = echo.problems() + chat.problems()
        echo.stop()
        chat.stop()
    rep = report(samples, a.warmup)
    disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(tmp) for f in fs)
    out = {"args": vars(a), "samples": samples, "report": rep, "counts": load.counts,
           "error_samples": load.error_samples, "server_log_problems": problems, "data_dir_bytes": disk}
    print(f"\nSoak {a.minutes} min; after the first {a.warmup:.0%}:\n")
    print("| series | at start | min after warm-up | max after warm-up | at end | slope per minute |")
    print("|---|---|---|---|---|---|")
    for k, v in rep.items():
        print(f"| {k} | {v['first']} | {v['after_warmup_min']:.0f} | {v['after_warmup_max']:.0f} | {v['last']} | "
              f"{v['slope_per_min']:+.1f} |")
    print(f"\ncounts {load.counts}; data dir {disk / 1e6:.1f} MB; client errors {load.error_samples[:3]}; "
          f"server log problems {problems[:3]}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(out, fh)
    if a.svg and samples:
        svg(samples, a.svg, a.warmup)
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
