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
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

__all__ = ["TokenBucket", "BucketTable", "MessageGate", "monotonic"]

# how many front entries each new key examines (amortised eviction)
cdef enum:
    SWEEP_PER_INSERT = 4


cdef double now_monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


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
