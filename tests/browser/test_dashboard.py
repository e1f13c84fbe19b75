"""The dashboard page in headless Chromium: it loads without console errors, connects to its
feed, and its numbers move while the test sends traffic; a screenshot is saved."""

from __future__ import annotations

import asyncio

import pytest

import fastws
from tests.browser.conftest import watch_console


async def echo(ws):
    async for m in ws:
        await ws.send(m)


async def test_dashboard_shows_live_numbers(serve, browser, tmp_path):
    app = fastws.App(connection_rate="1000/s", origins=["https://ok.example"])
    app.websocket("/echo")(echo)
    server = await serve(app, dashboard=True, metrics_token="t0ken")
    server.observability.interval = 0.1
    # bypass_csp: the page forbids eval, which wait_for_function uses
    ctx = await browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
    page = await ctx.new_page()
    errors = watch_console(page)
    host, port = server.address
    await page.goto(f"http://{host}:{port}/dashboard?token=t0ken")
    await page.wait_for_function("document.getElementById('status').textContent === 'connected'", timeout=10_000)
    before = int(await page.text_content("#received"))
    with pytest.raises(fastws.InvalidHandshake):  # a guard hit and a refusal for the page to show
        await fastws.connect(server.url + "/echo", headers={"Origin": "https://evil.example"})
    clients = [await fastws.connect(server.url + "/echo", headers={"Origin": "https://ok.example"})
               for _ in range(3)]
    try:
        for _ in range(15):                    # bounded: 15 rounds of 3 x 20 messages
            for c in clients:
                for i in range(20):
                    await c.send(f"message {i}")
                for _ in range(20):
                    await c.recv()
            await asyncio.sleep(0.05)
        await page.wait_for_function(f"+document.getElementById('received').textContent >= {before + 900}",
                                     timeout=10_000)
        await page.wait_for_function("+document.getElementById('active').textContent >= 4", timeout=10_000)
        assert float(await page.text_content("#msgrate")) >= 0
        await page.wait_for_function("document.getElementById('guards').textContent.includes('origin_rejected')",
                                     timeout=10_000)
        assert "403" in await page.text_content("#refused")
        shot = tmp_path / "dashboard.png"
        await page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
    finally:
        for c in clients:
            await c.close()
    # the page follows connections going away too
    await page.wait_for_function("+document.getElementById('active').textContent === 1", timeout=10_000)
    latency = [float(await page.text_content(f"#{p}")) for p in ("p50", "p90", "p99")]
    assert latency[0] <= latency[1] <= latency[2]
    await ctx.close()
    assert errors == []


async def test_dashboard_without_token_is_refused(serve, browser):
    server = await serve(echo, dashboard=True, metrics_token="t0ken")
    ctx = await browser.new_context()
    page = await ctx.new_page()
    host, port = server.address
    response = await page.goto(f"http://{host}:{port}/dashboard")
    assert response.status == 401
    await ctx.close()
