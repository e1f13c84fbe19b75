# cython: language_level=3
"""Received messages and read buffers.

Theory of operation
-------------------
A listener's ``on_message(ws, msg)`` gets a :class:`Message`: a pointer and a
length into wherever the payload is, with no copy. A small message points into
the per-thread scratch buffer the socket was read into; a large one owns the
bytes object it was received into (the frame engine reads big payloads straight
into their own buffer). Either way the Message is only valid during the call:
the connection invalidates it afterwards, and a use after that raises
``ValueError`` instead of reading overwritten memory. ``bytes()``/``text()``
copy out (``bytes()`` returns the owned buffer itself when there is one).

:class:`ReadTarget` is the buffer exporter a ``BufferedProtocol.get_buffer``
returns to the event loop: it points at the scratch buffer or at a large
message's own buffer, so the loop's transports read where the engine's own
socket transport would.

``READY`` is what ``send()`` returns when nothing needs waiting for: awaiting it
finishes at once and allocates nothing.
"""

cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_GET_SIZE, PyBytes_CheckExact
from cpython.buffer cimport PyBUF_WRITABLE, PyBUF_FORMAT, PyBUF_ND
from cpython.unicode cimport PyUnicode_DecodeUTF8

from fastws._frames cimport Opcode


cdef char* _FMT_B = b"B"


cdef inline void _fill_view(Py_buffer* view, object obj, const uint8_t* ptr, Py_ssize_t n, Py_ssize_t* shape,
                            bint readonly, int flags):
    """One contiguous byte buffer of ``n`` bytes at ``ptr``, exported by ``obj``."""
    shape[0] = n
    view.buf = <void*>ptr
    view.obj = obj
    view.len = n
    view.readonly = readonly
    view.itemsize = 1
    view.format = _FMT_B if flags & PyBUF_FORMAT else NULL
    view.ndim = 1
    view.shape = shape if flags & PyBUF_ND else NULL
    view.strides = NULL
    view.suboffsets = NULL
    view.internal = NULL


cdef int _expired() except -1:
    raise ValueError("Message used after on_message returned; copy it with msg.bytes() or msg.text()")


cdef class _Ready:
    """What ``send()`` returns when nothing needs waiting for: awaiting it
    finishes at once without allocating anything."""
    def __await__(self):
        return _EXHAUSTED

cdef object _EXHAUSTED = iter(())
READY = _Ready()


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

    @property
    def is_text(self):
        return self.opcode == Opcode.TEXT

    @property
    def is_binary(self):
        return self.opcode == Opcode.BINARY

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
        return self.text() if self.opcode == Opcode.TEXT else self.bytes()

    def __getbuffer__(self, Py_buffer* view, int flags):
        self._check()
        if flags & PyBUF_WRITABLE:
            raise BufferError("Message payloads are read-only")
        _fill_view(view, self, self._ptr, self._len, self._shape, True, flags)

    def __releasebuffer__(self, Py_buffer* view):
        pass

    def __repr__(self):
        kind = "TEXT" if self.opcode == Opcode.TEXT else "BINARY"
        return f"<Message {kind} {self._len} bytes>" if self._valid else "<Message (expired)>"


@cython.final
cdef class ReadTarget:
    """Buffer exporter handed to the event loop by ``get_buffer``; it points
    at the scratch buffer or at a large message's own buffer."""

    def __len__(self):
        return self.size

    def __getitem__(self, key):
        # asyncio's TLS transport slices the buffer it is given
        return memoryview(self)[key]

    def __getbuffer__(self, Py_buffer* view, int flags):
        _fill_view(view, self, self.ptr, self.size, self._shape, False, flags)

    def __releasebuffer__(self, Py_buffer* view):
        pass
