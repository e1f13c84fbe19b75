"""The Cython token buckets and the memory-bounded bucket table, on an explicit clock."""

from __future__ import annotations

import pytest

from fastws._limits import BucketTable, MessageGate, TokenBucket, monotonic


def test_bucket_burst_then_refill():
    b = TokenBucket(1 / 6, 10, now=100.0)  # 10 per 60 s
    assert [b.hit(100.0) for _ in range(10)] == [0.0] * 10
    wait = b.hit(100.0)
    assert wait == pytest.approx(6.0)
    assert b.hit(105.9) > 0
    assert b.hit(106.1) == 0.0
    assert b.hit(106.1) > 0


def test_bucket_never_exceeds_capacity():
    b = TokenBucket(100, 3, now=0.0)
    b.hit(1e6)
    assert b.tokens == pytest.approx(2.0)


def test_bucket_ban():
    b = TokenBucket(10, 1, now=0.0)
    assert b.hit(0.0, 1.0, 30.0) == 0.0
    assert b.hit(0.0, 1.0, 30.0) == pytest.approx(30.0)  # trips: banned for 30 s
    assert b.hit(10.0, 1.0, 30.0) == pytest.approx(20.0)  # refilled, but banned
    assert b.hit(30.5, 1.0, 30.0) == 0.0


@pytest.mark.parametrize("rate,cap", [(0, 1), (-1, 5), (1, 0.5)])
def test_bucket_rejects_bad_settings(rate, cap):
    with pytest.raises(ValueError):
        TokenBucket(rate, cap)
    with pytest.raises(ValueError):
        BucketTable(rate, cap)


def test_table_limits_per_key():
    t = BucketTable(1.0, 2, max_entries=100)
    assert t.hit("a", 0.0) == 0.0
    assert t.hit("a", 0.0) == 0.0
    assert t.hit("a", 0.0) == pytest.approx(1.0)
    assert t.hit("b", 0.0) == 0.0  # another key has its own bucket
    assert t.limited == 1
    assert len(t) == 2 and "a" in t and t.get("a").tokens == pytest.approx(0.0)


def test_table_hard_cap_under_a_spray():
    t = BucketTable(1 / 6, 10, max_entries=1000)
    for i in range(50_000):  # a spray of distinct source addresses at one instant
        assert t.hit(i, 5.0) == 0.0
    assert len(t) == 1000
    assert t.forced == 49_000


def test_table_idle_buckets_are_evicted_and_busy_ones_kept():
    t = BucketTable(1.0, 5, max_entries=10_000)  # idle after 5 s
    for i in range(1000):
        t.hit(i, 0.0)
    for _ in range(5):
        t.hit("busy", 0.0)
    assert t.hit("busy", 0.0) > 0
    # later, new keys arrive: each sweeps a few idle buckets off the front
    for i in range(1000):
        t.hit(("new", i), 10.0)
    # all 1001 old buckets had refilled (idle) and were swept away by the new keys
    assert len(t) == 1000 and "busy" not in t and t.forced == 0
    assert t.sweep(14.0) == 0  # the new ones are not idle yet
    assert t.sweep(15.0) == 1000  # a full sweep (a timer) drops every idle bucket
    assert len(t) == 0 and t.evicted == 2001


def test_table_sweep_keeps_recent_and_banned():
    t = BucketTable(1.0, 2, max_entries=100, ban=60.0)
    t.hit("old", 0.0)
    t.hit("banned", 0.0)
    t.hit("banned", 0.0)
    assert t.hit("banned", 0.0) == pytest.approx(60.0)
    t.hit("recent", 9.5)  # a new key sweeps the front: "old" is idle and goes, "banned" stays
    assert "banned" in t and "recent" in t and "old" not in t
    assert t.sweep(10.0) == 0 and t.evicted == 1
    assert t.hit("banned", 30.0) == pytest.approx(30.0)
    assert t.sweep(61.0) == 2
    assert len(t) == 0


def test_message_gate_connection_and_user():
    users = BucketTable(1e-9, 3, 100)  # three messages per user, practically no refill
    g1 = MessageGate(TokenBucket(1e-9, 2), 0.0, users, "u")
    g2 = MessageGate(None, 0.0, users, "u")
    assert g1.check() == 0.0 and g1.check() == 0.0
    assert g1.check() > 0  # the connection's own bucket
    assert g2.check() == 0.0  # the user's third
    assert g2.check() > 0  # the user is over, whichever connection sends
    assert g1.limited == 1 and g2.limited == 1
    assert MessageGate(None, 0.0, users, None).check() == 0.0  # no user key: no per-user limit


def test_notice_throttle():
    g = MessageGate()
    assert g.notice_due(60.0) is True
    assert g.notice_due(60.0) is False


def test_monotonic():
    a = monotonic()
    assert monotonic() >= a > 0


def _cidrs(*texts):
    import ipaddress

    from fastws._limits import CidrSet

    nets = [ipaddress.ip_network(t, strict=False) for t in texts]
    return CidrSet([(n.version, int(n.network_address), n.prefixlen) for n in nets])


@pytest.mark.parametrize("ip,inside", [
    ("10.1.2.3", True), ("11.0.0.1", False), ("127.0.0.1", True), ("127.0.0.2", False),
    ("2001:db8::5", True), ("2001:db9::5", False), ("::1", True), ("::2", False),
    ("::ffff:10.9.9.9", True), ("2001:db8:1:2::ff", True), ("fe80::1", False),
    ("junk", False), ("", False), ("1.2.3.4:80", False), ("10.0.0.256", False), ("ĳ", False),
])
def test_cidr_set(ip, inside):
    c = _cidrs("10.0.0.0/8", "127.0.0.1", "2001:db8::/32", "::1")
    assert c.contains(ip) is inside
    assert len(c) == 4


def test_cidr_set_prefix_edges():
    assert _cidrs("0.0.0.0/0").contains("255.1.2.3") and not _cidrs("0.0.0.0/0").contains("::1")
    assert _cidrs("::/0").contains("fe80::1")
    sixty_four = _cidrs("2001:db8:1:2::/64")
    assert sixty_four.contains("2001:db8:1:2:ffff::1") and not sixty_four.contains("2001:db8:1:3::1")
    tail = _cidrs("2001:db8:1:2::80/121")
    assert tail.contains("2001:db8:1:2::ff") and not tail.contains("2001:db8:1:2::7f")
    assert _cidrs("192.168.1.0/23").contains("192.168.0.7")  # not strict: the /23 around it
    assert not _cidrs().contains("1.1.1.1")


# ---------------------------------------------------------------- compiled firewall rules

import fnmatch  # noqa: E402

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fastws._limits import Globs, RuleSet  # noqa: E402

GLOB_CASES = [
    ("*", ""), ("*", "/any/thing"), ("/admin*", "/admin"), ("/admin*", "/admi"), ("/admin*", "/x/admin"),
    ("*BadBot*", "Mozilla BadBot/1"), ("*BadBot*", "badbot"), ("a?c", "abc"), ("a?c", "ac"), ("a?c", "aéc"),
    ("*.php", "index.php"), ("*.php", "index.php5"), ("a*b*c", "aXbYbZc"), ("a*b*c", "acb"), ("", ""),
    ("", "x"), ("?", ""), ("\\x*", "\\xy"), ("[ab]x", "bx"), ("[!ab]x", "bx"), ("[!ab]x", "cx"),
    ("/v[0-9]/*", "/v2/rooms"), ("[", "["), ("**", "anything"), ("é*", "école"), ("é*", "ecole"),
]


@pytest.mark.parametrize(("pattern", "text"), GLOB_CASES)
def test_globs_match_like_fnmatchcase(pattern, text):
    assert Globs([pattern]).match(text) == fnmatch.fnmatchcase(text, pattern)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="ab*?[]!-é/", max_size=7), st.text(alphabet="ab[]!-é/", max_size=10))
def test_globs_agree_with_fnmatch_on_any_input(pattern, text):
    assert Globs([pattern]).match(text) == fnmatch.fnmatchcase(text, pattern)


def test_globs_any_of_several_and_none():
    g = Globs(["/a*", "/b?", "/c[xy]"])
    assert g.match("/a") and g.match("/bz") and g.match("/cy")
    assert not g.match("/b") and not g.match("/cz") and not g.match("")
    assert not Globs([]).match("anything")


def test_globs_long_text_with_many_stars_stays_linear_enough():
    # backtracking to the last star only: a hostile header value cannot blow up
    text = "a" * 16384
    assert not Globs(["*a*a*a*a*b"]).match(text)
    assert Globs(["*a*a*a*a*"]).match(text)


def test_rule_set_first_match_wins_and_default():
    rules = RuleSet([
        ("deny", _cidrs("203.0.113.0/24", "2001:db8::/32"), None, []),
        ("deny", None, ["/admin*"], []),
        ("deny", None, None, [("User-Agent", "*BadBot*")]),
        ("allow", _cidrs("127.0.0.0/8"), ["/ok*"], []),
        ("deny", _cidrs("127.0.0.0/8"), None, []),
    ], "allow")
    ua = {"user-agent": ["curl/8"]}
    assert not rules.allows("203.0.113.9", "/", ua)
    assert not rules.allows("2001:db8::1", "/", ua)
    assert not rules.allows("::ffff:203.0.113.9", "/", ua)  # IPv4-mapped counts as IPv4
    assert not rules.allows("198.51.100.1", "/admin/x", ua)
    assert not rules.allows("198.51.100.1", "/", {"user-agent": ["x", "a BadBot b"]})  # any value
    assert rules.allows("127.0.0.1", "/ok/1", ua)
    assert not rules.allows("127.0.0.1", "/other", ua)
    assert rules.allows("198.51.100.1", "/", ua)            # no rule: the default
    assert rules.allows("198.51.100.1", "/", {})            # a header rule needs the header
    assert rules.allows("not an ip", "/", ua)               # IP rules never match garbage
    assert not RuleSet([], "deny").allows("127.0.0.1", "/", {})


def test_rule_set_takes_the_headers_index_as_a_dict():
    rules = RuleSet([("deny", None, None, [("x-bad", "*")])], "allow")
    assert not rules.allows("127.0.0.1", "/", {"x-bad": ["1"]})
    with pytest.raises(TypeError):
        rules.allows("127.0.0.1", "/", [("x-bad", "1")])  # not an index: refused, not ignored
