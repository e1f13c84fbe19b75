"""Rate limits: new connections per client IP, messages per connection and per user.

The token buckets and the bounded per-key table are in the Cython module
``fastws._limits``; this module parses the settings and applies them.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import re
from collections.abc import Mapping
from typing import Any

from fastws._limits import BucketTable, MessageGate, TokenBucket, monotonic
from fastws.connection import Listener
from fastws.exceptions import HandshakeError
from fastws.metrics import recorder

__all__ = ["RateLimit", "ConnectionRateLimiter", "MessageLimits", "LimitedListener"]

logger = logging.getLogger("fastws")

_UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "second": 1.0, "m": 60.0, "min": 60.0, "minute": 60.0,
          "h": 3600.0, "hour": 3600.0}
_SPEC = re.compile(r"^\s*(\d+)\s*(?:/\s*(\d*\.?\d*)\s*([a-z]*?)s?)?\s*$")
ACTIONS = ("drop", "close", "log")
NOTICE_INTERVAL = 1.0  # at most one error reply / log line per second per connection or limiter


class RateLimit:
    """``count`` events per ``per`` seconds, as a token bucket of ``burst`` tokens
    (default ``count``) refilled at ``count / per`` per second.

    Args:
        count: events allowed per period.
        per: the period in seconds.
        burst: bucket size (default: ``count``).
        action: over the limit: ``"drop"`` (messages: dropped, the sender gets
            ``message`` as a TEXT error; connections: 429), ``"close"``
            (messages: close 1008; connections: 429) or ``"log"`` (only count
            and log; nothing is refused).
        ban: seconds a key stays refused after its limit trips (0: no ban).
        message: the error text sent back for a dropped message.
    """

    __slots__ = ("count", "per", "burst", "action", "ban", "message")

    def __init__(self, count: int, per: float = 1.0, *, burst: int | None = None, action: str = "drop",
                 ban: float = 0.0, message: str = "Rate limit exceeded") -> None:
        if count < 1 or per <= 0:
            raise ValueError(f"a rate limit needs count >= 1 and per > 0 (got {count}/{per})")
        if action not in ACTIONS:
            raise ValueError(f"rate limit action must be one of {', '.join(ACTIONS)}, not {action!r}")
        if burst is not None and burst < 1:
            raise ValueError("burst must be at least 1")
        if ban < 0:
            raise ValueError("ban must be >= 0")
        self.count = int(count)
        self.per = float(per)
        self.burst = int(burst) if burst is not None else int(count)
        self.action = action
        self.ban = float(ban)
        self.message = message

    @property
    def rate(self) -> float:
        """Tokens per second."""
        return self.count / self.per

    @classmethod
    def parse(cls, value: Any) -> RateLimit | None:
        """A RateLimit from a RateLimit, a string (``"10/60s"``, ``"100/s"``, ``"5/min"``)
        or a dict (``{"count": 10, "per": 60, "action": "close", "ban": 300}``).

        Raises:
            ValueError: the spec cannot be read.
        """
        if value is None or value is False or isinstance(value, RateLimit):
            return value or None
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(value, 1.0)
        if isinstance(value, str):
            m = _SPEC.match(value.lower())
            unit = (m.group(3) or "") if m else ""
            if m is None or unit not in _UNITS:
                raise ValueError(f"invalid rate {value!r} (expected like '10/60s', '100/s' or '5/min')")
            per = float(m.group(2)) if m.group(2) else 1.0
            return cls(int(m.group(1)), per * _UNITS[unit])
        if isinstance(value, Mapping):
            kw = dict(value)
            unknown = set(kw) - {"count", "per", "burst", "action", "ban", "message", "rate"}
            if unknown:
                raise ValueError(f"unknown rate limit key(s): {', '.join(sorted(unknown))}")
            if "rate" in kw:  # {"rate": "10/60s", "ban": 30}
                if "count" in kw or "per" in kw:
                    raise ValueError("give either rate or count/per")
                base = cls.parse(kw.pop("rate"))
                assert base is not None
                kw["count"], kw["per"] = base.count, base.per
            if "count" not in kw:
                raise ValueError("a rate limit needs count (or rate)")
            return cls(**kw)
        raise ValueError(f"invalid rate limit {value!r}")

    def __repr__(self) -> str:
        return (f"RateLimit({self.count}, {self.per:g}, burst={self.burst}, action={self.action!r}, "
                f"ban={self.ban:g})")


def _retry_after(wait: float) -> str:
    return str(max(1, math.ceil(wait)))


class ConnectionRateLimiter:
    """New connections (requests) per client IP; over the limit: ``429`` with ``Retry-After``.

    Args:
        limit: the RateLimit (``action="log"`` only counts and logs).
        max_entries: hard cap on the buckets kept (idle ones are evicted first).
    """

    __slots__ = ("limit", "table", "_logged")

    def __init__(self, limit: RateLimit, max_entries: int = 100_000) -> None:
        self.limit = limit
        self.table = BucketTable(limit.rate, limit.burst, max_entries, limit.ban)
        self._logged = -1e9

    def check(self, key: str) -> None:
        """Raises ``HandshakeError(429)`` when ``key`` (a client IP key) is over the limit."""
        wait = self.table.hit(key)
        if wait:
            self.over(key, wait)

    def over(self, key: str, wait: float) -> None:
        """``key`` is over the limit by ``wait`` seconds: count it, then log (``log`` mode) or
        raise ``HandshakeError(429)`` with ``Retry-After``."""
        recorder.guard("rate_limited", "connection_rate")
        if self.limit.action == "log":
            now = monotonic()
            if now - self._logged >= NOTICE_INTERVAL:
                self._logged = now
                logger.warning("fastws: connection rate exceeded by %s (%d over the limit so far)",
                               key, self.table.limited)
            return
        raise HandshakeError(429, "Too Many Requests", [("Retry-After", _retry_after(wait))])


def user_key(user: Any) -> Any:
    """The key of a user for per-user limits: ``userId`` or ``sub`` of the claims, else None."""
    if type(user) is dict or isinstance(user, Mapping):
        key = user.get("userId", user.get("sub"))
        return str(key) if key is not None else None
    return None


class MessageLimits:
    """Per-connection and per-user message limits; wraps accepted connections.

    Args:
        per_connection: RateLimit for each connection, or None.
        per_user: RateLimit shared by all connections of one user (``ws.user``'s
            ``userId`` or ``sub``), or None.
        max_entries: cap on the per-user buckets kept.
    """

    __slots__ = ("per_connection", "per_user", "users", "_bucket_args", "logged_at", "over")

    def __init__(self, per_connection: RateLimit | None, per_user: RateLimit | None,
                 max_entries: int = 100_000) -> None:
        self.per_connection = per_connection
        self.per_user = per_user
        self.users = BucketTable(per_user.rate, per_user.burst, max_entries, per_user.ban) if per_user else None
        self._bucket_args = (per_connection.rate, per_connection.burst) if per_connection else None
        self.logged_at = -1e9  # log mode: one line a second for all connections together
        self.over = 0          # messages over a limit (all connections, every action)

    def gate(self, user: Any) -> MessageGate | None:
        """A new gate for one connection of ``user`` (None when no limit applies)."""
        key = user_key(user) if self.users is not None else None
        args = self._bucket_args
        if args is None:
            if key is None:
                return None
            return MessageGate(None, 0.0, self.users, key)
        return MessageGate(TokenBucket(*args), self.per_connection.ban, self.users, key)  # type: ignore[union-attr]

    def policy(self, ws: Any) -> Any:
        """The engine's over-limit callback for ``ws`` (see ``Connection.set_message_gate``)."""
        return _over_limit(ws, ws.message_gate, self)

    def action_for(self, gate: MessageGate) -> RateLimit:
        """The RateLimit whose action applies when ``gate`` refuses (the connection's first)."""
        c = self.per_connection
        if c is not None and gate.bucket is not None and gate.bucket.tokens < 1:
            return c
        return self.per_user or c  # type: ignore[return-value]


def _over_limit(ws: Any, gate: MessageGate, limits: MessageLimits) -> Any:
    """Apply the action for a refused message: True delivers it anyway (log mode), False drops
    it, ``(1008, reason)`` drops it and closes the connection behind the messages already read.

    Called by the engine (``ws.set_message_gate``) inside the read callback: it never raises.
    ``drop`` skips the message and sends the limit's error text (at most once a second);
    ``close`` closes with 1008 (the handler's ``recv``/``async for`` then ends with
    ``ConnectionClosedError``); ``log`` logs (at most once a second) and delivers the message.
    """
    limit = limits.action_for(gate)
    limits.over += 1
    recorder.guard("rate_limited", "message_rate" if limit is limits.per_connection else "user_message_rate")
    if limit.action == "log":
        now = monotonic()
        if now - limits.logged_at >= NOTICE_INTERVAL:
            limits.logged_at = now
            logger.warning("fastws: message rate exceeded on %s (%d messages over the limits so far)",
                           ws.remote_address, limits.over)
        return True
    if limit.action == "close":
        return (1008, "Rate limit exceeded")
    if gate.notice_due(NOTICE_INTERVAL) and ws.open:
        try:
            ws.send(limit.message)
        except Exception:  # closing or a peer that does not read: the drop stands
            pass
    return False


class LimitedListener(Listener):
    """Wraps a listener: calls ``on_open(ws)`` before its ``on_connect`` and, when
    ``limits`` are given, sets the connection's message gate there (the engine
    checks it before each ``on_message``)."""

    __slots__ = ("inner", "limits", "on_open", "open_task")

    def __init__(self, inner: Any, limits: MessageLimits | None, on_open: Any = None) -> None:
        self.inner = inner
        self.limits = limits
        self.on_open = on_open
        self.open_task: asyncio.Future[Any] | None = None

    def on_connect(self, ws: Any) -> None:
        limits = self.limits
        if limits is not None:
            gate = limits.gate(ws.user)
            if gate is not None:
                ws.set_message_gate(gate, limits.policy)
        if self.on_open is not None:
            result = self.on_open(ws)
            if inspect.isawaitable(result):
                # a listener cannot await: on_open runs as a task (kept referenced here);
                # messages that came with the handshake may be handled before it finishes
                self.open_task = asyncio.ensure_future(result)
        cb = getattr(self.inner, "on_connect", None)
        if cb is not None:
            cb(ws)

    def on_message(self, ws: Any, msg: Any) -> None:
        self.inner.on_message(ws, msg)

    def on_ping(self, ws: Any, payload: bytes) -> None:
        cb = getattr(self.inner, "on_ping", None)
        if cb is not None:
            cb(ws, payload)

    def on_close(self, ws: Any, code: int, reason: str) -> None:
        cb = getattr(self.inner, "on_close", None)
        if cb is not None:
            cb(ws, code, reason)

    def on_pause_writing(self, ws: Any) -> None:
        cb = getattr(self.inner, "on_pause_writing", None)
        if cb is not None:
            cb(ws)

    def on_drain(self, ws: Any) -> None:
        cb = getattr(self.inner, "on_drain", None)
        if cb is not None:
            cb(ws)
