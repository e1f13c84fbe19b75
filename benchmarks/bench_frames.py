"""Parse and build frames at 16 B, 125 B, 8 KiB, 64 KiB and 1 MiB: the C engine against the
pure-Python reference codec of the tests (the reference only at small sizes: it is slow)."""

import os

import pytest

from fastws import _frames
from tests import reference_frames

SIZES = [16, 125, 8192, 65536, 1 << 20]
KEY = b"\x37\xfa\x21\x3d"


def _ids(n):
    return {16: "16B", 125: "125B", 8192: "8KiB", 65536: "64KiB", 1 << 20: "1MiB"}[n]


@pytest.mark.parametrize("size", SIZES, ids=_ids)
def test_parse_masked_c(benchmark, size):
    """Server side: one masked client frame, parsed, unmasked and delivered."""
    frame = _frames.build_frame(2, os.urandom(size), mask=True, key=KEY)
    parser = _frames.FrameParser(is_client=False, max_size=2 << 20)
    events = benchmark(parser.feed_data, frame)
    assert len(events) == 1 and len(events[0][1]) == size


@pytest.mark.parametrize("size", SIZES[:3], ids=_ids)
def test_parse_masked_ref(benchmark, size):
    frame = _frames.build_frame(2, os.urandom(size), mask=True, key=KEY)
    parser = reference_frames.FrameParser(is_client=False, max_size=2 << 20)
    events = benchmark(parser.feed_data, frame)
    assert len(events) == 1


@pytest.mark.parametrize("size", SIZES, ids=_ids)
def test_parse_text_c(benchmark, size):
    """UTF-8 validation included (ASCII fast path)."""
    frame = _frames.build_frame(1, b"a" * size, mask=True, key=KEY)
    parser = _frames.FrameParser(is_client=False, max_size=2 << 20)
    events = benchmark(parser.feed_data, frame)
    assert len(events) == 1


@pytest.mark.parametrize("size", SIZES, ids=_ids)
def test_build_server_c(benchmark, size):
    payload = os.urandom(size)
    out = benchmark(_frames.build_frame, 2, payload)
    assert len(out) > size


@pytest.mark.parametrize("size", SIZES, ids=_ids)
def test_build_client_masked_c(benchmark, size):
    """Client side: fresh random key and masking per frame."""
    payload = os.urandom(size)
    out = benchmark(_frames.build_frame, 2, payload, mask=True)
    assert len(out) > size


@pytest.mark.parametrize("size", SIZES[:3], ids=_ids)
def test_build_server_ref(benchmark, size):
    payload = os.urandom(size)
    out = benchmark(reference_frames.build_frame, 2, payload)
    assert len(out) > size
