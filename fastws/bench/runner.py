"""The load generator behind ``fastws bench``: one event loop, many listener connections.

Every mode runs in three phases: connect (``count`` connections, at most
``concurrency`` handshakes in flight), load (bounded by ``num`` messages per
connection *and* by ``duration`` seconds), drain (at most ``drain_timeout``
seconds for replies still in flight, then a closing handshake, then abort).
A ticker every 50 ms samples the counters (timeline, progress) and ends the
load phase when the duration is over, when the work is done, when a stop is
requested (Ctrl-C) or when every connection is gone (the server died).

Connections are driven by :class:`~fastws.Listener` callbacks on the fastws
engine: no task, no future and no copy per message; the payload of a reply is
only measured (``len(msg)``), never copied.
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from fastws.bench._client import ClientFactory
from fastws.bench._listeners import EchoConn as _EchoHot
from fastws.bench._listeners import FanState, FanSub
from fastws.bench._listeners import now as _echo_now
from fastws.bench.stats import Samples
from fastws.client import parse_url
from fastws.connection import Connection, Listener, Message
from fastws.exceptions import InvalidHandshake

__all__ = ["BenchConfig", "Coord", "MODES", "run_load", "PUBLISH"]

logger = logging.getLogger("fastws.bench")

MODES = ("echo", "storm", "fanout", "chat")
PUBLISH = 0x50  # b"P": the fan-out room contract (../shared/fanout/servers/_common.py)
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


# ------------------------------------------------------------------ base


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


# ------------------------------------------------------------------ echo


class _EchoConn(_Base):
    """Closed loop: one message in flight; the next is sent from the reply's callback.
    (What ``fastws/bench/_listeners.pyx`` does in C; the base of the two variants below.)"""

    __slots__ = ("left", "t", "n", "bad", "rec", "payload", "size", "sends")
    left: int
    t: float
    n: int
    bad: int
    rec: Callable[[float], None]
    payload: bytes | str
    size: int
    sends: deque[float]

    def on_message(self, ws: Connection, msg: Message) -> None:
        # the hot path of `fastws bench`: keep it to a few attribute operations
        now = perf()
        self.rec(now - self.t)
        self.n += 1
        if len(msg) != self.size:
            self.bad += 1
        if self.left:
            self.left -= 1
            self.t = now
            ws.send(self.payload)
        else:
            self.finished_ok = True


class _EchoPipelined(_EchoConn):
    """Closed loop with ``inflight`` messages in flight: each reply sends one more
    (replies come back in order, so the oldest send time is the reply's)."""

    __slots__ = ()

    def on_message(self, ws: Connection, msg: Message) -> None:
        now = perf()
        sends = self.sends
        self.rec(now - sends.popleft())
        self.n += 1
        if len(msg) != self.size:
            self.bad += 1
        if self.left:
            self.left -= 1
            sends.append(now)
            ws.send(self.payload)
        elif not sends:
            self.finished_ok = True


class _EchoPaced(_EchoConn):
    """Open loop (--rate): the ticker sends; replies come back in order."""

    __slots__ = ()

    def on_message(self, ws: Connection, msg: Message) -> None:
        now = perf()
        self.n += 1
        if len(msg) != self.size:
            self.bad += 1
        if self.sends:
            self.rec(now - self.sends.popleft())


class EchoLoad(Load):
    """Round trips: each connection sends a message and waits for its echo (closed loop),
    or all connections together send at ``rate`` messages/s (open loop)."""

    def make_listener(self, index: int) -> Any:
        if not self.cfg.rate and self.cfg.inflight == 1:
            # the common case, in C (fastws/bench/_listeners.pyx)
            hot = _EchoHot(self, self.tally.latency.data)
            hot.left = self.num
            hot.payload = self.payload
            hot.size = len(self.payload)
            hot.sends = deque()
            return hot
        if self.cfg.rate:
            lst: _EchoConn = _EchoPaced(self)
        else:
            lst = _EchoPipelined(self)
        lst.left = self.num
        lst.t = 0.0
        lst.n = 0
        lst.bad = 0
        lst.rec = self.tally.latency.add
        lst.payload = self.payload
        lst.size = len(self.payload)
        lst.sends = deque()
        return lst

    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        p = payload_for(self.cfg)
        self.payload: bytes | str = p.decode("ascii") if self.cfg.text else p
        self._sent_paced = 0
        self._rr = 0
        self._unsent = 0  # closed loop: messages not sent because the load phase ended

    def stop_sending(self) -> None:
        if not self.cfg.rate:
            for lst in self.listeners:
                self._unsent += lst.left
                lst.left = 0

    def start(self) -> None:
        if self.cfg.rate:
            return
        now = _echo_now() if self.cfg.inflight == 1 else perf()
        for lst in self.listeners:
            for _ in range(min(self.cfg.inflight, lst.left)):
                lst.left -= 1
                lst.t = now
                lst.sends.append(now)
                lst.conn.send(self.payload)

    def tick(self) -> None:
        if not self.cfg.rate:
            return
        due = int(self.cfg.rate * (perf() - self.t0)) - self._sent_paced
        lsts = self.listeners
        n = len(lsts)
        cap = self.num * n
        now = perf()
        while due > 0 and self._sent_paced < cap:
            lst = lsts[self._rr % n]
            self._rr += 1
            if lst.conn.closed or lst.left <= 0:
                if all(x.conn.closed or x.left <= 0 for x in lsts):
                    break
                continue
            lst.left -= 1
            lst.sends.append(now)
            try:
                lst.conn.send(self.payload)
            except Exception as exc:
                self.tally.error(_describe(exc))
                break
            self._sent_paced += 1
            due -= 1

    def sync_counts(self) -> None:
        t = self.tally
        t.received = sum(lst.n for lst in self.listeners)
        bad = sum(lst.bad for lst in self.listeners)
        if bad > t.errors.get("echo reply of the wrong length", 0):
            t.errors["echo reply of the wrong length"] = bad
        t.bytes_received = (t.received - bad) * len(self.payload)
        if self.cfg.rate:
            t.sent = self._sent_paced
        else:
            t.sent = sum(self.num - lst.left for lst in self.listeners) - self._unsent
        t.bytes_sent = t.sent * len(self.payload)

    def finished(self) -> bool:
        if self.cfg.rate:
            return self._sent_paced >= self.num * len(self.listeners) and self.tally.received >= self._sent_paced
        return all(lst.finished_ok or lst.conn.closed for lst in self.listeners)

    def settled(self) -> bool:
        return self.tally.received >= self.tally.sent

    def account_lost(self) -> None:
        t = self.tally
        if t.sent > t.received:
            t.lost = t.sent - t.received
            t.error("echo replies missing at the end of the run", t.lost)


# ------------------------------------------------------------------ storm


class _StormConn(_Base):
    __slots__ = ()

    def on_message(self, ws: Connection, msg: Message) -> None:
        self.load.tally.received += 1


class StormLoad(Load):
    """Connection rate: open ``count`` connections (``concurrency`` in flight, or ``rate``
    per second), hold them until all are open, close them all."""

    def make_listener(self, index: int) -> _StormConn:
        return _StormConn(self)

    async def open_all(self, n: int) -> None:
        if not self.cfg.rate:
            await super().open_all(n)
            return
        # paced: start one batch of attempts per tick
        tasks = []
        start = perf()
        started = 0
        while started < n and not self._stop_requested() and perf() - start < self.cfg.duration:
            due = min(n, int(self.cfg.rate * (perf() - start)) + 1) - started
            for _ in range(due):
                tasks.append(asyncio.ensure_future(super().open_all(1)))
            started += max(0, due)
            await asyncio.sleep(TICK / 5)
        if started < n:
            self.tally.requested += n - started
            self.tally.failed += n - started
            self.tally.error("not attempted: run stopped", n - started)
        if tasks:
            await asyncio.gather(*tasks)

    def counter(self) -> int:
        return self.tally.opened

    def start(self) -> None:
        self.done.set()

    async def run(self) -> Tally:
        t = await super().run()
        secs = t.connect_seconds
        t.extra["connects_per_s"] = t.opened / secs if secs > 0 else 0.0
        t.load_seconds = secs
        t.timeline = []
        return t


# ------------------------------------------------------------------ fanout


class _FanPub(_Base):
    __slots__ = ("n",)
    n: int

    def on_message(self, ws: Connection, msg: Message) -> None:
        self.n += 1  # the publisher's own copy (the room contract includes the publisher)


class Coord:
    """Shared memory of the fan-out workers (``multiprocessing`` arrays without locks: each
    slot has one writer). Worker 0 holds the publisher; every worker holds subscribers.

    ``connected[i]``: 1 once worker i's connect phase is over; ``subs[i]``: its subscribers;
    ``completed[i]``: publishes that every one of its subscribers has; ``state``: [phase
    (0 connecting, 1 publishing, 2 over), publishes sent when the phase became 2].
    """

    def __init__(self, index: int, nprocs: int, connected: Any, subs: Any, completed: Any, state: Any) -> None:
        self.index = index
        self.nprocs = nprocs
        self.connected = connected
        self.subs = subs
        self.completed = completed
        self.state = state

    def global_done(self) -> int:
        """Publishes that every subscriber in every worker has."""
        done = [self.completed[i] for i in range(self.nprocs) if self.subs[i] > 0]
        return min(done) if done else 0


class FanoutLoad(Load):
    """One publisher and ``count`` subscribers in one room (every connection to the URL):
    a message whose first byte is ``P`` goes to every connection. Latency is from the
    publish to the moment the last subscriber has it. Over several processes the
    subscribers are spread out, worker 0 publishes, and each worker records when its last
    subscriber got each publish (``perf_counter`` is CLOCK_MONOTONIC, one clock for all
    processes); the report takes the latest of them."""

    def __init__(self, *a: Any, coord: Coord | None = None) -> None:
        super().__init__(*a)
        self.coord = coord
        self.is_pub = coord is None or coord.index == 0
        if coord is not None and not self.is_pub:
            self.grace = 5.0  # follow the publisher's end (state phase 2), not our own clock
        self.payload = payload_for(self.cfg, b"P")
        self.size = len(self.payload)
        self.max_pubs = min(self.num, 50_000_000)
        self.reached = array("I", bytes(4 * min(self.max_pubs, 1 << 16)))
        # the subscribers are FanSub (fastws/bench/_listeners.pyx) sharing this state
        self.fan = FanState(self, self.reached, self.max_pubs, self.size)
        self.sent_at: array[float] = array("d")
        self.comp: array[float] = array("d")
        self.nsubs = 0
        self.listeners_subs: list[FanSub] = []
        self.done_pubs = 0
        self.pub: Connection | None = None
        self._paced = 0
        self._poller: asyncio.Future[None] | None = None

    def make_listener(self, index: int) -> Any:
        if index == 0 and self.is_pub:
            p = _FanPub(self)
            p.n = 0
            return p
        s = FanSub(self.fan)
        s.verify = index == (1 if self.is_pub else 0)
        return s

    async def open_all(self, n: int) -> None:
        await super().open_all(n + 1 if self.is_pub else n)  # + the publisher (index 0)
        pubs = [lst for lst in self.listeners if isinstance(lst, _FanPub)]
        self.listeners_subs = [lst for lst in self.listeners if isinstance(lst, FanSub)]
        self.nsubs = len(self.listeners_subs)
        self.fan.nsubs = self.nsubs
        if self.is_pub:
            if pubs:
                self.pub = pubs[0].conn
                self.tally.opened -= 1  # "connections" counts the subscribers only
            else:
                self.tally.failed -= 1
                self.tally.error("the publisher could not connect")
            self.tally.requested -= 1
        c = self.coord
        if c is not None:
            c.subs[c.index] = self.nsubs
            c.connected[c.index] = 1

    async def ready_to_start(self) -> bool:
        c = self.coord
        if c is None:
            return True
        deadline = perf() + self.cfg.open_timeout + self.cfg.duration
        if self.is_pub:
            # every worker's subscribers are in the room before the first publish
            while any(c.connected[i] == 0 for i in range(c.nprocs)) and perf() < deadline \
                    and not self._stop_requested():
                await asyncio.sleep(0.005)
            if self.pub is None or self._stop_requested() or perf() >= deadline:
                c.state[0] = 2
                return False
            c.state[0] = 1
            return True
        while c.state[0] == 0 and perf() < deadline and not self._stop_requested():
            await asyncio.sleep(0.005)
        return bool(c.state[0] == 1)

    def _grow(self, n: int) -> None:
        while n >= len(self.reached):  # doubling: amortised O(1) per publish
            self.reached.extend(array("I", bytes(4 * len(self.reached))))

    def done_everywhere(self) -> int:
        return self.done_pubs if self.coord is None else self.coord.global_done()

    def publish(self) -> bool:
        seq = len(self.sent_at)
        if seq >= self.max_pubs or self.pub is None or self.pub.closed:
            return False
        self._grow(seq)
        self.sent_at.append(perf())
        try:
            self.pub.send(self.payload)
        except Exception as exc:
            self.tally.error(_describe(exc))
            return False
        return True

    def fill_window(self) -> None:
        done = self.done_everywhere()
        while len(self.sent_at) - done < self.cfg.window and self.publish():
            pass

    def completed(self, seq: int) -> None:
        now = perf()
        self.done_pubs += 1
        c = self.coord
        if c is None:
            self.tally.latency.add(now - self.sent_at[seq])
            if self.running and not self.cfg.rate:
                self.publish()
            return
        self.comp.append(now)
        c.completed[c.index] = self.done_pubs
        if self.is_pub and self.running and not self.cfg.rate:
            self.fill_window()

    async def _poll(self) -> None:
        # the other workers' progress arrives through shared memory, not as callbacks
        while self.running:
            await asyncio.sleep(0.0005)
            if self.running:
                self.fill_window()

    def start(self) -> None:
        if not self.is_pub:
            return
        if self.nsubs == 0 and (self.coord is None or self.coord.global_done() == 0 and
                                not any(self.coord.subs[i] for i in range(self.coord.nprocs))):
            self.tally.error("no subscriber could connect")
            self.done.set()
            return
        if not self.cfg.rate:
            self.fill_window()
            if self.coord is not None:
                self._poller = asyncio.ensure_future(self._poll())

    def stop_sending(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
        c = self.coord
        if c is not None and self.is_pub:
            c.state[1] = len(self.sent_at)
            c.state[0] = 2

    def tick(self) -> None:
        if not self.is_pub or not self.cfg.rate:
            return
        due = int(self.cfg.rate * (perf() - self.t0)) - self._paced
        done = self.done_everywhere()
        while due > 0 and len(self.sent_at) - done < max(self.cfg.window, 1000):
            if not self.publish():
                break
            self._paced += 1
            due -= 1

    def published(self) -> int:
        if self.is_pub:
            return len(self.sent_at)
        return int(self.coord.state[1]) if self.coord is not None else 0

    def sync_counts(self) -> None:
        t = self.tally
        subs = self.listeners_subs
        t.received = sum(s.n for s in subs)
        t.bytes_received = t.received * self.size
        t.sent = len(self.sent_at)
        t.bytes_sent = t.sent * self.size
        if self.is_pub:
            t.extra["publishes"] = float(t.sent)
            t.extra["publishes_complete"] = float(self.done_everywhere())
        t.extra["subscribers"] = float(self.nsubs)

    def finished(self) -> bool:
        if not self.is_pub:
            return self.coord is not None and self.coord.state[0] == 2
        return self.done_everywhere() >= self.max_pubs

    def settled(self) -> bool:
        if not self.is_pub:
            return self.coord is None or (self.coord.state[0] == 2 and self.done_pubs >= self.published())
        return self.done_everywhere() >= len(self.sent_at)

    def account_lost(self) -> None:
        t = self.tally
        pubs = self.published()
        alive = [s for s in self.listeners_subs if not s.conn.closed]
        missing = sum(max(0, pubs - s.n) for s in alive)
        if missing:
            t.lost = missing
            t.error("fan-out deliveries missing at the end of the run", missing)
        if self.coord is not None:
            t.fan_comp = self.comp if self.nsubs else None
            t.fan_sent = self.sent_at if self.is_pub else None


# ------------------------------------------------------------------ chat


class _ChatConn(_Base):
    __slots__ = ("me", "room", "left", "n", "sends", "seq")
    me: int
    room: int
    left: int
    n: int
    sends: deque[float]
    seq: int

    def on_message(self, ws: Connection, msg: Message) -> None:
        load: ChatLoad = self.load
        try:
            obj = orjson.loads(memoryview(msg))
        except orjson.JSONDecodeError:
            load.tally.error("chat: a message that is not JSON")
            return
        if not isinstance(obj, dict):
            load.tally.error("chat: a JSON message that is not an object")
            return
        content = obj.get("content")
        if content is None:
            if obj.get("type") == "error":
                load.tally.error(f"chat: server error {obj.get('message')!r}")
            return  # user_joined, user_left, ...
        if not isinstance(content, str) or not content.startswith(load.nonce):
            return  # history from before this run
        self.n += 1
        parts = content.split(":", 3)
        if len(parts) < 3 or not parts[1].isdigit():
            load.tally.error("chat: a message whose content this run did not send")
            return
        if int(parts[1]) != self.me:
            return
        now = perf()
        if self.sends:
            self.load.tally.latency.add(now - self.sends.popleft())
        if "id" not in obj or "userId" not in obj or "timestamp" not in obj:
            load.tally.error("chat: a message without id, userId or timestamp")
        if not load.cfg.rate and self.left > 0 and load.running:
            load.send_one(self)
        elif not load.cfg.rate:
            self.finished_ok = True


class ChatLoad(Load):
    """The chat example's protocol: rooms of ``room_size`` members; each member sends
    ``{"content": ...}`` and every member (sender included) receives
    ``{"id", "userId", "content", "timestamp"}``. Latency is send to the sender's own copy."""

    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        self.nonce = "b" + os.urandom(4).hex()
        self.filler = payload_for(self.cfg).decode("ascii")
        base = self.factory.target.split("?", 1)[0].rstrip("/")
        self.base = base
        self.room_base = 0
        self._paced = 0
        self._rr = 0
        self.room_members: Counter[int] = Counter()

    def target_for(self, index: int) -> str:
        room = self.room_base + index // self.cfg.room_size
        return f"{self.base}/bench-{self.nonce}-{room}"

    def make_listener(self, index: int) -> _ChatConn:
        c = _ChatConn(self)
        c.me = index
        c.room = index // self.cfg.room_size
        c.left = self.num
        c.n = 0
        c.seq = 0
        c.sends = deque()
        return c

    async def open_all(self, n: int) -> None:
        await super().open_all(n)
        for lst in self.listeners:
            self.room_members[lst.room] += 1

    def send_one(self, c: _ChatConn) -> bool:
        c.left -= 1
        c.seq += 1
        c.sends.append(perf())
        body = orjson.dumps({"content": f"{self.nonce}:{c.me}:{c.seq}:{self.filler}"})
        try:
            c.conn.send(body, binary=False)  # TEXT, without decoding the JSON again
        except Exception as exc:
            self.tally.error(_describe(exc))
            return False
        self.tally.sent += 1
        self.tally.extra["expected_deliveries"] = self.tally.extra.get("expected_deliveries", 0.0) + \
            self.room_members[c.room]
        return True

    def start(self) -> None:
        if self.cfg.rate:
            return
        for c in self.listeners:
            self.send_one(c)

    def tick(self) -> None:
        if not self.cfg.rate:
            return
        due = int(self.cfg.rate * (perf() - self.t0)) - self._paced
        lsts = self.listeners
        while due > 0 and lsts:
            live = [c for c in lsts if c.left > 0 and not c.conn.closed]
            if not live:
                break
            c = lsts[self._rr % len(lsts)]
            self._rr += 1
            if c.left <= 0 or c.conn.closed:
                continue
            if not self.send_one(c):
                break
            self._paced += 1
            due -= 1

    def sync_counts(self) -> None:
        t = self.tally
        t.received = sum(c.n for c in self.listeners)
        t.bytes_sent = t.sent * (len(self.filler) + 30)
        t.bytes_received = t.received * (len(self.filler) + 120)

    def finished(self) -> bool:
        if self.cfg.rate:
            done_sending = all(c.left <= 0 or c.conn.closed for c in self.listeners)
            return done_sending and self.settled()
        return all(c.finished_ok or c.conn.closed for c in self.listeners)

    def settled(self) -> bool:
        return self.tally.received >= self.tally.extra.get("expected_deliveries", 0.0)

    def account_lost(self) -> None:
        t = self.tally
        missing = int(t.extra.get("expected_deliveries", 0.0)) - t.received
        if missing > 0 and not t.dropped:
            t.lost = missing
            t.error("chat deliveries missing at the end of the run", missing)
        t.extra["rooms"] = float(len(self.room_members))


LOADS: dict[str, type[Load]] = {"echo": EchoLoad, "storm": StormLoad, "fanout": FanoutLoad, "chat": ChatLoad}


async def run_load(cfg: BenchConfig, stop: Callable[[], bool] = lambda: False,
                   progress: Callable[[Tally], None] | None = None, first_index: int = 0,
                   server_pid: int = 0, coord: Coord | None = None) -> Tally:
    """Run one process's share of the load on the running loop and return its tally."""
    load: Load
    if cfg.mode == "fanout":
        load = FanoutLoad(cfg, stop, progress, server_pid, coord=coord)
    else:
        load = LOADS[cfg.mode](cfg, stop, progress, server_pid)
    if isinstance(load, ChatLoad):
        load.room_base = first_index // cfg.room_size
    return await load.run()
