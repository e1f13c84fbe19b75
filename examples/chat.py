"""Chat rooms with history: one durable room per path (``/lobby`` is room ``lobby``, ``/`` is
``default``).

    fastws serve examples.chat:app --host 127.0.0.1 --port 9001 [--data-dir ./data]
    fastws serve examples.chat:resumable ...     # the same, with offsets and catch-up

- On connect the new socket gets the last 50 messages, then everyone else gets
  ``{"type": "user_joined", "userId", "timestamp"}``.
- A client sends ``{"content": "..."}``; every session (the sender too) gets
  ``{"id", "userId", "content", "timestamp"}``, stored first: nobody sees a message that a crash
  would lose. Anything else gets ``{"type": "error", "message": "Invalid message format"}``;
  ``ping`` is answered ``pong`` (by the engine, for heartbeats).
- On close the others get ``{"type": "user_left", ...}``. ``GET /room`` returns
  ``{"sessions": N, "messages": M}``. History is in ``<data-dir>/<class name>/<room>.sqlite3``.
- ``resumable`` serves :class:`ResumableChatRoom`, which keeps a log (``history = 1000``): every
  broadcast leaves in an envelope ``{"epoch", "offset", "data"}``, and a client
  that reconnects with ``?since=<epoch>:<offset>`` gets exactly what it missed instead of the last
  50 messages (the user_joined then goes to everyone, the joiner too, so that its offsets have no
  gap).
- A browser (a GET that accepts ``text/html``) gets the demo page, ``examples/chat.html``, for that
  room: open ``http://127.0.0.1:9001/lobby`` in two windows. The page uses the JavaScript client
  that the server serves at ``/fastws-client.js``: it reconnects, and on ``resumable`` it resumes.
"""

from __future__ import annotations

import datetime
import pathlib
import time
import uuid
from collections import deque
from typing import Any

import orjson

from fastws import Response
from fastws.rooms import Room, RoomRouter

HISTORY = 50
INVALID = orjson.dumps({"type": "error", "message": "Invalid message format"}).decode()
PAGE = pathlib.Path(__file__).with_name("chat.html")


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ChatRoom(Room):
    def __init__(self) -> None:
        self.recent: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self.count = 0
        self.set_auto_response("ping", "pong")  # the page's heartbeat, answered without waking the room
        self.block_concurrency_while(self.load())

    async def load(self) -> None:
        self.count = await self.storage.get("count") or 0
        last = await self.storage.list(prefix="msg:", reverse=True, limit=HISTORY)
        self.recent.extend(reversed(list(last.values())))

    def on_connect(self, ws: Any) -> None:
        if ws.resumed is not True:  # a fresh join, or one the log could not catch up (a reset)
            for message in self.recent:
                ws.send(message)
        # with a log, the joiner gets its own user_joined too: an offset it skipped would be a gap
        self.broadcast({"type": "user_joined", "userId": ws.id, "timestamp": now_iso()},
                       exclude=None if self.history else ws)

    async def on_message(self, ws: Any, message: str | bytes) -> None:
        try:
            data = orjson.loads(message)
            content = data["content"]
            if not isinstance(content, str):
                raise TypeError
        except (orjson.JSONDecodeError, TypeError, KeyError):
            ws.send(INVALID)
            return
        msg = {"id": str(uuid.uuid4()), "userId": ws.id, "content": content, "timestamp": now_iso()}
        self.count += 1
        await self.storage.put({f"msg:{time.time_ns():020d}:{self.count}": msg, "count": self.count})
        self.recent.append(msg)
        self.broadcast(msg)  # leaves once the write is committed

    def on_close(self, ws: Any, code: int, reason: str, was_clean: bool) -> None:
        self.broadcast({"type": "user_left", "userId": ws.id, "timestamp": now_iso()})

    def on_request(self, request: Any) -> Any:
        if "text/html" in (request.headers.get("accept") or ""):
            return Response(200, PAGE.read_bytes(), content_type="text/html; charset=utf-8")
        return {"sessions": len(self.sockets()), "messages": self.count}


class ResumableChatRoom(ChatRoom):
    """The same chat with its broadcasts in an ordered log: reconnecting clients catch up."""

    history = 1000


app = RoomRouter(ChatRoom)
resumable = RoomRouter(ResumableChatRoom)
