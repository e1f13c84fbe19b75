"""A room's slot when the room lives in a cluster (see :mod:`fastws.cluster` for the design).

A :class:`ClusterSlot` is a :class:`~fastws.rooms.room.RoomSlot` with a *role* on this node:

- ``"owner"``: the room's one live instance is here. Events of local sockets go straight to the
  mailbox; events of members on other nodes come from the room's inbox stream. Every output
  (to local sockets and, in one envelope, to other nodes) waits for the flush that commits the
  writes made before it, and the flush is fenced by the lease.
- ``"member"``: the room is owned elsewhere. Local sockets' events go to the inbox; the owner's
  envelopes come in on the room's channel and are delivered to the local sockets it joined.
- ``"loading"``: taking the room over (members and inbox being read); events wait.
- ``None``: no role (new, or the room was lost): nothing is sent.

:class:`RedisStorage` is the room's storage in a cluster: keys and values in a Redis hash (and
a sorted set for ordered listing), written only by the owner's fenced flush.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import logging
from collections import deque
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from fastws.cluster import (
    INBOX_MAXLEN,
    RoomUnavailable,
    _is_noscript,
    decode_request,
    encode_request,
    encode_response,
)
from fastws.rooms.room import (
    ACCEPT,
    ALARM,
    CLOSE,
    CONNECT,
    MESSAGE,
    REQUEST,
    RoomSlot,
    RoomSocket,
    _close_conn,
    _jsonable,
)
from fastws.rooms.storage import _DELETE, StorageError, StorageFull, Transaction, _check_key, _encode, _prefix_end

if TYPE_CHECKING:  # pragma: no cover
    from fastws.cluster import Cluster
    from fastws.rooms.room import _Namespace

__all__ = ["ClusterSlot", "RemoteSocket", "RedisStorage"]

logger = logging.getLogger("fastws.cluster")

_SEND_NOW = RoomSlot.send_now


class _RemoteConn:
    """What a remote member's ``conn`` is on the owner: open until it leaves, never buffered, with
    the request that opened it (as its node saw it)."""

    __slots__ = ("doc", "_request")
    open = True
    buffered_amount = 0

    def __init__(self, doc: dict[str, Any] | None = None) -> None:
        self.doc = doc  # the request as JSON (kept in the member record for the next owner)
        self._request: Any = None

    @property
    def request(self) -> Any:
        if self._request is None and self.doc is not None:
            self._request = decode_request(self.doc)
        return self._request


class RemoteSocket(RoomSocket):
    """A member of an owned room connected to another node (``node``)."""

    __slots__ = ("node",)

    def __init__(self, slot: ClusterSlot, sock_id: str, node: str, tags: Iterable[str] = (),
                 attachment: bytes | None = None, request: dict[str, Any] | None = None) -> None:
        super().__init__(slot, tags)
        self._id = sock_id
        self._att = attachment
        self.node = node
        self.conn = _RemoteConn(request)  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<RemoteSocket {self._id} node={self.node} tags={list(self.tags)}>"


def _payload(data: str | bytes) -> list[Any]:
    if type(data) is str:
        return [data, 0]
    assert isinstance(data, (bytes, bytearray))
    return [base64.b64encode(data).decode("ascii"), 1]


def _unpayload(p: str, binary: int) -> str | bytes:
    return base64.b64decode(p) if binary else p


class _OwnerBatch:
    __slots__ = ("slot", "local", "seq", "args", "tries")

    def __init__(self, slot: ClusterSlot, local: list[Any], seq: int, args: list[Any]) -> None:
        self.slot = slot
        self.local = local
        self.seq = seq
        self.args = args
        self.tries = 0

    def done(self, results: list[Any]) -> None:
        self.slot._flushed(self, results[0])


class _MemberBatch:
    __slots__ = ("slot", "ids")

    def __init__(self, slot: ClusterSlot, ids: list[str]) -> None:
        self.slot = slot
        self.ids = ids

    def done(self, results: list[Any]) -> None:
        if any(isinstance(r, Exception) for r in results):
            self.slot.lost(f"sending to the room's inbox failed: {next(r for r in results if isinstance(r, Exception))}")


class ClusterSlot(RoomSlot):
    """The registry entry of one room of a cluster (see the module docstring). Internal."""

    __slots__ = ("cluster", "role", "lease", "ensuring", "_keys", "inbox_last", "cursor", "by_id", "n_remote",
                 "turn_local", "turn_recs", "turn_replies", "mem_set", "mem_del", "xadds", "loading", "inflight",
                 "ev_entries", "waiters", "committed_seq", "bytes_used", "retry")

    def __init__(self, ns: _Namespace, name: str) -> None:
        super().__init__(ns, name)
        assert ns.cluster is not None
        self.cluster: Cluster = ns.cluster
        self.role: str | None = None
        self.lease = ""
        self.ensuring: asyncio.Future[None] | None = None
        base = self.cluster.room_key(ns.room_class.__name__, name)
        self._keys = {k: f"{base}:{k}" for k in ("lease", "fence", "kv", "keys", "members", "meta", "in", "out",
                                                        "log")}
        self.inbox_last = "0-0"
        self.cursor = ""
        self.by_id: dict[str, RoomSocket] = {}
        self.n_remote = 0
        self.turn_local: list[tuple[Any, tuple[Any, ...]]] = []
        self.turn_recs: list[list[Any]] = []
        self.turn_replies: list[tuple[str, bytes]] = []
        self.mem_set: dict[str, bytes] = {}
        self.mem_del: set[str] = set()
        self.xadds: list[dict[str, Any]] = []
        self.loading: list[tuple[Any, ...]] = []
        self.inflight: deque[list[Any]] = deque()     # [entry id, done] in delivery order
        self.ev_entries: dict[int, list[Any]] = {}     # id(event) -> its inflight entry
        self.waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.committed_seq = 0
        self.bytes_used = 0
        self.retry: _OwnerBatch | None = None

    def key(self, name: str) -> str:
        return self._keys[name]

    @property
    def node_id(self) -> str:
        return self.cluster.node_id

    def __repr__(self) -> str:
        return f"<ClusterSlot {self.ns.room_class.__name__}:{self.name} role={self.role}>"

    # ------------------------------------------------------------ storage

    def get_storage(self) -> Any:
        st = self.storage
        if st is None:
            st = self.storage = RedisStorage(self)  # type: ignore[assignment]
        return st

    # ------------------------------------------------------------ the mailbox, by role

    def deliver(self, ev: tuple[Any, ...]) -> None:
        role = self.role
        kind, sock = ev[0], ev[1]
        if role == "owner":
            if kind == CONNECT and type(sock) is RoomSocket:
                self.by_id[sock.id] = sock
            RoomSlot.deliver(self, ev)
            return
        if role == "loading":
            self.loading.append(ev)
            return
        if role == "member":
            if kind == CONNECT:
                self.by_id[sock.id] = sock
                req = sock.conn.request if sock.conn is not None else None
                self.member_event(["C", sock.id, self.cluster.node_id, list(sock.tags),
                                   orjson.Fragment(sock._att) if sock._att is not None else None,
                                   encode_request(req) if req is not None else None])
            elif kind == MESSAGE:
                data = ev[2]
                if type(data) is str:
                    self.member_event(["M", sock.id, data])
                else:
                    self.member_event(["M", sock.id, None], bytes(data))
            elif kind == CLOSE:
                self.by_id.pop(sock.id, None)
                self.member_event(["X", sock.id, ev[2], ev[3], ev[4]])
            elif kind in (REQUEST, ACCEPT):
                _fail(ev[3])
            return
        if kind in (REQUEST, ACCEPT):
            _fail(ev[3])

    def member_event(self, doc: list[Any], binary: bytes | None = None) -> None:
        fields: dict[str, Any] = {"e": orjson.dumps(doc)}
        if binary is not None:
            fields["b"] = binary
        self.xadds.append(fields)
        self.cluster.schedule(self)

    def _done(self, ev: tuple[Any, ...]) -> None:
        entry = self.ev_entries.pop(id(ev), None)
        if entry is None:
            return
        entry[1] = True
        self._advance()

    def _advance(self) -> None:
        q = self.inflight
        moved = False
        while q and q[0][1]:
            self.cursor = q.popleft()[0]
            moved = True
        if moved:
            self.cluster.schedule(self)

    # ------------------------------------------------------------ the inbox (owner)

    def on_inbox(self, entries: list[Any]) -> None:
        for sid, fields in entries:
            sid = sid.decode() if isinstance(sid, bytes) else sid
            self.inbox_last = sid
            try:
                doc = orjson.loads(fields[b"e"] if b"e" in fields else fields["e"])
                ev = self._event(doc, fields.get(b"b"))
            except Exception:
                logger.exception("fastws.cluster: room %r: bad inbox entry %s", self.name, sid)
                ev = None
            entry = [sid, ev is None]
            self.inflight.append(entry)
            if ev is None:
                self._advance()
                continue
            self.ev_entries[id(ev)] = entry
            self.deliver(ev)
            if self.role != "owner":
                return

    def _event(self, doc: list[Any], binary: bytes | None) -> tuple[Any, ...] | None:
        k = doc[0]
        if k == "M":
            sock = self.by_id.get(doc[1])
            if sock is None:
                return None
            return (MESSAGE, sock, doc[2] if binary is None else binary, None, None)
        if k == "C":
            sid, node, tags, att = doc[1], doc[2], doc[3], doc[4]
            if sid in self.by_id and node != self.cluster.node_id:
                return None
            sock = self.by_id.get(sid)
            if sock is None:
                sock = RemoteSocket(self, sid, node, tags, orjson.dumps(att) if att is not None else None,
                                    doc[5] if len(doc) > 5 else None)
                self.by_id[sid] = sock
            return (CONNECT, sock, None, None, None)
        if k == "X":
            sock = self.by_id.get(doc[1])
            if sock is None:
                return None
            if type(sock) is RemoteSocket:
                sock.node = ""  # gone: not watched any more
            return (CLOSE, sock, doc[2], doc[3], doc[4])
        if k in ("R", "A"):
            rid, node, req = doc[1], doc[2], decode_request(doc[3])
            fut: asyncio.Future[Any] = self.ns.loop.create_future()
            fut.add_done_callback(lambda f: self._reply(k, node, rid, f))
            return (REQUEST if k == "R" else ACCEPT, None, req, fut, None)
        return None

    def _reply(self, kind: str, node: str, rid: str, fut: asyncio.Future[Any]) -> None:
        from fastws.handshake import Response
        from fastws.rooms.router import _to_response

        doc: dict[str, Any] = {"id": rid}
        if fut.cancelled() or fut.exception() is not None:
            exc = None if fut.cancelled() else fut.exception()
            status = 503 if isinstance(exc, (RoomUnavailable, StorageError)) else 500
            doc["r"] = encode_response(Response(status, "Room unavailable\n" if status == 503 else
                                                "Internal Server Error\n"))
        else:
            result = fut.result()
            if kind == "R":
                doc["r"] = encode_response(_to_response(result))
            elif isinstance(result, Response):
                doc["r"] = encode_response(result)
            elif isinstance(result, dict):
                doc["acc"] = {k: result[k] for k in ("tags", "attachment") if k in result}
            else:
                doc["acc"] = {}
        if self.role == "owner":
            self.turn_replies.append((self.cluster.node_channel(node), orjson.dumps(doc)))
            self.cluster.schedule(self)

    # ------------------------------------------------------------ output (owner)

    def out(self, fn: Any, *args: Any) -> None:
        if self.role != "owner":
            return
        if fn is _close_conn or getattr(fn, "__func__", None) is _SEND_NOW:
            sock = args[0]
            if type(sock) is RemoteSocket:
                if sock.conn is None:
                    return
                if fn is _close_conn:
                    self.turn_recs.append(["c", sock.id, args[1], args[2]])
                else:
                    self.turn_recs.append(["s", sock.id, *_payload(args[1])])
                self.cluster.schedule(self)
                return
        self.turn_local.append((fn, args))
        self.cluster.schedule(self)

    def local_conns(self) -> list[Any]:
        conns = self.all_conns
        if conns is None:
            conns = self.all_conns = [s.conn for s in self.sockets if type(s) is not RemoteSocket
                                      and s.conn is not None]
        return conns

    def broadcast(self, message: Any, exclude: Any, tag: str | None) -> None:
        if self.role != "owner":
            return
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
            self._skip(h, [s for s in excl if s in self.sockets])
        if self.batcher is not None and type(message) is not bytes:
            for s in self.sockets:
                if s not in excl and (tag is None or tag in s.tags):
                    self.batch_add(s, message)
            return
        data = _jsonable(message)
        if tag is None and not excl:
            conns = self.local_conns()
            if conns:
                self.out(self._broadcast_conns, conns, data)
            if self.n_remote:
                self.turn_recs.append(["a", None, *_payload(data)])
                self.cluster.schedule(self)
            return
        local: list[RoomSocket] = []
        remote: list[str] = []
        for s in self.sockets:
            if s in excl or (tag is not None and tag not in s.tags):
                continue
            if type(s) is RemoteSocket:
                remote.append(s.id)
            else:
                local.append(s)
        if local:
            self.out(self._broadcast_now, local, data)
        if remote:
            if tag is None and len(remote) > self.n_remote // 2:
                self.turn_recs.append(["x", [s.id for s in excl if type(s) is RemoteSocket], *_payload(data)])
            else:
                self.turn_recs.append(["t", remote, *_payload(data)])
            self.cluster.schedule(self)

    def _skip(self, h: Any, sockets: list[RoomSocket]) -> None:
        if not sockets:
            return
        frame = h.skip_frame()
        if self.batcher is not None:
            for s in sockets:
                self.batch_add(s, frame)
            return
        local = [s for s in sockets if type(s) is not RemoteSocket]
        remote = [s.id for s in sockets if type(s) is RemoteSocket and s.conn is not None]
        if local:
            self.out(self._broadcast_now, local, frame)
        if remote:
            self.turn_recs.append(["t", remote, *_payload(frame)])
            self.cluster.schedule(self)

    def set_auto(self, request: str | None, response: str) -> None:
        super().set_auto(request, response)
        if self.role == "owner" and self.n_remote:
            self.turn_recs.append(["u", None if request is None else [request, response]])
            self.cluster.schedule(self)

    # ------------------------------------------------------------ membership (owner)

    def _member_record(self, sock: RoomSocket) -> bytes:
        node = sock.node if isinstance(sock, RemoteSocket) else self.cluster.node_id
        rec: dict[str, Any] = {"n": node, "t": list(sock.tags),
                               "a": orjson.Fragment(sock._att) if sock._att is not None else None}
        conn = sock.conn
        if isinstance(conn, _RemoteConn):
            rec["q"] = conn.doc
        elif conn is not None and conn.request is not None:
            rec["q"] = encode_request(conn.request)
        return orjson.dumps(rec)

    def _joined(self, sock: RoomSocket) -> None:
        if self.role != "owner":
            return
        if type(sock) is RemoteSocket:
            self.n_remote += 1
            self.turn_recs.append(["j", sock.id, None if self.auto is None else list(self.auto[:2])])
        self.mem_set[sock.id] = self._member_record(sock)
        self.mem_del.discard(sock.id)
        self.cluster.schedule(self)

    def _left(self, sock: RoomSocket) -> None:
        if self.role != "owner":
            return
        if self.by_id.get(sock.id) is sock:
            del self.by_id[sock.id]
        if type(sock) is RemoteSocket:
            if sock.conn is not None:
                self.n_remote -= 1
                sock.conn = None
                self.turn_recs.append(["l", sock.id])
        self.mem_set.pop(sock.id, None)
        self.mem_del.add(sock.id)
        self.cluster.schedule(self)

    def socket_changed(self, sock: RoomSocket) -> None:
        if self.role == "owner" and sock in self.sockets:
            self.mem_set[sock.id] = self._member_record(sock)
            self.cluster.schedule(self)

    def remote_nodes(self) -> set[str]:
        return {s.node for s in self.sockets if type(s) is RemoteSocket and s.node}

    def drop_node(self, node: str) -> None:
        """The members connected to ``node`` are gone (the node died): they leave (1006)."""
        for s in [s for s in self.sockets if type(s) is RemoteSocket and s.node == node]:
            s.node = ""
            self.deliver((CLOSE, s, 1006, "", False))

    # ------------------------------------------------------------ the flush (called by the writer)

    def take_batch(self, pipe: Any, sha: dict[str, str]) -> tuple[Any, int] | None:
        if self.role == "member" or (self.role != "owner" and self.xadds):
            xadds, self.xadds = self.xadds, []
            if not xadds:
                return None
            for fields in xadds:
                pipe.xadd(self.key("in"), fields, maxlen=INBOX_MAXLEN, approximate=True)
            return _MemberBatch(self, []), len(xadds)
        if self.role != "owner":
            self._discard_turn()
            return None
        if self.retry is not None:  # a flush that met NOSCRIPT (Redis restarted): send it as EVAL
            b, self.retry = self.retry, None
            from fastws.cluster import FLUSH

            pipe.eval(FLUSH, 8, *self._flush_keys(), *b.args)
            self.cluster.schedule(self)  # what was staged since goes in the next pipeline
            return b, 1
        st: Any = self.storage
        puts: list[Any] = []
        dels: list[str] = []
        delete_all = False
        alarm = ""
        seq = 0
        log: list[Any] = []
        epoch = keep = ""
        if st is not None and st.dirty:
            puts, dels, delete_all, alarm, seq = st.take()
            log, epoch, keep = st.take_log()
        recs, self.turn_recs = self.turn_recs, []
        pubs: list[Any] = []
        if recs:
            pubs += [self.key("out"), orjson.dumps(recs)]
        for ch, payload in self.turn_replies:
            pubs += [ch, payload]
        self.turn_replies = []
        local, self.turn_local = self.turn_local, []
        mset, self.mem_set = self.mem_set, {}
        mdel, self.mem_del = self.mem_del, set()
        cursor, self.cursor = self.cursor, ""
        if not (puts or dels or delete_all or alarm or pubs or local or mset or mdel or cursor or seq):
            return None
        args: list[Any] = [self.lease, cursor, "1" if delete_all else "0", alarm,
                           f"{self.ns.room_class.__name__}\x00{self.name}", len(puts) // 2, *puts, len(dels), *dels,
                           len(mset), *[x for kv in mset.items() for x in kv], len(mdel), *mdel,
                           epoch, keep, len(log) // 3, *log, len(pubs) // 2, *pubs]
        pipe.evalsha(sha["flush"], 8, *self._flush_keys(), *args)
        return _OwnerBatch(self, local, seq, args), 1

    def _flush_keys(self) -> list[str]:
        k = self._keys
        return [k["lease"], k["kv"], k["keys"], k["members"], k["meta"], k["in"], self.cluster.alarms_key, k["log"]]

    def _discard_turn(self) -> None:
        self.turn_local, self.turn_recs, self.turn_replies = [], [], []
        self.mem_set, self.mem_del, self.cursor = {}, set(), ""

    def _flushed(self, batch: _OwnerBatch, result: Any) -> None:
        if isinstance(result, Exception):
            if _is_noscript(result) and batch.tries < 2 and self.role == "owner":
                batch.tries += 1
                self.retry = batch
                self.cluster.schedule(self)
                return
            self.lost(f"a flush failed: {result}")
            return
        if result != 1:
            self.lost("fenced: another node holds its lease")
            return
        if self.role != "owner":
            return
        if batch.seq:
            self.committed_seq = max(self.committed_seq, batch.seq)
            st: Any = self.storage
            if st is not None:
                st._committed = max(st._committed, batch.seq)
        for fn, args in batch.local:
            try:
                fn(*args)
            except Exception:
                logger.exception("fastws.cluster: sending from room %r failed", self.name)
        if self.waiters:
            keep = []
            for seq, fut in self.waiters:
                if seq <= self.committed_seq:
                    if not fut.done():
                        fut.set_result(None)
                else:
                    keep.append((seq, fut))
            self.waiters = keep

    async def _read_history(self, limit: int, since_ts: float) -> tuple[str | None, int, list[Any]]:
        """The log's epoch, last offset and newest entries (oldest first), read from Redis."""
        st: Any = self.get_storage()
        await st.sync()  # nothing of this owner's own still on its way
        pipe = self.cluster.redis.pipeline(transaction=False)
        pipe.hmget(self.key("meta"), ["history_epoch", "history_last"])
        pipe.xrevrange(self.key("log"), "+", "-", count=limit)
        (epoch, last), entries = await pipe.execute()
        rows = []
        for sid, fields in reversed(entries):
            sid = sid.decode() if isinstance(sid, bytes) else sid
            ts = float(fields[b"t"])
            if ts >= since_ts:
                rows.append((int(sid.split("-", 1)[0]), ts, fields[b"e"].decode("utf-8")))
        return (epoch.decode() if epoch else None), int(last or 0), rows

    def durable(self, seq: int) -> asyncio.Future[None]:
        return self.wait_committed(seq)

    def wait_committed(self, seq: int) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = self.ns.loop.create_future()
        if seq <= self.committed_seq:
            fut.set_result(None)
        elif self.role != "owner":
            fut.set_exception(RoomUnavailable(f"room {self.name!r} moved to another node"))
        else:
            self.waiters.append((seq, fut))
            self.cluster.schedule(self)
        return fut

    # ------------------------------------------------------------ envelopes (member)

    def on_envelope(self, data: bytes) -> None:
        for rec in orjson.loads(data):
            k = rec[0]
            if k == "a":
                conns = self.local_conns()
                if conns:
                    self._broadcast_conns(conns, _unpayload(rec[2], rec[3]))
            elif k == "x" or k == "t":
                ids = set(rec[1])
                if k == "x":
                    targets = [s for s in self.sockets if s.id not in ids]
                else:
                    targets = [s for s in self.sockets if s._id in ids]
                if targets:
                    self._broadcast_now(targets, _unpayload(rec[2], rec[3]))
            elif k == "s":
                sock = self.by_id.get(rec[1])
                if sock is not None and sock in self.sockets:
                    self.send_now(sock, _unpayload(rec[2], rec[3]))
            elif k == "c":
                sock = self.by_id.get(rec[1])
                if sock is not None:
                    _close_conn(sock, rec[2], rec[3])
            elif k == "j":
                sock = self.by_id.get(rec[1])
                if sock is not None and sock.conn is not None and sock.conn.open:
                    self.sockets[sock] = None
                    self.all_conns = None
                    auto = rec[2]
                    if (None if auto is None else tuple(auto)) != (None if self.auto is None else self.auto[:2]):
                        self.set_auto(*(auto if auto is not None else (None, "")))
                    elif self.auto is not None:
                        self._engine_auto(sock)
            elif k == "l":
                sock = self.by_id.get(rec[1])
                if sock is not None:
                    self.sockets.pop(sock, None)
                    self.all_conns = None
            elif k == "u":
                auto = rec[1]
                self.set_auto(*(auto if auto is not None else (None, "")))

    # ------------------------------------------------------------ roles

    def become_member(self) -> None:
        self.role = "member"

    async def take_over(self, lease: str) -> None:
        """This node won the lease: load the members and replay the inbox after the cursor."""
        was_member = self.role == "member"
        self.role = "loading"
        self.lease = lease
        r = self.cluster.redis
        try:
            if self.xadds or self in self.cluster._dirty:
                # this node's own member events still on their way to the inbox: read after them
                await asyncio.wait_for(self.cluster.barrier(), self.cluster.lease_ttl)
            pipe = r.pipeline(transaction=False)
            pipe.hgetall(self.key("members"))
            pipe.hgetall(self.key("meta"))
            members, meta = await pipe.execute()
            me = self.cluster.node_id
            recs = {(k.decode() if isinstance(k, bytes) else k): orjson.loads(v) for k, v in members.items()}
            nodes = sorted({rec["n"] for rec in recs.values() if rec["n"] != me})
            alive: dict[str, bool] = {}
            if nodes:
                pipe = r.pipeline(transaction=False)
                for n in nodes:
                    pipe.exists(f"{self.cluster.prefix}:node:{n}")
                alive = {n: bool(a) for n, a in zip(nodes, await pipe.execute())}
            meta = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                    for k, v in meta.items()}
            cursor = meta.get("cursor") or ""
            entries = await r.xrange(self.key("in"), min=("(" + cursor) if cursor else "-", max="+")
        except Exception as exc:
            self.role = None
            self.lease = ""
            self.lost(f"taking it over failed: {exc}")
            raise RoomUnavailable(f"room {self.name!r}: taking it over failed: {exc}") from None
        gone: list[RoomSocket] = []
        self.n_remote = 0
        for sid, rec in recs.items():
            att = orjson.dumps(rec["a"]) if rec.get("a") is not None else None
            if rec["n"] == me:
                sock = self.by_id.get(sid)
                if sock is None or type(sock) is RemoteSocket or not sock.open:
                    sock = RemoteSocket(self, sid, "", rec.get("t") or (), att)
                    gone.append(sock)
                else:
                    sock.tags = tuple(rec.get("t") or ())
                    sock._att = att
            else:
                sock = RemoteSocket(self, sid, rec["n"], rec.get("t") or (), att, rec.get("q"))
                self.n_remote += 1
                if not alive.get(rec["n"]):
                    sock.node = ""
                    gone.append(sock)
            self.by_id[sid] = sock
            self.sockets[sock] = None
        self.all_conns = None
        self.bytes_used = int(meta.get("bytes") or 0)
        self.inbox_last = cursor or "0-0"
        self.committed_seq = 0
        self.role = "owner"
        if was_member:
            ch = self.key("out")
            if self.cluster.members.get(ch) is self:
                del self.cluster.members[ch]
                self.cluster._subscribed.pop(ch, None)
                t = self.ns.loop.create_task(self.cluster._unsubscribe(ch))
                t.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)
        st = self.get_storage()
        st.meta = {k: meta[k] for k in ("alarm",) if k in meta}
        if "alarm" in meta and self.alarm_at is None:
            self._schedule_alarm(float(meta["alarm"]))
        logger.info("fastws.cluster: node %s owns room %s:%s (%s)", me, self.ns.room_class.__name__, self.name,
                    lease.split(" ")[1])
        for s in gone:
            self.deliver((CLOSE, s, 1006, "", False))
        self.on_inbox(entries)
        queued, self.loading = self.loading, []
        for ev in queued:
            self.deliver(ev)

    def lost(self, reason: str) -> None:
        """Stop the room on this node now: drop its object and its unsent output, close its local
        sockets (1012), forget it."""
        role = self.role
        if role is None and not self.sockets and not self.by_id:
            return
        self.role = None
        self.lease = ""
        self.cluster.forget(self)
        self._discard_turn()
        self.xadds = []
        self.retry = None
        self.gate = ()  # type: ignore[assignment]
        for ev in list(self.queue) + self.loading:
            if ev[0] in (REQUEST, ACCEPT):
                _fail(ev[3])
        self.queue = ()  # type: ignore[assignment]
        self.loading = []
        self.inflight.clear()
        self.ev_entries.clear()
        for _, fut in self.waiters:
            if not fut.done():
                fut.set_exception(RoomUnavailable(f"room {self.name!r} moved to another node"))
        self.waiters = []
        if self.task is not None:
            self.task.cancel()
        self.room = None
        self.history = None
        self.storage = None
        if self.alarm_handle is not None:
            self.alarm_handle.cancel()
            self.alarm_handle = None
        self.alarm_at = None
        if role in ("owner", "loading"):
            logger.warning("fastws.cluster: node %s stopped room %s:%s: %s", self.cluster.node_id,
                           self.ns.room_class.__name__, self.name, reason)
        elif role == "member":
            logger.warning("fastws.cluster: node %s closed its members of room %s:%s: %s", self.cluster.node_id,
                           self.ns.room_class.__name__, self.name, reason)
        local = [s for s in self.by_id.values() if type(s) is not RemoteSocket]
        self.by_id.clear()
        self.sockets.clear()
        self.all_conns = None
        self.n_remote = 0
        if self.ns.slots.get(self.name) is self:
            del self.ns.slots[self.name]
        for s in local:
            conn = s.conn
            if conn is not None and conn.open:
                conn.close(1012, "room moved")

    # ------------------------------------------------------------ leaving memory

    def idle(self) -> bool:
        return super().idle() and not self.turn_local and not self.xadds and not self.inflight

    async def drop(self) -> None:
        """The slot leaves memory (no socket anywhere, no alarm): give up the lease."""
        await self.evict()
        if self.role == "owner":
            await self.cluster.release(self)
        else:
            self.cluster.forget(self)
        self.role = None

    async def shutdown(self) -> None:
        self.closed = True
        if self.alarm_handle is not None:
            self.alarm_handle.cancel()
            self.alarm_handle = None
        if self.batcher is not None:
            self.batcher.flush_all()
        st = self.storage
        if st is not None and self.role == "owner":
            try:
                await asyncio.wait_for(st.sync(), self.cluster.lease_ttl)
            except Exception as exc:
                logger.error("fastws.cluster: room %r: final flush failed: %s", self.name, exc)


def _fail(fut: Any) -> None:
    if fut is not None and not fut.done():
        fut.set_exception(RoomUnavailable("room unavailable"))


class RedisStorage:
    """A cluster room's storage: the same API as :class:`~fastws.rooms.Storage`, kept in Redis.

    Keys and values live in ``<room>:kv`` (a hash; values prefixed ``j`` for JSON, ``b`` for
    bytes) with ``<room>:keys`` (a sorted set) for ordered ``list()``. Writes are staged and go in
    the room's next fenced flush, with the output they gate. ``sql()`` needs SQLite: it raises.
    """

    def __init__(self, slot: ClusterSlot) -> None:
        self.slot = slot
        self.quota = slot.ns.room_class.storage_quota
        self._kv: dict[str, Any] = {}
        self._delete_all = False
        self._alarm = ""
        self._staged_bytes = 0
        self._seq = 0
        self._committed = 0
        self._log: list[Any] = []  # staged log entries: offset, time, envelope (flat)
        self._log_from = ""        # staged: the oldest offset the log keeps
        self._epoch = ""           # staged: a new epoch (the log starts again)
        self.dirty = False
        self.meta: dict[str, Any] = {}
        self.opened = True
        self.connected = True
        self.error: StorageError | None = None
        self.path = f"redis:{slot.key('kv')}"

    # lifecycle (nothing to open: the owner reads Redis directly)
    async def open(self) -> None:
        return None

    async def close(self) -> None:
        if self.slot.role == "owner" and self.pending:
            try:
                await self.sync()
            except Exception:
                pass

    @property
    def pending(self) -> bool:
        return self._committed < self._seq

    @property
    def size(self) -> int:
        return self.slot.bytes_used + self._staged_bytes

    @property
    def seq(self) -> int:
        return self._seq

    @property
    def committed(self) -> int:
        return self._committed

    def _stage(self) -> int:
        if self.slot.role != "owner":
            raise StorageError(f"room {self.slot.name!r} is not owned by this node any more")
        if not self.dirty:
            self.dirty = True
            self._seq += 1
            self.slot.cluster.schedule(self.slot)
        return self._seq

    def take(self) -> tuple[list[Any], list[str], bool, str, int]:
        puts: list[Any] = []
        dels: list[str] = []
        for k, v in self._kv.items():
            if v is _DELETE:
                dels.append(k)
            else:
                puts += [k, (b"b" if v[1] else b"j") + v[0]]
        out = (puts, dels, self._delete_all, self._alarm, self._seq)
        self.slot.bytes_used += self._staged_bytes
        self._kv, self._delete_all, self._alarm, self._staged_bytes, self.dirty = {}, False, "", 0, False
        return out

    def take_log(self) -> tuple[list[Any], str, str]:
        out = (self._log, self._epoch, self._log_from)
        self._log, self._epoch, self._log_from = [], "", ""
        return out

    def _log_append(self, entry: tuple[int, float, str], first: int) -> None:
        """Stage one log entry (in the room's stream ``<room>:log``, id ``<offset>-1``) and the
        trim that keeps offsets from ``first`` on. The log is bounded by ``Room.history`` and
        does not count against ``storage_quota`` in a cluster."""
        self._stage()
        self._log += [entry[0], repr(entry[1]), entry[2]]
        self._log_from = str(first)

    def _flush(self) -> None:
        """Staged writes leave with the room's next flush (at the end of this turn)."""

    async def sync(self) -> None:
        """Wait until everything written so far is committed in Redis."""
        if self.pending:
            await self.slot.wait_committed(self._seq)

    async def _settled(self) -> Any:
        await self.sync()
        return self.slot.cluster.redis

    # ------------------------------------------------------------ key-value API

    async def get(self, key: str | Iterable[str]) -> Any:
        if isinstance(key, str):
            _check_key(key)
            staged = self._kv.get(key)
            if staged is not None:
                return None if staged is _DELETE else _decode_pair(staged)
            if self._delete_all:
                return None
            found = await self._hmget([key])
            return found.get(key)
        keys = [_check_key(k) for k in key]
        out: dict[str, Any] = {}
        missing = []
        for k in keys:
            staged = self._kv.get(k)
            if staged is None:
                if not self._delete_all:
                    missing.append(k)
            elif staged is not _DELETE:
                out[k] = _decode_pair(staged)
        if missing:
            out.update(await self._hmget(missing))
        return {k: out[k] for k in keys if k in out}

    async def _hmget(self, keys: list[str]) -> dict[str, Any]:
        r = await self._settled()
        vals = await r.hmget(self.slot.key("kv"), keys)
        return {k: _decode_redis(v) for k, v in zip(keys, vals) if v is not None}

    async def put(self, key: str | Mapping[str, Any], value: Any = None) -> None:
        items = list(key.items()) if isinstance(key, Mapping) else [(key, value)]
        if len(items) > 128:
            raise ValueError("put() takes at most 128 keys at once")
        self._put_encoded([(_check_key(k), _encode(v)) for k, v in items])

    def _put_encoded(self, encoded: list[tuple[str, tuple[bytes, int]]], deletes: Iterable[str] = ()) -> None:
        added = sum(len(k) + len(v[0]) + 1 for k, v in encoded)
        if self.size + added > self.quota:
            raise StorageFull(f"room storage quota exceeded ({self.quota} bytes): refused a write of {added} bytes")
        self._stage()
        self._staged_bytes += added
        for k, v in encoded:
            self._kv[k] = v
        for k in deletes:
            self._kv[k] = _DELETE

    async def delete(self, key: str | Iterable[str]) -> None:
        keys = [_check_key(key)] if isinstance(key, str) else [_check_key(k) for k in key]
        self._stage()
        for k in keys:
            self._kv[k] = _DELETE

    async def delete_all(self) -> None:
        self._stage()
        self._kv.clear()
        self._staged_bytes = 0
        self._delete_all = True
        self.slot.bytes_used = 0

    async def list(self, *, prefix: str | None = None, start: str | None = None, end: str | None = None,
                   limit: int | None = None, reverse: bool = False) -> dict[str, Any]:
        if limit is not None and limit < 0:
            raise ValueError("limit must be >= 0")
        lo, hi = start, end
        if prefix:
            if lo is None or lo < prefix:
                lo = prefix
            pend = _prefix_end(prefix)
            if pend is not None and (hi is None or hi > pend):
                hi = pend
        if limit == 0:
            return {}
        r = await self._settled()
        mn = "-" if lo is None else "[" + lo
        mx = "+" if hi is None else "(" + hi
        num = limit if limit is not None else None
        if reverse:
            keys = await r.zrevrangebylex(self.slot.key("keys"), mx, mn, start=0 if num else None, num=num)
        else:
            keys = await r.zrangebylex(self.slot.key("keys"), mn, mx, start=0 if num else None, num=num)
        if not keys:
            return {}
        vals = await r.hmget(self.slot.key("kv"), keys)
        return {(k.decode() if isinstance(k, bytes) else k): _decode_redis(v) for k, v in zip(keys, vals)
                if v is not None}

    async def sql(self, query: str, *args: Any) -> builtins.list[tuple[Any, ...]]:
        raise StorageError("sql() needs a room's SQLite storage; in a cluster a room's storage is keys and "
                           "values in Redis (get/put/delete/list/transaction)")

    def transaction(self) -> Transaction:
        return Transaction(self)  # type: ignore[arg-type]

    def _put_meta(self, key: str, value: Any) -> None:
        if key == "history_epoch":
            self._stage()
            self._epoch = value
            return
        if key != "alarm":
            return  # history_last goes with the entries
        self._stage()
        if value is _DELETE:
            self._alarm = "-"
            self.meta.pop(key, None)
        else:
            self._alarm = repr(float(value))
            self.meta[key] = value


def _decode_pair(staged: tuple[bytes, int]) -> Any:
    data, binary = staged
    return bytes(data) if binary else orjson.loads(data)


def _decode_redis(v: bytes) -> Any:
    if v[:1] == b"b":
        return bytes(v[1:])
    return orjson.loads(v[1:])
