"""Room storage on a real SQLite file (no sockets), the batch queue, room file names."""

from __future__ import annotations

import asyncio
import os
import sqlite3

import orjson
import pytest

from fastws._batch import Batcher
from fastws.rooms import StorageError, StorageFull
from fastws.rooms.storage import Storage, room_path


def make(tmp_path, **kw) -> Storage:
    return Storage(str(tmp_path / "room.sqlite3"), asyncio.get_running_loop(), **kw)


async def test_put_get_roundtrip_json_and_bytes(tmp_path):
    st = make(tmp_path)
    await st.put("a", {"x": [1, 2, "three"]})
    await st.put("b", b"\x00\xffraw")
    await st.put("c", 3.5)
    # staged writes are visible before the commit
    assert await st.get("a") == {"x": [1, 2, "three"]}
    await st.sync()
    assert await st.get("b") == b"\x00\xffraw"
    assert await st.get(["c", "missing", "a"]) == {"c": 3.5, "a": {"x": [1, 2, "three"]}}
    assert await st.get("missing") is None
    await st.close()
    # a new connection on the same file sees everything
    st2 = make(tmp_path)
    assert await st2.get(["a", "b", "c"]) == {"a": {"x": [1, 2, "three"]}, "b": b"\x00\xffraw", "c": 3.5}
    await st2.close()


async def test_delete_and_delete_all(tmp_path):
    st = make(tmp_path)
    await st.put({"k1": 1, "k2": 2, "k3": 3})
    await st.sync()
    await st.delete("k1")
    assert await st.get("k1") is None
    await st.delete(["k2"])
    await st.sync()
    assert await st.list() == {"k3": 3}
    await st.delete_all()
    assert await st.get("k3") is None
    await st.put("after", True)
    await st.sync()
    assert await st.list() == {"after": True}
    await st.close()


async def test_list_prefix_range_limit_reverse(tmp_path):
    st = make(tmp_path)
    await st.put({f"msg:{i:03d}": i for i in range(20)})
    await st.put({"other": 0, "msg;": -1, "msf": -2})
    assert list(await st.list(prefix="msg:")) == [f"msg:{i:03d}" for i in range(20)]
    assert list(await st.list(prefix="msg:", limit=3)) == ["msg:000", "msg:001", "msg:002"]
    assert list(await st.list(prefix="msg:", reverse=True, limit=2)) == ["msg:019", "msg:018"]
    assert list(await st.list(start="msg:005", end="msg:008")) == ["msg:005", "msg:006", "msg:007"]
    assert list(await st.list(prefix="msg:", start="msg:018")) == ["msg:018", "msg:019"]
    assert await st.list(prefix="zzz") == {}
    with pytest.raises(ValueError):
        await st.list(limit=-1)
    await st.close()


async def test_writes_of_one_loop_turn_are_one_commit(tmp_path):
    commits = []
    st = make(tmp_path, on_commit=commits.append)
    for i in range(100):
        await st.put(f"k{i}", i)
    assert st.pending
    await st.sync()
    assert commits == [1]
    assert not st.pending
    await st.put("next", 1)
    await st.sync()
    assert commits == [1, 2]
    await st.close()


async def test_transaction_applies_all_or_nothing(tmp_path):
    st = make(tmp_path)
    await st.put("balance", 10)
    async with st.transaction() as txn:
        b = await txn.get("balance")
        await txn.put("balance", b - 3)
        await txn.put("log", ["-3"])
        assert await txn.get("balance") == 7
        assert await st.get("balance") == 10  # not applied before the block ends
    assert await st.get(["balance", "log"]) == {"balance": 7, "log": ["-3"]}
    with pytest.raises(RuntimeError):
        async with st.transaction() as txn:
            await txn.put("balance", 0)
            raise RuntimeError("abort")
    assert await st.get("balance") == 7
    async with st.transaction() as txn:
        await txn.delete("log")
        txn.rollback()
    assert await st.get("log") == ["-3"]
    async with st.transaction() as txn:
        await txn.delete("log")
        await txn.put("z", 1)
        assert await txn.list() == {"balance": 7, "z": 1}
    await st.sync()
    assert await st.list() == {"balance": 7, "z": 1}
    await st.close()


async def test_sql_on_the_same_database(tmp_path):
    st = make(tmp_path)
    await st.sql("CREATE TABLE IF NOT EXISTS scores (name TEXT PRIMARY KEY, points INTEGER)")
    await st.sql("INSERT INTO scores VALUES (?, ?)", "ann", 3)
    await st.sql("INSERT INTO scores VALUES (?, ?)", "bob", 5)
    assert await st.sql("SELECT name, points FROM scores ORDER BY points DESC") == [("bob", 5), ("ann", 3)]
    with pytest.raises(sqlite3.IntegrityError):
        await st.sql("INSERT INTO scores VALUES (?, ?)", "ann", 1)
    await st.put("kv", "still works")
    await st.close()
    conn = sqlite3.connect(tmp_path / "room.sqlite3")
    assert conn.execute("SELECT count(*) FROM scores").fetchone() == (2,)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


async def test_quota_gives_a_clear_error_and_loses_nothing(tmp_path):
    st = make(tmp_path, quota=64 * 1024)
    await st.put("small", "x" * 100)
    await st.sync()
    with pytest.raises(StorageFull, match="quota"):
        for i in range(1000):
            await st.put(f"big{i}", "y" * 4000)
            if i % 10 == 0:
                await st.sync()
    await st.sync()
    assert await st.get("small") == "x" * 100  # what was stored before is intact
    await st.delete([f"big{i}" for i in range(1000)])
    await st.sync()
    await st.put("again", 1)  # room again after deleting
    await st.sync()
    assert await st.get("again") == 1
    await st.close()


async def test_bad_values_and_keys(tmp_path):
    st = make(tmp_path)
    with pytest.raises(TypeError, match="JSON"):
        await st.put("k", object())
    with pytest.raises(TypeError, match="str"):
        await st.put(5, "v")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await st.put({f"k{i}": i for i in range(200)})
    assert not st.pending
    await st.close()


async def test_corrupt_file_is_a_clear_error(tmp_path):
    path = tmp_path / "room.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    st = make(tmp_path)
    with pytest.raises(StorageError, match="unusable"):
        await st.open()
    with pytest.raises(StorageError):
        await st.get("k")
    with pytest.raises(StorageError):
        await st.put("k", 1)
    await st.close()


def test_room_paths_are_distinct_and_safe(tmp_path):
    names = ["lobby", "a/b", "a%2Fb", "..", ".", "", "ünï", "x" * 1000, "x" * 999 + "y", "con\x00"]
    paths = [room_path(str(tmp_path), "Chat", n) for n in names]
    assert len(set(paths)) == len(names)
    for p in paths:
        assert os.path.dirname(p) == str(tmp_path / "Chat")
        assert len(os.path.basename(p)) < 255
        assert not os.path.basename(p).startswith(".")


async def test_batcher_size_and_delay():
    loop = asyncio.get_running_loop()
    sent: list[tuple[str, object]] = []
    done = asyncio.Event()

    def send(key, frame):
        sent.append((key, orjson.loads(frame)))
        if len(sent) == 3:
            done.set()

    b = Batcher(send, 10, 0.02, loop)
    for i in range(25):
        b.add("s1", {"n": i})
    assert [len(m["messages"]) for _, m in sent] == [10, 10]
    assert b.pending("s1") == 5
    await asyncio.wait_for(done.wait(), 5)
    assert sent[2] == ("s1", {"type": "batch", "messages": [{"n": i} for i in range(20, 25)]})
    assert b.batches_sent == 3


async def test_batcher_fragments_flush_and_discard():
    loop = asyncio.get_running_loop()
    sent: list[tuple[str, bytes]] = []
    b = Batcher(lambda k, f: sent.append((k, f)), 10, 60.0, loop)
    b.add("a", orjson.Fragment('{"raw":1}'))
    b.add("b", "text")
    b.add("c", 1)
    b.discard("c")
    b.flush_key("a")
    assert sent == [("a", b'{"type":"batch","messages":[{"raw":1}]}')]
    b.flush_all()
    assert sent[1] == ("b", b'{"type":"batch","messages":["text"]}')
    assert len(b) == 0 and len(sent) == 2
    with pytest.raises(ValueError):
        Batcher(print, 0, 0.1, loop)


async def test_idle_and_least_recently_used_connections_are_closed(tmp_path, monkeypatch):
    from fastws.rooms import storage as storage_mod

    loop = asyncio.get_running_loop()
    stores = [Storage(str(tmp_path / f"r{i}.sqlite3"), loop) for i in range(4)]
    for i, st in enumerate(stores):
        await st.put("i", i)
        await st.sync()
    assert all(st.connected for st in stores)
    monkeypatch.setattr(storage_mod, "MAX_CONNECTIONS", 2)
    assert storage_mod.close_idle(loop.time()) == 2
    assert [st.connected for st in stores] == [False, False, True, True]  # the oldest went first
    assert storage_mod.close_idle(loop.time() + storage_mod.IDLE_CLOSE + 1) == 2
    assert not any(st.connected for st in stores)
    # a closed connection opens again on the next operation, data intact
    assert [await st.get("i") for st in stores] == [0, 1, 2, 3]
    await stores[0].put("j", 1)
    await stores[0].sync()
    assert await stores[0].get("j") == 1
    for st in stores:
        await st.close()
    assert not any(st in storage_mod._connected for st in stores)


async def test_writes_made_while_a_commit_is_in_flight_go_in_one_transaction(tmp_path):
    """Group commit: with one commit in flight, the writes of the turns after it wait and go
    together in the next one (a commit per turn would queue behind it anyway); each turn's
    gated output is released once its write is committed, in order."""
    import threading

    committed: list[int] = []
    st = make(tmp_path, on_commit=committed.append)
    gate = threading.Event()
    await st.put("first", 0)
    blocked = st._chain.submit(gate.wait, 5)  # the pool thread busy: the first commit stays in flight
    await asyncio.sleep(0)                    # end of turn: the first batch goes to the chain
    seqs = []
    for i in range(10):                       # ten more turns, each with a write
        await st.put(f"k{i}", i)
        seqs.append(st.seq)
        await asyncio.sleep(0)
    assert committed == [] and st.pending
    assert seqs == [2] * 10                   # the ten turns share one batch
    gate.set()
    await blocked
    await st.sync()
    assert committed == [1, 2] and not st.pending   # two transactions, not eleven
    assert await st.get(["first", "k9"]) == {"first": 0, "k9": 9}
    await st.close()


async def test_log_commits_one_entry_per_turn_and_many_in_one_turn(tmp_path):
    """The message log's commits: one entry per turn (the single-statement commit), 700 in one
    turn (inserted in chunks of LOG_ROWS), trims every LOG_TRIM_STEP entries past the limit;
    another Storage on the same file reads back exactly the newest entries, in order."""
    from fastws.rooms.storage import LOG_ROWS, LOG_TRIM_STEP

    limit = 500
    st = make(tmp_path)
    offset = 0

    def entry() -> tuple[int, float, str]:
        nonlocal offset
        offset += 1
        return (offset, 1000.0 + offset, orjson.dumps({"epoch": "ab12cd34", "offset": offset, "data": "m"}).decode())

    for _ in range(3 * LOG_TRIM_STEP):          # a turn each
        st._log_append(entry(), max(1, offset - limit + 1))
        await asyncio.sleep(0)
    await st.sync()
    assert 700 > 2 * LOG_ROWS
    for _ in range(700):                         # one turn
        st._log_append(entry(), max(1, offset - limit + 1))
    await st.sync()
    for _ in range(5):
        st._log_append(entry(), max(1, offset - limit + 1))
        await asyncio.sleep(0)
    await st.sync()
    await st.close()

    with sqlite3.connect(str(tmp_path / "room.sqlite3")) as db:
        low, high, count = db.execute("SELECT min(offset), max(offset), count(*) FROM _fastws_log").fetchone()
    assert high == offset == 3 * LOG_TRIM_STEP + 705
    assert count == high - low + 1                    # contiguous
    assert limit <= count < limit + LOG_TRIM_STEP + 700  # trimmed in steps, never below the limit

    again = make(tmp_path)
    last, rows = await again._log_tail(limit, 0.0)
    assert last == offset
    assert [r[0] for r in rows] == list(range(offset - limit + 1, offset + 1))
    assert all(orjson.loads(r[2])["offset"] == r[0] and r[1] == 1000.0 + r[0] for r in rows)
    await again.close()


async def _opened(tmp_path, **kw) -> Storage:
    """A storage whose connection is open (its first commit ran on the pool and opened it)."""
    st = make(tmp_path, **kw)
    await st.put("opened", True)
    await st.sync()
    assert st._db.conn is not None
    return st


async def test_a_commit_waits_for_its_fsync_but_the_loop_does_not(tmp_path, monkeypatch):
    """FULL: a batch is written on the loop and fsynced on the room's thread. While the fsync
    is held the loop runs on (past the short wait of its turn), the batch is not counted as
    committed, so what it gates stays back; once the fsync is done it is."""
    import threading

    from fastws.rooms import storage as storage_mod

    committed: list[int] = []
    st = await _opened(tmp_path, on_commit=committed.append)
    committed.clear()
    release = threading.Event()
    calls: list[str] = []
    original = storage_mod._Db.sync_wal

    def held_sync(self):
        calls.append(threading.current_thread().name)
        release.wait(5)
        return original(self)

    monkeypatch.setattr(storage_mod._Db, "sync_wal", held_sync)
    await st.put("k", "v")
    seq = st.seq
    await asyncio.sleep(0.05)          # the loop turns while the fsync is held
    assert committed == [] and st.pending
    assert calls and all(name != threading.current_thread().name for name in calls)  # not on the loop
    assert await st.get("k") == "v"    # its own writes are visible to the room meanwhile (after the fsync)
    release.set()
    await st.sync()
    assert committed == [seq] and not st.pending
    with sqlite3.connect(str(tmp_path / "room.sqlite3")) as db:
        assert db.execute("SELECT value FROM _fastws_kv WHERE key = 'k'").fetchone() == (b'"v"',)
    await st.close()


async def _put_until_it_fails(st: Storage, failed: list[int]) -> int:
    """Stage a write, wait (2 s at most) for the failure callback; the write's batch number."""
    await st.put("k", "v")
    seq = st.seq
    for _ in range(200):
        if failed:
            break
        await asyncio.sleep(0.01)
    return seq


@pytest.mark.parametrize("slow", [False, True])
async def test_a_failed_fsync_fails_its_commit(tmp_path, monkeypatch, slow):
    """An fsync that fails (whether it ends within the turn's wait or after it) is a failed
    commit: the failure callback gets its batch, on_commit does not."""
    import time as time_mod

    from fastws.rooms import storage as storage_mod

    committed: list[int] = []
    failed: list[int] = []
    st = await _opened(tmp_path, on_commit=committed.append, on_failure=lambda seq, exc: failed.append(seq))
    committed.clear()

    def broken_sync(self):
        if slow:
            time_mod.sleep(0.05)   # past SYNC_WAIT: reported by the job, in a loop callback
        raise storage_mod.StorageError("fsync failed (injected)")

    monkeypatch.setattr(storage_mod._Db, "sync_wal", broken_sync)
    seq = await _put_until_it_fails(st, failed)
    assert failed == [seq] and committed == []
    assert not st.pending  # done with it: later output is not held for ever
    monkeypatch.undo()
    await st.close()


async def test_normal_commits_without_an_fsync_and_the_wal_is_checkpointed(tmp_path, monkeypatch):
    """NORMAL: the batch counts once written (no fsync of ours). Either way SQLite's automatic
    checkpoints are off (they would run inside a commit on the loop): the chain checkpoints the
    WAL every CHECKPOINT_COMMITS commits, so it does not grow without bound."""
    from fastws.rooms import storage as storage_mod

    monkeypatch.setattr(storage_mod, "CHECKPOINT_COMMITS", 40)
    checkpoints: list[int] = []
    original_ckpt = storage_mod._Db.checkpoint
    monkeypatch.setattr(storage_mod._Db, "checkpoint", lambda self: (checkpoints.append(1), original_ckpt(self))[1])
    committed: list[int] = []
    st = await _opened(tmp_path, synchronous="NORMAL", on_commit=committed.append)
    n = 400
    for i in range(n):                 # a commit each, a few pages of the WAL each
        await st.put(f"k{i % 7}", "x" * 3000)
        await st.sync()
    assert not st.pending and len(committed) == n + 1
    assert not st._db.own_sync and st._db.wal_fd == -1  # NORMAL: no fsync of ours
    assert len(checkpoints) >= n // 40 - 1
    wal = os.path.getsize(str(tmp_path / "room.sqlite3") + "-wal")
    assert wal < 40 * 4 * 4096 * 2     # about CHECKPOINT_COMMITS commits' pages, not n's
    await st.close()
    with sqlite3.connect(str(tmp_path / "room.sqlite3")) as db:
        assert db.execute("SELECT count(*) FROM _fastws_kv WHERE key LIKE 'k%'").fetchone() == (7,)


async def test_an_fsync_the_kernel_refuses_leaves_the_room_unusable(tmp_path):
    """A real failing fsync (the WAL descriptor swapped for a pipe's: EINVAL): the commit
    fails, and every later operation says so instead of trusting what may not be on disk."""
    failed: list[int] = []
    st = await _opened(tmp_path, on_failure=lambda seq, exc: failed.append(seq))
    db = st._db
    r, w = os.pipe()
    os.close(db.wal_fd)
    db.wal_fd = r
    try:
        seq = await _put_until_it_fails(st, failed)
        assert failed == [seq]
        assert db.wal_fd == -1  # closed with the connection
        with pytest.raises(StorageError, match="fsync"):
            await st.get("k")
    finally:
        os.close(w)
