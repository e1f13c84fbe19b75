"""examples/worker_echo.py and examples/guarded.py, in process and through ``fastws serve``
(with --config and guard flags) in a real subprocess."""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import examples.guarded
import fastws
from examples.worker_echo import app as worker_app
from tests.helpers import raw_connect, read_http_response

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 5.0
ORIGIN = [("Origin", "https://app.example.com")]


async def test_worker_echo(serve):
    server = await serve(worker_app)
    async with fastws.connect(server.url + "/any/path") as ws:
        await ws.send("hello")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "Echo: hello"
        await ws.send(b"\x00\x01")
        assert await asyncio.wait_for(ws.recv(), TIMEOUT) == b"Echo: \x00\x01"
    reader, writer = await raw_connect(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body = await read_http_response(reader, TIMEOUT)
    writer.close()
    assert (status, body) == (426, b"Expected WebSocket")


async def test_guarded(serve):
    # a fresh module per test: the example's app keeps its buckets
    app = importlib.reload(examples.guarded).app
    server = await serve(app)
    with pytest.raises(fastws.InvalidHandshake) as info:
        await fastws.connect(server.url, headers=[("Origin", "https://evil.example")])
    assert info.value.status == 403
    for _ in range(9):  # the refused one above counted: 10 per minute in all
        async with fastws.connect(server.url, headers=ORIGIN) as ws:
            await ws.send("hi")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "hi"
    with pytest.raises(fastws.InvalidHandshake) as info:
        await fastws.connect(server.url, headers=ORIGIN)
    assert info.value.status == 429


class Served:
    """``fastws serve ...`` in a subprocess on 127.0.0.1:0; the URL comes from its first line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "fastws", "serve", *args, "--port", "0"], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        line = self.proc.stdout.readline()
        if " on " not in line:
            self.proc.kill()
            raise AssertionError(f"fastws serve did not start: {line!r} {self.proc.stderr.read()!r}")
        self.url = line.split(" on ")[1].split()[0]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:  # pragma: no cover
            self.proc.kill()
            self.proc.wait()


async def test_serve_with_config_file_and_flags(tmp_path):
    cfg = tmp_path / "guards.toml"
    cfg.write_text('app = "examples.worker_echo:app"\n'
                   "[server]\nmax_size = 64\n"
                   '[guards]\norigins = ["https://app.example.com"]\n'
                   "[guards.firewall]\ndefault = \"allow\"\n"
                   '[[guards.firewall.rules]]\naction = "deny"\npath = "/blocked*"\n')
    served = Served("--config", str(cfg), "--connection-rate", "2/60s")
    try:
        async with fastws.connect(served.url + "/x", headers=ORIGIN) as ws:
            await ws.send("through the config")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "Echo: through the config"
            await ws.send("x" * 100)  # over [server] max_size
            with pytest.raises(fastws.ConnectionClosed):
                await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert ws.close_code == 1009
        statuses = []
        for path, headers in (("/x", []), ("/blocked", ORIGIN), ("/x", ORIGIN)):
            with pytest.raises(fastws.InvalidHandshake) as info:
                await fastws.connect(served.url + path, headers=headers)
            statuses.append(info.value.status)
        # origin (counted by the rate limit), firewall (runs first: not counted), then the flag's 2/60s
        assert statuses == [403, 403, 429]
    finally:
        # stop from a thread: the loop must keep running to close this side's sockets
        await asyncio.get_running_loop().run_in_executor(None, served.stop)


@pytest.mark.parametrize("toml,message", [
    ("[guards]\norgins = []\n", "unknown key 'guards.orgins'"),
    ("[guards]\nmax_connections = \"ten\"\n", "guards.max_connections must be a positive integer"),
    ("[guards]\nconnection_rate = \"10/fortnight\"\n", "guards.connection_rate: invalid rate"),
    ("[guards.firewall]\nrules = [{action = \"block\"}]\n", "guards.firewall: firewall action"),
    ("[server]\nport = \"x\"\n", "server.port must be a port number"),
    ("[servre]\n", "unknown key 'servre'"),
    ("[server\n", "invalid TOML"),
])
def test_config_errors_name_the_file_and_key(tmp_path, capsys, toml, message):
    from fastws.cli import main

    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml)
    assert main(["serve", "examples.echo:app", "--config", str(cfg), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert str(cfg) in err and message in err


def test_config_error_exit_code_from_the_command(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[guards]\nqueue_timeout = \"soon\"\n")
    proc = subprocess.run([sys.executable, "-m", "fastws", "serve", "examples.echo:app", "--config", str(cfg)],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert f"fastws: error: {cfg}: guards.queue_timeout must be a number of seconds" in proc.stderr
    assert "Traceback" not in proc.stderr


async def test_serve_tls_from_config_tls12_minimum(tmp_path):
    import ssl

    import websockets

    from tests.integration.test_tls import make_certificate

    cert, key = make_certificate(tmp_path)
    cfg = tmp_path / "tls.toml"
    cfg.write_text(f'[server]\nssl_certfile = "{cert}"\nssl_keyfile = "{key}"\n')
    served = Served("examples.worker_echo:app", "--config", str(cfg))
    try:
        assert served.url.startswith("wss://")
        ctx = ssl.create_default_context(cafile=cert)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # the minimum the server takes
        async with websockets.connect(served.url + "/t", ssl=ctx, compression=None) as ws:
            await ws.send("secure")
            assert await asyncio.wait_for(ws.recv(), TIMEOUT) == "Echo: secure"
        old = ssl.create_default_context(cafile=cert)
        with warnings.catch_warnings():  # TLS 1.0/1.1 are deprecated: that is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            old.minimum_version = ssl.TLSVersion.TLSv1
            old.maximum_version = ssl.TLSVersion.TLSv1_1
        with pytest.raises((ssl.SSLError, OSError)):
            await asyncio.wait_for(websockets.connect(served.url + "/t", ssl=old, compression=None), TIMEOUT)
    finally:
        await asyncio.get_running_loop().run_in_executor(None, served.stop)


def test_liveness_defaults():
    server = fastws.serve(fastws.App(), "127.0.0.1", 0)
    assert server.endpoint.ping_interval == 30.0
    assert server.endpoint.idle_timeout == 100.0
    assert server.endpoint.max_size == 1 << 20
    tuned = fastws.serve(fastws.App(ping_interval=None, idle_timeout=5), "127.0.0.1", 0)
    assert (tuned.endpoint.ping_interval, tuned.endpoint.idle_timeout) == (0.0, 5.0)
