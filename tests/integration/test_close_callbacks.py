"""Connection.add_close_callback: called once when the TCP connection is gone."""

from __future__ import annotations

import asyncio

import pytest

import fastws


async def test_close_callbacks_run_once_when_the_connection_is_gone(serve):
    calls: list = []
    conns: list = []

    class Keep(fastws.Listener):
        def on_connect(self, ws):
            conns.append(ws)
            ws.add_close_callback(lambda: calls.append("a"))
            ws.add_close_callback(lambda: calls.append("b"))

    server = await serve(Keep)
    client = await fastws.connect(server.url)
    for _ in range(200):
        if conns:
            break
        await asyncio.sleep(0.005)
    assert calls == []
    await client.close()
    await asyncio.wait_for(conns[0].wait_closed(), 5)
    await asyncio.sleep(0)
    assert calls == ["a", "b"]
    conns[0].add_close_callback(lambda: calls.append("late"))  # already gone: at once
    assert calls == ["a", "b", "late"]


@pytest.mark.allow_errors
async def test_a_failing_close_callback_is_logged_and_the_others_run(serve, caplog):
    calls: list = []

    class Keep(fastws.Listener):
        def on_connect(self, ws):
            ws.add_close_callback(lambda: 1 / 0)
            ws.add_close_callback(lambda: calls.append("ran"))

    server = await serve(Keep)
    client = await fastws.connect(server.url)
    await client.close()
    for _ in range(200):
        if calls:
            break
        await asyncio.sleep(0.01)
    assert calls == ["ran"]
    assert any("close callback" in r.getMessage() for r in caplog.records)

