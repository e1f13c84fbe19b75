"""Fan-out room on the bare engine: a Listener per connection and ``fastws.broadcast``.

Implements the room contract of the shared fan-out harness: every connection
joins one room; a message whose first byte is ``P`` goes, byte for byte and with
its opcode, to every connection (publisher included); compression and keepalive off.

    python benchmarks/fanout_engine.py --port 9100
"""

import argparse
import resource

import fastws

ROOM: list = []
PUBLISH = 0x50


class Member(fastws.Listener):
    __slots__ = ()

    def on_connect(self, ws):
        ROOM.append(ws)

    def on_message(self, ws, msg):
        view = memoryview(msg)
        if len(view) and view[0] == PUBLISH:
            fastws.broadcast(ROOM, msg.data())

    def on_close(self, ws, code, reason):
        try:
            ROOM.remove(ws)
        except ValueError:
            pass


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(65536, hard), hard))
    print(f"fastws fan-out listening on {a.host}:{a.port}", flush=True)
    fastws.run(Member, a.host, a.port, compression=False, ping_interval=None, max_size=16 << 20,
               max_write_buffer=64 << 20, write_limit=1 << 20)


if __name__ == "__main__":
    main()
