"""Passthrough proxy: every WebSocket upgrade is forwarded to the origin in ``BACKEND_URL``.

    BACKEND_URL=ws://127.0.0.1:9001 fastws serve examples.proxy:app --port 8080

Path and query are kept (``ws://proxy:8080/chat?room=1`` opens ``ws://127.0.0.1:9001/chat?room=1``),
``X-Forwarded-For`` / ``X-Real-IP`` carry the client's address, messages, pings and closes are
relayed both ways. A plain HTTP request gets 400 ``WebSocket endpoint only``; an unreachable
backend gets 502.
"""

import os

from fastws.proxy import Proxy

BACKEND_URL = os.environ.get("BACKEND_URL", "")
if not BACKEND_URL:
    raise SystemExit("examples.proxy: set BACKEND_URL to the backend's WebSocket URL, e.g. ws://127.0.0.1:9001")

app = Proxy(BACKEND_URL)
