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

from fastws._limits import MessageGate, TokenBucket
from fastws.guards.caps import ConnectionCaps
from fastws.guards.firewall import Firewall, Rule
from fastws.guards.ip import TrustedProxies, rate_key
from fastws.guards.origin import OriginGuard
from fastws.guards.ratelimit import (
    ConnectionRateLimiter,
    LimitedListener,
    MessageLimits,
    RateLimit,
    user_key,
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
        self._bind()

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
        new._bind()
        return new

    # the components (set in __init__ / override)
    origin: OriginGuard | None
    firewall: Firewall | None
    proxies: TrustedProxies
    conn_rate: ConnectionRateLimiter | None
    messages: MessageLimits | None
    caps: ConnectionCaps | None

    # The per-request checks run once per upgrade, cold: each is one closure over its
    # components' C-level parts (bound in _bind), not a chain of method calls.

    def check_request(self, request: Request) -> str:
        """Client IP, firewall (403) and connection rate (429); returns the client IP."""
        return self._check_request(request)

    def check_upgrade(self, request: Request) -> None:
        """The Origin allow-list (403)."""
        if self.origin is not None:
            self._check_upgrade(request)

    def admit(self, ws: Any, spec: Any, ip: str, on_open: Any = None) -> Any:
        """The connection-level guards for an accepted upgrade: the message limits go on the
        connection (checked in the engine before dispatch), ``on_open`` around the handler or
        listener, and a connection slot is taken. Returns None when the slot is taken now,
        else an awaitable that takes one (503 when full or late)."""
        return self._admit(ws, spec, ip, on_open)

    def wrap(self, spec: Any, on_open: Any = None, ws: Any = None) -> None:
        """Set the message limits on the connection (checked in the engine, before dispatch) and
        put ``on_open`` around an Accept's handler or listener."""
        limits = self.messages
        if limits is not None and ws is not None:
            # the gate goes on the engine's connection now, so it also sees the
            # messages that arrive together with the handshake
            gate = limits.gate(spec.user)
            if gate is not None:
                ws.set_message_gate(gate, limits.policy)
            limits = None
        self._around(spec, on_open, limits)

    @staticmethod
    def _around(spec: Any, on_open: Any, limits: MessageLimits | None) -> None:
        """Put ``on_open`` (and the message limits, when not set on the connection yet) around
        an Accept's handler or listener."""
        if limits is None and on_open is None:
            return
        if spec.listener is not None:
            spec.listener = LimitedListener(spec.listener, limits, on_open)
            return
        handler = spec.handler

        async def guarded(ws: Any) -> None:
            if on_open is not None:
                result = on_open(ws)
                if hasattr(result, "__await__"):
                    await result
            if limits is not None:
                gate = limits.gate(ws.user)
                if gate is not None:
                    ws.set_message_gate(gate, limits.policy)
            await handler(ws)

        spec.handler = guarded

    def acquire(self, ws: Any, request: Request) -> Any:
        """A connection slot: None when taken now, else an awaitable (503 when full or late)."""
        if self.caps is None:
            return None
        return self.caps.acquire(ws, str(request.scope.get("client_ip", "")))

    def _bind(self) -> None:
        proxies, firewall, rate, origin = self.proxies, self.firewall, self.conn_rate, self.origin
        trusted = proxies.nets.cidrs if proxies.nets.networks else None
        allows = firewall._set.allows if firewall is not None else None
        hit = rate.table.hit if rate is not None else None

        def check_request(request: Request) -> str:
            addr = request.remote_address
            ip = addr[0] if addr else ""
            if trusted is not None and trusted.contains(ip):
                ip = proxies.client_ip(request)
            if allows is not None and not allows(ip, request.path, request.headers.index()):
                firewall.refuse()  # type: ignore[union-attr]
            if hit is not None:
                key = ip if ":" not in ip else rate_key(ip)
                wait = hit(key)
                if wait:
                    rate.over(key, wait)  # type: ignore[union-attr]
            return ip

        self._check_request = check_request

        if origin is not None:
            exact, full_check = origin._exact, origin.check

            def check_upgrade(request: Request) -> None:
                values = request.headers.index().get("origin")
                if values is None or len(values) != 1 or values[0] not in exact:
                    full_check(request)  # normalises the value; raises 403 when not allowed

            self._check_upgrade = check_upgrade

        limits, caps, around = self.messages, self.caps, self._around
        if limits is not None:
            users, args = limits.users, limits._bucket_args
            ban = limits.per_connection.ban if limits.per_connection is not None else 0.0
            policy = limits.policy  # one bound method for every connection
        take = caps.acquire if caps is not None else None

        def admit(ws: Any, spec: Any, ip: str, on_open: Any) -> Any:
            if limits is not None:
                key = user_key(spec.user) if users is not None else None
                if args is not None:
                    ws.set_message_gate(MessageGate(TokenBucket(*args), ban, users, key), policy)
                elif key is not None:
                    ws.set_message_gate(MessageGate(None, 0.0, users, key), policy)
            if on_open is not None:
                around(spec, on_open, None)
            return take(ws, ip) if take is not None else None

        self._admit = admit

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
