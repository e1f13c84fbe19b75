"""permessage-deflate (RFC 7692): the Deflate object on its own, and compressed
frames through the C engine ("c") and the reference ("ref")."""

from __future__ import annotations

import os
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastws import _frames
from fastws._frames import Deflate, Opcode
from fastws.exceptions import PayloadTooBig, ProtocolError
from tests import reference_frames
from tests.helpers import build_frame as raw_frame

ENGINES = {"c": _frames, "ref": reference_frames}
CONT, TEXT, BINARY, PING = Opcode.CONTINUATION, Opcode.TEXT, Opcode.BINARY, Opcode.PING

MESSAGES = [b"", b"a", b"Hello, world", "κόσμε €😀".encode() * 20, bytes(range(256)) * 40, b"\x00" * 100000]


@pytest.fixture(params=["c", "ref"])
def engine(request):
    return ENGINES[request.param]


def pair(**kwargs) -> tuple[Deflate, Deflate]:
    """A server compressor and a client decompressor that agree on the parameters."""
    nct = kwargs.get("no_context_takeover", False)
    bits = kwargs.get("bits", 15)
    server = Deflate(is_client=False, local_no_context_takeover=nct, local_max_window_bits=bits)
    client = Deflate(is_client=True, remote_no_context_takeover=nct, remote_max_window_bits=bits)
    return server, client


def compressed_frames(compressed: bytes, opcode=BINARY, fragments: int = 1, mask: bool = True) -> bytes:
    """One compressed message as ``fragments`` frames: RSV1 on the first frame only."""
    size = -(-len(compressed) // fragments) if compressed else 0
    pieces = [compressed[i * size:(i + 1) * size] for i in range(fragments)]
    out = b""
    for i, piece in enumerate(pieces):
        out += raw_frame(opcode if i == 0 else CONT, piece, fin=i == fragments - 1, mask=mask,
                         rsv=4 if i == 0 else 0)
    return out


# ---------------------------------------------------------------- Deflate alone


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: f"{len(m)}B")
def test_round_trip(message):
    server, client = pair()
    compressed = server.compress(message)
    assert not compressed.endswith(b"\x00\x00\xff\xff")
    assert client.decompress_message(compressed) == message


def test_round_trip_many_messages_with_context_takeover():
    server, client = pair()
    sizes = []
    for i in range(20):
        message = b"the same sentence, again and again " * 5 + str(i).encode()
        compressed = server.compress(message)
        sizes.append(len(compressed))
        assert client.decompress_message(compressed) == message
    # later messages refer back to earlier ones
    assert sizes[5] < sizes[0] / 2


def test_context_takeover_output_needs_the_context():
    """A second message compressed with context takeover cannot be inflated by a fresh decompressor."""
    server, client = pair()
    message = b"repeat after me " * 20
    client.decompress_message(server.compress(message))
    second = server.compress(message)
    assert client.decompress_message(second) == message
    _, fresh = pair()
    with pytest.raises(ProtocolError) as info:
        fresh.decompress_message(second)
    assert info.value.code == 1007


def test_round_trip_without_context_takeover():
    server, client = pair(no_context_takeover=True)
    message = b"repeat after me " * 20
    first = server.compress(message)
    for _ in range(5):
        compressed = server.compress(message)
        assert compressed == first
        assert client.decompress_message(compressed) == message
        # each message also inflates on a brand new decompressor
        assert pair()[1].decompress_message(compressed) == message


def inflate_in_small_steps(inflater, data: bytes) -> bytes:
    """Inflate 256 bytes at a time, so every back-reference must lie inside zlib's window."""
    out = inflater.decompress(data, 256)
    while inflater.unconsumed_tail:
        out += inflater.decompress(inflater.unconsumed_tail, 256)
    return out


@pytest.mark.parametrize("bits", range(9, 16))
def test_round_trip_window_bits(bits):
    server, client = pair(bits=bits)
    far = os.urandom(16000)     # repeated 16000 bytes back: only a 15-bit window may refer to it
    messages = [os.urandom(64) * 300, b"abc" * 5000, bytes(range(256)) * 64, far * 2, far]
    window = zlib.decompressobj(-bits)      # zlib's own inflater, limited to the announced window
    for message in messages:
        compressed = server.compress(message)
        assert client.decompress_message(compressed) == message
        assert inflate_in_small_steps(window, compressed + b"\x00\x00\xff\xff") == message


def test_window_check_detects_a_too_large_window():
    """The check above is able to fail: a 15-bit stream does not fit a 9-bit window."""
    server, _ = pair(bits=15)
    far = os.urandom(16000)
    with pytest.raises(zlib.error):
        inflate_in_small_steps(zlib.decompressobj(-9), server.compress(far * 2) + b"\x00\x00\xff\xff")


@pytest.mark.parametrize("bits", range(9, 16))
def test_window_bits_parameters_kept(bits):
    d = Deflate(is_client=True, local_max_window_bits=bits, remote_max_window_bits=bits)
    assert d.local_max_window_bits == bits
    assert d.remote_max_window_bits == bits
    assert d.is_client


def test_round_trip_window_bits_8():
    """zlib cannot deflate with a 256-byte window; fastws falls back to Huffman-only."""
    server, client = pair(bits=8)
    message = b"window of eight bits " * 100
    assert client.decompress_message(server.compress(message)) == message


@pytest.mark.parametrize("bits", [0, 7, 16, -15])
def test_bad_window_bits_rejected(bits):
    with pytest.raises(ValueError):
        Deflate(local_max_window_bits=bits)
    with pytest.raises(ValueError):
        Deflate(remote_max_window_bits=bits)


def test_decompression_bomb_raises_payload_too_big():
    server, client = pair()
    bomb = server.compress(b"\x00" * (10 << 20))
    assert len(bomb) < 20000
    with pytest.raises(PayloadTooBig) as info:
        client.decompress_message(bomb, 1 << 20)
    assert info.value.code == 1009


def test_decompress_exact_limit_passes():
    server, client = pair()
    message = b"x" * 5000
    assert client.decompress_message(server.compress(message), 5000) == message
    server, client = pair()
    with pytest.raises(PayloadTooBig):
        client.decompress_message(server.compress(message), 4999)


@pytest.mark.parametrize("garbage", [b"\xff\xff\xff\xff", b"\x07", b"\xfe" * 50], ids=["ff", "07", "fe"])
def test_garbage_raises_protocol_error_1007(garbage):
    _, client = pair()
    with pytest.raises(ProtocolError) as info:
        client.decompress_message(garbage)
    assert info.value.code == 1007
    assert not isinstance(info.value, PayloadTooBig)


def test_contexts_are_created_lazily():
    server, client = pair()
    assert server.contexts_allocated == 0
    assert client.contexts_allocated == 0
    compressed = server.compress(b"first message")
    assert server.contexts_allocated == 1
    client.decompress_message(compressed)
    assert client.contexts_allocated == 1


def test_no_context_takeover_keeps_no_context_between_messages():
    server, client = pair(no_context_takeover=True)
    client.decompress_message(server.compress(b"message"))
    assert server.contexts_allocated == 0
    assert client.contexts_allocated == 0


def test_parser_with_deflate_allocates_nothing_until_first_compressed_message():
    server, client = pair()
    parser = _frames.FrameParser(is_client=True, deflate=client)
    assert client.contexts_allocated == 0
    assert parser.feed_data(raw_frame(TEXT, b"plain", mask=False)) == [(TEXT, b"plain")]
    assert client.contexts_allocated == 0
    parser.feed_data(compressed_frames(server.compress(b"zipped"), mask=False))
    assert client.contexts_allocated == 1


def test_compress_min_size_is_settable():
    d = Deflate(compress_min_size=32)
    assert d.compress_min_size == 32
    d.compress_min_size = 0
    assert d.compress_min_size == 0


def test_empty_message_compresses_to_one_zero_byte():
    """RFC 7692 section 7.2.3.6: an empty message may be sent as a single 0x00 byte."""
    server, client = pair()
    assert server.compress(b"") == b"\x00"
    assert client.decompress_message(b"\x00") == b""


# ---------------------------------------------------------------- through FrameParser


@pytest.mark.parametrize("opcode", [TEXT, BINARY])
@pytest.mark.parametrize("fragments", [1, 2, 5])
def test_compressed_message_through_parser(engine, opcode, fragments):
    server, client = pair()
    message = "compressed κόσμε ".encode() * 50
    wire = compressed_frames(server.compress(message), opcode, fragments, mask=False)
    parser = engine.FrameParser(is_client=True, deflate=client)
    assert parser.feed_data(wire) == [(opcode, message)]


def test_compressed_masked_message_through_server_parser(engine):
    client_side = Deflate(is_client=True)
    server_side = Deflate(is_client=False)
    message = b"from the client " * 30
    wire = compressed_frames(client_side.compress(message), TEXT, 3, mask=True)
    assert engine.FrameParser(is_client=False, deflate=server_side).feed_data(wire) == [(TEXT, message)]


def test_compressed_fragments_with_control_frames_between(engine):
    server, client = pair()
    message = b"0123456789" * 100
    compressed = server.compress(message)
    third = len(compressed) // 3
    wire = (raw_frame(BINARY, compressed[:third], fin=False, rsv=4) + raw_frame(PING, b"1")
            + raw_frame(CONT, compressed[third:2 * third], fin=False) + raw_frame(PING, b"2")
            + raw_frame(CONT, compressed[2 * third:]))
    parser = engine.FrameParser(deflate=client)
    assert parser.feed_data(wire) == [(PING, b"1"), (PING, b"2"), (BINARY, message)]


def test_compressed_message_with_empty_final_fragment(engine):
    server, client = pair()
    message = b"ends with an empty frame"
    wire = raw_frame(TEXT, server.compress(message), fin=False, rsv=4) + raw_frame(CONT, b"")
    assert engine.FrameParser(deflate=client).feed_data(wire) == [(TEXT, message)]


def test_compressed_messages_share_context(engine):
    server, client = pair()
    parser = engine.FrameParser(is_client=True, deflate=client)
    for i in range(10):
        message = b"context takeover " * 10 + bytes([i])
        wire = compressed_frames(server.compress(message), BINARY, 1 + i % 3, mask=False)
        assert parser.feed_data(wire) == [(BINARY, message)]


def test_compressed_messages_without_context_takeover(engine):
    server, client = pair(no_context_takeover=True)
    parser = engine.FrameParser(is_client=True, deflate=client)
    for i in range(5):
        message = b"no context " * 10 + bytes([i])
        assert parser.feed_data(compressed_frames(server.compress(message), mask=False)) == [(BINARY, message)]


def test_mixed_compressed_and_plain_messages(engine):
    server, client = pair()
    wire = (compressed_frames(server.compress(b"zipped one")) + raw_frame(TEXT, b"plain")
            + compressed_frames(server.compress(b"zipped two"), TEXT, 2))
    assert engine.FrameParser(deflate=client).feed_data(wire) == [
        (BINARY, b"zipped one"), (TEXT, b"plain"), (TEXT, b"zipped two")]


def test_compressed_message_split_at_every_offset(engine):
    message = "split me, κόσμε ".encode() * 8
    server, _ = pair()
    wire = compressed_frames(server.compress(message), TEXT, 2, mask=True)
    for i in range(len(wire) + 1):
        parser = engine.FrameParser(deflate=pair()[1])
        events = parser.feed_data(wire[:i]) + parser.feed_data(wire[i:])
        assert events == [(TEXT, message)], i


def test_compressed_message_one_byte_at_a_time(engine):
    message = b"byte by byte " * 20
    server, client = pair()
    wire = compressed_frames(server.compress(message), BINARY, 3)
    parser = engine.FrameParser(deflate=client)
    events = []
    for i in range(len(wire)):
        events += parser.feed_data(wire[i:i + 1])
    assert events == [(BINARY, message)]


def test_decompression_bomb_through_parser_1009(engine):
    server, client = pair()
    wire = compressed_frames(server.compress(b"\x00" * (5 << 20)), BINARY, 1, mask=False)
    parser = engine.FrameParser(is_client=True, max_size=1 << 20, deflate=client)
    with pytest.raises(PayloadTooBig) as info:
        parser.feed_data(wire)
    assert info.value.code == 1009


def test_fragmented_decompression_bomb_through_parser_1009(engine):
    server, client = pair()
    wire = compressed_frames(server.compress(b"\x00" * (5 << 20)), BINARY, 4, mask=False)
    parser = engine.FrameParser(is_client=True, max_size=1 << 20, deflate=client)
    with pytest.raises(PayloadTooBig) as info:
        parser.feed_data(wire)
    assert info.value.code == 1009


def test_compressed_exactly_max_size_passes(engine):
    server, client = pair()
    message = b"y" * 10000
    wire = compressed_frames(server.compress(message), BINARY, 2)
    assert engine.FrameParser(max_size=10000, deflate=client).feed_data(wire) == [(BINARY, message)]


def test_compressed_max_size_plus_one_fails(engine):
    server, client = pair()
    wire = compressed_frames(server.compress(b"y" * 10001), BINARY, 2)
    with pytest.raises(PayloadTooBig) as info:
        engine.FrameParser(max_size=10000, deflate=client).feed_data(wire)
    assert info.value.code == 1009


@pytest.mark.parametrize(
    "engine",
    [
        "c",
        "ref",
    ],
    indirect=True,
)
def test_incompressible_message_of_exactly_max_size_passes(engine):
    """max_size limits the message after decompression (the documented contract)."""
    server, client = pair()
    message = os.urandom(1000)
    compressed = server.compress(message)
    assert len(compressed) > 1000          # deflate grows random data a little
    wire = compressed_frames(compressed, BINARY, 1)
    assert engine.FrameParser(max_size=1000, deflate=client).feed_data(wire) == [(BINARY, message)]


def test_garbage_through_parser_1007(engine):
    wire = raw_frame(BINARY, b"\xff\xff\xff\xff", rsv=4)
    with pytest.raises(ProtocolError) as info:
        engine.FrameParser(deflate=pair()[1]).feed_data(wire)
    assert info.value.code == 1007


def test_compressed_invalid_utf8_text_1007(engine):
    server, client = pair()
    wire = compressed_frames(server.compress(b"valid then \xff invalid"), TEXT, 1)
    with pytest.raises(ProtocolError) as info:
        engine.FrameParser(deflate=client).feed_data(wire)
    assert info.value.code == 1007


def test_compressed_truncated_utf8_text_1007(engine):
    server, client = pair()
    wire = compressed_frames(server.compress(b"ends inside \xe2\x82"), TEXT, 2)
    with pytest.raises(ProtocolError) as info:
        engine.FrameParser(deflate=client).feed_data(wire)
    assert info.value.code == 1007


def test_compressed_invalid_utf8_binary_is_fine(engine):
    server, client = pair()
    wire = compressed_frames(server.compress(b"\xff\xfe"), BINARY, 1)
    assert engine.FrameParser(deflate=client).feed_data(wire) == [(BINARY, b"\xff\xfe")]


def test_compressed_utf8_split_across_fragments(engine):
    """Each compressed fragment inflates to a piece that ends inside a code point."""
    _, client = pair()
    message = "€".encode() * 300
    # a sync flush after byte 100 (inside a code point): the first fragment inflates to 100 bytes
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    parts = [c.compress(message[:100]) + c.flush(zlib.Z_SYNC_FLUSH),
             c.compress(message[100:]) + c.flush(zlib.Z_SYNC_FLUSH)]
    parts[1] = parts[1][:-4]
    wire = (raw_frame(TEXT, parts[0], fin=False, rsv=4) + raw_frame(CONT, parts[1]))
    assert engine.FrameParser(deflate=client).feed_data(wire) == [(TEXT, message)]


def test_rsv1_on_continuation_of_compressed_message_rejected(engine):
    server, client = pair()
    compressed = server.compress(b"some data here")
    wire = raw_frame(BINARY, compressed[:3], fin=False, rsv=4) + raw_frame(CONT, compressed[3:], rsv=4)
    with pytest.raises(ProtocolError) as info:
        engine.FrameParser(deflate=client).feed_data(wire)
    assert info.value.code == 1002


def test_compressed_invalid_utf8_fails_on_first_fragment(engine):
    """Inflated fragments are checked as they come: no need to wait for the last one."""
    _, client = pair()
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    first = c.compress(b"bad \xff byte") + c.flush(zlib.Z_SYNC_FLUSH)
    parser = engine.FrameParser(deflate=client)
    with pytest.raises(ProtocolError) as info:
        parser.feed_data(raw_frame(TEXT, first, fin=False, rsv=4))
    assert info.value.code == 1007


DEFLATE_FAILURE_STAYS = pytest.mark.parametrize(
    "engine",
    [
        "c",
        "ref",
    ],
    indirect=True,
)


@DEFLATE_FAILURE_STAYS
def test_parser_stays_failed_after_decompression_bomb(engine):
    server, client = pair()
    parser = engine.FrameParser(is_client=True, max_size=1000, deflate=client)
    with pytest.raises(PayloadTooBig):
        parser.feed_data(compressed_frames(server.compress(b"\x00" * 100000), mask=False))
    with pytest.raises(ProtocolError) as info:
        parser.feed_data(raw_frame(PING, b"still parsing?", mask=False))
    assert info.value.code == 1002


@DEFLATE_FAILURE_STAYS
def test_parser_stays_failed_after_invalid_compressed_data(engine):
    _, client = pair()
    parser = engine.FrameParser(is_client=True, deflate=client)
    with pytest.raises(ProtocolError) as info:
        parser.feed_data(raw_frame(BINARY, b"\xff\xff\xff\xff", mask=False, rsv=4))
    assert info.value.code == 1007
    with pytest.raises(ProtocolError) as info:
        parser.feed_data(raw_frame(PING, b"still parsing?", mask=False))
    assert info.value.code == 1002


MESSAGE = st.tuples(
    st.tuples(st.just(BINARY), st.binary(max_size=300)) | st.tuples(st.just(TEXT), st.text(max_size=100).map(str.encode)),
    st.integers(1, 4),      # fragments
    st.booleans(),          # compressed
    st.booleans(),          # a PING between the first two fragments
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=st.lists(MESSAGE, max_size=6), cuts=st.lists(st.integers(0, 3000), max_size=8),
       no_context_takeover=st.booleans(), bits=st.integers(9, 15))
def test_random_compressed_streams(messages, cuts, no_context_takeover, bits):
    """Mixed compressed/plain, fragmented messages in arbitrary chunks: both engines return the messages."""
    server = Deflate(local_no_context_takeover=no_context_takeover, local_max_window_bits=bits)
    wire = b""
    expected = []
    for (opcode, data), fragments, compress, ping in messages:
        payload = server.compress(data) if compress else data
        size = -(-len(payload) // fragments) if payload else 0
        for i in range(fragments):
            piece = payload[i * size:(i + 1) * size]
            wire += raw_frame(opcode if i == 0 else CONT, piece, fin=i == fragments - 1,
                              rsv=4 if i == 0 and compress else 0)
            if ping and i == 0 and fragments > 1:
                wire += raw_frame(PING, b"p")
                expected.append((PING, b"p"))
        expected.append((opcode, data))
    bounds = sorted({min(c, len(wire)) for c in cuts} | {0, len(wire)})
    for engine in ENGINES.values():
        client = Deflate(is_client=True, remote_no_context_takeover=no_context_takeover, remote_max_window_bits=bits)
        parser = engine.FrameParser(deflate=client)
        events = []
        for a, b in zip(bounds, bounds[1:]):
            events += parser.feed_data(wire[a:b])
        assert events == expected
