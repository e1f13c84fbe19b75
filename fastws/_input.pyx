# cython: language_level=3
"""A connection's read path: reading, frame dispatch and the receive queue.

Theory of operation
-------------------
:class:`Input` is the part of a Connection that takes bytes in and turns them
into messages for the application; it builds on the write path
(fastws/_output.pyx) because dispatching answers some frames at once (pongs,
auto responses), and Connection (fastws/_protocol.pyx) builds on it with the
handshake and the close state machine, which it calls through the five methods
declared last in _input.pxd.

1. *Where reads go.* ``read_target()`` names the buffer for the next read: a
   large payload's own buffer while one is being received (the parser's direct
   target, sized from what already waits in the socket), else the per-thread
   scratch buffer. After a large message the first read takes only the next
   header, so a run of large messages is read straight into their buffers.
2. *Dispatch.* ``_on_read`` corks the output, runs the FrameParser over the
   bytes at C level and dispatches each event before reading on: a message to
   the auto response, the message gate, then the listener (a zero-copy
   :class:`~fastws._message.Message`, invalidated when the call returns) or the
   receive queue; a PING is answered from the cork; a PONG resolves pings; a
   CLOSE starts the closing handshake. A ProtocolError from the parser fails
   the connection with its close code.
3. *The receive queue* (``recv()`` / ``async for``): a message goes straight to
   a waiting Future when there is one, else into a deque; ``max_queue`` queued
   messages pause reading until the application has read half of them. A CLOSE
   or a failure that arrives behind queued messages waits in the queue as a
   ``_Pending``, so the application reads every message sent before it. Large
   payloads are remembered two deep (``_kept``): once the application has let
   go of one, its buffer goes back to the pool for the next large message.
4. *Pausing.* Reading is paused at the transport while any reason in
   ``_read_block`` holds (queue full, peer not reading our writes, a pending
   CLOSE, an asynchronous accept hook, the application's own pause) and resumed
   when none is left.
"""

import asyncio
import collections
import logging

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE, PyBytes_CheckExact
from cpython.ref cimport Py_REFCNT
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport uint8_t
from libc.string cimport memcmp

from fastws._clock cimport now as _now, wall as _wall
from fastws._endpoint cimport CLOSED, CLOSING, HANDSHAKE, OPEN
from fastws._frames cimport (
    FrameParser, Opcode, EV_NEED_MORE, EV_MESSAGE, EV_PING, EV_PONG,
    fastws_scratch, FASTWS_SCRATCH_SIZE, recycle_buffer,
)
from fastws._message cimport Message, ReadTarget
from fastws._output cimport LARGE_SEND
from fastws._stats cimport Stats, count_latency

from fastws.exceptions import BufferFull, ConnectionClosed, ConnectionClosedError, ConnectionClosedOK, ProtocolError

cdef object logger = logging.getLogger("fastws")
cdef object _deque = collections.deque


cdef inline void _recycle_unheld(object buf):
    """Pool ``buf`` when the caller's reference is the only one left (else just let it go).
    The argument is borrowed (a cdef function does not take a reference of its own)."""
    if buf is not None and Py_REFCNT(buf) == 1:
        recycle_buffer(buf)


cdef class _Pending:
    pass


cdef class Input(Output):
    """The read path of a connection (fastws.Connection is the class to use)."""

    cdef Py_ssize_t read_target(self, uint8_t** out) except -1:
        """Where the next read goes: a large payload's own buffer, else the scratch buffer."""
        cdef Py_ssize_t size = 0, avail
        cdef uint8_t* p = NULL
        if (self._state == OPEN or self._state == CLOSING) and not self._input_closed and self._parser is not None:
            avail = 0
            if self._sock is not None and self._parser.direct_needs_room():
                # the buffer must grow: size it for what already waits in the socket, so a
                # large message that has arrived whole takes one read and no reallocation
                avail = self._sock.queued()
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
        cdef ReadTarget t = self.endpoint._target
        t.size = self.read_target(&t.ptr)
        return t

    def buffer_updated(self, Py_ssize_t nbytes):
        self._on_read(nbytes)

    cdef int data_read(self, Py_ssize_t nbytes) except -1:
        """The socket transport read ``nbytes``; 1: that read ended a large frame (stop reading on)."""
        cdef bint direct = self._direct
        self._on_read(nbytes)
        return direct and self._parser is not None and not self._parser.in_payload()

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
            self._auto_ts = _wall()
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
                    count_latency(&self.endpoint._st, _now() - self._last_recv)
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
            self._queue_pending(code, reason, False)
            return 0
        self._answer_close()
        return 0

    cdef void _queue_pending(self, int code, str reason, bint failure):
        """Queue a CLOSE (``failure`` False) or a failure behind the messages the application has
        not read yet, stop reading, and bound the wait by the close timeout."""
        if self._queue is None:
            self._queue = _deque()
        p = _Pending()
        p.code = code
        p.reason = reason
        p.failure = failure
        self._queue.append(p)
        self._deadline = _now() + self.endpoint.close_timeout
        self._block_reading(READ_PENDING, True)

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

    cdef object _closed_exc(self):
        cdef int code = self.close_code
        if code in (1000, 1001) or (code == 1005 and self._close_received):
            return ConnectionClosedOK(code, self.close_reason)
        if self._close_sent and self._sent_close_code in (1000, 1001) and code == 1006 and not self._close_received:
            return ConnectionClosedOK(self._sent_close_code, "")
        return ConnectionClosedError(code, self.close_reason)

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
                count_latency(&self.endpoint._st, _now() - self._handed_at)
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

    # ------------------------------------------------------------ implemented by Connection

    cdef void _handshake_data(self, uint8_t* data, Py_ssize_t n):
        pass

    cdef void _fail(self, int code, str reason):
        pass

    cdef void _answer_close(self):
        pass

    cdef void _close_now(self, int code, str reason):
        pass

    cdef void _handle_pending(self, _Pending p):
        pass
