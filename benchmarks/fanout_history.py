"""Fan-out with and without ``Room.history``, same room code, same run.

Two ``fastws serve`` processes (pinned to CPU 0; this load client runs on CPU 1): one serves
:class:`Plain` (every text message is broadcast to the whole room), the other :class:`Logged`,
the same room with ``history = 10_000``, so each broadcast gets its offset, its envelope
(``{"epoch":...,"offset":n,"data":...}``) and its log entry, durable before
it leaves (the room's SQLite file, ``synchronous = FULL`` as by default; ``--synchronous
NORMAL`` for the WAL without an fsync per commit). One publisher and ``--subs`` subscribers
in one room per server; closed loop with ``--window`` publishes in flight ahead of the
deliveries, or ``--rate`` publishes/s; rounds alternate between the two servers (order swapped every round) and the
report gives the medians and the ratios of the per-round figures::

    python -m benchmarks.fanout_history --subs 1000 --pubs 2000 --rounds 5

A third row, ``plain+pad``, is the plain room with each message as long as the history
room's envelope, which tells the cost of the envelope's bytes from the cost of the log.

Figures: deliveries/s (as the load client saw them) and the server's CPU time per delivery
(/proc, user + system). Every subscriber checks what it got: the plain one the count, the
first logged one also that its offsets follow on with no gap. Loopback only, every loop
bounded by ``--pubs`` and ``--timeout``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from typing import Any

import orjson

import fastws
from fastws.rooms import Room, RoomRouter

_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(65536, _hard), _hard))

SERVER_OPTIONS = {"compression": False, "ping_interval": None, "max_size": 16 << 20,
                  "max_write_buffer": 64 << 20, "write_limit": 1 << 20, "backlog": 4096}


class Plain(Room):
    max_buffered = 64 << 20

    def on_message(self, ws: Any, message: str | bytes) -> None:
        self.broadcast(message)


class Logged(Plain):
    history = 10_000
    synchronous = os.environ.get("FASTWS_BENCH_SYNCHRONOUS", "FULL")


def _router(cls: type[Room]) -> RoomRouter:
    r = RoomRouter(cls, data_dir=tempfile.mkdtemp(prefix="fastws-fanout-history-"), room_name=lambda request: "bench")
    r.server_options = dict(SERVER_OPTIONS)
    return r


plain_app = _router(Plain)
history_app = _router(Logged)


class _Sub(fastws.Listener):
    __slots__ = ("run", "n", "offset", "check")

    def __init__(self, run: _Run, check: bool) -> None:
        self.run = run
        self.n = 0
        self.offset = 0
        self.check = check

    def on_message(self, ws: Any, msg: Any) -> None:
        self.n += 1
        run = self.run
        run.delivered += 1
        if self.check:
            env = orjson.loads(msg.bytes())
            if self.offset and env["offset"] != self.offset + 1:
                run.errors.append(f"offset {env['offset']} after {self.offset}")
            self.offset = env["offset"]
        if run.delivered >= run.want and not run.done.done():
            run.done.set_result(None)


class _Run:
    def __init__(self) -> None:
        self.delivered = 0
        self.want = 0
        self.errors: list[str] = []
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class Target:
    """One server, its publisher and subscribers (connected once, used every round)."""

    def __init__(self, name: str, app: str, logged: bool, pad: int = 0) -> None:
        from benchmarks._serverproc import ServerProcess

        self.name = name
        self.logged = logged
        self.pad = pad  # extra payload bytes (the "plain, envelope-sized" row)
        self.server = ServerProcess(app, "--no-metrics", "--no-compression")
        self.subs: list[_Sub] = []
        self.conns: list[Any] = []
        self.pub: Any = None
        self.run = _Run()

    async def connect(self, n: int) -> None:
        url = self.server.url + "/bench"
        for i in range(n):
            sub = _Sub(self.run, self.logged and i == 0)
            self.conns.append(await fastws.connect(url, compression=False, ping_interval=None, listener=sub,
                                                   max_size=1 << 20))
            self.subs.append(sub)
        self.pub = await fastws.connect(url, compression=False, ping_interval=None, max_queue=1 << 16)
        self.conns.append(self.pub)

    async def round(self, pubs: int, window: int, payload: str, timeout: float, rate: float = 0.0) -> dict[str, float]:
        from benchmarks._serverproc import cpu_seconds

        run = self.run
        nsubs = len(self.subs)
        run.want = run.delivered + pubs * nsubs
        run.done = asyncio.get_running_loop().create_future()
        start = run.delivered
        cpu0 = cpu_seconds(self.server.proc.pid)
        t0 = time.perf_counter()
        deadline = t0 + timeout
        sent = 0
        drain = asyncio.ensure_future(self._drain_own(pubs))
        while sent < pubs:
            if rate:
                wait = t0 + sent / rate - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"{self.name}: {sent} published at {rate}/s, past the deadline")
            elif (sent - (run.delivered - start) / nsubs) >= window:
                await asyncio.sleep(0)
                if time.perf_counter() > deadline:
                    ns = [sub.n for sub in self.subs]
                    raise TimeoutError(f"{self.name}: {sent} published, deliveries stalled (subscribers got "
                                       f"{min(ns)}..{max(ns)} messages in all)")
                continue
            await self.pub.send(payload + "x" * self.pad if self.pad else payload)
            sent += 1
        await asyncio.wait_for(run.done, max(0.1, deadline - time.perf_counter()))
        wall = time.perf_counter() - t0
        cpu = cpu_seconds(self.server.proc.pid) - cpu0
        await asyncio.wait_for(drain, timeout)
        n = run.delivered - start
        return {"deliveries_per_s": n / wall, "server_us_per_delivery": cpu / n * 1e6}

    async def _drain_own(self, pubs: int) -> None:
        for _ in range(pubs):  # the publisher's own copies
            await self.pub.recv()

    async def stop(self) -> None:
        await asyncio.gather(*(c.close() for c in self.conns), return_exceptions=True)
        self.server.stop()


async def main_async(a: argparse.Namespace) -> dict[str, Any]:
    if os.cpu_count() and os.cpu_count() > 1:  # the servers are on CPU 0
        os.sched_setaffinity(0, {1})
    payload = "P" + "x" * (a.size - 1)
    # the envelope's own bytes: {"epoch":"<8 hex>","offset":<n>,"data":"..."}
    pad = len(orjson.dumps({"epoch": "0" * 8, "offset": a.pubs * a.rounds, "data": ""}))
    targets = [Target("plain", "benchmarks.fanout_history:plain_app", False),
               Target("history", "benchmarks.fanout_history:history_app", True),
               Target("plain+pad", "benchmarks.fanout_history:plain_app", False, pad)]
    try:
        for t in targets:
            await t.connect(a.subs)
        for t in targets:  # warm-up (rooms awake, the log created)
            await t.round(min(200, a.pubs), a.window, payload, a.timeout)
        per: dict[str, list[dict[str, float]]] = {t.name: [] for t in targets}
        for r in range(a.rounds):
            for t in targets[r % 3:] + targets[:r % 3]:  # each first in turn
                per[t.name].append(await t.round(a.pubs, a.window, payload, a.timeout, a.rate))
        errors = [e for t in targets for e in t.run.errors]
        for t in targets:
            for s in t.subs:
                if s.n != t.subs[0].n:
                    errors.append(f"{t.name}: a subscriber got {s.n} messages, another {t.subs[0].n}")
    finally:
        for t in targets:
            await t.stop()
    report: dict[str, Any] = {"subs": a.subs, "pubs": a.pubs, "rounds": a.rounds, "window": a.window, "rate": a.rate,
                              "size": a.size, "synchronous": os.environ.get("FASTWS_BENCH_SYNCHRONOUS", "FULL"),
                              "errors": errors[:10]}
    for name, rows in per.items():
        report[name] = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
    hr = per["history"]
    for base in ("plain", "plain+pad"):
        pr = per[base]
        report[f"ratio_deliveries_vs_{base}"] = statistics.median(
            h["deliveries_per_s"] / p["deliveries_per_s"] for p, h in zip(pr, hr))
        report[f"ratio_cpu_vs_{base}"] = statistics.median(
            h["server_us_per_delivery"] / p["server_us_per_delivery"] for p, h in zip(pr, hr))
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--subs", type=int, default=1000)
    p.add_argument("--pubs", type=int, default=2000, help="publishes per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--window", type=int, default=16, help="closed loop: publishes in flight at most")
    p.add_argument("--rate", type=float, default=0.0, help="publishes/s (open loop; 0: closed loop, --window)")
    p.add_argument("--size", type=int, default=64, help="payload bytes")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds a round may take at most")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    report = asyncio.run(main_async(a))
    if a.json:
        print(json.dumps(report, indent=2))
    else:
        how = f"{a.rate:g} publishes/s" if a.rate else f"window {a.window}"
        print(f"fan-out, 1 publisher, {a.subs} subscribers, {a.size} B, {how}, {a.pubs} publishes x "
              f"{a.rounds} rounds (medians); history: synchronous {report['synchronous']}")
        for name in ("plain", "plain+pad", "history"):
            r = report[name]
            print(f"  {name:9} {r['deliveries_per_s']:>12,.0f} deliveries/s  "
                  f"{r['server_us_per_delivery']:.3f} us server CPU per delivery")
        for base in ("plain", "plain+pad"):
            print(f"  history / {base}: deliveries/s {report[f'ratio_deliveries_vs_{base}']:.3f}, "
                  f"server CPU per delivery {report[f'ratio_cpu_vs_{base}']:.3f}")
        for e in report["errors"]:
            print("  ERROR:", e)
    return 1 if report["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
