"""Frame parsing and building, run against the Cython engine ("c") and the pure
reference codec ("ref"): vectors checked both ways, every split, and one named
test per protocol rule."""

from __future__ import annotations

import struct
import tracemalloc
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastws import _frames
from fastws._frames import Opcode
from fastws.exceptions import PayloadTooBig, ProtocolError
from tests import reference_frames
from tests.helpers import build_frame as raw_frame

ENGINES = {"c": _frames, "ref": reference_frames}

CONT, TEXT, BINARY = Opcode.CONTINUATION, Opcode.TEXT, Opcode.BINARY
CLOSE, PING, PONG = Opcode.CLOSE, Opcode.PING, Opcode.PONG

KEY = b"\x37\xfa\x21\x3d"   # the mask key of RFC 6455 section 5.7


@pytest.fixture(params=["c", "ref"])
def engine(request):
    """The frame engine under test: fastws._frames or tests.reference_frames."""
    return ENGINES[request.param]


def parse(engine, data: bytes, **kwargs) -> list:
    return engine.FrameParser(**kwargs).feed_data(data)


def parse_error(engine, data: bytes, **kwargs) -> ProtocolError:
    """Feed ``data`` to a fresh parser and return the ProtocolError it must raise."""
    parser = engine.FrameParser(**kwargs)
    with pytest.raises(ProtocolError) as info:
        parser.feed_data(data)
    return info.value


def feed_chunks(parser, chunks) -> list:
    events = []
    for chunk in chunks:
        events += parser.feed_data(chunk)
    return events


def split_offsets(size: int) -> list[int]:
    """Every offset for small inputs; headers, payload edges and a stride for large ones."""
    if size <= 2048:
        return list(range(size + 1))
    edges = set(range(0, 40)) | set(range(size - 40, size + 1)) | set(range(0, size, 997))
    return sorted(edges)


# ---------------------------------------------------------------- vectors


@dataclass
class Vector:
    """Bytes on the wire, the frames that build them and the events they parse into."""

    name: str
    wire: bytes
    is_client: bool                                   # the parser's role
    frames: list[dict] = field(default_factory=list)  # build_frame(**kwargs) for each frame
    events: list[tuple[int, bytes]] = field(default_factory=list)


BLOB_256 = bytes(range(256))
BLOB_64K = bytes(range(256)) * 256

VECTORS = [
    # RFC 6455 section 5.7
    Vector("rfc_unmasked_text", b"\x81\x05Hello", True,
           [dict(opcode=TEXT, payload=b"Hello")], [(TEXT, b"Hello")]),
    Vector("rfc_masked_text", b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58", False,
           [dict(opcode=TEXT, payload=b"Hello", key=KEY)], [(TEXT, b"Hello")]),
    Vector("rfc_fragmented_text", b"\x01\x03Hel\x80\x02lo", True,
           [dict(opcode=TEXT, payload=b"Hel", fin=False), dict(opcode=CONT, payload=b"lo")],
           [(TEXT, b"Hello")]),
    Vector("rfc_unmasked_ping", b"\x89\x05Hello", True,
           [dict(opcode=PING, payload=b"Hello")], [(PING, b"Hello")]),
    Vector("rfc_masked_pong", b"\x8a\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58", False,
           [dict(opcode=PONG, payload=b"Hello", key=KEY)], [(PONG, b"Hello")]),
    Vector("rfc_binary_256_16bit_length", b"\x82\x7e\x01\x00" + BLOB_256, True,
           [dict(opcode=BINARY, payload=BLOB_256)], [(BINARY, BLOB_256)]),
    Vector("rfc_binary_64k_64bit_length", b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00" + BLOB_64K, True,
           [dict(opcode=BINARY, payload=BLOB_64K)], [(BINARY, BLOB_64K)]),
    # more
    Vector("empty_text", b"\x81\x00", True, [dict(opcode=TEXT, payload=b"")], [(TEXT, b"")]),
    Vector("empty_binary_masked", b"\x82\x80" + KEY, False,
           [dict(opcode=BINARY, payload=b"", key=KEY)], [(BINARY, b"")]),
    Vector("masked_binary_16bit_length", b"\x82\xfe\x00\xc8" + KEY + _frames.mask(BLOB_256[:200], KEY), False,
           [dict(opcode=BINARY, payload=BLOB_256[:200], key=KEY)], [(BINARY, BLOB_256[:200])]),
    Vector("masked_binary_64bit_length",
           b"\x82\xff\x00\x00\x00\x00\x00\x01\x00\x00" + KEY + _frames.mask(BLOB_64K, KEY), False,
           [dict(opcode=BINARY, payload=BLOB_64K, key=KEY)], [(BINARY, BLOB_64K)]),
    Vector("close_empty", b"\x88\x00", True, [dict(opcode=CLOSE, payload=b"")], [(CLOSE, b"")]),
    Vector("close_1000_reason", b"\x88\x04\x03\xe8ok", True,
           [dict(opcode=CLOSE, payload=b"\x03\xe8ok")], [(CLOSE, b"\x03\xe8ok")]),
    Vector("masked_close_1001", b"\x88\x82" + KEY + _frames.mask(b"\x03\xe9", KEY), False,
           [dict(opcode=CLOSE, payload=b"\x03\xe9", key=KEY)], [(CLOSE, b"\x03\xe9")]),
    Vector("ping_between_fragments", b"\x01\x03Hel\x89\x01!\x80\x02lo", True,
           [dict(opcode=TEXT, payload=b"Hel", fin=False), dict(opcode=PING, payload=b"!"),
            dict(opcode=CONT, payload=b"lo")],
           [(PING, b"!"), (TEXT, b"Hello")]),
    Vector("three_fragments_empty_middle", b"\x02\x02ab\x00\x00\x80\x01c", True,
           [dict(opcode=BINARY, payload=b"ab", fin=False), dict(opcode=CONT, payload=b"", fin=False),
            dict(opcode=CONT, payload=b"c")],
           [(BINARY, b"abc")]),
    Vector("utf8_split_inside_code_point", b"\x01\x02\xe2\x82\x80\x01\xac", True,
           [dict(opcode=TEXT, payload=b"\xe2\x82", fin=False), dict(opcode=CONT, payload=b"\xac")],
           [(TEXT, "€".encode())]),
    Vector("two_messages_back_to_back", b"\x81\x02hi\x82\x03\x00\x01\x02", True,
           [dict(opcode=TEXT, payload=b"hi"), dict(opcode=BINARY, payload=b"\x00\x01\x02")],
           [(TEXT, b"hi"), (BINARY, b"\x00\x01\x02")]),
    Vector("masked_fragments_with_pong",
           b"\x01\x83" + KEY + _frames.mask(b"Hel", KEY) + b"\x8a\x80" + KEY + b"\x80\x82" + KEY
           + _frames.mask(b"lo", KEY), False,
           [dict(opcode=TEXT, payload=b"Hel", fin=False, key=KEY), dict(opcode=PONG, payload=b"", key=KEY),
            dict(opcode=CONT, payload=b"lo", key=KEY)],
           [(PONG, b""), (TEXT, b"Hello")]),
    Vector("control_max_125", b"\x89\x7d" + b"p" * 125, True,
           [dict(opcode=PING, payload=b"p" * 125)], [(PING, b"p" * 125)]),
]


@pytest.fixture(params=VECTORS, ids=[v.name for v in VECTORS])
def vector(request) -> Vector:
    return request.param


def test_parse_vector(engine, vector):
    events = parse(engine, vector.wire, is_client=vector.is_client)
    assert events == vector.events
    assert all(type(payload) is bytes for _, payload in events)


def test_build_vector(engine, vector):
    wire = b"".join(engine.build_frame(**frame) for frame in vector.frames)
    assert wire == vector.wire


def test_vector_split_at_every_offset(engine, vector):
    for i in split_offsets(len(vector.wire)):
        parser = engine.FrameParser(is_client=vector.is_client)
        events = feed_chunks(parser, [vector.wire[:i], vector.wire[i:]])
        assert events == vector.events, f"split at {i}"


def test_vector_one_byte_at_a_time(engine, vector):
    parser = engine.FrameParser(is_client=vector.is_client)
    events = feed_chunks(parser, (vector.wire[i:i + 1] for i in range(len(vector.wire))))
    assert events == vector.events


def test_vector_repeated_in_one_feed(engine, vector):
    """The parser returns to a clean state after each vector."""
    events = parse(engine, vector.wire * 3, is_client=vector.is_client)
    assert events == vector.events * 3


def test_build_and_parse_cross_engines(vector):
    """Frames built by one engine parse identically in the other."""
    for builder, parser in (("c", "ref"), ("ref", "c")):
        wire = b"".join(ENGINES[builder].build_frame(**frame) for frame in vector.frames)
        assert parse(ENGINES[parser], wire, is_client=vector.is_client) == vector.events


def test_empty_feed_returns_nothing(engine):
    parser = engine.FrameParser()
    assert parser.feed_data(b"") == []
    assert parser.feed_data(raw_frame(TEXT, b"ok")) == [(TEXT, b"ok")]


def test_events_are_opcodes(engine):
    events = parse(engine, b"\x81\x01a\x82\x01b\x89\x00\x8a\x00\x88\x00", is_client=True)
    assert [op for op, _ in events] == [TEXT, BINARY, PING, PONG, CLOSE]


def test_c_events_are_opcode_enum():
    events = parse(_frames, b"\x81\x01a", is_client=True)
    assert events[0][0] is Opcode.TEXT


def test_message_in_progress(engine):
    parser = engine.FrameParser(is_client=True)
    assert not parser.message_in_progress
    parser.feed_data(b"\x01\x01a")
    assert parser.message_in_progress
    parser.feed_data(b"\x89\x00")
    assert parser.message_in_progress
    assert parser.feed_data(b"\x80\x01b") == [(TEXT, b"ab")]
    assert not parser.message_in_progress


# ---------------------------------------------------------------- errors in general


def test_error_carries_events_completed_before_it(engine):
    data = raw_frame(TEXT, b"one") + raw_frame(PING, b"p") + raw_frame(TEXT, b"two", rsv=2)
    exc = parse_error(engine, data)
    assert exc.code == 1002
    assert exc.events == [(TEXT, b"one"), (PING, b"p")]


def test_error_without_prior_events_has_empty_events(engine):
    exc = parse_error(engine, raw_frame(TEXT, b"x", rsv=4))
    assert exc.events == []


def test_failed_parser_stays_failed(engine):
    parser = engine.FrameParser()
    with pytest.raises(ProtocolError):
        parser.feed_data(raw_frame(TEXT, b"x", mask=False))
    with pytest.raises(ProtocolError) as info:
        parser.feed_data(raw_frame(TEXT, b"fine"))
    assert info.value.code == 1002


# ---------------------------------------------------------------- masking rules


def test_server_rejects_unmasked_frame(engine):
    assert parse_error(engine, b"\x81\x05Hello", is_client=False).code == 1002


def test_server_rejects_unmasked_control_frame(engine):
    assert parse_error(engine, b"\x89\x00", is_client=False).code == 1002


def test_client_rejects_masked_frame(engine):
    assert parse_error(engine, b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58", is_client=True).code == 1002


def test_client_rejects_masked_control_frame(engine):
    assert parse_error(engine, b"\x8a\x80" + KEY, is_client=True).code == 1002


def test_masking_error_raised_on_header_before_payload(engine):
    """A masked header announcing 100 bytes fails a client parser without the payload."""
    exc = parse_error(engine, b"\x82\xe4" + KEY, is_client=True)
    assert exc.code == 1002


# ---------------------------------------------------------------- RSV bits


@pytest.mark.parametrize("rsv", [2, 1, 3, 6, 5], ids=["rsv2", "rsv3", "rsv2+rsv3", "rsv1+rsv2", "rsv1+rsv3"])
@pytest.mark.parametrize("opcode", [TEXT, BINARY, PING])
def test_rsv2_rsv3_always_rejected(engine, rsv, opcode):
    exc = parse_error(engine, raw_frame(opcode, b"x", rsv=rsv), deflate=_frames.Deflate())
    assert exc.code == 1002


@pytest.mark.parametrize("opcode", [TEXT, BINARY])
def test_rsv1_without_deflate_rejected(engine, opcode):
    assert parse_error(engine, raw_frame(opcode, b"x", rsv=4)).code == 1002


@pytest.mark.parametrize("deflate", [None, "negotiated"])
def test_rsv1_on_continuation_rejected(engine, deflate):
    d = _frames.Deflate() if deflate else None
    data = raw_frame(BINARY, b"a", fin=False) + raw_frame(CONT, b"b", rsv=4)
    exc = parse_error(engine, data, deflate=d)
    assert exc.code == 1002


@pytest.mark.parametrize("opcode", [PING, PONG, CLOSE])
@pytest.mark.parametrize("deflate", [None, "negotiated"])
def test_rsv1_on_control_frame_rejected(engine, opcode, deflate):
    d = _frames.Deflate() if deflate else None
    assert parse_error(engine, raw_frame(opcode, b"", rsv=4), deflate=d).code == 1002


# ---------------------------------------------------------------- control frames


@pytest.mark.parametrize("opcode", [PING, PONG, CLOSE])
def test_control_frame_over_125_bytes_rejected(engine, opcode):
    payload = b"\x03\xe8" + b"x" * 124 if opcode == CLOSE else b"x" * 126
    exc = parse_error(engine, raw_frame(opcode, payload))
    assert exc.code == 1002


def test_control_frame_over_125_rejected_on_header_alone(engine):
    """A 16-bit length on a PING fails before any payload arrives."""
    assert parse_error(engine, b"\x89\xfe\x00\x7e" + KEY).code == 1002


@pytest.mark.parametrize("opcode", [PING, PONG, CLOSE])
def test_fragmented_control_frame_rejected(engine, opcode):
    exc = parse_error(engine, raw_frame(opcode, b"", fin=False))
    assert exc.code == 1002


@pytest.mark.parametrize("opcode", [PING, PONG, CLOSE])
def test_control_frame_between_fragments_allowed(engine, opcode):
    control = b"\x03\xe8" if opcode == CLOSE else b"ctl"
    data = (raw_frame(TEXT, b"frag", fin=False) + raw_frame(opcode, control)
            + raw_frame(CONT, b"ment", fin=False) + raw_frame(CONT, b"!"))
    assert parse(engine, data) == [(opcode, control), (TEXT, b"fragment!")]


def test_many_control_frames_between_fragments(engine):
    data = raw_frame(BINARY, b"a", fin=False)
    for i in range(10):
        data += raw_frame(PING, bytes([i])) + raw_frame(CONT, b"b", fin=False)
    data += raw_frame(CONT, b"c")
    events = parse(engine, data)
    assert events == [(PING, bytes([i])) for i in range(10)] + [(BINARY, b"a" + b"b" * 10 + b"c")]


# ---------------------------------------------------------------- fragmentation errors


def test_continuation_without_start_rejected(engine):
    assert parse_error(engine, raw_frame(CONT, b"orphan")).code == 1002


def test_final_continuation_without_start_rejected(engine):
    assert parse_error(engine, raw_frame(CONT, b"", fin=True)).code == 1002


@pytest.mark.parametrize("second", [TEXT, BINARY])
def test_new_data_frame_inside_fragmented_message_rejected(engine, second):
    data = raw_frame(TEXT, b"first", fin=False) + raw_frame(second, b"second")
    assert parse_error(engine, data).code == 1002


def test_continuation_after_finished_message_rejected(engine):
    data = raw_frame(TEXT, b"done") + raw_frame(CONT, b"more")
    exc = parse_error(engine, data)
    assert exc.code == 1002
    assert exc.events == [(TEXT, b"done")]


# ---------------------------------------------------------------- opcodes and lengths


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_reserved_opcode_rejected(engine, opcode):
    assert parse_error(engine, raw_frame(opcode, b"x")).code == 1002


@pytest.mark.parametrize("opcode", [3, 0xB])
def test_reserved_opcode_rejected_inside_fragmented_message(engine, opcode):
    data = raw_frame(TEXT, b"a", fin=False) + raw_frame(opcode, b"")
    assert parse_error(engine, data).code == 1002


def test_64bit_length_with_msb_set_rejected(engine):
    header = b"\x82\x7f" + struct.pack("!Q", 1 << 63)
    assert parse_error(engine, header, is_client=True, max_size=1 << 62).code == 1002


def test_64bit_length_all_ones_rejected(engine):
    header = b"\x82\xff" + b"\xff" * 8 + KEY
    assert parse_error(engine, header, max_size=1 << 62).code == 1002


@pytest.mark.parametrize("masked", [False, True])
def test_huge_announced_length_fails_1009_without_allocating(engine, masked):
    """A header announcing 2**62 bytes fails on the header alone, with no big allocation."""
    header = b"\x82" + bytes([(0x80 if masked else 0) | 127]) + struct.pack("!Q", 1 << 62)
    if masked:
        header += KEY
    parser = engine.FrameParser(is_client=not masked, max_size=1024)
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooBig) as info:
            parser.feed_data(header)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.code == 1009
    assert peak < 64 * 1024


def test_payload_too_big_is_a_protocol_error():
    assert issubclass(PayloadTooBig, ProtocolError)
    assert PayloadTooBig().code == 1009


# ---------------------------------------------------------------- max_size


@pytest.mark.parametrize("opcode", [TEXT, BINARY])
def test_max_size_exact_single_frame_passes(engine, opcode):
    assert parse(engine, raw_frame(opcode, b"a" * 1000), max_size=1000) == [(opcode, b"a" * 1000)]


@pytest.mark.parametrize("opcode", [TEXT, BINARY])
def test_max_size_plus_one_single_frame_fails(engine, opcode):
    exc = parse_error(engine, raw_frame(opcode, b"a" * 1001), max_size=1000)
    assert isinstance(exc, PayloadTooBig)
    assert exc.code == 1009


def test_max_size_plus_one_fails_on_header_alone(engine):
    header = raw_frame(BINARY, b"a" * 1001)[:8]       # 2 + 2 length + 4 key
    assert parse_error(engine, header, max_size=1000).code == 1009


def test_max_size_exact_fragmented_passes(engine):
    data = raw_frame(BINARY, b"a" * 400, fin=False) + raw_frame(CONT, b"b" * 400, fin=False) + raw_frame(CONT, b"c" * 200)
    assert parse(engine, data, max_size=1000) == [(BINARY, b"a" * 400 + b"b" * 400 + b"c" * 200)]


def test_max_size_plus_one_fragmented_fails(engine):
    data = raw_frame(TEXT, b"a" * 400, fin=False) + raw_frame(CONT, b"b" * 400, fin=False) + raw_frame(CONT, b"c" * 201)
    exc = parse_error(engine, data, max_size=1000)
    assert isinstance(exc, PayloadTooBig)
    assert exc.code == 1009


def test_max_size_fragmented_fails_before_last_payload(engine):
    """The fragment that crosses max_size fails on its header."""
    data = raw_frame(BINARY, b"a" * 900, fin=False) + raw_frame(CONT, b"b" * 200)[:8]
    assert parse_error(engine, data, max_size=1000).code == 1009


def test_max_size_does_not_limit_control_frames_between_fragments(engine):
    data = raw_frame(BINARY, b"a" * 10, fin=False) + raw_frame(PING, b"p" * 100) + raw_frame(CONT, b"b" * 10)
    assert parse(engine, data, max_size=20) == [(PING, b"p" * 100), (BINARY, b"a" * 10 + b"b" * 10)]


def test_max_size_applies_per_message(engine):
    data = raw_frame(BINARY, b"a" * 100) * 5
    assert parse(engine, data, max_size=100) == [(BINARY, b"a" * 100)] * 5


def test_max_size_zero_allows_empty_messages_only(engine):
    assert parse(engine, raw_frame(TEXT, b""), max_size=0) == [(TEXT, b"")]
    assert parse_error(engine, raw_frame(TEXT, b"x"), max_size=0).code == 1009


# ---------------------------------------------------------------- close frames


def test_close_empty_payload_means_no_status(engine):
    """An empty CLOSE is delivered as an empty payload (the application reports 1005)."""
    assert parse(engine, raw_frame(CLOSE, b"")) == [(CLOSE, b"")]


def test_close_one_byte_payload_rejected(engine):
    assert parse_error(engine, raw_frame(CLOSE, b"\x03")).code == 1002


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535])
def test_close_invalid_code_rejected(engine, code):
    exc = parse_error(engine, raw_frame(CLOSE, struct.pack("!H", code) + b"bye"))
    assert exc.code == 1002


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
                                  3000, 3999, 4000, 4999])
def test_close_valid_code_accepted(engine, code):
    payload = struct.pack("!H", code) + "adiós".encode()
    assert parse(engine, raw_frame(CLOSE, payload)) == [(CLOSE, payload)]


def test_close_code_without_reason_accepted(engine):
    assert parse(engine, raw_frame(CLOSE, b"\x03\xe8")) == [(CLOSE, b"\x03\xe8")]


def test_close_max_reason_accepted(engine):
    payload = b"\x03\xe8" + b"r" * 123
    assert parse(engine, raw_frame(CLOSE, payload)) == [(CLOSE, payload)]


@pytest.mark.parametrize("reason", [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"ok\xe2\x82", b"\xf4\x90\x80\x80"],
                         ids=["ff", "bad_continuation", "surrogate", "truncated", "above_max"])
def test_close_invalid_utf8_reason_rejected(engine, reason):
    exc = parse_error(engine, raw_frame(CLOSE, b"\x03\xe8" + reason))
    assert exc.code == 1007


@pytest.mark.parametrize("code", [1000, 1001, 1003, 3000, 4999])
def test_is_valid_close_code_matches_reference(code):
    assert _frames.is_valid_close_code(code) is True
    assert reference_frames.valid_close_code(code) is True


def test_is_valid_close_code_full_range_matches_reference():
    mismatches = [c for c in range(0, 70000) if bool(_frames.is_valid_close_code(c)) != reference_frames.valid_close_code(c)]
    assert mismatches == []


def test_build_close():
    assert _frames.build_close(1000, "bye") == b"\x03\xe8bye"
    assert _frames.build_close(4000, "é".encode()) == b"\x0f\xa0\xc3\xa9"
    assert _frames.build_close(1005, "ignored") == b""
    assert _frames.build_close() == b"\x03\xe8"


# ---------------------------------------------------------------- build_frame


@pytest.mark.parametrize(
    ("size", "header"),
    [
        (0, b"\x82\x00"),
        (125, b"\x82\x7d"),
        (126, b"\x82\x7e\x00\x7e"),
        (65535, b"\x82\x7e\xff\xff"),
        (65536, b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),
    ],
)
def test_build_header_length_boundaries(engine, size, header):
    payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    frame = engine.build_frame(BINARY, payload)
    assert frame[:len(header)] == header
    assert frame[len(header):] == payload


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_build_masked_header_length_boundaries(engine, size):
    payload = b"m" * size
    frame = engine.build_frame(BINARY, payload, key=KEY)
    head = 2 + (0 if size < 126 else 2 if size < 65536 else 8)
    assert frame[1] & 0x80
    assert frame[head:head + 4] == KEY
    assert frame[head + 4:] == _frames.mask(payload, KEY)


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_build_masked_round_trips_through_server_parser(engine, size):
    payload = bytes(i % 251 for i in range(size))
    frame = engine.build_frame(BINARY, payload, mask=True)
    assert frame[1] & 0x80
    for parser_engine in ENGINES.values():
        assert parse(parser_engine, frame, is_client=False, max_size=1 << 20) == [(BINARY, payload)]


def test_build_unmasked_round_trips_through_client_parser(engine):
    assert parse(engine, engine.build_frame(TEXT, "héllo"), is_client=True) == [(TEXT, "héllo".encode())]


def test_build_mask_true_uses_fresh_keys(engine):
    payload = b"\x00" * 16
    first = engine.build_frame(BINARY, payload, mask=True)
    second = engine.build_frame(BINARY, payload, mask=True)
    assert first[2:6] != second[2:6]
    # with a zero payload the masked bytes are the key itself
    assert first[6:] == first[2:6] * 4


def test_build_many_masked_frames_use_distinct_keys(engine):
    keys = {engine.build_frame(BINARY, b"", mask=True)[2:6] for _ in range(2000)}
    assert len(keys) > 1990


def test_build_flags(engine):
    assert engine.build_frame(TEXT, b"", fin=False) == b"\x01\x00"
    assert engine.build_frame(TEXT, b"", rsv1=True) == b"\xc1\x00"
    assert engine.build_frame(CONT, b"", fin=True) == b"\x80\x00"
    assert engine.build_frame(CLOSE, b"\x03\xe8") == b"\x88\x02\x03\xe8"


def test_build_str_payload_is_utf8(engine):
    assert engine.build_frame(TEXT, "€") == b"\x81\x03\xe2\x82\xac"


def test_build_accepts_buffers(engine):
    assert engine.build_frame(BINARY, bytearray(b"ab")) == b"\x82\x02ab"
    assert engine.build_frame(BINARY, memoryview(b"xab")[1:]) == b"\x82\x02ab"


@pytest.mark.parametrize("key", [b"", b"abc", b"abcde"])
def test_build_rejects_bad_key_length(engine, key):
    with pytest.raises(ValueError):
        engine.build_frame(BINARY, b"x", key=key)


def test_frame_writer_matches_build_frame():
    writer = _frames.FrameWriter(is_client=False)
    writer.add(TEXT, "Hel", fin=False)
    writer.add(CONT, b"lo")
    writer.add(BINARY, BLOB_256)
    expected = b"\x01\x03Hel\x80\x02lo" + b"\x82\x7e\x01\x00" + BLOB_256
    assert len(writer) == len(expected)
    assert writer.getvalue() == expected
    assert len(writer) == 0


def test_client_frame_writer_masks_every_frame():
    writer = _frames.FrameWriter(is_client=True)
    for i in range(5):
        writer.add(BINARY, bytes([i]) * 10)
    out = writer.getvalue()
    for parser_engine in ENGINES.values():
        assert parse(parser_engine, out, is_client=False) == [(BINARY, bytes([i]) * 10) for i in range(5)]


# ---------------------------------------------------------------- differential fuzzing

FRAME = st.fixed_dictionaries({
    "opcode": st.sampled_from([0, 0, 1, 1, 2, 2, 8, 9, 10, 3, 0xB]),
    "fin": st.sampled_from([True, True, False]),
    "rsv": st.sampled_from([0, 0, 0, 0, 4, 2, 1]),
    "masked": st.sampled_from([True, True, True, False]),
    "payload": st.binary(max_size=140)
    | st.text(max_size=40).map(lambda s: s.encode("utf-8"))
    | st.sampled_from([b"", b"\x03\xe8", b"\x03\xe8ok", b"\x03\xed", b"\xe2\x82", b"\xac", b"\x0b\xb8\xff"]),
})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(FRAME, max_size=8), cuts=st.lists(st.integers(0, 2000), max_size=6),
       max_size=st.sampled_from([0, 5, 64, 1 << 20]))
def test_engines_agree_on_random_streams(frames, cuts, max_size):
    """The C engine and the reference give the same events and the same error on any stream."""
    wire = b"".join(raw_frame(f["opcode"], f["payload"], fin=f["fin"], mask=f["masked"], rsv=f["rsv"])
                    for f in frames)
    bounds = sorted({min(c, len(wire)) for c in cuts} | {0, len(wire)})
    chunks = [wire[a:b] for a, b in zip(bounds, bounds[1:])]
    results = []
    for engine in ENGINES.values():
        parser = engine.FrameParser(is_client=False, max_size=max_size)
        outcome = []
        for chunk in chunks:
            try:
                outcome.append(("events", parser.feed_data(chunk)))
            except ProtocolError as exc:
                outcome.append(("error", exc.code, exc.events))
                break
        results.append(outcome)
    assert results[0] == results[1]
