"""JWT authentication for WebSocket upgrades (PyJWT), with token expiry on live connections.

:class:`JWTAuth` verifies a bearer token taken from the upgrade request
(``Authorization: Bearer <jwt>`` or ``?token=<jwt>``) and returns its claims;
an App puts them on ``ws.user``. A connection whose token expires is closed
with 1008 ``Token expired``, unless the client refreshed it on the open
connection with a TEXT message::

    {"type":"auth","token":"<fresh jwt>"}

answered with ``{"type":"auth","ok":true,"exp":<new exp or null>}`` or
``{"type":"auth","ok":false,"error":"Invalid token"}`` (the connection stays
open on a failed refresh, until the current token expires). A fresh token
must name the same user (``userId`` / ``sub``) as the one it replaces.

Expiry needs no timer per connection: each event loop has one watch, a heap
of expiry times with one timer set for the earliest.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from fastws.exceptions import FastWSError, HandshakeError
from fastws.handshake import Request
from fastws.metrics import recorder

__all__ = ["JWTAuth", "InvalidToken", "REFRESH_PREFIX", "user_id"]

logger = logging.getLogger("fastws.auth")

#: A TEXT message starting with these bytes is a token refresh (see the module docstring).
REFRESH_PREFIX = '{"type":"auth"'
_REFRESH_PREFIX_B = REFRESH_PREFIX.encode()

_HMAC = ("HS256", "HS384", "HS512")
_ASYMMETRIC = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES256K", "ES384", "ES512",
               "EdDSA", "Ed25519", "Ed448")

_UNAUTHORIZED = [("WWW-Authenticate", "Bearer")]
_INVALID = [("WWW-Authenticate", 'Bearer error="invalid_token"')]


class InvalidToken(FastWSError):
    """A token failed verification (raised by :meth:`fastws.JWTAuth.verify` and :meth:`fastws.JWTAuth.refresh`).

    Attributes:
        reason: why, for logs (``"Signature has expired"``, ...); peers only see ``Invalid token``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def user_id(claims: Mapping[str, Any] | None) -> Any:
    """The user a token names: its ``userId`` claim, else ``sub``, else None."""
    if not claims:
        return None
    uid = claims.get("userId")
    return uid if uid is not None else claims.get("sub")


def _engine_connection(ws: Any) -> Any:
    """The engine's Connection behind a wrapper that has ``.connection``, else ``ws`` itself."""
    inner = getattr(ws, "connection", None)
    return inner if inner is not None else ws


def _jwt() -> Any:
    try:
        import jwt
    except ImportError:  # pragma: no cover - pyjwt is a dependency
        raise ImportError("fastws.auth requires PyJWT (pip install pyjwt)") from None
    return jwt


class JWTAuth:
    """Verify JWTs on WebSocket upgrades and close connections whose token expired.

    Args:
        secret: the HMAC key, for HS256/HS384/HS512.
        public_key: a PEM public key (or a key object from ``cryptography``), for
            RS*/PS*/ES*/EdDSA; needs the ``cryptography`` package.
        algorithms: the allow-list; a token whose header names another algorithm,
            or ``none``, is refused. HMAC algorithms are only checked against
            ``secret`` and the others only against ``public_key``, so a public key
            can never be used as an HMAC secret.
        audience: the expected ``aud`` (a string or several). A token that carries
            an ``aud`` claim is refused when no audience is configured.
        issuer: the expected ``iss`` (a string or several).
        leeway: seconds of clock skew allowed for ``exp``, ``nbf`` and ``iat`` (a live
            connection is closed ``leeway`` seconds after its ``exp``).
        require: claims that must be present (e.g. ``("exp", "sub")``).
        query_param: the query parameter that may carry the token (None: header only).
        max_token_size: longer tokens are refused without being parsed.
        close_on_expiry: close live connections with 1008 when their token expires.
        refresh: accept ``{"type":"auth","token":...}`` messages on open connections
            (through :meth:`on_message`).

    Raises:
        ValueError: an empty allow-list, ``none`` in it, or a missing key for one of its algorithms.
    """

    def __init__(self, secret: str | bytes | None = None, *, public_key: Any = None,
                 algorithms: Sequence[str] = ("HS256",), audience: str | Sequence[str] | None = None,
                 issuer: str | Sequence[str] | None = None, leeway: float = 0, require: Sequence[str] = (),
                 query_param: str | None = "token", max_token_size: int = 8192, close_on_expiry: bool = True,
                 refresh: bool = True) -> None:
        jwt = _jwt()
        algs = list(algorithms)
        if isinstance(algorithms, str):
            algs = [algorithms]
        if not algs:
            raise ValueError("algorithms must list at least one algorithm")
        self._keys: dict[str, Any] = {}
        supported = jwt.algorithms.get_default_algorithms()
        for alg in algs:
            if alg.lower() == "none":
                raise ValueError("'none' cannot be an allowed JWT algorithm")
            if alg in _HMAC:
                if not secret:
                    raise ValueError(f"{alg} needs secret=")
                self._keys[alg] = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
            elif alg in _ASYMMETRIC:
                if public_key is None:
                    raise ValueError(f"{alg} needs public_key= (a PEM public key)")
                if alg not in supported:
                    raise ValueError(f"{alg} needs the cryptography package (pip install 'pyjwt[crypto]')")
                # parse the PEM once, not on every handshake
                self._keys[alg] = supported[alg].prepare_key(public_key)
            else:
                raise ValueError(f"unknown JWT algorithm {alg!r}")
        self.algorithms = tuple(algs)
        self.audience = audience if audience is None or isinstance(audience, str) else list(audience)
        self.issuer = issuer if issuer is None or isinstance(issuer, str) else list(issuer)
        self.leeway = float(leeway)
        self.require = list(require)
        self.query_param = query_param
        self.max_token_size = max_token_size
        self.close_on_expiry = close_on_expiry
        self.refresh_enabled = refresh
        self._decode = jwt.decode
        self._get_header = jwt.get_unverified_header
        self._errors = (jwt.PyJWTError, ValueError, TypeError, KeyError, ArithmeticError)
        self._watches: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _ExpiryWatch] = \
            weakref.WeakKeyDictionary()

    # ------------------------------------------------------------ verification

    def token_from(self, request: Request) -> str | None:
        """The token a request carries (``Authorization: Bearer`` first, then the query), or None."""
        header = request.headers.get("authorization")
        if header:
            scheme, _, value = header.strip().partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                return value.strip()
        if self.query_param and request.query_string:
            query_token = request.query_param(self.query_param)
            if query_token:
                return query_token
        return None

    def verify(self, token: str) -> dict[str, Any]:
        """Verify ``token`` and return its claims.

        Raises:
            InvalidToken: bad signature or format, expired, not yet valid, wrong
                audience or issuer, or an algorithm outside the allow-list.
        """
        if len(token) > self.max_token_size:
            raise InvalidToken("token too long")
        try:
            alg = self._get_header(token).get("alg")
            key = self._keys.get(alg) if isinstance(alg, str) else None
            if key is None:
                raise InvalidToken(f"algorithm {alg!r} is not allowed")
            claims = self._decode(token, key, algorithms=[alg], audience=self.audience, issuer=self.issuer,
                                  leeway=self.leeway, options={"require": self.require})
        except InvalidToken:
            raise
        except self._errors as exc:
            raise InvalidToken(str(exc) or type(exc).__name__) from None
        if not isinstance(claims, dict):  # pragma: no cover - pyjwt returns a dict
            raise InvalidToken("claims are not an object")
        return claims

    def authenticate(self, request: Request) -> dict[str, Any]:
        """Verify the token of an upgrade request; return its claims (for ``Accept(user=...)``).

        Raises:
            HandshakeError: 401 ``Unauthorized`` when no token is given, 401
                ``Invalid token`` when it fails verification.
        """
        token = self.token_from(request)
        if token is None:
            recorder.guard("auth_failed", "missing_token")
            raise HandshakeError(401, "Unauthorized", list(_UNAUTHORIZED))
        try:
            return self.verify(token)
        except InvalidToken as exc:
            logger.debug("fastws: refused token from %s: %s", request.remote_address, exc.reason)
            recorder.guard("auth_failed", "invalid_token")
            raise HandshakeError(401, "Invalid token", list(_INVALID)) from None

    # ------------------------------------------------------------ live connections

    def on_open(self, ws: Any) -> None:
        """The connection opened with ``ws.user`` set to verified claims: watch their ``exp``."""
        if self.close_on_expiry:
            self._watch(ws, ws.user)

    def _watch(self, ws: Any, claims: Mapping[str, Any] | None) -> None:
        ws = _engine_connection(ws)
        loop = asyncio.get_running_loop()
        watch = self._watches.get(loop)
        if watch is None:
            watch = self._watches[loop] = _ExpiryWatch(loop)
        exp = claims.get("exp") if claims else None
        if isinstance(exp, (int, float)) and not isinstance(exp, bool):
            watch.watch(ws, float(exp) + self.leeway)
        else:
            watch.unwatch(ws)

    def expires_at(self, ws: Any) -> float | None:
        """When ``ws`` will be closed for an expired token (a Unix time), or None."""
        try:
            watch = self._watches.get(asyncio.get_running_loop())
        except RuntimeError:
            return None
        return watch.expiry.get(_engine_connection(ws)) if watch is not None else None

    def refresh(self, ws: Any, token: str) -> dict[str, Any]:
        """Replace the token of an open connection: verify it, check it names the same
        user, set ``ws.user`` and move the expiry.

        Returns:
            The new claims.

        Raises:
            InvalidToken: the token fails verification or names another user.
        """
        ws = _engine_connection(ws)
        claims = self.verify(token)
        if user_id(claims) != user_id(ws.user):
            raise InvalidToken("token subject mismatch")
        ws.user = claims
        if self.close_on_expiry:
            self._watch(ws, claims)
        return claims

    def on_message(self, ws: Any, message: Any) -> bool:
        """Handle a refresh message if ``message`` is one; return True when it was consumed.

        Cheap for other messages (a prefix test). Accepts ``str``, bytes-like or a
        :class:`fastws.Message`; a refresh must be TEXT starting with
        :data:`fastws.auth.REFRESH_PREFIX`. The answer is sent on ``ws`` (not awaited).
        """
        if not self.refresh_enabled:
            return False
        if isinstance(message, str):
            if not message.startswith(REFRESH_PREFIX):
                return False
            text: str | bytes = message
        elif getattr(message, "is_text", False):  # a fastws.Message (low-level API)
            view = memoryview(message)
            if view[:len(_REFRESH_PREFIX_B)] != _REFRESH_PREFIX_B:
                return False
            text = bytes(view)
        else:  # bytes: a BINARY message
            return False
        if len(text) > self.max_token_size + 64:
            self._answer(ws, False, "Invalid token")
            return True
        try:
            body = orjson.loads(text)
            token = body.get("token") if isinstance(body, dict) else None
        except orjson.JSONDecodeError:
            token = None
        if not isinstance(token, str) or not token:
            self._answer(ws, False, "Invalid token")
            return True
        try:
            claims = self.refresh(ws, token)
        except InvalidToken as exc:
            logger.debug("fastws: refused refresh from %s: %s", getattr(ws, "remote_address", None), exc.reason)
            self._answer(ws, False, "Token subject mismatch" if exc.reason == "token subject mismatch"
                         else "Invalid token")
            return True
        self._answer(ws, True, None, claims.get("exp"))
        return True

    @staticmethod
    def _answer(ws: Any, ok: bool, error: str | None, exp: Any = None) -> None:
        reply: dict[str, Any] = {"type": "auth", "ok": ok}
        if ok:
            reply["exp"] = exp
        else:
            reply["error"] = error
        try:
            ws.send(orjson.dumps(reply).decode())
        except FastWSError:  # closing: nothing to answer
            pass

    def __repr__(self) -> str:
        return f"JWTAuth(algorithms={self.algorithms!r}, audience={self.audience!r}, issuer={self.issuer!r})"


class _ExpiryWatch:
    """Token expiry of the connections of one event loop: a heap of (unix time, seq, weakref),
    one timer for the earliest. Entries of closed or refreshed connections are skipped when
    they come up, and the heap is compacted when most of it is stale."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.heap: list[tuple[float, int, weakref.ref[Any]]] = []
        self.expiry: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
        self._seq = 0
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def watch(self, ws: Any, when: float) -> None:
        self.expiry[ws] = when
        self._seq += 1
        heapq.heappush(self.heap, (when, self._seq, weakref.ref(ws)))
        if len(self.heap) > 64 and len(self.heap) > 2 * len(self.expiry):
            self._compact()
        self._arm()

    def unwatch(self, ws: Any) -> None:
        self.expiry.pop(ws, None)

    def _compact(self) -> None:
        self.heap = [e for e in self.heap if (ws := e[2]()) is not None and self.expiry.get(ws) == e[0]]
        heapq.heapify(self.heap)

    def _arm(self) -> None:
        if not self.heap:
            return
        due = self.heap[0][0]
        if self._handle is not None:
            if due >= self._due:
                return
            self._handle.cancel()
        self._due = due
        # at most a day ahead: a far-off exp re-arms when the timer fires early
        delay = min(max(0.0, due - time.time()), 86400.0)
        self._handle = self.loop.call_at(self.loop.time() + delay, self._fire)

    def _fire(self) -> None:
        self._handle = None
        now = time.time()
        heap = self.heap
        while heap and heap[0][0] <= now:
            when, _, ref = heapq.heappop(heap)
            ws = ref()
            if ws is None or self.expiry.get(ws) != when:
                continue  # closed and collected, or refreshed since
            del self.expiry[ws]
            if ws.open:
                logger.info("fastws: token of %s expired; closing", user_id(ws.user))
                recorder.guard("auth_failed", "expired")
                ws.close(1008, "Token expired")
        self._arm()
