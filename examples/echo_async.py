"""Echo server on the high-level API: ``async for`` and ``await ws.send``.

    fastws serve examples.echo_async:app --port 9001
"""

import sys

import fastws


async def app(ws):
    async for message in ws:
        await ws.send(message)


app.server_options = {"max_size": 64 << 20}

if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9001
    fastws.run(app, "127.0.0.1", port, **app.server_options)
