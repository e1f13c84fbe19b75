# cython: language_level=3
"""The one clock of the engine: CLOCK_MONOTONIC in seconds, inlined where it is read.

Timeouts, keepalive, latency histograms, token buckets and the benchmark listeners all read
this clock, so their figures can be compared with each other (it is the clock of
``time.monotonic()`` and ``time.perf_counter()`` on Linux).
"""

from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC, CLOCK_REALTIME


cdef inline double now() noexcept nogil:
    """Seconds on the monotonic clock."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline double wall() noexcept nogil:
    """Seconds since the epoch (``time.time()``)."""
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9
