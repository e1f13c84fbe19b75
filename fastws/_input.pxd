# cython: language_level=3
"""C-level contract of a connection's read path and receive queue (see _input.pyx)."""

from libc.stdint cimport uint8_t

from fastws._frames cimport FrameParser
from fastws._limits cimport MessageGate
from fastws._output cimport Output


cdef enum:
    READ_QUEUE = 1          # recv() queue full
    READ_WRITE = 2          # the peer does not read what we write
    READ_PENDING = 4        # a CLOSE/failure waits behind queued messages
    READ_ACCEPT = 8         # an asynchronous accept hook is running
    READ_APP = 16           # the application paused reading (ws.pause_reading())


cdef class _Pending:
    """A CLOSE or a failure waiting in the receive queue behind messages."""
    cdef int code
    cdef str reason
    cdef bint failure


cdef class Input(Output):
    cdef:
        FrameParser _parser             # None until OPEN
        bint _direct                    # the last read_target() was a large payload's own buffer
        int _expect_hdr                 # the last message was large: its header size, read alone next time
        bint _input_closed              # a CLOSE or an error was read: parse nothing more
        bint _close_received
        readonly int close_code
        readonly str close_reason
        double _last_recv
        double _deadline                #: closing / failing / handshake deadline
        object _listener
        MessageGate _gate               # per-message rate limit checked before dispatch, or None
        object _gate_over               #: callable(ws) -> bool: a message is over the limit; True delivers it
        bytes _auto_req                 # engine-level auto response: TEXT request -> response
        bytes _auto_resp
        double _auto_ts
        object _pings                   #: dict payload -> (Future, sent_at), created on demand
        bytes _ping_payload             # the keepalive ping waiting for its pong, or None
        double _ping_sent
        readonly double latency         #: seconds of the last keepalive ping round trip
        # the receive queue (recv() / async for)
        object _queue                   #: deque of str | bytes | _Pending, created on first use
        object _waiter                  #: Future handed to recv()/__anext__, resolved with the next message
        bint _waiter_anext              # the waiter is an __anext__: a normal close ends the iteration
        bint _handed                    # a message went straight to a waiter; the app has not asked again yet
        double _handed_at               # queue mode: when the message the app is handling was read
        object _kept                    # the last large bytes payload queued for the application
        object _kept_prev               # the one before it
        # reading paused at the transport, and why
        bint _paused_reading
        int _read_block                 # READ_QUEUE | READ_WRITE | READ_PENDING | READ_ACCEPT | READ_APP

    cdef int _on_read(self, Py_ssize_t nbytes) except -1
    cdef int _process(self, uint8_t* data, Py_ssize_t n) except -1
    cdef int _on_message(self, FrameParser parser) except -1
    cdef bint _over_limit(self)
    cdef void _enqueue(self, object item)
    cdef void _keep(self, object buf)
    cdef void _release_kept(self, bint all)
    cdef void _wake_waiter(self)
    cdef object _end_exc(self, bint anext)
    cdef int _on_ping(self, FrameParser parser) except -1
    cdef int _on_pong(self, FrameParser parser) except -1
    cdef int _on_close_frame(self, FrameParser parser) except -1
    cdef bint _settle_pending(self)
    cdef void _block_reading(self, int reason, bint on)
    cdef object _closed_exc(self)
    cdef object _next(self, bint anext)
    cdef void _queue_pending(self, int code, str reason, bint failure)
    cdef void _call_listener(self, object cb, tuple args=*)
    cdef void _listener_error(self, object exc)

    # Implemented by Connection (fastws/_protocol.pyx): the handshake and the close state machine.
    cdef void _handshake_data(self, uint8_t* data, Py_ssize_t n)
    cdef void _fail(self, int code, str reason)
    cdef void _answer_close(self)
    cdef void _close_now(self, int code, str reason)
    cdef void _handle_pending(self, _Pending p)
