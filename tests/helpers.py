"""Helpers shared by the tests."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import subprocess
import sys
import time

from tests.conftest import MS  # noqa: F401  (re-export)


def build_frame(opcode: int, payload: bytes, fin: bool = True, mask: bool = True, rsv: int = 0,
                key: bytes | None = None, length: int | None = None) -> bytes:
    """A frame built by hand (independent of fastws), for raw peers."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    m = 0x80 if mask else 0
    if n < 126:
        head = bytes((b0, m | n))
    elif n < 65536:
        head = bytes((b0, m | 126)) + struct.pack("!H", n)
    else:
        head = bytes((b0, m | 127)) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = key or os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + masked


def split_every_offset(data: bytes):
    """Yield (head, tail) for every split point of data."""
    for i in range(len(data) + 1):
        yield data[:i], data[i:]


def upgrade_request(path: str = "/", host: str = "127.0.0.1", extra: str = "", key: str | None = None) -> bytes:
    key = key or base64.b64encode(os.urandom(16)).decode()
    return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n").encode()


async def raw_connect(server, request: bytes | None = None):
    """Open a raw TCP connection to a fastws server, optionally sending bytes; returns (reader, writer)."""
    host, port = server.address
    reader, writer = await asyncio.open_connection(host, port)
    if request is not None:
        writer.write(request)
        await writer.drain()
    return reader, writer


async def read_http_response(reader, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP response head (and its Content-Length body)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    body = b""
    if "content-length" in headers:
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), timeout)
    return status, headers, body


async def until(predicate, timeout: float = 5.0, step: float = 0.01) -> None:
    """Wait (bounded) until ``predicate()`` is true; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(step)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_history_server(port: int, data: str) -> subprocess.Popen[str]:
    """``fastws serve tests.integration.history_app:app`` on 127.0.0.1:``port`` with its rooms in
    ``data``, once it accepts connections (20 s at most, else its stderr in the error)."""
    proc = subprocess.Popen([sys.executable, "-m", "fastws", "serve", "tests.integration.history_app:app",
                             "--host", "127.0.0.1", "--port", str(port), "--data-dir", data, "--no-metrics"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("server did not start: " + proc.communicate(timeout=5)[1])
