"""The chat example's demo page (examples/chat.py serves examples/chat.html to browsers) in two
browser contexts: a message typed in one appears in the other, over permessage-deflate negotiated
by the browser, through the real durable room (its storage in a temporary directory)."""

from __future__ import annotations

from examples.chat import ChatRoom
from fastws.rooms import RoomRouter
from tests.browser.conftest import watch_console


async def test_chat_between_two_browser_contexts(serve, browser, tmp_path):
    server = await serve(RoomRouter(ChatRoom, data_dir=str(tmp_path / "data")), compression=True)
    host, port = server.address
    url = f"http://{host}:{port}/lobby"
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
    opened = [c for c in server.connections if c.state == "OPEN"]
    assert len(opened) == 2 and all(c.compression is not None for c in opened)
    await bob.screenshot(path=str(tmp_path / "chat.png"))
    await alice_ctx.close()
    await bob_ctx.close()
    assert errors_a == [] and errors_b == []
