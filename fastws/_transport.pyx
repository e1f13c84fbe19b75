# cython: language_level=3
"""fastws' own asyncio transport over a non-blocking TCP socket.

Theory of operation
-------------------
The loop's transports hand a protocol bytes objects (``data_received``) or ask
it for a buffer and copy into it (``BufferedProtocol``); either way there is a
Python call and often an allocation per read and per write. A
:class:`SocketTransport` instead registers the socket with ``loop.add_reader``
/ ``loop.add_writer`` and does the system calls itself, at C level:

1. Reading: on readiness it asks its :class:`ReadSink` (the Connection) where
   the next read goes (the per-thread scratch buffer, or a large message's own
   buffer), ``recv()``s straight into it and reports the byte count. A read that
   filled its target is usually followed by more queued bytes, so it reads again
   at once, up to ``READ_BURST`` times, stopping early when the sink says the
   read ended a large frame (its sender most likely waits for an answer).
2. Writing: ``write_c`` sends what the kernel takes at once, without a bytes
   object; only the rest is copied into a queue (``_wq``), written when the
   socket is writable, 16 buffers per ``sendmsg``. ``write2_c`` sends a header
   and a large payload in one ``writev`` and, when the payload is immutable
   bytes, queues what is left by reference instead of copying it. Above the
   high-water mark it calls the protocol's ``pause_writing``; below the low one
   ``resume_writing`` (asyncio's flow-control contract).
3. Closing: ``close()`` flushes the queue first, ``abort()`` does not;
   ``write_eof()`` half-closes after the queue drains. ``connection_lost`` is
   always scheduled with ``call_soon``, never run inside the caller's write.
   The transport drops its reference to the protocol when it finishes, so the
   two are freed by reference counting, not by the cycle collector.

TLS connections use the loop's own transports (the Connection is also an
asyncio BufferedProtocol); everything else about a connection is the same.
"""

import logging
import os

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact
from cpython.ref cimport Py_REFCNT
from libc.string cimport memcpy, memset

from fastws._frames cimport recycle_buffer

cdef object logger = logging.getLogger("fastws")

cdef enum:
    WRITE_SLICE = 262144    # largest single send of a big payload
    READ_BURST = 8          # reads at most per readiness callback


cdef class ReadSink:
    # The contract SocketTransport drives; Connection overrides every method.

    cdef Py_ssize_t read_target(self, uint8_t** out) except -1:
        raise NotImplementedError

    cdef int data_read(self, Py_ssize_t n) except -1:
        raise NotImplementedError

    cdef void transport_gone(self):
        pass


cdef extern from "<errno.h>":
    int errno
    enum: EAGAIN, EWOULDBLOCK, EINTR

cdef extern from "<sys/socket.h>":
    ssize_t c_recv "recv"(int fd, void* buf, size_t n, int flags) nogil
    ssize_t c_send "send"(int fd, const void* buf, size_t n, int flags) nogil
    int c_shutdown "shutdown"(int fd, int how) nogil
    enum: SHUT_WR

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


cdef class SocketTransport:
    """An asyncio-compatible transport over a non-blocking TCP socket, driven by
    ``loop.add_reader`` / ``loop.add_writer``.

    The connection reads into its own buffers and writes from its cork with
    plain ``recv``/``send`` calls at C level: no bytes object, no Python call
    per frame, and an idle connection costs a socket and a poll handle.
    Used by :func:`fastws.serve` for plain TCP (TLS uses the loop's transports).
    """
    def __init__(self):
        raise TypeError("SocketTransport objects are created by fastws")

    @staticmethod
    cdef SocketTransport new(object loop, object sock, object peername, ReadSink conn):
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

    cdef void start_reading(self):
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
        cdef ReadSink conn = self._conn
        if self._closed or not self._reading:
            return
        cdef int burst = 0
        cdef int stop
        try:
            while True:
                size = conn.read_target(&p)
                while True:
                    n = c_recv(self._fd, p, size, 0)
                    if n > 0:
                        break
                    if n == 0:
                        self._on_eof()
                        return
                    if errno == EINTR:
                        continue
                    if FASTWS_WOULD_BLOCK(errno):
                        return
                    self._fatal(OSError(errno, os.strerror(errno)))
                    return
                stop = conn.data_read(n)
                # A read that filled its target (a large message's header, then its
                # payload) is likely followed by more bytes already queued: read them
                # now, so a message that has fully arrived completes in this callback
                # and its buffer is reused while still in the CPU cache. Bounded, so
                # one busy peer cannot starve the others. ``stop``: that read ended a
                # large frame, whose sender most likely waits for us now.
                burst += 1
                if stop or n < size or burst >= READ_BURST or self._closed or not self._reading:
                    return
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

    cdef Py_ssize_t queued(self):
        """Bytes waiting in the socket's receive queue (0 when unknown)."""
        return fastws_queued(self._fd)

    cdef int _send_now(self, iovec* iov, int cnt, Py_ssize_t* sent) except -2:
        """One send of ``cnt`` iovecs; ``sent`` is 0 when the socket would block. Returns -1 after a
        fatal error."""
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
        conn.transport_gone()
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
        self.start_reading()

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
