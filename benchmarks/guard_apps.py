"""Apps for bench_guards.py: the same echo with no guards and with every guard on.

``on`` passes every request through the guards without refusing it: the Origin
allow-list, five firewall rules, trusted proxies, a connection rate and caps
set high enough for the load, and per-connection and per-user message limits.
"""

import fastws


class Auth:
    """A trivial authenticator so the per-user message limit has a user."""

    def authenticate(self, request):
        return {"sub": "bench"}


async def echo(ws):
    async for message in ws:
        await ws.send(message)


class EchoListener(fastws.Listener):
    def on_message(self, ws, msg):
        ws.send(msg)


def make(guarded: bool, listener: bool = False) -> fastws.App:
    opts = {}
    if guarded:
        opts = dict(
            auth=Auth(),
            origins=["https://example.com", "https://app.example.com"],
            firewall={"rules": [
                {"action": "deny", "ip": ["203.0.113.0/24", "2001:db8::/32"]},
                {"action": "deny", "path": "/admin*"},
                {"action": "deny", "header": {"User-Agent": "*BadBot*"}},
                {"action": "deny", "ip": "198.51.100.0/24", "path": "/x*"},
                {"action": "allow", "ip": "127.0.0.0/8"},
            ], "default": "deny"},
            trusted_proxies=["10.0.0.0/8"],
            connection_rate={"count": 10_000_000, "per": 1},
            message_rate={"count": 10_000_000, "per": 1},
            user_message_rate={"count": 10_000_000, "per": 1},
            max_connections=100_000,
            max_connections_per_ip=100_000,
        )
    app = fastws.App(compression=False, **opts)
    app.websocket("/")(EchoListener if listener else echo)
    return app


off = make(False)
on = make(True)
off_listener = make(False, listener=True)
on_listener = make(True, listener=True)

# single guards left out, to see what each costs
on_nocaps = make(True)
on_nocaps.configure(max_connections=None, max_connections_per_ip=None)
on_nomsg = make(True)
on_nomsg.configure(message_rate=None, user_message_rate=None)
on_onlyreq = make(True)
on_onlyreq.configure(max_connections=None, max_connections_per_ip=None, message_rate=None, user_message_rate=None)
on_onlyreq.auth = None
only_firewall = make(False)
only_firewall.configure(firewall=on.guards.settings["firewall"])
only_origin = make(False)
only_origin.configure(origins=on.guards.settings["origins"])
only_rate = make(False)
only_rate.configure(connection_rate=on.guards.settings["connection_rate"])
only_proxies = make(False)
only_proxies.configure(trusted_proxies=on.guards.settings["trusted_proxies"])
