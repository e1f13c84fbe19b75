# cython: language_level=3
"""Token buckets and a memory-bounded table of them, keyed by client IP or user.

Theory of operation
-------------------
A :class:`TokenBucket` holds up to ``capacity`` tokens and gains ``rate`` tokens
per second; a hit takes one (or ``cost``) token, or is refused with the time
until the tokens are there. A bucket that trips may be banned: every hit is
refused until ``banned_until``.

A :class:`BucketTable` maps keys to buckets, and keeps its memory bounded:

1. A bucket that has refilled to ``capacity`` and is not banned is *idle*: it
   behaves exactly like a new bucket, so dropping it changes nothing. A bucket
   last touched ``idle_after = capacity / rate`` seconds ago is idle.
2. The table is an insertion-ordered dict. Every new key sweeps a few entries
   at the front: idle ones are dropped, busy ones move to the back (a "second
   chance" queue), so the table drains at the rate keys arrive, with no timer
   and no per-hit reordering. ``sweep()`` does the same on demand (a timer).
3. ``max_entries`` is a hard cap: when a new key finds the table full after a
   sweep, the entry at the front (the longest untouched) is dropped anyway.
   The cost falls on the dropped key, which starts again with a full bucket;
   a spray of source addresses can make the table churn, never grow.
"""

from collections import OrderedDict

from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject
from libc.stdint cimport uint32_t, uint64_t

from fastws._clock cimport now as _clock_now

__all__ = ["TokenBucket", "BucketTable", "MessageGate", "CidrSet", "Globs", "RuleSet", "monotonic"]

# how many front entries each new key examines (amortised eviction)
cdef enum:
    SWEEP_PER_INSERT = 4


cdef double now_monotonic() noexcept nogil:
    return _clock_now()


def monotonic():
    """The clock the buckets use when no ``now`` is given (seconds, monotonic)."""
    return now_monotonic()


cdef class TokenBucket:
    """``capacity`` tokens, refilled at ``rate`` per second; starts full.

    Args:
        rate: tokens per second (> 0).
        capacity: the burst size (>= 1).
        now: the current time (default: the monotonic clock).
    """

    def __init__(self, double rate, double capacity, double now=-1.0):
        if rate <= 0 or capacity < 1:
            raise ValueError("a token bucket needs rate > 0 and capacity >= 1")
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.last = now if now >= 0 else now_monotonic()
        self.banned_until = 0.0

    cdef double _hit(self, double now, double cost, double ban) noexcept:
        cdef double t
        if self.banned_until > now:
            return self.banned_until - now
        if now > self.last:
            t = self.tokens + (now - self.last) * self.rate
            self.tokens = t if t < self.capacity else self.capacity
            self.last = now
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        if ban > 0:
            self.banned_until = now + ban
            return ban
        return (cost - self.tokens) / self.rate

    def hit(self, double now=-1.0, double cost=1.0, double ban=0.0):
        """Take ``cost`` tokens.

        Returns:
            0.0 when allowed, else the seconds until a retry can succeed (the
            ban's length when ``ban`` > 0 trips it).
        """
        return self._hit(now if now >= 0 else now_monotonic(), cost, ban)

    def __repr__(self):
        return f"<TokenBucket {self.tokens:.2f}/{self.capacity:g} +{self.rate:g}/s>"


cdef class BucketTable:
    """Token buckets by key (client IP, user id), with bounded memory.

    Args:
        rate: tokens per second of each bucket.
        capacity: burst size of each bucket.
        max_entries: hard cap on the number of buckets kept.
        ban: seconds a key is refused after its bucket runs dry (0: no ban).
    """

    def __init__(self, double rate, double capacity, Py_ssize_t max_entries=100000, double ban=0.0):
        if rate <= 0 or capacity < 1:
            raise ValueError("a token bucket needs rate > 0 and capacity >= 1")
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.rate = rate
        self.capacity = capacity
        self.ban = ban if ban > 0 else 0.0
        self.idle_after = capacity / rate
        self.max_entries = max_entries
        self._table = OrderedDict()

    cdef bint _idle(self, TokenBucket b, double now) noexcept:
        return now >= b.last + self.idle_after and now >= b.banned_until

    cdef TokenBucket _make(self, object key, double now):
        cdef TokenBucket b
        self.sweep(now, SWEEP_PER_INSERT)
        if len(self._table) >= self.max_entries:
            self.sweep(now, 64)
            while len(self._table) >= self.max_entries:
                self._table.popitem(False)
                self.forced += 1
        b = TokenBucket.__new__(TokenBucket)
        b.rate = self.rate
        b.capacity = self.capacity
        b.tokens = self.capacity
        b.last = now
        b.banned_until = 0.0
        self._table[key] = b
        return b

    cpdef double hit(self, object key, double now=-1.0, double cost=1.0) except -1.0:
        """Take ``cost`` tokens from ``key``'s bucket.

        Returns:
            0.0 when allowed, else the seconds until a retry can succeed.
        """
        cdef PyObject* found
        cdef TokenBucket b
        cdef double wait
        if now < 0:
            now = now_monotonic()
        found = PyDict_GetItem(self._table, key)
        if found == NULL:
            b = self._make(key, now)
        else:
            b = <TokenBucket>found
        wait = b._hit(now, cost, self.ban)
        if wait > 0:
            self.limited += 1
        return wait

    cpdef Py_ssize_t sweep(self, double now=-1.0, Py_ssize_t limit=-1) except -1:
        """Examine up to ``limit`` entries (all when negative) from the front:
        drop the idle ones, move the others to the back. Returns how many were dropped."""
        cdef Py_ssize_t n = len(self._table)
        cdef Py_ssize_t dropped = 0
        cdef TokenBucket b
        table = self._table
        if now < 0:
            now = now_monotonic()
        if limit < 0 or limit > n:
            limit = n
        while limit > 0:
            limit -= 1
            key, b = table.popitem(False)
            if self._idle(b, now):
                dropped += 1
            else:
                table[key] = b
        self.evicted += dropped
        return dropped

    def get(self, key):
        """The bucket kept for ``key``, or None."""
        return self._table.get(key)

    def __len__(self):
        return len(self._table)

    def __contains__(self, key):
        return key in self._table

    def clear(self):
        self._table.clear()

    def __repr__(self):
        return f"<BucketTable {len(self._table)}/{self.max_entries} {self.capacity:g} per {self.idle_after:g}s>"


cdef class MessageGate:
    """The per-message check of one connection: its own bucket and, when the
    connection has a user, that user's bucket in a table shared by all of the
    user's connections.

    Args:
        bucket: the connection's bucket, or None.
        ban: the connection bucket's ban period in seconds (0: none).
        users: the per-user table, or None.
        user_key: this connection's key in ``users`` (None: no per-user limit).
    """

    def __init__(self, TokenBucket bucket=None, double ban=0.0, BucketTable users=None, object user_key=None):
        self.bucket = bucket
        self.ban = ban
        self.users = users if user_key is not None else None
        self.user_key = user_key
        self.last_notice = -1e9

    cpdef double check(self) except -1.0:
        """0.0 when the next message is allowed, else the seconds until one would be."""
        cdef double now = now_monotonic()
        cdef double wait = 0.0
        if self.bucket is not None:
            wait = self.bucket._hit(now, 1.0, self.ban)
            if wait > 0:
                self.limited += 1
                return wait
        if self.users is not None:
            wait = self.users.hit(self.user_key, now, 1.0)
            if wait > 0:
                self.limited += 1
        return wait

    cpdef bint notice_due(self, double interval):
        """True at most once per ``interval`` seconds (error replies and log lines are throttled)."""
        cdef double now = now_monotonic()
        if now - self.last_notice >= interval:
            self.last_notice = now
            return True
        return False


cdef extern from "<arpa/inet.h>" nogil:
    int c_inet_pton "inet_pton"(int af, const char* src, void* dst)

cdef extern from "<sys/socket.h>" nogil:
    int AF_INET
    int AF_INET6


cdef inline uint64_t _be64(const unsigned char* p) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(8):
        v = (v << 8) | p[i]
    return v


cdef bint _parse_addr(str ip, Addr* a) noexcept:
    """Parse a plain IPv4/IPv6 address (IPv4-mapped IPv6 becomes IPv4); False when it is not one."""
    cdef bytes b
    cdef unsigned char buf[16]
    if ip is None or len(ip) > 45 or not ip.isascii():
        return False
    b = ip.encode("ascii")
    if c_inet_pton(AF_INET, b, buf) == 1:
        a.v6 = False
        a.a4 = (<uint32_t>buf[0] << 24) | (<uint32_t>buf[1] << 16) | (<uint32_t>buf[2] << 8) | buf[3]
        return True
    if c_inet_pton(AF_INET6, b, buf) == 1:
        a.hi = _be64(buf)
        a.lo = _be64(buf + 8)
        if a.hi == 0 and (a.lo >> 32) == 0xFFFF:
            a.v6 = False
            a.a4 = <uint32_t>(a.lo & 0xFFFFFFFF)
        else:
            a.v6 = True
        return True
    return False


cdef class CidrSet:
    """IPv4 and IPv6 networks, matched in C: ``ip in cidrs`` parses the address
    with ``inet_pton`` and compares masked integers, with no Python object per check.

    Args:
        networks: ``(version, network_int, prefix_len)`` triples (see fastws.guards.ip).
    """

    def __init__(self, networks=()):
        cdef int version, prefix
        self._n4 = 0
        self._n6 = 0
        v4 = []
        v6 = []
        for version, net, prefix in networks:
            if version == 4:
                v4.append((net, prefix))
            else:
                v6.append((net, prefix))
        self._v4 = bytearray(8 * len(v4))      # (net, mask) uint32 pairs
        self._v6 = bytearray(32 * len(v6))     # (hi, lo, mask_hi, mask_lo) uint64 quads
        cdef uint32_t* p4 = <uint32_t*><char*>self._v4
        cdef uint64_t* p6 = <uint64_t*><char*>self._v6
        cdef uint32_t m4
        cdef uint64_t mh, ml
        cdef uint64_t ALL64 = <uint64_t>0xFFFFFFFFFFFFFFFFULL
        for net, prefix in v4:
            m4 = 0 if prefix == 0 else <uint32_t>((<uint64_t>0xFFFFFFFF) << (32 - prefix))
            p4[2 * self._n4] = <uint32_t>net & m4
            p4[2 * self._n4 + 1] = m4
            self._n4 += 1
        for net, prefix in v6:
            mh = ALL64 if prefix >= 64 else (0 if prefix == 0 else ALL64 << (64 - prefix))
            ml = 0 if prefix <= 64 else (ALL64 if prefix == 128 else ALL64 << (128 - prefix))
            p6[4 * self._n6] = <uint64_t>(net >> 64) & mh
            p6[4 * self._n6 + 1] = <uint64_t>(net & 0xFFFFFFFFFFFFFFFF) & ml
            p6[4 * self._n6 + 2] = mh
            p6[4 * self._n6 + 3] = ml
            self._n6 += 1

    cpdef bint contains(self, str ip):
        """True when ``ip`` (a plain address as a socket reports it) is in a network;
        False for anything that does not parse. IPv4-mapped IPv6 counts as IPv4."""
        cdef Addr a
        if not _parse_addr(ip, &a):
            return False
        return self._has(&a)

    cdef bint _has(self, const Addr* a) noexcept:
        cdef Py_ssize_t i
        cdef uint32_t* p4 = <uint32_t*><char*>self._v4
        cdef uint64_t* p6 = <uint64_t*><char*>self._v6
        if a.v6:
            for i in range(self._n6):
                if (a.hi & p6[4 * i + 2]) == p6[4 * i] and (a.lo & p6[4 * i + 3]) == p6[4 * i + 1]:
                    return True
            return False
        for i in range(self._n4):
            if (a.a4 & p4[2 * i + 1]) == p4[2 * i]:
                return True
        return False

    def __len__(self):
        return self._n4 + self._n6


# ---------------------------------------------------------------- firewall rules

cdef bint _glob(str pat, str s) noexcept:
    """fnmatch-style match of the whole of ``s`` with ``*`` (any run, '/' included) and ``?``
    (one character); ``pat`` has no ``[``. Greedy with backtracking to the last ``*``: O(len(s))
    for one star, O(len(pat) * len(s)) at worst."""
    cdef Py_ssize_t np = len(pat), ns = len(s)
    cdef Py_ssize_t i = 0, j = 0, star = -1, mark = 0
    cdef Py_UCS4 c, t
    while j < ns:
        if i < np:
            c = pat[i]
            if c == u'*':
                star = i
                i += 1
                mark = j
                continue
            t = s[j]
            if c == u'?' or c == t:
                i += 1
                j += 1
                continue
        if star < 0:
            return False
        i = star + 1
        mark += 1
        j = mark
    while i < np:
        c = pat[i]
        if c != u'*':
            break
        i += 1
    return i == np


cdef class Globs:
    """Shell-style patterns (``fnmatch``: ``*``, ``?``, ``[seq]``), one of which must match the
    whole text; case-sensitive. ``*``/``?`` patterns are matched in C, patterns with ``[`` by the
    ``re`` translation of :func:`fnmatch.translate`.

    Args:
        patterns: the patterns.
    """

    def __init__(self, patterns):
        import fnmatch
        import re
        self.simple = []
        sets = []
        for p in patterns:
            p = str(p)
            if "[" in p:
                sets.append(fnmatch.translate(p))
            else:
                self.simple.append(p)
        self.regex = re.compile("|".join(sets)) if sets else None

    cpdef bint match(self, str text):
        """True when one of the patterns matches all of ``text``."""
        cdef str p
        for p in self.simple:
            if _glob(p, text):
                return True
        return self.regex is not None and self.regex.match(text) is not None


cdef class _Rule:
    cdef int action            # 1 allow, 0 deny
    cdef CidrSet nets          # None: any IP
    cdef Globs path            # None: any path
    cdef list headers          # [(lower-case name, Globs)]


cdef class RuleSet:
    """Firewall rules in order, first match wins, evaluated in one C loop: the client IP is
    parsed once, CIDRs compared as integers, globs matched in C.

    Args:
        rules: ``(action, cidrs, paths, headers)`` tuples: ``action`` "allow" or "deny";
            ``cidrs`` a :class:`CidrSet` or None; ``paths`` a list of globs or None;
            ``headers`` ``[(name, glob)]`` (name case-insensitive, glob case-sensitive).
        default: "allow" or "deny" when no rule matches.
    """

    def __init__(self, rules, str default="allow"):
        cdef _Rule r
        self._rules = []
        for action, cidrs, paths, headers in rules:
            r = _Rule.__new__(_Rule)
            r.action = 1 if action == "allow" else 0
            r.nets = cidrs
            r.path = Globs(paths) if paths else None
            r.headers = [(str(k).lower(), Globs([v])) for k, v in headers]
            self._rules.append(r)
        self.default = 1 if default == "allow" else 0

    cpdef bint allows(self, str ip, str path, dict headers):
        """True when the first matching rule (else the default) allows the request. ``headers``
        maps lower-case names to lists of values (``fastws.Headers`` index)."""
        cdef Addr a
        cdef bint have_addr = _parse_addr(ip, &a)
        cdef _Rule r
        cdef PyObject* found
        cdef bint ok
        cdef Globs g
        for r in self._rules:
            if r.nets is not None and (not have_addr or not r.nets._has(&a)):
                continue
            if r.path is not None and not r.path.match(path):
                continue
            ok = True
            for name, g in r.headers:
                found = PyDict_GetItem(headers, name)
                if found == NULL:
                    ok = False
                    break
                ok = False
                for v in <object>found:
                    if g.match(v):
                        ok = True
                        break
                if not ok:
                    break
            if ok:
                return r.action == 1
        return self.default == 1
