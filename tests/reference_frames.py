"""A small pure-Python reference codec: the differential-testing oracle of ``fastws._frames``.

It has the same Python-visible API as the Cython engine (``FrameParser.feed_data``,
``build_frame``, ``apply_mask``, ``mask``) and is written to be read, not to be
fast. It shares no parsing code with fastws: only the exception classes (so both
engines raise the same ``ProtocolError``/``PayloadTooBig``) and, for
permessage-deflate, the *parameters* of a ``fastws._frames.Deflate`` object
(the inflating itself is plain :mod:`zlib` here).

Rules it implements (RFC 6455 section 5, RFC 7692):

1. A header is validated once it is complete (2..14 bytes), in this order:
   RSV2/RSV3, masking, 64-bit length MSB, control-frame rules, fragmentation
   rules, RSV1, then ``max_size``. Every violation is close code 1002 except
   ``max_size`` (1009). A header announcing more than ``max_size`` fails before
   any payload byte is read or any memory is reserved for it.
2. Payload bytes are handled as they arrive: a TEXT message's UTF-8 is checked
   incrementally, so an invalid byte fails the parser on the chunk that
   carries it, even in the middle of a frame.
3. A compressed message is inflated as its bytes arrive, with ``max_size``
   applied to the inflated size (a decompression bomb fails with 1009).
4. After a violation the parser is failed for good: every later ``feed_data``
   raises ``ProtocolError(1002)``.
"""

from __future__ import annotations

import os
import struct
import zlib

from fastws.exceptions import PayloadTooBig, ProtocolError

CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
DATA_OPCODES = (TEXT, BINARY)
CONTROL_OPCODES = (CLOSE, PING, PONG)
DEFLATE_TAIL = b"\x00\x00\xff\xff"


# ---------------------------------------------------------------- masking


def _check_key(key) -> bytes:
    key = bytes(memoryview(key))
    if len(key) != 4:
        raise ValueError("mask key must be 4 bytes")
    return key


def apply_mask(buf, key, offset: int = 0) -> None:
    """XOR the writable buffer ``buf`` in place with ``key``, starting at key byte ``offset``."""
    key = _check_key(key)
    view = memoryview(buf)
    if view.readonly:
        raise BufferError("Object is not writable.")
    if not view.c_contiguous:
        raise BufferError("memoryview: underlying buffer is not C-contiguous")
    view = view.cast("B")
    for i in range(len(view)):
        view[i] ^= key[(offset + i) % 4]


def mask(data, key) -> bytes:
    """``data`` XORed with ``key`` as new bytes."""
    out = bytearray(memoryview(data).cast("B"))
    apply_mask(out, key)
    return bytes(out)


# ---------------------------------------------------------------- building


def build_frame(opcode: int, payload, fin: bool = True, rsv1: bool = False, mask: bool = False,
                key=None) -> bytes:
    """One frame: header (2..14 bytes) and payload, masked when ``mask`` or ``key`` is given."""
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    payload = bytes(memoryview(payload).cast("B"))
    if key is not None:
        key = _check_key(key)
    elif mask:
        key = os.urandom(4)
    n = len(payload)
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    m = 0x80 if key is not None else 0
    if n < 126:
        head = struct.pack("!BB", b0, m | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, m | 126, n)
    else:
        head = struct.pack("!BBQ", b0, m | 127, n)
    if key is None:
        return head + payload
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def valid_close_code(code: int) -> bool:
    """Close codes a peer may send (RFC 6455 section 7.4 and the IANA registry)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


# ---------------------------------------------------------------- UTF-8


class Utf8Checker:
    """Incremental UTF-8 validation straight from the RFC 3629 table.

    Unlike Python's incremental decoder, it rejects a byte as soon as no valid
    sequence can start with what was seen (``ED A0`` fails at ``A0``).
    """

    def __init__(self) -> None:
        self.need = 0       # continuation bytes still expected
        self.lo = 0x80      # allowed range of the next continuation byte
        self.hi = 0xBF

    def feed(self, data: bytes) -> bool:
        """False at the first invalid byte."""
        if self.need == 0 and data.isascii():
            return True
        for c in data:
            if self.need:
                if not self.lo <= c <= self.hi:
                    return False
                self.need -= 1
                self.lo, self.hi = 0x80, 0xBF
            elif c < 0x80:
                continue
            elif 0xC2 <= c <= 0xDF:
                self.need = 1
            elif 0xE0 <= c <= 0xEF:
                self.need = 2
                self.lo = 0xA0 if c == 0xE0 else 0x80     # no overlong 3-byte forms
                self.hi = 0x9F if c == 0xED else 0xBF     # no surrogates
            elif 0xF0 <= c <= 0xF4:
                self.need = 3
                self.lo = 0x90 if c == 0xF0 else 0x80     # no overlong 4-byte forms
                self.hi = 0x8F if c == 0xF4 else 0xBF     # nothing above U+10FFFF
            else:
                return False
        return True

    @property
    def complete(self) -> bool:
        return self.need == 0


# ---------------------------------------------------------------- parsing


def _fail(code: int, reason: str):
    if code == 1009:
        return PayloadTooBig(reason)
    return ProtocolError(code, reason)


class FrameParser:
    """Incremental frame parser with the Python-visible API of ``fastws._frames.FrameParser``."""

    def __init__(self, is_client: bool = False, max_size: int = 1 << 20, deflate=None) -> None:
        self.is_client = is_client
        self.max_size = max_size
        self.deflate = deflate
        self._pending = bytearray()   # bytes of a header not complete yet
        self._failed = False
        # the frame being read (None between frames)
        self._frame: dict | None = None
        # the message being assembled
        self._msg_opcode = 0
        self._msg = bytearray()
        self._msg_compressed = False
        self._utf8 = Utf8Checker()
        self._inflater = None

    @property
    def message_in_progress(self) -> bool:
        return self._msg_opcode != 0

    def feed_data(self, data) -> list[tuple[int, bytes]]:
        """Parse ``data``; return the completed events as ``(opcode, payload)`` pairs.

        Raises:
            ProtocolError: on the first violation, with ``events`` holding the
                events completed before it.
        """
        if self._failed:
            exc = ProtocolError(1002, "the connection already failed")
            exc.events = []
            raise exc
        events: list[tuple[int, bytes]] = []
        try:
            self._parse(bytes(data), events)
        except ProtocolError as exc:
            self._failed = True
            exc.events = events
            raise
        return events

    def _parse(self, data: bytes, events: list) -> None:
        pos = 0
        while True:
            if self._frame is None:
                self._pending += data[pos:]
                pos = len(data)
                size = self._header_size(self._pending)
                if size is None or len(self._pending) < size:
                    return
                header, rest = bytes(self._pending[:size]), bytes(self._pending[size:])
                self._pending.clear()
                data, pos = rest, 0
                self._frame = self._start_frame(header)
            frame = self._frame
            take = min(frame["length"] - frame["pos"], len(data) - pos)
            chunk = bytearray(data[pos:pos + take])
            pos += take
            if frame["key"] is not None:
                apply_mask(chunk, frame["key"], frame["pos"])
            frame["pos"] += take
            self._payload(frame, bytes(chunk))
            if frame["pos"] < frame["length"]:
                return
            self._frame = None
            event = self._end_frame(frame)
            if event is not None:
                events.append(event)

    @staticmethod
    def _header_size(head: bytearray) -> int | None:
        if len(head) < 2:
            return None
        length = head[1] & 0x7F
        size = 2 + {126: 2, 127: 8}.get(length, 0)
        return size + (4 if head[1] & 0x80 else 0)

    def _start_frame(self, h: bytes) -> dict:
        fin, rsv1, rsv23, opcode = h[0] & 0x80, h[0] & 0x40, h[0] & 0x30, h[0] & 0x0F
        masked, length = bool(h[1] & 0x80), h[1] & 0x7F
        if rsv23:
            raise _fail(1002, "reserved bits RSV2/RSV3 set")
        if masked and self.is_client:
            raise _fail(1002, "masked frame from server")
        if not masked and not self.is_client:
            raise _fail(1002, "unmasked frame from client")
        i = 2
        if length == 126:
            (length,) = struct.unpack_from("!H", h, 2)
            i = 4
        elif length == 127:
            (length,) = struct.unpack_from("!Q", h, 2)
            i = 10
            if length >> 63:
                raise _fail(1002, "payload length with the most significant bit set")
        key = h[i:i + 4] if masked else None
        if opcode in CONTROL_OPCODES:
            if not fin:
                raise _fail(1002, "fragmented control frame")
            if length > 125:
                raise _fail(1002, "control frame longer than 125 bytes")
            if rsv1:
                raise _fail(1002, "RSV1 set on a control frame")
        elif opcode == CONTINUATION:
            if not self._msg_opcode:
                raise _fail(1002, "continuation frame without a message to continue")
            if rsv1:
                raise _fail(1002, "RSV1 set on a continuation frame")
            if not self._msg_compressed and len(self._msg) + length > self.max_size:
                raise _fail(1009, "message too big")
        elif opcode in DATA_OPCODES:
            if self._msg_opcode:
                raise _fail(1002, "new message inside a fragmented message")
            if rsv1 and self.deflate is None:
                raise _fail(1002, "RSV1 set without a negotiated extension")
            # a compressed payload is checked once inflated (rule 3)
            if not rsv1 and length > self.max_size:
                raise _fail(1009, "message too big")
            self._msg_opcode = opcode
            self._msg_compressed = bool(rsv1)
            self._msg.clear()
            self._utf8 = Utf8Checker()
        else:
            raise _fail(1002, "reserved opcode")
        return {"opcode": opcode, "fin": bool(fin), "key": key, "length": length, "pos": 0, "control": bytearray()}

    def _payload(self, frame: dict, chunk: bytes) -> None:
        """Unmasked payload bytes of the current frame, as they arrive."""
        if frame["opcode"] in CONTROL_OPCODES:
            frame["control"] += chunk
            return
        if self._msg_compressed:
            chunk = self._inflate(chunk, final=False)
        self._append(chunk)

    def _append(self, chunk: bytes) -> None:
        if len(self._msg) + len(chunk) > self.max_size:
            raise _fail(1009, "message too big")
        if self._msg_opcode == TEXT and not self._utf8.feed(chunk):
            raise _fail(1007, "invalid UTF-8 in text message")
        self._msg += chunk

    def _inflate(self, chunk: bytes, final: bool) -> bytes:
        if self._inflater is None:
            self._inflater = zlib.decompressobj(-max(self.deflate.remote_max_window_bits, 9))
        limit = self.max_size - len(self._msg) + 1
        try:
            out = self._inflater.decompress(chunk, limit)
            if final and len(out) < limit and not self._inflater.unconsumed_tail:
                out += self._inflater.decompress(DEFLATE_TAIL, limit - len(out))
        except zlib.error as exc:
            raise _fail(1007, "invalid compressed data") from exc
        if len(out) >= limit or self._inflater.unconsumed_tail:
            raise _fail(1009, "message too big")
        return out

    def _end_frame(self, frame: dict):
        """The frame's payload is complete: return an event, or None while a message is assembled."""
        opcode = frame["opcode"]
        if opcode in CONTROL_OPCODES:
            payload = bytes(frame["control"])
            if opcode == CLOSE:
                self._check_close(payload)
            return (opcode, payload)
        if not frame["fin"]:
            return None
        if self._msg_compressed:
            self._append(self._inflate(b"", final=True))
            if self.deflate.remote_no_context_takeover:
                self._inflater = None
        if self._msg_opcode == TEXT and not self._utf8.complete:
            raise _fail(1007, "truncated UTF-8 in text message")
        event = (self._msg_opcode, bytes(self._msg))
        self._msg_opcode = 0
        self._msg_compressed = False
        self._msg.clear()
        return event

    @staticmethod
    def _check_close(payload: bytes) -> None:
        if not payload:
            return  # no status code: 1005 for the application
        if len(payload) == 1:
            raise _fail(1002, "close frame with a 1-byte payload")
        (code,) = struct.unpack_from("!H", payload)
        if not valid_close_code(code):
            raise _fail(1002, "invalid close code")
        checker = Utf8Checker()
        if not checker.feed(payload[2:]) or not checker.complete:
            raise _fail(1007, "invalid UTF-8 in close reason")
