"""The server of the JavaScript client's tests (tests/js/client.test.mjs), run as
``fastws serve tests.js.app:app`` by tests/js/test_js_client.py and by the node tests themselves
(to restart it). Rooms keep their files under ``$FASTWS_DATA_DIR``.

- ``/log/<name>``: a room with ``history = 2000`` and ``set_auto_response("ping", "pong")``; a
  TEXT message is broadcast to the whole room; the commands: ``kick`` (broadcast, then close every
  other socket with 1012), ``skip:<text>`` (broadcast to everyone but the sender, who gets a
  ``skip`` frame with its offset), ``gap`` (the sender gets an envelope two offsets past
  the last, as a dropped message would leave it) and ``burst:<n>`` (broadcast it, then ``b1`` .. ``b<n>``, in one event).
- ``/batched/<name>``: the same with ``batch = True`` (``{"type": "batch"}`` frames).
- ``/short/<name>``: the same with ``history = 5``.
- ``/plain/<name>``: a room without history.
- ``GET /token?sub=u&ttl=s``: an HS256 JWT for ``sub`` that expires in ``ttl`` seconds.
- ``/auth``: a WebSocket behind :class:`fastws.JWTAuth` (``?token=``) answering refreshes and
  echoing everything else as ``{"echo": text, "sub": <the token's sub>}``.
"""

from __future__ import annotations

import time
from typing import Any

import jwt
import orjson

import fastws
from fastws.rooms import Room, RoomRouter

SECRET = "the-js-client-tests-secret-of-32-bytes+"
auth = fastws.JWTAuth(SECRET)


class Log(Room):
    history = 2000

    def __init__(self) -> None:
        self.set_auto_response("ping", "pong")

    def on_message(self, ws: Any, message: Any) -> None:
        if not isinstance(message, str):
            return
        if message == "kick":
            self.broadcast(message)
            for s in self.sockets():
                if s is not ws:
                    s.close(1012, "kicked")
        elif message.startswith("skip:"):
            self.broadcast(message[5:], exclude=ws)
        elif message == "gap":
            # what a dropped message looks like to the sender (slow_consumer = "drop"): an
            # envelope one offset past the next (a forged one: the log never holds it)
            h = self._slot.history
            ws.send(orjson.dumps({"epoch": h.epoch, "offset": h.last + 2,
                                  "data": "never"}).decode())
        elif message.startswith("burst:"):
            self.broadcast(message)
            for i in range(1, int(message[6:]) + 1):
                self.broadcast(f"b{i}")
        else:
            self.broadcast(message)


class Batched(Log):
    batch = True


class Short(Log):
    history = 5


class Plain(Room):
    def on_message(self, ws: Any, message: Any) -> None:
        self.broadcast(message)


app = fastws.App()
app.mount("/log", RoomRouter(Log, new_rooms_per_ip=None))
app.mount("/batched", RoomRouter(Batched, new_rooms_per_ip=None))
app.mount("/short", RoomRouter(Short, new_rooms_per_ip=None))
app.mount("/plain", RoomRouter(Plain, new_rooms_per_ip=None))


@app.route("/token")
def token(request: Any) -> str:
    ttl = float(request.query_param("ttl") or 60)
    return jwt.encode({"sub": request.query_param("sub") or "u", "exp": int(time.time() + ttl)}, SECRET,
                      algorithm="HS256")


@app.websocket("/auth", auth=auth)
async def authed(ws: Any) -> None:
    async for message in ws:
        if auth.on_message(ws, message):
            continue
        await ws.send(orjson.dumps({"echo": message, "sub": ws.user.get("sub")}).decode())
