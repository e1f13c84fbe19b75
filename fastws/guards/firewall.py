"""Firewall rules: allow or deny by client IP/CIDR, path pattern and header value."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fastws._limits import RuleSet
from fastws.exceptions import HandshakeError
from fastws.guards.ip import Networks
from fastws.handshake import Request
from fastws.metrics import recorder

__all__ = ["Rule", "Firewall"]

class Rule:
    """One firewall rule: every condition given must match (none given: matches all).

    Args:
        action: ``"allow"`` or ``"deny"``.
        ip: client IPs or CIDRs (IPv4 and IPv6), one or a list.
        path: a glob on the request path (``/admin/*``, ``*.php``), one or a list.
        header: ``{name: glob}``; every named header must be present with a
            value matching its glob (``"*"``: present at all). Names are
            case-insensitive, values case-sensitive.
    """

    __slots__ = ("action", "ip", "path", "header", "_nets", "_paths", "_one")

    def __init__(self, action: str, *, ip: str | Iterable[str] | None = None,
                 path: str | Iterable[str] | None = None, header: Mapping[str, str] | None = None) -> None:
        if action not in ("allow", "deny"):
            raise ValueError(f"firewall action must be 'allow' or 'deny', not {action!r}")
        self.action = action
        self.ip = ip
        self.path = path
        self.header = dict(header or {})
        self._nets = Networks(ip, "firewall ip") if ip is not None else None
        self._paths = [path] if isinstance(path, str) else list(path) if path is not None else None
        # this rule alone, for matches(): its action when it matches, the other one when not
        self._one = RuleSet([self._compiled()], "deny" if action == "allow" else "allow")

    def _compiled(self) -> tuple[str, Any, list[str] | None, list[tuple[str, str]]]:
        """The rule as :class:`fastws._limits.RuleSet` takes it."""
        return (self.action, self._nets.cidrs if self._nets is not None else None, self._paths,
                [(k, str(v)) for k, v in self.header.items()])

    @classmethod
    def of(cls, value: Rule | Mapping[str, Any]) -> Rule:
        """A rule from a Rule or a dict (``{"action": "deny", "ip": "10.0.0.0/8"}``)."""
        if isinstance(value, Rule):
            return value
        if not isinstance(value, Mapping):
            raise TypeError(f"a firewall rule is a dict or Rule, not {value!r}")
        kw = dict(value)
        unknown = set(kw) - {"action", "ip", "path", "header"}
        if unknown:
            raise ValueError(f"unknown firewall rule key(s): {', '.join(sorted(unknown))}")
        if "action" not in kw:
            raise ValueError("a firewall rule needs an action ('allow' or 'deny')")
        action = kw.pop("action")
        return cls(action, **kw)

    def matches(self, ip: str, request: Request) -> bool:
        """True when every condition holds."""
        return self._one.allows(ip, request.path, request.headers.index()) == (self.action == "allow")

    def __repr__(self) -> str:
        conds = {k: v for k, v in (("ip", self.ip), ("path", self.path), ("header", self.header or None)) if v}
        return f"Rule({self.action!r}, {conds})"


class Firewall:
    """Rules evaluated in order; the first that matches decides, else ``default``.

    A blocked request gets ``403 Forbidden``.

    Args:
        rules: :class:`Rule` objects or dicts.
        default: ``"allow"`` (the default) or ``"deny"``.
    """

    __slots__ = ("rules", "default", "_set")

    def __init__(self, rules: Iterable[Rule | Mapping[str, Any]] = (), default: str = "allow") -> None:
        if default not in ("allow", "deny"):
            raise ValueError(f"firewall default must be 'allow' or 'deny', not {default!r}")
        self.rules = [Rule.of(r) for r in rules]
        self.default = default
        # evaluated in one C loop (fastws._limits.RuleSet): the IP parsed once, globs matched in C
        self._set = RuleSet([r._compiled() for r in self.rules], default)

    @classmethod
    def of(cls, value: Any) -> Firewall | None:
        """A firewall from a Firewall, a list of rules, or ``{"rules": [...], "default": ...}``."""
        if value is None or isinstance(value, Firewall):
            return value
        if isinstance(value, Mapping):
            unknown = set(value) - {"rules", "default"}
            if unknown:
                raise ValueError(f"unknown firewall key(s): {', '.join(sorted(unknown))}")
            return cls(value.get("rules", ()), value.get("default", "allow"))
        return cls(value)

    def decide(self, ip: str, request: Request) -> str:
        """``"allow"`` or ``"deny"`` for this request."""
        return "allow" if self._set.allows(ip, request.path, request.headers.index()) else "deny"

    def check(self, ip: str, request: Request) -> None:
        """Raises ``HandshakeError(403)`` when the request is denied."""
        if not self._set.allows(ip, request.path, request.headers.index()):
            self.refuse()

    def refuse(self) -> None:
        """Count a blocked request and raise ``HandshakeError(403)``."""
        recorder.guard("blocked", "firewall")
        raise HandshakeError(403, "Forbidden")
