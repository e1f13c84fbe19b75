"""Routing requests to rooms, and the registry that keeps one live instance per (class, name).

``RoomRouter(ChatRoom)`` is an app: ``fastws serve examples.chat:app`` serves it, and
``App.mount(path, router)`` mounts it. Its ``fastws_accept(ws, request)`` maps the request to a
room name (by default the path without its leading slash, ``/`` being ``default``) and forwards
the request to that room: a WebSocket upgrade joins the room's sockets, a plain HTTP request runs
the room's ``on_request``.
"""

from __future__ import annotations

import asyncio
import glob
import logging
import os
import sqlite3
import urllib.parse
import uuid
import weakref
from collections.abc import Callable
from typing import Any

import orjson

from fastws._limits import BucketTable
from fastws.cluster import Cluster, RoomUnavailable, cluster_from_env, decode_response
from fastws.guards.ip import rate_key
from fastws.guards.ratelimit import RateLimit
from fastws.handshake import Request, Response
from fastws.metrics import RoomInfo, recorder
from fastws.rooms.history import History
from fastws.rooms.names import InvalidRoomName, check_room_name
from fastws.rooms.room import ACCEPT, REQUEST, Room, RoomSlot, RoomSocket
from fastws.rooms.storage import StorageError, close_idle
from fastws.server import Accept

__all__ = ["RoomRouter"]

logger = logging.getLogger("fastws.rooms")

SWEEP_EVERY = 0.25  # seconds between hibernation / hook-timeout checks
EMPTY_ROOM_TTL = 30.0  # a room with no socket, no alarm and no event for this long leaves memory

_namespaces: dict[tuple[type, str, Any], _Namespace] = {}


def _data_dir(explicit: str | None) -> str:
    return os.path.abspath(explicit or os.environ.get("FASTWS_DATA_DIR") or "./data")


class _Namespace:
    """The live rooms of one class (one data directory, one event loop)."""

    def __init__(self, room_class: type[Room], data_dir: str, loop: asyncio.AbstractEventLoop,
                 cluster: Cluster | None = None) -> None:
        self.room_class = room_class
        self.cluster = cluster
        if room_class.history:
            History(room_class.history, room_class.history_ttl)  # checks the settings now, not at first use
        if cluster is not None:
            cluster.register(self)
        self.data_dir = data_dir
        self.loop = loop
        self.slots: dict[str, RoomSlot] = {}
        self._sweep: asyncio.TimerHandle | None = None
        self._scanned = False
        self._evicting: set[asyncio.Task[None]] = set()
        hib = room_class.hibernate
        self.hibernate_after = 10.0 if hib is True else float(hib or 0.0)
        self._schedule_sweep()
        recorder.add_rooms_source(self._room_infos)

    def _room_infos(self) -> list[RoomInfo]:
        """Per-room figures for /metrics and /analytics (read at scrape time)."""
        if self.loop.is_closed():  # a namespace whose loop is gone (never shut down) reports nothing
            recorder.remove_rooms_source(self._room_infos)
            return []
        return [RoomInfo(name, len(s.sockets), s.messages, s.room is None) for name, s in self.slots.items()]

    # ------------------------------------------------------------ slots

    def slot(self, name: str) -> RoomSlot:
        s = self.slots.get(name)
        if s is None:
            if self.cluster is not None:
                from fastws.rooms.cluster_slot import ClusterSlot

                s = self.slots[name] = ClusterSlot(self, name)
            else:
                s = self.slots[name] = RoomSlot(self, name)
            s.last_event = self.loop.time()
        return s

    # ------------------------------------------------------------ periodic sweep

    def _schedule_sweep(self) -> None:
        if not self.loop.is_closed():
            self._sweep = self.loop.call_later(SWEEP_EVERY, self._run_sweep)

    def _run_sweep(self) -> None:
        now = self.loop.time()
        freed = close_idle(now, self.loop)
        timeout = self.room_class.hook_timeout
        hib = self.hibernate_after
        for name, s in list(self.slots.items()):
            if s.hook_started and timeout and now - s.hook_started > timeout and s.task is not None:
                s.hook_started = 0.0
                s.timed_out = True
                s.task.cancel()
                continue
            if not s.idle():
                continue
            idle_for = now - s.last_event
            if not s.sockets and s.alarm_at is None and idle_for >= (min(hib, EMPTY_ROOM_TTL) if hib
                                                                      else EMPTY_ROOM_TTL):
                del self.slots[name]
                self._evict(s, drop=True)
            elif hib and s.room is not None and idle_for >= hib:
                self._evict(s)
                freed += 1
        if freed:
            _trim_memory()
        self._schedule_sweep()

    def reclaim(self, want: int) -> int:
        """Drop up to ``want`` rooms that hold nothing (no socket, no alarm, nothing running,
        idle for a second at least) before their time, to make room under ``max_rooms``."""
        now = self.loop.time()
        n = 0
        for name, s in list(self.slots.items()):
            if not s.sockets and s.alarm_at is None and now - s.last_event >= 1.0 and s.idle():
                del self.slots[name]
                self._evict(s, drop=True)
                n += 1
                if n >= want:
                    break
        return n

    def _evict(self, s: RoomSlot, drop: bool = False) -> None:
        t = self.loop.create_task(s.drop() if drop else s.evict())
        self._evicting.add(t)
        t.add_done_callback(self._evicting.discard)

    # ------------------------------------------------------------ alarms after a restart

    async def scan_alarms(self) -> None:
        """Find the stored alarms of this class's rooms and schedule them."""
        if self._scanned:
            return
        self._scanned = True
        if self.cluster is not None:
            return  # a cluster's alarms live in Redis (the nodes' ticker finds the due ones)
        found = await self.loop.run_in_executor(None, _scan, os.path.join(self.data_dir, self.room_class.__name__))
        for name, at in found:
            s = self.slot(name)
            if s.alarm_at is None:
                s._schedule_alarm(at)

    async def shutdown(self) -> None:
        recorder.remove_rooms_source(self._room_infos)
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for s in list(self.slots.values()):
            await s.shutdown()
        if self._evicting:
            await asyncio.gather(*self._evicting, return_exceptions=True)
        self.slots.clear()
        if self.cluster is not None:
            self.cluster.unregister(self)
            if not self.cluster._namespaces:
                await self.cluster.stop()


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim  # type: ignore[no-any-return,unused-ignore]
    except (OSError, AttributeError):  # not glibc
        return None


_malloc_trim = _load_malloc_trim() if os.name == "posix" else None
_last_trim = 0.0


def _trim_memory() -> None:
    """Give the memory of closed databases and evicted rooms back to the OS (glibc keeps freed
    memory otherwise); at most once a second."""
    global _last_trim
    import time

    now = time.monotonic()
    if _malloc_trim is not None and now - _last_trim >= 1.0:
        _last_trim = now
        _malloc_trim(0)


def _scan(directory: str) -> list[tuple[str, float]]:
    out = []
    for path in glob.glob(os.path.join(glob.escape(directory), "*.sqlite3")):
        try:
            conn = sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=ro", uri=True, timeout=1.0)
            try:
                meta = dict(conn.execute("SELECT key, value FROM _fastws_meta WHERE key IN ('name', 'alarm')"))
            finally:
                conn.close()
        except sqlite3.Error as exc:
            logger.warning("fastws.rooms: skipping %s while looking for alarms: %s", path, exc)
            continue
        if "alarm" in meta and "name" in meta:
            out.append((str(meta["name"]), float(meta["alarm"])))
    return out


def default_room_name(request: Request) -> str:
    """The path without its leading slash; ``/`` is ``default``."""
    name = request.path.lstrip("/")
    return name or "default"


DEFAULT_MAX_ROOMS = 10_000
_DEFAULT_NEW_ROOMS = RateLimit(10, 1.0, burst=100)
_FROM_ENV: Any = object()  # the default of max_rooms / new_rooms_per_ip: $FASTWS_..., else the default


class RoomRouter:
    """An app that forwards each request to a room of ``room_class``.

    Args:
        room_class: the :class:`Room` subclass.
        data_dir: where the rooms' databases live (default: ``$FASTWS_DATA_DIR``, else ``./data``).
        room_name: ``(request) -> str`` picking the room (default: the path without its leading
            slash, ``/`` being ``default``); or call :meth:`forward` from your own handler
            (a worker) with a name or :meth:`unique_id`.
        prefix: a path prefix stripped before naming the room (e.g. when mounted at ``/chat``).
        server_options: options ``fastws serve`` applies to the server.
        cluster: a :class:`fastws.Cluster` (Redis) to share the rooms with every process that
            names the same Redis: one live instance per room in the whole cluster. Default:
            ``$FASTWS_REDIS_URL`` when set (``fastws serve --redis URL``), else one process.
        max_rooms: rooms this process keeps in memory at most (awake, hibernated or empty and
            not yet dropped); at the cap, rooms that hold nothing are dropped early to make
            space, and when none can be, a request that would open one more gets ``503 Too many
            rooms`` (None: no cap). Default ``$FASTWS_MAX_ROOMS`` (``fastws serve --max-rooms``),
            else 10,000.
        new_rooms_per_ip: how fast one client IP may bring rooms into memory (a
            :class:`~fastws.RateLimit` or a spec such as ``"10/s"``); over it: ``429``
            with ``Retry-After``. None: no limit. Joining a room already in memory never counts.
            Default ``$FASTWS_NEW_ROOMS_PER_IP`` (``fastws serve --new-rooms-per-ip``; ``off``
            for none), else 10 per second in bursts of 100.

    Routers of the same class and data directory share their rooms: there is one live instance
    per (class, name) in a server. Room names are checked and mapped to file names in one place,
    :mod:`fastws.rooms.names` (1-255 bytes of UTF-8, no control character; an invalid one gets
    ``400``).
    """

    def __init__(self, room_class: type[Room], *, data_dir: str | None = None,
                 room_name: Callable[[Request], str] | None = None, prefix: str = "",
                 server_options: dict[str, Any] | None = None, cluster: Cluster | None = None,
                 max_rooms: int | None | object = _FROM_ENV, new_rooms_per_ip: RateLimit | str | None | object = _FROM_ENV
                 ) -> None:
        if not (isinstance(room_class, type) and issubclass(room_class, Room)):
            raise TypeError(f"RoomRouter needs a Room subclass, not {room_class!r}")
        if max_rooms is _FROM_ENV:
            env = os.environ.get("FASTWS_MAX_ROOMS", "").strip()
            max_rooms = DEFAULT_MAX_ROOMS if not env else (None if env in ("0", "off", "none") else int(env))
        if max_rooms is not None and (not isinstance(max_rooms, int) or max_rooms < 1):
            raise ValueError("max_rooms must be at least 1 (or None)")
        self.max_rooms: int | None = max_rooms
        if new_rooms_per_ip is _FROM_ENV:
            env = os.environ.get("FASTWS_NEW_ROOMS_PER_IP", "").strip()
            new_rooms_per_ip = _DEFAULT_NEW_ROOMS if not env else None if env.lower() in ("0", "off", "none") else env
        rate = RateLimit.parse(new_rooms_per_ip)
        self.new_rooms_per_ip = rate
        self._new_rooms = BucketTable(rate.rate, rate.burst, 100_000) if rate is not None else None
        self.room_class = room_class
        self._data_dir = data_dir
        self._room_name = room_name
        self.prefix = prefix.rstrip("/")
        if server_options is not None:
            self.server_options = server_options
        self._ns_ref: weakref.ref[_Namespace] | None = None
        self._custom_accept = room_class.accept is not Room.accept
        self._cluster = cluster

    @property
    def cluster(self) -> Cluster | None:
        """The cluster the rooms live in, or None when they live in this process only."""
        return self._cluster if self._cluster is not None else cluster_from_env()

    # ------------------------------------------------------------ the registry

    @property
    def data_dir(self) -> str:
        return _data_dir(self._data_dir)

    def namespace(self) -> _Namespace:
        ns = self._ns_ref() if self._ns_ref is not None else None
        loop = asyncio.get_running_loop()
        if ns is not None and ns.loop is loop:
            return ns
        cluster = self.cluster
        key = (self.room_class, self.data_dir, cluster)
        ns = _namespaces.get(key)
        if ns is None or ns.loop is not loop or loop.is_closed():
            ns = _namespaces[key] = _Namespace(self.room_class, key[1], loop, cluster)
        self._ns_ref = weakref.ref(ns)
        return ns

    def room(self, name: str) -> Room | None:
        """The live instance of room ``name`` (None when it is not in memory or asleep)."""
        s = self.namespace().slots.get(name)
        return s.room if s is not None else None

    def slot(self, name: str) -> RoomSlot | None:
        """The registry entry of room ``name`` (for stats and tests), or None."""
        return self.namespace().slots.get(name)

    @property
    def rooms(self) -> dict[str, RoomSlot]:
        """Rooms in memory (awake or hibernated), by name."""
        return dict(self.namespace().slots)

    @staticmethod
    def unique_id() -> str:
        """A fresh room name no other request will pick (a random UUID)."""
        return uuid.uuid4().hex

    # ------------------------------------------------------------ app protocol

    async def fastws_startup(self, server: Any = None) -> None:
        """Schedule the alarms stored by earlier runs (the server calls this when it starts); in a
        cluster, join it (a Redis that is down now is retried on each request: 503 until then)."""
        ns = self.namespace()
        await ns.scan_alarms()
        if ns.cluster is not None:
            try:
                await ns.cluster.start()
            except RoomUnavailable as exc:
                logger.error("fastws.cluster: %s; rooms answer 503 until Redis is reachable", exc)

    async def fastws_shutdown(self, server: Any = None) -> None:
        """Commit what is pending and close every room's database."""
        ns = self._ns_ref() if self._ns_ref is not None else None
        if ns is not None:
            await ns.shutdown()
            key = (ns.room_class, ns.data_dir, ns.cluster)
            if _namespaces.get(key) is ns:
                del _namespaces[key]

    def room_name(self, request: Request) -> str:
        if self._room_name is not None:
            return self._room_name(request)
        params = request.scope.get("params")
        if not self.prefix and isinstance(params, dict) and isinstance(params.get("path"), str):
            # mounted in an App (app.mount(base, router)): the part of the path under the mount
            return params["path"].strip("/") or "default"
        path = request.path
        if self.prefix and (path == self.prefix or path.startswith(self.prefix + "/")):
            path = path[len(self.prefix):]
        name = path.lstrip("/")
        return name or "default"

    def fastws_accept(self, ws: Any, request: Request) -> Any:
        return self.forward(self.room_name(request), ws, request)

    def forward(self, name: str, ws: Any, request: Request) -> Any:
        """Hand ``request`` to room ``name``: returns what an accept hook returns
        (an :class:`~fastws.Accept`, a :class:`~fastws.Response`, or a coroutine of either)."""
        ns = self.namespace()
        if not ns._scanned:
            ns._scanned = True  # without a startup hook, look for stored alarms on the first request
            t = ns.loop.create_task(_scan_later(ns))
            ns._evicting.add(t)
            t.add_done_callback(ns._evicting.discard)
        if name not in ns.slots:
            refused = self._admit_new_room(ns, name, request)
            if refused is not None:
                return refused
        slot = ns.slot(name)
        if ns.cluster is not None:
            return self._cluster_forward(slot, ws, request)
        if not request.is_websocket:
            return self._http(slot, ws, request)
        st = slot.storage
        if self._custom_accept or st is None or not st.opened:
            return self._accept_async(slot, ws, request)
        return Accept(listener=RoomSocket(slot))

    def _admit_new_room(self, ns: _Namespace, name: str, request: Request) -> Response | None:
        """Checks for a request that would bring room ``name`` into memory: a valid name, the
        per-process cap, the per-IP rate. None: go on."""
        try:
            check_room_name(name)
        except InvalidRoomName as exc:
            recorder.guard("invalid", "room_name")
            return Response(400, exc.reason + "\n")
        if self.max_rooms is not None and len(ns.slots) >= self.max_rooms \
                and not ns.reclaim(max(1, self.max_rooms // 100)):
            recorder.guard("capped", "max_rooms")
            return Response(503, "Too many rooms\n", [("Retry-After", "30")])
        table = self._new_rooms
        if table is not None:
            ip = request.scope.get("client_ip") or (request.remote_address[0] if request.remote_address else "")
            wait = table.hit(rate_key(str(ip)))  # IPv6: per /64, as the connection rate
            if wait:
                recorder.guard("rate_limited", "new_rooms")
                return Response(429, "Too many new rooms from this address\n",
                                [("Retry-After", str(max(1, int(wait + 0.999))))])
        return None

    async def _open(self, slot: RoomSlot) -> Response | None:
        st = slot.get_storage()
        if st.opened:
            return None
        try:
            await st.open()
        except StorageError as exc:
            logger.error("fastws.rooms: room %r is unavailable: %s", slot.name, exc)
            if slot.storage is st:
                slot.storage = None
            return Response(503, "Room storage unavailable\n")
        alarm = st.meta.get("alarm")
        if alarm is not None and slot.alarm_at is None:
            slot._schedule_alarm(float(alarm))
        return None

    async def _accept_async(self, slot: RoomSlot, ws: Any, request: Request) -> Any:
        result = await self._accept_inner(slot, request)
        return result

    async def _accept_inner(self, slot: RoomSlot, request: Request) -> Any:
        refused = await self._open(slot)
        if refused is not None:
            return refused
        sock = RoomSocket(slot)
        if self._custom_accept:
            try:
                result = await slot.request(ACCEPT, sock, request)
            except Exception:
                return Response(500, "Internal Server Error\n")
            if isinstance(result, Response):
                return result
            if isinstance(result, dict):
                try:
                    if "tags" in result:
                        sock.set_tags(result["tags"])
                    if "attachment" in result:
                        sock.attachment = result["attachment"]
                except (TypeError, ValueError) as exc:
                    logger.error("fastws.rooms: room %r: accept() returned a bad socket record: %s", slot.name, exc)
                    return Response(500, "Internal Server Error\n")
        return Accept(listener=sock)

    async def _http(self, slot: RoomSlot, ws: Any, request: Request) -> Response:
        refused = await self._open(slot)
        if refused is not None:
            return refused
        try:
            result = await slot.request(REQUEST, None, request)
        except RoomUnavailable:  # a cluster room that moved to another node meanwhile
            return Response(503, "Room unavailable\n")
        except StorageError:  # what the answer would show could not be committed
            return Response(503, "Room storage unavailable\n")
        except Exception:
            return Response(500, "Internal Server Error\n")
        return _to_response(result)


    async def _cluster_forward(self, slot: Any, ws: Any, request: Request) -> Any:
        cluster = slot.cluster
        try:
            owner = await cluster.ensure(slot)
        except RoomUnavailable as exc:
            logger.debug("fastws.cluster: room %r unavailable: %s", slot.name, exc)
            return Response(503, "Room unavailable\n")
        if owner:
            if not request.is_websocket:
                return await self._http(slot, ws, request)
            return await self._accept_inner(slot, request)
        try:
            if not request.is_websocket:
                doc = await cluster.request(slot, "R", request)
                return decode_response(doc["r"])
            sock = RoomSocket(slot)
            if self._custom_accept:
                doc = await cluster.request(slot, "A", request, sock.id)
                if "r" in doc:
                    return decode_response(doc["r"])
                acc = doc.get("acc") or {}
                if "tags" in acc:
                    sock.set_tags(acc["tags"])
                if "attachment" in acc:
                    sock.attachment = acc["attachment"]
        except asyncio.TimeoutError:
            return Response(504, "Room did not answer\n")
        except RoomUnavailable:
            return Response(503, "Room unavailable\n")
        except (TypeError, ValueError) as exc:
            logger.error("fastws.rooms: room %r: accept() returned a bad socket record: %s", slot.name, exc)
            return Response(500, "Internal Server Error\n")
        return Accept(listener=sock)


async def _scan_later(ns: _Namespace) -> None:
    ns._scanned = False
    try:
        await ns.scan_alarms()
    except Exception:
        logger.exception("fastws.rooms: looking for stored alarms failed")


def _to_response(result: Any) -> Response:
    if isinstance(result, Response):
        return result
    if result is None:
        return Response(204, b"")
    if isinstance(result, str):
        return Response(200, result)
    if isinstance(result, (bytes, bytearray)):
        return Response(200, bytes(result), content_type="application/octet-stream")
    return Response(200, orjson.dumps(result), content_type="application/json")

