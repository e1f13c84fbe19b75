# cython: language_level=3
"""A connection's write path: framing, corking, the end-of-turn queue and large sends.

Theory of operation
-------------------
:class:`Output` is the part of a Connection that puts frames on the wire; the
read path, the handshake and the close state machine (fastws/_protocol.pyx)
build on it. Every frame takes one of four ways out, chosen so that the common
cases make one system call and no Python object:

1. *Corked*: while a read is being dispatched (``_corked``), frames are written
   into the endpoint's cork, and ``_uncork()`` sends the whole cork in one
   write when the read has been processed: an echo, a pong and a CLOSE that
   answer one read leave together.
2. *Direct*: outside a dispatch (a task, another connection's handler), a small
   frame is built in the endpoint's second writer and handed to the socket
   transport at C level (``write_c``), or built as bytes for the loop's
   transports.
3. *End of turn*: a broadcast frame (pre-built once for every receiver by
   ``fastws._fanout.broadcast``) is appended to the connection's own queue
   (``_bq``), and the endpoint writes every such queue once at the end of the
   loop turn. Anything else sent by the connection first flushes that queue,
   so the order of a connection's frames is always the order they were sent.
4. *Large*: a payload of ``LARGE_SEND`` bytes or more leaves as header and
   payload in one ``writev``; what the kernel does not take is kept by
   reference when the payload is immutable bytes, so a 1 MiB message is never
   copied on the way out.

Backpressure: ``_check_room()`` refuses (``BufferFull``) to queue more for a
peer that does not read once more than ``max_write_buffer`` bytes wait, and
``_after_send()`` gives ``send()`` an awaitable that waits for the drain while
the transport has paused writing.
"""

import asyncio

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE, PyBytes_CheckExact
from libc.stdint cimport uint8_t
from libc.stdlib cimport realloc, free
from libc.string cimport memcpy

from fastws._endpoint cimport CLOSED, Endpoint
from fastws._frames cimport FrameWriter, Opcode, build_frame_c, write_header

from fastws._message import READY as _READY
from fastws.exceptions import BufferFull

cdef object READY = _READY


cdef class Output(ConnectionBase):
    """The write path of a connection (fastws.Connection is the class to use)."""

    def __dealloc__(self):
        if self._bq != NULL:
            free(self._bq)
            self._bq = NULL

    cdef int _bq_add(self, const uint8_t* p, Py_ssize_t n) except -1:
        """Queue ``p[0:n]`` (whole frames) to leave at the end of this loop turn."""
        cdef Py_ssize_t cap
        cdef uint8_t* q
        if self._bq_len + n > self._bq_cap:
            cap = max(self._bq_cap * 2, self._bq_len + n, 256)
            q = <uint8_t*>realloc(self._bq, cap)
            if q == NULL:
                raise MemoryError()
            self._bq = q
            self._bq_cap = cap
        memcpy(self._bq + self._bq_len, p, n)
        if self._bq_len == 0:
            self.endpoint._flush_later(self)
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
        if self._corked and fn < LARGE_SEND:
            self.endpoint._cork.append_raw(fp, fn)
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
                self._sock.write_c(cork.data(), cork.size())
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
        return self._send_raw(Opcode.CLOSE, buf, n, False)

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
                    self._sock.write_c(cork.data(), cork.size())
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

