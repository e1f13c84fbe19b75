"""Type stubs for the sans-I/O frame engine (fastws/_frames.pyx)."""

import enum

from typing_extensions import Buffer

class Opcode(enum.IntEnum):
    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA

class CloseCode(enum.IntEnum):
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

def mask_impl() -> str:
    """Name of the masking kernel this CPU uses (avx2, sse2 or words64)."""

def pool_size() -> int:
    """How many large message buffers wait for reuse."""

def pool_trim(if_idle: bool = True) -> int:
    """Free the pooled message buffers (with ``if_idle``, only if none was used since the last call)."""

def is_valid_close_code(code: int) -> bool:
    """True for codes a peer may put on the wire (1000-1003, 1007-1014, 3000-4999)."""

def apply_mask(buf: Buffer, key: Buffer, offset: int = 0) -> None:
    """XOR a writable buffer in place with a 4-byte key, starting at key position ``offset``."""

def mask(data: Buffer, key: Buffer) -> bytes:
    """``data`` XORed with the 4-byte key, as new bytes."""

def validate_utf8(data: Buffer) -> bool:
    """True when ``data`` is complete, valid UTF-8."""

class Utf8Validator:
    """Incremental UTF-8 check: ``feed()`` is False at the first invalid byte."""

    def feed(self, data: Buffer) -> bool: ...
    @property
    def complete(self) -> bool: ...
    def reset(self) -> None: ...

def build_frame(opcode: int, payload: Buffer | str, fin: bool = True, rsv1: bool = False, mask: bool = False,
                key: Buffer | None = None) -> bytes:
    """Serialise one frame; with ``mask`` a fresh random key is used unless ``key`` is given."""

def build_close(code: int = 1000, reason: str | bytes = "") -> bytes:
    """The payload of a CLOSE frame (empty for 1005)."""

class FrameWriter:
    """A growable buffer of serialised frames (the cork of a connection)."""

    is_client: bool
    def __init__(self, is_client: bool = False) -> None: ...
    def add(self, opcode: int, payload: Buffer | str, fin: bool = True, rsv1: bool = False) -> None: ...
    def getvalue(self) -> bytes:
        """Everything written so far; the writer is empty afterwards."""
    def __len__(self) -> int: ...

class Deflate:
    """permessage-deflate compressor and decompressor of one connection (zlib contexts created lazily)."""

    is_client: bool
    local_no_context_takeover: bool
    remote_no_context_takeover: bool
    local_max_window_bits: int
    remote_max_window_bits: int
    compress_min_size: int
    def __init__(self, is_client: bool = False, local_no_context_takeover: bool = False,
                 remote_no_context_takeover: bool = False, local_max_window_bits: int = 15,
                 remote_max_window_bits: int = 15, compress_level: int = 6, compress_min_size: int = 0) -> None: ...
    @property
    def contexts_allocated(self) -> int: ...
    def compress(self, data: Buffer) -> bytes:
        """Compress one whole message payload (without the 0x00 0x00 0xff 0xff tail)."""
    def decompress_message(self, data: Buffer, max_len: int = ...) -> bytes:
        """Decompress one whole message payload; PayloadTooBig beyond ``max_len``."""

class FrameParser:
    """Incremental frame parser: feed bytes, get whole messages and control frames.

    Raises ProtocolError (with ``.code``: 1002, 1007, 1009) at the first violation.
    """

    is_client: bool
    max_size: int
    deflate: Deflate | None
    ev_opcode: int
    ev_len: int
    ev_obj: bytes | None
    ev_close_code: int
    def __init__(self, is_client: bool = False, max_size: int = 1048576, deflate: Deflate | None = None) -> None: ...
    def feed_data(self, data: Buffer) -> list[tuple[Opcode, bytes]]:
        """Events completed by ``data``: (TEXT|BINARY, message), (PING|PONG, payload), (CLOSE, raw payload)."""
    @property
    def message_in_progress(self) -> bool: ...
