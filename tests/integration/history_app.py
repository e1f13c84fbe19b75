"""Rooms with a history, for tests/integration/test_rooms_history.py (also served by a subprocess)."""

from __future__ import annotations

import orjson

from fastws.rooms import Room, RoomRouter


class Chat(Room):
    history = 2000

    def on_connect(self, ws):
        ws.send(orjson.dumps({"type": "welcome", "resumed": ws.resumed}).decode())

    async def on_message(self, ws, message):
        if message.startswith("tag:"):
            self.broadcast(message, tag="x")
        elif message == "bytes":
            self.broadcast(b"raw")
        elif message.startswith("json:"):
            self.broadcast({"n": int(message[5:])})
        else:
            self.broadcast(message)


class Short(Chat):
    history = 5


class Echoless(Chat):
    """Every message goes to everyone but its sender (who gets a skip frame)."""

    def on_message(self, ws, message):
        self.broadcast(message, exclude=ws)


class Plain(Room):
    def on_connect(self, ws):
        ws.send(orjson.dumps({"type": "welcome", "resumed": ws.resumed}).decode())

    def on_message(self, ws, message):
        self.broadcast(message)


app = RoomRouter(Chat)
short_app = RoomRouter(Short)
echoless_app = RoomRouter(Echoless)
