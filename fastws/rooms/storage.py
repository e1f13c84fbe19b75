"""A room's storage: one SQLite database file per room, WAL mode; the disk waits run off the event loop.

Theory of operation
-------------------
1. Every room has its own database file (``<data_dir>/<RoomClass>/<name>.sqlite3``) and one
   SQLite connection, used by one job at a time from a shared thread pool (a per-room *chain*
   keeps the jobs of one room in order; different rooms run in parallel).
2. ``put``/``delete`` do not wait for the disk: they stage the change in memory (reads see it at
   once) and the staged changes of one event-loop turn are committed together, in one SQLite
   transaction (writes are *coalesced*; while a commit is in flight the next turns' changes
   wait and go together: *group commit*).
   With ``synchronous`` FULL or NORMAL the connection runs with SQLite's NORMAL, so a commit
   only writes the WAL (page cache, tens of microseconds): a small batch is written right on
   the loop thread when no job is using the connection, and, for FULL, made durable by an
   fsync of the WAL on the chain, which the turn waits for up to ``SYNC_WAIT`` (2 ms; and 5%
   of the loop's time at most, for all rooms) before it moves on; the gate opens when the
   fsync is done.
   A commit that ran whole on a pool thread would cost its output one loop iteration or more:
   that thread must take the GIL back between SQLite calls, and a busy loop holds it. Big
   batches, and batches while a job runs, still go to the chain whole. SQLite's automatic
   checkpoints are off (they would run inside a commit on the loop); the chain checkpoints the
   WAL every ``CHECKPOINT_COMMITS`` commits or ``CHECKPOINT_BYTES``.
3. Durability before visibility: every staged batch has a sequence number. The room's output
   gate (see :mod:`fastws.rooms.room`) holds every message sent after a write until the batch
   holding that write is committed, so no client sees state a crash would take back.
4. Reads (``get``/``list``/``sql``) first hand the staged batch to the chain, then run behind it
   on the same connection: a room always reads its own writes.
5. A quota: ``put`` refuses up front (StorageFull) what would take the estimated size over it;
   the file itself is capped at 1.25 x the quota (``max_page_count``), which also bounds ``sql()``.
"""

from __future__ import annotations

import _thread
import asyncio
import builtins
import concurrent.futures
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from fastws.exceptions import FastWSError
from fastws.metrics import recorder
from fastws.rooms.names import legacy_room_file_stem, room_file_stem

__all__ = ["Storage", "StorageError", "StorageFull", "Transaction", "room_path"]

logger = logging.getLogger("fastws.rooms")

_DELETE = object()  # staged tombstone
_SCHEMA = (
    # a rowid table: values up to a page stay inline (WITHOUT ROWID would spill any value over
    # about 1 KB into overflow pages)
    "CREATE TABLE IF NOT EXISTS _fastws_kv (key TEXT PRIMARY KEY, value BLOB NOT NULL,"
    " bin INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS _fastws_meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;"
)
# a room's message log (fastws.rooms.history), created with its first entry
LOG_TRIM_STEP = 64  # the log table is trimmed when this many entries are past the limit
LOG_COUNT_EVERY = 256 << 10  # log-only commits count the file's pages after this many bytes
LOG_ROWS = 300  # log entries per INSERT statement (3 parameters each: under SQLite's old limit of 999)
_LOG_SCHEMA = "CREATE TABLE IF NOT EXISTS _fastws_log (offset INTEGER PRIMARY KEY, ts REAL NOT NULL, data TEXT NOT NULL)"


# Commits written on the loop thread (Storage._commit_here): batches up to this size. The loop
# waits for their fsyncs (FULL) SYNC_WAIT at most each, and SYNC_WAIT_SHARE of its time at
# most in all (a token bucket, shared by every room of the process): a waiting loop serves
# nobody, which pays when the room's next messages wait for the commit, not when it is saturated
INLINE_COMMIT_BYTES = 256 << 10
INLINE_COMMIT_KEYS = 256
INLINE_TRIM_ROWS = 4096  # log entries a trim may delete (a history_ttl can expire many at once)
SYNC_WAIT = float(os.environ.get("FASTWS_ROOM_SYNC_WAIT_MS", "2")) / 1000
SYNC_WAIT_SHARE = 0.05
# the WAL is checkpointed (on the chain) after this many commits or bytes
CHECKPOINT_COMMITS = 512
CHECKPOINT_BYTES = 2 << 20
_sync_bucket = [SYNC_WAIT, 0.0]  # seconds of waiting left, when it was last refilled


def _sync_wait_left() -> float:
    """How long the loop may wait for an fsync now (see SYNC_WAIT_SHARE)."""
    now = time.perf_counter()
    b = _sync_bucket
    b[0] = min(SYNC_WAIT, b[0] + (now - b[1]) * SYNC_WAIT_SHARE)
    b[1] = now
    return b[0]


def _sync_wait_spent(seconds: float) -> None:
    _sync_bucket[0] -= seconds


_log_insert_sqls: dict[int, str] = {}


def _log_insert_sql(n: int) -> str:
    """``INSERT`` of ``n`` log entries in one statement (one text per n, so SQLite's statement
    cache prepares each once)."""
    sql = _log_insert_sqls.get(n)
    if sql is None:
        sql = _log_insert_sqls[n] = ("INSERT OR REPLACE INTO _fastws_log (offset, ts, data) VALUES "
                                     + ",".join(["(?, ?, ?)"] * n))
    return sql


class StorageError(FastWSError):
    """A room's storage cannot be used (corrupt or unreadable database file, failed commit)."""


class StorageFull(StorageError):
    """A write would take the room's database over its quota."""


_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _get_pool() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=int(os.environ.get("FASTWS_ROOM_THREADS", "4")), thread_name_prefix="fastws-rooms")
        return _pool


# Open SQLite connections, least recently used first (loop thread only). Each costs about
# 150 KiB and 3 file descriptors, so idle ones are closed (close_idle, from the rooms' sweep).
_connected: dict[Storage, None] = {}
MAX_CONNECTIONS = int(os.environ.get("FASTWS_ROOM_MAX_DBS", "1000"))
IDLE_CLOSE = 10.0  # seconds without an operation before a room's connection is closed
# SQLite's page cache per open connection (KiB). Its own default (2 MiB) times MAX_CONNECTIONS
# would let rooms with data pin 2 GiB; the kernel's page cache keeps the files warm anyway.
CACHE_KIB = int(os.environ.get("FASTWS_ROOM_DB_CACHE_KIB", "512"))
# and all of SQLite's memory in this process (page caches included) is kept near this soft limit:
# SQLite frees cache pages past it, however many rooms are open
HEAP_MIB = int(os.environ.get("FASTWS_ROOM_DB_HEAP_MIB", "64"))
_heap_limit_set = False


def _ignore_result(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


def close_idle(now: float, loop: asyncio.AbstractEventLoop | None = None) -> int:
    """Close the connections (of rooms on ``loop``, default: the running one) unused for
    IDLE_CLOSE seconds, and the least recently used ones beyond MAX_CONNECTIONS; returns how many
    were closed."""
    loop = loop or asyncio.get_running_loop()
    closed = 0
    for st in [st for st in _connected if st._loop.is_closed()]:  # left over by a stopped loop
        del _connected[st]
    excess = len(_connected) - MAX_CONNECTIONS
    for st in list(_connected):
        if excess <= 0 and now - st.last_used < IDLE_CLOSE:
            break  # the rest were used more recently
        if st._loop is not loop or st.pending:
            continue
        st._close_soon()
        closed += 1
        excess -= 1
    return closed


def room_path(data_dir: str, class_name: str, name: str) -> str:
    """The database file of room ``name`` of class ``class_name``: every name maps to a valid,
    distinct file name inside ``<data_dir>/<class_name>/`` (see :mod:`fastws.rooms.names`)."""
    return os.path.join(data_dir, class_name, room_file_stem(name) + ".sqlite3")


def legacy_room_path(data_dir: str, class_name: str, name: str) -> str:
    """Where fastws <= wave 2 kept the file (moved to :func:`room_path` on open)."""
    return os.path.join(data_dir, class_name, legacy_room_file_stem(name) + ".sqlite3")


def _set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def _finish(fut: asyncio.Future[Any], result: Any, exc: BaseException | None,
            done: Callable[[asyncio.Future[Any]], None]) -> None:
    """A job with a ``done`` callback ended: settle its future and run the callback in the same
    loop callback (a done-callback of the future would wait for the next loop iteration)."""
    if not fut.done():
        if exc is None:
            fut.set_result(result)
        else:
            fut.set_exception(exc)
    done(fut)


class _Chain:
    """Jobs of one room, run one after another on the shared pool."""

    __slots__ = ("_loop", "_jobs", "_lock", "_busy")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._jobs: deque[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any],
                                Callable[[asyncio.Future[Any]], None] | None]] = deque()
        self._lock = threading.Lock()
        self._busy = False

    def submit(self, fn: Callable[..., Any], *args: Any,
               done: Callable[[asyncio.Future[Any]], None] | None = None) -> asyncio.Future[Any]:
        """Run ``fn(*args)`` after the jobs before it; its future, and ``done(future)`` called
        from the loop as soon as it ends (in the callback that settles the future)."""
        fut: asyncio.Future[Any] = self._loop.create_future()
        with self._lock:
            self._jobs.append((fn, args, fut, done))
            if not self._busy:
                self._busy = True
                _get_pool().submit(self._drain)
        return fut

    def _drain(self) -> None:
        loop = self._loop
        with self._lock:
            fn, args, fut, done = self._jobs.popleft()
        while True:
            exc: BaseException | None = None
            result = None
            try:
                result = fn(*args)
            except BaseException as e:
                exc = e
            with self._lock:
                # idle before the result is posted: the loop, when it sees it, may use the
                # connection at once (Storage._commit_here)
                last = not self._jobs
                if last:
                    self._busy = False
                else:
                    nxt = self._jobs.popleft()
            try:
                if done is not None:
                    loop.call_soon_threadsafe(_finish, fut, result, exc, done)
                elif exc is not None:
                    loop.call_soon_threadsafe(_set_exception, fut, exc)
                else:
                    loop.call_soon_threadsafe(_set_result, fut, result)
            except RuntimeError:  # loop closed
                return
            if last:
                return
            fn, args, fut, done = nxt


def _encode(value: Any) -> tuple[bytes, int]:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value), 1
    try:
        return orjson.dumps(value), 0
    except TypeError as exc:
        raise TypeError(f"storage values must be bytes or JSON-serialisable (orjson): {exc}") from None


def _decode(value: bytes, binary: int) -> Any:
    return bytes(value) if binary else orjson.loads(value)


def _check_key(key: Any) -> str:
    if not isinstance(key, str):
        raise TypeError(f"storage keys are str, not {type(key).__name__}")
    if len(key) > 2048:
        raise ValueError("storage keys are at most 2048 characters")
    return key


def _prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix``."""
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF:
            return prefix[:-1] + chr(last + 1)
        prefix = prefix[:-1]
    return None


class _Db:
    """The SQLite side (runs on pool threads, one job at a time per room)."""

    __slots__ = ("path", "quota", "synchronous", "conn", "page_size", "pages", "error", "name", "legacy",
                 "absent", "log_low", "estimated", "wal_fd", "own_sync", "managed")

    def __init__(self, path: str, quota: int, synchronous: str, name: str | None = None,
                 legacy: str | None = None) -> None:
        self.name = name
        self.path = path
        self.legacy = legacy  # an older file name of this room's database (moved to path)
        self.absent = False  # no file yet: reads see an empty room, the first write creates it
        self.quota = quota
        self.synchronous = synchronous
        self.conn: sqlite3.Connection | None = None
        self.page_size = 4096
        self.pages = 0
        self.error: StorageError | None = None
        # the oldest log offset the table may still hold (None: not known on this connection,
        # the log table may not exist yet)
        self.log_low: int | None = None
        self.estimated = 0  # bytes added by log-only commits since the pages were last counted
        # FULL and NORMAL: the connection runs with SQLite's NORMAL (a commit writes the WAL, no
        # fsync) and no automatic checkpoints (Storage runs them on the pool); for FULL this
        # side then fsyncs the WAL itself (sync_wal) before the commit counts, so a commit can
        # be written on the event loop and made durable off it (see Storage._flush)
        self.managed = synchronous in ("FULL", "NORMAL")
        self.wal_fd = -1
        self.own_sync = False

    def open(self) -> dict[str, Any]:
        """Open the file if there is one; a room that never wrote has none (and gets none until
        it writes: an attacker walking room names leaves nothing on disk)."""
        if self.conn is not None:
            return self._meta()
        if self.error is not None:
            raise self.error
        if self.legacy and self.legacy != self.path and not os.path.exists(self.path) \
                and os.path.exists(self.legacy):
            self._move_legacy()
        if not os.path.exists(self.path):
            self.absent = True
            self.pages = 0
            return {}
        return self._connect()

    def _move_legacy(self) -> None:
        assert self.legacy is not None
        try:
            for suffix in ("-wal", "-shm", ""):  # the main file last: its presence means moved
                if os.path.exists(self.legacy + suffix):
                    os.replace(self.legacy + suffix, self.path + suffix)
        except OSError as exc:
            raise StorageError(f"cannot move {self.legacy} to {self.path}: {exc}") from None
        logger.info("fastws.rooms: moved %s to %s (the new file name scheme)", self.legacy, self.path)

    def _connect(self) -> dict[str, Any]:
        self.absent = False
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"cannot open {self.path}: {exc}") from None
        try:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise sqlite3.DatabaseError(f"journal_mode is {mode}, not wal")
            if self.managed:
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA wal_autocheckpoint=0")
            else:
                conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute(f"PRAGMA cache_size=-{max(64, CACHE_KIB)}")
            global _heap_limit_set
            if not _heap_limit_set and HEAP_MIB > 0:
                conn.execute(f"PRAGMA soft_heap_limit={HEAP_MIB << 20}")  # process-wide
                _heap_limit_set = True
            self.page_size = conn.execute("PRAGMA page_size").fetchone()[0]
            # hard cap (a backstop behind put()'s estimate, and the limit for sql() writes)
            conn.execute(f"PRAGMA max_page_count={max(16, (self.quota + self.quota // 4) // self.page_size)}")
            conn.executescript(_SCHEMA)
            if self.name is not None:
                conn.execute("INSERT OR IGNORE INTO _fastws_meta (key, value) VALUES ('name', ?)", (self.name,))
            self._count_pages(conn)
            if self.synchronous == "FULL":
                # the WAL exists now (the write above); an fsync on any descriptor of the file
                # flushes it, and SQLite keeps the file while a connection is open
                self.wal_fd = os.open(self.path + "-wal", os.O_RDONLY | os.O_CLOEXEC)
                self.own_sync = True
        except (sqlite3.Error, OSError) as exc:
            conn.close()
            self.error = StorageError(f"room database {self.path} is unusable: {exc}")
            raise self.error from None
        self.conn = conn
        return self._meta()

    def sync_wal(self) -> None:
        """Make every commit written so far durable (FULL: fsync the WAL). A failed fsync
        leaves the file unusable for this process: what the kernel dropped cannot be told from
        what SQLite believes is committed."""
        if self.own_sync:
            try:
                os.fdatasync(self.wal_fd)
            except OSError as exc:
                self.error = StorageError(f"fsync of {self.path}-wal failed: {exc}")
                self.close()
                raise self.error from None

    def checkpoint(self) -> None:
        """Copy the WAL's pages into the database file, so the WAL is written from its start
        again (SQLite's automatic checkpoints are off: they would run inside a commit)."""
        if self.conn is not None:
            try:
                self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as exc:
                logger.warning("fastws.rooms: checkpoint of %s failed: %s", self.path, exc)

    def _count_pages(self, conn: sqlite3.Connection) -> None:
        """Pages in use (free pages are reused, so they do not count against the quota)."""
        total = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        self.pages = total - free

    def _meta(self) -> dict[str, Any]:
        assert self.conn is not None
        return {k: v for k, v in self.conn.execute("SELECT key, value FROM _fastws_meta")}

    def _c(self, create: bool = True) -> sqlite3.Connection | None:
        if self.conn is None:
            self.open()
            if self.conn is None:
                if not create:
                    return None  # no file: nothing to read
                self._connect()
        return self.conn

    def commit(self, kv: dict[str, Any], meta: dict[str, Any], delete_all: bool,
               log: list[tuple[int, float, str]] | None = None, log_from: int = 0, sync: bool = True) -> int:
        """Write one batch; durable on return unless ``sync`` is False (then :meth:`sync_wal`
        makes it so). Returns the database's size."""
        size = self._commit(kv, meta, delete_all, log, log_from)
        if sync:
            self.sync_wal()
        return size

    def _commit(self, kv: dict[str, Any], meta: dict[str, Any], delete_all: bool,
                log: list[tuple[int, float, str]] | None, log_from: int) -> int:
        conn = self._c()
        assert conn is not None
        try:
            low = self.log_low
            if log and low is not None and not (kv or meta or delete_all) and len(log) <= LOG_ROWS \
                    and not (log_from and log_from - low >= LOG_TRIM_STEP):
                # the common log-only commit: one statement, its own transaction (each SQLite
                # call releases and retakes the GIL, which a busy event loop holds: fewer calls,
                # a shorter commit)
                conn.execute(_log_insert_sql(len(log)), [v for e in log for v in e])
                return self._log_committed(conn, log)
            conn.execute("BEGIN IMMEDIATE")
            if log or log_from:
                if low is None:
                    conn.execute(_LOG_SCHEMA)
                for i in range(0, len(log or ()), LOG_ROWS):
                    chunk = log[i:i + LOG_ROWS]  # type: ignore[index]
                    conn.execute(_log_insert_sql(len(chunk)), [v for e in chunk for v in e])
                # trimmed in steps (readers take the newest entries only): not a DELETE per entry;
                # the newest entry always stays, so the table knows the last offset
                if log and log_from and (low is None or log_from - low >= LOG_TRIM_STEP):
                    keep = min(log_from, log[-1][0])
                    conn.execute("DELETE FROM _fastws_log WHERE offset < ?", (keep,))
                    low = keep
                elif low is None:
                    low = 0
            if delete_all:
                conn.execute("DELETE FROM _fastws_kv")
            puts = [(k, v[0], v[1]) for k, v in kv.items() if v is not _DELETE]
            dels = [(k,) for k, v in kv.items() if v is _DELETE]
            if puts:
                conn.executemany("INSERT OR REPLACE INTO _fastws_kv (key, value, bin) VALUES (?, ?, ?)", puts)
            if dels:
                conn.executemany("DELETE FROM _fastws_kv WHERE key = ?", dels)
            for k, v in meta.items():
                if v is _DELETE:
                    conn.execute("DELETE FROM _fastws_meta WHERE key = ?", (k,))
                else:
                    conn.execute("INSERT OR REPLACE INTO _fastws_meta (key, value) VALUES (?, ?)", (k, v))
            conn.execute("COMMIT")
            self.log_low = low
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc):
                raise StorageFull(f"room database {self.path} is over its quota of {self.quota} bytes") from None
            raise StorageError(f"commit to {self.path} failed: {exc}") from None
        if log and not (kv or meta or delete_all):
            return self._log_committed(conn, log)
        self.estimated = 0
        self._count_pages(conn)
        return int(self.pages * self.page_size)

    def _log_committed(self, conn: sqlite3.Connection, log: list[tuple[int, float, str]]) -> int:
        """The size after a log-only commit: the pages are counted every LOG_COUNT_EVERY bytes
        of entries (two PRAGMAs cost as much as the commit); the quota check uses the estimate."""
        if self.estimated < LOG_COUNT_EVERY:
            self.estimated += sum(len(e[2]) + 32 for e in log)
            return int(self.pages * self.page_size) + self.estimated
        self.estimated = 0
        self._count_pages(conn)
        return int(self.pages * self.page_size)

    def log_tail(self, limit: int, since_ts: float) -> tuple[int, list[tuple[int, float, str]]]:
        """The last offset logged, and the newest ``limit`` entries no older than ``since_ts``,
        oldest first."""
        conn = self._c(create=False)
        if conn is None:
            return 0, []
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_fastws_log'").fetchone() is None:
            return 0, []
        last = conn.execute("SELECT MAX(offset) FROM _fastws_log").fetchone()[0] or 0
        rows = conn.execute("SELECT offset, ts, data FROM _fastws_log WHERE ts >= ? ORDER BY offset DESC LIMIT ?",
                            (since_ts, limit)).fetchall()
        rows.reverse()
        return last, rows

    def get(self, keys: list[str]) -> dict[str, Any]:
        conn = self._c(create=False)
        out: dict[str, Any] = {}
        if conn is None:
            return out
        for i in range(0, len(keys), 500):
            chunk = keys[i:i + 500]
            marks = ",".join("?" * len(chunk))
            for k, v, b in conn.execute(f"SELECT key, value, bin FROM _fastws_kv WHERE key IN ({marks})", chunk):
                out[k] = _decode(v, b)
        return out

    def list_range(self, start: str | None, end: str | None, limit: int | None,
                   reverse: bool) -> list[tuple[str, Any]]:
        conn = self._c(create=False)
        if conn is None:
            return []
        where: list[str] = []
        args: list[Any] = []
        if start is not None:
            where.append("key >= ?")
            args.append(start)
        if end is not None:
            where.append("key < ?")
            args.append(end)
        q = "SELECT key, value, bin FROM _fastws_kv"
        if where:
            q += " WHERE " + " AND ".join(where)
        q += " ORDER BY key DESC" if reverse else " ORDER BY key"
        if limit is not None:
            q += " LIMIT ?"
            args.append(limit)
        return [(k, _decode(v, b)) for k, v, b in conn.execute(q, args)]

    def sql(self, query: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        conn = self._c()
        assert conn is not None
        try:
            cur = conn.execute(query, args)
            rows = cur.fetchall()
            if conn.in_transaction:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc):
                raise StorageFull(f"room database {self.path} is over its quota of {self.quota} bytes") from None
            raise
        self.sync_wal()
        self._count_pages(conn)
        return rows

    def close(self) -> None:
        self.log_low = None
        if self.conn is not None:
            try:
                self.conn.close()
            finally:
                self.conn = None
                if self.wal_fd >= 0:
                    os.close(self.wal_fd)
                    self.wal_fd = -1
                self.own_sync = False


class Storage:
    """The durable key-value store (and SQL database) of one room: ``self.storage`` in a Room.

    Values are anything orjson can encode, or bytes. ``put``/``delete`` return at once (the
    change is visible to this room's reads immediately and committed at the end of the event-loop
    turn); messages the room sends after a write leave only once it is committed.
    """

    def __init__(self, path: str, loop: asyncio.AbstractEventLoop, *, quota: int = 1 << 30,
                 synchronous: str = "FULL", on_commit: Callable[[int], None] | None = None,
                 on_failure: Callable[[int, BaseException], None] | None = None, name: str | None = None,
                 legacy_path: str | None = None, on_synced: Callable[[], None] | None = None) -> None:
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError("synchronous must be OFF, NORMAL, FULL or EXTRA")
        self.path = path
        self.quota = quota
        self._loop = loop
        self._db = _Db(path, quota, synchronous.upper(), name, legacy_path)
        self._chain = _Chain(loop)
        self._kv: dict[str, Any] = {}  # staged: key -> (encoded, bin) | _DELETE
        self._meta: dict[str, Any] = {}
        self._log: builtins.list[tuple[int, float, str]] = []  # staged log entries
        self._log_from = 0  # staged: drop log entries older than this offset
        self._delete_all = False
        self._staged_bytes = 0
        self._size = 0  # bytes on disk after the last commit
        self._scheduled = False
        self._inflight = 0  # commits handed to the chain and not done yet
        self._deferred = False  # a batch waits for the commit in flight (group commit)
        self._seq = 0  # last batch number handed out
        self._committed = 0
        self._last_commit: asyncio.Future[Any] | None = None
        self._wal_commits = 0  # commits and bytes since the WAL was last checkpointed
        self._wal_bytes = 0
        self._on_commit = on_commit
        self._on_failure = on_failure
        self._on_synced = on_synced  # after on_commit, when the loop waited for that commit's fsync
        self.meta: dict[str, Any] = {}
        self.opened = False  # the file was opened and checked once (a connection may be closed since)
        self.connected = False  # a connection is open (or a job that opens one is queued)
        self.last_used = 0.0
        self.error: StorageError | None = None

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Open (or create) the database file. Raises StorageError when it is unusable."""
        if self.opened:
            return
        self._touch()
        try:
            self.meta = await self._chain.submit(self._db.open)
        except StorageError as exc:
            self.error = exc
            raise
        self._size = self._db.pages * self._db.page_size
        self.opened = True

    async def close(self) -> None:
        """Commit what is staged, then close the connection (a later operation opens it again)."""
        await self._close_soon()

    def _close_soon(self) -> asyncio.Future[Any]:
        self._flush()
        self.connected = False
        _connected.pop(self, None)
        fut = self._chain.submit(self._db.close)
        fut.add_done_callback(_ignore_result)
        return fut

    def _touch(self) -> None:
        """Mark the connection used now (the least recently used ones are closed first)."""
        self.last_used = self._loop.time()
        if self.connected:
            _connected.pop(self, None)
        self.connected = True
        _connected[self] = None

    @property
    def pending(self) -> bool:
        """True while some write is staged or not yet committed."""
        return self._committed < self._seq

    @property
    def size(self) -> int:
        """Approximate bytes used (on disk plus staged)."""
        return self._size + self._staged_bytes

    # ------------------------------------------------------------ staging and commits

    def _stage(self) -> int:
        if self.error is not None:
            raise self.error
        if not self._scheduled:
            self._scheduled = True
            self._seq += 1
            self._loop.call_soon(self._flush_turn)
        return self._seq

    def _flush_turn(self) -> None:
        """The end of a turn that staged writes. While a commit is in flight the batch stays
        open: the writes of the turns until that commit is done go in one transaction (group
        commit: one commit in flight at a time, so a busy room does not queue a commit per
        turn; the output they gate leaves when it is done, as it would have queued anyway)."""
        if self._inflight and self.error is None:
            self._deferred = True
            return
        self._flush()

    def _flush(self) -> None:
        """Commit the staged batch (at the end of a turn, and before reads): written here and
        made durable off the loop when it can (:meth:`_commit_here`), else a job on the chain."""
        self._deferred = False
        if not self._scheduled:
            return
        self._scheduled = False
        kv, meta, delete_all = self._kv, self._meta, self._delete_all
        log, log_from = self._log, self._log_from
        staged = self._staged_bytes
        self._kv, self._meta, self._delete_all, self._staged_bytes = {}, {}, False, 0
        if log or log_from:
            self._log, self._log_from = [], 0
        seq = self._seq
        self._touch()
        t0 = time.perf_counter()
        db = self._db
        if db.conn is not None and db.managed and not self._inflight \
                and not self._chain._busy and not delete_all and staged <= INLINE_COMMIT_BYTES \
                and len(kv) <= INLINE_COMMIT_KEYS \
                and (not log_from or (db.log_low is not None and log_from - db.log_low <= INLINE_TRIM_ROWS)):
            self._commit_here(seq, kv, meta, delete_all, log, log_from, t0, staged)
            return
        self._inflight += 1
        done = lambda f: self._committed_cb(seq, f, t0)  # noqa: E731
        self._last_commit = self._chain.submit(db.commit, kv, meta, delete_all, log, log_from, done=done)
        self._after_commit(staged)

    def _commit_here(self, seq: int, kv: dict[str, Any], meta: dict[str, Any], delete_all: bool,
                     log: list[tuple[int, float, str]], log_from: int, t0: float, staged: int) -> None:
        """Write a small batch on the loop thread (no job is using the connection, and with
        SQLite's NORMAL a commit only writes the WAL: tens of microseconds), then make it
        durable: with FULL an fsync of the WAL on the chain, which this turn waits for while
        the SYNC_WAIT bucket allows (the rest of the wait happens off the loop; the gate opens
        when it is done). A commit written on the pool instead costs its turn a loop iteration or
        more (the pool thread waits for the GIL, which a busy loop holds), and a room's output
        would wait that much longer for every commit."""
        db = self._db
        try:
            size = db.commit(kv, meta, delete_all, log, log_from, sync=False)
        except Exception as exc:
            self._commit_result(seq, 0, exc, t0)
            return
        self._after_commit(staged)
        if not db.own_sync:  # NORMAL: the WAL is written, which is all NORMAL asks
            self._last_commit = None
            self._commit_result(seq, size, None, t0)
            return
        budget = _sync_wait_left()
        lock = _thread.allocate_lock()
        lock.acquire()
        self._inflight += 1
        counted = [False]  # the commit was counted (after the wait here, or when the job ended)
        error: list[BaseException | None] = [None]

        def job() -> None:
            try:
                db.sync_wal()
            except BaseException as exc:
                error[0] = exc
                raise
            finally:
                lock.release()

        def done(fut: asyncio.Future[Any]) -> None:
            exc = None if fut.cancelled() else fut.exception()  # (retrieved either way)
            if not counted[0]:
                counted[0] = True
                self._inflight -= 1
                self._commit_result(seq, size, exc, t0)
            if self._deferred and not self._inflight:
                self._flush()

        self._last_commit = self._chain.submit(job, done=done)
        if budget > 0:
            w0 = time.perf_counter()
            synced = lock.acquire(timeout=budget)
            _sync_wait_spent(time.perf_counter() - w0)
            if synced and not counted[0]:
                # the fsync is done; its job reports later, in a loop callback
                counted[0] = True
                self._inflight -= 1
                self._commit_result(seq, size, error[0], t0)
                if error[0] is None and self._on_synced is not None:
                    self._on_synced()

    def _after_commit(self, nbytes: int) -> None:
        """Count what went into the WAL; checkpoint it on the chain every so often."""
        if not self._db.managed:
            return
        self._wal_commits += 1
        self._wal_bytes += nbytes
        if self._wal_commits >= CHECKPOINT_COMMITS or self._wal_bytes >= CHECKPOINT_BYTES:
            self._wal_commits = self._wal_bytes = 0
            self._chain.submit(self._db.checkpoint).add_done_callback(_ignore_result)

    def _committed_cb(self, seq: int, fut: asyncio.Future[Any], t0: float = 0.0) -> None:
        self._inflight -= 1
        try:
            if not fut.cancelled():
                exc = fut.exception()
                self._commit_result(seq, fut.result() if exc is None else 0, exc, t0)
        finally:
            if self._deferred and not self._inflight:
                self._flush()

    def _commit_result(self, seq: int, size: int, exc: BaseException | None, t0: float) -> None:
        recorder.storage("commit", time.perf_counter() - t0, ok=exc is None)
        if exc is not None:
            logger.error("fastws.rooms: %s", exc)
            if self._on_failure is not None:
                self._on_failure(seq, exc)  # drops what was waiting for this batch
            self._committed = max(self._committed, seq)  # done with it: later output may leave
            return
        self._size = size
        self._committed = max(self._committed, seq)
        if self._on_commit is not None:
            self._on_commit(seq)

    async def sync(self) -> None:
        """Wait until everything written so far is committed to disk."""
        self._flush()
        fut = self._last_commit
        if fut is not None:
            await asyncio.shield(fut)

    @property
    def seq(self) -> int:
        """The number of the latest batch (outputs sent now wait for this one)."""
        return self._seq

    @property
    def committed(self) -> int:
        return self._committed

    # ------------------------------------------------------------ key-value API

    async def get(self, key: str | Iterable[str]) -> Any:
        """The value of ``key`` (None when absent), or a dict of the present keys when given many."""
        if isinstance(key, str):
            _check_key(key)
            staged = self._kv.get(key)
            if staged is not None:
                return None if staged is _DELETE else _decode(*staged)
            if self._delete_all:
                return None
            found = await self._read(self._db.get, [key])
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
                out[k] = _decode(*staged)
        if missing:
            out.update(await self._read(self._db.get, missing))
        return {k: out[k] for k in keys if k in out}

    async def put(self, key: str | Mapping[str, Any], value: Any = None) -> None:
        """Store ``value`` under ``key``, or every item of a mapping (at most 128 keys).

        Raises:
            StorageFull: the room's database would go over its quota.
            TypeError: the value is neither bytes nor JSON-serialisable.
        """
        items = list(key.items()) if isinstance(key, Mapping) else [(key, value)]
        if len(items) > 128:
            raise ValueError("put() takes at most 128 keys at once")
        self._put_encoded([(_check_key(k), _encode(v)) for k, v in items])

    def _put_encoded(self, encoded: list[tuple[str, tuple[bytes, int]]], deletes: Iterable[str] = ()) -> None:
        # an estimate of the file space the rows take (page and B-tree overhead included)
        added = sum((len(k) + len(v[0])) * 3 // 2 + 64 for k, v in encoded)
        if self._size + self._staged_bytes + added > self.quota:
            raise StorageFull(f"room storage quota exceeded ({self.quota} bytes): refused a write of {added} bytes")
        self._stage()
        self._staged_bytes += added
        for k, v in encoded:
            self._kv[k] = v
        for k in deletes:
            self._kv[k] = _DELETE

    async def delete(self, key: str | Iterable[str]) -> None:
        """Delete one key or many."""
        keys = [_check_key(key)] if isinstance(key, str) else [_check_key(k) for k in key]
        self._stage()
        for k in keys:
            self._kv[k] = _DELETE

    async def delete_all(self) -> None:
        """Delete every key (tables made with ``sql()`` are left alone; so is the alarm)."""
        self._stage()
        self._kv.clear()
        self._staged_bytes = 0
        self._delete_all = True

    async def list(self, *, prefix: str | None = None, start: str | None = None, end: str | None = None,
                   limit: int | None = None, reverse: bool = False) -> dict[str, Any]:
        """Keys and values in key order (``reverse`` for descending), as an ordered dict.

        Args:
            prefix: only keys starting with it.
            start: first key included.
            end: first key excluded.
            limit: at most this many items.
            reverse: descending order (``limit`` then takes the last keys).
        """
        if limit is not None and limit < 0:
            raise ValueError("limit must be >= 0")
        lo, hi = start, end
        if prefix:
            if lo is None or lo < prefix:
                lo = prefix
            pend = _prefix_end(prefix)
            if pend is not None and (hi is None or hi > pend):
                hi = pend
        rows = await self._read(self._db.list_range, lo, hi, limit, reverse)
        return dict(rows)

    async def sql(self, query: str, *args: Any) -> builtins.list[tuple[Any, ...]]:
        """Run one SQL statement on the room's database; returns its rows. Writes are committed
        before this returns (tables starting with ``_fastws`` belong to fastws)."""
        return await self._read(self._db.sql, query, args)  # type: ignore[no-any-return]

    def transaction(self) -> Transaction:
        """``async with storage.transaction() as txn:``: the writes inside apply all together when
        the block ends, or not at all when it raises (or ``txn.rollback()`` was called)."""
        return Transaction(self)

    # ------------------------------------------------------------ meta (alarms)

    def _put_meta(self, key: str, value: Any) -> None:
        self._stage()
        self._meta[key] = value
        if value is _DELETE:
            self.meta.pop(key, None)
        else:
            self.meta[key] = value

    # ------------------------------------------------------------ the message log (history)

    def _log_append(self, entry: tuple[int, float, str], first: int) -> None:
        """Stage one log entry, and the trim that keeps offsets from ``first`` on."""
        if self._size + self._staged_bytes + len(entry[2]) + 32 > self.quota:
            raise StorageFull(f"room {self._db.name or self.path}: the history would take it over its quota")
        self._stage()
        self._log.append(entry)
        self._log_from = first
        self._staged_bytes += len(entry[2]) + 32

    async def _log_tail(self, limit: int, since_ts: float) -> tuple[int, builtins.list[tuple[int, float, str]]]:
        return await self._read(self._db.log_tail, limit, since_ts)  # type: ignore[no-any-return]

    async def _read(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self.error is not None:
            raise self.error
        self._flush()
        self._touch()
        try:
            return await self._chain.submit(fn, *args)
        except StorageError as exc:
            self.error = exc
            raise


class Transaction:
    """Writes staged together; see :meth:`Storage.transaction`."""

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        self._ops: dict[str, Any] = {}
        self._rolled_back = False

    async def get(self, key: str) -> Any:
        if key in self._ops:
            v = self._ops[key]
            return None if v is _DELETE else v
        return await self._storage.get(key)

    async def put(self, key: str | Mapping[str, Any], value: Any = None) -> None:
        items = key.items() if isinstance(key, Mapping) else [(key, value)]
        for k, v in items:
            _check_key(k)
            _encode(v)
            self._ops[k] = v

    async def delete(self, key: str | Iterable[str]) -> None:
        for k in [key] if isinstance(key, str) else key:
            self._ops[_check_key(k)] = _DELETE

    async def list(self, **kw: Any) -> dict[str, Any]:
        limit = kw.pop("limit", None)
        base = await self._storage.list(**kw)
        prefix, start, end = kw.get("prefix"), kw.get("start"), kw.get("end")
        for k, v in self._ops.items():
            if (prefix and not k.startswith(prefix)) or (start is not None and k < start) or (
                    end is not None and k >= end):
                continue
            if v is _DELETE:
                base.pop(k, None)
            else:
                base[k] = v
        keys = sorted(base, reverse=bool(kw.get("reverse")))
        if limit is not None:
            keys = keys[:limit]
        return {k: base[k] for k in keys}

    def rollback(self) -> None:
        """Discard the writes of this transaction."""
        self._rolled_back = True

    async def __aenter__(self) -> Transaction:
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None or self._rolled_back or not self._ops:
            return
        puts = [(k, _encode(v)) for k, v in self._ops.items() if v is not _DELETE]
        dels = [k for k, v in self._ops.items() if v is _DELETE]
        self._storage._put_encoded(puts, dels)  # one batch: committed together or not at all
