"""The Autobahn suite's echo endpoint as a Starlette app (served by ``fastws serve``): the
Starlette echo of the ASGI tests (tests/integration/asgi_apps.py) on every path."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import WebSocketRoute

from tests.integration.asgi_apps import starlette_echo

app = Starlette(routes=[WebSocketRoute("/{path:path}", starlette_echo)])
