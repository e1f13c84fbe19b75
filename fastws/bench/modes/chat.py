"""The ``chat`` mode: the chat example's protocol, room by room.

Theory of operation: connections are grouped into rooms of ``room_size`` members, each
room a path of its own under the URL (``.../bench-NONCE-ROOM``), so rooms never span two
worker processes (the orchestrator splits the connections by whole rooms). Every member
sends ``{"content": ...}`` as TEXT and every member of the room, the sender included,
receives ``{"id", "userId", "content", "timestamp"}``. The content starts with this run's
nonce and names the sender, so history from earlier runs is ignored and each member
recognises its own copy: latency is from the send to the sender's own copy, and in the
closed loop that copy triggers the member's next send. Other server messages
(``user_joined``, ``user_left``) are skipped, errors counted.

Expected deliveries are counted per send (one for each member of the room that connected);
what has not arrived by the end of the drain counts as lost, unless connections were dropped.
"""

from __future__ import annotations

import os
from collections import Counter, deque
from typing import Any

import orjson

from fastws.bench.load import Load, _Base, _describe, payload_for, perf
from fastws.connection import Connection, Message


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
