"""The app the crash test runs in a subprocess: the chat example at ``/chat/...`` and a room
with an alarm at ``/alarm/...`` (served with ``fastws serve tests.integration.rooms_crash_app:app``)."""

from __future__ import annotations

import time
from typing import Any

from examples.chat import ChatRoom
from fastws.rooms import Room, RoomRouter


class AlarmRoom(Room):
    async def on_message(self, ws: Any, message: str | bytes) -> None:
        await self.set_alarm(time.time() + float(message))
        ws.send("set")

    async def alarm(self, info: Any) -> None:
        await self.storage.put("fired", time.time())

    async def on_request(self, request: Any) -> dict[str, Any]:
        return {"fired": await self.storage.get("fired"), "alarm": await self.get_alarm()}


class Both:
    """Two routers behind one app (by path prefix)."""

    def __init__(self) -> None:
        self.chat = RoomRouter(ChatRoom, prefix="/chat")
        self.alarm = RoomRouter(AlarmRoom, prefix="/alarm")

    def fastws_accept(self, ws: Any, request: Any) -> Any:
        router = self.alarm if request.path.startswith("/alarm") else self.chat
        return router.fastws_accept(ws, request)

    async def fastws_startup(self, server: Any) -> None:
        await self.chat.fastws_startup(server)
        await self.alarm.fastws_startup(server)

    async def fastws_shutdown(self, server: Any) -> None:
        await self.chat.fastws_shutdown(server)
        await self.alarm.fastws_shutdown(server)


app = Both()
