"""XOR masking (RFC 6455 section 5.3): the SIMD kernels of the C engine ("c") and
the reference ("ref") against a naive XOR."""

from __future__ import annotations

import array

import pytest

from fastws import _frames
from tests import reference_frames

ENGINES = {"c": _frames, "ref": reference_frames}
KEYS = [b"\x37\xfa\x21\x3d", b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x01\x02\x03\x04"]


@pytest.fixture(params=["c", "ref"])
def engine(request):
    return ENGINES[request.param]


def naive_mask(data: bytes, key: bytes, offset: int = 0) -> bytes:
    return bytes(b ^ key[(i + offset) % 4] for i, b in enumerate(data))


def payload(size: int) -> bytes:
    return bytes((i * 7 + 3) % 256 for i in range(size))


@pytest.mark.parametrize("offset", [0, 1, 2, 3])
def test_apply_mask_bytearray_sizes_0_to_300(engine, offset):
    key = KEYS[0]
    for size in range(301):
        data = payload(size)
        buf = bytearray(data)
        assert engine.apply_mask(buf, key, offset) is None
        assert bytes(buf) == naive_mask(data, key, offset), size


@pytest.mark.parametrize("offset", [0, 1, 2, 3])
def test_apply_mask_memoryview_sizes_0_to_300(engine, offset):
    key = KEYS[3]
    for size in range(301):
        data = payload(size)
        backing = bytearray(b"\xaa" + data + b"\xbb")
        engine.apply_mask(memoryview(backing)[1:-1], key, offset)
        assert bytes(backing) == b"\xaa" + naive_mask(data, key, offset) + b"\xbb", size


@pytest.mark.parametrize("key", KEYS)
def test_apply_mask_keys(engine, key):
    data = payload(1000)
    buf = bytearray(data)
    engine.apply_mask(buf, key)
    assert bytes(buf) == naive_mask(data, key)


@pytest.mark.parametrize("start", range(8))
def test_apply_mask_unaligned_start(engine, start):
    """Start addresses at every alignment, sizes crossing the 16/32/64/128-byte kernels."""
    for size in (15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 255, 1000):
        data = payload(size)
        backing = bytearray(start) + bytearray(data)
        engine.apply_mask(memoryview(backing)[start:], KEYS[0])
        assert bytes(backing[start:]) == naive_mask(data, KEYS[0]), size
        assert backing[:start] == bytearray(start)


def test_apply_mask_large_buffer(engine):
    data = payload(70001)
    buf = bytearray(data)
    engine.apply_mask(buf, KEYS[0], 2)
    assert bytes(buf) == naive_mask(data, KEYS[0], 2)


def test_apply_mask_offset_beyond_3_wraps(engine):
    """The offset is a position in the payload: only offset % 4 matters."""
    data = payload(50)
    for offset in (4, 5, 1001):
        buf = bytearray(data)
        engine.apply_mask(buf, KEYS[0], offset)
        assert bytes(buf) == naive_mask(data, KEYS[0], offset % 4)


def test_apply_mask_twice_restores(engine):
    data = payload(333)
    buf = bytearray(data)
    engine.apply_mask(buf, KEYS[0], 1)
    assert bytes(buf) != data
    engine.apply_mask(buf, KEYS[0], 1)
    assert bytes(buf) == data


def test_apply_mask_in_pieces_with_offsets(engine):
    """Masking a payload in chunks with running offsets equals masking it whole (how the parser unmasks)."""
    data = payload(257)
    whole = naive_mask(data, KEYS[0])
    for cut in range(0, 257, 13):
        buf = bytearray(data)
        view = memoryview(buf)
        engine.apply_mask(view[:cut], KEYS[0], 0)
        engine.apply_mask(view[cut:], KEYS[0], cut)
        assert bytes(buf) == whole, cut


@pytest.mark.parametrize("key_type", [bytes, bytearray, memoryview])
def test_apply_mask_key_buffer_types(engine, key_type):
    buf = bytearray(b"abcdef")
    engine.apply_mask(buf, key_type(KEYS[0]))
    assert bytes(buf) == naive_mask(b"abcdef", KEYS[0])


@pytest.mark.parametrize("readonly", [b"abcd", memoryview(b"abcd"), memoryview(bytearray(b"abcd")).toreadonly()],
                         ids=["bytes", "memoryview_of_bytes", "readonly_memoryview"])
def test_apply_mask_rejects_read_only_buffers(engine, readonly):
    with pytest.raises(BufferError):
        engine.apply_mask(readonly, KEYS[0])


def test_apply_mask_rejects_non_buffer(engine):
    with pytest.raises(TypeError):
        engine.apply_mask("text", KEYS[0])


def test_apply_mask_rejects_non_contiguous(engine):
    with pytest.raises(BufferError):
        engine.apply_mask(memoryview(bytearray(8))[::2], KEYS[0])


@pytest.mark.parametrize("key", [b"", b"\x01", b"abc", b"abcde", b"\x00" * 8])
def test_apply_mask_rejects_wrong_key_length(engine, key):
    buf = bytearray(b"unchanged")
    with pytest.raises(ValueError):
        engine.apply_mask(buf, key)
    assert buf == bytearray(b"unchanged")


def test_apply_mask_on_typed_array(engine):
    """Any writable contiguous buffer works; masking is bytewise."""
    arr = array.array("I", [0, 0xFFFFFFFF])
    engine.apply_mask(arr, KEYS[3])
    assert arr.tobytes() == naive_mask(b"\x00" * 4 + b"\xff" * 4, KEYS[3])


@pytest.mark.parametrize("size", [0, 1, 3, 4, 15, 16, 17, 64, 65, 128, 300, 4096])
def test_mask_returns_new_bytes(engine, size):
    data = payload(size)
    out = engine.mask(data, KEYS[0])
    assert type(out) is bytes
    assert out == naive_mask(data, KEYS[0])
    assert data == payload(size)


def test_mask_accepts_read_only_input(engine):
    assert engine.mask(memoryview(b"abcd"), KEYS[0]) == naive_mask(b"abcd", KEYS[0])


@pytest.mark.parametrize("key", [b"", b"abc", b"abcde"])
def test_mask_rejects_wrong_key_length(engine, key):
    with pytest.raises(ValueError):
        engine.mask(b"data", key)


def test_mask_impl_names_a_kernel():
    assert _frames.mask_impl() in {"avx2", "sse2", "words64"}
