"""Rooms for ``benchmarks/cluster_bench.py`` (served by ``fastws serve``, with or without
``--redis``).

- ``app``: :class:`Fan`, every message goes to every socket of the room (the sender included)
  through ``self.broadcast``. ``GET /<room>`` answers ``{"sessions": N}`` (N counts the members on
  every node: in a cluster the request runs on the owner), which the load client polls until all
  its connections have joined before it measures.
- ``app_node``: :class:`FanNode`, the same with `` @<pid>`` of the process that ran
  ``on_message`` appended, so the failover run can tell the new owner's broadcasts from the old
  one's.

Compression and keepalive are off and ``max_buffered`` is 64 MiB (as in ``fanout_room.py``): a
subscriber is never dropped for being slow.
"""

from __future__ import annotations

import os
import resource
from typing import Any

from fastws.rooms import Room, RoomRouter

_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(65536, _hard), _hard))

SERVER_OPTIONS = {"compression": False, "ping_interval": None, "max_size": 16 << 20,
                  "max_write_buffer": 64 << 20, "write_limit": 1 << 20, "backlog": 4096}


class Fan(Room):
    max_buffered = 64 << 20

    def on_message(self, ws: Any, message: str | bytes) -> None:
        self.broadcast(message)

    def on_request(self, request: Any) -> Any:
        return {"sessions": len(self.sockets())}


class FanNode(Fan):
    tag = f" @{os.getpid()}"

    def on_message(self, ws: Any, message: str | bytes) -> None:
        if type(message) is str:
            self.broadcast(message + self.tag)


app = RoomRouter(Fan, server_options=SERVER_OPTIONS)
app_node = RoomRouter(FanNode, server_options=SERVER_OPTIONS)
