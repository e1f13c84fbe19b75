"""Small servers the CLI tests run with ``fastws serve tests.cli.apps:NAME --port 0``.

- ``fanout``: the fan-out room contract of ../shared/fanout/servers/_common.py: every
  connection joins one room; a message whose first byte is ``P`` goes, with its opcode,
  to every connection (the publisher included); other messages are ignored.
- ``chat``: the chat example's protocol (issue 4) reduced to what ``fastws bench --mode chat``
  uses: room = path; ``{"content": ...}`` becomes ``{"id", "userId", "content", "timestamp"}``
  sent to every member, sender included; ``user_joined`` / ``user_left`` to the others;
  anything else gets ``{"type": "error", "message": "Invalid message format"}``.
- ``pinger``: sends a PING right after the handshake, then echoes (for ``fastws connect``).
- ``closer``: answers the first message with ``bye`` and closes with 4001 "go away".
- ``headers_app``: replies to every message with the request's path, subprotocol and headers as JSON.
- ``tobinary``: echoes every message as BINARY.
- ``info``: replies with the worker's pid and FASTWS_DATA_DIR as seen when this module was imported.
"""

import datetime
import os
import uuid

import orjson

import fastws

PUBLISH = 0x50
DATA_DIR_AT_IMPORT = os.environ.get("FASTWS_DATA_DIR")  # proves --data-dir is exported before the import


class Fanout(fastws.Listener):
    __slots__ = ()
    room: set = set()

    def on_connect(self, ws):
        Fanout.room.add(ws)

    def on_message(self, ws, msg):
        if len(msg) and memoryview(msg)[0] == PUBLISH:
            for peer in list(Fanout.room):
                try:
                    peer.send(msg)
                except fastws.ConnectionClosed:
                    Fanout.room.discard(peer)

    def on_close(self, ws, code, reason):
        Fanout.room.discard(ws)


fanout = Fanout
fanout.server_options = {"compression": False, "ping_interval": None}

ROOMS: dict[str, set] = {}


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat()


async def chat(ws):
    name = ws.request.path.lstrip("/") or "default"
    members = ROOMS.setdefault(name, set())
    user = uuid.uuid4().hex
    joined = orjson.dumps({"type": "user_joined", "userId": user, "timestamp": _now()}).decode()
    for peer in list(members):
        peer.send(joined)
    members.add(ws)
    try:
        async for message in ws:
            try:
                obj = orjson.loads(message)
                content = obj["content"]
            except (orjson.JSONDecodeError, KeyError, TypeError):
                await ws.send(orjson.dumps({"type": "error", "message": "Invalid message format"}).decode())
                continue
            out = orjson.dumps({"id": str(uuid.uuid4()), "userId": user, "content": content,
                                "timestamp": _now()}).decode()
            for peer in list(members):
                try:
                    peer.send(out)
                except fastws.ConnectionClosed:
                    members.discard(peer)
    finally:
        members.discard(ws)
        left = orjson.dumps({"type": "user_left", "userId": user, "timestamp": _now()}).decode()
        for peer in list(members):
            try:
                peer.send(left)
            except fastws.ConnectionClosed:
                pass


async def pinger(ws):
    await ws.ping(b"hi")
    async for message in ws:
        await ws.send(message)


async def closer(ws):
    await ws.recv()
    await ws.send("bye")
    await ws.close(4001, "go away")


async def headers(ws):
    async for _ in ws:
        await ws.send(orjson.dumps({"path": ws.request.path, "subprotocol": ws.subprotocol,
                                    "headers": {k.lower(): v for k, v in ws.request.headers.items()}}).decode())


class _Hdr:
    """An App-like object offering subprotocols (resolve_app picks up fastws_accept)."""

    def fastws_accept(self, ws, request):
        return fastws.Accept(handler=headers, subprotocols=["chat.v2", "chat.v1"])


headers_app = _Hdr()


async def tobinary(ws):
    async for message in ws:
        await ws.send(message.encode() if isinstance(message, str) else message)


async def info(ws):
    """Replies to every message with this worker's pid and the data dir seen at import."""
    async for _ in ws:
        await ws.send(orjson.dumps({"pid": os.getpid(), "data_dir": DATA_DIR_AT_IMPORT}).decode())
