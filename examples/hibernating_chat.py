"""A chat room that sleeps: after 10 s without events the room object leaves memory while its
WebSockets stay open in the engine (with their attachments); the next event builds it again.

    fastws serve examples.hibernating_chat:app --host 127.0.0.1 --port 9001

- Each message (``{"content": "..."}`` or plain text) goes to every socket as
  ``{"type": "message", "userId", "content", "timestamp"}`` (userId from the socket's attachment).
- On close the others get ``{"type": "user_left", "userId", "timestamp"}``.
- ``ping`` is answered with ``pong`` by the engine, without waking the room.
"""

from __future__ import annotations

import datetime
import uuid
from typing import Any

import orjson

from fastws.rooms import Room, RoomRouter


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class HibernatingChat(Room):
    hibernate = True  # 10 s

    def __init__(self) -> None:
        self.set_auto_response("ping", "pong")

    def accept(self, request: Any) -> dict[str, Any]:
        return {"attachment": {"userId": request.query_param("user") or str(uuid.uuid4())}}

    def on_message(self, ws: Any, message: str | bytes) -> None:
        content: Any = message
        if isinstance(message, str) and message.startswith("{"):
            try:
                content = orjson.loads(message).get("content", message)
            except (orjson.JSONDecodeError, AttributeError):
                content = message
        if isinstance(content, bytes):
            content = content.decode("utf-8", "replace")
        self.broadcast({"type": "message", "userId": ws.attachment["userId"], "content": content,
                        "timestamp": now_iso()})

    def on_close(self, ws: Any, code: int, reason: str, was_clean: bool) -> None:
        self.broadcast({"type": "user_left", "userId": ws.attachment["userId"], "timestamp": now_iso()})


app = RoomRouter(HibernatingChat)
