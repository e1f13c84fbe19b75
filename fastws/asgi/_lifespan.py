"""The ASGI ``lifespan`` protocol: startup before the server listens, shutdown after it closed.

An app that raises before it answers ``lifespan.startup`` is taken not to speak the protocol (as
ASGI servers do by default): fastws logs it at debug level and serves on. ``startup.failed``
stops the server from starting (:class:`LifespanFailed`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

__all__ = ["Lifespan", "LifespanFailed"]

logger = logging.getLogger("fastws")


class LifespanFailed(RuntimeError):
    """The ASGI app answered ``lifespan.startup.failed`` (or ``shutdown.failed``)."""


class Lifespan:
    """Drive one app's lifespan scope. ``state`` is the scope's ``state`` dict, copied into
    every request's scope."""

    def __init__(self, app: Any, state: dict[str, Any]) -> None:
        self.app = app
        self.state = state
        self.supported = True
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._answer: asyncio.Future[dict[str, Any]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._error: BaseException | None = None

    async def startup(self) -> None:
        loop = asyncio.get_running_loop()
        self._answer = loop.create_future()
        self._task = loop.create_task(self._main())
        await self._inbox.put({"type": "lifespan.startup"})
        message = await self._answer
        if message["type"] == "lifespan.startup.failed":
            raise LifespanFailed(f"the ASGI app's lifespan startup failed: {message.get('message', '')}".rstrip(": "))

    async def shutdown(self) -> None:
        if not self.supported or self._task is None or self._task.done():
            return
        self._answer = asyncio.get_running_loop().create_future()
        await self._inbox.put({"type": "lifespan.shutdown"})
        message = await self._answer
        if message["type"] == "lifespan.shutdown.failed":
            raise LifespanFailed(f"the ASGI app's lifespan shutdown failed: {message.get('message', '')}".rstrip(": "))

    async def _main(self) -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": self.state}
        try:
            await self.app(scope, self._receive, self._send)
        except BaseException as exc:
            self._error = exc
            answer = self._answer
            if answer is not None and not answer.done():
                if not self._started:
                    # raised before answering startup: the app does not speak lifespan
                    self.supported = False
                    logger.debug("fastws: the ASGI app does not support lifespan (%r)", exc)
                    answer.set_result({"type": "lifespan.startup.complete"})
                else:
                    logger.error("fastws: the ASGI app's lifespan failed", exc_info=exc)
                    answer.set_result({"type": "lifespan.shutdown.failed", "message": repr(exc)})
            elif not isinstance(exc, asyncio.CancelledError):
                logger.error("fastws: the ASGI app's lifespan failed", exc_info=exc)
        else:
            answer = self._answer
            if answer is not None and not answer.done():  # returned without answering: nothing to do
                answer.set_result({"type": "lifespan.shutdown.complete" if self._started else
                                   "lifespan.startup.complete"})
                if not self._started:
                    self.supported = False

    _started = False

    async def _receive(self) -> dict[str, Any]:
        return await self._inbox.get()

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind not in ("lifespan.startup.complete", "lifespan.startup.failed", "lifespan.shutdown.complete",
                        "lifespan.shutdown.failed"):
            raise RuntimeError(f"unexpected ASGI lifespan message {kind!r}")
        if kind.startswith("lifespan.startup"):
            self._started = True
        answer = self._answer
        if answer is not None and not answer.done():
            answer.set_result(message)
