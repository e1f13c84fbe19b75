# cython: language_level=3
"""Received messages and read buffers, as the engine hands them out (see _message.pyx)."""

cimport cython
from libc.stdint cimport uint8_t


cdef int _expired() except -1


@cython.final
cdef class Message:
    cdef:
        const uint8_t* _ptr
        Py_ssize_t _len
        readonly int opcode
        object _owner           # bytes holding the payload, or None for a view
        bint _valid
        Py_ssize_t _shape[1]

    @staticmethod
    cdef Message new(int opcode, const uint8_t* ptr, Py_ssize_t n, object owner)

    cdef inline void _invalidate(self):
        """The listener call is over: a view into the read buffer may not be used any more."""
        if self._owner is None:
            self._valid = False
            self._ptr = NULL
            self._len = 0

    cdef inline int _check(self) except -1:
        if not self._valid:
            _expired()
        return 0


@cython.final
cdef class ReadTarget:
    cdef:
        uint8_t* ptr
        Py_ssize_t size
        Py_ssize_t _shape[1]

