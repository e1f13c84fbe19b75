# C-level contract of the rate limiter (see _limits.pyx).

from libc.stdint cimport uint32_t, uint64_t

cdef double now_monotonic() noexcept nogil

cdef class TokenBucket:
    cdef public double rate          # tokens added per second
    cdef public double capacity      # burst size
    cdef public double tokens
    cdef public double last          # when tokens was last brought up to date
    cdef public double banned_until  # 0: not banned

    cdef double _hit(self, double now, double cost, double ban) noexcept

cdef class BucketTable:
    cdef readonly double rate
    cdef readonly double capacity
    cdef readonly double ban
    cdef readonly double idle_after
    cdef readonly Py_ssize_t max_entries
    cdef readonly Py_ssize_t evicted
    cdef readonly Py_ssize_t forced
    cdef readonly Py_ssize_t limited
    cdef object _table               #: collections.OrderedDict key -> TokenBucket

    cdef bint _idle(self, TokenBucket b, double now) noexcept
    cdef TokenBucket _make(self, object key, double now)
    cpdef double hit(self, object key, double now=*, double cost=*) except -1.0
    cpdef Py_ssize_t sweep(self, double now=*, Py_ssize_t limit=*) except -1

cdef class MessageGate:
    cdef readonly TokenBucket bucket
    cdef readonly double ban
    cdef readonly BucketTable users
    cdef readonly object user_key
    cdef readonly Py_ssize_t limited
    cdef double last_notice

    cpdef double check(self) except -1.0
    cpdef bint notice_due(self, double interval)

ctypedef struct Addr:
    bint v6
    uint32_t a4
    uint64_t hi
    uint64_t lo

cdef bint _parse_addr(str ip, Addr* a) noexcept

cdef class CidrSet:
    cdef bytearray _v4
    cdef bytearray _v6
    cdef Py_ssize_t _n4
    cdef Py_ssize_t _n6

    cpdef bint contains(self, str ip)
    cdef bint _has(self, const Addr* a) noexcept

cdef class Globs:
    cdef readonly list simple        #: patterns matched in C (no '[')
    cdef readonly object regex       #: compiled re for the patterns with '[' (or None)

    cpdef bint match(self, str text)

cdef class RuleSet:
    cdef list _rules
    cdef readonly int default

    cpdef bint allows(self, str ip, str path, dict headers)
