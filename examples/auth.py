"""Authenticated echo: a JWT (HS256, secret in ``JWT_SECRET``) is required to connect.

    JWT_SECRET=change-me-to-32-bytes-or-more-please fastws serve examples.auth:app --port 8080

Connect with ``ws://127.0.0.1:8080/?token=<jwt>`` or an ``Authorization: Bearer <jwt>`` header.
Every message comes back as ``Authenticated echo: <message>``; the user id (``userId`` or ``sub``)
is logged when a connection opens. No token: 401 ``Unauthorized``; a bad or expired one: 401
``Invalid token``. When the token expires the connection is closed with 1008, unless the client
sent a fresh one first as ``{"type":"auth","token":"<jwt>"}`` (answered ``{"type":"auth","ok":...}``).
"""

import logging
import os

import fastws
from fastws.auth import user_id

log = logging.getLogger("fastws.examples.auth")

JWT_SECRET = os.environ.get("JWT_SECRET", "")
if not JWT_SECRET:
    raise SystemExit("examples.auth: set JWT_SECRET to the HMAC secret the tokens are signed with")

auth = fastws.JWTAuth(JWT_SECRET)
app = fastws.App(auth=auth)


@app.websocket("/{path:path}")
async def echo(ws):
    log.info("user %s connected from %s", user_id(ws.user), ws.remote_address[0])
    async for message in ws:
        if auth.on_message(ws, message):  # a token refresh, answered by auth
            continue
        await ws.send(f"Authenticated echo: {message}")
    log.info("user %s disconnected (%s)", user_id(ws.user), ws.close_code)
