"""The ``echo`` mode: round trips against an echo server.

Each connection sends a message of ``size`` bytes (BINARY, or TEXT with ``--text``) and
expects the same number of bytes back; latency is from the send to the reply.

Theory of operation: there are three listeners, picked per run by
:meth:`EchoLoad.make_listener`:

* closed loop, one message in flight per connection (the default): the listener in C,
  ``fastws.bench._listeners.EchoConn``, which sends the next message from the reply's
  callback and appends the round trip straight to the tally's latency array;
* closed loop with ``--inflight N``: :class:`_EchoPipelined` keeps N messages in flight;
  replies come back in order, so the oldest send time in its deque is the reply's;
* open loop with ``--rate``: :class:`_EchoPaced` only receives; :meth:`EchoLoad.tick`
  sends round-robin over all connections at the rate, whatever the replies do.

The counters live on the listeners and are summed into the tally by
:meth:`EchoLoad.sync_counts`; a reply of the wrong length counts as an error, and sends
without a reply by the end of the drain count as lost.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from fastws.bench._listeners import EchoConn as _EchoHot
from fastws.bench._listeners import now as _echo_now
from fastws.bench.load import Load, _Base, _describe, payload_for, perf
from fastws.connection import Connection, Message


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
