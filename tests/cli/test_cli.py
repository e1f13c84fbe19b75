"""The ``fastws`` command, run for real: subprocesses against real servers on 127.0.0.1.

Servers are started with ``fastws serve tests.cli.apps:NAME --port 0`` (the URL is read
from the line it prints). Every command runs with a timeout, so a hang fails the test
instead of stalling the suite; nothing here asserts a speed.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import time

import pytest

import fastws

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FASTWS = [sys.executable, "-m", "fastws"]
ENV = dict(os.environ, PYTHONUNBUFFERED="1")


def run(*args: str, input: str | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(FASTWS + list(args), input=input, capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=ENV)


class Server:
    """``fastws serve SPEC --port 0 ...`` in a subprocess; ``url`` from its ready line."""

    def __init__(self, spec: str, *extra: str) -> None:
        self.proc = subprocess.Popen(FASTWS + ["serve", spec, "--port", "0", *extra], cwd=ROOT, env=ENV,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.line = self._readline(20.0)
        if " on ws://" not in self.line and " on wss://" not in self.line:
            self.stop(signal.SIGKILL)
            raise AssertionError(f"no ready line: {self.line!r} {self.stderr()!r}")
        self.url = self.line.split(" on ", 1)[1].split()[0]
        self.port = int(self.url.rsplit(":", 1)[1])

    def _readline(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            self.stop(signal.SIGKILL)
            raise AssertionError("server did not print its ready line")
        return self.proc.stdout.readline()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read()


@pytest.fixture(scope="module")
def servers():
    specs = {"echo": "examples.echo:app", "fanout": "tests.cli.apps:fanout", "chat": "tests.cli.apps:chat",
             "pinger": "tests.cli.apps:pinger", "closer": "tests.cli.apps:closer",
             "headers": "tests.cli.apps:headers_app", "tobinary": "tests.cli.apps:tobinary"}
    started = {name: Server(spec) for name, spec in specs.items()}
    yield {name: s.url for name, s in started.items()}
    for s in started.values():
        assert s.stop() == 0
        assert "Traceback" not in s.stderr()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_error_line(p: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("fastws: error: ")
    assert "Traceback" not in p.stderr
    return lines[0]


# ------------------------------------------------------------------ serve


def test_version():
    p = run("--version")
    assert p.returncode == 0
    assert p.stdout.strip() == f"fastws {fastws.__version__}"


@pytest.mark.parametrize("spec, message", [
    ("nosuchmodule_xyz:app", "cannot import module 'nosuchmodule_xyz'"),
    ("examples.echo:nope", "module 'examples.echo' has no attribute 'nope'"),
    ("examples.echo", "app must look like module:attribute"),
])
@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_bad_app(spec, message, workers):
    p = run("serve", spec, "--port", "0", "--workers", workers, timeout=20)
    assert p.returncode == 2
    assert message in one_error_line(p)


@pytest.mark.parametrize("workers", ["1", "3"])
def test_serve_port_in_use(workers):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = run("serve", "examples.echo:app", "--port", str(port), "--workers", workers, timeout=20)
    assert p.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in one_error_line(p)


def _pids_seen(url: str, n: int) -> list[dict]:
    import asyncio

    async def main() -> list[dict]:
        out = []
        conns = []
        try:
            for _ in range(n):
                conns.append(await fastws.connect(url))
            for ws in conns:
                await ws.send("?")
                out.append(json.loads(await ws.recv()))
        finally:
            for ws in conns:
                await ws.close()
        return out

    return asyncio.run(main())


def test_serve_workers_share_the_port_and_stop(tmp_path):
    data = tmp_path / "data"
    srv = Server("tests.cli.apps:info", "--workers", "2", "--data-dir", str(data))
    try:
        assert "with 2 workers" in srv.line
        workers = [int(x) for x in srv.line.rsplit("workers ", 1)[1].rstrip(")\n").split(",")]
        assert len(set(workers)) == 2
        replies = _pids_seen(srv.url, 40)
        # SO_REUSEPORT spreads connections by hash: 40 connections on one worker has odds 2**-39
        assert {r["pid"] for r in replies} == set(workers)
        # FASTWS_DATA_DIR was exported before the app module was imported, in every worker
        assert {r["data_dir"] for r in replies} == {str(data)}
        assert data.is_dir()
        # a worker that dies is restarted by the parent
        os.kill(workers[0], signal.SIGKILL)
        deadline = time.monotonic() + 10
        pids: set[int] = set()
        while time.monotonic() < deadline:
            try:
                pids = {r["pid"] for r in _pids_seen(srv.url, 20)}
            except (OSError, fastws.ConnectionClosed, fastws.InvalidHandshake):
                # connections queued on the dead worker's socket are reset by the kernel
                pids = set()
            if workers[0] not in pids and len(pids) == 2:
                break
            time.sleep(0.2)
        assert workers[0] not in pids and workers[1] in pids and len(pids) == 2
    finally:
        code = srv.stop(signal.SIGINT)
    assert code == 0
    err = srv.stderr()
    assert "restarting it" in err and "Traceback" not in err
    for pid in workers[1:] + list(pids):
        assert not os.path.exists(f"/proc/{pid}") or _is_zombie(pid)


def test_serve_workers_exit_with_a_killed_supervisor():
    srv = Server("examples.echo:app", "--workers", "2")
    workers = [int(x) for x in srv.line.rsplit("workers ", 1)[1].rstrip(")\n").split(",")]
    srv.stop(signal.SIGKILL)  # no chance to stop them itself
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not all(_gone(pid) for pid in workers):
        time.sleep(0.05)
    assert all(_gone(pid) for pid in workers)


def _gone(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}") or _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_serve_workers_with_config_file_and_guard_flags(tmp_path):
    cfg = tmp_path / "serve.toml"
    cfg.write_text('app = "examples.echo:app"\n[server]\nport = 0\nmax_size = 100\n')
    srv = Server(f"--config={cfg}", "--workers", "2", "--origin", "https://ok.example")  # app from the file
    try:
        assert "serving examples.echo:app on ws://127.0.0.1:" in srv.line and "with 2 workers" in srv.line
        p = run("connect", srv.url, "-x", "no origin")
        assert p.returncode == 1 and "HTTP 403" in one_error_line(p)  # the flag's Origin guard
        p = run("connect", srv.url, "-H", "Origin: https://ok.example", "-x", "hello")
        assert p.returncode == 0 and p.stdout.strip() == "hello"
        p = run("connect", srv.url, "-H", "Origin: https://ok.example", "-x", "x" * 200)
        assert p.returncode == 1 and "closed 1009" in p.stderr  # [server] max_size = 100
    finally:
        assert srv.stop() == 0


def test_serve_log_format_json():
    srv = Server("examples.echo:app", "--log-format", "json", "--log-level", "debug")
    assert srv.stop() == 0
    lines = [json.loads(ln) for ln in srv.stderr().splitlines() if ln.strip()]
    assert lines, "nothing logged"
    assert all({"time", "level", "logger", "message", "pid"} <= set(d) for d in lines)
    assert any(d["level"] == "debug" and "listening on ws://127.0.0.1:" in d["message"] for d in lines)


def test_serve_data_dir_not_a_directory(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    p = run("serve", "examples.echo:app", "--port", "0", "--data-dir", str(f), timeout=20)
    assert p.returncode == 2
    assert "--data-dir" in one_error_line(p)


# ------------------------------------------------------------------ connect


def test_connect_pipe_mode(servers):
    p = run("connect", servers["echo"], input="one\ntwo\n\nthree\n")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["one", "two", "", "three"]
    assert "* closed 1000" in p.stderr


def test_connect_binary_as_hex_and_pings_shown(servers):
    p = run("connect", servers["tobinary"], input="hi\n")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["6869"]
    p = run("connect", servers["pinger"], input="x\n")
    assert p.returncode == 0, p.stderr
    assert "* ping 6869 (answered)" in p.stderr
    assert p.stdout.splitlines() == ["x"]


def test_connect_close_code_shown_and_exit_code(servers):
    p = run("connect", servers["closer"], input="hello\n")
    assert p.stdout.splitlines() == ["bye"]
    assert "* closed 4001 go away" in p.stderr
    assert p.returncode == 1  # only 1000 / 1001 count as a clean close


def test_connect_execute_headers_token_subprotocol(servers):
    p = run("connect", servers["headers"] + "/room?x=1", "-H", "X-Test: yes", "--token", "abc.def.ghi",
            "-s", "chat.v1", "-x", "hello")
    assert p.returncode == 0, p.stderr
    reply = json.loads(p.stdout)
    assert reply["path"] == "/room"
    assert reply["subprotocol"] == "chat.v1"
    assert reply["headers"]["x-test"] == "yes"
    assert reply["headers"]["authorization"] == "Bearer abc.def.ghi"


def test_connect_errors():
    port = free_port()
    p = run("connect", f"ws://127.0.0.1:{port}/", "-x", "hi")
    assert p.returncode == 1
    assert "cannot connect to" in one_error_line(p)
    p = run("connect", "http://127.0.0.1/", "-x", "hi")
    assert p.returncode == 2
    assert "not a WebSocket URL" in one_error_line(p)
    p = run("connect", "ws://127.0.0.1:1/", "-H", "nocolon")
    assert p.returncode == 2


def _pty_read(fd: int, until: bytes, timeout: float = 10.0) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while until not in out and time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.05)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    assert until in out, out
    return out


def test_connect_interactive_on_a_terminal(servers):
    master, slave = pty.openpty()
    proc = subprocess.Popen(FASTWS + ["connect", servers["pinger"]], stdin=slave, stdout=slave, stderr=slave,
                            cwd=ROOT, env=ENV, close_fds=True)
    os.close(slave)
    try:
        out = _pty_read(master, b"* ping 6869 (answered)")
        assert b"* connected to " + servers["pinger"].encode() in out
        assert b"> " in out
        os.write(master, b"hello\n")
        _pty_read(master, b"< hello")
        os.write(master, b"//slash\n")
        _pty_read(master, b"< /slash")
        os.write(master, b"/ping\n")
        _pty_read(master, b"* pong in ")
        os.write(master, b"/binary 0102ff\n")
        _pty_read(master, b"< [binary 3 B] 0102ff")
        os.write(master, b"/close 1000 done\n")
        _pty_read(master, b"* closed 1000 done")
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


# ------------------------------------------------------------------ bench

REPORT_KEYS = {"schema", "fastws_version", "mode", "url", "options", "started_at", "ok", "interrupted", "metrics",
               "errors", "close_codes", "latency_histogram", "latency_sampled_every", "timeline", "machine"}


def bench_json(*args: str, timeout: float = 40.0) -> tuple[int, dict]:
    p = run("bench", *args, "--json", timeout=timeout)
    assert "Traceback" not in p.stderr, p.stderr
    return p.returncode, json.loads(p.stdout)


def check_schema(doc: dict, mode: str) -> None:
    from fastws.bench.report import METRIC_KEYS

    assert set(doc) >= REPORT_KEYS
    assert doc["schema"] == "fastws-bench/1" and doc["mode"] == mode
    m = doc["metrics"]
    for k in ["connections", "connect_failures", "dropped", "errors", "elapsed_s"] + METRIC_KEYS[mode]:
        assert isinstance(m[k], (int, float)), k
    if mode != "storm":
        assert m["latency_p50_ms"] <= m["latency_p90_ms"] <= m["latency_p99_ms"] <= m["latency_max_ms"]
        assert sum(b["count"] for b in doc["latency_histogram"]) > 0
        assert all(a["le_ms"] < b["le_ms"] for a, b in zip(doc["latency_histogram"], doc["latency_histogram"][1:]))
    for e in doc["errors"]:
        assert isinstance(e["message"], str) and e["count"] >= 1
    for point in doc["timeline"]:
        assert set(point) == {"t", "total", "per_s"}


def test_bench_echo_json(servers):
    code, doc = bench_json(servers["echo"], "-c", "4", "-n", "50", "-s", "100")
    assert code == 0, doc["errors"]
    check_schema(doc, "echo")
    m = doc["metrics"]
    assert doc["ok"] is True and doc["interrupted"] is False
    assert m["connections"] == 4 and m["messages_sent"] == 200 and m["messages_received"] == 200
    assert m["lost"] == 0 and m["errors"] == 0 and m["msgs_per_s"] > 0
    assert doc["options"]["count"] == 4 and doc["options"]["size"] == 100
    assert m["compressed_connections"] == 0


def test_bench_echo_inflight(servers):
    code, doc = bench_json(servers["echo"], "-c", "3", "-n", "50", "--inflight", "4")
    assert code == 0, doc["errors"]
    m = doc["metrics"]
    assert m["messages_sent"] == 150 and m["messages_received"] == 150 and m["lost"] == 0
    assert sum(b["count"] for b in doc["latency_histogram"]) == 150  # a latency per reply
    assert doc["options"]["inflight"] == 4


def test_bench_echo_compression_and_text(servers):
    code, doc = bench_json(servers["echo"], "-c", "2", "-n", "20", "-s", "2000", "--compression", "--text")
    assert code == 0, doc["errors"]
    m = doc["metrics"]
    assert m["compressed_connections"] == 2  # permessage-deflate negotiated with examples/echo.py
    assert m["messages_received"] == 40 and m["mb_per_s"] > 0


def test_bench_table_compare_plot_capacity(servers, tmp_path):
    code, first = bench_json(servers["echo"], "-c", "2", "-n", "30")
    assert code == 0
    prev = tmp_path / "prev.json"
    prev.write_text(json.dumps(first))
    plot = tmp_path / "plot.html"
    p = run("bench", servers["echo"], "-c", "2", "-n", "30", "--compare", str(prev), "--plot", str(plot),
            "--capacity", "--target-connections", "10000", "--target-rate", "50000", "--cores-per-machine", "4")
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith(f"fastws bench echo {servers['echo']}: 2 connections x 30 messages")
    header = next(ln for ln in lines if ln.strip().startswith("metric"))
    assert header.split() == ["metric", "value", "previous", "change"]
    row = next(ln for ln in lines if ln.strip().startswith("messages received"))
    assert row.split()[2:4] == ["60", "60"] and row.split()[4] == "+0.0%"
    assert any(ln.strip().startswith("latency p99") and ln.strip().endswith(("better", "worse", "%"))
               for ln in lines)
    assert "capacity:" in lines
    machines = next(ln for ln in lines if ln.strip().startswith("machines (4 cores)"))
    assert int(machines.split()[-1]) >= 1
    page = plot.read_text()
    assert page.startswith("<!doctype html>") and page.count("<svg") == 2 and "latency histogram" in page
    assert "<script" not in page and "http" not in page.split("<body>", 1)[1].split("ws://", 1)[0]


def test_bench_storm(servers):
    code, doc = bench_json(servers["echo"], "-m", "storm", "-c", "60", "--concurrency", "20")
    assert code == 0, doc["errors"]
    check_schema(doc, "storm")
    m = doc["metrics"]
    assert m["connections"] == 60 and m["connect_failures"] == 0 and m["connects_per_s"] > 0
    assert m["connect_p50_ms"] <= m["connect_p99_ms"] <= m["connect_max_ms"]
    assert sum(b["count"] for b in doc["latency_histogram"]) == 60  # handshake latencies


def test_bench_fanout(servers):
    code, doc = bench_json(servers["fanout"], "-m", "fanout", "-c", "20", "-n", "100", "--window", "4")
    assert code == 0, doc["errors"]
    check_schema(doc, "fanout")
    m = doc["metrics"]
    assert m["subscribers"] == 20 and m["publishes"] == 100
    assert m["deliveries"] == 2000 and m["lost"] == 0
    assert len(doc["latency_histogram"]) >= 1
    # paced publishing: --rate publishes per second, still bounded by -n
    code, doc = bench_json(servers["fanout"], "-m", "fanout", "-c", "5", "-n", "30", "--rate", "300")
    assert code == 0, doc["errors"]
    assert doc["metrics"]["publishes"] == 30 and doc["metrics"]["deliveries"] == 150


def test_bench_fanout_against_a_server_that_does_not_broadcast(servers):
    # the echo server sends each publish back to the publisher only: every subscriber misses it
    code, doc = bench_json(servers["echo"], "-m", "fanout", "-c", "3", "-n", "5", "--drain-timeout", "0.5",
                           "-d", "1")
    assert code == 1
    assert doc["ok"] is False and doc["metrics"]["deliveries"] == 0
    assert any("fan-out deliveries missing" in e["message"] for e in doc["errors"])


def test_bench_chat(servers):
    code, doc = bench_json(servers["chat"], "-m", "chat", "-c", "20", "--room-size", "5", "-n", "10")
    assert code == 0, doc["errors"]
    check_schema(doc, "chat")
    m = doc["metrics"]
    assert m["rooms"] == 4 and m["messages_sent"] == 200
    assert m["deliveries"] == 1000 and m["lost"] == 0  # every message reaches its 5 members


def test_bench_procs(servers):
    code, doc = bench_json(servers["echo"], "-c", "5", "-n", "40", "-p", "2")
    assert code == 0, doc["errors"]
    assert doc["options"]["procs_used"] == 2
    assert doc["metrics"]["connections"] == 5 and doc["metrics"]["messages_received"] == 200
    code, doc = bench_json(servers["chat"], "-m", "chat", "-c", "12", "--room-size", "4", "-n", "5", "-p", "2")
    assert code == 0, doc["errors"]
    assert doc["metrics"]["rooms"] == 3 and doc["metrics"]["deliveries"] == 12 * 5 * 4
    # fan-out: worker 0 publishes, both workers hold subscribers; latency is to the last of all
    code, doc = bench_json(servers["fanout"], "-m", "fanout", "-c", "9", "-n", "40", "-p", "2")
    assert code == 0, doc["errors"]
    m = doc["metrics"]
    assert doc["options"]["procs_used"] == 2 and m["subscribers"] == 9 and m["publishes"] == 40
    assert m["deliveries"] == 360 and m["lost"] == 0
    assert sum(b["count"] for b in doc["latency_histogram"]) == 40  # one latency per publish


def test_bench_rate_is_bounded(servers):
    code, doc = bench_json(servers["echo"], "-c", "2", "-n", "0", "--rate", "100", "-d", "0.5")
    assert code == 0, doc["errors"]
    sent = doc["metrics"]["messages_sent"]
    assert 0 < sent <= 100 * 0.5 + 10  # paced: never more than rate x duration (one tick of slack)
    assert doc["metrics"]["messages_received"] == sent


def test_bench_refused():
    t0 = time.monotonic()
    code, doc = bench_json(f"ws://127.0.0.1:{free_port()}/", "-c", "3", "-n", "10")
    assert code == 1
    assert doc["ok"] is False and doc["metrics"]["connections"] == 0 and doc["metrics"]["connect_failures"] == 3
    assert doc["errors"] == [{"message": "connection refused", "count": 3}]
    assert time.monotonic() - t0 < 20


def test_bench_server_that_never_answers_the_handshake():
    with socket.socket() as s:  # the kernel accepts the TCP connections; nobody ever reads them
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        t0 = time.monotonic()
        code, doc = bench_json(f"ws://127.0.0.1:{s.getsockname()[1]}/", "-c", "3", "--timeout", "0.5")
    assert code == 1
    assert doc["metrics"]["connect_failures"] == 3
    assert doc["errors"][0]["message"].startswith("handshake failed: timed out opening")
    assert time.monotonic() - t0 < 15


def test_bench_server_refuses_the_upgrade(servers):
    # an extra "Sec-WebSocket-Version: 8" header: the server answers with an HTTP status, not 101
    code, doc = bench_json(servers["echo"], "-c", "2", "-H", "Sec-WebSocket-Version: 8")
    assert code == 1
    assert doc["metrics"]["connections"] == 0
    assert any(e["message"].startswith("handshake refused") for e in doc["errors"]), doc["errors"]


def wait_for_load(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Read the bench's stderr (run with --log-level debug) until its load phase started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r, _, _ = select.select([proc.stderr], [], [], 0.1)
        if r:
            line = proc.stderr.readline()
            if "load phase started" in line:
                time.sleep(0.3)  # some messages go back and forth
                return
            if not line:
                break
    raise AssertionError("the load phase did not start")


def test_bench_server_dies_mid_run():
    srv = Server("examples.echo:app")
    proc = subprocess.Popen(FASTWS + ["--log-level", "debug", "bench", srv.url, "-c", "4", "-n", "0", "-d", "30",
                                      "--json"], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    wait_for_load(proc)
    srv.proc.kill()
    srv.proc.wait(5)
    out, err = proc.communicate(timeout=20)  # the run ends when every connection is gone, not after 30 s
    assert proc.returncode == 1
    doc = json.loads(out)
    assert doc["ok"] is False and doc["metrics"]["dropped"] == 4
    assert any("closed by the server during the run" in e["message"] for e in doc["errors"])
    assert doc["metrics"]["elapsed_s"] < 25


@pytest.mark.parametrize("procs", ["1", "2"])
def test_bench_ctrl_c_prints_partial_summary(servers, procs):
    proc = subprocess.Popen(FASTWS + ["--log-level", "debug", "bench", servers["echo"], "-c", "3", "-n", "0", "-d",
                                      "30", "-p", procs],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_load(proc)  # with -p 2: the first worker's line; the other starts within milliseconds
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert "[INTERRUPTED: partial results]" in out.splitlines()[0]
    received = next(ln for ln in out.splitlines() if ln.strip().startswith("messages received"))
    assert int(received.split()[-1].replace(",", "")) > 0
    assert "Traceback" not in err


def test_bench_bad_options(tmp_path):
    p = run("bench", "ws://127.0.0.1:1/", "-d", "0")
    assert p.returncode == 2 and "--duration" in one_error_line(p)
    p = run("bench", "ws://127.0.0.1:1/", "--compare", str(tmp_path / "missing.json"))
    assert p.returncode == 2 and "cannot read" in one_error_line(p)
    (tmp_path / "x.json").write_text("{}")
    p = run("bench", "ws://127.0.0.1:1/", "--compare", str(tmp_path / "x.json"))
    assert p.returncode == 2 and "not a fastws bench report" in one_error_line(p)
    p = run("bench", "http://127.0.0.1:1/")
    assert p.returncode == 2 and "not a WebSocket URL" in one_error_line(p)


def test_bench_progress_bar_on_a_terminal(servers):
    master, slave = pty.openpty()
    proc = subprocess.Popen(FASTWS + ["bench", servers["echo"], "-c", "2", "-n", "0", "-d", "1.2"], stdin=slave,
                            stdout=slave, stderr=slave, cwd=ROOT, env=ENV, close_fds=True)
    os.close(slave)
    try:
        out = _pty_read(master, b"load time", timeout=20)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    bars = [chunk for chunk in out.split(b"\r") if chunk.startswith(b"[")]
    assert bars, out
    assert all(b"%" in bar and b"errors 0" in bar for bar in bars)
    assert any(b"received" in bar for bar in bars)  # redrawn during the load phase
    assert b"messages/s" in out  # the summary follows the bar, on a cleared line
    # without a terminal (every other test): no bar at all
    p = run("bench", servers["echo"], "-c", "1", "-n", "5")
    assert "\r[" not in p.stdout + p.stderr


def test_connect_and_bench_over_tls(tmp_path):
    from tests.integration.test_tls import make_certificate

    cert, key = make_certificate(tmp_path)
    srv = Server("examples.echo:app", "--ssl-certfile", cert, "--ssl-keyfile", key)
    try:
        url = srv.url
        assert url.startswith("wss://127.0.0.1:")
        p = run("connect", url, "--cafile", cert, "-x", "over tls")
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip() == "over tls"
        p = run("connect", url, "-x", "x")  # a self-signed certificate is refused without --cafile/-k
        assert p.returncode == 1 and "certificate" in one_error_line(p).lower()
        code, doc = bench_json(url, "-c", "2", "-n", "20", "--insecure")
        assert code == 0, doc["errors"]
        assert doc["metrics"]["messages_received"] == 40
    finally:
        assert srv.stop() == 0


def test_serve_room_limits_flags():
    for flag, value, msg in (("--max-rooms", "many", "--max-rooms must be a whole number"),
                             ("--new-rooms-per-ip", "fast", "--new-rooms-per-ip: invalid rate")):
        p = run("serve", "examples.chat:app", "--port", "0", flag, value)
        assert p.returncode == 2 and msg in one_error_line(p)
    # the flags reach the room router: one new room per IP per minute
    s = Server("examples.chat:app", "--max-rooms", "2", "--new-rooms-per-ip", "1/min")
    try:
        def status(path: str) -> int:
            with socket.create_connection(("127.0.0.1", s.port), timeout=10) as c:
                c.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                return int(c.recv(4096).split()[1])
        assert status("/a") == 200
        assert status("/b") == 429          # the second new room from this IP within the minute
        assert status("/a") == 200          # the room in memory still answers
    finally:
        s.stop()


@pytest.mark.parametrize("attempt", range(3))
def test_serve_workers_stop_on_sigterm_during_startup(attempt):
    """SIGTERM while the other workers are still starting (the first one already listens): every
    worker stops at once; none keeps serving until the supervisor's SIGKILL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(FASTWS + ["serve", "examples.echo:app", "--port", str(port), "--workers", "3",
                                      "--shutdown-timeout", "1"], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.005)
        else:
            raise AssertionError("the first worker never listened")
        proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        out, err = proc.communicate(timeout=30)
        took = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert "killing it" not in err, err
    assert took < 5.0, (took, err)  # the grace before SIGKILL is shutdown_timeout + 5 = 6 s
    assert proc.returncode == 0, (proc.returncode, err)
