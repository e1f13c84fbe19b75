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
