"""The edge guards of :class:`fastws.App`: origin allow-list, firewall rules,
rate limits (connections per IP, messages per connection and per user),
connection caps with a bounded wait queue, and the client IP behind trusted
proxies.

A :class:`Guards` holds one component per concern. ``guards.override(**opts)``
gives a new Guards that shares every component not named in ``opts`` (and so
its state: buckets, slot counts); that is how per-route overrides work.
"""

from __future__ import annotations

from typing import Any

from fastws.guards.caps import ConnectionCaps
from fastws.guards.firewall import Firewall, Rule
from fastws.guards.ip import TrustedProxies, rate_key
from fastws.guards.origin import OriginGuard
from fastws.guards.ratelimit import (
    ConnectionRateLimiter,
    LimitedConnection,
    LimitedListener,
    MessageLimits,
    RateLimit,
)
from fastws.handshake import Request

__all__ = [
    "Guards",
    "ConnectionCaps",
    "Firewall",
    "Rule",
    "TrustedProxies",
    "OriginGuard",
    "RateLimit",
    "ConnectionRateLimiter",
    "MessageLimits",
    "LimitedConnection",
    "LimitedListener",
]

# component -> the settings it is built from
_COMPONENTS: dict[str, tuple[str, ...]] = {
    "origin": ("origins", "allow_missing_origin"),
    "firewall": ("firewall",),
    "proxies": ("trusted_proxies",),
    "conn_rate": ("connection_rate", "max_buckets"),
    "messages": ("message_rate", "user_message_rate", "max_buckets"),
    "caps": ("max_connections", "max_connections_per_ip", "queue_size", "queue_timeout"),
}

DEFAULTS: dict[str, Any] = {
    "origins": None,
    "allow_missing_origin": False,
    "firewall": None,
    "trusted_proxies": (),
    "connection_rate": None,
    "message_rate": None,
    "user_message_rate": None,
    "max_connections": None,
    "max_connections_per_ip": None,
    "queue_size": 10,
    "queue_timeout": 5.0,
    "max_buckets": 100_000,
}


class Guards:
    """The guard settings and their live state.

    Args:
        origins: allowed ``Origin`` values for upgrades (None: any).
        allow_missing_origin: with ``origins``, accept upgrades without Origin.
        firewall: a :class:`Firewall`, a list of rules (dicts or :class:`Rule`),
            or ``{"rules": [...], "default": "allow" | "deny"}``.
        trusted_proxies: CIDRs of proxies whose ``X-Forwarded-For`` is believed.
        connection_rate: new requests per client IP (a :class:`RateLimit`,
            ``"10/60s"`` or a dict); over it: 429 with ``Retry-After``.
        message_rate: messages per connection.
        user_message_rate: messages per authenticated user, over all their
            connections (the user is ``ws.user``'s ``userId`` or ``sub``).
        max_connections: global cap on open WebSocket connections.
        max_connections_per_ip: cap per client IP.
        queue_size: upgrades that may wait for a slot (default 10).
        queue_timeout: seconds they may wait (default 5).
        max_buckets: hard cap on the rate-limit buckets kept per limit.
    """

    OPTIONS = tuple(DEFAULTS)

    def __init__(self, **settings: Any) -> None:
        self.check_overrides(settings)
        self.settings = {**DEFAULTS, **settings}
        for name in _COMPONENTS:
            setattr(self, name, self._build(name))

    @staticmethod
    def check_overrides(settings: dict[str, Any]) -> None:
        """Raises TypeError for a setting that is not a guard setting."""
        unknown = set(settings) - set(DEFAULTS)
        if unknown:
            raise TypeError(f"unknown guard setting(s): {', '.join(sorted(unknown))}")

    def _build(self, name: str) -> Any:
        s = self.settings
        if name == "origin":
            return OriginGuard(s["origins"], s["allow_missing_origin"]) if s["origins"] is not None else None
        if name == "firewall":
            return Firewall.of(s["firewall"])
        if name == "proxies":
            return TrustedProxies(s["trusted_proxies"] or ())
        if name == "conn_rate":
            limit = RateLimit.parse(s["connection_rate"])
            return ConnectionRateLimiter(limit, int(s["max_buckets"])) if limit is not None else None
        if name == "messages":
            per_conn = RateLimit.parse(s["message_rate"])
            per_user = RateLimit.parse(s["user_message_rate"])
            if per_conn is None and per_user is None:
                return None
            return MessageLimits(per_conn, per_user, int(s["max_buckets"]))
        if s["max_connections"] is None and s["max_connections_per_ip"] is None:
            return None
        return ConnectionCaps(s["max_connections"], s["max_connections_per_ip"], int(s["queue_size"]),
                              float(s["queue_timeout"]))

    def override(self, **settings: Any) -> Guards:
        """A Guards with these settings changed, sharing every other component (and its state)."""
        self.check_overrides(settings)
        new = object.__new__(Guards)
        new.settings = {**self.settings, **settings}
        for name, keys in _COMPONENTS.items():
            if any(k in settings for k in keys):
                setattr(new, name, new._build(name))
            else:
                setattr(new, name, getattr(self, name))
        return new

    # the components (set in __init__ / override)
    origin: OriginGuard | None
    firewall: Firewall | None
    proxies: TrustedProxies
    conn_rate: ConnectionRateLimiter | None
    messages: MessageLimits | None
    caps: ConnectionCaps | None

    def check_request(self, request: Request) -> str:
        """Client IP, firewall (403) and connection rate (429); returns the client IP."""
        ip = self.proxies.client_ip(request)
        if self.firewall is not None:
            self.firewall.check(ip, request)
        if self.conn_rate is not None:
            self.conn_rate.check(rate_key(ip))
        return ip

    def check_upgrade(self, request: Request) -> None:
        """The Origin allow-list (403)."""
        if self.origin is not None:
            self.origin.check(request)

    def wrap(self, spec: Any, on_open: Any = None) -> None:
        """Put the message limits and ``on_open`` around an Accept's handler or listener."""
        limits = self.messages
        if limits is None and on_open is None:
            return
        if spec.listener is not None:
            spec.listener = LimitedListener(spec.listener, limits, on_open)
            return
        handler = spec.handler
        if on_open is None and limits is not None:
            # the common case: no coroutine of ours around the handler, the gate made now
            gate = limits.gate(spec.user)
            if gate is None:
                return
            lim = limits

            def limited(ws: Any) -> Any:
                return handler(LimitedConnection(ws, gate, lim))

            spec.handler = limited
            return

        async def guarded(ws: Any) -> None:
            if on_open is not None:
                result = on_open(ws)
                if hasattr(result, "__await__"):
                    await result
            gate = limits.gate(ws.user) if limits is not None else None
            if gate is not None and limits is not None:
                ws = LimitedConnection(ws, gate, limits)
            await handler(ws)

        spec.handler = guarded

    def acquire(self, ws: Any, request: Request) -> Any:
        """A connection slot: None when taken now, else an awaitable (503 when full or late)."""
        if self.caps is None:
            return None
        return self.caps.acquire(ws, str(request.scope.get("client_ip", "")))

    def stats(self) -> dict[str, int]:
        """Counters of the live state (for metrics): buckets kept, requests over the connection
        rate, messages over the message rates, open and waiting connections."""
        out: dict[str, int] = {}
        if self.conn_rate is not None:
            t = self.conn_rate.table
            out.update(connection_rate_buckets=len(t), connection_rate_limited=t.limited,
                       connection_rate_evicted=t.evicted + t.forced)
        if self.messages is not None:
            out["messages_over_limit"] = self.messages.over
            if self.messages.users is not None:
                out["user_buckets"] = len(self.messages.users)
        if self.caps is not None:
            out.update(connections=self.caps.total, connections_waiting=self.caps.waiting)
        return out

    def __repr__(self) -> str:
        on = [k for k, v in self.settings.items() if v not in (None, (), DEFAULTS[k])]
        return f"<Guards {', '.join(on) or 'off'}>"
