"""The per-message listeners of ``fastws bench``, in C.

- :class:`EchoConn` (echo, one message in flight per connection): takes the time, appends
  the round trip to the run's latency array, checks the reply's length, sends the next
  message. About 2 µs less per message than the same listener in Python, which matters
  when the load generator's own core is the limit.
- :class:`FanSub` (fanout subscriber): counts the delivery and, when this subscriber is the
  last one to get publish n, tells the run (``load.completed(n)``): O(1) per delivery.
"""

from cpython.array cimport array, resize_smart
from cpython.buffer cimport PyBUF_SIMPLE, PyObject_GetBuffer, PyBuffer_Release


from fastws._clock cimport now as _now


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


cdef class FanState:
    """What a run's subscribers share: ``reached[n]`` counts the subscribers that have
    publish n (an ``array('I')`` the run grows in place), ``nsubs`` of them in all."""

    cdef public object load
    cdef public array reached
    cdef public long long nsubs, max_pubs
    cdef public Py_ssize_t size

    def __init__(self, load, array reached not None, long long max_pubs, Py_ssize_t size):
        self.load = load
        self.reached = reached
        self.max_pubs = max_pubs
        self.size = size
        self.nsubs = 0


cdef class FanSub:
    """A fan-out subscriber: ``n`` deliveries so far (publishes arrive in order, so the n-th
    delivery is publish n); ``verify`` checks each delivery's length and ``P`` marker."""

    cdef public object conn
    cdef public bint finished_ok, verify
    cdef public long long n
    cdef FanState _st

    def __init__(self, FanState state not None):
        self._st = state
        self.conn = None
        self.finished_ok = False
        self.verify = False
        self.n = 0

    @property
    def load(self):
        return self._st.load

    def on_message(self, ws, msg):
        cdef FanState st = self._st
        cdef long long n = self.n
        cdef Py_buffer view
        cdef bint ok
        cdef unsigned int c
        self.n = n + 1
        if self.verify:
            PyObject_GetBuffer(msg, &view, PyBUF_SIMPLE)
            ok = view.len == st.size and view.len > 0 and (<unsigned char*>view.buf)[0] == 0x50
            PyBuffer_Release(&view)
            if not ok:
                st.load.tally.error("fan-out delivery with the wrong length or marker")
        if n >= len(st.reached):
            if n >= st.max_pubs:
                st.load.tally.error("more deliveries than publishes")
                return
            st.load._grow(n)
        c = st.reached.data.as_uints[n] + 1
        st.reached.data.as_uints[n] = c
        if c == st.nsubs:
            st.load.completed(n)

    def on_close(self, ws, code, reason):
        self._st.load.on_conn_closed(self, code, reason)
