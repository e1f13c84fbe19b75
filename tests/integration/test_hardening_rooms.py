"""Hostile paths and room names against real servers on 127.0.0.1 with real SQLite files: the
firewall and the routes see one normalised path, no room name leaves its directory, rooms that
never wrote leave nothing on disk, caps on rooms per process and new rooms per client IP, and
room names never become metric labels."""

from __future__ import annotations

import asyncio
import os

import orjson
import pytest

import fastws
from fastws.guards import RateLimit
from fastws.rooms import Room, RoomRouter
from tests.helpers import raw_connect, read_http_response, until, upgrade_request

T = 5.0




async def http(server, target: str, upgrade: bool = False) -> tuple[int, dict[str, str], bytes]:
    if upgrade:
        req = upgrade_request(target)
    else:
        req = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    reader, writer = await raw_connect(server, req)
    try:
        return await read_http_response(reader, T)
    finally:
        writer.close()


class Echo:
    def fastws_accept(self, ws, request):
        if not request.is_websocket:
            return fastws.Response(200, request.path)
        return fastws.Accept(handler=self.run)

    async def run(self, ws):
        async for m in ws:
            await ws.send(m)


ADMIN_SPELLINGS = ["/admin", "//admin", "/%61dmin", "/admin/", "/./admin", "/x/../admin", "/%2e/admin",
                   "/%2E%2E/admin", "http://127.0.0.1/admin", "/admin//", "/public/../admin"]


@pytest.mark.parametrize("upgrade", [False, True])
async def test_a_firewall_rule_on_admin_holds_for_every_spelling(serve, upgrade):
    app = fastws.App(firewall=[{"action": "deny", "path": "/admin"}])
    app.mount("/", Echo())
    server = await serve(app)
    for target in ADMIN_SPELLINGS:
        status, _, body = await http(server, target, upgrade)
        assert (target, status) == (target, 403), body
    status, _, body = await http(server, "/public/./x//y/", upgrade)
    assert status == (101 if upgrade else 200)
    if not upgrade:
        assert body == b"/public/x/y"  # what the route saw is the normalised path


@pytest.mark.parametrize("target,reason", [("/a%00b", b"control character"), ("/%C3", b"not UTF-8"),
                                           ("/a%0D%0AX-Injected:%201", b"control character")])
async def test_bad_paths_get_400_and_a_one_line_reason(serve, target, reason):
    server = await serve(Echo())
    for upgrade in (False, True):
        status, _, body = await http(server, target, upgrade)
        assert status == 400 and reason in body and body.count(b"\n") <= 1


class Notes(Room):
    async def on_request(self, request):
        if request.query_param("write"):
            await self.storage.put("note", request.query_param("write"))
        return {"room": self.name, "note": await self.storage.get("note")}


def files_under(root):
    out = []
    for d, _, names in os.walk(root):
        out += [os.path.join(d, n) for n in names]
    return sorted(out)


async def test_hostile_room_names_stay_in_their_directory(serve, tmp_path):
    data = tmp_path / "data"
    server = await serve(RoomRouter(Notes, data_dir=str(data), new_rooms_per_ip=None))
    targets = ["/..", "/%2e%2e%2f%2e%2e%2fetc", "/..%2f..%2fx", "/a%2F..%2F..%2Fb", "/%5C..%5C..%5Cwin",
               "/CON", "/con", "/nul.txt", "/Lobby", "/lobby", "/LOBBY", "/%EF%BC%8E%EF%BC%8E%EF%BC%8F",
               "/" + "x" * 255, "/.hidden", "/~", "/%7E", "/a~b"]
    rooms = {}
    for t in targets:
        status, _, body = await http(server, t + "?write=v")
        assert status == 200, (t, body)
        doc = orjson.loads(body)
        rooms[doc["room"]] = t
        assert doc["note"] == "v"
    files = [f for f in files_under(data) if f.endswith(".sqlite3")]
    assert len(files) == len(rooms)  # one distinct file per distinct room name
    assert len({f.lower() for f in files}) == len(files)  # distinct on a case-insensitive file system too
    for f in files:
        assert os.path.realpath(f).startswith(str(data / "Notes") + os.sep)
    assert not (tmp_path / "etc").exists() and not (tmp_path / "x").exists()
    # what each name reads is its own
    for name, t in rooms.items():
        status, _, body = await http(server, t)
        assert orjson.loads(body) == {"room": name, "note": "v"}


@pytest.mark.parametrize("target,status,reason", [
    ("/" + "x" * 256, 400, b"Room name too long"),
    ("/" + "%C3%A9" * 128, 400, b"Room name too long"),
    ("/a%C2%85b", 400, b"control character"),   # C1 control (NEL): fine in a path, not in a room name
])
async def test_invalid_room_names_get_400(serve, tmp_path, target, status, reason):
    server = await serve(RoomRouter(Notes, data_dir=str(tmp_path)))
    for upgrade in (False, True):
        got, _, body = await http(server, target, upgrade)
        assert got == status and reason in body
    assert files_under(tmp_path) == []


async def test_rooms_that_never_wrote_leave_nothing_on_disk(serve, tmp_path):
    server = await serve(RoomRouter(Notes, data_dir=str(tmp_path), new_rooms_per_ip=None))
    for i in range(200):
        status, _, body = await http(server, f"/r{i}")
        assert status == 200 and orjson.loads(body) == {"room": f"r{i}", "note": None}
    async with fastws.connect(server.url + "/ws-only") as ws:   # a member that never makes it write
        await ws.send("hi")
    assert files_under(tmp_path) == []
    status, _, body = await http(server, "/used?write=hello")
    assert orjson.loads(body)["note"] == "hello"
    files = files_under(tmp_path)
    assert [os.path.basename(f) for f in files if f.endswith(".sqlite3")] == ["used.sqlite3"]


async def test_legacy_file_names_are_moved_on_open(serve, tmp_path):
    import sqlite3

    from fastws.rooms.storage import legacy_room_path, room_path

    old = legacy_room_path(str(tmp_path), "Notes", "Lobby~1")
    os.makedirs(os.path.dirname(old))
    conn = sqlite3.connect(old)
    conn.executescript("CREATE TABLE _fastws_kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, bin INTEGER NOT NULL);"
                       "CREATE TABLE _fastws_meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;")
    conn.execute("INSERT INTO _fastws_kv VALUES ('note', ?, 0)", (orjson.dumps("kept"),))
    conn.commit()
    conn.close()
    server = await serve(RoomRouter(Notes, data_dir=str(tmp_path)))
    status, _, body = await http(server, "/Lobby~1")
    assert orjson.loads(body) == {"room": "Lobby~1", "note": "kept"}
    assert not os.path.exists(old) and os.path.exists(room_path(str(tmp_path), "Notes", "Lobby~1"))


class Chat(Room):
    def on_message(self, ws, message):
        self.broadcast(message)

    def on_request(self, request):
        return {"sessions": len(self.sockets())}


async def test_max_rooms_refuses_with_503_and_reclaims_empty_rooms(serve, tmp_path):
    router = RoomRouter(Chat, data_dir=str(tmp_path), max_rooms=3, new_rooms_per_ip=None)
    server = await serve(router)
    held = [await fastws.connect(f"{server.url}/r{i}") for i in range(3)]
    status, headers, body = await http(server, "/r3", upgrade=True)
    assert status == 503 and body == b"Too many rooms\n" and headers["retry-after"] == "30"
    assert (await http(server, "/r0"))[0] == 200          # rooms in memory still answer
    joined = await fastws.connect(f"{server.url}/r1")       # and still take members
    await joined.close()
    await held[0].close()
    await until(lambda: not router.rooms["r0"].sockets)
    await asyncio.sleep(1.1)                                 # r0 is empty and idle: it can make space
    status, _, body = await http(server, "/r3")
    assert status == 200, body
    assert "r0" not in router.rooms and "r3" in router.rooms
    for ws in held[1:]:
        await ws.close()


async def test_new_rooms_per_ip_429_with_retry_after(serve, tmp_path):
    server = await serve(RoomRouter(Chat, data_dir=str(tmp_path), new_rooms_per_ip=RateLimit(3, 60)))
    for i in range(3):
        assert (await http(server, f"/n{i}"))[0] == 200
    status, headers, body = await http(server, "/n3", upgrade=True)
    assert status == 429 and body == b"Too many new rooms from this address\n" and int(headers["retry-after"]) >= 1
    assert (await http(server, "/n3"))[0] == 429
    async with fastws.connect(server.url + "/n0") as ws:    # joining a room in memory never counts
        await ws.send("x")
        assert await asyncio.wait_for(ws.recv(), T) == "x"


async def test_room_names_are_not_metric_labels(serve, tmp_path):
    app = fastws.App()
    app.mount("/rooms", RoomRouter(Chat, data_dir=str(tmp_path), new_rooms_per_ip=None))
    server = await serve(app)
    for i in range(50):
        assert (await http(server, f"/rooms/attacker-{i:03d}"))[0] == 200
    status, _, body = await http(server, "/metrics")
    assert status == 200 and b"fastws_rooms_active" in body
    assert b"attacker" not in body
    assert (await http(server, "/r", upgrade=False))[0] in (404, 426)


async def test_an_http_answer_that_shows_a_write_leaves_after_the_commit(serve, tmp_path):
    """The output gate holds plain HTTP answers too: once the client has the answer, another
    connection to the database file reads the write."""
    import sqlite3

    from fastws.rooms.storage import room_path

    server = await serve(RoomRouter(Notes, data_dir=str(tmp_path)))
    for i in range(20):
        status, _, body = await http(server, f"/durable?write=v{i}")
        assert status == 200 and orjson.loads(body)["note"] == f"v{i}"
        conn = sqlite3.connect(f"file:{room_path(str(tmp_path), 'Notes', 'durable')}?mode=ro", uri=True)
        try:
            (value,) = conn.execute("SELECT value FROM _fastws_kv WHERE key = 'note'").fetchone()
        finally:
            conn.close()
        assert orjson.loads(value) == f"v{i}"
