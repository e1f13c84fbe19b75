"""The cluster fixtures themselves: a redis-server that keeps fsynced data across kill -9 and a
restart on the same port, and a ``fastws serve`` subprocess that answers a WebSocket client."""

from __future__ import annotations

import asyncio

import redis
from websockets.asyncio.client import connect


async def test_redis_server_keeps_fsynced_data_across_kill_and_restart(redis_server):
    srv = redis_server()
    assert srv.url == f"redis://127.0.0.1:{srv.port}/0"
    first_pid = srv.pid
    client = redis.Redis.from_url(srv.url)
    try:
        assert client.set("fastws:test:key", "kept")
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
    finally:
        client.close()
    srv.kill()                                   # SIGKILL: no shutdown, only the AOF survives
    assert not srv.alive() and srv.proc.returncode == -9
    srv.start()                                  # same port, same --dir
    assert srv.alive() and srv.pid != first_pid
    client = redis.Redis.from_url(srv.url)
    try:
        assert client.get("fastws:test:key") == b"kept"
    finally:
        client.close()
    srv.stop()
    assert not srv.alive()


async def test_fastws_proc_serves_the_echo_example(fastws_proc):
    node = fastws_proc("examples.echo:app", "--no-metrics")
    assert node.url == f"ws://127.0.0.1:{node.port}" and node.http == f"http://127.0.0.1:{node.port}"
    async with connect(node.url + "/") as ws:
        await ws.send("hello")
        assert await asyncio.wait_for(ws.recv(), 5) == "hello"
        await ws.send(b"\x00\xff")
        assert await asyncio.wait_for(ws.recv(), 5) == b"\x00\xff"
    assert node.alive()
    assert node.stop() == 0
    assert "serving examples.echo:app" in node.stdout_text()
