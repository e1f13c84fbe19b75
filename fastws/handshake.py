"""Sans-I/O HTTP/1.1 opening handshake (RFC 6455 section 4, RFC 7692 negotiation).

HTTP parsing is httptools' (llhttp): this module never splits HTTP by hand. It
validates what httptools parsed, computes ``Sec-WebSocket-Accept``, negotiates
the subprotocol and permessage-deflate, and builds the bytes of the response.

Like httptools' ``HttpParserUpgrade(offset)``, the parsers report how many bytes
of the last chunk belonged to the handshake, so the rest goes straight to the
frame parser.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qs, unquote

import httptools

from fastws._frames import Deflate
from fastws.exceptions import HandshakeError, InvalidHandshake

__all__ = [
    "GUID",
    "Headers",
    "Request",
    "Response",
    "CompressionOptions",
    "ServerHandshake",
    "ClientHandshake",
    "accept_key",
    "normalize_path",
    "error_response",
]

#: The GUID RFC 6455 appends to Sec-WebSocket-Key to compute Sec-WebSocket-Accept.
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEADER_SIZE = 16 * 1024
MAX_HEADERS = 128
MAX_BODY_SIZE = 1 << 20


def accept_key(key: str | bytes) -> str:
    """The ``Sec-WebSocket-Accept`` value for a ``Sec-WebSocket-Key``."""
    if isinstance(key, str):
        key = key.encode("ascii")
    return base64.b64encode(hashlib.sha1(key + GUID).digest()).decode("ascii")


class Headers:
    """Case-insensitive, multi-valued HTTP headers, in the order received.

    ``headers["name"]`` gives the first value (KeyError when absent);
    ``get_all(name)`` every value; iteration yields ``(name, value)`` pairs.
    """

    __slots__ = ("_items", "_index")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = list(items)
        self._index: dict[str, list[str]] | None = None

    def _lookup(self) -> dict[str, list[str]]:
        index = self._index
        if index is None:
            index = {}
            for k, v in self._items:
                key = k.lower()
                if key in index:
                    index[key].append(v)
                else:
                    index[key] = [v]
            self._index = index
        return index

    def index(self) -> dict[str, list[str]]:
        """Lower-case name -> values, built once per request (shared: do not modify)."""
        return self._lookup()

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self._lookup().get(name.lower())
        return values[0] if values else default

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._lookup()

    def get_all(self, name: str) -> list[str]:
        return list(self._lookup().get(name.lower(), ()))

    def add(self, name: str, value: str) -> None:
        self._items.append((name, value))
        self._index = None

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


def _tokens(values: Iterable[str]) -> list[str]:
    """Comma-separated header tokens, lower-cased."""
    out = []
    for value in values:
        for part in value.split(","):
            part = part.strip().lower()
            if part:
                out.append(part)
    return out


_CONTROL = frozenset(chr(c) for c in (*range(0x20), 0x7F))


def normalize_path(raw: str) -> str:
    """The one path every part of fastws sees (routing, the firewall, room names, metrics).

    ``raw`` is the path of the request target as sent. Percent-escapes are decoded once (as
    UTF-8), then the path is split on ``/``: empty segments (``//``) and ``.`` are dropped,
    ``..`` removes the segment before it (never above the root), and a trailing ``/`` goes.
    So ``//admin``, ``/%61dmin``, ``/admin/``, ``/./admin`` and ``/x/../admin`` are all
    ``/admin``. An absolute-form target (``http://host/path``) gives its path.

    Raises:
        HandshakeError: 400 for a path that is not UTF-8 once decoded, holds a control
            character (NUL included, encoded or not), or does not start with ``/``.
    """
    if not raw.startswith("/"):
        scheme, sep, rest = raw.partition("://")
        if sep and scheme.lower() in ("http", "https", "ws", "wss"):
            raw = "/" + rest.partition("/")[2]
        else:
            raise HandshakeError(400, "Malformed request target: the path must start with '/'")
    if "%" in raw:
        try:
            path = unquote(raw, errors="strict")
        except UnicodeDecodeError:
            raise HandshakeError(400, "Malformed request target: the path is not UTF-8") from None
    else:
        path = raw
    if not _CONTROL.isdisjoint(path):
        raise HandshakeError(400, "Malformed request target: control character in the path")
    if "//" not in path and "/." not in path and (len(path) == 1 or path[-1] != "/"):
        return path  # already normal (the common case)
    out: list[str] = []
    for seg in path.split("/"):
        if seg == "" or seg == ".":
            continue
        if seg == "..":
            if out:
                out.pop()
            continue
        out.append(seg)
    return "/" + "/".join(out)


class Request:
    """The HTTP request that opened a connection.

    Attributes:
        method: ``"GET"`` for an upgrade.
        target: the request target as sent (path and query).
        path: the decoded, normalised path, e.g. ``"/rooms/lobby"`` (see :func:`fastws.handshake.normalize_path`:
            the firewall, the routes and room names all see this one).
        query_string: the raw query (without ``?``).
        headers: :class:`Headers`.
        http_version: e.g. ``"1.1"``.
        remote_address: ``(host, port)`` of the peer, once known.
        body: the body of a plain HTTP request (``b""`` for upgrades and bodiless requests).
    """

    __slots__ = ("method", "target", "path", "query_string", "headers", "http_version", "remote_address",
                 "_query", "scope", "body")

    def __init__(self, method: str, target: str, headers: Headers, http_version: str = "1.1",
                 remote_address: tuple[str, int] | None = None) -> None:
        self.method = method
        self.target = target
        path, _, query = target.partition("?")
        self.path = normalize_path(path)
        self.query_string = query
        self.headers = headers
        self.http_version = http_version
        self.remote_address = remote_address
        self._query: dict[str, list[str]] | None = None
        self.scope: dict[str, object] = {}
        self.body = b""  # a plain HTTP request's body (Content-Length or chunked), read whole

    @property
    def query(self) -> dict[str, list[str]]:
        """The query string parsed into ``{name: [values]}``."""
        if self._query is None:
            self._query = parse_qs(self.query_string, keep_blank_values=True)
        return self._query

    def query_param(self, name: str, default: str | None = None) -> str | None:
        """First value of a query parameter."""
        values = self.query.get(name)
        return values[0] if values else default

    @property
    def is_websocket(self) -> bool:
        """True when the request asks for a WebSocket upgrade."""
        return "websocket" in _tokens(self.headers.get_all("upgrade"))

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target}>"


@dataclass
class Response:
    """A plain HTTP response (used to refuse a handshake or answer plain HTTP)."""

    status: int = 200
    body: bytes | str = b""
    headers: Sequence[tuple[str, str]] = ()
    content_type: str = "text/plain; charset=utf-8"

    def to_bytes(self, keep_alive: bool = False) -> bytes:
        body = self.body.encode("utf-8") if isinstance(self.body, str) else bytes(self.body)
        try:
            phrase = HTTPStatus(self.status).phrase
        except ValueError:
            phrase = "Unknown"
        lines = [f"HTTP/1.1 {self.status} {phrase}"]
        names = {k.lower() for k, _ in self.headers}
        if "content-type" not in names and (body or self.status >= 400):
            lines.append(f"Content-Type: {self.content_type}")
        lines.append(f"Content-Length: {len(body)}")
        if "connection" not in names:
            lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
        for k, v in self.headers:
            _check_header(k, v)
            lines.append(f"{k}: {v}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _HeadResponse(Response):
    """The GET response's head (its Content-Length included) without the body, for HEAD."""

    def to_bytes(self, keep_alive: bool = False) -> bytes:
        head, _, _ = Response.to_bytes(self, keep_alive).partition(b"\r\n\r\n")
        return head + b"\r\n\r\n"


def _check_header(name: str, value: str) -> None:
    if any(c in name for c in "\r\n:") or "\r" in value or "\n" in value:
        raise ValueError(f"invalid header {name!r}")


def error_response(exc: HandshakeError) -> bytes:
    """The response bytes for a refused handshake: status and a one-line body."""
    return Response(exc.status, exc.reason, exc.headers).to_bytes()


# ---------------------------------------------------------------- compression


@dataclass
class CompressionOptions:
    """permessage-deflate settings; ``None`` or ``False`` in place of these turns it off.

    Attributes:
        server_no_context_takeover: the server resets its compressor per message
            (less memory per connection, worse ratio).
        client_no_context_takeover: ask the client to reset per message.
        server_max_window_bits: the server's LZ77 window (9..15).
        client_max_window_bits: the window asked of the client (9..15).
        level: zlib compression level. The default, 1, costs about a third of the CPU of
            zlib's usual 6 for a ratio a few percent worse on typical JSON/text messages.
        min_size: messages shorter than this are sent uncompressed.
    """

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int = 15
    client_max_window_bits: int = 15
    level: int = 1
    min_size: int = 0

    def __post_init__(self) -> None:
        for bits in (self.server_max_window_bits, self.client_max_window_bits):
            if not 9 <= bits <= 15:
                raise ValueError("max_window_bits must be in 9..15")


def parse_extensions(values: Iterable[str]) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """Parse ``Sec-WebSocket-Extensions`` values into ``[(name, [(param, value)])]``.

    Raises:
        ValueError: on a malformed value.
    """
    out: list[tuple[str, list[tuple[str, str | None]]]] = []
    for value in values:
        for ext in value.split(","):
            ext = ext.strip()
            if not ext:
                continue
            parts = [p.strip() for p in ext.split(";")]
            name = parts[0].lower()
            if not name or any(c in name for c in ' ="'):
                raise ValueError(f"bad extension {ext!r}")
            params: list[tuple[str, str | None]] = []
            for p in parts[1:]:
                if not p:
                    raise ValueError(f"bad extension parameter in {ext!r}")
                k, eq, v = p.partition("=")
                k = k.strip().lower()
                if eq:
                    v = v.strip()
                    if len(v) >= 2 and v[0] == v[-1] == '"':
                        v = v[1:-1]
                    params.append((k, v))
                else:
                    params.append((k, None))
            out.append((name, params))
    return out


def _window_bits(value: str | None) -> int:
    if value is None or not value.isdigit() or len(value) > 2:
        raise ValueError("bad window bits")
    bits = int(value)
    if not 8 <= bits <= 15:
        raise ValueError("window bits out of range")
    return bits


def negotiate_deflate_server(offers: list[tuple[str, list[tuple[str, str | None]]]],
                             opts: CompressionOptions) -> tuple[str, Deflate] | None:
    """Accept the first acceptable permessage-deflate offer (RFC 7692 section 7.1).

    Returns the response header value and the connection's :class:`Deflate`, or
    None when no offer can be accepted (the connection then runs uncompressed).
    """
    for name, params in offers:
        if name != "permessage-deflate":
            continue
        seen: set[str] = set()
        server_nct = opts.server_no_context_takeover
        client_nct = opts.client_no_context_takeover
        server_bits = opts.server_max_window_bits
        client_bits = 15
        send_client_bits = False
        ok = True
        for k, v in params:
            if k in seen:
                ok = False
                break
            seen.add(k)
            try:
                if k == "server_no_context_takeover":
                    if v is not None:
                        raise ValueError
                    server_nct = True
                elif k == "client_no_context_takeover":
                    if v is not None:
                        raise ValueError
                    client_nct = True
                elif k == "server_max_window_bits":
                    server_bits = min(server_bits, _window_bits(v))
                elif k == "client_max_window_bits":
                    offered = 15 if v is None else _window_bits(v)
                    client_bits = min(offered, opts.client_max_window_bits)
                    send_client_bits = v is not None or client_bits < 15
                else:
                    raise ValueError
            except ValueError:
                ok = False
                break
        if not ok:
            continue
        parts = ["permessage-deflate"]
        if server_nct:
            parts.append("server_no_context_takeover")
        if client_nct:
            parts.append("client_no_context_takeover")
        if server_bits < 15 or "server_max_window_bits" in seen:
            parts.append(f"server_max_window_bits={server_bits}")
        if send_client_bits:
            parts.append(f"client_max_window_bits={client_bits}")
        deflate = Deflate(
            is_client=False,
            local_no_context_takeover=server_nct,
            remote_no_context_takeover=client_nct,
            local_max_window_bits=server_bits,
            remote_max_window_bits=client_bits,
            compress_level=opts.level,
            compress_min_size=opts.min_size,
        )
        return "; ".join(parts), deflate
    return None


def deflate_offer(opts: CompressionOptions) -> str:
    """The client's ``Sec-WebSocket-Extensions`` offer."""
    parts = ["permessage-deflate"]
    if opts.server_no_context_takeover:
        parts.append("server_no_context_takeover")
    if opts.client_no_context_takeover:
        parts.append("client_no_context_takeover")
    if opts.server_max_window_bits < 15:
        parts.append(f"server_max_window_bits={opts.server_max_window_bits}")
    if opts.client_max_window_bits < 15:
        parts.append(f"client_max_window_bits={opts.client_max_window_bits}")
    else:
        parts.append("client_max_window_bits")
    return "; ".join(parts)


def negotiate_deflate_client(value: list[str], opts: CompressionOptions | None) -> Deflate | None:
    """Check the server's extension response against our offer (RFC 7692 7.1.2)."""
    try:
        exts = parse_extensions(value)
    except ValueError as exc:
        raise InvalidHandshake(f"malformed Sec-WebSocket-Extensions: {exc}") from None
    if not exts:
        return None
    if opts is None or len(exts) != 1 or exts[0][0] != "permessage-deflate":
        raise InvalidHandshake(f"server accepted an extension we did not offer: {', '.join(value)}")
    server_nct = False  # only what the server confirms
    client_nct = opts.client_no_context_takeover  # resetting our own compressor is always safe
    server_bits = 15
    client_bits = opts.client_max_window_bits
    seen: set[str] = set()
    try:
        for k, v in exts[0][1]:
            if k in seen:
                raise ValueError(f"duplicate {k}")
            seen.add(k)
            if k == "server_no_context_takeover" and v is None:
                server_nct = True
            elif k == "client_no_context_takeover" and v is None:
                client_nct = True
            elif k == "server_max_window_bits":
                server_bits = _window_bits(v)
                if server_bits > opts.server_max_window_bits:
                    raise ValueError("server_max_window_bits above our offer")
            elif k == "client_max_window_bits":
                client_bits = _window_bits(v)
                if client_bits > opts.client_max_window_bits:
                    raise ValueError("client_max_window_bits above our offer")
            else:
                raise ValueError(f"unknown parameter {k}")
    except ValueError as exc:
        raise InvalidHandshake(f"bad permessage-deflate response: {exc}") from None
    return Deflate(
        is_client=True,
        local_no_context_takeover=client_nct,
        remote_no_context_takeover=server_nct,
        local_max_window_bits=client_bits,
        remote_max_window_bits=server_bits,
        compress_level=opts.level,
        compress_min_size=opts.min_size,
    )


# ---------------------------------------------------------------- server side


class _RequestCallbacks:
    __slots__ = ("url", "headers", "complete", "count", "error", "body", "done", "max_body", "parser", "method",
                 "version")

    def __init__(self, max_body: int) -> None:
        self.parser: httptools.HttpRequestParser | None = None
        self.method = b""   # of the first request (the parser's own moves on to a pipelined one)
        self.version = "1.1"
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.count = 0
        self.complete = False
        self.done = False
        self.body: bytearray | None = None
        self.max_body = max_body
        self.error: HandshakeError | None = None  # raised in a callback; httptools wraps it

    # A connection carries one plain HTTP request (its answer closes it) or one upgrade: the
    # callbacks ignore what a pipelined second request would add once the first is whole.

    def on_url(self, url: bytes) -> None:
        if not self.complete:
            self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.complete:
            return
        self.count += 1
        if self.count > MAX_HEADERS:
            self.error = HandshakeError(431, "Too many headers")
            raise self.error
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        if not self.complete and self.parser is not None:
            self.method = self.parser.get_method()
            self.version = self.parser.get_http_version()
            self.parser = None  # no cycle parser <-> callbacks to leave to the GC
        self.complete = True

    def on_body(self, body: bytes) -> None:
        if self.done:
            return
        if self.body is None:
            self.body = bytearray()
        if len(self.body) + len(body) > self.max_body:
            self.error = HandshakeError(413, "Request body too large")
            raise self.error
        self.body += body

    def on_message_complete(self) -> None:
        self.done = True


class ServerHandshake:
    """Server side of the opening handshake.

    Feed it what the socket gives; it returns the :class:`Request` once the
    header block is complete, and tells how many bytes of the last chunk were
    part of it (the rest are already WebSocket frames).

    A plain HTTP request with a body (Content-Length or chunked) is returned
    once its body has arrived too (``request.body``), up to ``max_body_size``
    (413 beyond); an upgrade request is returned at the end of its head.

    Args:
        max_header_size: largest request head accepted (431 beyond).
        max_body_size: largest plain HTTP request body accepted (413 beyond).
    """

    __slots__ = ("_parser", "_cb", "_size", "max_header_size", "request", "offset", "upgrade", "_head_size")

    def __init__(self, max_header_size: int = MAX_HEADER_SIZE, max_body_size: int = MAX_BODY_SIZE) -> None:
        self._cb = _RequestCallbacks(max_body_size)
        self._head_size = 0
        self._parser = httptools.HttpRequestParser(self._cb)
        self._cb.parser = self._parser
        self._size = 0
        self.max_header_size = max_header_size
        self.request: Request | None = None
        self.offset = 0
        self.upgrade = False

    def feed_data(self, data: bytes) -> Request | None:
        """Feed bytes; return the Request once complete, else None.

        After completion ``offset`` is the number of bytes of ``data`` that
        belonged to the request head.

        Raises:
            HandshakeError: malformed HTTP (400), a head over the size limit (431) or a
                body over ``max_body_size`` (413).
        """
        if self.request is not None:
            return self._body_data(data)
        self._size += len(data)
        try:
            self._parser.feed_data(data)
            self.offset = len(data)
        except httptools.HttpParserUpgrade as exc:
            self.offset = int(exc.args[0]) if exc.args else len(data)
            self.upgrade = True
        except httptools.HttpParserError as exc:
            if self._cb.error is not None:
                raise self._cb.error from None
            if not self._cb.complete:
                if self._size > self.max_header_size:
                    raise HandshakeError(431, "Request Header Fields Too Large") from None
                reason = str(exc).split(":")[-1].strip() or "malformed request"
                raise HandshakeError(400, f"Malformed HTTP request: {reason}") from None
            if not self._cb.done:  # the head parsed, its body (in the same chunk) did not
                reason = str(exc).split(":")[-1].strip() or "malformed body"
                raise HandshakeError(400, f"Malformed HTTP request: {reason}") from None
            self.offset = len(data)  # whatever follows a whole request is never read
        head_size = self._size - (len(data) - self.offset)
        if self._cb.body is not None:
            head_size -= len(self._cb.body)  # body bytes that came with the head
        if not self._cb.complete:
            if self._size > self.max_header_size:
                raise HandshakeError(431, "Request Header Fields Too Large")
            return None
        if head_size > self.max_header_size:
            raise HandshakeError(431, "Request Header Fields Too Large")
        cb = self._cb
        try:
            target = cb.url.decode("latin-1")
        except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes anything
            raise HandshakeError(400, "Malformed request target") from None
        request = Request(cb.method.decode("latin-1"), target, Headers(cb.headers), cb.version)
        _check_framing(request)
        self.request = request
        if not self.upgrade and not self._cb.done and _has_body(request.headers):
            # a plain request with a body still to come: hand it over once it is whole
            return None
        if self._cb.body is not None:
            request.body = bytes(self._cb.body)
        return request

    def _body_data(self, data: bytes) -> Request | None:
        request = self.request
        assert request is not None
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self._cb.error is not None:
                raise self._cb.error from None
            if not self._cb.done:
                reason = str(exc).split(":")[-1].strip() or "malformed body"
                raise HandshakeError(400, f"Malformed HTTP request: {reason}") from None
        self.offset = len(data)
        if not self._cb.done:
            return None
        request.body = bytes(self._cb.body) if self._cb.body is not None else b""
        return request


def _check_framing(request: Request) -> None:
    """What RFC 9112 says a server must refuse (llhttp refuses the rest: Content-Length with
    Transfer-Encoding, duplicate or bad Content-Length, bad chunked framing).

    Raises:
        HandshakeError: 400 for an HTTP/1.1 request without exactly one Host header, or with a
            Transfer-Encoding whose last coding is not ``chunked``.
    """
    headers = request.headers
    if request.http_version == "1.1":
        hosts = headers.get_all("host")
        if len(hosts) != 1:
            raise HandshakeError(400, "Missing Host header" if not hosts else "Duplicate Host header")
    te = headers.get_all("transfer-encoding")
    if te:
        codings = [c.strip().lower() for v in te for c in v.split(",") if c.strip()]
        if not codings or codings[-1] != "chunked":
            raise HandshakeError(400, "Unsupported Transfer-Encoding (only chunked)")


def _has_body(headers: Headers) -> bool:
    length = headers.get("content-length")
    if length is not None and length.strip() not in ("", "0"):
        return True
    return "transfer-encoding" in headers


def validate_upgrade(request: Request) -> str:
    """Check a request is a valid WebSocket upgrade; return its Sec-WebSocket-Key.

    Raises:
        HandshakeError: 426 for a plain HTTP request or an unsupported version,
            405 for a method other than GET, 400 for anything malformed.
    """
    headers = request.headers
    upgrade = _tokens(headers.get_all("upgrade"))
    if not upgrade:
        raise HandshakeError(426, "Expected WebSocket", [("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")])
    if "websocket" not in upgrade:
        raise HandshakeError(400, "Upgrade header must be websocket")
    if request.method != "GET":
        raise HandshakeError(405, "WebSocket upgrade requires GET", [("Allow", "GET")])
    if request.http_version not in ("1.1",) and not request.http_version.startswith(("2", "3")):
        raise HandshakeError(400, "WebSocket upgrade requires HTTP/1.1")
    if "upgrade" not in _tokens(headers.get_all("connection")):
        raise HandshakeError(400, "Connection header must include Upgrade")
    hosts = headers.get_all("host")
    if len(hosts) != 1 or not hosts[0].strip():
        raise HandshakeError(400, "Missing or duplicate Host header")
    versions = headers.get_all("sec-websocket-version")
    if not versions:
        raise HandshakeError(400, "Missing Sec-WebSocket-Version header")
    if len(versions) != 1 or versions[0].strip() != "13":
        raise HandshakeError(426, "Unsupported Sec-WebSocket-Version (only 13)", [("Sec-WebSocket-Version", "13")])
    keys = headers.get_all("sec-websocket-key")
    if len(keys) != 1:
        raise HandshakeError(400, "Missing or duplicate Sec-WebSocket-Key header")
    key = keys[0].strip()
    try:
        raw = base64.b64decode(key.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raw = b""
    if len(raw) != 16:
        raise HandshakeError(400, "Invalid Sec-WebSocket-Key header")
    return key


def select_subprotocol(request: Request, supported: Sequence[str]) -> str | None:
    """The first of our ``supported`` subprotocols that the client offered."""
    if not supported:
        return None
    offered = [p.strip() for v in request.headers.get_all("sec-websocket-protocol") for p in v.split(",")]
    for proto in supported:
        if proto in offered:
            return proto
    return None


def accept_response(key: str, subprotocol: str | None = None, extensions: str | None = None,
                    extra_headers: Sequence[tuple[str, str]] = ()) -> bytes:
    """The ``101 Switching Protocols`` response bytes."""
    parts = [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
        accept_key(key).encode("ascii"),
        b"\r\n",
    ]
    if subprotocol:
        parts.append(b"Sec-WebSocket-Protocol: " + subprotocol.encode("latin-1") + b"\r\n")
    if extensions:
        parts.append(b"Sec-WebSocket-Extensions: " + extensions.encode("latin-1") + b"\r\n")
    for k, v in extra_headers:
        _check_header(k, v)
        parts.append(f"{k}: {v}\r\n".encode("latin-1"))
    parts.append(b"\r\n")
    return b"".join(parts)


# ---------------------------------------------------------------- client side


class _ResponseCallbacks:
    __slots__ = ("headers", "body", "complete", "head_complete", "count")

    def __init__(self) -> None:
        self.headers: list[tuple[str, str]] = []
        self.body = b""
        self.head_complete = False
        self.complete = False
        self.count = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self.count += 1
        if self.count > MAX_HEADERS:
            raise InvalidHandshake("too many headers in the response")
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.head_complete = True

    def on_body(self, body: bytes) -> None:
        if len(self.body) < 65536:
            self.body += body[: 65536 - len(self.body)]

    def on_message_complete(self) -> None:
        self.complete = True


class ClientHandshake:
    """Client side of the opening handshake: builds the request, checks the response.

    Args:
        host: value of the Host header (``host[:port]``).
        target: path and query.
        subprotocols: offered subprotocols, in preference order.
        compression: permessage-deflate options, or None to not offer it.
        extra_headers: more request headers (Origin, Authorization, ...).
        max_header_size: largest response head accepted.
    """

    def __init__(self, host: str, target: str = "/", subprotocols: Sequence[str] = (),
                 compression: CompressionOptions | None = None,
                 extra_headers: Sequence[tuple[str, str]] = (), max_header_size: int = MAX_HEADER_SIZE,
                 user_agent: str | None = "fastws") -> None:
        self.key = base64.b64encode(os.urandom(16)).decode("ascii")
        self.host = host
        self.target = target or "/"
        self.subprotocols = list(subprotocols)
        self.compression = compression
        self.extra_headers = list(extra_headers)
        self.user_agent = user_agent
        self.max_header_size = max_header_size
        self._cb = _ResponseCallbacks()
        self._parser = httptools.HttpResponseParser(self._cb)
        self._size = 0
        self.offset = 0
        self.headers: Headers | None = None
        self.subprotocol: str | None = None
        self.deflate: Deflate | None = None

    def request_bytes(self) -> bytes:
        lines = [
            f"GET {self.target} HTTP/1.1",
            f"Host: {self.host}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {self.key}",
            "Sec-WebSocket-Version: 13",
        ]
        if self.subprotocols:
            lines.append("Sec-WebSocket-Protocol: " + ", ".join(self.subprotocols))
        if self.compression is not None:
            lines.append("Sec-WebSocket-Extensions: " + deflate_offer(self.compression))
        names = {k.lower() for k, _ in self.extra_headers}
        if self.user_agent and "user-agent" not in names:
            lines.append(f"User-Agent: {self.user_agent}")
        for k, v in self.extra_headers:
            _check_header(k, v)
            lines.append(f"{k}: {v}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def feed_data(self, data: bytes) -> bool:
        """Feed response bytes; True once the handshake succeeded.

        ``offset`` then tells how many bytes of ``data`` were the response head.

        Raises:
            InvalidHandshake: the server refused or answered wrongly.
        """
        self._size += len(data)
        upgraded = False
        try:
            self._parser.feed_data(data)
            self.offset = len(data)
        except httptools.HttpParserUpgrade as exc:
            self.offset = int(exc.args[0]) if exc.args else len(data)
            upgraded = True
        except httptools.HttpParserError as exc:
            raise InvalidHandshake(f"malformed HTTP response: {exc}") from None
        if not self._cb.head_complete:
            if self._size > self.max_header_size:
                raise InvalidHandshake("response head too large")
            return False
        status = self._parser.get_status_code()
        headers = Headers(self._cb.headers)
        self.headers = headers
        if status != 101:
            if not self._cb.complete and self._size < self.max_header_size + 65536:
                cl = headers.get("content-length")
                if cl is not None and cl.isdigit():
                    return False  # wait for the body, so the error carries it
            raise InvalidHandshake(f"server rejected WebSocket connection: HTTP {status}", status,
                                   self._cb.body, headers)
        if not upgraded and "upgrade" not in _tokens(headers.get_all("connection")):
            raise InvalidHandshake("101 response without Connection: Upgrade", status)
        if "websocket" not in _tokens(headers.get_all("upgrade")):
            raise InvalidHandshake("101 response without Upgrade: websocket", status)
        if "upgrade" not in _tokens(headers.get_all("connection")):
            raise InvalidHandshake("101 response without Connection: Upgrade", status)
        if (headers.get("sec-websocket-accept") or "").strip() != accept_key(self.key):
            raise InvalidHandshake("wrong Sec-WebSocket-Accept", status)
        proto = headers.get_all("sec-websocket-protocol")
        if proto:
            if len(proto) != 1 or proto[0].strip() not in self.subprotocols:
                raise InvalidHandshake(f"server chose a subprotocol we did not offer: {proto}", status)
            self.subprotocol = proto[0].strip()
        self.deflate = negotiate_deflate_client(headers.get_all("sec-websocket-extensions"), self.compression)
        return True
