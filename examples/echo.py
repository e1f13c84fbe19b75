"""Echo server: every message comes back unchanged, with its own opcode.

    fastws serve examples.echo:app --host 127.0.0.1 --port 9001
    python examples/echo.py [PORT]

Uses the low-level listener API (no task or coroutine per message). Limits are
raised for the Autobahn TestSuite: messages up to 64 MiB and any number of
fragments.
"""

import sys

import fastws


class Echo(fastws.Listener):
    __slots__ = ()

    def on_message(self, ws, msg):
        ws.send(msg)  # same opcode, zero-copy in; no need to await in a listener


app = Echo
app.server_options = {"max_size": 64 << 20}

if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9001
    fastws.run(app, "127.0.0.1", port, **app.server_options)
