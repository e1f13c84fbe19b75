"""The chat demo page (examples/chat.html) in two browser contexts: a message typed in one
appears in the other, over permessage-deflate negotiated by the browser.

examples/chat.py (rooms, on branch ``rooms``) is not merged yet: the server here is a
stand-in that speaks the chat example's protocol with fastws.App and the engine's broadcast.
Once rooms is merged, serve examples.chat:app (with this page) instead.
"""

from __future__ import annotations

import itertools
import pathlib
import time

import orjson

import fastws
from tests.browser.conftest import watch_console

PAGE = pathlib.Path(__file__).resolve().parents[2] / "examples" / "chat.html"


def chat_app() -> tuple[fastws.App, list]:
    app = fastws.App()
    rooms: dict[str, list] = {}
    opened: list = []
    ids = itertools.count(1)

    @app.route("/")
    def page(request):
        return fastws.Response(200, PAGE.read_bytes(), content_type="text/html; charset=utf-8")

    @app.websocket("/{room}")
    async def chat(ws):
        members = rooms.setdefault(ws.data["room"], [])
        user = f"user{next(ids)}"
        opened.append(ws)
        fastws.broadcast(members, orjson.dumps({"type": "user_joined", "userId": user}).decode())
        members.append(ws)
        try:
            async for message in ws:
                try:
                    content = orjson.loads(message)["content"]
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    await ws.send('{"type":"error","message":"Invalid message format"}')
                    continue
                fastws.broadcast(members, orjson.dumps({"id": str(time.time_ns()), "userId": user,
                                                        "content": content, "timestamp": time.time()}).decode())
        finally:
            members.remove(ws)

    return app, opened


async def test_chat_between_two_browser_contexts(serve, browser, tmp_path):
    app, opened = chat_app()
    server = await serve(app, compression=True)
    host, port = server.address
    url = f"http://{host}:{port}/?room=lobby"
    alice_ctx, bob_ctx = await browser.new_context(bypass_csp=True), await browser.new_context(bypass_csp=True)
    alice, bob = await alice_ctx.new_page(), await bob_ctx.new_page()
    errors_a, errors_b = watch_console(alice), watch_console(bob)
    for page in (alice, bob):
        await page.goto(url)
        await page.wait_for_function("document.getElementById('status').textContent === 'connected'",
                                     timeout=10_000)
    await alice.fill("#message", "hello from alice")
    await alice.press("#message", "Enter")
    await bob.wait_for_function("document.getElementById('messages').textContent.includes('hello from alice')",
                                timeout=10_000)
    await bob.fill("#message", "hi alice")
    await bob.click("#send")
    await alice.wait_for_function("document.getElementById('messages').textContent.includes('hi alice')",
                                  timeout=10_000)
    # the browser offered permessage-deflate and the server accepted it, on both connections
    for page in (alice, bob):
        assert "permessage-deflate" in await page.text_content("#extensions")
    assert len(opened) == 2 and all(ws.compression for ws in opened)
    await bob.screenshot(path=str(tmp_path / "chat.png"))
    await alice_ctx.close()
    await bob_ctx.close()
    assert errors_a == [] and errors_b == []
