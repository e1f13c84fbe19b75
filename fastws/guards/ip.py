"""The client's IP address, and ``X-Forwarded-For`` only from trusted proxies."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

from fastws.handshake import Request

__all__ = ["TrustedProxies", "parse_ip", "parse_networks", "rate_key", "ip_bits", "Networks"]

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


_V4_MAPPED = 0xFFFF << 32


def ip_bits(text: str) -> tuple[int, int] | None:
    """``(4 | 6, address as int)`` for a plain address (what a socket reports), or None.

    ``inet_pton`` does the parsing in C: this is the hot path of every guard
    that looks at the client IP. IPv4-mapped IPv6 addresses count as IPv4.
    """
    try:
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
    except (OSError, ValueError, TypeError):
        pass
    try:
        n = int.from_bytes(socket.inet_pton(socket.AF_INET6, text), "big")
    except (OSError, ValueError, TypeError):
        ip = parse_ip(text)  # a port, brackets or a scope id
        if ip is None:
            return None
        return ip.version, int(ip)
    if n >> 32 == 0xFFFF:
        return 4, n & 0xFFFFFFFF
    return 6, n


class Networks:
    """A set of CIDRs matched with integer masks (no ipaddress objects per request)."""

    __slots__ = ("networks", "_v4", "_v6")

    def __init__(self, cidrs: Iterable[str] | str, what: str = "network") -> None:
        self.networks = parse_networks(cidrs, what)
        self._v4 = [(int(n.network_address), int(n.netmask)) for n in self.networks if n.version == 4]
        self._v6 = [(int(n.network_address), int(n.netmask)) for n in self.networks if n.version == 6]

    def contains(self, bits: tuple[int, int] | None) -> bool:
        """True when the address (from :func:`ip_bits`) is in one of the networks."""
        if bits is None:
            return False
        n = bits[1]
        for net, mask in (self._v4 if bits[0] == 4 else self._v6):
            if n & mask == net:
                return True
        return False

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
        return ip is not None and self.nets.contains((ip.version, int(ip)))

    def client_ip(self, request: Request) -> str:
        """The client's IP address as a string ('' when the peer is unknown)."""
        peer_name = request.remote_address[0] if request.remote_address else ""
        if not self.nets or not self.nets.contains(ip_bits(peer_name)):
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
