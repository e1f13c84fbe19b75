"""Test helpers for applications built on fastws.

Start an app on ``127.0.0.1:0`` inside your test, connect real clients to it,
assert, stop::

    from fastws.testing import TestServer

    async def test_echo():
        async with TestServer(app) as server:
            async with server.connect("/") as ws:
                await ws.send("hi")
                assert await ws.recv() == "hi"

For synchronous test suites, :class:`ThreadedTestServer` runs the server on its
own event loop in a background thread and exposes ``url``.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from fastws.client import connect
from fastws.server import Server

__all__ = ["TestServer", "ThreadedTestServer"]


class TestServer:
    """An app served on 127.0.0.1 with a free port, for the life of an ``async with``.

    Args:
        app: anything :func:`fastws.serve` accepts.
        **options: server options (``max_size``, ``compression``, ...).
    """

    __test__ = False  # not a pytest test class

    def __init__(self, app: Any, **options: Any) -> None:
        options.setdefault("shutdown_timeout", 5.0)
        self.server = Server(app, "127.0.0.1", 0, **options)
        self._url = ""
        self._port = 0

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:PORT`` (still valid after stop)."""
        return self._url

    @property
    def port(self) -> int:
        return self._port

    def connect(self, path: str = "/", **options: Any) -> connect[Any]:
        """A :func:`fastws.connect` to ``path`` on this server (await it or ``async with`` it)."""
        if not path.startswith("/"):
            path = "/" + path
        return connect(self.url + path, **options)

    async def start(self) -> TestServer:
        await self.server.start()
        self._url = self.server.url
        self._port = self.server.address[1]
        return self

    async def stop(self) -> None:
        await self.server.shutdown()

    async def __aenter__(self) -> TestServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class ThreadedTestServer:
    """:class:`TestServer` on its own event loop in a daemon thread (for synchronous tests).

    Use as a context manager; ``url`` is valid inside it.
    """

    __test__ = False

    def __init__(self, app: Any, **options: Any) -> None:
        self._app = app
        self._options = options
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: TestServer | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return self._server.url

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            self._server = TestServer(self._app, **self._options)
            loop.run_until_complete(self._server.start())
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(self._server.stop())
        loop.close()

    def __enter__(self) -> ThreadedTestServer:
        self._thread = threading.Thread(target=self._run, name="fastws-test-server", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)
