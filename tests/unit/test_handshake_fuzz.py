"""Property tests of the server's handshake parser (sans-I/O): whatever bytes come, in whatever
pieces, it returns a Request or raises HandshakeError with a 4xx status and a one-line reason;
nothing else escapes, and a request it returns has a normalised path. Inputs found by the
coverage-guided fuzzer (``benchmarks/fuzz.py``) are replayed from ``tests/unit/fuzz_corpus``."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastws.exceptions import HandshakeError
from fastws.handshake import ServerHandshake, validate_upgrade

VALID = (b"GET /chat?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
         b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n")
POST = b"POST /h HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
STATUSES = {400, 405, 413, 414, 426, 431}
CORPUS = os.path.join(os.path.dirname(__file__), "fuzz_corpus", "handshake")


def run_handshake(data: bytes, cuts: list[int], max_header: int = 16384, max_body: int = 1 << 20) -> None:
    hs = ServerHandshake(max_header_size=max_header, max_body_size=max_body)
    bounds = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    try:
        for a, b in zip(bounds, bounds[1:]):
            req = hs.feed_data(data[a:b])
            if req is not None:
                assert req.path.startswith("/") and "//" not in req.path and "\x00" not in req.path
                if req.is_websocket:
                    try:
                        validate_upgrade(req)
                    except HandshakeError as exc:
                        check_error(exc)
                break
    except HandshakeError as exc:
        check_error(exc)


def check_error(exc: HandshakeError) -> None:
    assert exc.status in STATUSES, exc.status
    assert exc.reason and "\n" not in exc.reason and "\r" not in exc.reason


TOKENS = [b"\r\n", b"\r\n\r\n", b":", b" ", b"\t", b"\x00", b"\xff", b"%", b"%00", b"%2e", b"/..", b"//",
          b"Host: x\r\n", b"Content-Length: 5\r\n", b"Content-Length: -1\r\n", b"Transfer-Encoding: chunked\r\n",
          b"Upgrade: websocket\r\n", b"Sec-WebSocket-Key: x\r\n", b"Sec-WebSocket-Version: 13\r\n", b"0\r\n\r\n",
          b"GET ", b"POST ", b" HTTP/1.1", b" HTTP/1.0", b" HTTP/2.0", b"ffffffff\r\n", b"a" * 300]


@st.composite
def mutated(draw):
    base = bytearray(draw(st.sampled_from([VALID, POST, b""])))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["insert", "delete", "replace", "token"]))
        pos = draw(st.integers(0, len(base)))
        if op == "insert":
            base[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del base[pos:pos + draw(st.integers(1, 20))]
        elif op == "replace" and pos < len(base):
            base[pos] = draw(st.integers(0, 255))
        else:
            base[pos:pos] = draw(st.sampled_from(TOKENS))
    return bytes(base)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated(), cuts=st.lists(st.integers(0, 600), max_size=5),
       limits=st.sampled_from([(16384, 1 << 20), (64, 8), (300, 0)]))
def test_mutated_requests_get_a_request_or_a_4xx(data, cuts, limits):
    run_handshake(data, cuts, *limits)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=4))
def test_random_bytes_get_a_request_or_a_4xx(data, cuts):
    run_handshake(data, cuts)


def _corpus() -> list[str]:
    if not os.path.isdir(CORPUS):
        return []
    return sorted(os.listdir(CORPUS))


@pytest.mark.parametrize("name", _corpus() or ["(empty)"])
def test_fuzzer_corpus(name):
    if name == "(empty)":
        return
    with open(os.path.join(CORPUS, name), "rb") as f:
        data = f.read()
    for cuts in ([], [1], [len(data) // 2], list(range(0, len(data), 7))):
        run_handshake(data, cuts)


# ------------------------------------------------------------------ the frame engine's corpus

def _frames_corpus() -> list[tuple[str, str]]:
    base = os.path.dirname(CORPUS)
    out = []
    for target in ("frames", "deflate"):
        d = os.path.join(base, target)
        if os.path.isdir(d):
            out += [(target, n) for n in sorted(os.listdir(d))]
    return out


@pytest.mark.parametrize("target,name", _frames_corpus() or [("none", "(empty)")])
def test_frame_engine_corpus(target, name):
    """Inputs the coverage-guided fuzzer kept (first byte: where the input is cut in two): the
    engine gives events or ProtocolError with 1002, 1007 or 1009, in one piece or two."""
    if target == "none":
        return
    from fastws._frames import Deflate, FrameParser
    from fastws.exceptions import ProtocolError

    with open(os.path.join(os.path.dirname(CORPUS), target, name), "rb") as f:
        data = f.read()
    cut, body = (data[0], data[1:]) if data else (0, b"")
    outcomes = []
    for pieces in ([body], [body[:cut], body[cut:]]):
        parser = FrameParser(is_client=False, max_size=(64 << 10) if target == "deflate" else 4096,
                             deflate=Deflate(is_client=False) if target == "deflate" else None)
        events = []
        try:
            for p in pieces:
                events += parser.feed_data(p)
            outcomes.append(("ok", events))
        except ProtocolError as exc:
            assert exc.code in (1002, 1007, 1009)
            outcomes.append(("error", events + list(exc.events or []), exc.code))
    assert outcomes[0] == outcomes[1]   # where the bytes are cut changes nothing
