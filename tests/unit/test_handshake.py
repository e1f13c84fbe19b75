"""The sans-I/O opening handshake (RFC 6455 section 4, RFC 7692 section 7): no sockets."""

from __future__ import annotations

import base64

import pytest

from fastws import handshake as hs
from fastws._frames import Deflate, FrameParser, Opcode
from fastws.exceptions import HandshakeError, InvalidHandshake, ProtocolError
from fastws.handshake import (
    ClientHandshake,
    CompressionOptions,
    Headers,
    Request,
    Response,
    ServerHandshake,
    accept_key,
    negotiate_deflate_server,
    parse_extensions,
    select_subprotocol,
    validate_upgrade,
)
from tests.helpers import build_frame as raw_frame

RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

# RFC 6455 section 1.3, less Origin and Sec-WebSocket-Protocol
REQUEST = (
    b"GET /chat HTTP/1.1\r\n"
    b"Host: server.example.com\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"\r\n"
)
FRAMES = raw_frame(Opcode.TEXT, b"first", key=b"abcd") + raw_frame(Opcode.PING, b"", key=b"abcd")


def request(method: str = "GET", target: str = "/chat", version: str = "1.1", headers=None, drop=()) -> bytes:
    """An upgrade request; ``headers`` replace or add, ``drop`` removes (by lower-case name)."""
    base = {
        "Host": "server.example.com",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": RFC_KEY,
        "Sec-WebSocket-Version": "13",
    }
    lines = [f"{method} {target} HTTP/{version}"]
    extra = list((headers or {}).items())
    replaced = {k.lower() for k, _ in extra}
    for k, v in base.items():
        if k.lower() not in replaced and k.lower() not in drop:
            lines.append(f"{k}: {v}")
    lines += [f"{k}: {v}" for k, v in extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def parse_request(data: bytes) -> Request:
    parsed = ServerHandshake().feed_data(data)
    assert parsed is not None
    return parsed


def upgrade_error(data: bytes) -> HandshakeError:
    with pytest.raises(HandshakeError) as info:
        validate_upgrade(parse_request(data))
    return info.value


# ---------------------------------------------------------------- accept key


def test_accept_key_rfc_sample():
    assert accept_key(RFC_KEY) == RFC_ACCEPT
    assert accept_key(RFC_KEY.encode()) == RFC_ACCEPT


def test_accept_response_bytes():
    out = hs.accept_response(RFC_KEY, "chat", "permessage-deflate", [("X-Extra", "1")])
    assert out == (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Extensions: permessage-deflate\r\n"
        b"X-Extra: 1\r\n\r\n"
    )


def test_accept_response_rejects_header_injection():
    with pytest.raises(ValueError):
        hs.accept_response(RFC_KEY, extra_headers=[("X-Evil", "a\r\nSet-Cookie: x")])


# ---------------------------------------------------------------- ServerHandshake


def test_server_handshake_one_piece():
    shake = ServerHandshake()
    req = shake.feed_data(REQUEST)
    assert req is not None
    assert shake.request is req
    assert shake.offset == len(REQUEST)
    assert req.method == "GET"
    assert req.target == req.path == "/chat"
    assert req.http_version == "1.1"
    assert req.headers["host"] == "server.example.com"
    assert req.is_websocket
    assert validate_upgrade(req) == RFC_KEY


def test_server_handshake_offset_of_leftover_frames():
    shake = ServerHandshake()
    data = REQUEST + FRAMES
    assert shake.feed_data(data) is not None
    assert shake.offset == len(REQUEST)
    assert FrameParser().feed_data(data[shake.offset:]) == [(Opcode.TEXT, b"first"), (Opcode.PING, b"")]


@pytest.mark.parametrize("leftover", [b"", FRAMES], ids=["head_only", "with_frames"])
def test_server_handshake_split_at_every_offset(leftover):
    data = REQUEST + leftover
    for i in range(len(data) + 1):
        shake = ServerHandshake()
        chunks = [data[:i], data[i:]]
        consumed = 0
        req = None
        while req is None:
            chunk = chunks.pop(0)
            req = shake.feed_data(chunk)
            consumed += shake.offset if req is not None else len(chunk)
        assert consumed == len(REQUEST), i
        assert chunk[shake.offset:] + b"".join(chunks) == leftover, i
        assert req.headers["sec-websocket-key"] == RFC_KEY


def test_server_handshake_one_byte_at_a_time():
    shake = ServerHandshake()
    for i in range(len(REQUEST)):
        req = shake.feed_data(REQUEST[i:i + 1])
        if i < len(REQUEST) - 1:
            assert req is None, i
    assert req is not None
    assert shake.offset == 1
    assert validate_upgrade(req) == RFC_KEY


def test_server_handshake_garbage_is_400():
    with pytest.raises(HandshakeError) as info:
        ServerHandshake().feed_data(b"\x00\x01garbage\r\n\r\n")
    assert info.value.status == 400


@pytest.mark.parametrize("data", [b"GET / HTTP/9.9\r\n\r\n", b"GET /\x7f HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"])
def test_server_handshake_malformed_http_is_400(data):
    with pytest.raises(HandshakeError) as info:
        ServerHandshake().feed_data(data)
    assert info.value.status == 400


def test_server_handshake_head_over_max_header_size_is_431():
    data = request(headers={"X-Padding": "p" * 300})
    with pytest.raises(HandshakeError) as info:
        ServerHandshake(max_header_size=256).feed_data(data)
    assert info.value.status == 431


def test_server_handshake_incomplete_head_over_max_header_size_is_431():
    """A head that never ends is refused once it passes the limit, without waiting for its end."""
    shake = ServerHandshake(max_header_size=1024)
    assert shake.feed_data(b"GET / HTTP/1.1\r\nHost: x\r\n") is None
    with pytest.raises(HandshakeError) as info:
        for _ in range(100):
            shake.feed_data(b"X-Filler: " + b"f" * 50 + b"\r\n")
    assert info.value.status == 431


def test_server_handshake_default_limit_is_431():
    with pytest.raises(HandshakeError) as info:
        ServerHandshake().feed_data(request(headers={"X-Padding": "p" * 20000}))
    assert info.value.status == 431


def test_server_handshake_frames_after_head_do_not_count_against_limit():
    data = REQUEST + raw_frame(Opcode.BINARY, b"x" * 5000)
    shake = ServerHandshake(max_header_size=len(REQUEST))
    assert shake.feed_data(data) is not None
    assert shake.offset == len(REQUEST)


def test_server_handshake_too_many_headers_is_431():
    data = request(headers={f"X-H{i}": "v" for i in range(200)})
    assert len(data) < hs.MAX_HEADER_SIZE
    with pytest.raises(HandshakeError) as info:
        ServerHandshake().feed_data(data)
    assert info.value.status == 431


def test_server_handshake_parses_query_and_percent_path():
    req = parse_request(request(target="/rooms/a%20b?x=1&y=&x=2"))
    assert req.path == "/rooms/a b"
    assert req.target == "/rooms/a%20b?x=1&y=&x=2"
    assert req.query_string == "x=1&y=&x=2"
    assert req.query == {"x": ["1", "2"], "y": [""]}
    assert req.query_param("x") == "1"
    assert req.query_param("missing", "default") == "default"


# ---------------------------------------------------------------- validate_upgrade


def test_validate_upgrade_accepts_rfc_request():
    assert validate_upgrade(parse_request(REQUEST)) == RFC_KEY


@pytest.mark.parametrize("headers", [
    {"Connection": "keep-alive, Upgrade"},
    {"Upgrade": "WebSocket"},
    {"Connection": "upgrade"},
    {"Sec-WebSocket-Key": "  " + RFC_KEY + "  "},
])
def test_validate_upgrade_accepts_variants(headers):
    assert validate_upgrade(parse_request(request(headers=headers))) == RFC_KEY


def test_plain_get_without_upgrade_is_426_expected_websocket():
    exc = upgrade_error(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert exc.status == 426
    assert exc.reason == "Expected WebSocket"
    assert ("Upgrade", "websocket") in exc.headers
    response = hs.error_response(exc)
    assert response.startswith(b"HTTP/1.1 426 ")
    assert response.endswith(b"\r\n\r\nExpected WebSocket")
    assert b"\r\nUpgrade: websocket\r\n" in response


@pytest.mark.parametrize("method", ["POST", "PUT", "HEAD", "DELETE"])
def test_non_get_upgrade_is_405(method):
    exc = upgrade_error(request(method=method))
    assert exc.status == 405
    assert ("Allow", "GET") in exc.headers


def test_upgrade_to_other_protocol_is_400():
    assert upgrade_error(request(headers={"Upgrade": "h2c"})).status == 400


def test_http_1_0_is_400():
    assert upgrade_error(request(version="1.0")).status == 400


def test_missing_host_is_400():
    assert upgrade_error(request(drop=("host",))).status == 400


def test_duplicate_host_is_400():
    data = request().replace(b"Host: server.example.com\r\n", b"Host: a\r\nHost: b\r\n")
    assert upgrade_error(data).status == 400


def test_missing_connection_upgrade_is_400():
    assert upgrade_error(request(drop=("connection",))).status == 400
    assert upgrade_error(request(headers={"Connection": "keep-alive"})).status == 400


def test_missing_key_is_400():
    assert upgrade_error(request(drop=("sec-websocket-key",))).status == 400


@pytest.mark.parametrize("key", [
    "not base64!",
    base64.b64encode(b"x" * 15).decode(),
    base64.b64encode(b"x" * 17).decode(),
    "",
    "dGhlIHNhbXBsZSBub25jZQ",      # missing padding
    "é" * 24,
])
def test_bad_key_is_400(key):
    assert upgrade_error(request(headers={"Sec-WebSocket-Key": key})).status == 400


def test_duplicate_key_is_400():
    data = request().replace(b"Sec-WebSocket-Version", b"Sec-WebSocket-Key: " + RFC_KEY.encode()
                             + b"\r\nSec-WebSocket-Version")
    assert upgrade_error(data).status == 400


def test_missing_version_is_400():
    assert upgrade_error(request(drop=("sec-websocket-version",))).status == 400


@pytest.mark.parametrize("version", ["8", "12", "14", "13, 8"])
def test_unsupported_version_is_426_with_version_header(version):
    exc = upgrade_error(request(headers={"Sec-WebSocket-Version": version}))
    assert exc.status == 426
    assert ("Sec-WebSocket-Version", "13") in exc.headers
    assert b"\r\nSec-WebSocket-Version: 13\r\n" in hs.error_response(exc)


# ---------------------------------------------------------------- select_subprotocol


def test_select_subprotocol_server_preference_wins():
    req = parse_request(request(headers={"Sec-WebSocket-Protocol": "chat, superchat"}))
    assert select_subprotocol(req, ["superchat", "chat"]) == "superchat"
    assert select_subprotocol(req, ["chat"]) == "chat"


def test_select_subprotocol_over_several_headers():
    data = request().replace(b"\r\n\r\n", b"\r\nSec-WebSocket-Protocol: a\r\nSec-WebSocket-Protocol: b, c\r\n\r\n")
    assert select_subprotocol(parse_request(data), ["c"]) == "c"


def test_select_subprotocol_none():
    req = parse_request(request(headers={"Sec-WebSocket-Protocol": "chat"}))
    assert select_subprotocol(req, ["other"]) is None
    assert select_subprotocol(req, []) is None
    assert select_subprotocol(parse_request(REQUEST), ["chat"]) is None


def test_select_subprotocol_is_exact_match():
    req = parse_request(request(headers={"Sec-WebSocket-Protocol": "Chat"}))
    assert select_subprotocol(req, ["chat"]) is None


# ---------------------------------------------------------------- negotiate_deflate_server


def negotiate(offer: str, **options):
    return negotiate_deflate_server(parse_extensions([offer]), CompressionOptions(**options))


def test_deflate_plain_offer():
    header, deflate = negotiate("permessage-deflate")
    assert header == "permessage-deflate"
    assert isinstance(deflate, Deflate)
    assert not deflate.is_client
    assert (deflate.local_no_context_takeover, deflate.remote_no_context_takeover) == (False, False)
    assert (deflate.local_max_window_bits, deflate.remote_max_window_bits) == (15, 15)
    assert deflate.contexts_allocated == 0


def test_deflate_server_no_context_takeover():
    header, deflate = negotiate("permessage-deflate; server_no_context_takeover")
    assert header == "permessage-deflate; server_no_context_takeover"
    assert deflate.local_no_context_takeover
    assert not deflate.remote_no_context_takeover


def test_deflate_client_no_context_takeover():
    header, deflate = negotiate("permessage-deflate; client_no_context_takeover")
    assert header == "permessage-deflate; client_no_context_takeover"
    assert deflate.remote_no_context_takeover
    assert not deflate.local_no_context_takeover


@pytest.mark.parametrize("bits", range(8, 16))
def test_deflate_server_max_window_bits(bits):
    header, deflate = negotiate(f"permessage-deflate; server_max_window_bits={bits}")
    assert header == f"permessage-deflate; server_max_window_bits={bits}"
    assert deflate.local_max_window_bits == bits


def test_deflate_server_max_window_bits_quoted():
    header, deflate = negotiate('permessage-deflate; server_max_window_bits="10"')
    assert header == "permessage-deflate; server_max_window_bits=10"
    assert deflate.local_max_window_bits == 10


def test_deflate_server_window_is_the_smaller_of_offer_and_options():
    header, deflate = negotiate("permessage-deflate; server_max_window_bits=12", server_max_window_bits=10)
    assert header == "permessage-deflate; server_max_window_bits=10"
    assert deflate.local_max_window_bits == 10


def test_deflate_server_window_option_without_offer():
    header, deflate = negotiate("permessage-deflate", server_max_window_bits=11)
    assert header == "permessage-deflate; server_max_window_bits=11"
    assert deflate.local_max_window_bits == 11


def test_deflate_client_max_window_bits_without_value():
    header, deflate = negotiate("permessage-deflate; client_max_window_bits")
    assert header == "permessage-deflate"
    assert deflate.remote_max_window_bits == 15


def test_deflate_client_max_window_bits_without_value_and_smaller_option():
    header, deflate = negotiate("permessage-deflate; client_max_window_bits", client_max_window_bits=10)
    assert header == "permessage-deflate; client_max_window_bits=10"
    assert deflate.remote_max_window_bits == 10


@pytest.mark.parametrize("bits", [9, 12, 15])
def test_deflate_client_max_window_bits_with_value(bits):
    header, deflate = negotiate(f"permessage-deflate; client_max_window_bits={bits}")
    assert header == f"permessage-deflate; client_max_window_bits={bits}"
    assert deflate.remote_max_window_bits == bits


def test_deflate_client_window_not_limited_when_not_offered():
    """Without client_max_window_bits in the offer the server must not send it (RFC 7692 7.1.2.2)."""
    header, deflate = negotiate("permessage-deflate", client_max_window_bits=10)
    assert "client_max_window_bits" not in header
    assert deflate.remote_max_window_bits == 15


def test_deflate_all_parameters():
    header, deflate = negotiate("permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
                                "server_max_window_bits=10; client_max_window_bits=11")
    assert header == ("permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
                      "server_max_window_bits=10; client_max_window_bits=11")
    assert (deflate.local_no_context_takeover, deflate.remote_no_context_takeover) == (True, True)
    assert (deflate.local_max_window_bits, deflate.remote_max_window_bits) == (10, 11)


def test_deflate_options_force_no_context_takeover():
    header, deflate = negotiate("permessage-deflate", server_no_context_takeover=True)
    assert header == "permessage-deflate; server_no_context_takeover"
    assert deflate.local_no_context_takeover


@pytest.mark.parametrize("params", [
    "server_max_window_bits",
    "server_max_window_bits=7",
    "server_max_window_bits=16",
    "server_max_window_bits=abc",
    "server_max_window_bits=015",
    "client_max_window_bits=7",
    "client_max_window_bits=16",
    "server_no_context_takeover=1",
    "client_no_context_takeover=yes",
    "server_no_context_takeover; server_no_context_takeover",
    "client_max_window_bits; client_max_window_bits=10",
    "unknown_param",
    "x=1",
])
def test_deflate_invalid_offer_declined(params):
    assert negotiate(f"permessage-deflate; {params}") is None


@pytest.mark.parametrize("params", ["unknown_param", "server_max_window_bits=16",
                                    "server_no_context_takeover; server_no_context_takeover"])
def test_deflate_invalid_offer_declined_next_offer_tried(params):
    header, deflate = negotiate(f"permessage-deflate; {params}, permessage-deflate; client_max_window_bits=12")
    assert header == "permessage-deflate; client_max_window_bits=12"
    assert deflate.remote_max_window_bits == 12


def test_deflate_other_extensions_skipped():
    header, _ = negotiate("x-webkit-deflate-frame, permessage-deflate; server_no_context_takeover")
    assert header == "permessage-deflate; server_no_context_takeover"


def test_deflate_no_offer():
    assert negotiate_deflate_server([], CompressionOptions()) is None
    assert negotiate("x-webkit-deflate-frame") is None


def test_deflate_negotiated_on_both_sides_interoperates():
    """What the server negotiates and what the client accepts compress and inflate each other."""
    opts = CompressionOptions(client_max_window_bits=10, server_max_window_bits=11, server_no_context_takeover=True)
    client = ClientHandshake("example.com", compression=opts)
    offer = Headers([("Sec-WebSocket-Extensions", hs.deflate_offer(opts))])
    header, server_deflate = negotiate_deflate_server(parse_extensions(offer.get_all("sec-websocket-extensions")),
                                                      CompressionOptions())
    assert client.feed_data(hs.accept_response(client.key, extensions=header))
    client_deflate = client.deflate
    assert (server_deflate.local_max_window_bits, client_deflate.remote_max_window_bits) == (11, 11)
    assert (client_deflate.local_max_window_bits, server_deflate.remote_max_window_bits) == (10, 10)
    assert server_deflate.local_no_context_takeover and client_deflate.remote_no_context_takeover
    for message in (b"hello " * 50, b"hello " * 50, b"world"):
        to_client = server_deflate.compress(message)
        assert client_deflate.decompress_message(to_client) == message
        to_server = client_deflate.compress(message)
        assert server_deflate.decompress_message(to_server) == message


@pytest.mark.parametrize("value", ["permessage-deflate; ;", "permessage deflate", ";x"])
def test_parse_extensions_malformed(value):
    with pytest.raises(ValueError):
        parse_extensions([value])


def test_parse_extensions():
    assert parse_extensions(["permessage-deflate; client_max_window_bits, x-foo; a=1; b=\"2\"", "y"]) == [
        ("permessage-deflate", [("client_max_window_bits", None)]),
        ("x-foo", [("a", "1"), ("b", "2")]),
        ("y", []),
    ]


def test_compression_options_validate_window_bits():
    for bits in (8, 16):
        with pytest.raises(ValueError):
            CompressionOptions(server_max_window_bits=bits)
        with pytest.raises(ValueError):
            CompressionOptions(client_max_window_bits=bits)


# ---------------------------------------------------------------- ClientHandshake


def client_response(client: ClientHandshake, **kwargs) -> bytes:
    return hs.accept_response(client.key, **kwargs)


def test_client_request_bytes():
    client = ClientHandshake("example.com:8080", "/chat?room=1", subprotocols=["chat", "superchat"],
                             extra_headers=[("Origin", "http://example.com")])
    data = client.request_bytes()
    assert data.startswith(b"GET /chat?room=1 HTTP/1.1\r\n")
    assert data.endswith(b"\r\n\r\n")
    req = parse_request(data)
    assert req.headers["host"] == "example.com:8080"
    assert req.headers["origin"] == "http://example.com"
    assert req.headers["sec-websocket-protocol"] == "chat, superchat"
    assert req.headers["user-agent"] == "fastws"
    assert "sec-websocket-extensions" not in req.headers
    assert validate_upgrade(req) == client.key
    assert len(base64.b64decode(client.key)) == 16


def test_client_request_offers_compression():
    client = ClientHandshake("h", compression=CompressionOptions(client_max_window_bits=12,
                                                                 server_no_context_takeover=True))
    req = parse_request(client.request_bytes())
    assert req.headers["sec-websocket-extensions"] == (
        "permessage-deflate; server_no_context_takeover; client_max_window_bits=12")


def test_client_request_default_offer_advertises_client_max_window_bits():
    req = parse_request(ClientHandshake("h", compression=CompressionOptions()).request_bytes())
    assert req.headers["sec-websocket-extensions"] == "permessage-deflate; client_max_window_bits"


def test_client_keys_are_random():
    assert len({ClientHandshake("h").key for _ in range(50)}) == 50


def test_client_request_rejects_header_injection():
    with pytest.raises(ValueError):
        ClientHandshake("h", extra_headers=[("X", "a\r\nB: c")]).request_bytes()


def test_client_request_user_agent_can_be_replaced_or_dropped():
    req = parse_request(ClientHandshake("h", extra_headers=[("User-Agent", "mine")]).request_bytes())
    assert req.headers.get_all("user-agent") == ["mine"]
    req = parse_request(ClientHandshake("h", user_agent=None).request_bytes())
    assert "user-agent" not in req.headers


def test_client_accepts_101_and_reports_offset():
    client = ClientHandshake("h")
    response = client_response(client)
    leftover = raw_frame(Opcode.TEXT, b"hello", mask=False)
    assert client.feed_data(response + leftover) is True
    assert client.offset == len(response)
    assert client.subprotocol is None
    assert client.deflate is None
    assert FrameParser(is_client=True).feed_data((response + leftover)[client.offset:]) == [(Opcode.TEXT, b"hello")]


def test_client_response_split_at_every_offset():
    client_key = ClientHandshake("h").key
    response = hs.accept_response(client_key, "chat")
    for i in range(len(response) + 1):
        client = ClientHandshake("h", subprotocols=["chat"])
        client.key = client_key
        done = client.feed_data(response[:i])
        if not done:
            done = client.feed_data(response[i:])
            assert client.offset == len(response) - i, i
        assert done, i
        assert client.subprotocol == "chat"


def test_client_wrong_accept_is_invalid_handshake():
    client = ClientHandshake("h")
    response = hs.accept_response(base64.b64encode(b"k" * 16).decode())
    with pytest.raises(InvalidHandshake) as info:
        client.feed_data(response)
    assert info.value.status == 101


def test_client_missing_accept_is_invalid_handshake():
    client = ClientHandshake("h")
    with pytest.raises(InvalidHandshake):
        client.feed_data(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")


@pytest.mark.parametrize("drop", [b"Upgrade: websocket\r\n", b"Connection: Upgrade\r\n"])
def test_client_101_without_upgrade_headers_is_invalid(drop):
    client = ClientHandshake("h")
    with pytest.raises(InvalidHandshake):
        client.feed_data(client_response(client).replace(drop, b""))


def test_client_non_101_carries_status_and_body():
    client = ClientHandshake("h")
    response = b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\nforbidden"
    with pytest.raises(InvalidHandshake) as info:
        client.feed_data(response)
    assert info.value.status == 403
    assert info.value.body == b"forbidden"
    assert info.value.headers["content-type"] == "text/plain"


def test_client_non_101_waits_for_body():
    client = ClientHandshake("h")
    assert client.feed_data(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 18\r\n\r\nExpected") is False
    with pytest.raises(InvalidHandshake) as info:
        client.feed_data(b" WebSocket")
    assert info.value.status == 426
    assert info.value.body == b"Expected WebSocket"


def test_client_200_is_invalid_handshake():
    client = ClientHandshake("h")
    with pytest.raises(InvalidHandshake) as info:
        client.feed_data(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    assert info.value.status == 200


def test_client_garbage_response_is_invalid_handshake():
    with pytest.raises(InvalidHandshake) as info:
        ClientHandshake("h").feed_data(b"\x00\x01garbage\r\n\r\n")
    assert info.value.status == 0


def test_client_oversized_response_head_is_invalid_handshake():
    client = ClientHandshake("h", max_header_size=256)
    with pytest.raises(InvalidHandshake):
        client.feed_data(b"HTTP/1.1 101 Switching Protocols\r\nX-Padding: " + b"p" * 500)


def test_client_subprotocol_chosen():
    client = ClientHandshake("h", subprotocols=["a", "b"])
    assert client.feed_data(client_response(client, subprotocol="b"))
    assert client.subprotocol == "b"


def test_client_subprotocol_not_offered_is_invalid():
    client = ClientHandshake("h", subprotocols=["a"])
    with pytest.raises(InvalidHandshake):
        client.feed_data(client_response(client, subprotocol="b"))


def test_client_subprotocol_when_none_offered_is_invalid():
    client = ClientHandshake("h")
    with pytest.raises(InvalidHandshake):
        client.feed_data(client_response(client, subprotocol="chat"))


def test_client_two_subprotocols_is_invalid():
    client = ClientHandshake("h", subprotocols=["a", "b"])
    response = client_response(client, subprotocol="a").replace(b"\r\n\r\n", b"\r\nSec-WebSocket-Protocol: b\r\n\r\n")
    with pytest.raises(InvalidHandshake):
        client.feed_data(response)


# ---------------------------------------------------------------- client extension checks


def client_extension_result(response_ext: str, opts: CompressionOptions | None = None):
    client = ClientHandshake("h", compression=opts if opts is not None else CompressionOptions())
    assert client.feed_data(client_response(client, extensions=response_ext))
    return client.deflate


def client_extension_error(response_ext: str, opts: CompressionOptions | None = None) -> InvalidHandshake:
    client = ClientHandshake("h", compression=opts if opts is not None else CompressionOptions())
    with pytest.raises(InvalidHandshake) as info:
        client.feed_data(client_response(client, extensions=response_ext))
    return info.value


def test_client_extension_accepted():
    deflate = client_extension_result("permessage-deflate")
    assert deflate.is_client
    assert (deflate.local_max_window_bits, deflate.remote_max_window_bits) == (15, 15)
    assert (deflate.local_no_context_takeover, deflate.remote_no_context_takeover) == (False, False)
    assert deflate.contexts_allocated == 0


def test_client_extension_declined_by_server():
    client = ClientHandshake("h", compression=CompressionOptions())
    assert client.feed_data(client_response(client))
    assert client.deflate is None


def test_client_extension_parameters_applied():
    deflate = client_extension_result("permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
                                      "server_max_window_bits=10; client_max_window_bits=9")
    assert (deflate.local_no_context_takeover, deflate.remote_no_context_takeover) == (True, True)
    assert (deflate.local_max_window_bits, deflate.remote_max_window_bits) == (9, 10)


def test_client_extension_not_offered_is_invalid():
    client = ClientHandshake("h", compression=None)
    with pytest.raises(InvalidHandshake):
        client.feed_data(client_response(client, extensions="permessage-deflate"))


@pytest.mark.parametrize("ext", [
    "x-webkit-deflate-frame",
    "permessage-deflate, permessage-deflate",
    "permessage-deflate; unknown",
    "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
    "permessage-deflate; server_max_window_bits",
    "permessage-deflate; server_max_window_bits=16",
    "permessage-deflate; client_max_window_bits=7",
    "permessage-deflate; client_max_window_bits",
    "permessage-deflate; server_no_context_takeover=1",
    "permessage-deflate; ;",
])
def test_client_extension_response_invalid(ext):
    client_extension_error(ext)


def test_client_extension_window_above_offer_is_invalid():
    client_extension_error("permessage-deflate; client_max_window_bits=12", CompressionOptions(client_max_window_bits=10))
    client_extension_error("permessage-deflate; server_max_window_bits=12", CompressionOptions(server_max_window_bits=10))


def test_client_extension_window_at_or_below_offer_accepted():
    opts = CompressionOptions(client_max_window_bits=10, server_max_window_bits=12)
    deflate = client_extension_result("permessage-deflate; client_max_window_bits=10; server_max_window_bits=9", opts)
    assert (deflate.local_max_window_bits, deflate.remote_max_window_bits) == (10, 9)


def test_client_does_not_assume_unconfirmed_server_no_context_takeover():
    opts = CompressionOptions(server_no_context_takeover=True)
    client = ClientHandshake("h", compression=opts)
    try:
        client.feed_data(client_response(client, extensions="permessage-deflate"))
    except InvalidHandshake:
        return                                   # refusing the response is fine
    # accepted: the server keeps its context, so the client must too
    server = Deflate(is_client=False)
    parser = FrameParser(is_client=True, deflate=client.deflate)
    message = b"the same words twice " * 10
    wire = b"".join(raw_frame(Opcode.BINARY, server.compress(message), mask=False, rsv=4) for _ in range(2))
    try:
        events = parser.feed_data(wire)
    except ProtocolError as exc:
        pytest.fail(f"second message failed with {exc.code}")
    assert events == [(Opcode.BINARY, message)] * 2


# ---------------------------------------------------------------- small pieces


def test_headers_case_insensitive_and_multi_valued():
    headers = Headers([("Host", "a"), ("X-Multi", "1"), ("x-multi", "2")])
    assert headers["HOST"] == "a"
    assert headers.get("x-MULTI") == "1"
    assert headers.get_all("X-MULTI") == ["1", "2"]
    assert "host" in headers
    assert "missing" not in headers
    assert headers.get("missing") is None
    with pytest.raises(KeyError):
        headers["missing"]
    headers.add("New", "v")
    assert len(headers) == 4
    assert list(headers)[-1] == ("New", "v")


def test_request_is_websocket():
    assert Request("GET", "/", Headers([("Upgrade", "Foo, WebSocket")])).is_websocket
    assert not Request("GET", "/", Headers()).is_websocket


def test_response_to_bytes():
    out = Response(404, "not here").to_bytes()
    assert out == (b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 8\r\n"
                   b"Connection: close\r\n\r\nnot here")
    assert b"Connection: keep-alive" in Response(200, b"").to_bytes(keep_alive=True)
    assert Response(599).to_bytes().startswith(b"HTTP/1.1 599 Unknown\r\n")
    with pytest.raises(ValueError):
        Response(200, headers=[("X", "a\nb")]).to_bytes()


def test_error_response_for_every_refusal_is_parseable():
    import httptools

    class Collect:
        def __init__(self):
            self.body = b""

        def on_body(self, body):
            self.body += body

    for status in (400, 405, 426, 431):
        exc = HandshakeError(status, "reason text", [("X-Why", "test")])
        collect = Collect()
        parser = httptools.HttpResponseParser(collect)
        parser.feed_data(hs.error_response(exc))
        assert parser.get_status_code() == status
        assert collect.body == b"reason text"


# ---------------------------------------------------------------- plain HTTP request bodies

def _feed_split(raw: bytes, at: int, **kw):
    from fastws.handshake import ServerHandshake

    hs = ServerHandshake(**kw)
    first = hs.feed_data(raw[:at])
    if first is not None:
        return first
    return hs.feed_data(raw[at:])


@pytest.mark.parametrize("kind", ["length", "chunked"])
def test_request_body_is_collected_at_every_split(kind):
    if kind == "length":
        raw = b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world"
    else:
        raw = (b"POST /p HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    for at in range(1, len(raw)):
        request = _feed_split(raw, at)
        assert request is not None and request.body == b"hello world", at
        assert request.method == "POST"


def test_request_without_body_is_returned_at_the_end_of_its_head():
    from fastws.handshake import ServerHandshake

    request = ServerHandshake().feed_data(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    assert request is not None and request.body == b""


def test_request_body_over_the_limit_is_413():
    from fastws.exceptions import HandshakeError
    from fastws.handshake import ServerHandshake

    hs = ServerHandshake(max_body_size=10)
    assert hs.feed_data(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello") is None
    with pytest.raises(HandshakeError) as info:
        hs.feed_data(b" world")
    assert info.value.status == 413


def test_body_bytes_do_not_count_against_the_header_limit():
    from fastws.handshake import ServerHandshake

    body = b"z" * 5000
    raw = b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + body
    request = ServerHandshake(max_header_size=1024).feed_data(raw)
    assert request is not None and request.body == body
