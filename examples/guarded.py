"""Echo behind the edge guards: an Origin allow-list and 10 new connections per minute per IP.

    fastws serve examples.guarded:app --port 9003

An upgrade from another Origin (or none) gets ``403 Forbidden``; the 11th
connection from one IP within a minute gets ``429 Too Many Requests`` with
``Retry-After``. More guards can be added from the command line or a config
file (``--max-connections``, ``--message-rate``, ``--config guards.toml``).
"""

import fastws

app = fastws.App(
    origins=["https://example.com", "https://app.example.com"],
    connection_rate="10/60s",
)


@app.websocket("/")
async def echo(ws):
    async for message in ws:
        await ws.send(message)


if __name__ == "__main__":
    fastws.run(app, "127.0.0.1", 9003)
