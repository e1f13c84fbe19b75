# cython: language_level=3
"""C-level contract of the frame engine, cimported by the protocol layer (_protocol, _output, _fanout).

Only what the protocol layer calls without going through Python lives here;
buffers and helpers stay private to _frames.pyx.
"""

from cpython.object cimport PyObject
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy


cdef extern from "_speedups.h":
    void fastws_mask(uint8_t* dst, const uint8_t* src, size_t n, const uint8_t* key, size_t offset) nogil
    int fastws_utf8_validate(uint32_t* state, const uint8_t* p, size_t n) nogil
    int fastws_utf8_complete(uint32_t state) nogil
    uint8_t* fastws_scratch() nogil
    const char* fastws_mask_impl() nogil
    enum: FASTWS_SCRATCH_SIZE
    enum: FASTWS_CAN_RECYCLE
    void fastws_bytes_forget_hash(PyObject* o)


cpdef enum Opcode:
    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


cpdef enum CloseCode:
    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS_RCVD = 1005
    ABNORMAL_CLOSURE = 1006
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015


# What FrameParser.next_event() found.
cdef enum:
    EV_NEED_MORE = 0    # everything given was consumed; feed more bytes
    EV_MESSAGE = 1      # a whole TEXT/BINARY message (ev_opcode, ev_ptr/ev_len, ev_obj)
    EV_PING = 2
    EV_PONG = 3
    EV_CLOSE = 4        # ev_close_code / ev_ptr+ev_len = the UTF-8 reason


cdef class Deflate:
    """permessage-deflate state of one connection (RFC 7692)."""
    cdef:
        readonly bint is_client
        readonly bint local_no_context_takeover     # we reset our compressor per message
        readonly bint remote_no_context_takeover    # the peer resets its compressor per message
        readonly int local_max_window_bits
        readonly int remote_max_window_bits
        public Py_ssize_t compress_min_size
        object _compressor      #: zlib.Compress, created on first use
        object _decompressor    #: zlib.Decompress, created on first use
        int _level
    cpdef bytes compress(self, object data)
    cdef object decompress(self, object data, bint final, Py_ssize_t max_len)


cdef class FrameParser:
    cdef:
        readonly bint is_client         # True: expect unmasked frames (we are the client)
        public Py_ssize_t max_size      # largest message, after decompression
        public Deflate deflate          #: Deflate or None when not negotiated

        # header accumulation
        uint8_t _hdr[14]
        int _hdr_len
        bint _in_payload

        # the frame being read
        uint8_t _opcode
        bint _fin
        bint _rsv1
        bint _masked
        uint8_t _key[4]
        uint64_t _flen
        uint64_t _fpos

        # the message being assembled
        int _msg_opcode                 # 0: no message in progress
        bint _msg_compressed
        uint32_t _utf8
        PyObject* _buf                  # bytes (refcount 1) receiving the payload
        Py_ssize_t _buf_len
        Py_ssize_t _buf_cap
        PyObject* _zbuf                 # bytes holding the compressed payload of one frame
        Py_ssize_t _zbuf_cap
        uint8_t _ctrl[125]
        bint _failed

        # the last event
        public int ev_opcode
        const uint8_t* ev_ptr
        public Py_ssize_t ev_len
        public object ev_obj            # bytes owning ev_ptr, or None: a view into the caller's data
        public int ev_close_code

    cdef int next_event(self, uint8_t* data, Py_ssize_t n, Py_ssize_t* consumed) except -1
    cdef inline bint in_payload(self):
        """True between a frame's header and the end of its payload."""
        return self._in_payload
    cdef bint direct_needs_room(self)
    cdef uint8_t* direct_target(self, Py_ssize_t* size, Py_ssize_t avail)
    cdef int direct_written(self, Py_ssize_t n) except -1
    cdef void reset(self)
    # private
    cdef int _fail(self, int code, str reason) except -1
    cdef int _start_frame(self, const uint8_t* h) except -1
    cdef int _ensure_buf(self, Py_ssize_t need) except -1
    cdef uint8_t* _dest(self, Py_ssize_t n) except NULL
    cdef int _payload_in_place(self, uint8_t* p, Py_ssize_t n) except -1
    cdef int _payload_checked(self, uint8_t* p, Py_ssize_t n) except -1
    cdef int _end_frame(self) except -1
    cdef int _inflate_frame(self, object compressed) except -1
    cdef int _finish_message(self) except -1
    cdef int _control_event(self, const uint8_t* p, Py_ssize_t n) except -1
    cdef tuple _event_tuple(self, int ev)


cdef class FrameWriter:
    """Serialises frames into one growable buffer (the cork of a connection)."""
    cdef:
        readonly bint is_client         # True: mask every frame with a fresh key
        uint8_t* _data
        Py_ssize_t _len
        Py_ssize_t _cap
    cdef int reserve(self, Py_ssize_t extra) except -1
    cdef int write_frame(self, int opcode, const uint8_t* payload, Py_ssize_t n, bint fin, bint rsv1) except -1
    cdef int write_close(self, int code, const uint8_t* reason, Py_ssize_t n) except -1
    cdef bytes take(self)
    cdef object view(self)
    cdef void clear(self)
    cdef inline Py_ssize_t size(self):
        return self._len
    cdef inline const uint8_t* data(self):
        """The frames written so far (``size()`` bytes; valid until the next write or clear)."""
        return self._data
    cdef inline int append_raw(self, const uint8_t* p, Py_ssize_t n) except -1:
        """Append bytes that are already whole frames (a broadcast's pre-built frame)."""
        self.reserve(n)
        memcpy(self._data + self._len, p, n)
        self._len += n
        return 0


cdef Py_ssize_t write_header(uint8_t* out, int opcode, bint fin, bint rsv1, Py_ssize_t n, const uint8_t* key) noexcept
cdef int random_key(uint8_t* out) except -1
cdef bytes build_frame_c(int opcode, const uint8_t* payload, Py_ssize_t n, bint fin, bint rsv1, bint mask)
cdef bint valid_close_code(int code) noexcept
cdef void recycle_buffer(object obj)
