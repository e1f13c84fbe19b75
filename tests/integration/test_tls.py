"""wss:// with a self-signed certificate made for the test: the fastws server
with fastws, websockets and aiohttp clients, and the fastws client against a
websockets TLS server."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import shutil
import ssl
import subprocess

import aiohttp
import pytest
import websockets

import fastws
from tests.conftest import EchoListener, echo_handler
from tests.integration.test_bad_input import (
    TIMEOUT,
)
from tests.integration.test_server import payload, text

ASYNCIO_TLS_READ_BUG = (
    "BUG: no fastws connection can read over TLS on asyncio's own loop: asyncio.sslproto slices the "
    "buffer that Connection.get_buffer() returns (sslobj.read(n, buf[offset:])) and _ReadTarget is not "
    "subscriptable ('Fatal error on SSL protocol', TypeError: 'fastws._protocol._ReadTarget' object is "
    "not subscriptable); returning a memoryview would do. uvloop works"
)


def make_certificate(directory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 / localhost: ``(cert_path, key_path)``.

    Made with the ``cryptography`` package; where it is not installed (it is
    not among the project's test dependencies) with the ``openssl`` command.
    """
    cert_path = str(directory / "cert.pem")
    key_path = str(directory / "key.pem")
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        openssl = shutil.which("openssl")
        assert openssl, "neither the cryptography package nor the openssl command is available"
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key_path, "-out", cert_path, "-days", "2", "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
            check=True, capture_output=True, timeout=30,
        )
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                    x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    return make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def server_ctx(certificate):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*certificate)
    return ctx


@pytest.fixture
def client_ctx(certificate):
    return ssl.create_default_context(cafile=certificate[0])


@pytest.mark.parametrize("app", [echo_handler, EchoListener], ids=["handler", "listener"])
async def test_fastws_client_to_fastws_server(serve, server_ctx, client_ctx, app):
    server = await serve(app, ssl=server_ctx, compression=True)
    assert server.url.startswith("wss://127.0.0.1:")
    async with fastws.connect(server.url + "/tls", ssl=client_ctx) as ws:
        assert ws.transport.get_extra_info("ssl_object") is not None
        for n in (0, 125, 126, 65536, 1 << 20):
            data = payload(n, 11)
            await ws.send(data)
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == data
            await ws.send(text(n))
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == text(n)
        assert await asyncio.wait_for(ws.ping(), TIMEOUT) >= 0


async def test_websockets_client_to_fastws_server(serve, server_ctx, client_ctx):
    seen = []

    async def handler(ws):
        seen.append((ws.request.path, ws.transport.get_extra_info("ssl_object") is not None))
        await echo_handler(ws)

    server = await serve(handler, ssl=server_ctx)
    async with websockets.connect(server.url + "/secure", ssl=client_ctx, max_size=None) as ws:
        big = payload(300_000, 5)
        await ws.send(big)
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == big
        await ws.send("tls ✓")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "tls ✓"
    assert seen == [("/secure", True)]


async def test_aiohttp_client_to_fastws_server(serve, server_ctx, client_ctx):
    server = await serve(echo_handler, ssl=server_ctx)
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(server.url, ssl=client_ctx) as ws:
            await ws.send_str("aio tls")
            msg = await ws.receive(timeout=TIMEOUT)
            assert msg.data == "aio tls"


async def test_fastws_client_to_websockets_tls_server(server_ctx, client_ctx):
    async def handler(conn):
        async for msg in conn:
            await conn.send(msg)

    async with websockets.serve(handler, "127.0.0.1", 0, ssl=server_ctx, max_size=None) as srv:
        port = srv.sockets[0].getsockname()[1]
        async with fastws.connect(f"wss://127.0.0.1:{port}/", ssl=client_ctx) as ws:
            for data in ("hello", payload(200_000, 9)):
                await ws.send(data)
                assert await asyncio.wait_for(ws.recv(), TIMEOUT) == data
        async with fastws.connect(f"wss://localhost:{port}/", ssl=client_ctx) as ws:  # name checked via SAN
            await ws.send("by name")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "by name"


async def test_untrusted_certificate_is_refused_and_server_keeps_serving(serve, server_ctx, client_ctx):
    server = await serve(echo_handler, ssl=server_ctx)
    with pytest.raises(ssl.SSLCertVerificationError):
        await fastws.connect(server.url, ssl=ssl.create_default_context(), open_timeout=TIMEOUT)
    async with fastws.connect(server.url, ssl=client_ctx) as ws:
        await ws.send("after a failed TLS handshake")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "after a failed TLS handshake"


async def test_plain_client_to_tls_server_fails_and_server_keeps_serving(serve, server_ctx, client_ctx):
    server = await serve(echo_handler, ssl=server_ctx, handshake_timeout=1.0)
    host, port = server.address
    with pytest.raises((fastws.InvalidHandshake, OSError)):
        await fastws.connect(f"ws://{host}:{port}/", open_timeout=2.0)
    async with websockets.connect(server.url, ssl=client_ctx) as ws:
        await ws.send("still serving")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "still serving"


def test_ssl_context_with_ws_url_is_refused(client_ctx):
    with pytest.raises(ValueError):
        fastws.connect("ws://127.0.0.1:1/", ssl=client_ctx)
