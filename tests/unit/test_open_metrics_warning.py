"""/metrics, /analytics and /dashboard stay open by default; a server on an address other hosts
can reach, without a token, logs one warning (checked without binding anything but loopback)."""

from __future__ import annotations

import logging

import pytest

import fastws
from fastws.server import _is_loopback


@pytest.mark.parametrize("host,loop", [("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("[::1]", True),
                                       ("localhost", True), ("0.0.0.0", False), ("::", False), ("", False),
                                       (None, False), ("10.0.0.1", False), ("example.com", False)])
def test_loopback(host, loop):
    assert _is_loopback(host) is loop


async def _echo(ws):
    return None


@pytest.mark.parametrize("host,kw,warned", [
    ("0.0.0.0", {}, True),
    ("::", {"dashboard": True}, True),
    ("0.0.0.0", {"metrics_port": 9100}, True),
    ("0.0.0.0", {"metrics_token": "s3cret"}, False),
    ("0.0.0.0", {"metrics": False}, False),
    ("127.0.0.1", {}, False),
    ("::1", {"dashboard": True}, False),
])
def test_open_metrics_warning(caplog, host, kw, warned):
    server = fastws.Server(_echo, host, 0, **kw)
    with caplog.at_level(logging.WARNING, logger="fastws"):
        server._warn_open_metrics()
    lines = [r.getMessage() for r in caplog.records if "open to anyone" in r.getMessage()]
    assert bool(lines) is warned
    if warned:
        assert "/metrics" in lines[0] and "--metrics-token" in lines[0] and len(lines) == 1
        if kw.get("dashboard"):
            assert "/dashboard" in lines[0]
