# cython: language_level=3
"""The protocol layer: one asyncio BufferedProtocol per WebSocket connection.

Theory of operation
-------------------
A :class:`Connection` is the protocol the event loop drives *and* the object
the application talks to (``ws``): one object per connection keeps an idle
connection small. It is built in layers, one extension module each, every
layer knowing only the ones below it (C-level calls cross through .pxd files):

==================  ==========================================================
``_frames``         sans-I/O frame engine: parser, writer, masking, deflate
``_stats``          the endpoint's counters (a C struct; read at scrape time)
``_message``        ``Message`` (zero-copy received message), read buffers
``_transport``      ``SocketTransport``: recv/send at C level; ``ReadSink``
``_endpoint``       ``Endpoint``: settings, shared cork, timer sweep, end-of-turn flush
``_output``         the write path: framing, corking, end-of-turn queue, large sends
``_input``          the read path: read targets, frame dispatch, the receive queue
``_protocol``       this module: the asyncio protocol, the handshake, closing and
                    failing, keepalive, the public API
``_fanout``         ``broadcast()``: one frame, many connections
==================  ==========================================================

States: HANDSHAKE -> OPEN -> CLOSING -> CLOSED.

1. Reads land in a per-thread scratch buffer, or, while a large payload is
   being received, straight into that message's own buffer (``read_target``).
   The socket transport recv()s there itself; the loop's transports (TLS) get
   the same target from ``get_buffer``. An idle connection holds no read
   buffer.
2. ``_on_read`` runs the FrameParser at C level and dispatches each event
   before reading on (fastws/_input.pyx). Frames written while dispatching
   (echoes, pongs) are corked in the endpoint's FrameWriter and leave in one
   write when the read has been processed (fastws/_output.pyx).
3. Two ways to consume messages share this engine: a *listener* (callbacks
   ``on_message(ws, msg)`` with a zero-copy :class:`Message`) or the *queue*
   used by ``recv()`` / ``async for``. In queue mode a CLOSE or a protocol
   error that arrives behind queued messages is queued too (``_Pending``), so
   the application sees (and answers) every message sent before it.
4. Errors map to close codes in ``_fail`` only; a peer's misbehaviour is
   logged at debug level, never as a traceback.
5. Timers (handshake timeout, keepalive pings, idle timeout, closing
   timeout) are checked by ``_check_timers``, called from the endpoint's one
   periodic sweep, so a connection carries no timer handles.
"""

cimport cython
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE, PyBytes_CheckExact
from cpython.ref cimport Py_REFCNT
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport uint8_t
from libc.string cimport memcpy, memcmp

from fastws._clock cimport now as _now, wall as _wall
from fastws._endpoint cimport CLOSED, CLOSING, HANDSHAKE, OPEN, Endpoint
from fastws._frames cimport (
    FrameParser, Deflate, Opcode,
    EV_NEED_MORE, EV_MESSAGE, EV_PING, EV_PONG, EV_CLOSE,
    fastws_scratch, FASTWS_SCRATCH_SIZE, valid_close_code, recycle_buffer, build_frame_c,
)
from fastws._limits cimport MessageGate
from fastws._message cimport Message, ReadTarget
from fastws._input cimport Input, _Pending, READ_ACCEPT, READ_APP, READ_PENDING, READ_QUEUE, READ_WRITE
from fastws._output cimport LARGE_SEND
from fastws._stats cimport Stats, code_index, count_duration, count_latency, count_refused
from fastws._transport cimport SocketTransport

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
from fastws._message import READY as _READY

cdef object logger = logging.getLogger("fastws")
cdef object _deque = collections.deque
cdef object _Future = asyncio.Future
cdef object _ProtocolError = ProtocolError

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL


cdef bytes _truncate_utf8(str text, Py_ssize_t limit):
    """UTF-8 of ``text`` cut to at most ``limit`` bytes without splitting a character."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return data
    return data[:limit].decode("utf-8", "ignore").encode("utf-8")


def monotonic():
    """The clock the timeouts use (seconds, CLOCK_MONOTONIC)."""
    return _now()


cdef object READY = _READY


def attach_socket(Endpoint endpoint, object sock, object peername, Connection conn=None):
    """Run a WebSocket connection on fastws' own transport over a connected, non-blocking socket:
    a server connection for an accepted socket, or ``conn`` (a client Connection built with
    ``client_handshake=``, whose opening request is sent at once)."""
    if conn is None:
        conn = Connection(endpoint)
    cdef SocketTransport t = SocketTransport.new(endpoint.loop, sock, peername, conn)
    conn.connection_made(t)
    t.start_reading()
    return conn


cdef class Connection(Input, asyncio.BufferedProtocol):
    """One WebSocket connection: the protocol the event loop drives and the
    object handlers receive (``ws``).

    High-level use::

        async for message in ws:        # str for TEXT, bytes for BINARY
            await ws.send(message)

    Low-level use: a listener's ``on_message(ws, msg)`` gets a zero-copy
    :class:`Message` and calls ``ws.send(...)`` without awaiting.
    """
    cdef:
        bint _upgrade                   # the request asked for a WebSocket (counted as attempted)
        bint _counted_end               # counted as failed or closed already
        double _established_at
        object _close_cbs               #: callables run once when the connection is gone (None or a list)
        object _hs                      #: ServerHandshake / ClientHandshake during the handshake
        readonly object request         #: handshake.Request (server side)
        readonly object response_headers  #: handshake.Headers (client side)
        readonly str subprotocol
        object _handler                 #: coroutine function run after the handshake (server)
        readonly object task            #: the handler's task
        object _open_waiter             #: client: Future resolved when the handshake completes
        object _closed_waiter           #: Future resolved by connection_lost, created on demand
        bint _lost
        bint _notified_close
        double _opened_at
        double _paused_since            # when the peer stopped reading what we write (0: it reads)
        public object user              #: free slot for application data (e.g. auth claims)
        public object data              #: free slot for per-connection application data
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

    def eof_received(self):
        self._on_eof()
        return False

    def connection_lost(self, exc):
        cdef bint first = not self._lost
        cdef Stats* st = &self.endpoint._st
        if not self._counted_end:
            self._counted_end = True
            if self._established_at > 0:
                st.closed += 1
                st.close_codes[code_index(self.close_code)] += 1
                if self.endpoint.stats_enabled:
                    count_duration(st, _now() - self._established_at)
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
        count_refused(&self.endpoint._st, status)

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

    cdef void transport_gone(self):
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
            self._queue_pending(code, reason, True)
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

    cdef void _notify_close(self, int code=0):
        if self._notified_close:
            return
        self._notified_close = True
        if self._listener is not None:
            cb = getattr(self._listener, "on_close", None)
            if cb is not None:
                self._call_listener(cb, (code or self.close_code, self.close_reason))

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

    cpdef _going_away(self, int code=1001, str reason="server shutting down"):
        """Graceful shutdown: close this connection with ``code``."""
        if self._state == OPEN and not self._close_sent:
            self._close_now(code, reason)
            self._uncork()
        elif self._state == HANDSHAKE and self.transport is not None and not self.endpoint.is_client:
            self._state = CLOSED
            self.transport.close()
