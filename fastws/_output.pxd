# cython: language_level=3
"""C-level contract of a connection's write path (see _output.pyx)."""

from libc.stdint cimport uint8_t

from fastws._endpoint cimport ConnectionBase
from fastws._frames cimport Deflate
from fastws._transport cimport SocketTransport


cdef enum:
    LARGE_SEND = 65536      # payloads at least this big are written without copying (writev)


cdef class Output(ConnectionBase):
    cdef:
        readonly object transport
        object _write                   # transport.write (or aiofastnet's write_nocheck); None once lost
        SocketTransport _sock           # our own socket transport (C-level writes), or None
        Deflate _deflate                # negotiated permessage-deflate, or None
        bint _corked                    # a read is being dispatched: frames go to the endpoint's cork
        bint _write_copies              # the transport copies what it cannot send at once
        bint _close_sent
        int _sent_close_code
        bint _paused_writing
        object _drain_waiter
        uint8_t* _bq                    # broadcast frames waiting for the end of the loop turn
        Py_ssize_t _bq_len
        Py_ssize_t _bq_cap

    cdef int _bq_add(self, const uint8_t* p, Py_ssize_t n) except -1
    cdef Py_ssize_t _buffered(self)
    cdef int _deliver(self, bytes frame, const uint8_t* fp, Py_ssize_t fn, Py_ssize_t hlen) except -1
    cdef int _send_raw(self, int opcode, const uint8_t* p, Py_ssize_t n, bint rsv1) except -1
    cdef int _send_close(self, int code, bytes reason) except -1
    cdef int _uncork(self) except -1
    cdef int _send_payload(self, int opcode, const uint8_t* p, Py_ssize_t n, object owner) except -1
    cdef int _check_room(self) except -1
    cdef object _after_send(self)
