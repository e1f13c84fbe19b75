"""The client's IP address, and ``X-Forwarded-For`` only from trusted proxies."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from fastws._limits import CidrSet
from fastws.handshake import Request

__all__ = ["TrustedProxies", "parse_ip", "parse_networks", "rate_key", "Networks"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_ip(text: str) -> IPAddress | None:
    """An address from a peer name or a forwarded hop (``1.2.3.4``, ``1.2.3.4:80``,
    ``[::1]:80``, ``::ffff:1.2.3.4``), or None when it is not one."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # IPv4 with a port
        text = text.partition(":")[0]
    if "%" in text:  # scope id
        text = text.partition("%")[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class Networks:
    """A set of CIDRs, matched in C (:class:`fastws._limits.CidrSet`): no ipaddress
    object is made per check."""

    __slots__ = ("networks", "cidrs")

    def __init__(self, cidrs: Iterable[str] | str, what: str = "network") -> None:
        self.networks = parse_networks(cidrs, what)
        self.cidrs = CidrSet([(n.version, int(n.network_address), n.prefixlen) for n in self.networks])

    def contains(self, ip: str) -> bool:
        """True when ``ip`` (a plain address) is in one of the networks."""
        return self.cidrs.contains(ip)

    def __bool__(self) -> bool:
        return bool(self.networks)


def parse_networks(cidrs: Iterable[str] | str, what: str = "network") -> list[IPNetwork]:
    """Parse CIDRs (``10.0.0.0/8``, ``::1``, ``2001:db8::/32``); a bare address is a /32 or /128.

    Raises:
        ValueError: naming the entry that is not a network.
    """
    if isinstance(cidrs, str):
        cidrs = [cidrs]
    out: list[IPNetwork] = []
    for c in cidrs:
        try:
            out.append(ipaddress.ip_network(str(c).strip(), strict=False))
        except ValueError:
            raise ValueError(f"invalid {what} {c!r} (expected an IP address or CIDR)") from None
    return out


def rate_key(ip: str) -> str:
    """The rate-limit key of a client IP: the address for IPv4, its /64 for IPv6
    (one host commonly holds a whole /64, so per-address keys would be free to spray)."""
    if ":" not in ip:
        return ip
    try:
        return str(ipaddress.IPv6Network((ip, 64), strict=False).network_address) + "/64"
    except ValueError:
        return ip


class TrustedProxies:
    """Which peers may tell us the client IP with ``X-Forwarded-For``.

    The header is read right to left (each proxy appends the address it saw);
    the first hop that is not a trusted proxy is the client. From an untrusted
    peer the header is ignored, so a client can never choose its own IP.

    Args:
        cidrs: the proxies' networks.
    """

    __slots__ = ("nets",)

    def __init__(self, cidrs: Iterable[str] | str = ()) -> None:
        self.nets = Networks(cidrs, "trusted proxy")

    @property
    def networks(self) -> list[IPNetwork]:
        return self.nets.networks

    def trusted(self, ip: IPAddress | None) -> bool:
        return ip is not None and self.nets.cidrs.contains(str(ip))

    def client_ip(self, request: Request) -> str:
        """The client's IP address as a string ('' when the peer is unknown)."""
        peer_name = request.remote_address[0] if request.remote_address else ""
        if not self.nets.networks or not self.nets.cidrs.contains(peer_name):
            return peer_name
        hops = [h for v in request.headers.get_all("x-forwarded-for") for h in v.split(",")]
        client = parse_ip(peer_name)
        for hop in reversed(hops):
            ip = parse_ip(hop)
            if ip is None:  # garbage: trust nothing further left
                break
            client = ip
            if not self.trusted(ip):
                break
        return str(client) if client is not None else peer_name

    def __bool__(self) -> bool:
        return bool(self.nets)
