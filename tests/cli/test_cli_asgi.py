"""``fastws serve module:asgi_app``: a FastAPI app detected and served, with guard flags."""

from __future__ import annotations

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.cli.test_cli import Server, one_error_line, run


def test_serve_detects_a_fastapi_app_and_applies_guard_flags():
    server = Server("tests.integration.asgi_apps:api", "--origin", "https://good.example")
    try:
        base = server.url.replace("ws://", "http://")
        r = httpx.get(base + "/json", timeout=5)
        assert r.json() == {"message": "hello", "items": [1, 2, 3]}
        assert httpx.get(base + "/state", timeout=5).json() == {"greeting": "hello from lifespan"}
        with connect(server.url + "/ws/echo", origin="https://good.example", open_timeout=5) as ws:
            ws.send("hello")
            assert ws.recv(timeout=5) == "hello"
        with pytest.raises(InvalidStatus) as info:
            connect(server.url + "/ws/echo", origin="https://evil.example", open_timeout=5)
        assert info.value.response.status_code == 403
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.stderr()


def test_serve_interface_asgi_errors():
    p = run("serve", "tests.integration.asgi_apps:failing_startup", "--port", "0")
    assert p.returncode != 0
    assert "lifespan startup failed: no database" in one_error_line(p)
    p = run("serve", "tests.integration.asgi_apps:not_an_app", "--interface", "asgi", "--port", "0")
    assert p.returncode != 0
    assert "not an ASGI application" in one_error_line(p)
    p = run("serve", "tests.integration.asgi_apps:api", "--transport", "socket", "--port", "0")
    assert p.returncode != 0
    assert "loop's transports" in one_error_line(p)
