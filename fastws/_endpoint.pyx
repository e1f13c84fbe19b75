# cython: language_level=3
"""The endpoint: settings and shared state of the connections of one server.

Theory of operation
-------------------
Everything a connection would otherwise carry for itself, but that is the same
for all of a server's connections (or for all client connections of one loop),
lives once in an :class:`Endpoint`:

1. Settings: limits (``max_size``, ``max_queue``, ``write_limit``,
   ``max_write_buffer``, ``max_header_size``), timeouts, the default
   compression and the accept hook. Plain attributes, read by the connections
   at C level.
2. Shared buffers: the *cork* (a FrameWriter that collects every frame written
   while a read is being dispatched, so an echo and a pong leave in one send),
   a second writer for frames sent outside a dispatch, and the buffer exporter
   handed to the loop's transports. One of each per endpoint, not per
   connection, keeps an idle connection small; they are never held across a
   loop turn.
3. The timer sweep: no connection owns a timer handle. One ``call_later`` per
   endpoint runs ``_sweep`` every quarter of the shortest timeout (at most
   every second) and asks each connection to check its own deadlines
   (handshake, keepalive, idle, closing); it stops when the last connection
   leaves and starts again with the next one. Every ~10 s it also trims the
   frame engine's buffer pool.
4. The end-of-turn flush: broadcast frames for a connection are queued on the
   connection, and the connection is put on the endpoint's dirty list; one
   ``call_soon`` per turn writes every dirty connection's frames, so all that
   was broadcast to a connection in one turn leaves in one send.
5. Counters: the ``Stats`` struct (fastws/_stats.pxd) that the hot path adds
   to, turned into a dict by :meth:`Endpoint.stats` at scrape time.
"""

import logging

from libc.string cimport memset

from fastws._clock cimport now as _now
from fastws._frames cimport FrameWriter
from fastws._message cimport ReadTarget
from fastws._stats cimport Stats, snapshot
from fastws._frames import pool_trim

cdef object logger = logging.getLogger("fastws")


cdef class ConnectionBase(ReadSink):
    # The contract an Endpoint drives; Connection overrides both methods.

    cdef int _check_timers(self, double now) except -1:
        return 0

    cdef int _flush_bq(self) except -1:
        return 0


cdef class Endpoint:
    """Settings and shared state of every connection of one server (or of the
    client connections of one event loop): limits, timeouts, the cork
    writer, the scratch exporter, the live connections and the sweep timer.

    Attributes are plain Python-visible settings; see :func:`fastws.serve`.
    """

    def __init__(self, bint is_client=False, *, Py_ssize_t max_size=1 << 20, Py_ssize_t max_queue=32,
                 Py_ssize_t write_limit=65536, Py_ssize_t max_write_buffer=16 << 20,
                 double ping_interval=20.0, double ping_timeout=20.0, double idle_timeout=0.0,
                 double close_timeout=10.0, double handshake_timeout=10.0,
                 Py_ssize_t max_header_size=16384, object compression=None, object accept=None,
                 object loop=None):
        self.is_client = is_client
        self.max_size = max_size
        self.max_queue = max_queue
        self.write_limit = write_limit
        self.max_write_buffer = max_write_buffer
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.idle_timeout = idle_timeout
        self.close_timeout = close_timeout
        self.handshake_timeout = handshake_timeout
        self.max_header_size = max_header_size
        self.compression = compression
        self.accept = accept
        self.loop = loop
        self.connections = set()
        self.draining = False
        self._cork = FrameWriter(is_client)
        self._direct_writer = FrameWriter(is_client)
        self._target = ReadTarget()
        self._sweep_handle = None
        self._dirty = []
        memset(&self._st, 0, sizeof(Stats))
        self.stats_enabled = True
        timeouts = [t for t in (ping_interval, ping_timeout, idle_timeout, close_timeout, handshake_timeout) if t > 0]
        self._sweep_every = min([1.0] + [t / 4 for t in timeouts])

    cdef void _register(self, ConnectionBase conn):
        self.connections.add(conn)
        if self._sweep_handle is None and self.loop is not None:
            self._sweep_handle = self.loop.call_later(self._sweep_every, self._sweep)

    cdef void _unregister(self, ConnectionBase conn):
        self.connections.discard(conn)

    def _sweep(self):
        """Check every connection's deadlines (runs every ``_sweep_every`` s)."""
        cdef double now = _now()
        cdef ConnectionBase conn
        self._sweep_handle = None
        for conn in list(self.connections):
            try:
                conn._check_timers(now)
            except Exception:  # never let one connection stop the sweep
                logger.exception("fastws: error in a connection timer")
        if self.connections:
            self._sweep_handle = self.loop.call_later(self._sweep_every, self._sweep)
        now_s = <long>now
        if now_s != self._last_trim and now_s % 10 == 0:
            # every ~10 s: free pooled message buffers that sat unused since the last check
            self._last_trim = now_s
            pool_trim(True)

    def count_http_request(self):
        """Count one plain HTTP request answered outside the engine (an ASGI app's http scope)."""
        self._st.http_requests += 1

    def stats(self):
        """A snapshot of this endpoint's counters and histograms (a dict of plain numbers)."""
        out = snapshot(&self._st)
        out["active"] = sum(1 for c in self.connections if (<ConnectionBase>c)._state == OPEN)
        return out

    cdef void _flush_later(self, ConnectionBase conn):
        """``conn`` queued its first broadcast frame of this turn: write it at the end of the turn."""
        self._dirty.append(conn)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            conn._loop.call_soon(self._flush)

    def _flush(self):
        """End of the loop turn: every connection that got broadcast frames writes them in one send."""
        cdef ConnectionBase conn
        cdef list dirty = self._dirty
        self._flush_scheduled = False
        if not dirty:
            return
        self._dirty = []
        for conn in dirty:
            try:
                conn._flush_bq()
            except Exception as exc:  # a bug, not a peer's fault; keep flushing the others
                logger.error("fastws: error while flushing a broadcast", exc_info=exc)

    def stop(self):
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
