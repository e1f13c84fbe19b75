"""Rooms: the :class:`Room` base class, its sockets, and the live entry (mailbox, output gate).

Theory of operation
-------------------
1. A *slot* (:class:`RoomSlot`) is the registry's entry for one (room class, name): it outlives
   the :class:`Room` instance. It holds the room's sockets (one :class:`RoomSocket` record each:
   the engine listener, its tags and attachment), the mailbox, the output gate, the alarm timer.
   A hibernated room is a slot whose instance is ``None``.
2. Mailbox: every event (connect, message, close, request, alarm) goes through
   :meth:`RoomSlot.deliver`. When the room is idle the event runs at once, inside the engine's
   callback (no task, no queue); when its hook returns a coroutine, a task runs it and then drains
   the events that arrived meanwhile, one at a time, in arrival order. So room code never sees
   interleaved state, also across ``await`` s; different rooms run concurrently.
3. Output gate: a message sent while a storage write is not yet committed waits in the gate,
   tagged with the write's batch number, and leaves (in order) once that batch is on disk.
4. Slow consumers: a socket whose buffered outgoing bytes exceed ``max_buffered`` gets the room's
   policy: ``"drop"`` (the message is dropped, counted in ``dropped`` and passed to
   ``on_slow_consumer``) or ``"close"`` (closed with 1013).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from fastws.connection import Listener
from fastws.exceptions import ConnectionClosed, FastWSError
from fastws.metrics import recorder
from fastws.rooms.history import History, no_history_error
from fastws.rooms.storage import _DELETE, Storage, StorageError, StorageFull, legacy_room_path, room_path

if TYPE_CHECKING:  # pragma: no cover
    from fastws.cluster import Cluster
    from fastws.connection import Connection, Message
    from fastws.handshake import Request

__all__ = ["Room", "RoomSocket", "RoomSlot", "AlarmInfo", "AttachmentTooLarge"]


class _Namespace(Protocol):
    """What a slot needs of the registry that holds it (``fastws.rooms.router._Namespace``, the
    layer above, which this module does not import)."""

    room_class: type[Room]
    data_dir: str
    loop: asyncio.AbstractEventLoop
    cluster: Cluster | None
    slots: dict[str, RoomSlot]
    _evicting: set[asyncio.Task[None]]

logger = logging.getLogger("fastws.rooms")

MAX_TAGS = 10
MAX_TAG_LENGTH = 256
MAX_ATTACHMENT = 16384

CONNECT, MESSAGE, CLOSE, REQUEST, ALARM, ACCEPT = range(6)
_EMPTY: tuple[()] = ()
_KIND_NAMES = ("on_connect", "on_message", "on_close", "on_request", "alarm", "accept")


class AttachmentTooLarge(FastWSError, ValueError):
    """A socket attachment is larger than 16 KiB once serialised."""


def _jsonable(message: Any) -> str | bytes:
    """What goes on the wire: str as TEXT, bytes as BINARY, anything else as JSON TEXT."""
    if type(message) is str or type(message) is bytes:
        return message
    if isinstance(message, (bytearray, memoryview)):
        return bytes(message)
    return orjson.dumps(message).decode("utf-8")


async def _coro_type() -> None:
    pass


_c = _coro_type()
_Coroutine = type(_c)
_c.close()


async def _drive(coro: Any, yielded: Any) -> Any:
    """Go on running a coroutine started by hand (it yielded ``yielded``), as a Task would."""
    while True:
        if yielded is None:
            await asyncio.sleep(0)
        else:
            yielded._asyncio_future_blocking = False  # as a Task does with what a coroutine yields
            try:
                await yielded
            except BaseException:
                pass  # the coroutine sees the outcome when it resumes (Future.__await__ reads result())
        try:
            yielded = coro.send(None)
        except StopIteration as stop:
            return stop.value


class AlarmInfo:
    """What ``Room.alarm(info)`` receives.

    Attributes:
        retry_count: how many times this alarm already failed (0 on the first try).
        is_retry: ``retry_count > 0``.
        scheduled_time: when the alarm was due (epoch seconds).
    """

    __slots__ = ("retry_count", "scheduled_time")

    def __init__(self, retry_count: int, scheduled_time: float) -> None:
        self.retry_count = retry_count
        self.scheduled_time = scheduled_time

    @property
    def is_retry(self) -> bool:
        return self.retry_count > 0

    def __repr__(self) -> str:
        return f"AlarmInfo(retry_count={self.retry_count}, scheduled_time={self.scheduled_time})"


class RoomSocket(Listener):
    """One WebSocket of a room: what room hooks receive as ``ws``.

    It is also the engine's listener for that connection, and all a hibernated room keeps per
    socket: the connection, its tags and its attachment.
    """

    __slots__ = ("conn", "_slot", "tags", "_att", "_id", "_auto_ts", "resumed", "__weakref__")

    def __init__(self, slot: RoomSlot, tags: Iterable[str] = (), attachment: Any = None) -> None:
        self.conn: Connection | None = None
        self._slot = slot
        self.tags: tuple[str, ...] = _check_tags(tags)
        self._att: bytes | None = None
        self._id: str | None = None
        self._auto_ts: float | None = None
        #: after a ``?since=`` join: True (caught up from the room's history), False (told to
        #: reset: the log could not serve it) or None (no since, or a malformed one)
        self.resumed: bool | None = None
        if attachment is not None:
            self.attachment = attachment

    # ------------------------------------------------------------ public

    @property
    def id(self) -> str:
        """A unique id for this socket (a UUID, made on first use)."""
        if self._id is None:
            self._id = str(uuid.uuid4())
        return self._id

    @property
    def request(self) -> Request | None:
        """The HTTP request that opened the socket."""
        return self.conn.request if self.conn is not None else None

    @property
    def auto_response_timestamp(self) -> float | None:
        """When the room's auto response last answered this socket (epoch seconds), or None."""
        ts = getattr(self.conn, "auto_response_timestamp", None)
        return ts if ts is not None else self._auto_ts

    @property
    def open(self) -> bool:
        return self.conn is not None and self.conn.open

    @property
    def attachment(self) -> Any:
        """A JSON-serialisable value kept with the socket (at most 16 KiB serialised); it
        survives hibernation. Reading returns a fresh copy: assign to change it."""
        return orjson.loads(self._att) if self._att is not None else None

    @attachment.setter
    def attachment(self, value: Any) -> None:
        if value is None:
            self._att = None
            return
        try:
            data = orjson.dumps(value)
        except TypeError as exc:
            raise TypeError(f"socket attachments must be JSON-serialisable: {exc}") from None
        data = bytes(memoryview(data))  # an exact-size copy: orjson's bytes keep a 4 KiB buffer
        if len(data) > MAX_ATTACHMENT:
            raise AttachmentTooLarge(f"socket attachment is {len(data)} bytes serialised; the limit is {MAX_ATTACHMENT}")
        self._att = data
        self._slot.socket_changed(self)

    def set_tags(self, tags: Iterable[str]) -> None:
        """Replace the socket's tags (at most 10 strings)."""
        self.tags = _check_tags(tags)
        self._slot.socket_changed(self)

    def send(self, message: Any) -> None:
        """Send a message: str as TEXT, bytes as BINARY, anything else as JSON TEXT. It leaves
        once the room's earlier storage writes are committed."""
        slot = self._slot
        if slot.batcher is not None and type(message) is not bytes:
            slot.batch_add(self, message)
            return
        slot.out(slot.send_now, self, _jsonable(message))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the socket (after what was sent before has left)."""
        slot = self._slot
        if slot.batcher is not None:
            slot.batcher.flush_key(self)
        slot.out(_close_conn, self, code, reason)

    def __repr__(self) -> str:
        return f"<RoomSocket {self._id or hex(id(self))} tags={list(self.tags)}>"

    # ------------------------------------------------------------ engine listener

    def on_connect(self, ws: Connection) -> None:  # noqa: D102 - engine callbacks
        self.conn = ws
        slot = self._slot
        if slot.auto is not None:
            slot._engine_auto(self)
        slot.deliver((CONNECT, self, None, None, None))

    def on_message(self, ws: Connection, msg: Message) -> None:
        slot = self._slot
        auto = slot.auto
        if auto is not None and msg.opcode == 1 and len(msg) == len(auto[2]) and msg.bytes() == auto[2]:
            ws.send(auto[1])
            self._auto_ts = time.time()
            return
        slot.deliver((MESSAGE, self, msg.data(), None, None))

    def on_close(self, ws: Connection, code: int, reason: str) -> None:
        slot = self._slot
        slot.sockets.pop(self, None)
        slot.all_conns = None
        if slot.batcher is not None:
            slot.batcher.discard(self)
        slot.deliver((CLOSE, self, code, reason, code != 1006))


def _check_tags(tags: Iterable[str]) -> tuple[str, ...]:
    out = tuple(tags)
    if len(out) > MAX_TAGS:
        raise ValueError(f"a socket has at most {MAX_TAGS} tags, got {len(out)}")
    for t in out:
        if not isinstance(t, str) or not t or len(t) > MAX_TAG_LENGTH:
            raise ValueError(f"tags are non-empty strings of at most {MAX_TAG_LENGTH} characters: {t!r}")
    return out


def _close_conn(sock: RoomSocket, code: int, reason: str) -> None:
    conn = sock.conn
    if conn is not None and conn.open:
        conn.close(code, reason)


from fastws._fanout import broadcast as _engine_broadcast  # noqa: E402  (frames once, corks per turn)
from fastws._fanout import flush as _engine_flush  # noqa: E402

FLUSH_RELEASED = 32


class Room:
    """Base class of a durable room. Subclass it and override the hooks you need.

    There is one live instance per (class, name) in a server, created on first use; its events
    run one at a time in arrival order. Class attributes configure it:

    Attributes:
        hibernate: False (default), True (evict after 10 s without events) or seconds. A
            hibernated room keeps its sockets open; the next event builds it again.
        max_buffered: cap on a socket's buffered outgoing bytes (default 1 MiB).
        slow_consumer: ``"drop"`` (default: drop the message, count it, call
            ``on_slow_consumer``) or ``"close"`` (close the socket with 1013).
        batch: send messages to each socket in batches (``{"type": "batch", "messages": [...]}``).
        batch_size, batch_delay: a batch leaves at 10 messages or after 100 ms (defaults).
        hook_timeout: an ``async`` hook running longer is cancelled and logged (default 30 s).
        storage_quota: bytes (default 1 GiB).
        synchronous: SQLite ``synchronous`` (``"FULL"``: a commit is fsynced before the
            messages it gates leave; ``"NORMAL"`` survives a process crash, not a power cut).
        alarm_retry_base: first retry delay of a failed alarm (doubles each time, 6 tries).
        history: keep the last N broadcasts in an ordered log (0, the default: none). Each
            broadcast to the whole room then leaves as an envelope with its offset, and a client
            that reconnects with ``?since=<epoch>:<offset>`` gets what it missed
            (``fastws.rooms.history``).
        history_ttl: also drop log entries older than this many seconds (0: no age limit).
    """

    hibernate: bool | float = False
    max_buffered: int = 1 << 20
    slow_consumer: str = "drop"
    batch: bool = False
    batch_size: int = 10
    batch_delay: float = 0.1
    hook_timeout: float = 30.0
    storage_quota: int = 1 << 30
    synchronous: str = "FULL"
    alarm_retry_base: float = 1.0
    alarm_max_tries: int = 6
    history: int = 0
    history_ttl: float = 0.0

    _slot: RoomSlot

    def __init__(self) -> None:
        """Runs when the room is created or woken; ``self.name`` and ``self.storage`` are set."""

    # ------------------------------------------------------------ hooks

    def accept(self, request: Request) -> Any:  # pragma: no cover - marker default, never called
        """Decide on a WebSocket upgrade before it is accepted (optional hook).

        Return None to accept, a :class:`fastws.Response` to refuse, or a dict with ``tags``
        and/or ``attachment`` for the new socket. Not calling it is cheaper: override only when
        needed.
        """
        return None

    def on_request(self, request: Request) -> Any:
        """A plain HTTP request to the room. Return a Response, a str, bytes or a JSON value."""
        from fastws.handshake import Response
        return Response(426, "Expected WebSocket\n", [("Upgrade", "websocket")])

    def on_connect(self, ws: RoomSocket) -> Any:
        """A socket joined."""

    def on_message(self, ws: RoomSocket, message: str | bytes) -> Any:
        """A message arrived (str for TEXT, bytes for BINARY)."""

    def on_close(self, ws: RoomSocket, code: int, reason: str, was_clean: bool) -> Any:
        """A socket left (also run when the room was asleep: it wakes for it)."""

    def on_error(self, ws: RoomSocket | None, exc: BaseException) -> Any:
        """A hook failed for ``ws`` (None for alarms and requests); the error is already logged."""

    def alarm(self, info: AlarmInfo) -> Any:
        """The alarm set with :meth:`set_alarm` is due."""

    def on_slow_consumer(self, ws: RoomSocket, message: Any) -> None:
        """A message to ``ws`` was dropped because ``ws`` does not read fast enough."""

    # ------------------------------------------------------------ API

    @property
    def name(self) -> str:
        """The room's name."""
        return self._slot.name

    @property
    def storage(self) -> Storage:
        """The room's durable storage (SQLite)."""
        return self._slot.get_storage()

    @property
    def dropped(self) -> int:
        """Messages dropped for slow consumers since the server started."""
        return self._slot.dropped

    async def presence(self) -> dict[str, Any]:
        """Who is in the room: ``{"total": N, "nodes": {node id: n}}``. In a cluster it counts the
        members on every node (the owner knows them all); on one node the id is ``"local"``."""
        slot = self._slot
        nodes: dict[str, int] = {}
        me = slot.node_id
        for s in slot.sockets:
            n = getattr(s, "node", None) or me
            nodes[n] = nodes.get(n, 0) + 1
        return {"total": len(slot.sockets), "nodes": nodes}

    def sockets(self, tag: str | None = None) -> list[RoomSocket]:
        """The open sockets, optionally only those with ``tag``."""
        socks = self._slot.sockets
        if tag is None:
            return list(socks)
        return [s for s in socks if tag in s.tags]

    def broadcast(self, message: Any, exclude: RoomSocket | Iterable[RoomSocket] | None = None,
                  tag: str | None = None) -> None:
        """Send ``message`` to every socket (with ``tag``, except ``exclude``); the frame is
        encoded once and the same bytes go to every socket."""
        self._slot.broadcast(message, exclude, tag)

    def block_concurrency_while(self, aw: Awaitable[Any]) -> asyncio.Future[Any]:
        """Hold every event of this room until ``aw`` completes (e.g. loading state in ``__init__``)."""
        fut = asyncio.ensure_future(aw)
        slot = self._slot
        if not slot.blockers:
            slot.blockers = []
        slot.blockers.append(fut)
        return fut

    def set_auto_response(self, request: str | None, response: str = "") -> None:
        """Answer a TEXT message equal to ``request`` with ``response`` without waking the room
        (None turns it off). The time of the last answer is in ``ws.auto_response_timestamp``."""
        self._slot.set_auto(request, response)

    async def set_alarm(self, when: float | _dt.datetime | _dt.timedelta) -> None:
        """Run :meth:`alarm` at ``when`` (epoch seconds, a datetime, or a timedelta from now).
        One alarm per room; it is stored, so it fires after a restart too (at least once)."""
        if isinstance(when, _dt.timedelta):
            at = time.time() + when.total_seconds()
        elif isinstance(when, _dt.datetime):
            at = when.timestamp()
        else:
            at = float(when)
        self._slot.set_alarm(at)

    async def get_alarm(self) -> float | None:
        """When the alarm is due (epoch seconds), or None."""
        return self._slot.alarm_at

    async def delete_alarm(self) -> None:
        """Cancel the alarm."""
        self._slot.set_alarm(None)


class RoomSlot:
    """The registry entry of one room (see the module docstring). Internal."""

    __slots__ = ("ns", "name", "room", "sockets", "queue", "busy", "task", "blockers", "last_event",
                 "storage", "gate", "dropped", "auto", "batcher", "alarm_at", "alarm_handle",
                 "alarm_retry", "hook_started", "timed_out", "current", "closed", "all_conns", "messages",
                 "history", "released", "__weakref__")

    def __init__(self, ns: _Namespace, name: str) -> None:
        self.ns = ns
        self.name = name
        self.room: Room | None = None
        self.sockets: dict[RoomSocket, None] = {}
        # the queue, the gate and the blockers are created on first use (a hibernated room
        # with an idle socket should cost little): an empty tuple stands for "empty"
        self.queue: deque[tuple[Any, ...]] = _EMPTY  # type: ignore[assignment]
        self.busy = False
        self.task: asyncio.Task[None] | None = None
        self.blockers: list[asyncio.Future[Any]] = _EMPTY  # type: ignore[assignment]
        self.last_event = 0.0
        self.storage: Storage | None = None
        self.gate: deque[tuple[int, Any, tuple[Any, ...]]] = _EMPTY  # type: ignore[assignment]
        self.dropped = 0
        self.auto: tuple[str, str, bytes] | None = None
        self.batcher: Any = None
        self.alarm_at: float | None = None
        self.alarm_handle: asyncio.TimerHandle | None = None
        self.alarm_retry = 0
        self.hook_started = 0.0
        self.timed_out = False
        self.current: tuple[Any, ...] | None = None
        self.closed = False
        self.all_conns: list[Any] | None = None  # cached connections of every socket (for broadcast)
        self.messages = 0                         # messages delivered to the room (metrics)
        self.history: History | None = None       # the message log, while the room is awake
        self.released = 0                         # sends the last commit let out of the gate
        cls = ns.room_class
        if cls.batch:
            from fastws._batch import Batcher
            self.batcher = Batcher(self._send_batch, cls.batch_size, cls.batch_delay, ns.loop)

    def __repr__(self) -> str:
        return f"<RoomSlot {self.ns.room_class.__name__}:{self.name} awake={self.room is not None}>"

    # ------------------------------------------------------------ hooks for a cluster slot

    @property
    def node_id(self) -> str:
        """This node's id in a cluster (``"local"`` on one node)."""
        return "local"

    def _joined(self, sock: RoomSocket) -> None:
        """A socket joined (its connect event runs)."""

    def _left(self, sock: RoomSocket) -> None:
        """A socket left (its close event runs)."""

    def _done(self, ev: tuple[Any, ...]) -> None:
        """An event finished (its hook returned or its coroutine ended)."""

    def socket_changed(self, sock: RoomSocket) -> None:
        """A socket's tags or attachment changed."""

    async def drop(self) -> None:
        """The slot leaves memory for good (no socket, no alarm, idle)."""
        await self.evict()

    # ------------------------------------------------------------ storage and the output gate

    def get_storage(self) -> Storage:
        st = self.storage
        if st is None:
            cls = self.ns.room_class
            st = self.storage = Storage(room_path(self.ns.data_dir, cls.__name__, self.name), self.ns.loop,
                                        quota=cls.storage_quota, synchronous=cls.synchronous,
                                        on_commit=self._committed, on_failure=self._commit_failed,
                                        on_synced=self._flush_released,
                                        name=self.name,
                                        legacy_path=legacy_room_path(self.ns.data_dir, cls.__name__, self.name))
        return st

    def out(self, fn: Any, *args: Any) -> None:
        """Run an output operation now, or after the storage writes made so far are committed."""
        st = self.storage
        if self.gate or (st is not None and st.seq > st.committed):
            if not self.gate:
                self.gate = deque()
            self.gate.append((st.seq if st is not None else 0, fn, args))
        else:
            fn(*args)

    def _committed(self, seq: int) -> None:
        gate = self.gate
        released = 0
        while gate and gate[0][0] <= seq:
            _, fn, args = gate.popleft()
            released += 1
            try:
                fn(*args)
            except Exception:
                logger.exception("fastws.rooms: sending from room %r failed", self.name)
        self.released = released

    def _flush_released(self) -> None:
        """The loop waited for this room's commit (a latency-bound room): what it released
        leaves now, one send per socket, not at the end of the turn. (A commit that finished
        off the loop leaves its output to the end of the turn, with whatever else is sent in it.)"""
        conns = self.all_conns
        if conns and self.released <= FLUSH_RELEASED:
            _engine_flush(conns)

    def _commit_failed(self, seq: int, exc: BaseException) -> None:
        # what was sent after the lost writes must never be seen; the room restarts from disk
        gate = self.gate
        while gate and gate[0][0] <= seq:
            gate.popleft()
        if self.room is not None:
            logger.error("fastws.rooms: room %r lost a write (%s); it restarts from its storage", self.name, exc)
            self.room = None
            self.history = None  # it may hold entries that were never written: read it back too

    def send_now(self, sock: RoomSocket, data: str | bytes) -> None:
        conn = sock.conn
        if conn is None or not conn.open:
            return
        cap = self.ns.room_class.max_buffered
        if cap and conn.buffered_amount > cap:
            self._slow(sock, data)
            return
        try:
            conn.send(data)
        except ConnectionClosed:
            pass

    def _slow(self, sock: RoomSocket, data: Any) -> None:
        cls = self.ns.room_class
        if cls.slow_consumer == "close":
            recorder.backpressure_close()
            _close_conn(sock, 1013, "slow consumer")
            return
        self.dropped += 1
        recorder.backpressure_drop()
        room = self.room
        if room is not None and type(room).on_slow_consumer is not Room.on_slow_consumer:
            try:
                room.on_slow_consumer(sock, data)
            except Exception as exc:
                self.hook_failed(sock, exc, "on_slow_consumer")

    def broadcast(self, message: Any, exclude: Any, tag: str | None) -> None:
        h = self.history
        logged = False
        if h is not None and tag is None and type(message) is not bytes:
            message = self._logged(h, message, exclude)
            if message is None:
                return
            logged = True
        if exclude is None:
            excl: Any = ()
        elif isinstance(exclude, RoomSocket):
            excl = (exclude,)
        else:
            excl = set(exclude)
        if logged and excl:
            self._skip(h, [s for s in excl if s in self.sockets])  # type: ignore[arg-type]
        if tag is None and not excl and (self.batcher is None or type(message) is bytes):
            # the common case: everyone; the connection list is cached between joins and leaves
            conns = self.all_conns
            if conns is None:
                conns = self.all_conns = [s.conn for s in self.sockets if s.conn is not None]
            if conns:
                self.out(self._broadcast_conns, conns, _jsonable(message))
            return
        if tag is None:
            targets = [s for s in self.sockets if s not in excl] if excl else list(self.sockets)
        else:
            targets = [s for s in self.sockets if tag in s.tags and s not in excl]
        if not targets:
            return
        if self.batcher is not None and type(message) is not bytes:
            for s in targets:
                self.batch_add(s, message)
            return
        self.out(self._broadcast_now, targets, _jsonable(message))

    def _logged(self, h: History, message: Any, exclude: Any) -> str | None:
        """``message`` in its envelope, logged; None when it waits for the log to be read back."""
        if not h.loaded:
            if h.error:
                raise StorageError(f"room {self.name!r}: its history could not be read ({h.error}); "
                                   "nothing is broadcast until the room wakes again")
            h.pending.append((message, exclude))  # sent once the log has been read back
            return None
        return self._log(h, message)

    def _skip(self, h: History, sockets: list[RoomSocket]) -> None:
        """The sockets a logged broadcast excluded get its offset without its data, so their
        offsets stay contiguous (``{"type": "skip", ...}``)."""
        if not sockets:
            return
        frame = h.skip_frame()
        if self.batcher is not None:
            for s in sockets:
                self.batch_add(s, frame)
        else:
            self.out(self._broadcast_now, sockets, frame)

    def _log(self, h: History, message: Any) -> str:
        """Give ``message`` the next offset, stage it in storage; its envelope (JSON text)."""
        entry = h.append(message)
        st = self.get_storage()
        try:
            st._log_append(entry, h.trim(entry[1]))
        except BaseException:
            h.entries.pop()
            h.last -= 1
            raise
        return entry[2]

    async def _load_history(self) -> None:
        """Read the log back from storage (a blocker: the room's events wait for it). When that
        fails, what was broadcast meanwhile is dropped and every later broadcast raises
        StorageError, until the room wakes again (after hibernation, or a lost write): a room
        never sends without offsets, nor holds its broadcasts for ever."""
        h = self.history
        if h is None:
            return
        try:
            epoch, last, rows = await self._read_history(h.limit, time.time() - h.ttl if h.ttl > 0 else 0.0)
        except Exception as exc:
            if self.history is h:
                h.error = str(exc) or type(exc).__name__
                logger.error("fastws.rooms: room %r: reading its history failed (%s): its broadcasts fail until "
                             "it wakes again%s", self.name, h.error,
                             f"; {len(h.pending)} broadcasts dropped" if h.pending else "")
                h.pending = []
            return
        if self.history is not h:  # evicted or lost meanwhile
            return
        if h.load(epoch, last, rows):
            self.get_storage()._put_meta("history_epoch", h.epoch)
        pending, h.pending = h.pending, []
        for message, exclude in pending:
            self.broadcast(message, exclude, None)

    async def _read_history(self, limit: int, since_ts: float) -> tuple[str | None, int, list[Any]]:
        """The log's epoch (None: no log yet), last offset and newest entries, oldest first."""
        st = self.get_storage()
        await st.open()
        last, rows = await st._log_tail(limit, since_ts)  # the table keeps its newest entry: the last offset
        return st.meta.get("history_epoch"), max(last, int(st.meta.get("history_last") or 0)), rows

    def _resume(self, sock: RoomSocket, since: str) -> None:
        """A socket joined with ``?since=``: what it missed (or why not), before anything newer."""
        h = self.history
        if h is None:
            frame, sock.resumed = no_history_error(), None
        else:
            frame, sock.resumed = h.resume(since)
        self.out(self.send_now, sock, frame)

    def _broadcast_conns(self, conns: list[Any], data: str | bytes) -> None:
        skipped = _engine_broadcast(conns, data, max_buffer=self.ns.room_class.max_buffered)
        if skipped:
            by_conn = {s.conn: s for s in self.sockets}
            for conn in skipped:
                sock = by_conn.get(conn)
                if sock is not None:
                    self._slow(sock, data)

    def _broadcast_now(self, targets: list[RoomSocket], data: str | bytes) -> None:
        conns = [s.conn for s in targets if s.conn is not None]
        skipped = _engine_broadcast(conns, data, max_buffer=self.ns.room_class.max_buffered)
        if skipped:
            by_conn = {s.conn: s for s in targets}
            for conn in skipped:
                self._slow(by_conn[conn], data)

    # ------------------------------------------------------------ batching

    def batch_add(self, sock: RoomSocket, message: Any) -> None:
        if type(message) is str:
            message = orjson.Fragment(message)
        self.batcher.add(sock, message)

    def _send_batch(self, sock: RoomSocket, frame: bytes) -> None:
        self.out(self.send_now, sock, frame.decode("utf-8"))

    # ------------------------------------------------------------ auto-response

    def set_auto(self, request: str | None, response: str) -> None:
        self.auto = None if request is None else (request, response, request.encode("utf-8"))
        for s in self.sockets:
            self._engine_auto(s)

    def _engine_auto(self, sock: RoomSocket) -> None:
        conn = sock.conn
        setter = getattr(conn, "set_auto_response", None)
        if setter is not None:
            if self.auto is None:
                setter(None)
            else:
                setter(self.auto[0], self.auto[1])

    # ------------------------------------------------------------ alarms

    def set_alarm(self, at: float | None) -> None:
        st = self.get_storage()
        st._put_meta("alarm", _DELETE if at is None else at)
        self.alarm_retry = 0
        self._schedule_alarm(at)

    def _schedule_alarm(self, at: float | None, delay: float | None = None) -> None:
        self.alarm_at = at
        if self.alarm_handle is not None:
            self.alarm_handle.cancel()
            self.alarm_handle = None
        if at is None or self.closed:
            return
        if delay is None:
            delay = max(0.0, at - time.time())
        self.alarm_handle = self.ns.loop.call_later(delay, self._alarm_due, at)

    def _alarm_due(self, at: float) -> None:
        self.alarm_handle = None
        if self.alarm_at != at:
            return
        recorder.alarm_fired()
        self.deliver((ALARM, None, at, self.alarm_retry, None))

    def _alarm_done(self, at: float, failed: bool) -> None:
        if self.alarm_at != at:
            return  # the hook set (or deleted) the alarm itself
        cls = self.ns.room_class
        if failed and self.alarm_retry + 1 < cls.alarm_max_tries:
            self.alarm_retry += 1
            recorder.alarm_retried()
            self._schedule_alarm(at, cls.alarm_retry_base * (2 ** (self.alarm_retry - 1)))
            return
        if failed:
            logger.error("fastws.rooms: room %r: alarm failed %d times; giving up", self.name, cls.alarm_max_tries)
        self.alarm_retry = 0
        self.alarm_at = None
        self.get_storage()._put_meta("alarm", _DELETE)

    # ------------------------------------------------------------ the mailbox

    def deliver(self, ev: tuple[Any, ...]) -> None:
        """Run an event now if the room is idle, else queue it (arrival order)."""
        self.last_event = self.ns.loop.time()
        if self.busy:
            self._enqueue(ev)
            return
        self.busy = True
        if self.room is None:
            try:
                self._wake()
            except BaseException:
                self.busy = False
                raise
        if self.blockers:
            self._enqueue(ev)
            self._start(None)
            return
        coro = self._dispatch(ev)
        if coro is not None:
            self._start((coro, ev))
            return
        self._done(ev)
        if self.queue:
            self._start(None)
        else:
            self.busy = False

    def _enqueue(self, ev: tuple[Any, ...]) -> None:
        if not self.queue:
            self.queue = deque()
        self.queue.append(ev)

    def _start(self, first: tuple[Any, tuple[Any, ...]] | None) -> None:
        self.task = self.ns.loop.create_task(self._run(first))

    def _wake(self) -> None:
        cls = self.ns.room_class
        room = cls.__new__(cls)
        room._slot = self
        self.room = room
        if cls.history and self.history is None:
            self.history = History(cls.history, cls.history_ttl)
            fut = asyncio.ensure_future(self._load_history())
            if not self.blockers:
                self.blockers = []
            self.blockers.append(fut)
        try:
            cls.__init__(room)
        except Exception as exc:
            self.hook_failed(None, exc, "__init__")

    async def _run(self, first: tuple[Any, tuple[Any, ...]] | None) -> None:
        try:
            if first is not None:
                await self._await_hook(first[0], first[1])
                self._done(first[1])
            while True:
                if self.blockers:
                    b = self.blockers.pop(0)
                    self.hook_started = self.ns.loop.time()
                    self.current = (CONNECT, None)
                    try:
                        await b
                    except asyncio.CancelledError:
                        if not self._consume_timeout("block_concurrency_while"):
                            raise
                        b.cancel()
                    except Exception as exc:
                        self.hook_failed(None, exc, "block_concurrency_while")
                    finally:
                        self.hook_started = 0.0
                    continue
                if not self.queue:
                    break
                ev = self.queue.popleft()
                if self.room is None:
                    self._wake()
                    if self.blockers:
                        self.queue.appendleft(ev)
                        continue
                coro = self._dispatch(ev)
                if coro is not None:
                    await self._await_hook(coro, ev)
                self._done(ev)
        finally:
            self.busy = False
            self.task = None
            self.current = None

    def _consume_timeout(self, what: str) -> bool:
        if not self.timed_out:
            return False
        self.timed_out = False
        task = asyncio.current_task()
        if task is not None and hasattr(task, "uncancel"):
            task.uncancel()
        logger.error("fastws.rooms: room %r: %s did not finish within %.3g s; cancelled", self.name, what,
                     self.ns.room_class.hook_timeout)
        return True

    async def _await_hook(self, coro: Any, ev: tuple[Any, ...]) -> None:
        self.hook_started = self.ns.loop.time()
        self.current = ev
        kind = ev[0]
        try:
            result = await coro
        except asyncio.CancelledError:
            if not self._consume_timeout(_KIND_NAMES[kind]):
                raise
            exc = TimeoutError(f"{_KIND_NAMES[kind]} did not finish within {self.ns.room_class.hook_timeout} s")
            self.hook_failed(ev[1], exc, _KIND_NAMES[kind], log=False)
            self._after(ev, None, exc)
        except Exception as exc:
            self.hook_failed(ev[1], exc, _KIND_NAMES[kind])
            self._after(ev, None, exc)
        else:
            self._after(ev, result, None)
        finally:
            self.hook_started = 0.0

    def _dispatch(self, ev: tuple[Any, ...]) -> Any:
        """Call the hook for ``ev``; return a coroutine still to await, else None."""
        room = self.room
        kind, sock, a, b, c = ev
        if room is None:
            self._after(ev, None, StorageError("room unavailable"))
            return None
        try:
            if kind == MESSAGE:
                self.messages += 1
                r = room.on_message(sock, a)
            elif kind == CONNECT:
                # a socket joins when its connect event runs: it sees nothing sent before
                if sock.conn is not None and sock.conn.open:
                    self.sockets[sock] = None
                    self.all_conns = None
                    if self.auto is not None:
                        self._engine_auto(sock)
                    self._joined(sock)
                    req = sock.request
                    since = req.query_param("since") if req is not None else None
                    if since is not None:
                        self._resume(sock, since)
                r = room.on_connect(sock)
            elif kind == CLOSE:
                self.sockets.pop(sock, None)
                self.all_conns = None
                self._left(sock)
                r = room.on_close(sock, a, b, c)
            elif kind == REQUEST:
                r = room.on_request(a)
            elif kind == ALARM:
                r = room.alarm(AlarmInfo(b, a))
            else:  # ACCEPT
                r = room.accept(a)
        except Exception as exc:
            self.hook_failed(sock, exc, _KIND_NAMES[kind])
            self._after(ev, None, exc)
            return None
        if r is not None and type(r) is _Coroutine:
            # run the coroutine right here until it really has to wait: a hook that awaits only
            # storage writes (which do not suspend) finishes without a task
            try:
                yielded = r.send(None)
            except StopIteration as stop:
                r = stop.value
            except Exception as exc:
                self.hook_failed(sock, exc, _KIND_NAMES[kind])
                self._after(ev, None, exc)
                return None
            else:
                return _drive(r, yielded)
        if kind >= REQUEST:
            self._after(ev, r, None)
        return None

    def _after(self, ev: tuple[Any, ...], result: Any, exc: BaseException | None) -> None:
        kind = ev[0]
        if kind == REQUEST or kind == ACCEPT:
            fut = ev[3]
            if not fut.done():
                if exc is not None:
                    fut.set_exception(exc)
                    return
                st = self.storage
                if st is not None and st.seq > st.committed:
                    # the output gate, for answers too: a response that shows a write leaves only
                    # once the write is durable (a failed commit answers with the error instead)
                    t = self.ns.loop.create_task(self._answer_when_durable(st.seq, fut, result))
                    self.ns._evicting.add(t)
                    t.add_done_callback(self.ns._evicting.discard)
                else:
                    fut.set_result(result)
        elif kind == ALARM:
            self._alarm_done(ev[2], exc is not None)

    async def _answer_when_durable(self, seq: int, fut: asyncio.Future[Any], result: Any) -> None:
        try:
            await self.durable(seq)
        except Exception as exc:
            if not fut.done():
                fut.set_exception(exc)
            return
        if not fut.done():
            fut.set_result(result)

    def durable(self, seq: int) -> Awaitable[None]:
        """Done once the storage batch ``seq`` is committed (raises what a failed commit raised)."""
        st = self.storage
        assert st is not None
        return st.sync()

    def hook_failed(self, sock: RoomSocket | None, exc: BaseException, hook: str, log: bool = True) -> None:
        """Log a hook's exception once (with the room name) and tell ``on_error``."""
        if not log:
            pass
        elif isinstance(exc, StorageFull):
            logger.error("fastws.rooms: room %r: %s failed: %s", self.name, hook, exc)
        else:
            logger.error("fastws.rooms: room %r: %s failed", self.name, hook, exc_info=exc)
        room = self.room
        if room is not None and type(room).on_error is not Room.on_error:
            try:
                r = room.on_error(sock, exc)
                if asyncio.iscoroutine(r):
                    r.close()
                    logger.warning("fastws.rooms: room %r: on_error must not be async", self.name)
            except Exception:
                logger.exception("fastws.rooms: room %r: on_error failed", self.name)

    # ------------------------------------------------------------ requests

    def request(self, kind: int, sock: RoomSocket | None, request: Request) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = self.ns.loop.create_future()
        self.deliver((kind, sock, request, fut, None))
        return fut

    # ------------------------------------------------------------ hibernation and shutdown

    def idle(self) -> bool:
        return not self.busy and not self.queue and not self.gate and not self.blockers and (
            self.storage is None or not self.storage.pending)

    async def evict(self) -> None:
        """Drop the room object (its sockets stay open) and close its database."""
        self.room = None
        self.history = None
        st = self.storage
        if st is not None:
            self.storage = None
            await st.close()

    async def shutdown(self) -> None:
        self.closed = True
        if self.alarm_handle is not None:
            self.alarm_handle.cancel()
            self.alarm_handle = None
        if self.batcher is not None:
            self.batcher.flush_all()
        st = self.storage
        if st is not None:
            try:
                await st.sync()
            except Exception as exc:
                logger.error("fastws.rooms: room %r: final commit failed: %s", self.name, exc)
            await st.close()

