"""The hot path of ``fastws bench --mode echo`` (one message in flight per connection).

A listener per connection, called by the engine for every reply: it takes the time,
appends the round trip to the run's latency array, checks the reply's length and sends
the next message. In C this costs about 2 µs less per message than the same listener
in Python, which matters when the load generator's own core is the limit.
"""

from cpython.array cimport array, resize_smart


cdef extern from "<time.h>" nogil:
    cdef struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec* ts)
    int CLOCK_MONOTONIC


cdef inline double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


def now():
    """The clock of the round trips (CLOCK_MONOTONIC, the clock of ``time.perf_counter`` on Linux)."""
    return _now()


cdef class EchoConn:
    """Closed-loop echo listener. ``left`` messages are still to send; ``n`` replies came back,
    ``bad`` of them with the wrong length; ``t`` is when the message in flight was sent."""

    cdef public object load, conn, payload, sends
    cdef public bint finished_ok
    cdef public long long left, n, bad
    cdef public Py_ssize_t size
    cdef public double t
    cdef array _lat

    def __init__(self, load, array latencies not None):
        self.load = load
        self.conn = None
        self.sends = None
        self._lat = latencies
        self.finished_ok = False

    def on_message(self, ws, msg):
        cdef double t = _now()
        cdef array lat = self._lat
        cdef Py_ssize_t k = len(lat)
        resize_smart(lat, k + 1)
        lat.data.as_doubles[k] = t - self.t
        self.n += 1
        if len(msg) != self.size:
            self.bad += 1
        if self.left:
            self.left -= 1
            self.t = t
            ws.send(self.payload)
        else:
            self.finished_ok = True

    def on_close(self, ws, code, reason):
        self.load.on_conn_closed(self, code, reason)
