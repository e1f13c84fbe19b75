# cython: language_level=3
"""Sans-I/O WebSocket frame engine (RFC 6455 framing, RFC 7692 deflate).

Theory of operation
-------------------
FrameParser is fed bytes and hands back *events*, one per call of
``next_event(data, n, &consumed)``:

    EV_NEED_MORE   everything given was consumed, nothing complete yet
    EV_MESSAGE     a whole TEXT/BINARY message (reassembled, decompressed,
                   UTF-8 checked)
    EV_PING / EV_PONG / EV_CLOSE   one control frame

States: HEADER (``_in_payload`` false; up to 13 bytes of a split header wait
in ``_hdr``) and PAYLOAD (``_fpos`` of ``_flen`` bytes read). Rules:

1. The parser never does I/O and never sends anything. A violation raises
   ProtocolError(code) and the parser stays failed.
2. ``data`` passed to next_event must be writable: payloads are unmasked in
   place. A whole unfragmented, uncompressed frame that is entirely inside
   ``data`` is delivered as a *view* (``ev_obj is None``, ``ev_ptr`` into
   ``data``): zero copies. Anything else is copied once, unmasking while
   copying, into a bytes object the parser owns (``ev_obj``), which is
   handed over when the message completes.
3. Partial payloads are processed as they arrive, so invalid UTF-8 fails the
   connection at the first bad byte, even in the middle of a frame.
4. For a large payload still to come, ``direct_target()`` returns where the
   next bytes belong, so the caller can let the kernel read straight into
   the message buffer; ``direct_written(n)`` then unmasks those bytes.
5. Sizes are checked against ``max_size`` before any allocation: a header
   announcing 2**63 bytes costs nothing.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE, _PyBytes_Resize
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE, PyBUF_WRITABLE
from cpython.memoryview cimport PyMemoryView_FromMemory
from cpython.object cimport PyObject
from cpython.ref cimport Py_XDECREF, Py_DECREF, Py_INCREF
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy

import os
import zlib

from fastws.exceptions import ProtocolError, PayloadTooBig

cdef extern from "Python.h":
    int PyBUF_READ

cdef enum:
    DIRECT_MIN = 16384          # payload still to come before reading straight into the message
    KEY_POOL = 4096             # bytes of os.urandom fetched at a time for client mask keys

cdef object _urandom = os.urandom
cdef uint8_t _key_pool[KEY_POOL]
cdef Py_ssize_t _key_pos = KEY_POOL

cdef object _zlib_compressobj = zlib.compressobj
cdef object _zlib_decompressobj = zlib.decompressobj
cdef object _zlib_error = zlib.error
cdef bytes _DEFLATE_TAIL = b"\x00\x00\xff\xff"


def mask_impl():
    """Name of the masking kernel this CPU uses (avx2, sse2 or words64)."""
    return fastws_mask_impl().decode()


cdef int random_key(uint8_t* out) except -1:
    """Four unpredictable bytes for a client mask key (RFC 6455 5.3)."""
    global _key_pos
    if _key_pos + 4 > KEY_POOL:
        fresh = _urandom(KEY_POOL)
        memcpy(_key_pool, PyBytes_AS_STRING(fresh), KEY_POOL)
        _key_pos = 0
    memcpy(out, _key_pool + _key_pos, 4)
    _key_pos += 4
    return 0


cdef bint valid_close_code(int code) noexcept:
    """Codes a peer may put on the wire (RFC 6455 7.4, IANA registry)."""
    if 1000 <= code <= 1003 or 1007 <= code <= 1014:
        return True
    return 3000 <= code <= 4999


def is_valid_close_code(int code):
    """Python twin of the close-code check."""
    return valid_close_code(code)


# ---------------------------------------------------------------- masking

def apply_mask(object buf, object key, Py_ssize_t offset=0):
    """XOR ``buf`` in place with the 4-byte ``key`` (starting at key position ``offset``).

    ``buf`` must be a writable buffer (bytearray, memoryview of one, ...).
    """
    cdef Py_buffer view
    cdef Py_buffer kview
    PyObject_GetBuffer(key, &kview, PyBUF_SIMPLE)
    try:
        if kview.len != 4:
            raise ValueError("mask key must be 4 bytes")
        PyObject_GetBuffer(buf, &view, PyBUF_WRITABLE)
        try:
            with nogil:
                fastws_mask(<uint8_t*>view.buf, <uint8_t*>view.buf, view.len, <uint8_t*>kview.buf, offset)
        finally:
            PyBuffer_Release(&view)
    finally:
        PyBuffer_Release(&kview)


def mask(object data, object key):
    """Return ``data`` XORed with the 4-byte ``key`` as new bytes."""
    cdef Py_buffer view
    cdef Py_buffer kview
    PyObject_GetBuffer(key, &kview, PyBUF_SIMPLE)
    try:
        if kview.len != 4:
            raise ValueError("mask key must be 4 bytes")
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            out = PyBytes_FromStringAndSize(NULL, view.len)
            fastws_mask(<uint8_t*>PyBytes_AS_STRING(out), <uint8_t*>view.buf, view.len, <uint8_t*>kview.buf, 0)
            return out
        finally:
            PyBuffer_Release(&view)
    finally:
        PyBuffer_Release(&kview)


def validate_utf8(object data):
    """True when ``data`` is complete, valid UTF-8 (the parser's own check)."""
    cdef Py_buffer view
    cdef uint32_t state = 0
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        if fastws_utf8_validate(&state, <uint8_t*>view.buf, view.len) < 0:
            return False
        return bool(fastws_utf8_complete(state))
    finally:
        PyBuffer_Release(&view)


cdef class Utf8Validator:
    """Incremental UTF-8 check, the same one the parser runs on TEXT payloads.

    ``feed(chunk)`` returns False at the first invalid byte; ``complete``
    tells whether the input so far ends between code points.
    """
    cdef uint32_t _state

    def feed(self, object data):
        cdef Py_buffer view
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            return fastws_utf8_validate(&self._state, <uint8_t*>view.buf, view.len) == 0
        finally:
            PyBuffer_Release(&view)

    @property
    def complete(self):
        return bool(fastws_utf8_complete(self._state))

    def reset(self):
        self._state = 0


# ---------------------------------------------------------------- building

cdef Py_ssize_t write_header(uint8_t* out, int opcode, bint fin, bint rsv1, Py_ssize_t n,
                             const uint8_t* key) noexcept:
    """Write a frame header for an ``n``-byte payload; return its length (2..14)."""
    cdef Py_ssize_t i = 2
    out[0] = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    cdef uint8_t m = 0x80 if key != NULL else 0
    if n < 126:
        out[1] = m | <uint8_t>n
    elif n < 65536:
        out[1] = m | 126
        out[2] = <uint8_t>(n >> 8)
        out[3] = <uint8_t>n
        i = 4
    else:
        out[1] = m | 127
        out[2] = <uint8_t>((<uint64_t>n) >> 56)
        out[3] = <uint8_t>((<uint64_t>n) >> 48)
        out[4] = <uint8_t>((<uint64_t>n) >> 40)
        out[5] = <uint8_t>((<uint64_t>n) >> 32)
        out[6] = <uint8_t>(n >> 24)
        out[7] = <uint8_t>(n >> 16)
        out[8] = <uint8_t>(n >> 8)
        out[9] = <uint8_t>n
        i = 10
    if key != NULL:
        memcpy(out + i, key, 4)
        i += 4
    return i


cdef bytes build_frame_c(int opcode, const uint8_t* payload, Py_ssize_t n, bint fin, bint rsv1, bint mask):
    """One frame as new bytes; masked with a fresh random key when ``mask``."""
    cdef uint8_t key[4]
    cdef uint8_t hdr[14]
    cdef Py_ssize_t h
    if mask:
        random_key(key)
        h = write_header(hdr, opcode, fin, rsv1, n, key)
    else:
        h = write_header(hdr, opcode, fin, rsv1, n, NULL)
    out = PyBytes_FromStringAndSize(NULL, h + n)
    cdef uint8_t* p = <uint8_t*>PyBytes_AS_STRING(out)
    memcpy(p, hdr, h)
    if n:
        if mask:
            fastws_mask(p + h, payload, n, key, 0)
        else:
            memcpy(p + h, payload, n)
    return out


def build_frame(int opcode, object payload, bint fin=True, bint rsv1=False, bint mask=False, object key=None):
    """Serialise one frame (Python twin of the builder).

    Args:
        opcode: an :class:`Opcode`.
        payload: bytes-like or str (encoded as UTF-8).
        fin: the FIN bit.
        rsv1: the RSV1 bit (set on the first frame of a compressed message).
        mask: mask the payload (client frames); with ``key`` None a fresh random key is used.
        key: an explicit 4-byte mask key (tests).
    Returns:
        bytes: header and payload, ready to write.
    """
    cdef Py_buffer view
    cdef Py_buffer kview
    cdef uint8_t hdr[14]
    cdef Py_ssize_t h
    if isinstance(payload, str):
        payload = (<str>payload).encode("utf-8")
    if key is None:
        PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
        try:
            return build_frame_c(opcode, <uint8_t*>view.buf, view.len, fin, rsv1, mask)
        finally:
            PyBuffer_Release(&view)
    PyObject_GetBuffer(key, &kview, PyBUF_SIMPLE)
    try:
        if kview.len != 4:
            raise ValueError("mask key must be 4 bytes")
        PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
        try:
            h = write_header(hdr, opcode, fin, rsv1, view.len, <uint8_t*>kview.buf)
            out = PyBytes_FromStringAndSize(NULL, h + view.len)
            memcpy(PyBytes_AS_STRING(out), hdr, h)
            fastws_mask(<uint8_t*>PyBytes_AS_STRING(out) + h, <uint8_t*>view.buf, view.len,
                        <uint8_t*>kview.buf, 0)
            return out
        finally:
            PyBuffer_Release(&view)
    finally:
        PyBuffer_Release(&kview)


def build_close(int code=1000, object reason=""):
    """The payload of a CLOSE frame: 2-byte code plus UTF-8 reason (empty for 1005)."""
    if code == 1005:
        return b""
    if isinstance(reason, str):
        reason = (<str>reason).encode("utf-8")
    return bytes(((code >> 8) & 0xFF, code & 0xFF)) + reason


cdef class FrameWriter:
    """A growable buffer of serialised frames: everything a connection sends in one
    dispatch pass is appended here and leaves in one ``transport.write``."""

    def __cinit__(self, bint is_client=False):
        self.is_client = is_client
        self._data = NULL
        self._len = 0
        self._cap = 0

    def __dealloc__(self):
        free(self._data)

    cdef int reserve(self, Py_ssize_t extra) except -1:
        cdef Py_ssize_t need = self._len + extra
        cdef Py_ssize_t cap
        cdef uint8_t* p
        if need <= self._cap:
            return 0
        cap = self._cap * 2 if self._cap else 4096
        if cap < need:
            cap = need
        p = <uint8_t*>realloc(self._data, cap)
        if p == NULL:
            raise MemoryError()
        self._data = p
        self._cap = cap
        return 0

    cdef int write_frame(self, int opcode, const uint8_t* payload, Py_ssize_t n, bint fin, bint rsv1) except -1:
        cdef uint8_t key[4]
        cdef Py_ssize_t h
        self.reserve(n + 14)
        if self.is_client:
            random_key(key)
            h = write_header(self._data + self._len, opcode, fin, rsv1, n, key)
            if n:
                fastws_mask(self._data + self._len + h, payload, n, key, 0)
        else:
            h = write_header(self._data + self._len, opcode, fin, rsv1, n, NULL)
            if n:
                memcpy(self._data + self._len + h, payload, n)
        self._len += h + n
        return 0

    cdef int write_close(self, int code, const uint8_t* reason, Py_ssize_t n) except -1:
        cdef uint8_t buf[125]
        if code == 1005 or code == 0:
            return self.write_frame(Opcode.CLOSE, NULL, 0, True, False)
        if n > 123:
            n = 123
        buf[0] = <uint8_t>(code >> 8)
        buf[1] = <uint8_t>code
        if n:
            memcpy(buf + 2, reason, n)
        return self.write_frame(Opcode.CLOSE, buf, n + 2, True, False)

    cdef object view(self):
        """A read-only memoryview of what was written (valid until the next write or clear)."""
        return PyMemoryView_FromMemory(<char*>self._data, self._len, PyBUF_READ)

    cdef void clear(self):
        self._len = 0
        if self._cap > 262144:
            free(self._data)
            self._data = NULL
            self._cap = 0

    cdef bytes take(self):
        """Everything written so far as bytes; the writer is empty afterwards."""
        out = PyBytes_FromStringAndSize(<char*>self._data, self._len)
        self._len = 0
        if self._cap > 262144:      # don't keep a burst's buffer around
            free(self._data)
            self._data = NULL
            self._cap = 0
        return out

    # Python twins, for tests and tools
    def add(self, int opcode, object payload, bint fin=True, bint rsv1=False):
        cdef Py_buffer view
        if isinstance(payload, str):
            payload = (<str>payload).encode("utf-8")
        PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
        try:
            self.write_frame(opcode, <uint8_t*>view.buf, view.len, fin, rsv1)
        finally:
            PyBuffer_Release(&view)

    def getvalue(self):
        return self.take()

    def __len__(self):
        return self._len


# ---------------------------------------------------------------- deflate

cdef class Deflate:
    """permessage-deflate (RFC 7692) compressor and decompressor of one connection.

    zlib contexts are created on the first message that needs one, so an idle
    connection with compression negotiated costs no zlib memory.

    Args:
        is_client: our role.
        local_no_context_takeover: reset our compressor after every message.
        remote_no_context_takeover: the peer resets its compressor (we may reset our decompressor).
        local_max_window_bits: window of our compressor (8..15).
        remote_max_window_bits: window the peer compresses with (8..15).
        compress_level: zlib level for outgoing messages.
        compress_min_size: messages shorter than this are sent uncompressed.
    """

    def __init__(self, bint is_client=False, bint local_no_context_takeover=False,
                 bint remote_no_context_takeover=False, int local_max_window_bits=15,
                 int remote_max_window_bits=15, int compress_level=6, Py_ssize_t compress_min_size=0):
        if not (8 <= local_max_window_bits <= 15 and 8 <= remote_max_window_bits <= 15):
            raise ValueError("window bits must be in 8..15")
        self.is_client = is_client
        self.local_no_context_takeover = local_no_context_takeover
        self.remote_no_context_takeover = remote_no_context_takeover
        self.local_max_window_bits = local_max_window_bits
        self.remote_max_window_bits = remote_max_window_bits
        self.compress_min_size = compress_min_size
        self._level = compress_level
        self._compressor = None
        self._decompressor = None

    def __repr__(self):
        return (f"Deflate(is_client={self.is_client}, local_no_context_takeover={self.local_no_context_takeover}, "
                f"remote_no_context_takeover={self.remote_no_context_takeover}, "
                f"local_max_window_bits={self.local_max_window_bits}, "
                f"remote_max_window_bits={self.remote_max_window_bits})")

    @property
    def contexts_allocated(self):
        """How many zlib contexts exist now (0 on an idle connection)."""
        return (self._compressor is not None) + (self._decompressor is not None)

    cpdef bytes compress(self, object data):
        """Compress one whole message payload (without the 0x00 0x00 0xff 0xff tail)."""
        cdef object c = self._compressor
        if c is None:
            if self.local_max_window_bits == 8:
                # zlib cannot deflate with a 256-byte window; a Huffman-only
                # stream has no back-references at all, so any window fits.
                c = _zlib_compressobj(self._level, zlib.DEFLATED, -9, 8, zlib.Z_HUFFMAN_ONLY)
            else:
                c = _zlib_compressobj(self._level, zlib.DEFLATED, -self.local_max_window_bits, 8)
            if not self.local_no_context_takeover:
                self._compressor = c
        out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
        cdef Py_ssize_t n = len(out)
        if n >= 4 and out[n - 4:] == _DEFLATE_TAIL:
            out = out[:n - 4]
        if not out:
            out = b"\x00"
        return out

    cdef object decompress(self, object data, bint final, Py_ssize_t max_len):
        cdef object d = self._decompressor
        if d is None:
            d = _zlib_decompressobj(-max(self.remote_max_window_bits, 9))
            self._decompressor = d
        try:
            out = d.decompress(data, max_len + 1)
            if len(out) > max_len or d.unconsumed_tail:
                raise PayloadTooBig()
            if d.eof:
                # the peer ended its deflate stream (BFINAL=1, allowed by RFC 7692 7.2.3.3):
                # the next message starts a new one; nothing may follow in this one
                self._decompressor = None
                if d.unused_data[:5] not in (b"", _DEFLATE_TAIL[:len(d.unused_data[:5])]) or (
                        not final and d.unused_data):
                    raise ProtocolError(1007, "data after the end of the deflate stream")
                return out
            if final:
                tail = d.decompress(_DEFLATE_TAIL, max_len + 1 - len(out))
                if tail:
                    out = out + tail
                    if len(out) > max_len or d.unconsumed_tail:
                        raise PayloadTooBig()
                if self.remote_no_context_takeover:
                    self._decompressor = None
        except _zlib_error as exc:
            raise ProtocolError(1007, "invalid compressed data") from exc
        return out

    def decompress_message(self, object data, Py_ssize_t max_len=1 << 30):
        """Python twin: decompress one whole message payload."""
        return self.decompress(data, True, max_len)


# ---------------------------------------------------------------- parsing

# ---------------------------------------------------------------- buffer pool
#
# Large message buffers are bytes objects. Allocating and freeing a 256 KiB
# or 1 MiB block per message makes glibc map and unmap memory, and the page
# faults cost more than the copy. A message buffer that nobody references any
# more after its dispatch (refcount 1, checked by the caller) goes back into
# this small pool and becomes the next message's buffer.

cdef enum:
    POOL_SIZE = 64              # buffers kept at most
    POOL_MIN = 65536            # smaller messages come from the ordinary allocator
    POOL_MAX = 16 << 20         # bigger ones are not kept
    POOL_BYTES = 32 << 20       # bound on the memory the pool holds

cdef PyObject* _pool[64]
cdef int _pool_n = 0
cdef Py_ssize_t _pool_bytes = 0
cdef bint _pool_used = False


cdef void recycle_buffer(object obj):
    """Keep ``obj`` (a bytes object the caller holds the only reference to) for reuse."""
    global _pool_n, _pool_bytes
    cdef Py_ssize_t n = PyBytes_GET_SIZE(obj)
    if (not FASTWS_CAN_RECYCLE or n < POOL_MIN or n > POOL_MAX or _pool_n >= POOL_SIZE
            or _pool_bytes + n > POOL_BYTES):
        return
    Py_INCREF(obj)
    _pool[_pool_n] = <PyObject*>obj
    _pool_n += 1
    _pool_bytes += n


cdef PyObject* _pool_take(Py_ssize_t want):
    """A pooled buffer (the smallest one >= want, else the largest), or NULL.

    Among buffers of the same size the most recently recycled one wins: the
    pool is a stack, so a steady stream of large messages keeps reusing the
    one or two buffers still in the CPU cache instead of cycling through all
    of them (64 x 256 KiB would not fit in L2, and every copy would miss)."""
    global _pool_n, _pool_bytes, _pool_used
    cdef int i, best = -1
    cdef Py_ssize_t size, best_size = 0
    if _pool_n == 0:
        return NULL
    i = _pool_n - 1
    while i >= 0:
        size = PyBytes_GET_SIZE(<object>_pool[i])
        if best < 0:
            best, best_size = i, size
        elif size >= want and (best_size < want or size < best_size):
            best, best_size = i, size
        elif best_size < want and size > best_size:
            best, best_size = i, size
        if best_size == want:
            break
        i -= 1
    cdef PyObject* p = _pool[best]
    _pool_n -= 1
    for i in range(best, _pool_n):
        _pool[i] = _pool[i + 1]
    _pool[_pool_n] = NULL
    _pool_bytes -= best_size
    _pool_used = True
    fastws_bytes_forget_hash(p)
    return p


def pool_size():
    """How many message buffers wait for reuse (tests, metrics)."""
    return _pool_n


def pool_trim(bint if_idle=True):
    """Free the pooled buffers; with ``if_idle``, only when none was taken since the
    last call (servers call this from their periodic sweep, so a burst's buffers go
    back to the system once it is over)."""
    global _pool_n, _pool_bytes, _pool_used
    if if_idle and _pool_used:
        _pool_used = False
        return 0
    cdef int n = _pool_n
    while _pool_n:
        _pool_n -= 1
        Py_DECREF(<object>_pool[_pool_n])
        _pool[_pool_n] = NULL
    _pool_bytes = 0
    _pool_used = False
    return n


cdef int _grow(PyObject** pbuf, Py_ssize_t* pcap, Py_ssize_t need, Py_ssize_t limit) except -1:
    """Make the bytes object at ``*pbuf`` (refcount 1, or NULL) hold ``need`` bytes.

    Capacity doubles (at least 64 KiB) but never passes ``limit`` (>= need),
    so memory follows what arrived. glibc grows big blocks with mremap, so
    doubling costs no copying there."""
    cdef Py_ssize_t cap = pcap[0]
    if pbuf[0] != NULL and need <= cap:
        return 0
    cap = cap * 2
    if cap < 65536:
        cap = 65536
    if cap < need:
        cap = need
    if cap > limit:
        cap = limit if limit >= need else need
    if pbuf[0] == NULL:
        if cap >= POOL_MIN:
            pbuf[0] = _pool_take(limit)
            if pbuf[0] != NULL:
                if PyBytes_GET_SIZE(<object>pbuf[0]) >= cap:
                    pcap[0] = PyBytes_GET_SIZE(<object>pbuf[0])
                    return 0
                _PyBytes_Resize(pbuf, cap)
                pcap[0] = cap
                return 0
        obj = PyBytes_FromStringAndSize(NULL, cap)
        Py_INCREF(obj)
        pbuf[0] = <PyObject*>obj
    else:
        _PyBytes_Resize(pbuf, cap)
    pcap[0] = cap
    return 0


@cython.final
cdef class FrameParser:
    """Incremental frame parser; see the module docstring for the rules.

    Args:
        is_client: True when we are the client (frames must be unmasked),
            False for a server (frames must be masked).
        max_size: the largest message accepted, after decompression (close 1009 beyond).
        deflate: a :class:`Deflate` when permessage-deflate was negotiated, else None
            (then RSV1 is a protocol error).
    """

    def __cinit__(self):
        self._buf = NULL
        self._zbuf = NULL

    def __init__(self, bint is_client=False, Py_ssize_t max_size=1 << 20, Deflate deflate=None):
        self.is_client = is_client
        self.max_size = max_size
        self.deflate = deflate
        self.ev_obj = None

    def __dealloc__(self):
        Py_XDECREF(self._buf)
        self._buf = NULL
        Py_XDECREF(self._zbuf)
        self._zbuf = NULL

    cdef void reset(self):
        """Forget any message in progress (used after a failure)."""
        Py_XDECREF(self._buf)
        self._buf = NULL
        Py_XDECREF(self._zbuf)
        self._zbuf = NULL
        self._buf_len = 0
        self._buf_cap = 0
        self._zbuf_cap = 0
        self._msg_opcode = 0
        self._in_payload = False
        self._hdr_len = 0

    cdef int _fail(self, int code, str reason) except -1:
        self._failed = True
        self.reset()
        if code == 1009:
            raise PayloadTooBig(reason)
        raise ProtocolError(code, reason)

    cdef int _start_frame(self, const uint8_t* h) except -1:
        """Validate a complete header at ``h`` and enter the PAYLOAD state."""
        cdef uint8_t b0 = h[0]
        cdef uint8_t b1 = h[1]
        cdef int opcode = b0 & 0x0F
        cdef uint64_t flen = b1 & 0x7F
        cdef Py_ssize_t i = 2
        if b0 & 0x30:
            return self._fail(1002, "reserved bits RSV2/RSV3 set")
        self._fin = (b0 & 0x80) != 0
        self._rsv1 = (b0 & 0x40) != 0
        self._masked = (b1 & 0x80) != 0
        if self._masked == self.is_client:
            if self.is_client:
                return self._fail(1002, "masked frame from server")
            return self._fail(1002, "unmasked frame from client")
        if flen == 126:
            flen = (<uint64_t>h[2] << 8) | h[3]
            i = 4
        elif flen == 127:
            flen = ((<uint64_t>h[2] << 56) | (<uint64_t>h[3] << 48) | (<uint64_t>h[4] << 40) |
                    (<uint64_t>h[5] << 32) | (<uint64_t>h[6] << 24) | (<uint64_t>h[7] << 16) |
                    (<uint64_t>h[8] << 8) | <uint64_t>h[9])
            i = 10
            if flen >> 63:
                return self._fail(1002, "payload length with the most significant bit set")
        if self._masked:
            memcpy(self._key, h + i, 4)
        if opcode >= 8:
            if opcode > 0xA:
                return self._fail(1002, "reserved opcode")
            if not self._fin:
                return self._fail(1002, "fragmented control frame")
            if flen > 125:
                return self._fail(1002, "control frame longer than 125 bytes")
            if self._rsv1:
                return self._fail(1002, "RSV1 set on a control frame")
        elif opcode == 0:
            if self._msg_opcode == 0:
                return self._fail(1002, "continuation frame without a message to continue")
            if self._rsv1:
                return self._fail(1002, "RSV1 set on a continuation frame")
            if not self._msg_compressed and <uint64_t>self._buf_len + flen > <uint64_t>self.max_size:
                return self._fail(1009, "message too big")
        elif opcode <= 2:
            if self._msg_opcode != 0:
                return self._fail(1002, "new message inside a fragmented message")
            if self._rsv1 and self.deflate is None:
                return self._fail(1002, "RSV1 set without a negotiated extension")
            if not self._rsv1 and flen > <uint64_t>self.max_size:
                return self._fail(1009, "message too big")
            self._msg_opcode = opcode
            self._msg_compressed = self._rsv1
            self._utf8 = 0
            self._buf_len = 0
        else:
            return self._fail(1002, "reserved opcode")
        if self._msg_compressed and opcode <= 2 and flen > <uint64_t>(self.max_size + (self.max_size >> 4) + 1024):
            # more compressed bytes in one frame than any max_size message can deflate to
            return self._fail(1009, "message too big")
        self._opcode = opcode
        self._flen = flen
        self._fpos = 0
        self._in_payload = True
        return 0

    cdef int _ensure_buf(self, Py_ssize_t need) except -1:
        """Make the message buffer hold at least ``need`` bytes (decompressed output)."""
        return _grow(&self._buf, &self._buf_cap, need, need if need > self.max_size else self.max_size)

    cdef uint8_t* _dest(self, Py_ssize_t n) except NULL:
        """Where byte ``_fpos`` of the current frame's payload goes, with room for ``n`` bytes.

        Buffers grow with the data that actually arrived (doubling, never past
        the frame's end), so a header announcing a big frame costs nothing
        until its bytes come."""
        cdef Py_ssize_t flen = <Py_ssize_t>self._flen
        if self._opcode >= 8:
            return self._ctrl + self._fpos
        if self._msg_compressed:
            _grow(&self._zbuf, &self._zbuf_cap, <Py_ssize_t>self._fpos + n, flen)
            return <uint8_t*>PyBytes_AS_STRING(<object>self._zbuf) + self._fpos
        _grow(&self._buf, &self._buf_cap, self._buf_len + <Py_ssize_t>self._fpos + n, self._buf_len + flen)
        return <uint8_t*>PyBytes_AS_STRING(<object>self._buf) + self._buf_len + self._fpos

    cdef int _payload_in_place(self, uint8_t* p, Py_ssize_t n) except -1:
        """Unmask ``n`` payload bytes already at their destination, check UTF-8, advance."""
        if self._masked and n:
            fastws_mask(p, p, n, self._key, self._fpos)
        return self._payload_checked(p, n)

    cdef int _payload_checked(self, uint8_t* p, Py_ssize_t n) except -1:
        """``n`` unmasked payload bytes are at their destination: check UTF-8, advance."""
        if self._opcode < 8 and self._msg_opcode == 1 and not self._msg_compressed:
            if fastws_utf8_validate(&self._utf8, p, n) < 0:
                return self._fail(1007, "invalid UTF-8 in text message")
        self._fpos += n
        return 0

    cdef int _end_frame(self) except -1:
        """The current frame's payload is complete: emit an event or keep assembling."""
        cdef uint8_t* p
        cdef Py_ssize_t n = <Py_ssize_t>self._flen
        cdef int code
        cdef uint32_t st
        self._in_payload = False
        if self._opcode >= 8:
            return self._control_event(self._ctrl, n)
        if self._msg_compressed:
            if self._zbuf != NULL and PyBytes_GET_SIZE(<object>self._zbuf) != n:
                _PyBytes_Resize(&self._zbuf, n)     # a pooled buffer may be longer than the frame
            zb = <object>self._zbuf if self._zbuf != NULL else b""
            Py_XDECREF(self._zbuf)
            self._zbuf = NULL
            self._zbuf_cap = 0
            return self._inflate_frame(zb)
        self._buf_len += n
        if not self._fin:
            return EV_NEED_MORE
        return self._finish_message()

    cdef int _inflate_frame(self, object compressed) except -1:
        try:
            out = self.deflate.decompress(compressed, self._fin, self.max_size - self._buf_len)
        except ProtocolError as exc:
            return self._fail(exc.code, exc.reason)
        cdef Py_ssize_t olen = PyBytes_GET_SIZE(out)
        cdef uint8_t* p = <uint8_t*>PyBytes_AS_STRING(out)
        if self._msg_opcode == 1 and fastws_utf8_validate(&self._utf8, p, olen) < 0:
            return self._fail(1007, "invalid UTF-8 in text message")
        if self._fin and self._buf == NULL:
            # one-frame message: hand zlib's output over as is
            if self._msg_opcode == 1 and not fastws_utf8_complete(self._utf8):
                return self._fail(1007, "truncated UTF-8 in text message")
            self.ev_opcode = self._msg_opcode
            self.ev_obj = out
            self.ev_ptr = p
            self.ev_len = olen
            self._msg_opcode = 0
            return EV_MESSAGE
        if olen:
            self._ensure_buf(self._buf_len + olen)
            memcpy(<uint8_t*>PyBytes_AS_STRING(<object>self._buf) + self._buf_len, p, olen)
            self._buf_len += olen
        if not self._fin:
            return EV_NEED_MORE
        return self._finish_message()

    cdef int _finish_message(self) except -1:
        if self._msg_opcode == 1 and not fastws_utf8_complete(self._utf8):
            return self._fail(1007, "truncated UTF-8 in text message")
        if self._buf == NULL:
            obj = b""
        else:
            if self._buf_cap != self._buf_len:
                if _PyBytes_Resize(&self._buf, self._buf_len) < 0:
                    self._buf = NULL
                    return -1
            obj = <object>self._buf
            Py_DECREF(obj)          # the reference held in _buf moves to ev_obj
            self._buf = NULL
        self._buf_cap = 0
        self.ev_opcode = self._msg_opcode
        self.ev_obj = obj
        self.ev_ptr = <uint8_t*>PyBytes_AS_STRING(obj)
        self.ev_len = self._buf_len
        self._buf_len = 0
        self._msg_opcode = 0
        return EV_MESSAGE

    cdef int _control_event(self, const uint8_t* p, Py_ssize_t n) except -1:
        cdef int code
        cdef uint32_t st = 0
        self.ev_opcode = self._opcode
        self.ev_obj = None
        if self._opcode == 8:
            if n == 0:
                self.ev_close_code = 1005
                self.ev_ptr = p
                self.ev_len = 0
                return EV_CLOSE
            if n == 1:
                return self._fail(1002, "close frame with a 1-byte payload")
            code = (p[0] << 8) | p[1]
            if not valid_close_code(code):
                return self._fail(1002, "invalid close code")
            if fastws_utf8_validate(&st, p + 2, n - 2) < 0 or not fastws_utf8_complete(st):
                return self._fail(1007, "invalid UTF-8 in close reason")
            self.ev_close_code = code
            self.ev_ptr = p + 2
            self.ev_len = n - 2
            return EV_CLOSE
        self.ev_ptr = p
        self.ev_len = n
        return EV_PING if self._opcode == 9 else EV_PONG

    cdef int next_event(self, uint8_t* data, Py_ssize_t n, Py_ssize_t* consumed) except -1:
        """Consume bytes from ``data[0:n]`` until one event is complete.

        Sets ``consumed[0]`` to the number of bytes used and returns the event
        (EV_NEED_MORE when all ``n`` bytes were used without completing one).
        """
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t hs, take, avail
        cdef uint64_t remaining
        cdef uint8_t* p
        cdef uint8_t b1
        cdef int ev
        if self._failed:
            raise ProtocolError(1002, "the connection already failed")
        while True:
            if not self._in_payload:
                avail = n - pos
                if self._hdr_len == 0 and avail >= 2:
                    b1 = data[pos + 1] & 0x7F
                    hs = 2 + (2 if b1 == 126 else (8 if b1 == 127 else 0)) + (4 if data[pos + 1] & 0x80 else 0)
                    if avail >= hs:
                        self._start_frame(data + pos)
                        pos += hs
                    else:
                        memcpy(self._hdr, data + pos, avail)
                        self._hdr_len = <int>avail
                        consumed[0] = n
                        return EV_NEED_MORE
                else:
                    # a header split across reads: gather it in _hdr
                    if self._hdr_len < 2:
                        take = min(2 - self._hdr_len, avail)
                        memcpy(self._hdr + self._hdr_len, data + pos, take)
                        self._hdr_len += <int>take
                        pos += take
                        avail -= take
                        if self._hdr_len < 2:
                            consumed[0] = n
                            return EV_NEED_MORE
                    b1 = self._hdr[1] & 0x7F
                    hs = 2 + (2 if b1 == 126 else (8 if b1 == 127 else 0)) + (4 if self._hdr[1] & 0x80 else 0)
                    take = min(hs - self._hdr_len, avail)
                    memcpy(self._hdr + self._hdr_len, data + pos, take)
                    self._hdr_len += <int>take
                    pos += take
                    if self._hdr_len < hs:
                        consumed[0] = n
                        return EV_NEED_MORE
                    self._hdr_len = 0
                    self._start_frame(self._hdr)
                # fast path: the whole payload is here
                if <uint64_t>(n - pos) >= self._flen:
                    take = <Py_ssize_t>self._flen
                    p = data + pos
                    if self._opcode >= 8:
                        if self._masked and take:
                            fastws_mask(p, p, take, self._key, 0)
                        pos += take
                        self._in_payload = False
                        consumed[0] = pos
                        return self._control_event(p, take)
                    if self._fin and self._opcode != 0:
                        if self._masked and take:
                            fastws_mask(p, p, take, self._key, 0)
                        pos += take
                        self._in_payload = False
                        if self._rsv1:
                            consumed[0] = pos
                            return self._inflate_frame(PyMemoryView_FromMemory(<char*>p, take, PyBUF_READ))
                        if self._opcode == 1:
                            if fastws_utf8_validate(&self._utf8, p, take) < 0 or not fastws_utf8_complete(self._utf8):
                                self._fail(1007, "invalid UTF-8 in text message")
                        self._msg_opcode = 0
                        self.ev_opcode = self._opcode
                        self.ev_obj = None
                        self.ev_ptr = p
                        self.ev_len = take
                        consumed[0] = pos
                        return EV_MESSAGE
            # PAYLOAD state: copy (unmasking) what is here into the destination
            remaining = self._flen - self._fpos
            if remaining:
                if pos >= n:
                    consumed[0] = pos
                    return EV_NEED_MORE
                take = <Py_ssize_t>remaining if remaining < <uint64_t>(n - pos) else n - pos
                p = self._dest(take)
                if self._masked:
                    fastws_mask(p, data + pos, take, self._key, self._fpos)  # one pass: unmask while copying
                else:
                    memcpy(p, data + pos, take)
                self._payload_checked(p, take)
                pos += take
                if self._fpos < self._flen:
                    consumed[0] = pos
                    return EV_NEED_MORE
            ev = self._end_frame()
            if ev != EV_NEED_MORE:
                consumed[0] = pos
                return ev

    cdef bint direct_needs_room(self):
        """True when the next direct read would have to allocate or grow the message buffer
        (and no pooled buffer is at hand): the caller may then say how many bytes wait."""
        if not self._in_payload or self._opcode >= 8 or self._failed or self._flen - self._fpos < DIRECT_MIN:
            return False
        if self._msg_compressed:
            return self._zbuf == NULL or <uint64_t>(self._zbuf_cap - <Py_ssize_t>self._fpos) < self._flen - self._fpos
        if self._buf == NULL:
            return _pool_n == 0
        return <uint64_t>(self._buf_cap - self._buf_len - <Py_ssize_t>self._fpos) < self._flen - self._fpos

    cdef uint8_t* direct_target(self, Py_ssize_t* size, Py_ssize_t avail):
        """Where the kernel may write the rest of a large payload, or NULL.

        ``avail`` is how many bytes are known to wait in the socket (0: unknown): the
        buffer then grows to hold them at once, else it doubles with what has arrived."""
        cdef uint64_t remaining
        if not self._in_payload or self._opcode >= 8 or self._failed:
            return NULL
        cdef Py_ssize_t filled, want, room
        remaining = self._flen - self._fpos
        if remaining < DIRECT_MIN:
            return NULL
        filled = <Py_ssize_t>self._fpos if self._msg_compressed else self._buf_len + <Py_ssize_t>self._fpos
        want = filled if filled > DIRECT_MIN * 4 else DIRECT_MIN * 4
        if avail > want:
            want = avail
        if <uint64_t>want > remaining:
            want = <Py_ssize_t>remaining
        try:
            p = self._dest(want)
        except BaseException:
            return NULL
        room = (self._zbuf_cap if self._msg_compressed else self._buf_cap) - filled
        size[0] = room if <uint64_t>room < remaining else <Py_ssize_t>remaining
        return p

    cdef int direct_written(self, Py_ssize_t n) except -1:
        """``n`` bytes were written at ``direct_target()``: unmask and check them."""
        return self._payload_in_place(self._dest(n), n)

    # ------------------------------------------------------------ Python twins

    def feed_data(self, object data):
        """Parse ``data`` and return the complete events as a list.

        Each event is ``(opcode, payload)``: TEXT and BINARY messages whole and
        reassembled (bytes), PING/PONG payloads, and for CLOSE the raw close
        payload (code and reason, already validated).

        Raises:
            ProtocolError: on the first violation; its ``events`` attribute
                holds the events completed before it.
        """
        cdef bytearray buf = bytearray(data)
        cdef uint8_t* p = <uint8_t*>buf if len(buf) else NULL
        cdef Py_ssize_t n = len(buf)
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t used = 0
        cdef int ev
        events = []
        while True:
            try:
                ev = self.next_event(p + pos if p != NULL else NULL, n - pos, &used)
            except ProtocolError as exc:
                exc.events = events
                raise
            pos += used
            if ev == EV_NEED_MORE:
                return events
            events.append(self._event_tuple(ev))

    cdef tuple _event_tuple(self, int ev):
        cdef bytes payload
        if ev == EV_MESSAGE and self.ev_obj is not None:
            payload = self.ev_obj
            self.ev_obj = None
            return (Opcode(self.ev_opcode), payload)
        payload = PyBytes_FromStringAndSize(<char*>self.ev_ptr, self.ev_len)
        if ev == EV_CLOSE:
            if self.ev_close_code == 1005:
                return (Opcode.CLOSE, b"")
            return (Opcode.CLOSE, bytes(((self.ev_close_code >> 8) & 0xFF, self.ev_close_code & 0xFF)) + payload)
        return (Opcode(self.ev_opcode), payload)

    @property
    def message_in_progress(self):
        """True between the first and the last frame of a fragmented message."""
        return self._msg_opcode != 0
