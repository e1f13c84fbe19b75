"""The ``storm`` mode: the connection rate a server sustains.

Theory of operation: the connect phase is the measurement. :class:`StormLoad` opens
``count`` connections, either as fast as ``concurrency`` handshakes in flight allow or
paced at ``rate`` connections per second (one batch of attempts every fifth of a tick),
holds them until all are open, and closes them all; its load phase ends as soon as it
starts. The report's rate is connections opened per second of the connect phase (which
also stands in for the load phase's duration), and any message a server sends is only
counted.
"""

from __future__ import annotations

import asyncio

from fastws.bench.load import TICK, Load, Tally, _Base, perf
from fastws.connection import Connection, Message


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
