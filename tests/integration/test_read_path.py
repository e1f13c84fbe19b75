"""The socket transport's read path around large messages: after one, the next read takes only
the expected header; a read that fills its target is followed by another. Whatever the peer
sends next (small frames, a ping, a frame split anywhere), every byte is parsed in order."""

from __future__ import annotations

import asyncio
import os

import pytest

from tests.conftest import EchoListener
from tests.helpers import build_frame, raw_connect, read_http_response, upgrade_request


def _unmasked_reply(payload: bytes, opcode: int = 2) -> bytes:
    return build_frame(opcode, payload, mask=False)


async def _open(server):
    reader, writer = await raw_connect(server, upgrade_request())
    status, _, _ = await read_http_response(reader)
    assert status == 101
    return reader, writer


async def _expect(reader, data: bytes):
    assert await asyncio.wait_for(reader.readexactly(len(data)), 10) == data


@pytest.mark.parametrize("size", [70_000, 300_000, 1_100_000])
async def test_small_frames_after_a_large_message_in_one_write(serve, size):
    server = await serve(EchoListener, max_size=4 << 20)
    reader, writer = await _open(server)
    big = os.urandom(size)
    writer.write(build_frame(2, big))
    await writer.drain()
    await _expect(reader, _unmasked_reply(big))
    # the next read expects a 14-byte header; here come 300 small frames at once
    smalls = [os.urandom(i % 40) for i in range(300)]
    writer.write(b"".join(build_frame(2, p) for p in smalls))
    await writer.drain()
    await _expect(reader, b"".join(_unmasked_reply(p) for p in smalls))
    writer.close()


async def test_a_ping_then_large_messages_after_a_large_message(serve):
    server = await serve(EchoListener, max_size=4 << 20)
    reader, writer = await _open(server)
    a, b, c = os.urandom(200_000), os.urandom(90_000), os.urandom(500_000)
    writer.write(build_frame(2, a))
    await writer.drain()
    await _expect(reader, _unmasked_reply(a))
    # a control frame where a large header was expected, then two large frames back to back
    writer.write(build_frame(9, b"p") + build_frame(2, b) + build_frame(1, c.hex()[:300_000].encode()))
    await writer.drain()
    await _expect(reader, build_frame(10, b"p", mask=False) + _unmasked_reply(b)
                  + _unmasked_reply(c.hex()[:300_000].encode(), opcode=1))
    writer.close()


@pytest.mark.parametrize("cut", [1, 2, 9, 13, 14, 15, 4096, 199_999])
async def test_a_large_frame_split_anywhere_after_a_large_message(serve, cut):
    server = await serve(EchoListener, max_size=4 << 20)
    reader, writer = await _open(server)
    first, second = os.urandom(150_000), os.urandom(185_000)
    writer.write(build_frame(2, first))
    await writer.drain()
    await _expect(reader, _unmasked_reply(first))
    frame = build_frame(2, second)
    writer.write(frame[:cut])
    await writer.drain()
    await asyncio.sleep(0.05)  # let the server read the first part on its own
    writer.write(frame[cut:])
    await writer.drain()
    await _expect(reader, _unmasked_reply(second))
    writer.close()
