"""Fixtures for the cluster tests: real redis-server processes and real ``fastws serve`` processes.

``redis_server()``  a private redis-server the test may kill, stop, pause and start again (sync factory).
``redis_url``       the URL of a Redis emptied (FLUSHALL) before the test: the server .ci/run started
                    (``FASTWS_TEST_REDIS_URL``) or, without it, one private server for the session.
``fastws_proc(app, *args, env=None)``  ``python -m fastws serve app`` on a free loopback port (sync factory).

redis-server is required, never skipped: .ci/run installs it from Debian's packages (.ci/apt-packages).
Every process a fixture starts is killed at the end of the test (of the session for redis_url's own).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]  # the repository (cwd of fastws processes: examples.* import)
FACTOR = float(os.environ.get("FASTWS_TESTS_TIMEOUT_FACTOR", "1"))
REDIS_START_TIMEOUT = 10.0 * FACTOR
FASTWS_START_TIMEOUT = 15.0 * FACTOR
STOP_TIMEOUT = 10.0 * FACTOR


def _die_with_pytest():
    """A ``preexec_fn`` that makes the child get SIGKILL when this pytest process dies, even by
    SIGKILL (Linux ``PR_SET_PDEATHSIG``), so an aborted run leaves no server behind. The signal
    follows the thread that forks: only used when spawning from the main thread."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        if os.getppid() != parent:  # pytest died before prctl took effect
            os._exit(1)

    return preexec


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-limit:]


def _redis_exe() -> str:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server not found on PATH: the cluster tests need a real Redis "
                    "(.ci/run installs redis-server from Debian's packages, see .ci/apt-packages)", pytrace=False)
    return exe


def _redis_ping(port: int, timeout: float = 0.5) -> bool:
    """True when the server on ``port`` answers PING with PONG (not LOADING or an error)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisProc:
    """One redis-server on 127.0.0.1:``port`` with its data in ``dir``: AOF on, fsync on every write
    (``--appendfsync always``), no RDB snapshots. ``start()`` after ``kill()``/``stop()`` comes back
    on the same port with the same data directory."""

    def __init__(self, port: int, dir: Path, extra_args: tuple[str, ...] = ()):
        self.port = port
        self.dir = Path(dir)
        self.extra_args = tuple(extra_args)
        self.log_path = self.dir / "redis.log"
        self.proc: subprocess.Popen | None = None
        self.dir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        return _tail(self.log_path, 1 << 20)

    def command(self) -> list[str]:
        return [_redis_exe(), "--port", str(self.port), "--bind", "127.0.0.1", "--protected-mode", "yes",
                "--dir", str(self.dir), "--save", "", "--appendonly", "yes", "--appendfsync", "always",
                "--daemonize", "no", "--logfile", "", *self.extra_args]

    def spawn(self) -> None:
        """Start the process without waiting for it (``start()`` waits)."""
        if self.alive():
            raise RuntimeError(f"redis-server on port {self.port} is already running (pid {self.pid})")
        cmd = self.command()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.dir, preexec_fn=_die_with_pytest())

    def wait_ready(self, timeout: float = REDIS_START_TIMEOUT) -> bool:
        """Wait for PONG; False if the process exited or the time ran out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _redis_ping(self.port):
                return True
            if not self.alive():
                return False
            time.sleep(0.02)
        return _redis_ping(self.port)

    def start(self, timeout: float = REDIS_START_TIMEOUT) -> RedisProc:
        """(Re)start on the same port and data dir; fails the test unless PONG comes within ``timeout``."""
        self.spawn()
        if not self.wait_ready(timeout):
            exited = not self.alive()
            self.kill()
            why = f"exited with code {self.proc.returncode}" if exited else f"did not answer PING in {timeout:.0f} s"
            pytest.fail(f"redis-server on 127.0.0.1:{self.port} {why}; its log:\n{_tail(self.log_path)}",
                        pytrace=False)
        return self

    def kill(self) -> None:
        """SIGKILL (a crash: only what was fsynced survives), then reap it."""
        if self.proc is not None and self.proc.returncode is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
            self.proc.wait()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM (Redis' graceful shutdown), wait up to ``timeout``, then SIGKILL."""
        if self.proc is not None and self.proc.returncode is None:
            try:
                self.proc.send_signal(signal.SIGCONT)  # a paused server cannot shut down
                self.proc.terminate()
                self.proc.wait(timeout)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                self.kill()
            self.proc.wait()

    def sigstop(self) -> None:
        """Freeze the server (connections stay open, nothing is answered)."""
        assert self.proc is not None and self.proc.returncode is None
        self.proc.send_signal(signal.SIGSTOP)

    def sigcont(self) -> None:
        assert self.proc is not None and self.proc.returncode is None
        self.proc.send_signal(signal.SIGCONT)

    def teardown(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            try:
                self.proc.send_signal(signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.kill()

    def __repr__(self) -> str:
        return f"<RedisProc port={self.port} pid={self.pid} alive={self.alive()}>"


def start_redis(dir: Path, *extra_args: str, attempts: int = 3) -> RedisProc:
    """A started RedisProc on a free loopback port, data in ``dir`` (retried on another port if the
    one picked was taken in between)."""
    dir = Path(dir)
    for attempt in range(attempts):
        srv = RedisProc(free_port(), dir, extra_args)
        srv.spawn()
        if srv.wait_ready():
            return srv
        exited = not srv.alive()
        srv.kill()
        log = _tail(srv.log_path)
        if exited and "Address already in use" in log and attempt + 1 < attempts:
            continue
        why = f"exited with code {srv.proc.returncode}" if exited else f"did not answer PING in {REDIS_START_TIMEOUT:.0f} s"
        pytest.fail(f"redis-server on 127.0.0.1:{srv.port} {why}; its log:\n{log}", pytrace=False)
    raise AssertionError("unreachable")


@pytest.fixture
def redis_server(tmp_path):
    """``srv = redis_server(*extra_redis_args)``: a started private redis-server (RedisProc) with its
    own data dir under tmp_path. Every one is killed at teardown."""
    started: list[RedisProc] = []

    def factory(*extra_args: str) -> RedisProc:
        srv = start_redis(tmp_path / f"redis-{len(started)}", *extra_args)
        started.append(srv)
        return srv

    yield factory
    for srv in started:
        srv.teardown()


@pytest.fixture(scope="session")
def _private_redis(tmp_path_factory):
    """The session's own redis-server, used by ``redis_url`` when FASTWS_TEST_REDIS_URL is not set."""
    srv = start_redis(tmp_path_factory.mktemp("redis-shared"))
    yield srv
    srv.teardown()


@pytest.fixture
def redis_url(request):
    """The URL of a Redis emptied before the test (FLUSHALL): the server named by
    FASTWS_TEST_REDIS_URL (.ci/run starts one) or else one private server shared by the session
    (started on first use, started again if a test brought it down)."""
    import redis

    url = os.environ.get("FASTWS_TEST_REDIS_URL")
    if not url:
        srv: RedisProc = request.getfixturevalue("_private_redis")
        if not srv.alive():
            srv.start()
        url = srv.url
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
    try:
        client.flushall()
    except redis.RedisError as exc:
        pytest.fail(f"the test Redis at {url} does not answer ({exc!r})"
                    + (" - FASTWS_TEST_REDIS_URL is set; is its server running?" if os.environ.get(
                        "FASTWS_TEST_REDIS_URL") else ""), pytrace=False)
    finally:
        client.close()
    yield url


class FastwsProc:
    """A ``python -m fastws serve`` process started by ``fastws_proc``.

    It runs in its own process group (session), so ``kill()``, ``sigstop()`` and ``sigcont()`` reach
    the supervisor and every ``--workers`` child at once; ``stop()`` sends SIGTERM to the main process
    only (its graceful shutdown stops the workers)."""

    def __init__(self, proc: subprocess.Popen, port: int, args: list[str], stdout: Path, stderr: Path):
        self.proc = proc
        self.port = port
        self.args = args
        self.stdout_path = stdout
        self.stderr_path = stderr

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def stdout_text(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def _signal_group(self, sig: int) -> None:
        # Only while the leader is not reaped: its pid (= the group id) cannot be reused until then.
        if self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL to the whole process group (a crash of the node), then reap."""
        self._signal_group(signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM (graceful shutdown), wait up to ``timeout``, then SIGKILL; returns the exit code."""
        if self.proc.returncode is None:
            self._signal_group(signal.SIGCONT)  # a paused process cannot shut down
            try:
                self.proc.terminate()
                self.proc.wait(timeout)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.wait()

    def sigstop(self) -> None:
        """Freeze the node (every process of it): its sockets stay open, it does nothing."""
        assert self.proc.returncode is None, "the process is gone"
        self._signal_group(signal.SIGSTOP)

    def sigcont(self) -> None:
        assert self.proc.returncode is None, "the process is gone"
        self._signal_group(signal.SIGCONT)

    def teardown(self) -> None:
        self._signal_group(signal.SIGCONT)
        self.kill()

    def __repr__(self) -> str:
        return f"<FastwsProc {' '.join(self.args)} pid={self.pid} alive={self.alive()}>"


def _port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@pytest.fixture
def fastws_proc(tmp_path):
    """``node = fastws_proc("examples.echo:app", "--redis", url, env={...}, port=None)``: starts
    ``sys.executable -m fastws serve APP --host 127.0.0.1 --port PORT *args`` in the repository root,
    with os.environ plus ``env``, stdout/stderr in files under tmp_path, and returns a FastwsProc once
    the port accepts TCP connections (15 s at most, else the test fails with the process' stderr).
    ``port`` defaults to a free one; give a gone node's port to start a node in its place.
    Every process still alive at teardown is SIGCONT'ed and SIGKILLed (with its process group)."""
    started: list[FastwsProc] = []

    def factory(app: str, *args: str, env: dict[str, str] | None = None, port: int | None = None,
                timeout: float = FASTWS_START_TIMEOUT) -> FastwsProc:
        port = free_port() if port is None else port
        n = len(started)
        stdout, stderr = tmp_path / f"fastws-{n}.stdout", tmp_path / f"fastws-{n}.stderr"
        cmd = [sys.executable, "-m", "fastws", "serve", app, "--host", "127.0.0.1", "--port", str(port), *args]
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with open(stdout, "wb") as out, open(stderr, "wb") as err:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True, preexec_fn=_die_with_pytest())
        node = FastwsProc(proc, port, cmd[2:], stdout, stderr)
        started.append(node)
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                pytest.fail(f"fastws serve {app} (port {port}) exited with code {proc.returncode} before "
                            f"listening; stderr:\n{_tail(stderr)}", pytrace=False)
            if _port_accepts(port):
                return node
            if time.monotonic() > deadline:
                node.kill()
                pytest.fail(f"fastws serve {app} did not accept connections on 127.0.0.1:{port} within "
                            f"{timeout:.0f} s; stderr:\n{_tail(stderr)}", pytrace=False)
            time.sleep(0.02)

    yield factory
    for node in started:
        node.teardown()
