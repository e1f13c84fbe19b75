"""Shared fixtures: a real fastws server on 127.0.0.1:0, loop parametrisation
(asyncio and uvloop), one timeout unit, and a check that no test leaves an
exception in the event loop's handler or a traceback in the fastws log."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest

import fastws

# One timeout unit, scaled on slow machines: FASTWS_TESTS_TIMEOUT_FACTOR=3 pytest ...
MS = 0.001 * float(os.environ.get("FASTWS_TESTS_TIMEOUT_FACTOR", "1"))


def pytest_asyncio_loop_factories(config, item):
    """Run every async test once on asyncio's loop and once on uvloop
    (conformance and browser tests drive other processes: the asyncio loop is enough there)."""
    import uvloop

    if "conformance" in str(item.path) or "browser" in str(item.path) or "faults" in item.path.name:
        return {"asyncio": asyncio.new_event_loop}
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture(autouse=True)
def _restore_root_logging():
    """A test that runs ``fastws.cli.main`` in-process reconfigures the root logger: undo it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(autouse=True)
def _fail_on_loop_exceptions(request):
    """Fail a test that triggers the loop's exception handler (uvloop's tearDown rule)
    or that makes fastws log an ERROR with a traceback for a client's fault."""
    errors: list[dict] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.exc_info and record.levelno >= logging.ERROR and not getattr(request.node, "_allow_errors", False):
                errors.append({"message": record.getMessage(), "exception": record.exc_info[1]})

    handler = Catch()
    logging.getLogger("fastws").addHandler(handler)
    logging.getLogger("asyncio").addHandler(handler)
    yield errors
    logging.getLogger("fastws").removeHandler(handler)
    logging.getLogger("asyncio").removeHandler(handler)
    if errors and not request.node.get_closest_marker("allow_errors"):
        pytest.fail(f"unexpected errors logged: {errors!r}")


@pytest.fixture
async def serve():
    """Start fastws servers on 127.0.0.1:0: ``server = await serve(app, **options)``.

    Every server started is shut down at the end of the test.
    """
    servers: list[fastws.Server] = []

    async def start(app, **kwargs) -> fastws.Server:
        kwargs.setdefault("compression", False)
        server = fastws.serve(app, "127.0.0.1", 0, **kwargs)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.shutdown(timeout=2)


async def echo_handler(ws):
    async for message in ws:
        await ws.send(message)


class EchoListener(fastws.Listener):
    def on_message(self, ws, msg):
        ws.send(msg)
