"""Floods and slow peers against a real server on 127.0.0.1 (bounded in count and time): a
decompression bomb, a ping flood from a peer that never reads, and slowloris. Each prints the
figures it measured (``pytest -s`` shows them)."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
import zlib

import pytest

from tests.conftest import echo_handler
from tests.helpers import build_frame, read_http_response, upgrade_request
from tests.integration.test_bad_input import check_responsive

T = 10.0


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(field)


def reset_peak_rss() -> bool:
    """Reset VmHWM (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


async def test_decompression_bomb_closes_1009_within_a_few_mib(serve):
    limit = 1 << 20
    server = await serve(echo_handler, compression=True, max_size=limit)
    # 256 MiB of zeros deflate to about 250 KiB: one message, RSV1 set, the usual tail stripped
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(1 << 20)
    body = b"".join(comp.compress(zeros) for _ in range(256)) + comp.flush(zlib.Z_SYNC_FLUSH)
    assert body.endswith(b"\x00\x00\xff\xff")
    body = body[:-4]
    assert len(body) < 300_000
    frame = build_frame(2, body, rsv=4)
    r, w = await asyncio.open_connection(*server.address)
    w.write(upgrade_request("/", extra="Sec-WebSocket-Extensions: permessage-deflate\r\n"))
    status, headers, _ = await read_http_response(r, T)
    assert status == 101 and "permessage-deflate" in headers.get("sec-websocket-extensions", "")
    before = _status_kib("VmRSS")
    peak_ok = reset_peak_rss()
    t0 = time.monotonic()
    w.write(frame)
    await w.drain()
    head = await asyncio.wait_for(r.readexactly(2), T)
    assert head[0] == 0x88
    payload = await asyncio.wait_for(r.readexactly(head[1] & 0x7F), T)
    code = struct.unpack("!H", payload[:2])[0]
    elapsed = time.monotonic() - t0
    peak = _status_kib("VmHWM") if peak_ok else _status_kib("VmRSS")
    grew = (peak - before) / 1024
    print(f"\ndecompression bomb: {len(body)} bytes inflating to 256 MiB, max_size 1 MiB: close {code} "
          f"after {elapsed * 1000:.0f} ms, peak RSS +{grew:.1f} MiB ({'VmHWM' if peak_ok else 'VmRSS'})")
    assert code == 1009
    assert grew < 1 + 8, f"RSS grew {grew:.1f} MiB for a 1 MiB limit"
    w.close()
    await check_responsive(server)


async def test_ping_flood_from_a_peer_that_never_reads_is_bounded_then_closed(serve):
    """The server stops reading once its pongs back up (write_limit), so a flooder that does not
    read gets no more answers; once it has not read for ping_interval + ping_timeout it is closed
    (1011, then aborted after close_timeout); other clients are served throughout."""
    server = await serve(echo_handler, ping_interval=0.5, ping_timeout=0.5, close_timeout=1.0)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)   # a small window, never read
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, server.address)
    await loop.sock_sendall(sock, upgrade_request("/"))
    resp = b""
    while b"\r\n\r\n" not in resp:
        resp += await asyncio.wait_for(loop.sock_recv(sock, 1), T)   # byte by byte: nothing after the head
    assert resp.startswith(b"HTTP/1.1 101")
    burst = b"".join(build_frame(9, b"p" * 125) for _ in range(2000))   # 262 KB of pings
    pushed = 0
    t0 = time.monotonic()
    closed = False
    while time.monotonic() - t0 < 15:
        try:
            pushed += sock.send(burst)
        except BlockingIOError:
            await asyncio.sleep(0.02)
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        if server.endpoint.stats()["closed"] >= 1:
            closed = True
            break
        if pushed > 200 << 20:
            break
    elapsed = time.monotonic() - t0
    print(f"\nping flood, never read: the client could push {pushed / 1e6:.1f} MB of pings (kernel buffers "
          f"included) before the server stopped reading; closed after {elapsed:.1f} s, closed={closed}")
    assert closed, "the flooder was never closed"
    assert pushed < 64 << 20, "the server kept reading a peer that never reads"
    sock.close()
    await check_responsive(server)


@pytest.mark.parametrize("n", [1000])
async def test_slowloris_is_dropped_at_the_handshake_timeout(serve, n):
    server = await serve(echo_handler, handshake_timeout=1.0)
    before = _status_kib("VmRSS")
    writers = []
    readers = []
    for _ in range(n):
        r, w = await asyncio.open_connection(*server.address)
        w.write(b"GET / HTTP/1.1\r\nHo")
        writers.append(w)
        readers.append(r)
    t0 = time.monotonic()
    served = 0

    async def trickle():
        while time.monotonic() - t0 < 4:
            for w in writers:
                if not w.is_closing():
                    w.write(b"x")
            await asyncio.sleep(0.25)

    async def good_clients():
        nonlocal served
        while time.monotonic() - t0 < 3:
            await check_responsive(server)
            served += 1
            await asyncio.sleep(0.05)

    async def dropped(r):
        try:
            data = await asyncio.wait_for(r.read(), 6)
        except ConnectionError:
            data = b""
        return data, time.monotonic() - t0

    trickler = asyncio.ensure_future(trickle())
    waits = asyncio.ensure_future(asyncio.gather(*(dropped(r) for r in readers)))
    await good_clients()
    peak = _status_kib("VmRSS")
    results = await waits
    answers = [a for a, _ in results]
    dropped_after = max(t for _, t in results)
    trickler.cancel()
    for w in writers:
        w.close()
    print(f"\nslowloris: {n} connections trickling the head; all dropped by {dropped_after:.1f} s "
          f"(handshake_timeout 1 s); {served} good clients served meanwhile; RSS +{(peak - before) / 1024:.1f} MiB")
    assert all(a in (b"",) or a.startswith(b"HTTP/1.1 408") for a in answers), answers[:3]
    assert served >= 10 and dropped_after < 3.0
    assert (peak - before) / 1024 < 64
    await check_responsive(server)
