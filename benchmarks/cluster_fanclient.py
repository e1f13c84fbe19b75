"""Load client for the cluster fan-out benchmark (``benchmarks/cluster_bench.py`` runs it in its own
process): one publisher and N subscribers in one room, the subscribers spread over several server
processes. Talks only to 127.0.0.1, stops by itself (a wall-clock deadline, a cap on publishes and
a timed window) and prints exactly one JSON object on stdout.

The approach and much of the code are those of ``../shared/fanout/fanclient.py`` (raw uvloop
``BufferedProtocol`` sockets; every client frame pre-framed and pre-masked once, only the sequence
digits patched per publish; counting subscribers that never parse: complete frames = bytes //
frame length, which the drain check at the end and the parsing subscribers prove exact). What
differs:

- subscribers on several servers (``--subs PORT:N,PORT:N``); the publisher connects first, to
  ``--pub PORT``, so that its server is the room's owner in a cluster;
- 32-byte *text* messages ``P<15-digit seq><filler>`` (the cluster's envelope carries text as is);
- the window (as there: at most ``--window`` publishes whose own copy the publisher has not
  received, and never more than ``--max-lag`` ahead of the slowest subscriber) holds across nodes:
  the publisher is on the owner, whose own sockets are served first, and the lag guard keeps the
  members on the other node within ``--max-lag`` publishes; ``--gate slowest`` counts the window
  against the slowest subscriber instead (lock-step bursts of ``--window``: the servers then write
  a whole window per read, which measures their coalescing more than their per-message cost);
- ``--proto sio``: the same load through Socket.IO (Engine.IO 4 over a WebSocket, spoken directly:
  the client sends ``40`` and waits for ``40{...}``; the publisher emits ``42["p","<msg>"]`` and
  every member receives ``42["m","<msg>"]``, a fixed-length frame, so the same counting works;
  the server's pings are pushed out past the run with ``ping_interval``);
- before the probe, ``--ready-url`` (``GET /<room>`` of the Fan room, answered by the owner) is
  polled until every connection has joined the room on the owner;
- CPU of several server processes (``--server-pids``) and of Redis (``--redis-pid``) over the window.

Subscribers per server: the first ``--verify-subs`` of each parse every frame and check opcode,
length, sequence order and bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import sys
import time
import urllib.request

import uvloop

HOST = "127.0.0.1"
WS_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="            # RFC 6455 sample key
WS_ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="       # its accept value
OP_TEXT = 0x1
PROBE_SEQ = 10 ** 15 - 1
DIGITS = 15
perf_ns = time.perf_counter_ns


def handshake_request(port: int, path: str) -> bytes:
    return (b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n" % (path.encode(), HOST.encode(), port, WS_KEY))


def xor_mask(payload: bytes, key: bytes, offset: int = 0) -> bytes:
    n = len(payload)
    if n == 0:
        return b""
    k = ((key[offset % 4:] + key[:offset % 4]) * (n // 4 + 2))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(k, "little")).to_bytes(n, "little")


def frame_header(n: int, opcode: int, masked: bool) -> bytes:
    b0 = 0x80 | opcode
    m = 0x80 if masked else 0
    if n < 126:
        return bytes((b0, m | n))
    if n < 65536:
        return bytes((b0, m | 126)) + n.to_bytes(2, "big")
    return bytes((b0, m | 127)) + n.to_bytes(8, "big")


def client_frame(payload: bytes, key: bytes, opcode: int = OP_TEXT) -> bytes:
    return frame_header(len(payload), opcode, True) + key + xor_mask(payload, key)


def parse_frame(buf: bytearray):
    """One complete frame at the start of buf -> (opcode, fin, masked, payload, frame_len), or None."""
    if len(buf) < 2:
        return None
    b0, b1 = buf[0], buf[1]
    n = b1 & 0x7F
    pos = 2
    if n == 126:
        if len(buf) < 4:
            return None
        n = int.from_bytes(buf[2:4], "big")
        pos = 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n = int.from_bytes(buf[2:10], "big")
        pos = 10
    key = None
    if b1 & 0x80:
        if len(buf) < pos + 4:
            return None
        key = bytes(buf[pos:pos + 4])
        pos += 4
    if len(buf) < pos + n:
        return None
    payload = bytes(buf[pos:pos + n])
    if key is not None:
        payload = xor_mask(payload, key)
    return b0 & 0x0F, bool(b0 & 0x80), key is not None, payload, pos + n


def proc_cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def machine_busy_seconds() -> float | None:
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def self_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def raise_nofile(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = need if hard == resource.RLIM_INFINITY else min(hard, need)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def pct(vals: list[float], q: float) -> float | None:
    if not vals:
        return None
    return vals[min(len(vals) - 1, max(0, int(round(q * (len(vals) - 1)))))]


_SHARED_RX = memoryview(bytearray(1 << 20))   # counting-mode reads land here, discarded


class Conn(asyncio.BufferedProtocol):
    """One TCP connection. Modes: hs -> [sio] -> idle -> probe -> sub | verify | pub -> closing."""

    def __init__(self, bench: Bench, role: str, port: int) -> None:
        self.bench = bench
        self.role = role
        self.port = port
        self.transport = None
        self.write = None
        loop = asyncio.get_running_loop()
        self.ready = loop.create_future()
        self.lost = loop.create_future()
        self.probe_fut = None
        self.acc = bytearray()
        self.mode = "hs"
        self.got = 0
        self.frames = 0
        self.reads = 0
        self.flen = 0
        self.psock: socket.socket | None = None   # --poll-ms: a dup of the fd, read by poll_loop

    def connection_made(self, transport):
        self.transport = transport
        self.write = transport.write
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.write(handshake_request(self.port, self.bench.path))

    def connection_lost(self, exc):
        if not self.lost.done():
            self.lost.set_result(None)
        if self.mode not in ("closing",):
            self.bench.error(f"connection lost in mode {self.mode}: {exc!r}")
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(f"connection lost during the handshake: {exc!r}"))

    def get_buffer(self, sizehint):
        return _SHARED_RX

    def buffer_updated(self, n):
        mode = self.mode
        if mode == "sub":
            got = self.got + n
            self.got = got
            self.reads += 1
            f = got // self.flen
            a = self.frames
            if f != a:
                self._count(a, f)
            return
        if mode == "pub":
            got = self.got + n
            self.got = got
            f = got // self.flen
            if f != self.frames:
                self.frames = f
                b = self.bench
                b.pub_done = f
                if not b.gate_slowest:
                    b.pump()
            return
        data = _SHARED_RX[:n]
        if mode == "verify":
            self.acc += data
            self._verify_frames()
            return
        if mode == "hs":
            self.acc += data
            end = self.acc.find(b"\r\n\r\n")
            if end < 0:
                if len(self.acc) > 65536:
                    self._fail("handshake response too large")
                return
            head = bytes(self.acc[:end])
            rest = self.acc[end + 4:]
            self.acc = bytearray()
            if not head.startswith(b"HTTP/1.1 101") or WS_ACCEPT not in head:
                self._fail("bad handshake response: %r" % head[:200])
                return
            if self.bench.sio:
                self.mode = "sio"
                self.acc += rest
                self._sio_frames()
                return
            self.mode = "idle"
            self.ready.set_result(None)
            if rest:
                self.bench.unexpected_bytes += len(rest)
            return
        if mode == "sio":
            self.acc += data
            self._sio_frames()
            return
        if mode == "probe":
            self.acc += data
            r = parse_frame(self.acc)
            if r is not None:
                op, fin, masked, payload, flen = r
                extra = len(self.acc) - flen
                self.acc = bytearray()
                self.mode = "idle"
                if self.probe_fut.done():
                    return
                if payload != self.bench.probe_payload:
                    self.probe_fut.set_exception(RuntimeError(f"probe mismatch: got op={op} {payload[:60]!r}"))
                elif op != OP_TEXT or not fin or masked:
                    self.probe_fut.set_exception(RuntimeError(f"probe frame bad: op={op} fin={fin} masked={masked}"))
                elif extra:
                    self.probe_fut.set_exception(RuntimeError("extra bytes after the probe frame"))
                else:
                    self.probe_fut.set_result(flen)
            return
        if mode in ("closing", "broken"):
            return
        self.bench.unexpected_bytes += n

    def _count(self, a: int, f: int) -> None:
        b = self.bench
        self.frames = f
        if f > b.sent:
            b.error("subscriber received more frames than were published")
            self.mode = "broken"
            return
        b.deliveries += f - a
        hist = b.hist
        hist[a] -= 1
        hist[f] += 1
        if a == b.minf and not hist[a]:
            b.advance()

    def _sio_frames(self) -> None:
        """Engine.IO open packet ``0{...}`` -> send ``40`` -> wait for ``40{...}`` (joined)."""
        while True:
            r = parse_frame(self.acc)
            if r is None:
                return
            op, _fin, _masked, payload, flen = r
            del self.acc[:flen]
            if payload[:1] == b"0":
                self.write(client_frame(b"40", os.urandom(4)))
            elif payload[:2] == b"40":
                self.mode = "idle"
                if self.acc:
                    self.bench.unexpected_bytes += len(self.acc)
                    self.acc = bytearray()
                self.ready.set_result(None)
                return
            else:
                self._fail(f"unexpected Engine.IO packet during the handshake: {payload[:80]!r}")
                return

    def _verify_frames(self) -> None:
        b = self.bench
        acc = self.acc
        fl = b.flen
        pos = 0
        f = self.frames
        while len(acc) - pos >= fl:
            frame = bytes(acc[pos:pos + fl])
            if frame != b.expected_frame(f):
                b.verify_error(f"frame {f} on port {self.port}: {frame[:60]!r}")
            pos += fl
            f += 1
        if pos:
            del acc[:pos]
        a = self.frames
        if f != a:
            self._count(a, f)

    def _fail(self, msg: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(msg))
        self.transport.close()


class Bench:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.sio = a.proto == "sio"
        self.path = "/socket.io/?EIO=4&transport=websocket" if self.sio else a.path
        self.window = a.window
        self.max_pubs = a.max_pubs
        self.max_lag = a.max_lag
        self.errors = 0
        self.verify_errors = 0
        self.error_samples: list[str] = []
        self.unexpected_bytes = 0
        self.running = False
        self.polling = True
        self.gate_slowest = a.gate == "slowest"
        self.lag_stalls = 0
        self.lag_blocked = False
        self.sent = 0
        self.pub_done = 0
        self.deliveries = 0
        self.minf = 0
        self.hist: list[int] = []
        self.send_ns: list[int] = []
        self.complete_ns: list[int] = []
        self.pub: Conn | None = None
        self.subs: list[Conn] = []
        self.flen = 0
        if a.size < 1 + DIGITS + 1:
            raise SystemExit(f"--size must be >= {DIGITS + 2}")
        self.filler = bytes((0x61 + i % 26) for i in range(a.size - 1 - DIGITS))
        # what the publisher sends and what every member receives, around b"P<digits><filler>"
        self.send_pre, self.send_post = (b'42["p","', b'"]') if self.sio else (b"", b"")
        self.recv_pre, self.recv_post = (b'42["m","', b'"]') if self.sio else (b"", b"")
        self.probe_payload = self.recv_pre + self.message(PROBE_SEQ) + self.recv_post
        key = os.urandom(4)
        self.key = key
        body = self.send_pre + self.message(0) + self.send_post
        masked = xor_mask(body, key)
        self.doff = len(self.send_pre) + 1                 # offset of the digits in the payload
        self.fprefix = frame_header(len(body), OP_TEXT, True) + key + masked[:self.doff]
        self.ftail = masked[self.doff + DIGITS:]
        self.kvar = int.from_bytes(bytes(key[(self.doff + j) % 4] for j in range(DIGITS)), "little")
        self.recv_hdr = frame_header(len(self.probe_payload), OP_TEXT, False)

    def message(self, seq: int) -> bytes:
        return b"P" + b"%0*d" % (DIGITS, seq) + self.filler

    def expected_frame(self, seq: int) -> bytes:
        return self.recv_hdr + self.recv_pre + self.message(seq) + self.recv_post

    def error(self, msg: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(msg)

    def verify_error(self, msg: str) -> None:
        self.verify_errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append("verify: " + msg)

    def advance(self) -> None:
        hist = self.hist
        m = self.minf
        now = perf_ns()
        cn = self.complete_ns
        while not hist[m]:
            cn.append(now)
            m += 1
        self.minf = m
        if self.gate_slowest or self.lag_blocked:
            self.lag_blocked = False
            self.pump()

    def pump(self) -> None:
        """Keep at most ``window`` publishes in flight (see the module docstring)."""
        if not self.running:
            return
        done = self.minf if self.gate_slowest else self.pub_done
        k = min(self.window - (self.sent - done), self.max_pubs - self.sent)
        lag_room = self.max_lag - (self.sent - self.minf)
        if lag_room < k:
            if lag_room <= 0:
                self.lag_stalls += 1
                self.lag_blocked = True
            k = lag_room
        if k <= 0:
            return
        now = perf_ns()
        seq = self.sent
        kv = self.kvar
        pre, tail = self.fprefix, self.ftail
        parts = []
        sn = self.send_ns
        for s in range(seq, seq + k):
            parts.append(pre)
            parts.append((int.from_bytes(b"%0*d" % (DIGITS, s), "little") ^ kv).to_bytes(DIGITS, "little"))
            parts.append(tail)
            sn.append(now)
        self.sent = seq + k
        self.pub.write(b"".join(parts))

    async def connect(self, port: int, n: int, role, concurrency: int) -> list[Conn]:
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(concurrency)
        conns: list[Conn] = []

        async def one(i: int) -> None:
            async with sem:
                _, proto = await loop.create_connection(lambda: Conn(self, role(i), port), HOST, port)
                await proto.ready
                conns.append(proto)

        await asyncio.gather(*(one(i) for i in range(n)))
        return conns


async def poll_loop(b: Bench, conns: list[Conn], period: float) -> None:
    """``--poll-ms``: the counting subscribers are read in passes, every ``period`` s, each socket
    drained with ``recv_into`` on a dup of its fd (its transport paused), instead of one callback
    per readiness. Every byte is still counted; what changes is that the client reads a socket a
    few times per period rather than once per server write, so its CPU per delivery falls well
    below the servers' and a 2-core host can show what two server processes do (the client's own
    cores are what the second process competes for). A pass yields to the event loop every 32
    sockets, so the publisher's own socket is served between slices. Latencies to the last
    subscriber then include up to one period."""
    rx = _SHARED_RX
    cap = len(rx)
    while b.polling:
        for i, c in enumerate(conns):
            if i % 32 == 31:
                await asyncio.sleep(0)   # the publisher (read per readiness) is served between slices
            s = c.psock
            if s is None:
                continue
            while True:
                try:
                    n = s.recv_into(rx)
                except BlockingIOError:
                    break
                except OSError as e:
                    b.error(f"poll read: {e!r}")
                    c.psock = None
                    break
                if n == 0:
                    b.error("subscriber connection closed by the server")
                    c.psock = None
                    break
                c.buffer_updated(n)
                if n < cap:
                    break
        await asyncio.sleep(period)


CLOSE_FRAME = client_frame(b"\x03\xe8", b"\x11\x22\x33\x44", opcode=0x8)


async def graceful_close(conns: list[Conn], timeout: float = 5.0) -> None:
    for c in conns:
        if c.transport is not None and not c.transport.is_closing():
            c.mode = "closing"
            c.write(CLOSE_FRAME)
    pending = [c.lost for c in conns if not c.lost.done()]
    if pending:
        await asyncio.wait(pending, timeout=timeout)
    for c in conns:
        if c.transport is not None and not c.transport.is_closing():
            c.transport.close()


def snapshot(b: Bench, a: argparse.Namespace) -> dict:
    return {"t": time.perf_counter(), "ns": perf_ns(), "deliv": b.deliveries, "sent": b.sent, "minf": b.minf,
            "scpu": [proc_cpu_seconds(p) for p in a.server_pids],
            "rcpu": proc_cpu_seconds(a.redis_pid) if a.redis_pid else None,
            "ccpu": self_cpu_seconds(), "mcpu": machine_busy_seconds()}


async def wait_joined(url: str, want: int, timeout: float) -> int:
    """Poll GET url (the Fan room's on_request, run by the owner) until sessions == want."""
    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    seen = -1
    while time.perf_counter() - t0 < timeout:
        try:
            body = await loop.run_in_executor(None, lambda: urllib.request.urlopen(url, timeout=5).read())
            seen = json.loads(body)["sessions"]
        except Exception:  # noqa: BLE001 - retried until the timeout
            pass
        if seen == want:
            return seen
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{url}: {seen} sessions in the room after {timeout}s, want {want}")


async def run(a: argparse.Namespace) -> dict:
    targets = [(int(p), int(n)) for p, n in (t.split(":") for t in a.subs.split(","))]
    nsubs = sum(n for _, n in targets)
    raise_nofile(nsubs + 1 + 1024)
    b = Bench(a)
    all_conns: list[Conn] = []
    poll_task = None
    loop = asyncio.get_running_loop()
    t_conn = time.perf_counter()
    try:
        b.pub = (await b.connect(a.pub, 1, lambda i: "pub", 1))[0]   # first: its server owns the room
        all_conns.append(b.pub)
        groups = await asyncio.gather(*(b.connect(port, n, lambda i: "verify" if i < a.verify_subs else "sub",
                                                  a.connect_concurrency) for port, n in targets))
        for g in groups:
            b.subs += g
            all_conns += g
        connect_s = time.perf_counter() - t_conn
        if a.ready_url:
            await wait_joined(a.ready_url, nsubs + 1, a.probe_timeout)
        await asyncio.sleep(a.settle)
        for c in all_conns:
            c.probe_fut = loop.create_future()
            c.mode = "probe"
        b.pub.write(client_frame(b.send_pre + b.message(PROBE_SEQ) + b.send_post, os.urandom(4)))
        done, pending = await asyncio.wait([c.probe_fut for c in all_conns], timeout=a.probe_timeout)
        if pending:
            for f in pending:
                f.cancel()
            for f in done:
                f.exception()
            raise RuntimeError(f"{len(pending)} of {len(all_conns)} connections did not receive the probe "
                               f"within {a.probe_timeout}s")
        excs = [f.exception() for f in done if f.exception() is not None]
        if excs:
            raise RuntimeError(f"{len(excs)} of {len(all_conns)} connections: {excs[0]}")
        lens = {f.result() for f in done}
        if len(lens) != 1:
            raise RuntimeError(f"different frame lengths for the same payload: {sorted(lens)}")
        b.flen = flen = lens.pop()
        await asyncio.sleep(0.05)
        b.hist = [0] * (a.max_pubs + 2)
        b.hist[0] = nsubs
        for c in all_conns:
            c.flen = flen
            c.got = c.frames = c.reads = 0
            c.acc = bytearray()
        b.pub_done = 0
        for c in b.subs:
            c.mode = c.role
        polled = [c for c in b.subs if c.role == "sub"] if a.poll_ms > 0 else []
        for c in polled:
            c.transport.pause_reading()
            fd = c.transport.get_extra_info("socket").fileno()
            c.psock = socket.socket(fileno=os.dup(fd))   # shares O_NONBLOCK with the transport's fd
        poll_task = loop.create_task(poll_loop(b, polled, a.poll_ms / 1000.0)) if polled else None
        b.pub.mode = "pub"
        b.running = True
        b.pump()
        await asyncio.sleep(a.warmup)
        s0 = snapshot(b, a)
        await asyncio.sleep(a.duration)
        s1 = snapshot(b, a)
        b.running = False
        t_drain = time.perf_counter()
        drained = False
        while time.perf_counter() - t_drain < a.drain_timeout:
            if b.minf >= b.sent and b.pub.got >= b.sent * flen:
                drained = True
                break
            await asyncio.sleep(0.02)
        drain_s = time.perf_counter() - t_drain
    finally:
        b.polling = False
        if poll_task is not None:
            await poll_task
        for c in all_conns:
            if c.psock is not None:
                c.psock.close()
                c.psock = None
                if c.transport is not None and not c.transport.is_closing():
                    c.transport.resume_reading()
        await graceful_close(all_conns)

    dt = s1["t"] - s0["t"]
    deliv = s1["deliv"] - s0["deliv"]
    pubs = s1["minf"] - s0["minf"]
    scpu = [(y - x) if x is not None and y is not None else None for x, y in zip(s0["scpu"], s1["scpu"])]
    scpu_sum = sum(scpu) if scpu and None not in scpu else None
    rcpu = (s1["rcpu"] - s0["rcpu"]) if s0["rcpu"] is not None and s1["rcpu"] is not None else None
    ccpu = s1["ccpu"] - s0["ccpu"]
    mcpu = (s1["mcpu"] - s0["mcpu"]) if s0["mcpu"] is not None and s1["mcpu"] is not None else None
    other = max(0.0, mcpu - (scpu_sum or 0) - (rcpu or 0) - ccpu) if mcpu is not None else None
    lats = []
    sn, cn = b.send_ns, b.complete_ns
    for k in range(s0["sent"], s1["sent"]):
        if s0["ns"] <= sn[k] <= s1["ns"] and k < len(cn):
            lats.append((cn[k] - sn[k]) / 1e6)
    lats.sort()
    reads = sum(c.reads for c in b.subs if c.role == "sub")
    sub_frames = sum(c.frames for c in b.subs if c.role == "sub")
    want = b.sent * flen
    if drained:
        odd = sum(1 for c in b.subs if (c.got != want if c.role == "sub" else (c.frames != b.sent or c.acc)))
        if odd:
            b.error(f"{odd} subscribers did not receive exactly {b.sent} frames")
        if b.pub.got != want:
            b.error(f"publisher received {b.pub.got} bytes, want {want}")
    else:
        b.error(f"drain timeout: slowest subscriber at {b.minf} of {b.sent} after {a.drain_timeout}s")
    return {
        "subs": nsubs, "targets": targets, "proto": a.proto, "size": a.size, "window": a.window,
        "gate": a.gate, "max_lag": a.max_lag,
        "frame_len": flen, "connect_s": connect_s, "seconds": dt,
        "deliveries": deliv, "deliveries_per_s": deliv / dt, "publishes_per_s": pubs / dt,
        "lat_ms_p50": pct(lats, 0.5), "lat_ms_p99": pct(lats, 0.99), "lat_samples": len(lats),
        "server_cpu_s": scpu, "server_cpu_cores": (scpu_sum / dt) if scpu_sum is not None else None,
        "server_us_per_delivery": (scpu_sum / deliv * 1e6) if scpu_sum is not None and deliv else None,
        "redis_cpu_cores": (rcpu / dt) if rcpu is not None else None,
        "redis_us_per_delivery": (rcpu / deliv * 1e6) if rcpu is not None and deliv else None,
        "client_cpu_cores": ccpu / dt, "client_us_per_delivery": (ccpu / deliv * 1e6) if deliv else None,
        "other_cpu_cores": (other / dt) if other is not None else None,
        "frames_per_read": (sub_frames / reads) if reads else None, "lag_stalls": b.lag_stalls,
        "total_sent": b.sent, "total_deliveries": b.deliveries, "drained": drained, "drain_s": drain_s,
        "errors": b.errors + b.verify_errors, "error_samples": b.error_samples,
        "unexpected_bytes": b.unexpected_bytes,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pub", type=int, required=True, help="port of the publisher's server (the owner)")
    p.add_argument("--subs", required=True, help="PORT:N[,PORT:N...] subscribers per server")
    p.add_argument("--proto", choices=("fastws", "sio"), default="fastws")
    p.add_argument("--path", default="/bench")
    p.add_argument("--ready-url", default="", help="GET until {'sessions': subs + 1} (the Fan room)")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--window", type=int, default=10)
    p.add_argument("--gate", choices=("pub", "slowest"), default="pub")
    p.add_argument("--max-pubs", type=int, default=200_000)
    p.add_argument("--max-lag", type=int, default=0,
                   help="publishes the publisher may be ahead of the slowest subscriber (0 = max(100, 10*window))")
    p.add_argument("--poll-ms", type=float, default=0,
                   help="read the counting subscribers in passes every N ms (see poll_loop); 0 = per readiness")
    p.add_argument("--verify-subs", type=int, default=1, help="per server")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--settle", type=float, default=0.2)
    p.add_argument("--probe-timeout", type=float, default=15.0)
    p.add_argument("--drain-timeout", type=float, default=10.0)
    p.add_argument("--connect-concurrency", type=int, default=64)
    p.add_argument("--server-pids", default="", help="comma-separated")
    p.add_argument("--redis-pid", type=int, default=0)
    p.add_argument("--deadline", type=float, default=0)
    a = p.parse_args()
    if a.max_lag <= 0:
        a.max_lag = max(100, 10 * a.window)
    a.server_pids = [int(x) for x in a.server_pids.split(",") if x]
    if a.deadline <= 0:
        a.deadline = 40 + a.settle + a.warmup + a.duration + 2 * a.probe_timeout + a.drain_timeout
    t0 = time.time()
    try:
        res = uvloop.run(asyncio.wait_for(run(a), a.deadline))
        out = {"ok": True, "result": res}
    except BaseException as e:  # noqa: BLE001 - reported as JSON to the driver
        out = {"ok": False, "error": repr(e)[:800]}
    out["wall"] = time.time() - t0
    print(json.dumps(out), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
