"""Rooms across processes and machines, with Redis as the backplane.

``RoomRouter(Chat, cluster=fastws.Cluster("redis://127.0.0.1:6379/0"))`` (or ``fastws serve
--redis URL``, ``[cluster]`` in the TOML config, ``FASTWS_REDIS_URL``) makes every process that
names the same Redis one cluster: each awake room has exactly one live instance in the cluster,
and its members may be connected to any process.

Theory of operation
-------------------
1. **Nodes.** Every process (one event loop) is a *node* with a random id. It keeps a heartbeat
   key ``P:node:<id>`` alive (TTL = the lease TTL). A node whose heartbeat expired is dead to the
   others: the rooms it owned are taken over, and its members are dropped from rooms owned
   elsewhere (their ``on_close`` runs with 1006). A node that finds its own heartbeat expired
   (it was paused or cut off) closes every room socket it holds with 1012.
2. **Ownership, lease and fencing.** A room is owned by the first node that needs it: the
   ``acquire`` script sets ``<room>:lease`` to ``"<node> <token>"`` with a TTL, where the token
   comes from ``INCR <room>:fence`` (monotonic across owners). The owner renews all its leases in
   one script every TTL/3. Every write and every publish of an owner goes through the ``flush``
   script, which first checks that the lease still holds *its* value: a paused or cut-off owner
   whose lease expired can neither commit nor reach a member, even after it wakes up. An owner
   that learns its lease is gone (a renewal or a flush says so, or Redis stayed unreachable for
   a whole TTL) stops the room at once: its room object and its unflushed output are dropped, its
   local sockets are closed with 1012 (clients reconnect and land on the new owner).
3. **Members elsewhere.** A socket connected to a node that does not own its room is a *member*
   there. The member's node subscribes to ``<room>:out`` before it joins, then appends the
   socket's events (connect, message, close) to the room's inbox stream ``<room>:in``, in order
   per member. The owner reads its rooms' inboxes with one blocking ``XREAD`` and runs the events
   through the room's mailbox like local ones. What the room sends to members on other nodes
   leaves in one envelope per room per flush (one ``PUBLISH`` inside the flush script); each
   node decodes it once and frames each message once for its local members (the engine's
   broadcast). Joins and leaves travel in the same envelopes, so a node delivers to a member
   exactly what the owner delivered after the member's ``on_connect`` ran.
4. **Flushes.** Everything a node sends to Redis during one event-loop turn (every room's
   writes, member updates, inbox cursor and publishes, every member event) leaves in one
   pipelined round trip; the next pipeline is built while one is in flight, so order holds.
5. **Durability.** An owner's output is released (to its local sockets, and in the envelope)
   only by the flush that commits the writes made before it: what a client sees is in Redis,
   where the next owner reads it. With ``appendonly yes`` and ``appendfsync always`` it is on
   disk too; ``everysec`` trades up to one second of writes on a Redis crash for speed.
6. **Exactly once.** The owner records in each flush the id of the last inbox entry whose event
   finished (``<room>:meta`` ``cursor``). A new owner replays the inbox after the cursor: an event
   that was in flight on a dead owner runs once, on the new owner; one whose flush committed is
   never run again.
7. **Faults.** Redis unreachable: requests and upgrades to rooms get 503 ``Room unavailable``;
   after a whole lease TTL without Redis, a node closes its room sockets (1012) rather than go on
   alone. When Redis is back the node reconnects, reloads its scripts and serves again.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import time
import urllib.parse
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from fastws.exceptions import FastWSError

if TYPE_CHECKING:  # pragma: no cover
    from fastws.rooms.cluster_slot import ClusterSlot
    from fastws.rooms.router import _Namespace

__all__ = ["Cluster", "RoomUnavailable", "cluster_from_env"]

logger = logging.getLogger("fastws.cluster")


class RoomUnavailable(FastWSError):
    """The cluster cannot serve the room now (Redis unreachable, or the room is moving)."""


# ------------------------------------------------------------------ scripts

ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur then return {0, cur} end
local t = redis.call('INCR', KEYS[2])
local v = ARGV[1] .. ' ' .. t
redis.call('SET', KEYS[1], v, 'PX', ARGV[2])
return {1, v}
"""

RENEW = """
local out = {}
for i, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[i + 1] then
    redis.call('PEXPIRE', k, ARGV[1])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
return 0
"""

# KEYS: lease kv keys members meta inbox alarms log
# ARGV: lease-value cursor delete-all alarm-op alarm-member, then counted groups:
#   puts (k v)*, dels k*, member sets (id rec)*, member dels id*,
#   the message log: new-epoch ('' or the epoch: the log restarts), keep-from ('' or the oldest
#   offset kept), entries (offset time envelope)*; then publishes (channel payload)*
FLUSH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local delta = 0
if ARGV[3] == '1' then
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[5], 'bytes', 0)
end
local i = 6
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  local k, v = ARGV[i], ARGV[i + 1]; i = i + 2
  local old = redis.call('HSTRLEN', KEYS[2], k)
  if old == 0 then
    delta = delta + #k
    redis.call('ZADD', KEYS[3], 0, k)
  end
  redis.call('HSET', KEYS[2], k, v)
  delta = delta + #v - old
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  local k = ARGV[i]; i = i + 1
  local old = redis.call('HSTRLEN', KEYS[2], k)
  if old > 0 then
    delta = delta - old - #k
    redis.call('HDEL', KEYS[2], k)
    redis.call('ZREM', KEYS[3], k)
  end
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 1]); i = i + 2
end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('HDEL', KEYS[4], ARGV[i]); i = i + 1
end
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[5], 'cursor', ARGV[2])
  redis.call('XTRIM', KEYS[6], 'MINID', ARGV[2])
end
if ARGV[4] == '-' then
  redis.call('HDEL', KEYS[5], 'alarm')
  redis.call('ZREM', KEYS[7], ARGV[5])
elseif ARGV[4] ~= '' then
  redis.call('HSET', KEYS[5], 'alarm', ARGV[4])
  redis.call('ZADD', KEYS[7], ARGV[4], ARGV[5])
end
if delta ~= 0 then redis.call('HINCRBY', KEYS[5], 'bytes', delta) end
if ARGV[i] ~= '' then
  redis.call('DEL', KEYS[8])
  redis.call('HSET', KEYS[5], 'history_epoch', ARGV[i], 'history_last', 0)
end
local keep = ARGV[i + 1]
n = tonumber(ARGV[i + 2]); i = i + 3
for _ = 1, n do
  redis.call('XADD', KEYS[8], ARGV[i] .. '-1', 't', ARGV[i + 1], 'e', ARGV[i + 2])
  redis.call('HSET', KEYS[5], 'history_last', ARGV[i]); i = i + 3
end
if keep ~= '' then redis.call('XTRIM', KEYS[8], 'MINID', keep) end
n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('PUBLISH', ARGV[i], ARGV[i + 1]); i = i + 2
end
return 1
"""

_SCRIPTS = {"acquire": ACQUIRE, "renew": RENEW, "release": RELEASE, "flush": FLUSH}

INBOX_MAXLEN = 100_000  # a room whose owner is gone buffers at most this many inbox entries


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _json_scope(scope: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON-able entries of ``request.scope`` (verified claims in ``user``, path ``params``,
    ``client_ip``): what a room on another node sees of them."""
    out = {}
    for k, v in scope.items():
        try:
            orjson.dumps(v)
        except TypeError:
            continue
        out[k] = v
    return out or None


def encode_request(request: Any) -> dict[str, Any]:
    """A :class:`~fastws.Request` as JSON for the owner (the body base64, the JSON-able scope)."""
    doc = {"m": request.method, "t": request.target, "h": list(request.headers), "v": request.http_version,
           "r": list(request.remote_address) if request.remote_address else None, "b": _b64(request.body or b"")}
    scope = _json_scope(request.scope) if request.scope else None
    if scope:
        doc["s"] = scope
    return doc


def decode_request(doc: dict[str, Any]) -> Any:
    from fastws.handshake import Headers, Request

    req = Request(doc["m"], doc["t"], Headers([(k, v) for k, v in doc["h"]]), doc.get("v") or "1.1",
                  tuple(doc["r"]) if doc.get("r") else None)
    req.body = base64.b64decode(doc.get("b") or "")
    if doc.get("s"):
        req.scope.update(doc["s"])
    return req


def encode_response(resp: Any) -> dict[str, Any]:
    body = resp.body.encode("utf-8") if isinstance(resp.body, str) else bytes(resp.body)
    return {"s": resp.status, "b": _b64(body), "h": [list(h) for h in resp.headers], "c": resp.content_type}


def decode_response(doc: dict[str, Any]) -> Any:
    from fastws.handshake import Response

    return Response(doc["s"], base64.b64decode(doc["b"]), [(k, v) for k, v in doc["h"]], doc["c"])


class Cluster:
    """The Redis backplane of one or more :class:`~fastws.RoomRouter` s.

    Args:
        url: a Redis URL (``redis://host:port/db``, ``rediss://`` for TLS, ``unix://``).
        lease_ttl: seconds an owner's lease lasts without renewal (renewed every third of it).
            A dead owner's rooms move after at most this plus one renewal period.
        prefix: the prefix of every key and channel (to share one Redis between clusters).
        request_timeout: how long a node waits for a room's owner to answer a plain HTTP request
            or an accept hook (504 after that).

    One ``Cluster`` serves one event loop (one process); every process that names the same
    Redis and prefix is in the same cluster. See the module docstring for the design.
    """

    def __init__(self, url: str, *, lease_ttl: float = 3.0, prefix: str = "fastws",
                 request_timeout: float = 10.0) -> None:
        if lease_ttl < 0.3:
            raise ValueError("lease_ttl must be at least 0.3 s")
        self.url = url
        self.lease_ttl = float(lease_ttl)
        self.prefix = prefix
        self.request_timeout = request_timeout
        self.node_id = uuid.uuid4().hex[:16]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started: asyncio.Future[None] | None = None
        self._r: Any = None       # commands (pool)
        self._w: Any = None       # the writer's connection (flushes, member events)
        self._rx: Any = None      # the blocking XREAD connection
        self._ps: Any = None      # pub/sub
        self._sha: dict[str, str] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._namespaces: dict[str, _Namespace] = {}
        self.owned: dict[str, ClusterSlot] = {}          # inbox key -> owned slot
        self.members: dict[str, ClusterSlot] = {}        # out channel -> slot in the member role
        self._dirty: dict[ClusterSlot, None] = {}
        self._writer_event: asyncio.Event | None = None
        self._barriers: list[asyncio.Future[None]] = []
        self._subscribed: dict[str, asyncio.Future[None]] = {}
        self._rpc: dict[str, asyncio.Future[Any]] = {}
        self._rpc_seq = 0
        self._wake_last = "$"
        self.down_since: float | None = None             # monotonic time Redis first failed
        self._last_ok = 0.0
        self._heartbeat_ok = False
        self._closing = False
        self._writer_stale = False  # Redis failed since the writer's last pipeline: reconnect first

    # ------------------------------------------------------------ names

    def room_key(self, class_name: str, name: str) -> str:
        # the braces make every key of one room hash to one Redis Cluster slot
        return f"{self.prefix}:room:{{{class_name}:{urllib.parse.quote(name, safe='')}}}"

    @property
    def node_key(self) -> str:
        return f"{self.prefix}:node:{self.node_id}"

    def node_channel(self, node: str) -> str:
        return f"{self.prefix}:node:{node}:rpc"

    @property
    def wake_key(self) -> str:
        return f"{self.prefix}:node:{self.node_id}:wake"

    @property
    def alarms_key(self) -> str:
        return f"{self.prefix}:alarms"

    @property
    def ttl_ms(self) -> int:
        return int(self.lease_ttl * 1000)

    @property
    def available(self) -> bool:
        return self._started is not None and self._started.done() and self.down_since is None

    # ------------------------------------------------------------ lifecycle

    def register(self, ns: _Namespace) -> None:
        self._namespaces[ns.room_class.__name__] = ns

    def unregister(self, ns: _Namespace) -> None:
        if self._namespaces.get(ns.room_class.__name__) is ns:
            del self._namespaces[ns.room_class.__name__]

    async def start(self) -> None:
        """Connect to Redis and start the node's background tasks (idempotent)."""
        loop = asyncio.get_running_loop()
        if self._started is not None and self._loop is not loop:  # a new loop (the old one is gone)
            self._started = None
            self._r = self._rx = self._ps = self._w = None
            self._tasks = []
            self.owned.clear()
            self.members.clear()
            self._subscribed.clear()
            self._dirty.clear()
        if self._started is not None and self._loop is loop:
            if not self._started.done():
                await asyncio.shield(self._started)
            elif self._started.exception() is not None:
                self._started = None  # try again
            if self._started is not None:
                self._started.result()
                return
        self._loop = loop
        self._started = loop.create_future()
        try:
            await self._connect()
        except BaseException as exc:
            self._started.set_exception(exc)
            self._started.exception()
            raise
        self._started.set_result(None)

    async def _connect(self) -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError:  # pragma: no cover - a dependency
            raise ImportError("fastws.Cluster requires redis-py: pip install 'redis[hiredis]'") from None
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        timeout = max(1.0, self.lease_ttl / 2)
        # reads and idempotent commands retry once on a fresh connection (a Redis restart leaves
        # the pooled ones dead); the writer's flushes never retry (a publish must not go twice)
        self._r = aioredis.Redis.from_url(self.url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                          health_check_interval=0,
                                          retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), 1),
                                          retry_on_error=[RedisConnectionError, RedisTimeoutError])
        self._w = aioredis.Redis.from_url(self.url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                          health_check_interval=0)
        self._rx = aioredis.Redis.from_url(self.url, socket_timeout=None, socket_connect_timeout=timeout,
                                           single_connection_client=True)
        try:
            await self._load_scripts()
            await self._heartbeat()
        except Exception as exc:
            await self._close_clients()
            raise RoomUnavailable(f"cannot reach Redis at {_safe_url(self.url)}: {exc}") from None
        self._writer_event = asyncio.Event()
        self._ps = self._r.pubsub()
        await self._ps.subscribe(self.node_channel(self.node_id))
        self._subscribed[self.node_channel(self.node_id)] = _done_future(self._loop)
        self._closing = False
        for coro in (self._writer(), self._reader(), self._listener(), self._ticker()):
            t = asyncio.get_running_loop().create_task(coro)
            self._tasks.append(t)
        logger.info("fastws.cluster: node %s joined the cluster on %s", self.node_id, _safe_url(self.url))

    async def _load_scripts(self) -> None:
        for name, src in _SCRIPTS.items():
            self._sha[name] = await self._r.script_load(src)

    async def _script(self, name: str, numkeys: int, *args: Any) -> Any:
        """EVALSHA, loading the scripts again when Redis lost them (it restarted)."""
        try:
            return await self._r.evalsha(self._sha[name], numkeys, *args)
        except Exception as exc:
            if not _is_noscript(exc):
                raise
        await self._load_scripts()
        return await self._r.evalsha(self._sha[name], numkeys, *args)

    async def stop(self) -> None:
        """Release this node's leases and stop its tasks."""
        if self._started is None:
            return
        self._closing = True
        if self.owned and self.down_since is None:
            try:
                pipe = self._r.pipeline(transaction=False)
                for slot in self.owned.values():
                    pipe.evalsha(self._sha["release"], 1, slot.key("lease"), slot.lease)
                pipe.delete(self.node_key, self.wake_key)
                await pipe.execute()
            except Exception as exc:
                logger.warning("fastws.cluster: could not release the leases: %s", exc)
        if self._writer_event is not None:
            self._writer_event.set()
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            # redis-py may turn a cancellation into a connection error: the loops also end on
            # _closing, and a task that still does not end is left behind after 2 s
            await asyncio.wait(self._tasks, timeout=2.0)
        self._tasks.clear()
        await self._close_clients()
        self._started = None
        self.owned.clear()
        self.members.clear()
        self._subscribed.clear()

    async def _close_clients(self) -> None:
        for attr in ("_ps", "_rx", "_w", "_r"):
            c = getattr(self, attr)
            setattr(self, attr, None)
            if c is not None:
                try:
                    await c.aclose()
                except Exception:
                    pass

    # ------------------------------------------------------------ health

    def _ok(self) -> None:
        self._last_ok = time.monotonic()
        if self.down_since is not None:
            logger.warning("fastws.cluster: Redis is reachable again (node %s)", self.node_id)
            self.down_since = None

    def _failed(self, exc: BaseException) -> None:
        now = time.monotonic()
        self._writer_stale = True
        if self.down_since is None:
            self.down_since = now
            logger.error("fastws.cluster: Redis unreachable (%s); rooms answer 503 until it is back", exc)
        if now - self._last_ok > self.lease_ttl:
            self.drop_all("Redis unreachable for longer than the lease")

    def drop_all(self, reason: str) -> None:
        """Stop every owned room and close every room socket of this node (1012)."""
        for slot in list(self.owned.values()):
            slot.lost(reason)
        for slot in list(self.members.values()):
            slot.lost(reason)

    # ------------------------------------------------------------ ownership

    async def ensure(self, slot: ClusterSlot) -> bool:
        """Make sure ``slot`` has a role: True when this node owns it, False when a member.

        Raises RoomUnavailable when Redis cannot be reached."""
        await self.start()
        if self.down_since is not None:
            raise RoomUnavailable("Redis unreachable")
        if slot.role == "owner":
            return True
        if slot.ensuring is not None:
            await asyncio.shield(slot.ensuring)
            return await self.ensure(slot) if slot.role not in ("owner", "member") else slot.role == "owner"
        fut = slot.ensuring = asyncio.get_running_loop().create_future()
        try:
            won, value = await self._script("acquire", 2, slot.key("lease"), slot.key("fence"), self.node_id,
                                            self.ttl_ms)
            self._ok()
            value = value.decode() if isinstance(value, bytes) else value
            if won:
                await slot.take_over(value)
                self.owned[slot.key("in")] = slot
                self._wake_reader()
                return True
            if value.split(" ", 1)[0] == self.node_id:  # ours, but this slot did not know (left over)
                await self._script("release", 1, slot.key("lease"), value)
                return await self._ensure_again(slot, fut)
            if slot.role != "member":
                await self.subscribe(slot.key("out"))
                slot.become_member()
                self.members[slot.key("out")] = slot
            return False
        except RoomUnavailable:
            raise
        except Exception as exc:
            if not _is_redis_error(exc):
                raise
            self._failed(exc)
            raise RoomUnavailable(f"Redis unreachable: {exc}") from None
        finally:
            slot.ensuring = None
            if not fut.done():
                fut.set_result(None)

    async def _ensure_again(self, slot: ClusterSlot, fut: asyncio.Future[None]) -> bool:
        slot.ensuring = None
        fut.set_result(None)
        return await self.ensure(slot)

    def forget(self, slot: ClusterSlot) -> None:
        """``slot`` left memory or lost its role: stop reading its inbox and its channel."""
        if self.owned.get(slot.key("in")) is slot:
            del self.owned[slot.key("in")]
        ch = slot.key("out")
        if self.members.get(ch) is slot:
            del self.members[ch]
            self._subscribed.pop(ch, None)
            if self._ps is not None and not self._closing:
                t = asyncio.get_running_loop().create_task(self._unsubscribe(ch))
                t.add_done_callback(_ignore_result)
        self._dirty.pop(slot, None)

    async def _unsubscribe(self, ch: str) -> None:
        try:
            await self._ps.unsubscribe(ch)
        except Exception:
            pass

    async def release(self, slot: ClusterSlot) -> None:
        """Give up the lease of an owned slot (it leaves memory)."""
        lease = slot.lease
        self.forget(slot)
        if lease and self._r is not None and self.down_since is None:
            try:
                await self._script("release", 1, slot.key("lease"), lease)
            except Exception:
                pass

    # ------------------------------------------------------------ pub/sub

    async def subscribe(self, channel: str) -> None:
        fut = self._subscribed.get(channel)
        if fut is None:
            fut = self._subscribed[channel] = asyncio.get_running_loop().create_future()
            try:
                await self._ps.subscribe(channel)
            except Exception:
                self._subscribed.pop(channel, None)
                raise
        await asyncio.wait_for(asyncio.shield(fut), self.lease_ttl)

    async def _listener(self) -> None:
        delay = 0.05
        while not self._closing:
            try:
                msg = await self._ps.get_message(timeout=1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                try:
                    await self._ps.ping()  # reconnects and resubscribes
                except Exception:
                    pass
                continue
            delay = 0.05
            if msg is None:
                continue
            kind = msg["type"]
            ch = msg["channel"]
            ch = ch.decode() if isinstance(ch, bytes) else ch
            if kind == b"message" or kind == "message":
                slot = self.members.get(ch)
                if slot is not None:
                    try:
                        slot.on_envelope(msg["data"])
                    except Exception:
                        logger.exception("fastws.cluster: room envelope failed on %s", ch)
                elif ch == self.node_channel(self.node_id):
                    self._on_reply(msg["data"])
            elif kind in (b"subscribe", "subscribe"):
                fut = self._subscribed.get(ch)
                if fut is not None and not fut.done():
                    fut.set_result(None)

    # ------------------------------------------------------------ requests to a remote owner

    async def request(self, slot: ClusterSlot, kind: str, request: Any, sock_id: str = "") -> Any:
        """Run a plain request (kind "R") or an accept hook (kind "A") on the room's owner."""
        self._rpc_seq += 1
        rid = f"{self._rpc_seq}"
        fut = self._rpc[rid] = asyncio.get_running_loop().create_future()
        slot.member_event([kind, rid, self.node_id, encode_request(request), sock_id])
        try:
            return await asyncio.wait_for(fut, self.request_timeout)
        finally:
            self._rpc.pop(rid, None)

    def _on_reply(self, data: bytes) -> None:
        doc = orjson.loads(data)
        fut = self._rpc.get(doc["id"])
        if fut is not None and not fut.done():
            fut.set_result(doc)

    # ------------------------------------------------------------ the writer: one pipeline per turn

    def schedule(self, slot: ClusterSlot) -> None:
        self._dirty[slot] = None
        ev = self._writer_event
        if ev is not None:
            ev.set()

    async def _writer(self) -> None:
        assert self._writer_event is not None
        ev = self._writer_event
        while not self._closing:
            await ev.wait()
            ev.clear()
            await asyncio.sleep(0)  # let the rest of this turn add to the batch
            dirty, self._dirty = self._dirty, {}
            barriers, self._barriers = self._barriers, []
            batches = []
            pipe = self._w.pipeline(transaction=False)
            for slot in dirty:
                b = slot.take_batch(pipe, self._sha)
                if b is not None:
                    batches.append(b)
            if not batches:
                _resolve_all(barriers)
                continue
            if self._writer_stale:
                # the connection may be a dead one from before a Redis restart: a flush sent on
                # it would fail (and stop its room) although Redis is back
                self._writer_stale = False
                try:
                    await self._w.connection_pool.disconnect()
                except Exception:
                    pass
            try:
                results = await pipe.execute(raise_on_error=False)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                results = [exc] * sum(n for _, n in batches)
            i = 0
            noscript = False
            for b, n in batches:
                res = results[i:i + n]
                i += n
                if any(_is_noscript(r) for r in res):
                    noscript = True
                try:
                    b.done(res)
                except Exception:
                    logger.exception("fastws.cluster: handling a flush result failed")
            _resolve_all(barriers)
            errors = [r for r in results if isinstance(r, Exception)]
            if noscript:
                try:
                    await self._load_scripts()
                except Exception:
                    pass
            if errors and not all(_is_noscript(r) for r in errors):
                self._failed(errors[0])
            else:
                self._ok()

    def barrier(self) -> asyncio.Future[None]:
        """A future done once everything handed to the writer so far has been sent (and answered)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._barriers.append(fut)
        if self._writer_event is not None:
            self._writer_event.set()
        return fut

    # ------------------------------------------------------------ the reader: inboxes of owned rooms

    def _wake_reader(self) -> None:
        if self._r is None:
            return
        t = asyncio.get_running_loop().create_task(self._r.xadd(self.wake_key, {"w": 1}, maxlen=16, approximate=True))
        t.add_done_callback(_ignore_result)

    async def _reader(self) -> None:
        delay = 0.05
        block = max(100, min(1000, self.ttl_ms // 3))
        while not self._closing:
            streams: dict[str, str] = {self.wake_key: self._wake_last}
            for key, slot in self.owned.items():
                if slot.role == "owner":
                    streams[key] = slot.inbox_last
            try:
                res = await self._rx.xread(streams, count=1000, block=block)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed(exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            delay = 0.05
            self._ok()
            if self._wake_last == "$":
                self._wake_last = "0-0"
            for key, entries in res or ():
                key = key.decode() if isinstance(key, bytes) else key
                if not entries:
                    continue
                if key == self.wake_key:
                    last = entries[-1][0]
                    self._wake_last = last.decode() if isinstance(last, bytes) else last
                    continue
                owned = self.owned.get(key)
                if owned is None or owned.role != "owner":
                    continue
                try:
                    owned.on_inbox(entries)
                except Exception:
                    logger.exception("fastws.cluster: reading the inbox of %s failed", key)

    # ------------------------------------------------------------ the ticker: heartbeat, leases, watch

    async def _heartbeat(self) -> None:
        prev = await self._r.set(self.node_key, "1", px=self.ttl_ms, get=True)
        if prev is None and self._heartbeat_ok:
            # the others saw this node dead (paused or cut off): what it holds is theirs now
            logger.error("fastws.cluster: node %s was presumed dead (its heartbeat expired); "
                         "closing its room sockets", self.node_id)
            self.drop_all("this node's heartbeat expired")
        self._heartbeat_ok = True
        self._ok()

    async def _ticker(self) -> None:
        period = self.lease_ttl / 3
        while not self._closing:
            await asyncio.sleep(period)
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if _is_redis_error(exc):
                    self._failed(exc)
                else:
                    logger.exception("fastws.cluster: periodic check failed")

    async def _tick(self) -> None:
        await self._heartbeat()
        owned = [s for s in self.owned.values() if s.role == "owner" and s.lease]
        if owned:
            keys = [s.key("lease") for s in owned]
            res = await self._script("renew", len(keys), *keys, self.ttl_ms, *[s.lease for s in owned])
            for slot, ok in zip(owned, res):
                if not ok:
                    slot.lost("its lease was taken over")
        # members: is the owner still there? (it takes over when the lease is gone)
        watch = [s for s in self.members.values() if s.role == "member"]
        if watch:
            pipe = self._r.pipeline(transaction=False)
            for s in watch:
                pipe.exists(s.key("lease"))
            for slot, alive in zip(watch, await pipe.execute()):
                if not alive and slot.ensuring is None:
                    self._spawn(self._take_over(slot))
        # owners: drop the members of dead nodes
        nodes: dict[str, list[ClusterSlot]] = {}
        for s in owned:
            for n in s.remote_nodes():
                nodes.setdefault(n, []).append(s)
        if nodes:
            pipe = self._r.pipeline(transaction=False)
            names = list(nodes)
            for n in names:
                pipe.exists(f"{self.prefix}:node:{n}")
            for n, alive in zip(names, await pipe.execute()):
                if not alive:
                    for s in nodes[n]:
                        s.drop_node(n)
        # alarms of rooms nobody owns
        due = await self._r.zrangebyscore(self.alarms_key, "-inf", time.time() + self.lease_ttl, start=0, num=100)
        for member in due:
            member = member.decode() if isinstance(member, bytes) else member
            cls_name, _, name = member.partition("\x00")
            ns = self._namespaces.get(cls_name)
            if ns is None:
                continue
            waking: Any = ns.slot(name)
            if waking.role not in ("owner", "member") and waking.ensuring is None:
                self._spawn(self._take_over(waking))

    async def _take_over(self, slot: ClusterSlot) -> None:
        try:
            await self.ensure(slot)
        except RoomUnavailable:
            pass

    def _spawn(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.append(t)
        t.add_done_callback(self._task_done)

    def _task_done(self, t: asyncio.Task[Any]) -> None:
        try:
            self._tasks.remove(t)
        except ValueError:
            pass
        if not t.cancelled() and t.exception() is not None:
            logger.error("fastws.cluster: a background task failed", exc_info=t.exception())

    # ------------------------------------------------------------ reads for rooms

    @property
    def redis(self) -> Any:
        """The redis-py asyncio client (for reads)."""
        if self._r is None:
            raise RoomUnavailable("the cluster is not connected")
        return self._r


def _resolve_all(futs: list[asyncio.Future[None]]) -> None:
    for f in futs:
        if not f.done():
            f.set_result(None)


def _done_future(loop: Any) -> asyncio.Future[None]:
    f: asyncio.Future[None] = loop.create_future()
    f.set_result(None)
    return f


def _ignore_result(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


def _is_noscript(r: Any) -> bool:
    """A script Redis does not have (redis-py raises NoScriptError, without the NOSCRIPT prefix)."""
    return isinstance(r, Exception) and (type(r).__name__ == "NoScriptError" or "NOSCRIPT" in str(r)
                                         or "No matching script" in str(r))


def _is_redis_error(exc: BaseException) -> bool:
    try:
        import redis.exceptions as rex
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, (rex.RedisError, OSError, asyncio.TimeoutError, ConnectionError))


def _safe_url(url: str) -> str:
    """The URL without its password (for logs)."""
    p = urllib.parse.urlsplit(url)
    if p.password:
        netloc = f"{p.username or ''}:***@{p.hostname}" + (f":{p.port}" if p.port else "")
        return urllib.parse.urlunsplit((p.scheme, netloc, p.path, p.query, p.fragment))
    return url


_from_env: dict[tuple[str, float, str], Cluster] = {}


def cluster_from_env() -> Cluster | None:
    """The process-wide cluster named by ``FASTWS_REDIS_URL`` (``FASTWS_LEASE_TTL``,
    ``FASTWS_CLUSTER_PREFIX``), or None when it is not set."""
    url = os.environ.get("FASTWS_REDIS_URL")
    if not url:
        return None
    ttl = float(os.environ.get("FASTWS_LEASE_TTL") or 3.0)
    prefix = os.environ.get("FASTWS_CLUSTER_PREFIX") or "fastws"
    key = (url, ttl, prefix)
    c = _from_env.get(key)
    if c is None:
        c = _from_env[key] = Cluster(url, lease_ttl=ttl, prefix=prefix)
    return c


Callback = Callable[..., Any]
