# cython: language_level=3
"""The I/O shell: one asyncio BufferedProtocol per WebSocket connection.

Theory of operation
-------------------
A :class:`Connection` is the protocol the event loop drives *and* the object
the application talks to (``ws``): one object per connection keeps an idle
connection small.

States: HANDSHAKE -> OPEN -> CLOSING -> CLOSED.

1. Reads land in a per-thread scratch buffer (``get_buffer`` returns the
   endpoint's exporter pointing at it), or, while a large payload is being
   received, straight into that message's own buffer. An idle connection
   holds no read buffer.
2. ``buffer_updated`` runs the FrameParser at C level and dispatches each
   event before reading on. Frames written while dispatching (echoes,
   pongs) are corked in the endpoint's FrameWriter and leave in one
   ``transport.write`` when the read has been processed.
3. Two ways to consume messages share this engine: a *listener* (callbacks
   ``on_message(ws, msg)`` with a zero-copy :class:`Message`) or the *queue*
   used by ``recv()`` / ``async for``. In queue mode a CLOSE or a protocol
   error that arrives behind queued messages is queued too, so the
   application sees (and answers) every message sent before it.
4. Errors map to close codes in ``_fail`` only; a peer's misbehaviour is
   logged at debug level, never as a traceback.
5. Timers (handshake timeout, keepalive pings, idle timeout, closing
   timeout) are checked by one periodic sweep per endpoint, so a
   connection carries no timer handles.
"""

cimport cython
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE, PyBytes_CheckExact
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport uint8_t, uint32_t
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy, memset, memcmp
from posix.time cimport CLOCK_REALTIME
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

from fastws._frames cimport (
    FrameParser, FrameWriter, Deflate, Opcode,
    EV_NEED_MORE, EV_MESSAGE, EV_PING, EV_PONG, EV_CLOSE,
    fastws_scratch, FASTWS_SCRATCH_SIZE, build_frame_c, write_header, valid_close_code, recycle_buffer,
)
from cpython.ref cimport Py_REFCNT
from fastws._limits cimport MessageGate
from fastws._frames import pool_trim

import asyncio
import collections
import logging
import os

from fastws.exceptions import (
    BufferFull,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    HandshakeError,
    InvalidHandshake,
    ProtocolError,
)
from fastws import handshake as _hs

cdef object logger = logging.getLogger("fastws")
cdef object _deque = collections.deque
cdef object _Future = asyncio.Future
cdef object _ProtocolError = ProtocolError

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL


cdef char* _FMT_B = b"B"


cdef enum State:
    HANDSHAKE = 0
    OPEN = 1
    CLOSING = 2
    CLOSED = 3

cdef enum:
    READ_QUEUE = 1          # recv() queue full
    READ_WRITE = 2          # the peer does not read what we write
    READ_PENDING = 4        # a CLOSE/failure waits behind queued messages
    READ_ACCEPT = 8         # an asynchronous accept hook is running
    READ_APP = 16           # the application paused reading (ws.pause_reading())

cdef enum:
    LARGE_SEND = 65536      # payloads at least this big are written without copying (writev)
    WRITE_SLICE = 262144    # largest single send of a big payload
    READ_BURST = 8          # reads at most per readiness callback


cdef inline double _now() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef bytes _truncate_utf8(str text, Py_ssize_t limit):
    """UTF-8 of ``text`` cut to at most ``limit`` bytes without splitting a character."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return data
    return data[:limit].decode("utf-8", "ignore").encode("utf-8")


def monotonic():
    """The clock the timeouts use (seconds, CLOCK_MONOTONIC)."""
    return _now()


# ---------------------------------------------------------------- awaitables

cdef class _Ready:
    """What ``send()`` returns when nothing needs waiting for: awaiting it
    finishes at once without allocating anything."""
    def __await__(self):
        return _EXHAUSTED

cdef object _EXHAUSTED = iter(())
cdef _Ready READY = _Ready()


# ---------------------------------------------------------------- messages

@cython.freelist(32)
@cython.final
cdef class Message:
    """One received message, handed to a listener's ``on_message``.

    It supports the buffer protocol (``memoryview(msg)``, ``bytes(msg)``)
    and ``ws.send(msg)`` echoes it with its own opcode.

    .. warning:: Zero-copy. The payload may live in the connection's read
       buffer: it is valid only during the ``on_message`` call. Call
       ``msg.bytes()`` / ``msg.text()`` to keep it; a Message kept past the
       call raises ValueError, and a memoryview kept past it sees
       overwritten data.
    """
    cdef:
        const uint8_t* _ptr
        Py_ssize_t _len
        readonly int opcode
        object _owner           # bytes holding the payload, or None for a view
        bint _valid
        Py_ssize_t _shape[1]

    def __init__(self):
        raise TypeError("Message objects are created by fastws")

    @staticmethod
    cdef Message new(int opcode, const uint8_t* ptr, Py_ssize_t n, object owner):
        cdef Message m = Message.__new__(Message)
        m.opcode = opcode
        m._ptr = ptr
        m._len = n
        m._owner = owner
        m._valid = True
        return m

    cdef inline void _invalidate(self):
        if self._owner is None:
            self._valid = False
            self._ptr = NULL
            self._len = 0

    cdef inline int _check(self) except -1:
        if not self._valid:
            raise ValueError("Message used after on_message returned; copy it with msg.bytes() or msg.text()")
        return 0

    @property
    def is_text(self):
        return self.opcode == 1

    @property
    def is_binary(self):
        return self.opcode == 2

    def __len__(self):
        self._check()
        return self._len

    def bytes(self):
        """The payload as bytes (a copy unless the message already owns bytes)."""
        self._check()
        if self._owner is not None and PyBytes_CheckExact(self._owner) and PyBytes_GET_SIZE(self._owner) == self._len:
            return self._owner
        return PyBytes_FromStringAndSize(<char*>self._ptr, self._len)

    def text(self):
        """The payload decoded as UTF-8 (TEXT messages are already validated)."""
        self._check()
        return PyUnicode_DecodeUTF8(<char*>self._ptr, self._len, "strict")

    def data(self):
        """``text()`` for a TEXT message, ``bytes()`` for a BINARY one."""
        return self.text() if self.opcode == 1 else self.bytes()

    def __getbuffer__(self, Py_buffer* view, int flags):
        self._check()
        if flags & 0x0001:  # PyBUF_WRITABLE
            raise BufferError("Message payloads are read-only")
        self._shape[0] = self._len
        view.buf = <void*>self._ptr
        view.obj = self
        view.len = self._len
        view.readonly = 1
        view.itemsize = 1
        if flags & 0x0004:
            view.format = _FMT_B
        else:
            view.format = NULL
        view.ndim = 1
        view.shape = self._shape if flags & 0x0008 else NULL
        view.strides = NULL
        view.suboffsets = NULL
        view.internal = NULL

    def __releasebuffer__(self, Py_buffer* view):
        pass

    def __repr__(self):
        kind = "TEXT" if self.opcode == 1 else "BINARY"
        return f"<Message {kind} {self._len} bytes>" if self._valid else "<Message (expired)>"


cdef class _Pending:
    """A CLOSE or a failure waiting in the receive queue behind messages."""
    cdef int code
    cdef str reason
    cdef bint failure


# ---------------------------------------------------------------- reader

@cython.final
cdef class _ReadTarget:
    """Buffer exporter handed to the event loop by ``get_buffer``; it points
    at the scratch buffer or at a large message's own buffer."""
    cdef uint8_t* ptr
    cdef Py_ssize_t size
    cdef Py_ssize_t _shape[1]

    def __len__(self):
        return self.size

    def __getitem__(self, key):
        # asyncio's TLS transport slices the buffer it is given
        return memoryview(self)[key]

    def __getbuffer__(self, Py_buffer* view, int flags):
        self._shape[0] = self.size
        view.buf = <void*>self.ptr
        view.obj = self
        view.len = self.size
        view.readonly = 0
        view.itemsize = 1
        if flags & 0x0004:
            view.format = _FMT_B
        else:
            view.format = NULL
        view.ndim = 1
        view.shape = self._shape if flags & 0x0008 else NULL
        view.strides = NULL
        view.suboffsets = NULL
        view.internal = NULL

    def __releasebuffer__(self, Py_buffer* view):
        pass


# ---------------------------------------------------------------- endpoint

# ---------------------------------------------------------------- statistics
#
# Hot-path counters live in a C struct inside each Endpoint: a few integer
# additions per message, no Python object. They are read at scrape time
# (Endpoint.stats()) by fastws.metrics; nothing here knows about Prometheus.

cdef enum:
    N_LAT = 14              # message latency buckets (+Inf is the last)
    N_DUR = 10              # connection duration buckets (+Inf is the last)
    N_CODES = 18            # close codes 1000..1015, 3000-4999 ("app"), other
    N_STATUS = 12           # refused-handshake statuses (see _STATUSES), other

cdef double[13] LAT_BOUNDS = [0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                              0.1, 0.5, 1.0]
cdef double[9] DUR_BOUNDS = [0.1, 1.0, 5.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0]
_STATUSES = (400, 401, 403, 404, 405, 426, 429, 431, 500, 502, 503)
cdef int[11] _STATUS_C = [400, 401, 403, 404, 405, 426, 429, 431, 500, 502, 503]

ctypedef struct Stats:
    unsigned long long attempted        # WebSocket upgrade requests
    unsigned long long established      # opening handshakes completed
    unsigned long long failed           # upgrade requests that never reached OPEN
    unsigned long long closed           # established connections that ended
    unsigned long long http_requests    # plain HTTP requests answered
    unsigned long long msgs_in
    unsigned long long bytes_in
    unsigned long long msgs_out
    unsigned long long bytes_out
    unsigned long long errors           # connections failed for a protocol violation or an error
    unsigned long long auto_responses
    unsigned long long broadcasts
    unsigned long long broadcast_skipped
    unsigned long long backpressure_closes  # connections dropped for a peer that does not read (BufferFull)
    unsigned long long close_codes[N_CODES]
    unsigned long long statuses[N_STATUS]
    unsigned long long lat_buckets[N_LAT]
    double lat_sum
    unsigned long long dur_buckets[N_DUR]
    double dur_sum


cdef inline int _bucket(const double* bounds, int n, double v) noexcept nogil:
    cdef int i
    for i in range(n):
        if v <= bounds[i]:
            return i
    return n


cdef inline int _code_index(int code) noexcept nogil:
    if 1000 <= code <= 1015:
        return code - 1000
    if 3000 <= code <= 4999:
        return 16
    return 17


cdef list _cumulative(const unsigned long long* b, const double* bounds, int n):
    """Prometheus-style cumulative buckets: [(upper bound, count <= bound), ..., (inf, total)]."""
    cdef list out = []
    cdef unsigned long long acc = 0
    cdef int i
    for i in range(n + 1):
        acc += b[i]
        out.append((bounds[i] if i < n else float("inf"), acc))
    return out


cdef class Endpoint:
    """Settings and shared state of every connection of one server (or of the
    client connections of one event loop): limits, timeouts, the cork
    writer, the scratch exporter, the live connections and the sweep timer.

    Attributes are plain Python-visible settings; see :func:`fastws.serve`.
    """
    cdef public bint is_client
    cdef public Py_ssize_t max_size
    cdef public Py_ssize_t max_queue
    cdef public Py_ssize_t write_limit
    cdef public Py_ssize_t max_write_buffer
    cdef public double ping_interval
    cdef public double ping_timeout
    cdef public double idle_timeout
    cdef public double close_timeout
    cdef public double handshake_timeout
    cdef public Py_ssize_t max_header_size
    cdef public object compression          #: CompressionOptions or None
    cdef public object accept               #: server: callable(conn, request) -> ConnectionSpec
    cdef public object loop
    cdef public set connections
    cdef public bint draining
    cdef FrameWriter _cork
    cdef FrameWriter _direct_writer
    cdef _ReadTarget _target
    cdef object _sweep_handle
    cdef double _sweep_every
    cdef long _last_trim
    cdef list _dirty                # connections with broadcast frames waiting for the end of the turn
    cdef bint _flush_scheduled
    cdef Stats _st
    cdef public bint stats_enabled          # latency and duration histograms (counters are always kept)

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
        self._target = _ReadTarget()
        self._sweep_handle = None
        self._dirty = []
        memset(&self._st, 0, sizeof(Stats))
        self.stats_enabled = True
        timeouts = [t for t in (ping_interval, ping_timeout, idle_timeout, close_timeout, handshake_timeout) if t > 0]
        self._sweep_every = min([1.0] + [t / 4 for t in timeouts])

    cdef void _register(self, Connection conn):
        self.connections.add(conn)
        if self._sweep_handle is None and self.loop is not None:
            self._sweep_handle = self.loop.call_later(self._sweep_every, self._sweep)

    cdef void _unregister(self, Connection conn):
        self.connections.discard(conn)

    def _sweep(self):
        """Check every connection's deadlines (runs every ``_sweep_every`` s)."""
        cdef double now = _now()
        cdef Connection conn
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

    def stats(self):
        """A snapshot of this endpoint's counters and histograms (a dict of plain numbers)."""
        cdef Stats* st = &self._st
        cdef int i
        codes = {}
        for i in range(N_CODES):
            if st.close_codes[i]:
                codes[str(1000 + i) if i < 16 else ("app" if i == 16 else "other")] = st.close_codes[i]
        statuses = {}
        for i in range(N_STATUS):
            if st.statuses[i]:
                statuses[str(_STATUSES[i]) if i < N_STATUS - 1 else "other"] = st.statuses[i]
        lat_count = 0
        for i in range(N_LAT):
            lat_count += st.lat_buckets[i]
        dur_count = 0
        for i in range(N_DUR):
            dur_count += st.dur_buckets[i]
        return {
            "attempted": st.attempted,
            "established": st.established,
            "failed": st.failed,
            "closed": st.closed,
            "active": sum(1 for c in self.connections if (<Connection>c)._state == OPEN),
            "http_requests": st.http_requests,
            "messages_received": st.msgs_in,
            "bytes_received": st.bytes_in,
            "messages_sent": st.msgs_out,
            "bytes_sent": st.bytes_out,
            "errors": st.errors,
            "auto_responses": st.auto_responses,
            "broadcasts": st.broadcasts,
            "broadcast_skipped": st.broadcast_skipped,
            "backpressure_closes": st.backpressure_closes,
            "close_codes": codes,
            "refused": statuses,
            "latency": {"buckets": _cumulative(st.lat_buckets, LAT_BOUNDS, N_LAT - 1),
                        "sum": st.lat_sum, "count": lat_count},
            "duration": {"buckets": _cumulative(st.dur_buckets, DUR_BOUNDS, N_DUR - 1),
                         "sum": st.dur_sum, "count": dur_count},
        }

    cdef inline void _latency(self, double seconds) noexcept:
        self._st.lat_buckets[_bucket(LAT_BOUNDS, N_LAT - 1, seconds)] += 1
        self._st.lat_sum += seconds

    cdef void _refused(self, int status) noexcept:
        cdef int i
        for i in range(N_STATUS - 1):
            if _STATUS_C[i] == status:
                self._st.statuses[i] += 1
                return
        self._st.statuses[N_STATUS - 1] += 1

    def _flush(self):
        """End of the loop turn: every connection that got broadcast frames writes them in one send."""
        cdef Connection conn
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


# ---------------------------------------------------------------- connection

cdef class _Base:
    pass


cdef class SocketTransport


# ---------------------------------------------------------------- socket transport

cdef extern from "<errno.h>":
    int errno
    enum: EAGAIN, EWOULDBLOCK, EINTR

cdef extern from "<sys/socket.h>":
    ssize_t c_recv "recv"(int fd, void* buf, size_t n, int flags) nogil
    ssize_t c_send "send"(int fd, const void* buf, size_t n, int flags) nogil
    int c_shutdown "shutdown"(int fd, int how) nogil
    enum: SHUT_WR

cdef extern from "<sys/uio.h>":
    struct iovec:
        void* iov_base
        size_t iov_len

cdef extern from "<sys/socket.h>":
    struct msghdr:
        iovec* msg_iov
        size_t msg_iovlen
    ssize_t c_sendmsg "sendmsg"(int fd, const msghdr* msg, int flags) nogil

cdef extern from *:
    """
    #include <errno.h>
    #define FASTWS_WOULD_BLOCK(e) ((e) == EAGAIN || (e) == EWOULDBLOCK)
    #ifdef MSG_NOSIGNAL
    #define FASTWS_SEND_FLAGS MSG_NOSIGNAL
    #else
    #define FASTWS_SEND_FLAGS 0
    #endif
    """
    int FASTWS_SEND_FLAGS
    bint FASTWS_WOULD_BLOCK(int e)

cdef extern from *:
    """
    #include <sys/ioctl.h>
    /* Bytes waiting in a socket's receive queue (0 when unknown). */
    static Py_ssize_t fastws_queued(int fd) {
        int n = 0;
        if (ioctl(fd, FIONREAD, &n) < 0 || n < 0)
            return 0;
        return (Py_ssize_t)n;
    }
    """
    Py_ssize_t fastws_queued(int fd) nogil

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize


cdef inline void _recycle_unheld(object buf):
    """Pool ``buf`` when the caller's reference is the only one left (else just let it go).
    The argument is borrowed (a cdef function does not take a reference of its own)."""
    if buf is not None and Py_REFCNT(buf) == 1:
        recycle_buffer(buf)


@cython.final
cdef class SocketTransport:
    """An asyncio-compatible transport over a non-blocking TCP socket, driven by
    ``loop.add_reader`` / ``loop.add_writer``.

    The connection reads into its own buffers and writes from its cork with
    plain ``recv``/``send`` calls at C level: no bytes object, no Python call
    per frame, and an idle connection costs a socket and a poll handle.
    Used by :func:`fastws.serve` for plain TCP (TLS uses the loop's transports).
    """
    cdef:
        int _fd
        object _sock            #: socket.socket owning the fd
        object _loop
        Connection _conn
        object _peername
        list _wq                # bytes-like objects accepted but not yet sent, in order
        bytearray _wtail        # the last item of _wq when it is our own copy (extended in place)
        Py_ssize_t _wsize
        Py_ssize_t _high
        Py_ssize_t _low
        bint _reading
        bint _writing
        bint _closing
        bint _closed
        bint _eof_pending
        bint _paused
        bint _read_wanted

    def __init__(self):
        raise TypeError("SocketTransport objects are created by fastws")

    @staticmethod
    cdef SocketTransport new(object loop, object sock, object peername, Connection conn):
        cdef SocketTransport t = SocketTransport.__new__(SocketTransport)
        t._loop = loop
        t._sock = sock
        t._fd = sock.fileno()
        t._peername = peername
        t._conn = conn
        t._high = 65536
        t._low = 16384
        return t

    # ------------------------------------------------------------ reading

    cdef void _start_reading(self):
        if not self._reading and not self._closing and not self._closed:
            self._reading = True
            self._loop.add_reader(self._fd, self._on_readable)

    cdef void _stop_reading(self):
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def _on_readable(self):
        cdef uint8_t* p
        cdef Py_ssize_t size, n
        cdef Connection conn = self._conn
        if self._closed or not self._reading:
            return
        cdef int burst = 0
        cdef bint direct
        try:
            while True:
                size = conn._read_target(&p)
                while True:
                    n = c_recv(self._fd, p, size, 0)
                    if n > 0:
                        break
                    if n == 0:
                        conn._direct = False
                        self._on_eof()
                        return
                    if errno == EINTR:
                        continue
                    conn._direct = False
                    if FASTWS_WOULD_BLOCK(errno):
                        return
                    self._fatal(OSError(errno, os.strerror(errno)))
                    return
                direct = conn._direct
                conn._on_read(n)
                # A read that filled its target (a large message's header, then its
                # payload) is likely followed by more bytes already queued: read them
                # now, so a message that has fully arrived completes in this callback
                # and its buffer is reused while still in the CPU cache. Bounded, so
                # one busy peer cannot starve the others.
                burst += 1
                if n < size or burst >= READ_BURST or self._closed or not self._reading:
                    return
                if direct and conn._parser is not None and not conn._parser._in_payload:
                    return  # that read ended a large frame: its sender most likely waits for us now
        except Exception as exc:  # a bug, not the peer's fault: report it, drop the connection
            logger.error("fastws: error while reading from %s", self._peername, exc_info=exc)
            self._finish(exc)

    cdef void _on_eof(self):
        self._stop_reading()
        keep_open = False
        try:
            keep_open = self._conn.eof_received()
        except Exception as exc:
            logger.error("fastws: error in eof_received", exc_info=exc)
        if not keep_open:
            self.close()

    # ------------------------------------------------------------ writing

    cdef Py_ssize_t buffered(self):
        return self._wsize

    cdef int _send_now(self, iovec* iov, int cnt, Py_ssize_t* sent) except -2:
        """One send; ``sent`` is 0 when the socket would block. Returns -1 after a fatal error."""
        cdef Py_ssize_t r
        cdef msghdr msg
        while True:
            if cnt > 1:
                memset(&msg, 0, sizeof(msg))
                msg.msg_iov = iov
                msg.msg_iovlen = cnt
                r = c_sendmsg(self._fd, &msg, FASTWS_SEND_FLAGS)  # MSG_NOSIGNAL: no SIGPIPE
            else:
                r = c_send(self._fd, iov[0].iov_base, iov[0].iov_len, FASTWS_SEND_FLAGS)
            if r >= 0:
                sent[0] = r
                return 0
            if errno == EINTR:
                continue
            if FASTWS_WOULD_BLOCK(errno):
                sent[0] = 0
                return 0
            self._fatal(OSError(errno, os.strerror(errno)))
            return -1

    cdef int write_c(self, const uint8_t* p, Py_ssize_t n) except -1:
        """Send now what the kernel takes; copy the rest and send it when the socket is writable."""
        cdef iovec iov[1]
        cdef Py_ssize_t sent = 0
        if self._closed or self._closing or n <= 0:
            return 0
        if self._wsize == 0:
            iov[0].iov_base = <void*>p
            iov[0].iov_len = n
            if self._send_now(iov, 1, &sent) < 0 or sent == n:
                return 0
        self._queue_copy(p + sent, n - sent)
        self._queued()
        return 0

    cdef int write2_c(self, const uint8_t* a, Py_ssize_t na, const uint8_t* b, Py_ssize_t nb,
                      object owner=None) except -1:
        """Header and payload in one writev. What the kernel does not take is kept: by
        reference when ``owner`` is the immutable bytes holding ``b``, else copied."""
        cdef iovec iov[2]
        cdef Py_ssize_t sent = 0
        if self._closed or self._closing:
            return 0
        cdef Py_ssize_t chunk, more
        if self._wsize == 0:
            # in slices of at most WRITE_SLICE bytes: the kernel handles a few medium
            # sends more cheaply than one huge one
            iov[0].iov_base = <void*>a
            iov[0].iov_len = na
            iov[1].iov_base = <void*>b
            iov[1].iov_len = nb if nb <= WRITE_SLICE else WRITE_SLICE
            if self._send_now(iov, 2, &sent) < 0:
                return 0
            while sent == na + <Py_ssize_t>iov[1].iov_len and sent < na + nb:
                chunk = nb - (sent - na)
                if chunk > WRITE_SLICE:
                    chunk = WRITE_SLICE
                iov[1].iov_base = <void*>(b + (sent - na))
                iov[1].iov_len = chunk
                if self._send_now(&iov[1], 1, &more) < 0:
                    return 0
                sent += more
                if more < chunk:
                    break
                iov[1].iov_len = sent - na  # loop condition: all sent so far
            if sent == na + nb:
                return 0
        if sent < na:
            self._queue_copy(a + sent, na - sent)
            sent = 0
        else:
            sent -= na
        if owner is not None:
            off = <Py_ssize_t>(b - <const uint8_t*>PyBytes_AS_STRING(owner)) + sent
            self._queue_obj(memoryview(owner)[off:off + nb - sent], nb - sent)
        else:
            self._queue_copy(b + sent, nb - sent)
        self._queued()
        return 0

    cdef void _queue_copy(self, const uint8_t* p, Py_ssize_t n):
        cdef Py_ssize_t old
        if self._wq is None:
            self._wq = []
        if self._wtail is None:
            self._wtail = bytearray()
            self._wq.append(self._wtail)
        old = PyByteArray_GET_SIZE(self._wtail)
        PyByteArray_Resize(self._wtail, old + n)
        memcpy(PyByteArray_AS_STRING(self._wtail) + old, p, n)
        self._wsize += n

    cdef void _queue_obj(self, object obj, Py_ssize_t n):
        if self._wq is None:
            self._wq = []
        self._wq.append(obj)
        self._wtail = None
        self._wsize += n

    cdef void _queued(self):
        if not self._writing:
            self._writing = True
            self._loop.add_writer(self._fd, self._on_writable)
        if not self._paused and self._wsize > self._high:
            self._paused = True
            try:
                self._conn.pause_writing()
            except Exception as exc:
                logger.error("fastws: error in pause_writing", exc_info=exc)

    def _on_writable(self):
        cdef iovec iov[16]
        cdef Py_buffer views[16]
        cdef int cnt = 0, i
        cdef Py_ssize_t sent = 0, size
        cdef list wq = self._wq
        if self._closed or not wq:
            return
        try:
            while cnt < 16 and cnt < len(wq):
                PyObject_GetBuffer(wq[cnt], &views[cnt], PyBUF_SIMPLE)
                iov[cnt].iov_base = views[cnt].buf
                iov[cnt].iov_len = views[cnt].len
                cnt += 1
            if self._send_now(iov, cnt, &sent) < 0:
                return
        finally:
            for i in range(cnt):
                PyBuffer_Release(&views[i])
        self._wsize -= sent
        while sent and wq:
            item = wq[0]
            size = len(item)
            if sent >= size:
                sent -= size
                del wq[0]
                if item is self._wtail:
                    self._wtail = None
                elif type(item) is memoryview:
                    # a message buffer kept by reference: once sent, it may serve the next message
                    base = (<memoryview>item).obj
                    item = None
                    if PyBytes_CheckExact(base) and Py_REFCNT(base) == 1:
                        recycle_buffer(base)
                    base = None
            else:
                if type(item) is bytearray:
                    del item[:sent]
                else:
                    wq[0] = memoryview(item)[sent:]
                sent = 0
        if not wq:
            self._wsize = 0
            self._wtail = None
            self._writing = False
            self._loop.remove_writer(self._fd)
            if self._eof_pending:
                self._eof_pending = False
                c_shutdown(self._fd, SHUT_WR)
            if self._closing:
                self._finish(None)
                return
        if self._paused and self._wsize <= self._low:
            self._paused = False
            try:
                self._conn.resume_writing()
            except Exception as exc:
                logger.error("fastws: error in resume_writing", exc_info=exc)

    # ------------------------------------------------------------ closing

    cdef void _fatal(self, object exc):
        logger.debug("fastws: socket error on %s: %s", self._peername, exc)
        self._finish(exc)

    cdef void _finish(self, object exc):
        if self._closed:
            return
        self._closed = True
        self._stop_reading()
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)
        self._wq = None
        self._wtail = None
        self._wsize = 0
        try:
            self._sock.close()
        except OSError:
            pass
        # connection_lost runs soon (never inside the caller's write), but from now on
        # send() must fail instead of dropping data
        conn = self._conn
        self._conn = None  # no Connection <-> transport cycle: both go by refcount, not by the GC
        conn._transport_gone()
        self._loop.call_soon(conn.connection_lost, exc)

    # ------------------------------------------------------------ asyncio.Transport API

    def write(self, data):
        cdef Py_buffer view
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            self.write_c(<uint8_t*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    def writelines(self, lines):
        for data in lines:
            self.write(data)

    def write_eof(self):
        if self._closed or self._eof_pending:
            return
        if self.buffered():
            self._eof_pending = True
        else:
            c_shutdown(self._fd, SHUT_WR)

    def can_write_eof(self):
        return True

    def close(self):
        if self._closing or self._closed:
            return
        self._closing = True
        self._stop_reading()
        if not self.buffered():
            self._finish(None)

    def abort(self):
        self._finish(None)

    def is_closing(self):
        return self._closing or self._closed

    def pause_reading(self):
        self._stop_reading()

    def resume_reading(self):
        self._start_reading()

    def is_reading(self):
        return self._reading

    def get_write_buffer_size(self):
        return self.buffered()

    def get_write_buffer_limits(self):
        return (self._low, self._high)

    def set_write_buffer_limits(self, high=None, low=None):
        if high is None:
            high = 65536 if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high = high
        self._low = low

    def get_extra_info(self, name, default=None):
        if name == "peername":
            return self._peername
        if name == "socket":
            return self._sock
        if name == "sockname":
            try:
                return self._sock.getsockname()
            except OSError:
                return default
        return default

    def get_protocol(self):
        return self._conn

    def __repr__(self):
        return f"<fastws.SocketTransport fd={self._fd} {'closed' if self._closed else 'open'}>"


def attach_socket(Endpoint endpoint, object sock, object peername, Connection conn=None):
    """Run a WebSocket connection on fastws' own transport over a connected, non-blocking socket:
    a server connection for an accepted socket, or ``conn`` (a client Connection built with
    ``client_handshake=``, whose opening request is sent at once)."""
    if conn is None:
        conn = Connection(endpoint)
    cdef SocketTransport t = SocketTransport.new(endpoint.loop, sock, peername, conn)
    conn.connection_made(t)
    t._start_reading()
    return conn


cdef class Connection(_Base, asyncio.BufferedProtocol):
    """One WebSocket connection: the protocol the event loop drives and the
    object handlers receive (``ws``).

    High-level use::

        async for message in ws:        # str for TEXT, bytes for BINARY
            await ws.send(message)

    Low-level use: a listener's ``on_message(ws, msg)`` gets a zero-copy
    :class:`Message` and calls ``ws.send(...)`` without awaiting.
    """
    cdef:
        readonly Endpoint endpoint
        readonly object transport
        object _write
        object _loop
        FrameParser _parser
        Deflate _deflate
        int _state
        bint _corked
        bint _direct
        int _expect_hdr                 # the last message was large: its header size, read alone next time
        bint _upgrade                   # the request asked for a WebSocket (counted as attempted)
        bint _counted_end               # counted as failed or closed already
        double _established_at
        double _handed_at               # queue mode: when the message the app is handling was read
        MessageGate _gate               # per-message rate limit checked before dispatch, or None
        object _close_cbs               #: callables run once when the connection is gone (None or a list)
        object _gate_over               #: callable(ws) -> bool: a message is over the limit; True delivers it
        bint _write_copies              # the transport copies what it cannot send at once (aiofastnet)
        SocketTransport _sock           # our own socket transport (C-level writes), or None
        object _kept                    # the last large bytes payload queued for the application
        object _kept_prev               # the one before it
        object _hs                      #: ServerHandshake / ClientHandshake during the handshake
        readonly object request         #: handshake.Request (server side)
        readonly object response_headers  #: handshake.Headers (client side)
        readonly str subprotocol
        object _listener
        object _queue                   #: deque of str | bytes | _Pending, created on first use
        object _waiter                  #: Future handed to recv()/__anext__, resolved with the next message
        bint _waiter_anext              # the waiter is an __anext__: a normal close ends the iteration
        bint _handed                    # a message went straight to a waiter; the app has not asked again yet
        object _handler                 #: coroutine function run after the handshake (server)
        readonly object task            #: the handler's task
        object _open_waiter             #: client: Future resolved when the handshake completes
        object _closed_waiter           #: Future resolved by connection_lost, created on demand
        object _drain_waiter
        object _pings                   #: dict payload -> (Future, sent_at), created on demand
        bint _paused_writing
        bint _paused_reading            # reading is paused at the transport
        int _read_block                 # why: READ_QUEUE | READ_WRITE | READ_PENDING | READ_ACCEPT
        bint _close_sent
        bint _close_received
        bint _lost
        bint _notified_close
        bint _input_closed              # a CLOSE or an error was read: parse nothing more
        readonly int close_code
        readonly str close_reason
        int _sent_close_code
        double _last_recv
        double _opened_at
        double _ping_sent
        double _paused_since            # when the peer stopped reading what we write (0: it reads)
        bytes _ping_payload
        double _deadline                #: closing / failing / handshake deadline
        readonly double latency         #: seconds of the last keepalive ping round trip
        public object user              #: free slot for application data (e.g. auth claims)
        public object data              #: free slot for per-connection application data
        uint8_t* _bq                    # broadcast frames waiting for the end of the loop turn
        Py_ssize_t _bq_len
        Py_ssize_t _bq_cap
        bytes _auto_req                 # engine-level auto response: TEXT request -> response
        bytes _auto_resp
        double _auto_ts
        object __weakref__

    def __init__(self, Endpoint endpoint not None, *, object handler=None, object listener=None,
                 object client_handshake=None, object open_waiter=None):
        self.endpoint = endpoint
        self._loop = endpoint.loop
        self._state = HANDSHAKE
        self._handler = handler
        self._listener = listener
        self._hs = client_handshake
        self._open_waiter = open_waiter
        self.close_code = 1006
        self.close_reason = ""
        self.latency = 0.0

    def __dealloc__(self):
        if self._bq != NULL:
            free(self._bq)
            self._bq = NULL

    # ------------------------------------------------------------ broadcast queue

    cdef int _bq_add(self, const uint8_t* p, Py_ssize_t n) except -1:
        """Queue ``p[0:n]`` (whole frames) to leave at the end of this loop turn."""
        cdef Py_ssize_t cap
        cdef uint8_t* q
        cdef Endpoint ep
        if self._bq_len + n > self._bq_cap:
            cap = max(self._bq_cap * 2, self._bq_len + n, 256)
            q = <uint8_t*>realloc(self._bq, cap)
            if q == NULL:
                raise MemoryError()
            self._bq = q
            self._bq_cap = cap
        memcpy(self._bq + self._bq_len, p, n)
        if self._bq_len == 0:
            ep = self.endpoint
            ep._dirty.append(self)
            if not ep._flush_scheduled:
                ep._flush_scheduled = True
                self._loop.call_soon(ep._flush)
        self._bq_len += n
        return 0

    cdef int _flush_bq(self) except -1:
        """Write the queued broadcast frames now (before anything sent after them)."""
        cdef Py_ssize_t n = self._bq_len
        if n == 0:
            return 0
        self._bq_len = 0
        if self._write is not None and self._state != CLOSED:
            if self._sock is not None:
                self._sock.write_c(self._bq, n)
            else:
                self._write(PyBytes_FromStringAndSize(<char*>self._bq, n))
        if self._bq_cap > 65536:
            free(self._bq)
            self._bq = NULL
            self._bq_cap = 0
        return 0

    cdef Py_ssize_t _buffered(self):
        cdef Py_ssize_t n = self._bq_len
        if self._sock is not None:
            return n + self._sock.buffered()
        if self.transport is not None:
            return n + self.transport.get_write_buffer_size()
        return n

    cdef int _deliver(self, bytes frame, const uint8_t* fp, Py_ssize_t fn, Py_ssize_t hlen) except -1:
        """Write one pre-built frame (a broadcast): corked with the reply being dispatched,
        queued to the end of the turn, or, when large, sent by reference at once."""
        cdef FrameWriter cork
        if self._corked and fn < LARGE_SEND:
            cork = self.endpoint._cork
            cork.reserve(fn)
            memcpy(cork._data + cork._len, fp, fn)
            cork._len += fn
            return 0
        if fn < LARGE_SEND:
            return self._bq_add(fp, fn)
        # large: keep the order, then header + payload by reference
        if self._corked:
            self._uncork()
            self._corked = True
        self._flush_bq()
        if self._sock is not None:
            self._sock.write2_c(fp, hlen, fp + hlen, fn - hlen, frame)
        else:
            self._write(frame)
        return 0

    def add_close_callback(self, object callback):
        """Call ``callback()`` once when the connection is gone (TCP closed, whatever the reason),
        from the event loop; at once if it is gone already. Cheaper than awaiting
        :meth:`wait_closed` for bookkeeping such as releasing a connection slot."""
        if self._lost:
            callback()
            return
        if self._close_cbs is None:
            self._close_cbs = [callback]
        else:
            self._close_cbs.append(callback)

    def set_message_gate(self, MessageGate gate, object on_over=None):
        """Check every incoming message against ``gate`` (a ``fastws._limits.MessageGate``) in the
        engine, before it is dispatched. Over the limit, ``on_over(ws)`` decides: True delivers
        the message anyway (log mode), False drops it (the policy may send a notice), and a
        ``(code, reason)`` tuple drops it and closes the connection with that code once the
        messages read before it have been handled. ``gate=None`` removes the check."""
        if gate is not None and on_over is None:
            raise TypeError("set_message_gate needs an on_over policy")
        self._gate = gate
        self._gate_over = on_over

    @property
    def message_gate(self):
        """The MessageGate set with :meth:`set_message_gate`, or None."""
        return self._gate

    def pause_reading(self):
        """Stop reading from the peer until :meth:`resume_reading` (flow control for proxies and
        listeners that hand messages on; independent of fastws' own reasons to pause)."""
        self._block_reading(READ_APP, True)

    def resume_reading(self):
        """Undo :meth:`pause_reading`."""
        self._block_reading(READ_APP, False)

    @property
    def writing_paused(self):
        """True while the peer does not read what we write (above ``write_limit``)."""
        return self._paused_writing

    def set_auto_response(self, object request, object response=None):
        """Answer a TEXT message equal to ``request`` with the TEXT ``response`` inside the
        engine, without calling the listener or queueing the message (``None`` turns it off)."""
        if request is None:
            self._auto_req = None
            self._auto_resp = None
            return
        if response is None:
            raise TypeError("set_auto_response needs a response")
        req = request.encode("utf-8") if isinstance(request, str) else bytes(request)
        resp = response.encode("utf-8") if isinstance(response, str) else bytes(response)
        if len(req) == 0 or len(req) > 4096 or len(resp) > 4096:
            raise ValueError("auto response request and response must be 1-4096 bytes")
        self._auto_req = req
        self._auto_resp = resp

    @property
    def auto_response_timestamp(self):
        """Wall-clock time (``time.time()``) of the last auto response, or None."""
        return self._auto_ts if self._auto_ts > 0 else None

    # ------------------------------------------------------------ properties

    @property
    def remote_address(self):
        """``(host, port)`` of the peer."""
        if self.request is not None and self.request.remote_address is not None:
            return self.request.remote_address
        if self.transport is not None:
            return self.transport.get_extra_info("peername")
        return None

    @property
    def local_address(self):
        return self.transport.get_extra_info("sockname") if self.transport is not None else None

    @property
    def open(self):
        """True while messages can be sent."""
        return self._state == OPEN and not self._close_sent

    @property
    def closed(self):
        """True once the TCP connection is gone."""
        return self._state == CLOSED

    @property
    def state(self):
        return ("HANDSHAKE", "OPEN", "CLOSING", "CLOSED")[self._state]

    @property
    def is_client(self):
        return self.endpoint.is_client

    @property
    def compression(self):
        """The negotiated permessage-deflate state, or None."""
        return self._deflate

    @property
    def path(self):
        return self.request.path if self.request is not None else None

    @property
    def headers(self):
        return self.request.headers if self.request is not None else self.response_headers

    @property
    def buffered_amount(self):
        """Bytes written (or queued for the end of this loop turn) but not yet accepted by the kernel."""
        return self._buffered()

    def __repr__(self):
        return f"<fastws.Connection {self.state} {self.remote_address}>"

    # ------------------------------------------------------------ asyncio protocol

    def connection_made(self, transport):
        self.transport = transport
        if type(transport) is SocketTransport:
            self._sock = <SocketTransport>transport
            self._write = transport.write
            self._write_copies = True
        elif type(transport).__module__.startswith("aiofastnet"):
            # aiofastnet copies unsent data itself: frames can leave straight from the cork
            self._write = transport.write_nocheck
            self._write_copies = True
        else:
            self._write = transport.write
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            if self.endpoint.loop is None:
                self.endpoint.loop = self._loop
        self._last_recv = self._opened_at = _now()
        if self.endpoint.write_limit > 0:
            try:
                transport.set_write_buffer_limits(high=self.endpoint.write_limit)
            except (AttributeError, NotImplementedError):
                pass
        if self.endpoint.handshake_timeout > 0:
            self._deadline = self._last_recv + self.endpoint.handshake_timeout
        self.endpoint._register(self)
        if self.endpoint.is_client:
            self._write(self._hs.request_bytes())
        elif self.endpoint.draining:
            self._reject(HandshakeError(503, "Server shutting down"))

    cdef Py_ssize_t _read_target(self, uint8_t** out) except -1:
        """Where the next read goes: a large payload's own buffer, else the scratch buffer."""
        cdef Py_ssize_t size = 0, avail
        cdef uint8_t* p = NULL
        if (self._state == OPEN or self._state == CLOSING) and not self._input_closed and self._parser is not None:
            avail = 0
            if self._sock is not None and self._parser.direct_needs_room():
                # the buffer must grow: size it for what already waits in the socket, so a
                # large message that has arrived whole takes one read and no reallocation
                avail = fastws_queued(self._sock._fd)
            p = self._parser.direct_target(&size, avail)
        if p != NULL:
            self._direct = True
            out[0] = p
            return size
        self._direct = False
        p = fastws_scratch()
        if p == NULL:
            raise MemoryError()
        out[0] = p
        if self._expect_hdr:
            # after a large message the next one is likely large too: the first read takes
            # just its header, and the whole payload goes straight into its buffer (no
            # scratch copy, and the kernel writes to the buffer's aligned start). A wrong
            # guess costs nothing: a read that fills its target is followed by another.
            size = self._expect_hdr
            self._expect_hdr = 0
            return size
        return FASTWS_SCRATCH_SIZE

    def get_buffer(self, Py_ssize_t sizehint):
        cdef _ReadTarget t = self.endpoint._target
        t.size = self._read_target(&t.ptr)
        return t

    def buffer_updated(self, Py_ssize_t nbytes):
        self._on_read(nbytes)

    cdef int _on_read(self, Py_ssize_t nbytes) except -1:
        """``nbytes`` landed where ``_read_target`` said: parse and dispatch them."""
        cdef uint8_t* data
        self._last_recv = _now()
        if self._direct:
            self._direct = False
            if self._input_closed or not (self._state == OPEN or self._state == CLOSING):
                return 0
            self._corked = True
            try:
                self._parser.direct_written(nbytes)
                self._process(NULL, 0)
            except ProtocolError as exc:
                self._fail(exc.code, exc.reason)
            finally:
                self._uncork()
            return 0
        data = fastws_scratch()
        if (self._state == OPEN or self._state == CLOSING) and not self._input_closed:
            # CLOSING: we sent a CLOSE and keep reading until the peer's CLOSE arrives
            self._corked = True
            try:
                self._process(data, nbytes)
            except ProtocolError as exc:
                self._fail(exc.code, exc.reason)
            finally:
                self._uncork()
        elif self._state == HANDSHAKE:
            self._handshake_data(data, nbytes)
        # after a CLOSE or a failure: discard
        return 0

    def eof_received(self):
        self._on_eof()
        return False

    def connection_lost(self, exc):
        cdef bint first = not self._lost
        cdef Stats* st = &self.endpoint._st
        cdef double d
        if not self._counted_end:
            self._counted_end = True
            if self._established_at > 0:
                st.closed += 1
                st.close_codes[_code_index(self.close_code)] += 1
                if self.endpoint.stats_enabled:
                    d = _now() - self._established_at
                    st.dur_buckets[_bucket(DUR_BOUNDS, N_DUR - 1, d)] += 1
                    st.dur_sum += d
            elif self._upgrade:
                st.failed += 1
        self._lost = True
        self._state = CLOSED
        self.endpoint._unregister(self)
        if self._parser is not None:
            self._parser.reset()
        if self._kept is not None or self._kept_prev is not None:
            self._release_kept(True)
        if self._open_waiter is not None and not self._open_waiter.done():
            if isinstance(exc, BaseException):
                self._open_waiter.set_exception(exc)
            else:
                self._open_waiter.set_exception(InvalidHandshake("connection closed during the handshake"))
        if self._drain_waiter is not None:
            if not self._drain_waiter.done():
                self._drain_waiter.set_result(None)
            self._drain_waiter = None
        if self._pings:
            for fut, _ in self._pings.values():
                if not fut.done():
                    fut.set_exception(self._closed_exc())
            self._pings = None
        self._wake_waiter()
        if self._closed_waiter is not None and not self._closed_waiter.done():
            self._closed_waiter.set_result(None)
        if self._close_cbs is not None:
            cbs, self._close_cbs = self._close_cbs, None
            for cb in cbs:
                try:
                    cb()
                except Exception as exc:
                    logger.error("fastws: error in a close callback", exc_info=exc)
        if first:
            self._notify_close()
        self._write = None

    def pause_writing(self):
        # Stop reading until the peer reads what we wrote: a listener cannot await, and
        # whatever the API, a peer must not make us answer (pongs...) faster than it reads.
        self._paused_writing = True
        self._paused_since = _now()
        self._block_reading(READ_WRITE, True)
        if self._listener is not None:
            cb = getattr(self._listener, "on_pause_writing", None)
            if cb is not None:
                self._call_listener(cb)

    def resume_writing(self):
        self._paused_writing = False
        self._paused_since = 0.0
        if self._drain_waiter is not None:
            if not self._drain_waiter.done():
                self._drain_waiter.set_result(None)
            self._drain_waiter = None
        self._block_reading(READ_WRITE, False)
        if self._listener is not None:
            cb = getattr(self._listener, "on_drain", None)
            if cb is not None:
                self._call_listener(cb)

    # ------------------------------------------------------------ handshake

    cdef void _handshake_data(self, uint8_t* data, Py_ssize_t n):
        chunk = PyBytes_FromStringAndSize(<char*>data, n)
        if self.endpoint.is_client:
            self._client_handshake_data(chunk)
            return
        if self._hs is None:
            self._hs = _hs.ServerHandshake(self.endpoint.max_header_size)
        try:
            request = self._hs.feed_data(chunk)
        except HandshakeError as exc:
            self._reject(exc)
            return
        if request is None:
            return
        offset = self._hs.offset
        self._hs = None
        self.request = request
        request.remote_address = self.transport.get_extra_info("peername")
        if request.is_websocket:
            self._upgrade = True
            self.endpoint._st.attempted += 1
        try:
            spec = self.endpoint.accept(self, request)
        except HandshakeError as exc:
            self._reject(exc)
            return
        except Exception as exc:
            logger.exception("fastws: error while accepting %s", request.path)
            self._reject(HandshakeError(500, "Internal Server Error"))
            return
        if isinstance(spec, _hs.Response):
            self._respond(spec)
            return
        if asyncio.isfuture(spec) or asyncio.iscoroutine(spec):
            # asynchronous acceptance: keep what came after the head, stop reading meanwhile
            rest = chunk[offset:]
            self._block_reading(READ_ACCEPT, True)
            task = asyncio.ensure_future(spec)
            task.add_done_callback(lambda t, rest=rest: self._accept_done(t, rest))
            return
        self._finish_accept(spec, chunk, offset)

    def _accept_done(self, task, bytes rest):
        if self._state != HANDSHAKE or self.transport is None:
            return
        # whatever the outcome, read again: a refusal half-closes and must see the client's FIN
        self._block_reading(READ_ACCEPT, False)
        try:
            spec = task.result()
        except HandshakeError as exc:
            self._reject(exc)
            return
        except BaseException:
            logger.exception("fastws: error while accepting %s", self.request.path)
            self._reject(HandshakeError(500, "Internal Server Error"))
            return
        if isinstance(spec, _hs.Response):
            self._respond(spec)
            return
        self._finish_accept(spec, rest, 0)

    cdef void _finish_accept(self, object spec, object chunk, Py_ssize_t offset):
        """Send the 101 and enter OPEN; ``chunk[offset:]`` are the first frames."""
        cdef Py_ssize_t n
        cdef uint8_t* rest
        request = self.request
        try:
            key = _hs.validate_upgrade(request)
        except HandshakeError as exc:
            self._reject(exc)
            return
        subprotocol = spec.subprotocol
        if subprotocol is None and spec.subprotocols:
            subprotocol = _hs.select_subprotocol(request, spec.subprotocols)
        ext = None
        deflate = None
        compression = spec.compression if spec.compression is not None else self.endpoint.compression
        if compression:
            try:
                offers = _hs.parse_extensions(request.headers.get_all("sec-websocket-extensions"))
            except ValueError:
                offers = []
            accepted = _hs.negotiate_deflate_server(offers, compression)
            if accepted is not None:
                ext, deflate = accepted
        self._write(_hs.accept_response(key, subprotocol, ext, spec.headers))
        self.subprotocol = subprotocol
        self._listener = spec.listener
        self._handler = spec.handler
        self.user = spec.user
        if spec.data is not None:
            self.data = spec.data
        self._open(deflate, spec.max_size if spec.max_size else self.endpoint.max_size)
        if self._listener is not None:
            cb = getattr(self._listener, "on_connect", None)
            if cb is not None:
                self._call_listener(cb)
        elif self._handler is not None:
            self.task = self._loop.create_task(self._run_handler())
        n = len(chunk) - offset
        if n > 0 and self._state == OPEN:
            # frames that arrived with the head: parse them from a writable copy
            rest = fastws_scratch()
            memcpy(rest, PyBytes_AS_STRING(chunk) + offset, n)
            self._corked = True
            try:
                self._process(rest, n)
            except ProtocolError as exc:
                self._fail(exc.code, exc.reason)
            finally:
                self._uncork()

    cdef void _open(self, Deflate deflate, Py_ssize_t max_size):
        self._deflate = deflate
        self._parser = FrameParser(self.endpoint.is_client, max_size, deflate)
        self._state = OPEN
        self._deadline = 0
        self._last_recv = self._established_at = _now()
        self.endpoint._st.established += 1
        if self.endpoint.is_client:
            self._upgrade = True
            self.endpoint._st.attempted += 1

    cdef void _reject(self, object exc):
        """Refuse the handshake with an HTTP status and a one-line reason."""
        logger.debug("fastws: handshake refused %s: %s", self.transport.get_extra_info("peername")
                     if self.transport is not None else None, exc)
        self._count_refusal(getattr(exc, "status", 400))
        if self.transport is None:
            return
        try:
            self._write(_hs.error_response(exc))
        except Exception:
            pass
        self._finish_http()

    cdef void _respond(self, object response):
        """Answer a plain HTTP request and close."""
        if self._upgrade:
            self._count_refusal(response.status)
        else:
            self.endpoint._st.http_requests += 1
        self._write(response.to_bytes())
        self._finish_http()

    cdef void _count_refusal(self, int status):
        if self._upgrade and not self._counted_end:
            self._counted_end = True
            self.endpoint._st.failed += 1
        self.endpoint._refused(status)

    cdef void _finish_http(self):
        """After an HTTP response: half-close and read (discarding) until the client closes,
        so a client still sending its request reads our response instead of a reset;
        bounded by close_timeout."""
        self._input_closed = True
        self._state = CLOSING
        self._deadline = _now() + self.endpoint.close_timeout
        try:
            if self.transport.can_write_eof():
                self.transport.write_eof()
            else:
                self.transport.close()
        except Exception:
            self.transport.close()

    cdef void _client_handshake_data(self, bytes chunk):
        cdef Py_ssize_t n
        cdef uint8_t* rest
        try:
            done = self._hs.feed_data(chunk)
        except InvalidHandshake as exc:
            self._state = CLOSED
            if self._open_waiter is not None and not self._open_waiter.done():
                self._open_waiter.set_exception(exc)
            self.transport.close()
            return
        if not done:
            return
        hs = self._hs
        self._hs = None
        self.subprotocol = hs.subprotocol
        self.response_headers = hs.headers
        self._open(hs.deflate, self.endpoint.max_size)
        if self._open_waiter is not None and not self._open_waiter.done():
            self._open_waiter.set_result(self)
        if self._listener is not None:
            cb = getattr(self._listener, "on_connect", None)
            if cb is not None:
                self._call_listener(cb)
        cdef Py_ssize_t off = hs.offset
        n = len(chunk) - off
        if n > 0:
            rest = fastws_scratch()
            memcpy(rest, PyBytes_AS_STRING(chunk) + off, n)
            self._corked = True
            try:
                self._process(rest, n)
            except ProtocolError as exc:
                self._fail(exc.code, exc.reason)
            finally:
                self._uncork()

    async def _run_handler(self):
        try:
            await self._handler(self)
        except ConnectionClosed:
            pass
        except asyncio.CancelledError:
            if self._state == OPEN:
                self._close_now(1001, "")
            raise
        except BaseException as exc:
            if self._state == OPEN and not self._close_sent:
                logger.error("fastws: handler failed for %s", self.request.path if self.request else "?",
                             exc_info=exc)
                self._close_now(1011, "")
            elif not isinstance(exc, Exception):
                raise
            return
        if self._state == OPEN and not self._close_sent:
            self._close_now(1000, "")

    # ------------------------------------------------------------ receiving

    cdef int _process(self, uint8_t* data, Py_ssize_t n) except -1:
        """Parse ``data[0:n]`` and dispatch every event (called while corked)."""
        cdef Py_ssize_t used = 0
        cdef int ev
        cdef FrameParser parser = self._parser
        while (self._state == OPEN or self._state == CLOSING) and not self._input_closed:
            ev = parser.next_event(data, n, &used)
            data += used
            n -= used
            if ev == EV_NEED_MORE:
                return 0
            if ev == EV_MESSAGE:
                self._on_message(parser)
            elif ev == EV_PING:
                self._on_ping(parser)
            elif ev == EV_PONG:
                self._on_pong(parser)
            else:
                self._on_close_frame(parser)
        return 0

    cdef int _on_message(self, FrameParser parser) except -1:
        cdef Message msg
        cdef object owner = parser.ev_obj
        cdef object item
        cdef timespec ts
        cdef Stats* st = &self.endpoint._st
        parser.ev_obj = None
        if parser.ev_len >= LARGE_SEND:
            # the header of a frame this big: 2 bytes, a 64-bit length, a client's mask
            self._expect_hdr = 10 if self.endpoint.is_client else 14
        st.msgs_in += 1
        st.bytes_in += parser.ev_len
        if self._auto_req is not None and parser.ev_opcode == 1 and parser.ev_len == PyBytes_GET_SIZE(self._auto_req) \
                and memcmp(parser.ev_ptr, PyBytes_AS_STRING(self._auto_req), parser.ev_len) == 0:
            if not self._close_sent:
                self._send_raw(1, <uint8_t*>PyBytes_AS_STRING(self._auto_resp), PyBytes_GET_SIZE(self._auto_resp),
                               False)
            clock_gettime(CLOCK_REALTIME, &ts)
            self._auto_ts = ts.tv_sec + ts.tv_nsec * 1e-9
            st.auto_responses += 1
            return 0
        if self._gate is not None and self._gate.check() > 0:
            if not self._over_limit():
                return 0
            if self._input_closed:  # the policy failed the connection
                return 0
        if self._listener is not None:
            msg = Message.new(parser.ev_opcode, parser.ev_ptr, parser.ev_len, owner)
            try:
                self._listener.on_message(self, msg)
            except BaseException as exc:
                self._listener_error(exc)
            finally:
                msg._invalidate()
                if self.endpoint.stats_enabled:
                    self.endpoint._latency(_now() - self._last_recv)
                if owner is not None and Py_REFCNT(msg) == 1:
                    # nobody kept the message or its bytes: reuse the buffer for the next one
                    msg._owner = None
                    if Py_REFCNT(owner) == 1:
                        recycle_buffer(owner)
            return 0
        if self._close_sent:
            # we are closing: the application will not read this; keep reading until the peer's CLOSE
            return 0
        if parser.ev_opcode == 1:
            item = PyUnicode_DecodeUTF8(<char*>parser.ev_ptr, parser.ev_len, NULL)
            _recycle_unheld(owner)  # decoded: its buffer can take the next message
        elif owner is not None and PyBytes_CheckExact(owner):
            item = owner
            self._keep(owner)
        else:
            item = PyBytes_FromStringAndSize(<char*>parser.ev_ptr, parser.ev_len)
        self._enqueue(item)
        return 0

    cdef bint _over_limit(self):
        """A message is over the gate's limit: ask the policy. True: deliver it."""
        try:
            verdict = self._gate_over(self)
        except Exception as exc:
            logger.error("fastws: error in a message limit policy", exc_info=exc)
            return False
        if type(verdict) is tuple:
            # (code, reason): fail the connection behind the messages already queued, so the
            # application still handles (and answers) every message that was within the limit
            self._fail(verdict[0], verdict[1])
            return False
        return bool(verdict)

    cdef void _enqueue(self, object item):
        cdef object w = self._waiter
        if w is not None:
            # someone awaits the next message and the queue is empty: hand it over directly
            self._waiter = None
            if not w.done():
                w.set_result(item)
                self._handed = True
                self._handed_at = self._last_recv
                return
        if self._queue is None:
            self._queue = _deque()
        self._queue.append(item)
        if len(self._queue) >= self.endpoint.max_queue:
            self._block_reading(READ_QUEUE, True)

    cdef void _keep(self, object buf):
        """Remember the large payloads queued for the application, two deep.

        By the time a third one comes, the application has usually dropped the oldest
        (``async for message in ws`` rebinds ``message`` to the next one): if nothing but
        this slot holds it, it goes back to the buffer pool, and a later message is read
        into memory that is mapped and in the CPU cache instead of fresh from malloc."""
        cdef object old = self._kept_prev
        self._kept_prev = self._kept
        self._kept = buf
        _recycle_unheld(old)

    cdef void _release_kept(self, bint all):
        """Give back the kept payloads nobody else holds any more (``all``: the newest too)."""
        cdef object old = self._kept_prev
        self._kept_prev = None
        _recycle_unheld(old)
        if all:
            old = self._kept
            self._kept = None
            _recycle_unheld(old)

    cdef void _wake_waiter(self):
        """No more messages will come: fail the pending recv()/__anext__."""
        w = self._waiter
        if w is not None:
            self._waiter = None
            if not w.done():
                w.set_exception(self._end_exc(self._waiter_anext))

    cdef object _end_exc(self, bint anext):
        exc = self._closed_exc()
        if anext and isinstance(exc, ConnectionClosedOK):
            return StopAsyncIteration()
        return exc

    cdef int _on_ping(self, FrameParser parser) except -1:
        if not self._close_sent:
            self._send_raw(10, parser.ev_ptr, parser.ev_len, False)
        if self._listener is not None:
            cb = getattr(self._listener, "on_ping", None)
            if cb is not None:
                self._call_listener(cb, (PyBytes_FromStringAndSize(<char*>parser.ev_ptr, parser.ev_len),))
        return 0

    cdef int _on_pong(self, FrameParser parser) except -1:
        payload = PyBytes_FromStringAndSize(<char*>parser.ev_ptr, parser.ev_len)
        cdef double now = _now()
        if self._ping_payload is not None and payload == self._ping_payload:
            self.latency = now - self._ping_sent
            self._ping_payload = None
        if self._pings:
            entry = self._pings.pop(payload, None)
            if entry is not None:
                fut, sent = entry
                if not fut.done():
                    fut.set_result(now - sent)
        return 0

    cdef int _on_close_frame(self, FrameParser parser) except -1:
        cdef int code = parser.ev_close_code
        reason = PyUnicode_DecodeUTF8(<char*>parser.ev_ptr, parser.ev_len, NULL)
        self._close_received = True
        self.close_code = code
        self.close_reason = reason
        self._input_closed = True
        if self._listener is None and (self._queue or self._handed) and not self._close_sent:
            # messages are still queued (or being handled): answer the CLOSE after the application read them
            if self._queue is None:
                self._queue = _deque()
            p = _Pending()
            p.code = code
            p.reason = reason
            p.failure = False
            self._queue.append(p)
            self._deadline = _now() + self.endpoint.close_timeout
            self._block_reading(READ_PENDING, True)
            return 0
        self._answer_close()
        return 0

    cdef void _answer_close(self):
        """The peer's CLOSE was received (and read by the app): reply and finish."""
        cdef int code = self.close_code
        if not self._close_sent:
            reply = self.close_reason.encode("utf-8") if code != 1005 else b""
            self._send_close(code if code != 1005 else 1005, reply)
        self._state = CLOSING
        self._deadline = _now() + self.endpoint.close_timeout
        # keep reading (and discarding): that is how the peer's FIN is seen
        self._block_reading(READ_PENDING | READ_QUEUE, False)
        if not self.endpoint.is_client:
            # the server closes the TCP connection first (RFC 6455 7.1.1)
            self._uncork()
            if self.transport is not None:
                self.transport.close()
        self._wake_waiter()
        self._notify_close()

    cdef void _transport_gone(self):
        """The socket is closed; connection_lost is scheduled."""
        self._input_closed = True
        if self._state == OPEN:
            self._state = CLOSING

    cdef void _on_eof(self):
        if self._state == HANDSHAKE and self.endpoint.is_client and self._hs is not None:
            # the server closed without finishing the response: report what it said
            try:
                self._hs.feed_data(b"")
            except InvalidHandshake as exc:
                if self._open_waiter is not None and not self._open_waiter.done():
                    self._open_waiter.set_exception(exc)
            return
        if self._state == OPEN and not self._input_closed:
            # the peer is gone for reading: nothing more will arrive (1006 unless a CLOSE came)
            self._input_closed = True
            self._state = CLOSING
            self._deadline = _now() + self.endpoint.close_timeout
            self._wake_waiter()

    # ------------------------------------------------------------ failing and closing

    cdef void _fail(self, int code, str reason):
        """Fail the connection (RFC 6455 7.1.7): the one place that maps errors to close codes."""
        logger.debug("fastws: failing %s with %d (%s)", self.remote_address, code, reason)
        self._input_closed = True
        if self._listener is None and (self._queue or self._handed) and self._state == OPEN and not self._close_sent:
            if self._queue is None:
                self._queue = _deque()
            p = _Pending()
            p.code = code
            p.reason = reason
            p.failure = True
            self._queue.append(p)
            self._deadline = _now() + self.endpoint.close_timeout
            self._block_reading(READ_PENDING, True)
            return
        self._fail_now(code, reason)

    cdef void _fail_now(self, int code, str reason):
        if not self._close_received:
            self.endpoint._st.errors += 1
        self._input_closed = True
        if self._parser is not None:
            self._parser.reset()
        if not self._close_received:
            self.close_code = code
            self.close_reason = reason
        if not self._close_sent and self.transport is not None:
            self._send_close(code, _truncate_utf8(reason, 123))
        self._state = CLOSING
        self._deadline = _now() + self.endpoint.close_timeout
        self._block_reading(READ_PENDING | READ_QUEUE, False)
        self._uncork()
        if self.transport is not None:
            # half-close: the peer reads our CLOSE, answers, then closes; no RST eats our frame
            try:
                if self.transport.can_write_eof():
                    self.transport.write_eof()
                else:
                    self.transport.close()
            except Exception:
                self.transport.close()
        self._wake_waiter()
        self._notify_close(code)

    cdef void _close_now(self, int code, str reason):
        """Start the closing handshake from our side (or finish it, when the peer's
        CLOSE or a failure is already waiting in the queue)."""
        if self._state >= CLOSING or self._close_sent:
            return
        if self._input_closed and self._settle_pending():
            return
        if self._close_received:
            self._answer_close()
            return
        self._send_close(code, _truncate_utf8(reason, 123))
        self._state = CLOSING
        self._deadline = _now() + self.endpoint.close_timeout
        self._block_reading(READ_QUEUE, False)  # the peer's CLOSE must be read

    cdef bint _settle_pending(self):
        """The app stops reading: drop queued messages and handle a waiting CLOSE/failure now."""
        while self._queue:
            item = self._queue.popleft()
            if type(item) is _Pending:
                self._queue.clear()
                self._handle_pending(<_Pending>item)
                return True
        return False

    cdef void _block_reading(self, int reason, bint on):
        """Pause reading while any reason holds; resume when none is left."""
        if on:
            self._read_block |= reason
        else:
            self._read_block &= ~reason
        if self.transport is None or self._state == CLOSED:
            return
        try:
            if self._read_block and not self._paused_reading:
                self._paused_reading = True
                self.transport.pause_reading()
            elif not self._read_block and self._paused_reading:
                self._paused_reading = False
                self.transport.resume_reading()
        except Exception:  # the transport is closing
            pass

    cdef void _notify_close(self, int code=0):
        if self._notified_close:
            return
        self._notified_close = True
        if self._listener is not None:
            cb = getattr(self._listener, "on_close", None)
            if cb is not None:
                self._call_listener(cb, (code or self.close_code, self.close_reason))

    cdef object _closed_exc(self):
        cdef int code = self.close_code
        if code in (1000, 1001) or (code == 1005 and self._close_received):
            return ConnectionClosedOK(code, self.close_reason)
        if self._close_sent and self._sent_close_code in (1000, 1001) and code == 1006 and not self._close_received:
            return ConnectionClosedOK(self._sent_close_code, "")
        return ConnectionClosedError(code, self.close_reason)

    cdef int _check_timers(self, double now) except -1:
        cdef Endpoint ep = self.endpoint
        if self._state == CLOSED or self.transport is None:
            return 0
        if self._kept is not None and now - self._last_recv >= 1.0:
            self._release_kept(True)  # quiet for a while: do not pin the last large payload
        if self._state == HANDSHAKE:
            if self._deadline and now >= self._deadline:
                logger.debug("fastws: handshake timeout %s", self.remote_address)
                self._state = CLOSED
                if self._open_waiter is not None and not self._open_waiter.done():
                    self._open_waiter.set_exception(InvalidHandshake("opening handshake timed out"))
                self.transport.abort()
            return 0
        if self._state == CLOSING:
            if self._deadline and now >= self._deadline:
                self.transport.abort()
            return 0
        # OPEN
        if self._input_closed:
            if self._deadline and now >= self._deadline:
                # the application did not read its queue in time
                self._drain_pending_now()
            return 0
        if self._read_block & (READ_QUEUE | READ_WRITE):
            # we stopped reading ourselves (backpressure): silence proves nothing
            self._last_recv = now
            if (self._read_block & READ_WRITE and self._paused_since > 0 and ep.ping_interval > 0
                    and ep.ping_timeout > 0 and now - self._paused_since >= ep.ping_interval + ep.ping_timeout):
                # but a peer that has not read what we wrote for as long as keepalive would
                # wait for a pong is as gone as one that does not answer pings (a flooder that
                # never reads its pongs, a stuck consumer): close it, bounded by close_timeout
                logger.debug("fastws: peer stopped reading %s", self.remote_address)
                self._fail_now(1011, "peer does not read")
            return 0
        if ep.idle_timeout > 0 and now - self._last_recv >= ep.idle_timeout:
            self._close_now(1001, "idle timeout")
            return 0
        if ep.ping_interval > 0:
            if self._ping_payload is not None:
                if ep.ping_timeout > 0 and now - self._ping_sent >= ep.ping_timeout:
                    logger.debug("fastws: keepalive timeout %s", self.remote_address)
                    self._fail_now(1011, "keepalive ping timeout")
            elif now - self._last_recv >= ep.ping_interval and now - self._ping_sent >= ep.ping_interval:
                self._ping_payload = os.urandom(4)
                self._ping_sent = now
                self._send_raw(9, <uint8_t*>PyBytes_AS_STRING(self._ping_payload), 4, False)
        return 0

    cdef void _drain_pending_now(self):
        if not self._settle_pending() and self.transport is not None:
            self.transport.abort()

    cdef void _handle_pending(self, _Pending p):
        if p.failure:
            self._fail_now(p.code, p.reason)
        else:
            self._answer_close()

    # ------------------------------------------------------------ sending

    cdef int _send_raw(self, int opcode, const uint8_t* p, Py_ssize_t n, bint rsv1) except -1:
        """Queue one frame: into the cork while dispatching, else straight to the transport."""
        if self._write is None:
            return 0
        if self._bq_len:
            self._flush_bq()
        if self._corked:
            self.endpoint._cork.write_frame(opcode, p, n, True, rsv1)
        elif self._sock is not None:
            # not dispatching (e.g. a task or another connection's handler): frame into
            # the endpoint's second writer, which is never left holding data
            cork = self.endpoint._direct_writer
            try:
                cork.write_frame(opcode, p, n, True, rsv1)
                self._sock.write_c(cork._data, cork._len)
            finally:
                cork.clear()
        else:
            self._write(build_frame_c(opcode, p, n, True, rsv1, self.endpoint.is_client))
        return 0

    cdef int _send_close(self, int code, bytes reason) except -1:
        cdef uint8_t buf[125]
        cdef Py_ssize_t n = 0
        self._close_sent = True
        self._sent_close_code = code
        if code != 1005 and code != 0:
            buf[0] = <uint8_t>(code >> 8)
            buf[1] = <uint8_t>code
            n = min(len(reason), 123)
            if n:
                memcpy(buf + 2, PyBytes_AS_STRING(reason), n)
            n += 2
        return self._send_raw(8, buf, n, False)

    cdef int _uncork(self) except -1:
        cdef FrameWriter cork
        if not self._corked:
            return 0
        self._corked = False
        cork = self.endpoint._cork
        if self._bq_len:
            self._flush_bq()
        if cork.size():
            if self._sock is not None:
                try:
                    self._sock.write_c(cork._data, cork._len)
                finally:
                    cork.clear()
            elif self._write_copies:
                try:
                    if self._write is not None:
                        self._write(cork.view())
                finally:
                    cork.clear()
            else:
                data = cork.take()
                if self._write is not None:
                    self._write(data)
        return 0

    cdef int _send_payload(self, int opcode, const uint8_t* p, Py_ssize_t n, object owner) except -1:
        cdef uint8_t hdr[14]
        cdef uint8_t key[4]
        cdef Py_ssize_t h
        cdef bint rsv1 = False
        self.endpoint._st.msgs_out += 1
        if self._deflate is not None and n >= self._deflate.compress_min_size:
            if owner is None or not PyBytes_CheckExact(owner) or PyBytes_GET_SIZE(owner) != n:
                owner = PyBytes_FromStringAndSize(<char*>p, n)
            owner = self._deflate.compress(owner)
            p = <uint8_t*>PyBytes_AS_STRING(owner)
            n = PyBytes_GET_SIZE(owner)
            rsv1 = True
        self.endpoint._st.bytes_out += n
        if n >= LARGE_SEND and not self.endpoint.is_client and (
                self._sock is not None  # copies only what the kernel does not take at once
                or (owner is not None and PyBytes_CheckExact(owner) and PyBytes_GET_SIZE(owner) == n)):
            # big immutable payload: header and payload leave in one writev, no copy
            if self._corked:
                self._uncork()
                self._corked = True
            if self._bq_len:
                self._flush_bq()
            h = write_header(hdr, opcode, True, rsv1, n, NULL)
            if self._sock is not None:
                self._sock.write2_c(hdr, h, p, n, owner if owner is not None and PyBytes_CheckExact(owner) else None)
            else:
                self.transport.writelines((PyBytes_FromStringAndSize(<char*>hdr, h), owner))
            return 0
        return self._send_raw(opcode, p, n, rsv1)

    cdef int _check_room(self) except -1:
        """Refuse to queue more for a peer that does not read (checked before framing, so a
        refused message is not sent at all)."""
        cdef Endpoint ep = self.endpoint
        if self._paused_writing and ep.max_write_buffer and (
                self._sock.buffered() if self._sock is not None
                else self.transport.get_write_buffer_size()) > ep.max_write_buffer:
            raise BufferFull(f"more than {ep.max_write_buffer} bytes buffered for a peer that does not read")
        return 0

    cdef object _after_send(self):
        if not self._paused_writing:
            return READY
        if self._drain_waiter is None or self._drain_waiter.done():
            self._drain_waiter = self._loop.create_future()
        # each sender gets its own view of the drain: cancelling one must not cancel the others
        return asyncio.shield(self._drain_waiter)

    def send(self, object data, *, binary=None):
        """Send one message: ``str`` as TEXT, bytes-like as BINARY, a :class:`Message` with its own opcode.

        Returns an awaitable that completes at once unless the peer is not
        reading (then it waits until the write buffer drains). Listeners may
        ignore it.

        Args:
            data: the payload.
            binary: force BINARY (True) or TEXT (False) for bytes-like data.

        Raises:
            ConnectionClosed: the closing handshake has started.
            BufferFull: more than ``max_write_buffer`` bytes are waiting.
        """
        cdef Py_buffer view
        cdef Py_ssize_t n
        cdef const char* p
        cdef Message msg
        if self._state != OPEN or self._close_sent:
            raise self._closed_exc() if self._state != HANDSHAKE else RuntimeError("connection not open yet")
        if self._paused_writing:
            self._check_room()
        if type(data) is str:
            p = PyUnicode_AsUTF8AndSize(data, &n)
            self._send_payload(2 if binary else 1, <const uint8_t*>p, n, None)
        elif type(data) is Message:
            msg = <Message>data
            msg._check()
            self._send_payload(msg.opcode, msg._ptr, msg._len, msg._owner)
        elif PyBytes_CheckExact(data):
            self._send_payload(1 if binary is False else 2, <const uint8_t*>PyBytes_AS_STRING(data),
                               PyBytes_GET_SIZE(data), data)
        else:
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            try:
                self._send_payload(1 if binary is False else 2, <const uint8_t*>view.buf, view.len, None)
            finally:
                PyBuffer_Release(&view)
        return self._after_send()

    def send_frame(self, int opcode, object data=b"", *, bint fin=True, bint rsv1=False):
        """Send one raw frame (fragmentation, tests, proxies). No compression is applied."""
        cdef Py_buffer view
        if self._state != OPEN or self._close_sent:
            raise self._closed_exc()
        self._check_room()
        if isinstance(data, str):
            data = (<str>data).encode("utf-8")
        if self._bq_len:
            self._flush_bq()
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            if self._corked:
                self.endpoint._cork.write_frame(opcode, <uint8_t*>view.buf, view.len, fin, rsv1)
            else:
                self._write(build_frame_c(opcode, <uint8_t*>view.buf, view.len, fin, rsv1, self.endpoint.is_client))
        finally:
            PyBuffer_Release(&view)
        return self._after_send()

    def ping(self, object data=None):
        """Send a PING; the returned future resolves to the round-trip time when the PONG arrives."""
        cdef Py_buffer view
        if self._state != OPEN or self._close_sent:
            raise self._closed_exc()
        if data is None:
            data = os.urandom(4)
        elif isinstance(data, str):
            data = (<str>data).encode("utf-8")
        else:
            data = bytes(data)
        if len(data) > 125:
            raise ValueError("ping payload longer than 125 bytes")
        if self._pings is None:
            self._pings = {}
        fut = self._loop.create_future()
        self._pings[data] = (fut, _now())
        self._send_raw(9, <uint8_t*>PyBytes_AS_STRING(data), len(data), False)
        return fut

    def pong(self, object data=b""):
        """Send an unsolicited PONG."""
        if isinstance(data, str):
            data = (<str>data).encode("utf-8")
        data = bytes(data)
        if len(data) > 125:
            raise ValueError("pong payload longer than 125 bytes")
        if self._state == OPEN and not self._close_sent:
            self._send_raw(10, <uint8_t*>PyBytes_AS_STRING(data), len(data), False)
        return READY

    def close(self, int code=1000, str reason=""):
        """Start the closing handshake; the returned awaitable finishes when the connection is closed.

        Args:
            code: a close code a peer may receive (1000-1003, 1007-1014, 3000-4999).
            reason: at most 123 bytes of UTF-8.
        """
        rb = reason.encode("utf-8")
        if len(rb) > 123:
            raise ValueError("close reason longer than 123 bytes")
        if not valid_close_code(code):
            raise ValueError(f"invalid close code {code}")
        if self._state == HANDSHAKE:
            if self.transport is not None:
                self.transport.close()
        elif self._state == OPEN and not self._close_sent:
            self._close_now(code, reason)
        return self.wait_closed()

    def abort(self):
        """Drop the TCP connection at once, without a closing handshake."""
        if self.transport is not None:
            self.transport.abort()

    def wait_closed(self):
        """An awaitable that finishes once the TCP connection is closed."""
        if self._state == CLOSED or self._loop is None:
            fut = asyncio.get_event_loop().create_future() if self._loop is None else self._loop.create_future()
            fut.set_result(None)
            return fut
        if self._closed_waiter is None:
            self._closed_waiter = self._loop.create_future()
        return asyncio.shield(self._closed_waiter)

    def wait_open(self):
        """Client: an awaitable finishing when the opening handshake completed."""
        return self._open_waiter

    # ------------------------------------------------------------ high-level receive

    cdef object _next(self, bint anext):
        """A Future resolved with the next message. No coroutine is created per message:
        the waiter is resolved with the message itself when it arrives."""
        cdef object fut
        cdef object item
        if self._listener is not None:
            raise RuntimeError("recv() is not available on a connection with a listener")
        w = self._waiter
        if w is not None and not w.done():
            raise RuntimeError("recv() called while another coroutine is already waiting for a message")
        if self._handed_at > 0:
            # the app asks for the next message: the previous one has been handled
            if self.endpoint.stats_enabled:
                self.endpoint._latency(_now() - self._handed_at)
            self._handed_at = 0
        self._handed = False
        if self._kept_prev is not None:
            self._release_kept(False)  # the one before the last is done with: reuse it early
        fut = self._loop.create_future()
        if self._queue:
            item = self._queue.popleft()
            if type(item) is _Pending:
                self._handle_pending(<_Pending>item)
                fut.set_exception(self._end_exc(anext))
                return fut
            if self._read_block & READ_QUEUE and len(self._queue) <= (self.endpoint.max_queue >> 1):
                self._block_reading(READ_QUEUE, False)
            fut.set_result(item)
            self._handed_at = self._last_recv
            return fut
        if self._state == CLOSED or self._input_closed:
            fut.set_exception(self._end_exc(anext))
            return fut
        self._waiter = fut
        self._waiter_anext = anext
        return fut

    def recv(self):
        """Await the next message: ``str`` for TEXT, ``bytes`` for BINARY.

        Raises:
            ConnectionClosedOK: after a normal close (1000/1001).
            ConnectionClosedError: after an error close or a dropped connection.
        """
        return self._next(False)

    def __aiter__(self):
        return self

    def __anext__(self):
        return self._next(True)

    # ------------------------------------------------------------ listener plumbing

    cdef void _call_listener(self, object cb, tuple args=()):
        try:
            cb(self, *args)
        except BaseException as exc:
            self._listener_error(exc)

    cdef void _listener_error(self, object exc):
        if isinstance(exc, ConnectionClosed):
            return
        if isinstance(exc, BufferFull):
            self.endpoint._st.backpressure_closes += 1
            logger.info("fastws: closing %s: %s", self.remote_address, exc)
            if self.transport is not None:
                self.transport.abort()
            return
        if not isinstance(exc, Exception):
            raise exc
        logger.error("fastws: listener failed for %s", self.request.path if self.request else "?",
                     exc_info=exc)
        if self._state == OPEN and not self._close_sent:
            self._close_now(1011, "")

    cpdef _going_away(self, int code=1001, str reason="server shutting down"):
        """Graceful shutdown: close this connection with ``code``."""
        if self._state == OPEN and not self._close_sent:
            self._close_now(code, reason)
            self._uncork()
        elif self._state == HANDSHAKE and self.transport is not None and not self.endpoint.is_client:
            self._state = CLOSED
            self.transport.close()


def broadcast(object connections, object data, *, Connection exclude=None, Py_ssize_t max_buffer=0):
    """Send one message to many server connections, framed once.

    ``data`` is framed once (``str`` as TEXT, bytes-like as BINARY, never
    compressed) and the same bytes go to every OPEN connection in
    ``connections`` except ``exclude``. Small frames are queued per connection
    and leave at the end of the event-loop turn, so everything broadcast to a
    connection in one turn leaves in one send; the order with the
    connection's other sends is kept.

    Args:
        connections: an iterable of server-side :class:`Connection` objects.
        data: the message.
        exclude: a connection to skip (for example the sender).
        max_buffer: when > 0, a connection whose buffered outgoing bytes would
            exceed this is skipped.

    Returns:
        The list of connections skipped because of ``max_buffer`` (the caller
        applies its slow-consumer policy to them).
    """
    cdef Py_buffer view
    cdef Py_ssize_t n, fn, hlen
    cdef const char* p
    cdef int opcode
    cdef bytes frame
    cdef const uint8_t* fp
    cdef Connection conn
    cdef list skipped = []
    if type(data) is str:
        p = PyUnicode_AsUTF8AndSize(data, &n)
        frame = build_frame_c(1, <const uint8_t*>p, n, True, False, False)
    else:
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            n = view.len
            frame = build_frame_c(2, <const uint8_t*>view.buf, n, True, False, False)
        finally:
            PyBuffer_Release(&view)
    fp = <const uint8_t*>PyBytes_AS_STRING(frame)
    fn = PyBytes_GET_SIZE(frame)
    hlen = fn - n
    for obj in connections:
        if not isinstance(obj, Connection):
            raise TypeError(f"broadcast() needs fastws connections, got {type(obj).__name__}")
        conn = <Connection>obj
        if conn is exclude or conn._state != OPEN or conn._close_sent or conn._write is None:
            continue
        if conn.endpoint.is_client:
            raise ValueError("broadcast() sends server frames; a client connection must mask its own")
        if max_buffer > 0 and conn._buffered() + fn > max_buffer:
            skipped.append(conn)
            conn.endpoint._st.broadcast_skipped += 1
            continue
        conn._deliver(frame, fp, fn, hlen)
        conn.endpoint._st.msgs_out += 1
        conn.endpoint._st.bytes_out += n
        conn.endpoint._st.broadcasts += 1
    return skipped
