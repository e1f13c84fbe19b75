"""Fan-out through a Room: the /work/shared/fanout room contract implemented with fastws.rooms.

Every connection (any path) joins one room, ``bench``; a message whose first byte is ``P`` goes,
byte for byte and with its opcode, to every socket of the room (the publisher included) through
``Room.broadcast`` (the mailbox, the output gate and the engine's ``broadcast``); compression and
keepalive off; no drops (``max_buffered`` 64 MiB).

    fastws serve benchmarks.fanout_room:app --host 127.0.0.1 --port 9100
    python ../shared/fanout/run_fanout.py --only socketify,websockets \\
        --server 'fastws-room=fastws serve benchmarks.fanout_room:app --host 127.0.0.1 --port {port}'
"""

from __future__ import annotations

import resource
import tempfile
from typing import Any

from fastws.rooms import Room, RoomRouter

_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(65536, _hard), _hard))


class FanoutRoom(Room):
    max_buffered = 64 << 20

    def on_message(self, ws: Any, message: str | bytes) -> None:
        if message[:1] in ("P", b"P"):
            self.broadcast(message)


app = RoomRouter(FanoutRoom, data_dir=tempfile.mkdtemp(prefix="fastws-fanout-"), room_name=lambda request: "bench")
app.server_options = {"compression": False, "ping_interval": None, "max_size": 16 << 20,
                      "max_write_buffer": 64 << 20, "write_limit": 1 << 20, "backlog": 4096}
