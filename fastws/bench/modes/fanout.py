"""The ``fanout`` mode: one publisher, many subscribers in one room.

The room contract a server must implement for this mode:

* every WebSocket connection (to the URL given; all connections use the same path)
  joins ONE room as soon as its opening handshake completes;
* a message whose first byte is ``b"P"`` (:data:`PUBLISH`, 0x50) is sent, byte for byte
  and with the same opcode, to EVERY connection in the room, the publisher included;
  other messages are ignored;
* for a fair measurement: permessage-deflate off, automatic keep-alive pings off, no
  per-connection limit that drops messages at benchmark rates, and a listen backlog
  large enough for the connect phase.

Theory of operation: connection 0 is the publisher (:class:`_FanPub`, which counts its
own copies), the others are subscribers (``fastws.bench._listeners.FanSub``, in C),
which share one ``FanState``: a per-publish count of the subscribers that have it. When
the last subscriber gets publish n, the state calls :meth:`FanoutLoad.completed`, so the
latency of a publish is from its send to the moment every subscriber has it. In the
closed loop at most ``window`` publishes are in flight ahead of the slowest subscriber;
with ``--rate`` the ticker publishes at the rate, with at most ``max(window, 1000)`` in
flight. The first subscriber of each process also checks every delivery's length and
``P`` marker.

Over several processes (``--procs``) the subscribers are spread out and worker 0 also
holds the publisher. The workers coordinate through :class:`Coord`, lock-free shared
arrays with one writer per slot: worker 0 waits until every worker's subscribers are
connected before the first publish, and each worker records when its last subscriber got
each publish (``perf_counter`` is CLOCK_MONOTONIC, one clock for all processes); the
report takes the latest of them.
"""

from __future__ import annotations

import asyncio
from array import array
from typing import Any

from fastws.bench._listeners import FanState, FanSub
from fastws.bench.load import Load, _Base, _describe, payload_for, perf
from fastws.connection import Connection, Message

__all__ = ["PUBLISH", "Coord", "FanoutLoad"]

PUBLISH = 0x50  # b"P": the first byte of a publish (the room contract above)


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
