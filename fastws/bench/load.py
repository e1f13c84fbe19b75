"""The load generator's base: what every ``fastws bench`` mode shares.

This module holds :class:`BenchConfig` (what to run), :class:`Tally` (what one process
measured), the client TLS context, the payloads, the CPU and memory readings of a local
server process, and :class:`Load`, the base class of the modes in
:mod:`fastws.bench.modes`. One event loop drives many listener connections.

Theory of operation: every mode runs in three phases (:meth:`Load.run`): connect
(``count`` connections, at most ``concurrency`` handshakes in flight), load (bounded by
``num`` messages per connection *and* by ``duration`` seconds), drain (at most
``drain_timeout`` seconds for replies still in flight, then a closing handshake, then
abort). A ticker every 50 ms (``TICK``) samples the counters (timeline, progress) and
ends the load phase when the duration is over, when the work is done, when a stop is
requested (Ctrl-C) or when every connection is gone (the server died).

A mode subclasses :class:`Load` and fills in its hooks: :meth:`~Load.make_listener` (the
listener of connection ``index``) and :meth:`~Load.start` (the first sends) always;
:meth:`~Load.tick` for paced sends (``--rate``), :meth:`~Load.sync_counts` to fold the
listeners' counters into the tally, :meth:`~Load.finished`, :meth:`~Load.settled` and
:meth:`~Load.account_lost` to say when the work is done and what never arrived, and
:meth:`~Load.open_all` / :meth:`~Load.ready_to_start` where the connect phase differs.

Connections are driven by :class:`~fastws.Listener` callbacks on the fastws engine (a
mode's Python listeners derive from :class:`_Base`, which reports closes to the load;
the C listeners of ``fastws/bench/_listeners.pyx`` do the same): no task, no future and
no copy per message; the payload of a reply is only measured (``len(msg)``), never
copied.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from fastws.bench._client import ClientFactory
from fastws.bench.stats import Samples
from fastws.client import parse_url
from fastws.connection import Connection, Listener
from fastws.exceptions import InvalidHandshake

__all__ = ["BenchConfig", "Tally", "Load", "MODES", "TICK", "tls_context", "payload_for", "proc_cpu_seconds",
           "proc_rss_bytes"]

logger = logging.getLogger("fastws.bench")

MODES = ("echo", "storm", "fanout", "chat")
perf = time.perf_counter
TICK = 0.05


@dataclass
class BenchConfig:
    """What to run. Field names match the command-line options."""

    url: str
    mode: str = "echo"
    count: int = 10             #: connections (fanout: subscribers; chat: members)
    num: int = 100              #: messages per connection (fanout: publishes; 0: only --duration bounds it)
    size: int = 64              #: payload bytes
    rate: float = 0.0           #: messages (storm: connections) per second over the whole run; 0: closed loop
    duration: float = 10.0      #: seconds of load at most
    compression: bool = False   #: offer permessage-deflate (payloads are then compressible text)
    text: bool = False          #: echo: send TEXT frames instead of BINARY
    procs: int = 1              #: worker processes
    concurrency: int = 100      #: handshakes in flight while connecting
    window: int = 16            #: fanout: publishes in flight before the slowest subscriber catches up
    inflight: int = 1           #: echo: messages in flight per connection (closed loop)
    room_size: int = 10         #: chat: members per room
    open_timeout: float = 10.0
    drain_timeout: float = 5.0
    headers: list[tuple[str, str]] = field(default_factory=list)
    subprotocols: list[str] = field(default_factory=list)
    cafile: str | None = None   #: wss://: trust this CA bundle
    insecure: bool = False      #: wss://: do not verify the server's certificate

    #: hard cap on messages per connection when num is 0
    MAX_NUM = 100_000_000

    def validate(self) -> None:
        """Raise ValueError with a one-line message for bad settings."""
        parse_url(self.url)
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}")
        for name in ("count", "procs", "concurrency", "window", "room_size", "inflight"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if self.num < 0 or self.size < 0 or self.rate < 0:
            raise ValueError("--num, --size and --rate cannot be negative")
        if not 0 < self.duration <= 24 * 3600:
            raise ValueError("--duration must be between 0 and 86400 seconds")
        if self.mode == "fanout" and self.size < 1:
            raise ValueError("fanout needs --size of at least 1 (the first byte is the publish marker)")
        if self.mode == "chat" and self.size < 1:
            raise ValueError("chat needs --size of at least 1")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["headers"] = [name for name, _ in self.headers]  # never put tokens in a report
        return d


class Tally:
    """What one process measured (picklable: plain numbers, lists and arrays)."""

    def __init__(self) -> None:
        self.requested = 0
        self.opened = 0
        self.failed = 0
        self.dropped = 0           # closed by the server (or lost) before the end of the run
        self.sent = 0
        self.received = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.lost = 0
        self.errors: Counter[str] = Counter()
        self.latency = Samples()
        self.connect_latency = Samples()
        self.timeline: list[int] = []   # received (storm: opened) at every tick of TICK s
        self.connect_seconds = 0.0
        self.load_seconds = 0.0
        self.interrupted = False
        self.extra: dict[str, float] = {}
        self.close_codes: Counter[int] = Counter()
        self.server_cpu: float | None = None   # CPU seconds of --server-pid over the load phase
        self.server_rss: float | None = None   # its RSS growth per opened connection, bytes
        self.client_cpu = 0.0                  # this process's CPU seconds over the load phase
        self.compressed = 0                    # connections with permessage-deflate negotiated
        self.fan_comp: array[float] | None = None  # fanout over processes: when the last local subscriber
        self.fan_sent: array[float] | None = None  # had publish n; when publish n was sent (worker 0)

    def error(self, kind: str, n: int = 1) -> None:
        self.errors[kind[:200]] += n

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["latency"] = self.latency.data
        d["latency_stride"] = self.latency.stride
        d["connect_latency"] = self.connect_latency.data
        d["errors"] = dict(self.errors)
        d["close_codes"] = dict(self.close_codes)
        return d


def tls_context(cafile: str | None = None, insecure: bool = False) -> Any:
    """A client SSLContext for wss://: the system's trust store, or ``cafile``; no verification
    with ``insecure`` (self-signed test servers)."""
    import ssl

    ctx = ssl.create_default_context(cafile=cafile)
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def payload_for(cfg: BenchConfig, first: bytes = b"") -> bytes:
    """The payload: random bytes, or compressible ASCII with --compression / --text."""
    n = max(0, cfg.size - len(first))
    if cfg.compression or cfg.text or cfg.mode == "chat":
        unit = b"fastws bench payload 0123456789 "
        body = (unit * (n // len(unit) + 1))[:n]
    else:
        body = os.urandom(n)
    return first + body


def _describe(exc: BaseException) -> str:
    if isinstance(exc, InvalidHandshake):
        if getattr(exc, "status", 0):
            return f"handshake refused: {exc}"
        return f"handshake failed: {exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError):
        return f"connect failed: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"



def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a local process (all threads) in seconds, None when unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def proc_rss_bytes(pid: int) -> int | None:
    """Resident memory of a local process in bytes, None when unreadable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class Load:
    """One mode's load on the running loop. Subclasses set up listeners and drive sends."""

    def __init__(self, cfg: BenchConfig, stop: Callable[[], bool], progress: Callable[[Tally], None] | None,
                 server_pid: int = 0) -> None:
        self.cfg = cfg
        self.server_pid = server_pid
        self.tally = Tally()
        self.loop = asyncio.get_running_loop()
        self._stop_requested = stop
        self._progress = progress
        self.conns: list[Connection] = []
        self.listeners: list[Any] = []
        self.running = False
        self.done = asyncio.Event()
        self.t0 = 0.0
        self.num = cfg.num or BenchConfig.MAX_NUM
        self.factory = ClientFactory(cfg.url, compression=cfg.compression, subprotocols=cfg.subprotocols,
                                     headers=cfg.headers, open_timeout=cfg.open_timeout,
                                     ssl_context=tls_context(cfg.cafile, cfg.insecure))
        self.live = 0
        self.grace = 0.0  # extra seconds past --duration (fanout workers that follow the publisher's end)

    # -- connections

    def make_listener(self, index: int) -> Any:
        raise NotImplementedError

    def target_for(self, index: int) -> str:
        return self.factory.target

    async def open_all(self, n: int) -> None:
        sem = asyncio.Semaphore(self.cfg.concurrency)
        t = self.tally
        t.requested += n
        factories: dict[str, ClientFactory] = {}

        async def one(i: int) -> None:
            async with sem:
                if self._stop_requested() or (self.t0 and perf() - self.t0 > self.cfg.duration):
                    t.failed += 1
                    t.error("not attempted: run stopped")
                    return
                target = self.target_for(i)
                f = factories.get(target)
                if f is None:
                    f = factories[target] = self.factory.with_target(target)
                lst = self.make_listener(i)
                start = perf()
                try:
                    conn = await f.open(lst)
                except Exception as exc:  # counted and reported: the point of a load test
                    t.failed += 1
                    t.error(_describe(exc))
                    return
                t.connect_latency.add(perf() - start)
                t.opened += 1
                lst.conn = conn
                if conn.closed:  # closed by the server right after the handshake
                    t.dropped += 1
                    t.close_codes[conn.close_code] += 1
                    t.error(f"connection closed by the server during the run ({conn.close_code})")
                else:
                    self.live += 1
                    if conn.compression is not None:
                        t.compressed += 1
                self.conns.append(conn)
                self.listeners.append(lst)

        await asyncio.gather(*(one(i) for i in range(n)))

    def on_conn_closed(self, lst: Any, code: int, reason: str) -> None:
        """A listener's on_close: count drops that happen before the end of the run."""
        if lst.conn is None:  # closed before open_all() saw it open: counted there
            return
        self.live -= 1
        if not lst.finished_ok:
            self.tally.dropped += 1
            self.tally.close_codes[code] += 1
            self.tally.error(f"connection closed by the server during the run ({code}{' ' + reason if reason else ''})")
        if self.live <= 0 and self.running:
            self.done.set()

    # -- load

    def start(self) -> None:
        raise NotImplementedError

    def finished(self) -> bool:
        """All work done (every connection sent and got what it should)."""
        return False

    def counter(self) -> int:
        return self.tally.received

    def sync_counts(self) -> None:
        """Fold per-connection counters into the tally (called each tick and at the end)."""

    def stop_sending(self) -> None:
        """The load phase is over: send nothing more."""

    async def ready_to_start(self) -> bool:
        """After the connect phase: False to skip the load phase."""
        return True

    def tick(self) -> None:
        """Paced sends (--rate); called every TICK s during the load phase."""

    async def drain(self) -> None:
        """Wait (bounded) for what is still in flight after the load phase."""
        deadline = perf() + self.cfg.drain_timeout
        while perf() < deadline and self.live > 0 and not self.settled():
            await asyncio.sleep(0.01)
            self.sync_counts()

    def settled(self) -> bool:
        return True

    def account_lost(self) -> None:
        """After the drain: count what never arrived."""

    async def close_all(self) -> None:
        for lst in self.listeners:
            lst.finished_ok = True
        waits = []
        for conn in self.conns:
            if not conn.closed:
                try:
                    waits.append(asyncio.ensure_future(conn.close()))
                except Exception:
                    conn.abort()
        if waits:
            _, pending = await asyncio.wait(waits, timeout=self.cfg.drain_timeout)
            for w in pending:
                w.cancel()
        for conn in self.conns:
            if not conn.closed:
                conn.abort()
        self.factory.stop()

    async def run(self) -> Tally:
        t = self.tally
        ticker = asyncio.ensure_future(self._ticker())
        pid = self.server_pid
        try:
            rss0 = proc_rss_bytes(pid) if pid else None
            c0 = perf()
            self.t0 = c0
            await self.open_all(self.cfg.count)
            t.connect_seconds = perf() - c0
            if pid:
                rss1 = proc_rss_bytes(pid)
                if rss0 and rss1 and t.opened:
                    t.server_rss = max(0.0, (rss1 - rss0) / t.opened)
            go = await self.ready_to_start()
            if go and self.conns and not self._stop_requested():
                cpu0 = proc_cpu_seconds(pid) if pid else None
                own0 = _self_cpu()
                self.t0 = perf()
                self.running = True
                logger.debug("fastws bench: load phase started (%d connections open)", len(self.conns))
                self.start()
                try:  # the ticker ends the load phase; this is the backstop if it cannot
                    await asyncio.wait_for(self.done.wait(), self.cfg.duration + self.grace + 5.0)
                except asyncio.TimeoutError:
                    t.error("the load phase overran its duration")
                self.running = False
                self.stop_sending()
                t.load_seconds = perf() - self.t0
                t.client_cpu = _self_cpu() - own0
                cpu1 = proc_cpu_seconds(pid) if pid else None
                if cpu0 is not None and cpu1 is not None:
                    t.server_cpu = cpu1 - cpu0
                self.sync_counts()
                await self.drain()
            self.sync_counts()
            self.account_lost()
        finally:
            self.running = False
            ticker.cancel()
            await self.close_all()
        t.interrupted = self._stop_requested()
        return t

    async def _ticker(self) -> None:
        next_t = perf()
        while True:
            next_t += TICK
            await asyncio.sleep(max(0.0, next_t - perf()))
            try:
                self._tick_once()
            except Exception as exc:  # never leave the run without its clock
                self.tally.error(f"internal error in the ticker: {type(exc).__name__}: {exc}")
                self.done.set()

    def _tick_once(self) -> None:
        self.sync_counts()
        t = self.tally
        t.latency.check()
        if self.running:
            t.timeline.append(self.counter())
            self.tick()
            if (self._stop_requested() or perf() - self.t0 >= self.cfg.duration + self.grace or self.finished()
                    or self.live <= 0):
                self.done.set()
        elif self._stop_requested():
            self.done.set()
        if self._progress is not None:
            self._progress(t)


class _Base(Listener):
    __slots__ = ("load", "conn", "finished_ok")
    load: Any
    conn: Connection
    finished_ok: bool

    def __init__(self, load: Load) -> None:
        self.load = load
        self.conn = None  # type: ignore[assignment]  # set once the handshake completed
        self.finished_ok = False

    def on_close(self, ws: Connection, code: int, reason: str) -> None:
        self.load.on_conn_closed(self, code, reason)
