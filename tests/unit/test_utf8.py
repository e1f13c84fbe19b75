"""UTF-8 validation of TEXT messages (close code 1007), checked against Python's
own decoder, for the C engine ("c") and the reference ("ref")."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fastws import _frames
from fastws._frames import Opcode
from fastws.exceptions import ProtocolError
from tests import reference_frames
from tests.helpers import build_frame as raw_frame

ENGINES = {"c": _frames, "ref": reference_frames}
CONT, TEXT, BINARY = Opcode.CONTINUATION, Opcode.TEXT, Opcode.BINARY


@pytest.fixture(params=["c", "ref"])
def engine(request):
    return ENGINES[request.param]


def python_says_valid(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# Each invalid sequence, and the length of its longest prefix that is still valid
# (a parser that fails fast must fail as soon as that prefix is exceeded).
INVALID = {
    "lone_continuation": b"\x80",
    "c0_overlong": b"\xc0\xaf",
    "c1_overlong": b"\xc1\xbf",
    "e0_overlong": b"\xe0\x80\xaf",
    "f0_overlong": b"\xf0\x80\x80\xaf",
    "surrogate_high": b"\xed\xa0\x80",
    "surrogate_low": b"\xed\xbf\xbf",
    "above_u10ffff": b"\xf4\x90\x80\x80",
    "f5": b"\xf5\x80\x80\x80",
    "ff": b"\xff",
    "fe": b"\xfe",
    "missing_continuation": b"\xc3\x28",
    "short_three_byte": b"\xe2\x82\x28",
    "short_four_byte": b"\xf0\x9f\x98\x28",
    "autobahn_6_3_1": "κόσμε".encode() + b"\xed\xa0\x80edited",
}
TRUNCATED = {
    "two_byte": b"\xc3",
    "three_byte_1": b"\xe2",
    "three_byte_2": b"\xe2\x82",
    "four_byte_3": b"\xf0\x9f\x98",
    "after_ascii": b"Hello \xf0\x9f",
}
VALID = {
    "ascii": b"Hello, world",
    "latin": "héllo wörld".encode(),
    "euro": "€".encode(),
    "emoji": "😀 and 🚀".encode(),
    "max_code_point": "\U0010ffff".encode(),
    "boundaries": "\u007f\u0080\u07ff\u0800\ud7ff\ue000\uffff\U00010000".encode(),
    "autobahn_6_2_1": "κόσμε-Hello-µ@ßöäüàá-UTF-8!!".encode(),
    "long_ascii_then_multibyte": b"a" * 100 + "ж".encode() + b"b" * 33,
}


def test_corpus_agrees_with_python():
    """The corpus itself is what Python says it is."""
    for data in INVALID.values():
        assert not python_says_valid(data)
    for data in TRUNCATED.values():
        assert not python_says_valid(data)
    for data in VALID.values():
        assert python_says_valid(data)


# ---------------------------------------------------------------- whole messages


@pytest.mark.parametrize("data", VALID.values(), ids=VALID.keys())
def test_valid_text_accepted(engine, data):
    assert engine.FrameParser().feed_data(raw_frame(TEXT, data)) == [(TEXT, data)]


@pytest.mark.parametrize("data", INVALID.values(), ids=INVALID.keys())
def test_invalid_text_rejected_1007(engine, data):
    with pytest.raises(ProtocolError) as info:
        engine.FrameParser().feed_data(raw_frame(TEXT, data))
    assert info.value.code == 1007


@pytest.mark.parametrize("data", TRUNCATED.values(), ids=TRUNCATED.keys())
def test_truncated_at_end_of_message_rejected_1007(engine, data):
    with pytest.raises(ProtocolError) as info:
        engine.FrameParser().feed_data(raw_frame(TEXT, data))
    assert info.value.code == 1007


@pytest.mark.parametrize("data", TRUNCATED.values(), ids=TRUNCATED.keys())
def test_truncated_at_end_of_fragmented_message_rejected_1007(engine, data):
    parser = engine.FrameParser()
    assert parser.feed_data(raw_frame(TEXT, data, fin=False)) == []
    with pytest.raises(ProtocolError) as info:
        parser.feed_data(raw_frame(CONT, b""))
    assert info.value.code == 1007


@pytest.mark.parametrize("data", INVALID.values(), ids=INVALID.keys())
def test_invalid_bytes_are_fine_in_binary(engine, data):
    assert engine.FrameParser().feed_data(raw_frame(BINARY, data)) == [(BINARY, data)]


# ---------------------------------------------------------------- fail fast


@pytest.mark.parametrize("masked", [True, False], ids=["server", "client"])
@pytest.mark.parametrize("data", INVALID.values(), ids=INVALID.keys())
def test_invalid_byte_in_first_chunk_of_partial_frame_fails_on_that_chunk(engine, data, masked):
    """The frame announces 1000 bytes; only the first few arrive, bad byte included."""
    payload = data + b"x" * (1000 - len(data))
    frame = raw_frame(TEXT, payload, mask=masked)
    header = len(frame) - len(payload)
    parser = engine.FrameParser(is_client=not masked)
    with pytest.raises(ProtocolError) as info:
        parser.feed_data(frame[:header + len(data)])
    assert info.value.code == 1007


@pytest.mark.parametrize("engine_name", ["c", "ref"])
def test_fail_fast_before_a_python_decoder_would(engine_name):
    """ED A0 can never start a valid sequence: fail on it, not on the following byte."""
    parser = ENGINES[engine_name].FrameParser()
    frame = raw_frame(TEXT, b"ab\xed\xa0" + b"x" * 50)
    with pytest.raises(ProtocolError) as info:
        parser.feed_data(frame[:6 + 4])
    assert info.value.code == 1007


def test_invalid_byte_in_large_frame_fails_on_first_chunk(engine):
    """A 1 MiB TEXT frame with a bad byte near its start fails long before it is complete."""
    payload = b"a" * 10 + b"\xff" + b"a" * ((1 << 20) - 11)
    frame = raw_frame(TEXT, payload, mask=False)
    parser = engine.FrameParser(is_client=True, max_size=1 << 21)
    with pytest.raises(ProtocolError) as info:
        parser.feed_data(frame[:4096])
    assert info.value.code == 1007


def test_invalid_first_fragment_fails_before_continuation(engine):
    parser = engine.FrameParser()
    with pytest.raises(ProtocolError) as info:
        parser.feed_data(raw_frame(TEXT, b"ok\xff", fin=False))
    assert info.value.code == 1007


def test_valid_prefix_of_partial_frame_is_not_an_error(engine):
    """A chunk ending inside a code point is fine until the sequence is proven bad."""
    frame = raw_frame(TEXT, "a€b".encode())
    parser = engine.FrameParser()
    assert parser.feed_data(frame[:6 + 3]) == []     # "a" and the first two bytes of "€"
    assert parser.feed_data(frame[9:]) == [(TEXT, "a€b".encode())]


# ---------------------------------------------------------------- across fragments


def test_invalid_across_fragment_boundary_rejected(engine):
    parser = engine.FrameParser()
    assert parser.feed_data(raw_frame(TEXT, b"\xe2\x82", fin=False)) == []
    with pytest.raises(ProtocolError) as info:
        parser.feed_data(raw_frame(CONT, b"\x28", fin=False))
    assert info.value.code == 1007


def test_surrogate_across_fragment_boundary_rejected(engine):
    parser = engine.FrameParser()
    assert parser.feed_data(raw_frame(TEXT, b"\xed", fin=False)) == []
    with pytest.raises(ProtocolError) as info:
        parser.feed_data(raw_frame(CONT, b"\xa0\x80"))
    assert info.value.code == 1007


@pytest.mark.parametrize("text", ["€", "😀", "κόσμε", "ab😀cd€"])
def test_valid_multibyte_split_across_fragments_at_every_byte(engine, text):
    data = text.encode()
    for i in range(len(data) + 1):
        for j in range(i, len(data) + 1):
            wire = (raw_frame(TEXT, data[:i], fin=False) + raw_frame(CONT, data[i:j], fin=False)
                    + raw_frame(Opcode.PING, b"") + raw_frame(CONT, data[j:]))
            assert engine.FrameParser().feed_data(wire) == [(Opcode.PING, b""), (TEXT, data)], (i, j)


def test_validator_state_resets_between_messages(engine):
    """A message ending validly leaves no state behind for the next one."""
    wire = raw_frame(TEXT, "é".encode()) + raw_frame(TEXT, b"\xa9")
    with pytest.raises(ProtocolError) as info:
        engine.FrameParser().feed_data(wire)
    assert info.value.code == 1007
    assert info.value.events == [(TEXT, "é".encode())]


def test_binary_message_between_text_messages_does_not_touch_state(engine):
    wire = raw_frame(TEXT, b"\xc3", fin=False)
    with pytest.raises(ProtocolError):
        engine.FrameParser().feed_data(wire + raw_frame(BINARY, b"\xa9"))   # new message inside a text one
    wire = raw_frame(BINARY, b"\xc3") + raw_frame(TEXT, b"\xa9")
    with pytest.raises(ProtocolError) as info:
        engine.FrameParser().feed_data(wire)
    assert info.value.code == 1007


# ---------------------------------------------------------------- against Python's decoder


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=64))
@example(data=b"\xed\xa0\x80")
@example(data=b"\xf4\x8f\xbf\xbf")
def test_random_bytes_agree_with_python_decoder(data):
    expected = python_says_valid(data)
    assert bool(_frames.validate_utf8(data)) is expected
    checker = reference_frames.Utf8Checker()
    assert (checker.feed(data) and checker.complete) is expected
    for engine in ENGINES.values():
        try:
            events = engine.FrameParser().feed_data(raw_frame(TEXT, data))
        except ProtocolError as exc:
            assert not expected
            assert exc.code == 1007
        else:
            assert expected
            assert events == [(TEXT, data)]


# bytes that are mostly valid UTF-8, so that interesting boundaries are hit often
NEAR_UTF8 = st.lists(
    st.text(max_size=8).map(lambda s: s.encode("utf-8"))
    | st.sampled_from([b"\x80", b"\xc0", b"\xed\xa0", b"\xf4\x90", b"\xe2\x82", b"\xff", b"\xf0\x9f\x98"]),
    max_size=8,
).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(data=NEAR_UTF8, cuts=st.lists(st.integers(0, 64), max_size=4))
def test_incremental_validation_agrees_with_python_decoder(data, cuts):
    """Fed in arbitrary pieces, the validators agree with a one-shot decode."""
    expected = python_says_valid(data)
    bounds = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    pieces = [data[a:b] for a, b in zip(bounds, bounds[1:])]

    validator = _frames.Utf8Validator()
    checker = reference_frames.Utf8Checker()
    c_ok = all([validator.feed(p) for p in pieces]) and validator.complete
    ref_ok = all([checker.feed(p) for p in pieces]) and checker.complete
    assert c_ok is expected
    assert ref_ok is expected

    # the same pieces as TEXT fragments
    frames = [raw_frame(TEXT if i == 0 else CONT, p, fin=False) for i, p in enumerate(pieces)]
    frames.append(raw_frame(CONT if pieces else TEXT, b""))
    for engine in ENGINES.values():
        try:
            events = engine.FrameParser().feed_data(b"".join(frames))
        except ProtocolError as exc:
            assert not expected
            assert exc.code == 1007
        else:
            assert expected
            assert events == [(TEXT, data)]


@given(text=st.text(max_size=200))
@settings(max_examples=200, deadline=None)
def test_any_python_string_is_accepted(text):
    data = text.encode("utf-8")
    assert _frames.validate_utf8(data) is True
    for engine in ENGINES.values():
        assert engine.FrameParser().feed_data(raw_frame(TEXT, data)) == [(TEXT, data)]


# ---------------------------------------------------------------- the C twins


def test_validate_utf8_basics():
    assert _frames.validate_utf8(b"") is True
    assert _frames.validate_utf8("héllo".encode()) is True
    assert _frames.validate_utf8(b"\xc3") is False
    assert _frames.validate_utf8(b"\xff") is False
    assert _frames.validate_utf8(bytearray(b"ok")) is True
    assert _frames.validate_utf8(memoryview(b"x\xe2\x82\xac")[1:]) is True


def test_utf8_validator_feed_complete_reset():
    v = _frames.Utf8Validator()
    assert v.complete
    assert v.feed(b"\xe2") is True
    assert not v.complete
    assert v.feed(b"\x82") is True
    assert not v.complete
    assert v.feed(b"\xac") is True
    assert v.complete
    assert v.feed(b"\xe2") is True
    v.reset()
    assert v.complete
    assert v.feed(b"\x80") is False


def test_validator_fast_path_long_ascii_runs():
    """Bad bytes at every position of a long ASCII run (the 16-byte word fast path)."""
    for i in range(70):
        data = bytearray(b"a" * 70)
        data[i] = 0xFF
        assert _frames.validate_utf8(bytes(data)) is False, i
        data[i] = 0x7F
        assert _frames.validate_utf8(bytes(data)) is True, i
