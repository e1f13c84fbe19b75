# cython: language_level=3
"""Fan-out: one message to many connections, framed once.

Theory of operation
-------------------
``broadcast()`` builds the frame once (server frames are never masked, and a
broadcast is never compressed, so the same bytes are right for every receiver)
and hands the same buffer to each OPEN connection's write path
(:meth:`fastws._output.Output._deliver`):

- while that connection is dispatching a read, the frame joins its cork and
  leaves with the reply;
- else a small frame is appended to the connection's end-of-turn queue, and
  everything broadcast to it in this loop turn leaves in one send;
- a large frame is sent by reference (header + payload in one writev), after
  whatever the connection queued before it.

A connection whose buffered bytes would exceed ``max_buffer`` is skipped and
returned to the caller, which applies its slow-consumer policy (rooms close or
drop; see fastws.rooms). Counters go to each connection's endpoint.
"""

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t

from fastws._endpoint cimport OPEN
from fastws._frames cimport Opcode, build_frame_c
from fastws._output cimport Output

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL


def broadcast(object connections, object data, *, Output exclude=None, Py_ssize_t max_buffer=0):
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
    cdef Output conn
    cdef list skipped = []
    if type(data) is str:
        p = PyUnicode_AsUTF8AndSize(data, &n)
        frame = build_frame_c(Opcode.TEXT, <const uint8_t*>p, n, True, False, False)
    else:
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            n = view.len
            frame = build_frame_c(Opcode.BINARY, <const uint8_t*>view.buf, n, True, False, False)
        finally:
            PyBuffer_Release(&view)
    fp = <const uint8_t*>PyBytes_AS_STRING(frame)
    fn = PyBytes_GET_SIZE(frame)
    hlen = fn - n
    for obj in connections:
        if not isinstance(obj, Output):
            raise TypeError(f"broadcast() needs fastws connections, got {type(obj).__name__}")
        conn = <Output>obj
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


def flush(object connections):
    """Write now what :func:`broadcast` queued for these connections in this loop turn.

    Broadcast frames normally leave at the end of the loop turn; a caller that has just sent a
    whole batch (a room releasing the messages that waited for a commit) calls this so they
    leave at once, one send per connection, instead of a loop iteration later. Connections
    with nothing queued, and objects that are not server connections, are passed over.
    """
    for obj in connections:
        if isinstance(obj, Output):
            (<Output>obj)._flush_bq()
