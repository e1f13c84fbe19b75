"""A client connection that survives drops: ``await fastws.connect(url, reconnect=True)``.

Theory of operation
-------------------
A :class:`fastws.ReconnectingConnection` owns at most one live :class:`~fastws.Connection` at a time
and replaces it when it is lost. The rules:

1. *Who decides to reconnect.* The live connection's close callback (or a ``recv``/``send``
   that finds it closed) hands it to ``_lost()``. A close that
   ``close()`` asked for ends everything. Otherwise the close code
   decides: a code in ``reconnect_codes`` (default :data:`RECONNECT_CODES`: 1001 going away,
   1005 no code, 1006 dropped, 1011 server error or a keepalive timeout, 1012 restart, 1013 try
   again later, 1014 bad gateway) starts a reconnection; any other code (1000: the server is
   done with us; 1002/1003/1007/1009/1010: the same bytes would fail again; 1008 policy; 3xxx
   and 4xxx: the application's refusals, such as an expired token) is final.
2. *Backoff.* Attempt n (0-based) of one outage waits ``uniform(0, min(backoff_max,
   backoff_initial * backoff_factor ** n))`` seconds ("full jitter": clients dropped together
   come back spread out), the first one included. An attempt fails on a network error or a
   refused handshake; a refusal with an HTTP status other than 408, 425, 429 or 5xx, and a TLS
   certificate that does not verify, are final. ``Retry-After`` on a 429/503 is honoured up to
   ``backoff_max``. ``max_attempts`` failed attempts in a row, or an outage longer than
   ``reconnect_timeout`` seconds, give up: :class:`fastws.ReconnectFailed`.
3. *Reading.* ``recv`` reads the connection it was reading until that one raises (so what had
   arrived before a drop is still delivered), then moves to the live one. ``send`` always
   goes to the live one; during an outage it waits for it up to ``send_timeout`` seconds.
   A server's CLOSE waits in the connection's queue behind the messages before it, so a
   close is noticed by a ``recv`` (or a ``send``): keep a reader running (``async for``), as
   with any connection, and hooks and reconnections happen as soon as it arrives.
4. *Resume* (``resume=True``, for rooms with ``history``). Every message envelope
   ``{"epoch": E, "offset": n, "data": ...}`` moves the position to ``E:n``; a
   reconnection asks for ``?since=E:n``. The first message on such a connection is the room's
   answer: a ``history`` frame is unpacked into its envelopes, a ``reset`` frame is passed on
   as it is (and parsed into ``last_reset``, a :class:`fastws.HistoryReset`), an ``error`` frame is
   passed on. Offsets are checked: one already delivered is dropped (counted in
   ``duplicates``); a live envelope past the next offset means the room dropped messages for
   this client (a slow consumer), so the client reconnects at once and catches up from the
   log. A gap inside a ``history`` frame (the log cannot fill it) and an epoch that changes
   without a ``reset`` are passed on as a ``reset`` frame the client makes (reasons ``"gap"``
   and ``"epoch"``). Rooms that batch (``{"type": "batch", "messages": [...]}``) have their
   batches unpacked, so every envelope is seen and counted.

Without an envelope seen yet there is no position to resume from: a reconnection then joins
like a new client (what was broadcast during the outage is not replayed).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import ssl as _ssl
from collections import deque
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

import orjson

from fastws._protocol import Connection
from fastws.exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidHandshake,
    ReconnectFailed,
)

if TYPE_CHECKING:
    from fastws._message import Message
    from fastws.client import connect
    from fastws.handshake import Headers

__all__ = ["RECONNECT_CODES", "HistoryReset", "ReconnectingConnection"]

logger = logging.getLogger("fastws.client")

#: Close codes after which a reconnecting client tries again (everything else is final).
RECONNECT_CODES: frozenset[int] = frozenset({1001, 1005, 1006, 1011, 1012, 1013, 1014})

# The envelope as fastws' rooms write it (orjson, keys in this order): matched on the prefix only,
# so tracking the position costs no JSON parse of the data. Logs written before the envelope lost
# its "type" key replay entries that still have it.
_ENVELOPE = re.compile(r'\{(?:"type":"message",)?"epoch":"([0-9a-f]{1,32})","offset":([0-9]{1,18}),"data":')
# what a socket excluded from a logged broadcast gets: the offset, no message
_SKIP = re.compile(r'\{"type":"skip","epoch":"([0-9a-f]{1,32})","offset":([0-9]{1,18})\}')
_NOT_RETRYABLE_STATUS = frozenset(range(300, 500)) - {408, 425, 429}


class HistoryReset:
    """A reset a resuming client passed on: the messages it missed cannot be replayed. The
    frame itself comes through ``recv()`` as plain text where the gap is (``{"type": "reset",
    "epoch", "offset", "reason"}``, as the server sent it, or made by the client); this is its
    parsed form, kept in ``ws.last_reset``. Rebuild your state from what the room sends next.

    Attributes:
        text: the frame as ``recv()`` returned it.
        epoch: the room log's epoch from now on.
        offset: the newest offset in the log (the next envelope carries ``offset + 1``).
        reason: ``"epoch"`` (the log was lost or replaced), ``"trimmed"`` (the missed entries
            are gone), ``"ahead"`` (the client's offset is past the log's end), or, found by the
            client, ``"gap"`` (a catch-up frame with a hole in it).
        previous: the position the client had (``"epoch:offset"``), or None.
    """

    __slots__ = ("text", "epoch", "offset", "reason", "previous")

    def __init__(self, text: str | None, epoch: str, offset: int, reason: str, previous: str | None) -> None:
        if text is None:
            text = orjson.dumps({"type": "reset", "epoch": epoch, "offset": offset, "reason": reason}).decode()
        self.text, self.epoch, self.offset, self.reason, self.previous = text, epoch, offset, reason, previous

    def __repr__(self) -> str:
        return f"HistoryReset(epoch={self.epoch!r}, offset={self.offset}, reason={self.reason!r}, previous={self.previous!r})"


def _closed_exc(code: int, reason: str) -> ConnectionClosed:
    cls = ConnectionClosedOK if code in (1000, 1001) else ConnectionClosedError
    return cls(code, reason)


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, InvalidHandshake):
        return exc.status not in _NOT_RETRYABLE_STATUS
    if isinstance(exc, _ssl.SSLCertVerificationError):
        return False  # the same certificate will fail the same way
    return isinstance(exc, OSError)


def _retry_after(exc: BaseException) -> float:
    """Seconds a 429/503 asked us to wait (0 when it did not say)."""
    if not isinstance(exc, InvalidHandshake) or exc.status not in (429, 503) or exc.headers is None:
        return 0.0
    value = exc.headers.get("retry-after")
    return float(value) if value is not None and value.strip().isdigit() else 0.0


Hook = Callable[..., Any]


class ReconnectingConnection:
    """A client connection whose ``recv``, ``async for`` and ``send`` outlive the TCP
    connections under it. Made by ``await fastws.connect(url, reconnect=True, ...)`` or
    ``async with fastws.connect(url, reconnect=True, ...) as ws`` (see the module docstring for
    the rules, and :class:`fastws.connect` for the options).

    Attributes:
        reconnects: successful reconnections so far.
        attempts: connection attempts so far (the first one included).
        resumed: after the last reconnection with ``resume=True``: True (caught up from the
            room's history), False (told to reset), None (not resumed, or not known yet).
        last_reset: the last :class:`fastws.HistoryReset` delivered, or None.
        duplicates: envelopes dropped because their offset had already been delivered.
        epoch, offset: the position (the last envelope delivered), or None and 0.
    """

    def __init__(self, factory: connect[Any], *, resume: bool = False, reconnect_timeout: float | None = None,
                 send_timeout: float | None = 10.0, reconnect_codes: Collection[int] = RECONNECT_CODES,
                 on_reconnect: Hook | None = None, on_disconnect: Hook | None = None) -> None:
        self._factory = factory
        self.url = factory.url
        self.resume = resume
        self.reconnect_timeout = reconnect_timeout
        self.send_timeout = send_timeout
        self.reconnect_codes = frozenset(reconnect_codes)
        self.on_reconnect = on_reconnect
        self.on_disconnect = on_disconnect
        self.reconnects = 0
        self.attempts = 0
        self.resumed: bool | None = None
        self.last_reset: HistoryReset | None = None
        self.duplicates = 0
        self.epoch: str | None = None
        self.offset = 0
        self._conn: Connection | None = None       # the live connection (sends go here)
        self._rconn: Connection | None = None      # the one recv reads (the live one, or one it drains)
        self._catchup: set[Connection] = set()    # their first message answers our ?since=
        self._pending: deque[str | bytes] = deque()
        self._up = asyncio.Event()                 # set: a live connection, or closed for good
        self._done = asyncio.Event()               # set: closed for good
        self._final: ConnectionClosed | None = None
        self._closing = False
        self._gap = False
        self._task: asyncio.Task[None] | None = None
        self._hooks: set[asyncio.Task[Any]] = set()
        self._close_code = 1006
        self._close_reason = ""
        if resume:
            since = _query_since(factory.target)
            if since is not None:
                self.epoch, self.offset = since

    # ------------------------------------------------------------ state

    @property
    def connection(self) -> Connection | None:
        """The live :class:`~fastws.Connection`, or None during an outage."""
        return self._conn

    @property
    def open(self) -> bool:
        """True while a live connection is open."""
        return self._conn is not None and self._conn.open

    @property
    def closed(self) -> bool:
        """True once closed for good (``close()``, a final close code, or reconnecting gave up)."""
        return self._final is not None

    @property
    def close_code(self) -> int:
        """The close code of the last connection lost (1006 until one is)."""
        return self._close_code

    @property
    def close_reason(self) -> str:
        return self._close_reason

    @property
    def position(self) -> str | None:
        """``"epoch:offset"`` of the last envelope delivered (what ``?since=`` sends), or None.
        Keep it to resume in another process: ``connect(url + "?since=" + position, ...)``."""
        return f"{self.epoch}:{self.offset}" if self.epoch is not None else None

    @property
    def subprotocol(self) -> str | None:
        return self._conn.subprotocol if self._conn is not None else None

    @property
    def response_headers(self) -> Headers | None:
        return self._conn.response_headers if self._conn is not None else None

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open" if self.open else "reconnecting"
        return f"<ReconnectingConnection {self.url} {state} reconnects={self.reconnects}>"

    # ------------------------------------------------------------ connecting

    def _target(self) -> str:
        target = self._factory.target
        if not self.resume or self.epoch is None:
            return target
        path, _, query = target.partition("?")
        pairs = [p for p in query.split("&") if p and not p.startswith("since=")]
        pairs.append(f"since={self.epoch}:{self.offset}")
        return path + "?" + "&".join(pairs)

    async def _dial(self, first_delay: bool) -> Connection:
        """Connect, retrying by the backoff rules; raises the last error when giving up."""
        f = self._factory
        loop = asyncio.get_running_loop()
        started = loop.time()
        delays = failures = 0
        wait_at_least = 0.0
        last: OSError | InvalidHandshake | None = None
        while True:
            if first_delay or failures:
                delay = max(f._delay(delays), min(wait_at_least, f.backoff_max))
                delays += 1
                if (last is not None and self.reconnect_timeout is not None
                        and loop.time() + delay - started > self.reconnect_timeout):
                    raise last
                await asyncio.sleep(delay)
            self.attempts += 1
            try:
                return await f._open(self._target())
            except (OSError, InvalidHandshake) as exc:
                if not _retryable(exc):
                    raise
                failures += 1
                if f.max_attempts is not None and failures >= f.max_attempts:
                    raise
                if self.reconnect_timeout is not None and loop.time() - started >= self.reconnect_timeout:
                    raise
                wait_at_least = _retry_after(exc)
                last = exc
                logger.info("fastws: connecting to %s failed (%s); retrying", self.url, exc)

    async def _start(self) -> ReconnectingConnection:
        """The first connection (retried by the same rules); raises what the last attempt raised."""
        conn = await self._dial(first_delay=False)
        self._install(conn, catchup=self.resume and self.epoch is not None)
        return self

    def _install(self, conn: Connection, catchup: bool) -> None:
        self._conn = conn
        if self._rconn is None:
            self._rconn = conn
        if catchup:
            self._catchup.add(conn)
        self._up.set()
        conn.add_close_callback(lambda: self._lost(conn))

    def _lost(self, conn: Connection) -> None:
        """``conn`` is closed or closing: reconnect, or end, by rule 1."""
        if conn is not self._conn:
            return
        self._conn = None
        self._up.clear()
        self._close_code, self._close_reason = conn.close_code, conn.close_reason
        if self._closing:
            return
        exc = _closed_exc(conn.close_code, conn.close_reason)
        gap, self._gap = self._gap, False
        if not gap and conn.close_code not in self.reconnect_codes:
            self._finish(exc)
            self._spawn_hook(self.on_disconnect, exc)
            return
        self._task = asyncio.get_running_loop().create_task(self._recover(exc, first_delay=not gap))

    async def _recover(self, exc: ConnectionClosed, first_delay: bool) -> None:
        await self._call_hook(self.on_disconnect, exc)
        try:
            conn = await self._dial(first_delay)
        except (OSError, InvalidHandshake) as last:
            failed = ReconnectFailed(f"gave up reconnecting to {self.url} after {self.attempts} attempts "
                                     f"in all: {last}", self.attempts)
            failed.__cause__ = last
            self._finish(failed)
            return
        self.reconnects += 1
        self.resumed = None
        self._install(conn, catchup=self.resume and self.epoch is not None)
        await self._call_hook(self.on_reconnect)

    def _finish(self, exc: ConnectionClosed) -> None:
        if self._final is None:
            self._final = exc
        self._up.set()
        self._done.set()

    def _spawn_hook(self, hook: Hook | None, *args: Any) -> None:
        if hook is not None:
            task = asyncio.get_running_loop().create_task(self._call_hook(hook, *args))
            self._hooks.add(task)
            task.add_done_callback(self._hooks.discard)

    async def _call_hook(self, hook: Hook | None, *args: Any) -> None:
        if hook is None:
            return
        try:
            r = hook(self, *args)
            if inspect.isawaitable(r):
                await r
        except Exception:
            logger.exception("fastws: %s hook raised", getattr(hook, "__name__", "client"))

    # ------------------------------------------------------------ receiving

    async def recv(self) -> str | bytes:
        """The next message: across reconnections, and with ``resume=True`` each missed
        envelope once, in order (a ``reset`` frame where they cannot be; see ``last_reset``).

        Raises:
            ConnectionClosedOK: after ``close()``, or the server closed with 1000.
            ConnectionClosedError: the server closed with a final error code (1008, 4xxx, ...).
            ReconnectFailed: reconnecting gave up (its ``__cause__`` is the last attempt's error).
        """
        while True:
            if self._pending:
                return self._pending.popleft()
            conn = self._rconn
            if conn is None:
                conn = self._conn
                if conn is None:
                    if self._final is not None:
                        raise self._final.with_traceback(None)
                    await self._up.wait()
                    continue
                self._rconn = conn
            try:
                msg = await conn.recv()
            except ConnectionClosed:
                if self._rconn is conn:
                    self._rconn = None
                self._catchup.discard(conn)
                self._lost(conn)
                continue
            if not self.resume:
                return msg
            self._take(conn, msg)

    def __aiter__(self) -> ReconnectingConnection:
        return self

    async def __anext__(self) -> str | bytes:
        try:
            return await self.recv()
        except ConnectionClosedOK:
            raise StopAsyncIteration from None

    def _take(self, conn: Connection, msg: str | bytes) -> None:
        """Resume bookkeeping for one message: what it gives the caller goes to ``_pending``."""
        if type(msg) is not str:
            self._pending.append(msg)
            return
        if conn in self._catchup:
            self._catchup.discard(conn)
            if self._catch_up(msg):
                return
        if not self._positioned(conn, msg):
            if msg.startswith('{"type":"batch","messages":['):
                for item in orjson.loads(msg)["messages"]:
                    text = item if type(item) is str else orjson.dumps(item).decode()
                    if not self._positioned(conn, text):
                        self._pending.append(text)
            else:
                self._pending.append(msg)

    def _positioned(self, conn: Connection, text: str) -> bool:
        """Take ``text`` if it is an envelope or a skip frame (True); False for anything else."""
        m = _ENVELOPE.match(text)
        if m is not None:
            self._envelope(conn, text, m.group(1), int(m.group(2)), live=True)
            return True
        m = _SKIP.fullmatch(text)
        if m is not None:
            self._envelope(conn, None, m.group(1), int(m.group(2)), live=True)
            return True
        return False

    def _catch_up(self, msg: str) -> bool:
        """The answer to ``?since=``; False when ``msg`` is not one (a server without history)."""
        if msg.startswith('{"type":"history"'):
            frame = orjson.loads(msg)
            self.resumed = True
            if frame.get("epoch") != self.epoch:
                self._reset(frame.get("epoch", ""), int(frame.get("since", 0)), "epoch", None)
            for env in frame.get("messages", ()):
                self._envelope(None, orjson.dumps(env).decode(), env["epoch"], int(env["offset"]), live=False)
            return True
        if msg.startswith('{"type":"reset"'):
            frame = orjson.loads(msg)
            self.resumed = False
            self._reset(frame["epoch"], int(frame["offset"]), frame.get("reason", ""), msg)
            return True
        self.resumed = None
        if msg.startswith('{"type":"error"'):
            self._pending.append(msg)  # a malformed since, or a room without history: say so
            return True
        return False

    def _reset(self, epoch: str, offset: int, reason: str, text: str | None) -> None:
        previous = self.position
        reset = HistoryReset(text, epoch, offset, reason, previous)
        self.epoch, self.offset = epoch, offset
        self.last_reset = reset
        self._pending.append(reset.text)
        logger.info("fastws: %s: history reset (%s) from %s to %s:%d", self.url, reason, previous, epoch, offset)

    def _envelope(self, conn: Connection | None, text: str | None, epoch: str, offset: int, live: bool) -> None:
        """One envelope (``text``), or a skip frame (``text`` None: the position moves, nothing
        is delivered)."""
        if self.epoch is None:  # the first envelope: the position starts here
            self.epoch, self.offset = epoch, offset
            if text is not None:
                self._pending.append(text)
            return
        if epoch != self.epoch:
            self._reset(epoch, offset - 1, "epoch", None)
        nxt = self.offset + 1
        if offset < nxt:
            self.duplicates += 1
            return
        if offset > nxt:
            if live:
                # The room skipped messages for us (a slow consumer, or lost on the way): the log
                # has them. Drop this connection and catch up from there; what follows on it is
                # dropped too (the catch-up brings it).
                if conn is not None and conn is self._conn:
                    logger.info("fastws: %s: offset %d after %d; catching up", self.url, offset, self.offset)
                    self._gap = True
                    conn.abort()
                return
            self._reset(epoch, offset - 1, "gap", None)
        self.offset = offset
        if text is not None:
            self._pending.append(text)

    # ------------------------------------------------------------ sending

    async def _live(self) -> Connection:
        """The live connection, waiting for a reconnection up to ``send_timeout``."""
        loop = asyncio.get_running_loop()
        deadline = None if self.send_timeout is None else loop.time() + self.send_timeout
        while True:
            if self._final is not None:
                raise self._final.with_traceback(None)
            conn = self._conn
            # close_code leaves 1006 when a CLOSE has arrived, even while it waits in the queue
            # behind messages not read yet: sending there would be lost, so start over now
            if conn is not None and conn.open and conn.close_code == 1006:
                return conn
            if conn is not None:
                self._lost(conn)
                continue
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise ConnectionClosedError(1006, f"not connected: still reconnecting to {self.url} "
                                                  f"after send_timeout={self.send_timeout} s")
            try:
                await asyncio.wait_for(self._up.wait(), remaining)
            except asyncio.TimeoutError:
                continue

    async def send(self, data: str | bytes | bytearray | memoryview | Message, *, binary: bool | None = None) -> None:
        """Send on the live connection; during an outage wait for the next one up to
        ``send_timeout`` seconds. A message is sent at most once: one written just before a
        drop may be lost with the connection (a room's envelope echo tells you it arrived).

        Raises:
            ConnectionClosedError: still reconnecting after ``send_timeout``.
            ConnectionClosed, ReconnectFailed: closed for good (as ``recv``).
        """
        while True:
            conn = await self._live()
            try:
                await conn.send(data, binary=binary)
                return
            except ConnectionClosed:
                self._lost(conn)  # nothing was written: send it on the next connection

    async def ping(self, data: bytes | str | None = None) -> float:
        """Ping the live connection (waiting for one like ``send``); the round trip in seconds."""
        conn = await self._live()
        return await conn.ping(data)

    # ------------------------------------------------------------ closing

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close for good: no reconnection after this, ``recv`` raises ConnectionClosedOK."""
        self._closing = True
        self._finish(_closed_exc(code, reason))
        self._pending.clear()
        self._rconn = None
        task, self._task = self._task, None
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()  # (not from a hook it runs: that task ends by itself, closing nothing)
            await asyncio.wait({task})  # our own cancellation still propagates
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close(code, reason)
            self._close_code, self._close_reason = conn.close_code, conn.close_reason

    async def wait_closed(self) -> None:
        """Wait until closed for good (``close()``, a final close code, or giving up)."""
        await self._done.wait()

    async def __aenter__(self) -> ReconnectingConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _query_since(target: str) -> tuple[str, int] | None:
    from fastws.rooms.history import parse_since  # (fastws.rooms imports the server: not at import time)

    _, _, query = target.partition("?")
    for pair in query.split("&"):
        if pair.startswith("since="):
            return parse_since(pair[6:])
    return None

