"""Guard components without sockets: client IP behind proxies, firewall rules, origins, rate specs."""

from __future__ import annotations

import pytest

import fastws
from fastws.guards import Firewall, Guards, OriginGuard, RateLimit, Rule, TrustedProxies
from fastws.guards.ip import parse_ip, rate_key
from tests.unit.test_routing import req


@pytest.mark.parametrize("text,expected", [
    ("1.2.3.4", "1.2.3.4"), (" 1.2.3.4:8080", "1.2.3.4"), ("[2001:db8::1]:443", "2001:db8::1"),
    ("2001:db8::1", "2001:db8::1"), ("::ffff:10.0.0.1", "10.0.0.1"), ("fe80::1%eth0", "fe80::1"),
    ("unknown", None), ("", None), ("1.2.3.4.5", None),
])
def test_parse_ip(text, expected):
    ip = parse_ip(text)
    assert (str(ip) if ip is not None else None) == expected


def test_rate_key_groups_ipv6_by_64():
    assert rate_key("1.2.3.4") == "1.2.3.4"
    assert rate_key("2001:db8:1:2:aaaa::1") == rate_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"


def test_forwarded_for_ignored_from_untrusted_peer():
    proxies = TrustedProxies(["10.0.0.0/8"])
    spoof = req("/", headers={"X-Forwarded-For": "6.6.6.6"}, peer="203.0.113.9")
    assert proxies.client_ip(spoof) == "203.0.113.9"
    assert TrustedProxies().client_ip(spoof) == "203.0.113.9"  # no proxies configured: never read


def test_forwarded_for_from_trusted_proxy_chain():
    proxies = TrustedProxies(["10.0.0.0/8", "::1"])
    # the client prepends a lie; proxies append what they saw; read right to left
    r = req("/", headers={"X-Forwarded-For": "6.6.6.6, 198.51.100.7, 10.1.1.1"}, peer="10.0.0.2")
    assert proxies.client_ip(r) == "198.51.100.7"
    r = req("/", headers={"X-Forwarded-For": "198.51.100.7"}, peer="::1")
    assert proxies.client_ip(r) == "198.51.100.7"
    r = req("/", headers={"X-Forwarded-For": "junk, 198.51.100.7"}, peer="10.0.0.2")
    assert proxies.client_ip(r) == "198.51.100.7"
    r = req("/", headers={"X-Forwarded-For": "198.51.100.7, junk"}, peer="10.0.0.2")
    assert proxies.client_ip(r) == "10.0.0.2"  # garbage next to us: trust nothing beyond
    r = req("/", peer="10.0.0.2")
    assert proxies.client_ip(r) == "10.0.0.2"


def test_bad_proxy_cidr_is_named():
    with pytest.raises(ValueError, match="10.0.0.300"):
        TrustedProxies(["10.0.0.300/8"])


def test_firewall_first_match_wins_with_default():
    fw = Firewall([
        {"action": "allow", "ip": "10.1.0.0/16"},
        {"action": "deny", "ip": ["10.0.0.0/8", "2001:db8::/32"]},
        {"action": "deny", "path": "/admin/*"},
        {"action": "deny", "header": {"User-Agent": "*BadBot*"}},
        Rule("allow", path="/public/*", header={"X-Key": "*"}),
    ], default="allow")
    assert fw.decide("10.1.2.3", req("/admin/x")) == "allow"  # first rule wins over later denies
    assert fw.decide("10.9.9.9", req("/")) == "deny"
    assert fw.decide("2001:db8::5", req("/")) == "deny"
    assert fw.decide("2001:db9::5", req("/")) == "allow"
    assert fw.decide("1.1.1.1", req("/admin/panel")) == "deny"
    assert fw.decide("1.1.1.1", req("/", headers={"user-agent": "x BadBot/1"})) == "deny"
    assert fw.decide("1.1.1.1", req("/", headers={"user-agent": "curl"})) == "allow"
    deny_all = Firewall([Rule("allow", path="/public/*", header={"X-Key": "*"})], default="deny")
    assert deny_all.decide("1.1.1.1", req("/public/a", headers={"x-key": "k"})) == "allow"
    assert deny_all.decide("1.1.1.1", req("/public/a")) == "deny"
    with pytest.raises(fastws.HandshakeError) as info:
        deny_all.check("1.1.1.1", req("/"))
    assert (info.value.status, info.value.reason) == (403, "Forbidden")


@pytest.mark.parametrize("rule,msg", [
    ({"action": "block"}, "allow"), ({"ip": "1.2.3.4"}, "action"), ({"action": "deny", "ip": "nope"}, "nope"),
    ({"action": "deny", "port": 80}, "port"),
])
def test_bad_firewall_rules(rule, msg):
    with pytest.raises(ValueError, match=msg):
        Firewall([rule])


def test_origin_guard():
    g = OriginGuard(["https://example.com", "https://*.app.example.com/"])
    assert g.allowed("https://example.com") and g.allowed("HTTPS://EXAMPLE.COM/")
    assert g.allowed("https://a.app.example.com")
    assert not g.allowed("https://example.com.evil.net")
    assert not g.allowed("http://example.com")
    assert not g.allowed(None)
    assert OriginGuard(["https://example.com"], allow_missing=True).allowed(None)
    with pytest.raises(fastws.HandshakeError) as info:
        g.check(req("/", headers={"Origin": "https://evil.example"}))
    assert info.value.status == 403
    with pytest.raises(ValueError):
        OriginGuard(["example.com"])


@pytest.mark.parametrize("spec,count,per", [
    ("10/60s", 10, 60.0), ("100/s", 100, 1.0), ("5/min", 5, 60.0), ("5/2.5s", 5, 2.5), ("3/h", 3, 3600.0),
    ("7", 7, 1.0), ({"rate": "10/minute", "ban": 30}, 10, 60.0), ({"count": 2, "per": 4}, 2, 4.0),
])
def test_rate_specs(spec, count, per):
    r = RateLimit.parse(spec)
    assert (r.count, r.per) == (count, per)


@pytest.mark.parametrize("spec", ["ten/s", "10/fortnight", "0/s", {"per": 3}, {"count": 1, "action": "explode"},
                                  {"count": 1, "colour": "red"}, 3.5])
def test_bad_rate_specs(spec):
    with pytest.raises(ValueError):
        RateLimit.parse(spec)


def test_override_shares_untouched_components():
    base = Guards(connection_rate="10/60s", origins=["https://a.example"], max_connections=5)
    route = base.override(origins=["https://b.example"])
    assert route.conn_rate is base.conn_rate and route.caps is base.caps
    assert route.origin is not base.origin
    with pytest.raises(TypeError, match="bogus"):
        base.override(bogus=1)


def test_connection_rate_429_with_retry_after():
    g = Guards(connection_rate="2/60s")
    g.check_request(req("/"))
    g.check_request(req("/"))
    with pytest.raises(fastws.HandshakeError) as info:
        g.check_request(req("/"))
    assert info.value.status == 429 and dict(info.value.headers)["Retry-After"] == "30"
    assert g.check_request(req("/", peer="127.0.0.2")) == "127.0.0.2"  # another IP


def test_connection_rate_log_mode_only_counts():
    g = Guards(connection_rate={"rate": "1/60s", "action": "log"})
    for _ in range(5):
        g.check_request(req("/"))
    assert g.conn_rate.table.limited == 4


def test_stats():
    g = Guards(connection_rate="1/60s", message_rate="5/s", user_message_rate="5/s", max_connections=3)
    g.check_request(req("/"))
    with pytest.raises(fastws.HandshakeError):
        g.check_request(req("/"))
    assert g.stats() == {"connection_rate_buckets": 1, "connection_rate_limited": 1, "connection_rate_evicted": 0,
                         "messages_over_limit": 0, "user_buckets": 0, "connections": 0, "connections_waiting": 0}
    assert Guards().stats() == {}
