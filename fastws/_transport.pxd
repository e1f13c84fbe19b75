# cython: language_level=3
"""C-level contract of the socket transport (see _transport.pyx)."""

cimport cython
from libc.stdint cimport uint8_t


cdef extern from "<sys/uio.h>":
    struct iovec:
        void* iov_base
        size_t iov_len


cdef class ReadSink:
    """What a SocketTransport drives: the protocol reading from it (Connection).

    The transport asks ``read_target()`` where the next read goes, ``recv()``s
    into it, and reports the byte count with ``data_read()``; a read that found
    nothing (would block, EOF, error) is simply not reported. ``transport_gone()``
    runs when the socket is closed, before ``connection_lost`` is scheduled.
    ``eof_received``, ``pause_writing``, ``resume_writing`` and ``connection_lost``
    are called as the asyncio protocol methods they are.
    """
    cdef Py_ssize_t read_target(self, uint8_t** out) except -1
    cdef int data_read(self, Py_ssize_t n) except -1
    cdef void transport_gone(self)


@cython.final
cdef class SocketTransport:
    cdef:
        int _fd
        object _sock            #: socket.socket owning the fd
        object _loop
        ReadSink _conn
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

    @staticmethod
    cdef SocketTransport new(object loop, object sock, object peername, ReadSink conn)
    cdef void start_reading(self)
    cdef void _stop_reading(self)
    cdef void _on_eof(self)
    cdef Py_ssize_t buffered(self)
    cdef Py_ssize_t queued(self)
    cdef int _send_now(self, iovec* iov, int cnt, Py_ssize_t* sent) except -2
    cdef int write_c(self, const uint8_t* p, Py_ssize_t n) except -1
    cdef int write2_c(self, const uint8_t* a, Py_ssize_t na, const uint8_t* b, Py_ssize_t nb,
                      object owner=*) except -1
    cdef void _queue_copy(self, const uint8_t* p, Py_ssize_t n)
    cdef void _queue_obj(self, object obj, Py_ssize_t n)
    cdef void _queued(self)
    cdef void _fatal(self, object exc)
    cdef void _finish(self, object exc)
