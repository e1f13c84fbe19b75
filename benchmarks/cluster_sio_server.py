"""The peer of the cluster fan-out: python-socketio (``AsyncServer`` on aiohttp, on uvloop) with
``AsyncRedisManager``, one process per node, every node naming the same Redis.

Every client joins room ``bench`` on connect; an event ``p`` with data ``d`` is emitted as ``m``
with ``d`` to the whole room (``sio.emit("m", d, room="bench")``: the manager sends it to its own
clients, then publishes it to Redis, and every other node's listener sends it to theirs).
Events are handled in order (``async_handlers=False``; with python-socketio's default, ``True``,
each event's handler is its own task and the other node received the publisher's messages out of
order in this benchmark: the two emits race to Redis). Pings are pushed past the run (``ping_interval`` 600 s) so that every frame a member gets is a
broadcast; compression is not negotiated by the load client.

    python benchmarks/cluster_sio_server.py --port 0 --redis redis://127.0.0.1:6379/0

Prints ``serving on ws://127.0.0.1:PORT (pid N)`` once it listens. Needs ``python-socketio`` and
``aiohttp`` (installed for the benchmark only; not dependencies of fastws).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal

import socketio
import uvloop
from aiohttp import web


async def main(port: int, redis_url: str, async_handlers: bool) -> None:
    mgr = socketio.AsyncRedisManager(redis_url)
    sio = socketio.AsyncServer(async_mode="aiohttp", client_manager=mgr, ping_interval=600, ping_timeout=600,
                               logger=False, engineio_logger=False, cors_allowed_origins="*",
                               async_handlers=async_handlers)

    @sio.event
    async def connect(sid, environ, auth=None):  # noqa: ANN001, ANN202
        await sio.enter_room(sid, "bench")

    @sio.on("p")
    async def publish(sid, data):  # noqa: ANN001, ANN202
        await sio.emit("m", data, room="bench")

    app = web.Application()
    sio.attach(app)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096)
    await site.start()
    real = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"serving on ws://127.0.0.1:{real} (pid {os.getpid()})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--redis", required=True)
    p.add_argument("--async-handlers", action="store_true",
                   help="python-socketio's default: each event handler in its own task (the room then "
                        "gets the publisher's messages out of order on the other node)")
    a = p.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(65536, hard), hard))
    uvloop.run(main(a.port, a.redis, a.async_handlers))
