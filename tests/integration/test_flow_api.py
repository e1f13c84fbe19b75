"""Flow-control and listener hooks for code that relays messages (proxies):
client-side listeners, ws.pause_reading()/resume_reading(), on_pause_writing/on_drain,
and a close() that completes while the peer floods a connection nobody reads."""

from __future__ import annotations

import asyncio
import time

import fastws


async def echo(ws):
    async for m in ws:
        await ws.send(m)


async def test_client_connection_with_a_listener(serve):
    server = await serve(echo)
    got: list = []
    opened = asyncio.Event()
    done = asyncio.Event()

    class Client(fastws.Listener):
        def on_connect(self, ws):
            opened.set()
            ws.send("one")
            ws.send(b"two")

        def on_message(self, ws, msg):
            got.append(msg.data())
            if len(got) == 2:
                done.set()

        def on_close(self, ws, code, reason):
            got.append(("closed", code))

    ws = await fastws.connect(server.url, listener=Client())
    await asyncio.wait_for(opened.wait(), 5)
    await asyncio.wait_for(done.wait(), 5)
    assert got == ["one", b"two"]
    await ws.close()
    assert got[-1] == ("closed", 1000)


async def test_pause_reading_holds_messages_until_resumed(serve):
    seen: list = []

    class Slow(fastws.Listener):
        def on_connect(self, ws):
            ws.pause_reading()
            asyncio.get_running_loop().call_later(0.3, ws.resume_reading)
            self.t0 = time.monotonic()

        def on_message(self, ws, msg):
            seen.append(time.monotonic() - self.t0)
            ws.send(msg)

    server = await serve(Slow)
    async with fastws.connect(server.url) as c:
        await c.send("hi")
        assert await c.recv() == "hi"
    assert seen and seen[0] >= 0.25  # not read while paused


async def test_on_pause_writing_then_on_drain(serve):
    events: list = []
    big = b"x" * (1 << 20)

    class Pusher(fastws.Listener):
        def on_connect(self, ws):
            for _ in range(12):  # 12 MiB (under max_write_buffer) to a client that reads one at a time
                ws.send(big)

        def on_pause_writing(self, ws):
            events.append(("paused", ws.writing_paused))

        def on_drain(self, ws):
            events.append(("drained", ws.writing_paused))

    server = await serve(Pusher, write_limit=65536)
    async with fastws.connect(server.url, max_size=1 << 20, max_queue=1) as c:
        for _ in range(200):
            if events:
                break
            await asyncio.sleep(0.01)
        assert events and events[0] == ("paused", True)
        for _ in range(12):
            assert await c.recv() == big
        for _ in range(100):
            if len(events) >= 2:
                break
            await asyncio.sleep(0.01)
    assert ("drained", False) in events


async def test_close_completes_while_the_peer_floods_an_unread_connection(serve):
    class Flood(fastws.Listener):
        def on_connect(self, ws):
            self.ws = ws
            self.task = asyncio.ensure_future(self.flood())

        async def flood(self):
            try:
                for _ in range(2000):
                    if not self.ws.open:
                        return
                    await self.ws.send("z" * 1000)
            except fastws.ConnectionClosed:
                pass

    server = await serve(Flood)
    c = await fastws.connect(server.url, max_queue=1)
    await asyncio.sleep(0.2)  # the queue is full: reading is paused
    t0 = time.monotonic()
    await c.close()
    assert c.close_code == 1000
    assert time.monotonic() - t0 < 5  # well before close_timeout (10 s)
