# cython: language_level=3
"""C-level contract of the endpoint: settings and shared state of many connections (see _endpoint.pyx)."""

from fastws._frames cimport FrameWriter
from fastws._message cimport ReadTarget
from fastws._stats cimport Stats
from fastws._transport cimport ReadSink


cdef enum State:
    HANDSHAKE = 0
    OPEN = 1
    CLOSING = 2
    CLOSED = 3


cdef class Endpoint


cdef class ConnectionBase(ReadSink):
    """What an Endpoint needs of its connections (Connection implements it)."""
    cdef:
        readonly Endpoint endpoint
        object _loop
        int _state
    cdef int _check_timers(self, double now) except -1
    cdef int _flush_bq(self) except -1


cdef class Endpoint:
    cdef:
        public bint is_client
        public Py_ssize_t max_size
        public Py_ssize_t max_queue
        public Py_ssize_t write_limit
        public Py_ssize_t max_write_buffer
        public double ping_interval
        public double ping_timeout
        public double idle_timeout
        public double close_timeout
        public double handshake_timeout
        public Py_ssize_t max_header_size
        public object compression          #: CompressionOptions or None
        public object accept               #: server: callable(conn, request) -> ConnectionSpec
        public object loop
        public set connections
        public bint draining
        public bint stats_enabled          # latency and duration histograms (counters are always kept)
        FrameWriter _cork               # frames written while a read is dispatched leave in one send
        FrameWriter _direct_writer      # frames written outside a dispatch (never left holding data)
        ReadTarget _target              # the buffer exporter handed to the loop's transports
        object _sweep_handle
        double _sweep_every
        long _last_trim
        list _dirty                     # connections with broadcast frames waiting for the end of the turn
        bint _flush_scheduled
        Stats _st

    cdef void _register(self, ConnectionBase conn)
    cdef void _unregister(self, ConnectionBase conn)
    cdef void _flush_later(self, ConnectionBase conn)
