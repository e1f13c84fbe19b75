"""A room that keeps its messages in memory and saves them with an alarm.

    fastws serve examples.persistent_room:app --host 127.0.0.1 --port 9001 [--data-dir ./data]

Every message is kept (and broadcast as ``{"type": "message", "content", "timestamp"}``); an
alarm every minute drops the messages older than an hour and saves the rest to the room's
storage, so a restart loads them back. Alarms are stored too: one due while the server was down
runs when it starts again. ``GET /room`` returns ``{"messages": N, "saved": M, "saved_at": T}``.
"""

from __future__ import annotations

import time
from typing import Any

from fastws.rooms import AlarmInfo, Room, RoomRouter


class PersistentRoom(Room):
    save_every = 60.0  # seconds between saves
    keep_for = 3600.0  # seconds a message is kept

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.saved = 0
        self.saved_at: float | None = None
        self.block_concurrency_while(self.load())

    async def load(self) -> None:
        self.messages = await self.storage.get("messages") or []
        self.saved = len(self.messages)
        self.saved_at = await self.storage.get("saved_at")
        if await self.get_alarm() is None:
            await self.set_alarm(time.time() + self.save_every)

    def on_message(self, ws: Any, message: str | bytes) -> None:
        text = message if isinstance(message, str) else message.decode("utf-8", "replace")
        item = {"type": "message", "content": text, "timestamp": time.time()}
        self.messages.append(item)
        self.broadcast(item)

    async def alarm(self, info: AlarmInfo) -> None:
        cutoff = time.time() - self.keep_for
        self.messages = [m for m in self.messages if m["timestamp"] >= cutoff]
        self.saved_at = time.time()
        self.saved = len(self.messages)
        await self.storage.put({"messages": self.messages, "saved_at": self.saved_at})
        await self.set_alarm(time.time() + self.save_every)

    def on_request(self, request: Any) -> dict[str, Any]:
        return {"messages": len(self.messages), "saved": self.saved, "saved_at": self.saved_at}


app = RoomRouter(PersistentRoom)
