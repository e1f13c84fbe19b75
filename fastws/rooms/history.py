"""A room's message log: offsets, an epoch, and catching up a client that reconnects.

Theory of operation
-------------------
A room with ``history = N`` (class attribute; ``history_ttl`` adds an age limit) keeps its
last N broadcasts in an ordered log:

1. *Offsets and the epoch.* Every broadcast to the whole room gets the next offset (1, 2, ...)
   and leaves as an envelope ``{"epoch": E, "offset": n, "data": ...}`` (those three keys, in
   that order: about 40 bytes on top of the message). The epoch (8 hex digits) is a random id
   made when the log is created; it changes whenever the log is lost
   (a new database file), so a client never trusts offsets from another life of the room.
2. *Durable before visible.* An entry is written to the room's storage (the ``_fastws_log``
   table of its SQLite file) in the same batch as the writes made before it, and the envelope
   goes through the output gate like any message: a client never holds an offset that a crash
   could take back, so after a restart the log always reaches at least as far as any client.
3. *Catching up.* A client that connects with ``?since=E:n`` (the last envelope it saw) gets,
   when its socket joins and before anything newer, one frame holding every entry after n:
   ``{"type": "history", "epoch": E, "since": n, "offset": last, "messages": [envelopes]}``
   (possibly none). When the log cannot serve it (another epoch, entries already trimmed, an
   offset the log never reached) it gets ``{"type": "reset", "epoch": E, "offset": last,
   "reason": ...}`` instead and must rebuild its state from what the room sends on connect.
   A malformed ``since`` gets ``{"type": "error", "reason": ...}`` and a normal join. The
   room's ``on_connect`` sees the outcome in ``ws.resumed`` (None, True or False).
4. *Memory.* The entries live in memory while the room is awake (read back from its file when
   it wakes) and on disk; both are trimmed to the newest ``history`` entries (and to
   ``history_ttl`` seconds) as new ones come.
5. *In a cluster* the durable side is a Redis stream, ``<room>:log`` (ids ``<offset>-1``), and
   the epoch and last offset are in the room's meta hash: the owner's fenced flush adds and
   trims entries in the same script as the writes made before them, and a new owner reads the
   log back when the room wakes on it, so offsets go on from the last committed one whichever
   node owns the room, and a deposed owner can add nothing.

A logged broadcast that excludes sockets (``exclude=``) gives each of them
``{"type": "skip", "epoch": E, "offset": n}`` instead (the offset, not the data), so every socket
sees contiguous offsets; a client that resumes later gets the entry itself in its catch-up.

Entries logged by fastws 0.x before the envelope lost its ``"type": "message"`` key (and its
16-digit epoch) are replayed as they were stored; both clients read either form.

What is not logged: broadcasts to a tag (they do not go to the whole room) and bytes messages
(an envelope is JSON text); they are sent as before.
"""

from __future__ import annotations

import re
import secrets
import time
from collections import deque
from itertools import islice
from typing import Any

import orjson

__all__ = ["History", "parse_since"]

MAX_HISTORY = 1_000_000
_SINCE = re.compile(r"([0-9a-f]{1,32}):([0-9]{1,18})")


def parse_since(value: str) -> tuple[str, int] | None:
    """``"<epoch>:<offset>"`` -> (epoch, offset), or None when malformed."""
    m = _SINCE.fullmatch(value)
    if m is None:
        return None
    return m.group(1), int(m.group(2))


class History:
    """The in-memory side of one room's log (its storage holds the durable side)."""

    __slots__ = ("limit", "ttl", "epoch", "last", "entries", "loaded", "pending", "error")

    def __init__(self, limit: int, ttl: float = 0.0) -> None:
        if not 0 < limit <= MAX_HISTORY:
            raise ValueError(f"Room.history must be 1..{MAX_HISTORY} messages, got {limit}")
        if ttl < 0:
            raise ValueError("Room.history_ttl must be >= 0 seconds")
        self.limit = limit
        self.ttl = ttl
        self.epoch = ""
        self.last = 0                     # offset of the newest entry (0: none yet)
        self.entries: deque[tuple[int, float, str]] = deque()  # (offset, time, envelope), oldest first
        self.loaded = False
        self.pending: list[Any] = []      # broadcasts made before the log was read back
        self.error = ""                   # why reading it back failed (until the room wakes again)

    def load(self, epoch: str | None, last: int, rows: list[tuple[int, float, str]]) -> bool:
        """Take what storage holds (rows oldest first). Returns True when a new epoch was made."""
        self.loaded = True
        self.entries = deque(rows)
        if epoch:
            self.epoch = epoch
            self.last = max(last, rows[-1][0] if rows else 0)
            return False
        self.epoch = secrets.token_hex(4)
        self.last = 0
        self.entries.clear()
        return True

    def append(self, message: Any, now: float | None = None) -> tuple[int, float, str]:
        """Log ``message`` (a str or a JSON value): its offset, time and envelope text."""
        ts = time.time() if now is None else now
        self.last += 1
        env = orjson.dumps({"epoch": self.epoch, "offset": self.last, "data": message}).decode("utf-8")
        entry = (self.last, ts, env)
        self.entries.append(entry)
        return entry

    def skip_frame(self) -> str:
        """What a socket excluded from the newest entry gets: its offset, without its data."""
        return f'{{"type":"skip","epoch":"{self.epoch}","offset":{self.last}}}'

    def trim(self, now: float | None = None) -> int:
        """Drop entries past the limits; the offset of the oldest one kept (last + 1 if none)."""
        entries = self.entries
        while len(entries) > self.limit:
            entries.popleft()
        if self.ttl > 0:
            horizon = (time.time() if now is None else now) - self.ttl
            while entries and entries[0][1] < horizon:
                entries.popleft()
        return entries[0][0] if entries else self.last + 1

    def resume(self, since: str) -> tuple[str, bool | None]:
        """The frame for a client that saw everything up to ``since``, and whether it resumed
        (True), must reset (False) or sent a malformed value (None)."""
        if self.error:
            return _error("this room's history is unavailable"), None
        parsed = parse_since(since)
        if parsed is None:
            return _error("since must be <epoch>:<offset>, as in the last message's envelope"), None
        epoch, offset = parsed
        if epoch != self.epoch:
            return self._reset("epoch"), False
        if offset > self.last:
            return self._reset("ahead"), False
        first = self.trim()
        if offset + 1 < first:
            return self._reset("trimmed"), False
        entries = self.entries
        # entries are consecutive: the ones after ``offset`` start at this index
        start = len(entries) - (self.last - offset)
        messages = ",".join(e[2] for e in islice(entries, start, None)) if offset < self.last else ""
        head = orjson.dumps({"type": "history", "epoch": self.epoch, "since": offset, "offset": self.last})
        return head[:-1].decode("utf-8") + ',"messages":[' + messages + "]}", True

    def _reset(self, reason: str) -> str:
        return orjson.dumps({"type": "reset", "epoch": self.epoch, "offset": self.last,
                             "reason": reason}).decode("utf-8")


def _error(reason: str) -> str:
    return orjson.dumps({"type": "error", "reason": reason}).decode("utf-8")


def no_history_error() -> str:
    return _error("this room keeps no history")
