"""Running a ``fastws bench`` configuration: in this process or over worker processes.

:func:`run_bench` is the entry point: it validates the configuration, raises the
open-files limit for the connections, runs the load and builds the report
(:func:`fastws.bench.report.build_report`, the document ``--json`` prints).

Theory of operation: with one process (``procs`` 1, or too few connections to share) the
load runs on an event loop in this process (uvloop when available) and SIGINT sets a stop
flag that the load's ticker sees. With several, :func:`_shares` cuts the connections into
one contiguous range per worker (chat rooms never span two workers), and
:func:`_run_procs` forks the workers before any event loop runs in this process. Each
worker (:func:`_worker`) ignores SIGINT (the parent relays Ctrl-C through a shared
event), dies with the parent (:func:`die_with_parent`), runs its share on its own event
loop and puts its tally, as a plain dict, on a result queue; its counters for the
progress bar go into a shared array, five slots per worker. Fan-out workers also get the
shared arrays of :class:`fastws.bench.modes.fanout.Coord`. Every phase is bounded inside
the workers; the parent has one backstop deadline beyond them, reports a worker that
failed or never reported as an error of the run, and terminates stragglers.

:class:`Progress` is the one-line progress bar on a terminal; :func:`capacity_for` adds
the capacity estimate to a report.
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from fastws.bench.load import BenchConfig, Tally
from fastws.bench.modes import run_load
from fastws.bench.modes.fanout import Coord
from fastws.bench.report import build_report, capacity, format_table

__all__ = ["Progress", "run_bench", "capacity_for", "print_report", "raise_nofile", "die_with_parent"]


class Progress:
    """A one-line progress bar on a terminal (``\\r``-redrawn, at most 5 times a second)."""

    def __init__(self, cfg: BenchConfig, stream: TextIO) -> None:
        self.cfg = cfg
        self.stream = stream
        self._last = 0.0
        self._t0 = time.perf_counter()
        self._load_t0 = 0.0
        self._shown = False

    def update(self, opened: int, requested: int, sent: int, received: int, errors: int, loading: bool) -> None:
        now = time.perf_counter()
        if now - self._last < 0.2:
            return
        self._last = now
        cfg = self.cfg
        if not loading:
            frac = opened / max(1, cfg.count)
            text = f"connecting {opened:,}/{cfg.count:,}"
        else:
            if not self._load_t0:
                self._load_t0 = now
            el = now - self._load_t0
            frac = el / cfg.duration
            if cfg.num:
                total = cfg.num if cfg.mode == "fanout" else cfg.num * cfg.count
                frac = max(frac, sent / max(1, total))
            rate = received / el if el > 0 else 0.0
            text = f"{el:5.1f}s  sent {sent:,}  received {received:,} ({rate:,.0f}/s)"
        frac = min(1.0, max(0.0, frac))
        width = 24
        full = int(frac * width)
        bar = "#" * full + "-" * (width - full)
        self.stream.write(f"\r[{bar}] {frac:4.0%}  {text}  errors {errors:,}\x1b[K")
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def raise_nofile(want: int) -> int:
    """Raise the soft open-files limit towards ``want`` (at most the hard limit); returns the new limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return int(soft)


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """In a forked worker: get ``sig`` when the parent process dies, even by SIGKILL (Linux
    ``prctl(PR_SET_PDEATHSIG)``; elsewhere nothing), so no worker outlives its supervisor."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(sig), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), sig)


def _shares(cfg: BenchConfig, procs: int) -> list[tuple[int, int]]:
    """(first connection index, connections) per worker; chat rooms never span two workers."""
    unit = cfg.room_size if cfg.mode == "chat" else 1
    units = math.ceil(cfg.count / unit)
    procs = max(1, min(procs, units))
    out = []
    first = 0
    for i in range(procs):
        n_units = units // procs + (1 if i < units % procs else 0)
        n = min(n_units * unit, cfg.count - first)
        if n > 0:
            out.append((first, n))
        first += n
    return out


async def _measured(cfg: BenchConfig, stop: Callable[[], bool], progress: Callable[[Tally], None] | None,
                    first: int, server_pid: int, coord: Coord | None = None) -> dict[str, Any]:
    tally = await run_load(cfg, stop, progress, first, server_pid, coord)
    return tally.to_dict()


def _event_loop_run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(coro)
    return uvloop.run(coro)


def _worker(cfg: BenchConfig, first: int, count: int, index: int, stop_event: Any, counters: Any,
            results: Any, server_pid: int, shared: tuple[Any, ...] | None) -> None:
    """One worker process: its share of the connections; counters for the parent's progress bar."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent relays Ctrl-C through stop_event
    die_with_parent(signal.SIGKILL)
    import dataclasses

    share = dataclasses.replace(cfg, count=count, rate=cfg.rate * count / cfg.count if cfg.rate else 0.0)
    base = index * 5

    def progress(t: Tally) -> None:
        counters[base] = t.opened
        counters[base + 1] = t.sent
        counters[base + 2] = t.received
        counters[base + 3] = sum(t.errors.values())
        counters[base + 4] = 1.0 if t.load_seconds or t.timeline else 0.0

    try:
        coord = Coord(index, len(shared[0]), *shared) if shared is not None else None
        d = _event_loop_run(_measured(share, stop_event.is_set, progress, first,
                                      server_pid if index == 0 else 0, coord))
        results.put((index, d, None))
    except BaseException as exc:  # reported by the parent as an error of the run
        results.put((index, None, f"worker {index} failed: {type(exc).__name__}: {exc}"))


def run_bench(cfg: BenchConfig, *, progress: Progress | None = None, server_pid: int = 0) -> dict[str, Any]:
    """Run ``cfg`` and return its report (``--json`` prints it). SIGINT ends the load early.

    Args:
        cfg: the configuration (validated here).
        progress: a progress bar to redraw, or None.
        server_pid: a local server's PID: its CPU time over the load phase (and RSS per
            connection) goes into the report.

    Raises:
        ValueError: a bad configuration.
    """
    cfg.validate()
    raise_nofile(cfg.count + 2 + 256)  # a socket per connection, plus the publisher and some slack
    started = time.time()
    stop = {"flag": False}
    old = signal.getsignal(signal.SIGINT)
    is_main = _is_main_thread()
    shares = _shares(cfg, cfg.procs)
    worker_errors: list[str] = []
    try:
        if len(shares) == 1:
            if is_main:
                signal.signal(signal.SIGINT, lambda *_: stop.__setitem__("flag", True))

            def on_tick(t: Tally) -> None:
                if progress is not None:
                    progress.update(t.opened, t.requested, t.sent, t.received, sum(t.errors.values()),
                                    bool(t.load_seconds or t.timeline))

            tallies = [_event_loop_run(_measured(cfg, lambda: stop["flag"], on_tick, 0, server_pid))]
        else:
            tallies = _run_procs(cfg, shares, progress, stop, worker_errors, server_pid, is_main)
    finally:
        if is_main:
            signal.signal(signal.SIGINT, old)
        if progress is not None:
            progress.close()
    report = build_report(cfg, tallies, started_at=started, procs_used=len(shares), worker_errors=worker_errors)
    if stop["flag"]:
        report["interrupted"] = True
        report["ok"] = False
    return report


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _run_procs(cfg: BenchConfig, shares: list[tuple[int, int]], progress: Progress | None, stop: dict[str, bool],
               worker_errors: list[str], server_pid: int, is_main: bool) -> list[dict[str, Any]]:
    import multiprocessing as mp
    import queue

    ctx = mp.get_context("fork")  # before any event loop runs in this process: fork is safe and fast
    stop_event = ctx.Event()
    counters = ctx.Array("d", 5 * len(shares), lock=False)
    results = ctx.Queue()
    if is_main:
        def on_sigint(*_: Any) -> None:
            stop["flag"] = True
            stop_event.set()

        signal.signal(signal.SIGINT, on_sigint)
    shared = None
    if cfg.mode == "fanout":  # connected, subs, completed, state (see modes.fanout.Coord)
        k = len(shares)
        shared = (ctx.Array("i", k, lock=False), ctx.Array("q", k, lock=False), ctx.Array("q", k, lock=False),
                  ctx.Array("q", 2, lock=False))
    workers = []
    for i, (first, n) in enumerate(shares):
        p = ctx.Process(target=_worker, args=(cfg, first, n, i, stop_event, counters, results, server_pid, shared),
                        name=f"fastws-bench-{i}", daemon=True)
        p.start()
        workers.append(p)
    # every phase is bounded inside the workers; this is the backstop if one hangs
    deadline = time.monotonic() + cfg.duration + 2 * cfg.open_timeout + 3 * cfg.drain_timeout + 15
    got: dict[int, dict[str, Any]] = {}
    while len(got) + len(worker_errors) < len(workers) and time.monotonic() < deadline:
        try:
            index, d, err = results.get(timeout=0.1)
        except queue.Empty:
            if all(not p.is_alive() for p in workers) and results.empty():
                break
        else:
            if err is not None:
                worker_errors.append(err)
            else:
                got[index] = d
        if progress is not None:
            c = list(counters)
            progress.update(int(sum(c[0::5])), cfg.count, int(sum(c[1::5])), int(sum(c[2::5])),
                            int(sum(c[3::5])), any(c[4::5]))
    for i, p in enumerate(workers):
        if i not in got and not any(e.startswith(f"worker {i} ") for e in worker_errors):
            worker_errors.append(f"worker {i} did not report (exit code {p.exitcode})")
        p.join(timeout=1)
        if p.is_alive():
            p.terminate()
            p.join(timeout=1)
    results.close()
    return [got[i] for i in sorted(got)]


def capacity_for(report: dict[str, Any], **kw: Any) -> dict[str, Any]:
    """Add ``report["capacity"]`` (see :func:`fastws.bench.report.capacity`) and return it."""
    cap = capacity(report, **kw)
    report["capacity"] = cap
    return cap


def print_report(report: dict[str, Any], previous: dict[str, Any] | None, stream: TextIO = sys.stdout) -> None:
    stream.write(format_table(report, previous) + "\n")
