"""Worker-style echo: a handler decides each upgrade, then replies ``Echo: <message>``.

    fastws serve examples.worker_echo:app --port 9002

Any path accepts a WebSocket; a plain HTTP request gets ``426 Expected WebSocket``.
"""

import logging

import fastws

log = logging.getLogger("examples.worker_echo")

app = fastws.App()


async def echo(ws):
    async for message in ws:
        if isinstance(message, str):
            await ws.send(f"Echo: {message}")
        else:
            await ws.send(b"Echo: " + message)


@app.upgrade("/{path:path}")
async def worker(request):
    """Called for every upgrade request: accept it (or return a Response to refuse)."""
    log.debug("upgrade from %s to %s", request.scope["client_ip"], request.path)
    return fastws.Accept(handler=echo)


if __name__ == "__main__":
    fastws.run(app, "127.0.0.1", 9002)
