"""The chat page (examples/chat.html on examples.chat:resumable) loses its connection while
another client keeps sending, comes back, and shows every message exactly once, in order: once
through a server restarted (kill -9) on the same port with the same data dir, once through a
socket cut by a loopback proxy. The page reaches the server through that proxy, which can also
hold new connections, so that messages are certainly sent while the page is away.

The truth is the room's own log, read at the end with ``?since=<epoch>:0`` by a websockets client;
the sender is a websockets client too (with its own reconnect)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import websockets

from examples.chat import ResumableChatRoom
from fastws.rooms import RoomRouter
from tests.browser.conftest import watch_console

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
T = 15.0


class HoldingProxy:
    """127.0.0.1:port -> target: ``cut()`` drops the links open now; while ``held``, new links
    wait (accepted, nothing forwarded) until ``release()``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.links: set[asyncio.StreamWriter] = set()
        self.released = asyncio.Event()
        self.released.set()
        self.waiting = 0
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    def hold(self) -> None:
        self.released.clear()

    def release(self) -> None:
        self.released.set()

    def cut(self) -> None:
        for w in list(self.links):
            w.transport.abort()

    async def _link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.links.add(writer)
        up_w = None
        try:
            if not self.released.is_set():
                self.waiting += 1
                try:
                    await asyncio.wait_for(self.released.wait(), 60)
                finally:
                    self.waiting -= 1
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
            self.links.add(up_w)

            async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                try:
                    while data := await r.read(65536):
                        w.write(data)
                        await w.drain()
                except (OSError, asyncio.IncompleteReadError):
                    pass
                finally:
                    w.transport.abort()

            await asyncio.gather(pump(reader, up_w), pump(up_r, writer))
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            self.links.discard(writer)
            writer.transport.abort()
            if up_w is not None:
                self.links.discard(up_w)
                up_w.transport.abort()

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


class Sender:
    """Sends {"content": "m<i>"} one at a time, each after the previous one's echo, reconnecting
    when the link fails; ``sent`` holds the contents whose echo came back."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.sent: list[str] = []
        self.stop = False
        self.n = 0
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        deadline = time.monotonic() + 120
        for _ in range(10_000):
            if self.stop or time.monotonic() > deadline:
                return
            try:
                async with websockets.connect(self.url, open_timeout=5) as ws:
                    while not self.stop and time.monotonic() < deadline:
                        self.n += 1
                        content = f"m{self.n}"
                        await ws.send(json.dumps({"content": content}))
                        for _ in range(200):  # its echo, past the joins and the recent messages
                            m = json.loads(await asyncio.wait_for(ws.recv(), 5))
                            if "offset" in m and m["data"].get("content") == content:
                                break
                        self.sent.append(content)
                        await asyncio.sleep(0.01)
            except (OSError, websockets.ConnectionClosed, websockets.InvalidHandshake, asyncio.TimeoutError):
                await asyncio.sleep(0.05)

    def start(self) -> None:
        self.task = asyncio.ensure_future(self.run())

    async def until_sent(self, count: int) -> None:
        goal = len(self.sent) + count
        for _ in range(int(T * 100)):
            if len(self.sent) >= goal:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"the sender sent {len(self.sent)} of {goal}")

    async def finish(self) -> None:
        self.stop = True
        if self.task is not None:
            await asyncio.wait_for(self.task, T)


async def logged_contents(ws_url: str, epoch: str) -> list[str]:
    """Every chat message in the room's log, in order (a catch-up from offset 0)."""
    async with websockets.connect(f"{ws_url}?since={epoch}:0") as ws:
        frame = json.loads(await asyncio.wait_for(ws.recv(), T))
    assert frame["type"] == "history" and frame["since"] == 0, frame
    offsets = [m["offset"] for m in frame["messages"]]
    assert offsets == list(range(1, frame["offset"] + 1))  # the whole log, nothing trimmed
    return [m["data"]["content"] for m in frame["messages"] if "content" in m["data"]]


async def page_contents(page) -> list[str]:
    return await page.eval_on_selector_all("#messages li.msg", "els => els.map(e => e.dataset.content)")


async def wait_page(page, expr: str) -> None:
    await page.wait_for_function(expr, timeout=T * 1000)


async def open_chat(browser, url):
    ctx = await browser.new_context(bypass_csp=True)
    page = await ctx.new_page()
    errors = watch_console(page)
    await page.goto(url)
    await wait_page(page, "document.getElementById('status').textContent === 'connected'")
    await page.evaluate("""() => { window.seen = { resume: [], reset: [] };
        fastwsClient.addEventListener("resume", (e) => seen.resume.push(e.count));
        fastwsClient.addEventListener("reset", (e) => seen.reset.push(e.reason)); }""")
    return ctx, page, errors


async def check_page(page, ws_url: str, sender: Sender) -> list[str]:
    last = sender.sent[-1]
    await wait_page(page, f"Array.from(document.querySelectorAll('#messages li.msg')).some(e => e.dataset.content === {json.dumps(last)})")
    epoch = (await page.evaluate("window.fastwsClient.since")).split(":")[0]
    logged = await logged_contents(ws_url, epoch)
    shown = await page_contents(page)
    assert shown == logged  # every message exactly once, in the log's order
    assert len(set(shown)) == len(shown)
    assert set(sender.sent) <= set(shown)
    return shown


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def start_chat_server(port: int, data_dir: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "fastws", "serve", "examples.chat:resumable", "--host", "127.0.0.1",
                             "--port", str(port), "--data-dir", data_dir], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(400):
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise AssertionError("the chat server exited at start") from None
            await asyncio.sleep(0.05)
    proc.kill()
    raise AssertionError("the chat server did not start")


async def test_page_resumes_across_a_server_restart(browser, tmp_path):
    port = free_port()
    data = str(tmp_path / "data")
    server = await start_chat_server(port, data)
    proxy = HoldingProxy(port)
    sender = Sender(f"ws://127.0.0.1:{port}/lobby")
    ctx = None
    try:
        page_port = await proxy.start()
        ctx, page, errors = await open_chat(browser, f"http://127.0.0.1:{page_port}/lobby")
        sender.start()
        await sender.until_sent(5)
        proxy.hold()          # the page's reconnects wait at the proxy until released
        server.send_signal(signal.SIGKILL)
        server.wait(T)
        server = await start_chat_server(port, data)  # same port, same data dir
        await sender.until_sent(10)  # sent while the page is away
        held = list(sender.sent)
        await wait_page(page, "document.getElementById('status').textContent !== 'connected'")
        proxy.release()
        await wait_page(page, "document.getElementById('status').textContent === 'connected'")
        await sender.until_sent(10)  # and while it catches up
        await sender.finish()
        shown = await check_page(page, f"ws://127.0.0.1:{port}/lobby", sender)
        assert held[-1] in shown
        seen = await page.evaluate("window.seen")
        assert seen["reset"] == [] and len(seen["resume"]) == 1 and seen["resume"][0] >= 10, seen
        assert errors == [] or all("WebSocket" in e for e in errors), errors
    finally:
        sender.stop = True
        if ctx is not None:
            await ctx.close()
        await proxy.close()
        server.kill()
        server.wait(T)


async def test_page_resumes_after_its_socket_is_cut(serve, browser, tmp_path):
    server = await serve(RoomRouter(ResumableChatRoom, data_dir=str(tmp_path / "data")))
    host, port = server.address
    proxy = HoldingProxy(port)
    sender = Sender(f"ws://{host}:{port}/lobby")
    ctx = None
    try:
        page_port = await proxy.start()
        ctx, page, errors = await open_chat(browser, f"http://127.0.0.1:{page_port}/lobby")
        sender.start()
        await sender.until_sent(5)
        for _ in range(2):  # twice: the second resume starts from where the first one ended
            proxy.hold()
            proxy.cut()
            await wait_page(page, "document.getElementById('status').textContent !== 'connected'")
            await sender.until_sent(10)
            proxy.release()
            await wait_page(page, "document.getElementById('status').textContent === 'connected'")
            await sender.until_sent(5)
        await sender.finish()
        await check_page(page, f"ws://{host}:{port}/lobby", sender)
        seen = await page.evaluate("window.seen")
        assert seen["reset"] == [] and len(seen["resume"]) == 2 and min(seen["resume"]) >= 10, seen
        assert errors == [] or all("WebSocket" in e for e in errors), errors
    finally:
        sender.stop = True
        if ctx is not None:
            await ctx.close()
        await proxy.close()
