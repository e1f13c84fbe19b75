"""``fastws serve --workers N``: the supervisor of N forked server processes.

Theory of operation: the parent first binds (without listening) a socket with
SO_REUSEPORT on the requested address (:meth:`Supervisor._reserve_port`). That turns a
port held by someone else into one clear error before any worker starts, and turns port 0
into one concrete port that every worker then binds too; a socket that is bound but not
listening is never handed a connection, so the parent takes no traffic.

Workers are forked (``multiprocessing`` ``fork`` context) and each runs
:func:`fastws.cli.serve.serve_one` with ``reuse_port=True`` on its own event loop. The
first worker starts alone so that an import error in the app is reported once, not N
times; then the others start. Each worker tells the parent through a queue that it is
ready (or why it failed), and the parent prints one "serving ... with N workers" line.

While serving, the parent waits on the workers' sentinels and restarts a worker that
exits; a worker that dies within ``RESTART_WINDOW`` seconds of its start counts as a
fast crash, and ``MAX_FAST_CRASHES`` in a row stop the whole server (exit code 1). On
SIGINT/SIGTERM the parent sends SIGTERM to every worker, waits for the shutdown timeout
(default 10 s) plus 5 s, then SIGKILLs the stragglers. Workers ignore SIGINT (a Ctrl-C on the terminal
reaches the whole process group; the parent alone decides) and ask the kernel for a
SIGTERM when the parent dies, so no worker outlives a SIGKILLed supervisor. Workers are
forked with SIGINT/SIGTERM blocked and unblock them once their own handlers are set, so a
stop signal that arrives while a worker is starting stops it too.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

from fastws import __version__
from fastws.cli._common import CLIError
from fastws.cli.serve import _listen_error, serve_one

log = logging.getLogger("fastws")

_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class Supervisor:
    """``--workers N``: N forked processes, each importing the app and listening on the same
    port with SO_REUSEPORT; the parent restarts a worker that dies and stops them all
    (SIGTERM, then SIGKILL after the shutdown timeout) on SIGINT/SIGTERM."""

    RESTART_WINDOW = 10.0   # a worker that dies sooner than this after starting counts as a crash loop
    MAX_FAST_CRASHES = 5

    def __init__(self, args: argparse.Namespace) -> None:
        import multiprocessing as mp

        self.args = args
        self.ctx = mp.get_context("fork")
        self.workers: dict[int, Any] = {}  # slot -> Process
        self.started: dict[int, float] = {}
        self.stopping = False
        self.fast_crashes = 0
        self.queue = self.ctx.SimpleQueue()
        self.url = ""
        self._reserve: socket.socket | None = None

    def _reserve_port(self) -> None:
        """Bind (without listening) with SO_REUSEPORT: a port held by a socket without
        SO_REUSEPORT fails here with one clear error, and port 0 becomes one concrete port
        that every worker then binds (a bound socket that does not listen gets no connections)."""
        a = self.args
        try:
            infos = socket.getaddrinfo(a.host, a.port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise CLIError(f"cannot resolve --host {a.host!r}: {exc}") from None
        family, type_, proto, _, addr = infos[0]
        sock = socket.socket(family, type_, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(addr)
        except OSError as exc:
            sock.close()
            raise _listen_error(a, exc) from None
        a.port = sock.getsockname()[1]
        self._reserve = sock

    def _child(self, slot: int) -> None:
        from fastws.bench import die_with_parent

        signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent stops us with SIGTERM
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # blocked across the fork (see _start)
        die_with_parent(signal.SIGTERM)  # graceful shutdown even when the parent is SIGKILLed
        if self._reserve is not None:
            self._reserve.close()
        code = 0
        try:
            def ready(server: Any) -> None:
                self.queue.put(("ready", slot, os.getpid(), server.url))

            serve_one(self.args, reuse_port=True, on_ready=ready)
        except CLIError as exc:
            self.queue.put(("error", slot, os.getpid(), str(exc)))
            code = exc.code
        except BaseException as exc:  # the parent reports it; a traceback helps the app's author
            log.exception("fastws: worker %d failed", slot)
            self.queue.put(("error", slot, os.getpid(), f"{type(exc).__name__}: {exc}"))
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)

    def _start(self, slot: int) -> Any:
        p = self.ctx.Process(target=self._child, args=(slot,), name=f"fastws-worker-{slot}")
        # A SIGTERM that reached the child between the fork and its own signal setup would run the
        # parent's handler (inherited with the fork), which only sets a flag: that worker would go
        # on serving until the supervisor's SIGKILL. Forked with the stop signals blocked, the child
        # receives such a signal once its own handlers are in place.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            p.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        self.workers[slot] = p
        self.started[slot] = time.monotonic()
        return p

    def _wait_ready(self, slots: list[int], timeout: float = 60.0) -> None:
        waiting = set(slots)
        deadline = time.monotonic() + timeout
        while waiting and not self.stopping:
            if time.monotonic() > deadline:
                raise CLIError("workers did not start in time", 1)
            if not self.queue.empty():
                kind, slot, pid, detail = self.queue.get()
                if kind == "ready":
                    log.info("fastws: worker %d ready (pid %d)", slot, pid)
                    self.url = detail
                    waiting.discard(slot)
                else:
                    raise CLIError(detail)
                continue
            for slot in list(waiting):
                p = self.workers[slot]
                if not p.is_alive() and self.queue.empty():
                    raise CLIError(f"worker {slot} exited during startup (exit code {p.exitcode})",
                                   p.exitcode if p.exitcode in (1, 2) else 1)
            time.sleep(0.01)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def run(self) -> int:
        a = self.args
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self._reserve_port()
            # the first worker alone: an import error is reported once, not N times
            self._start(0)
            self._wait_ready([0])
            for slot in range(1, a.workers):
                self._start(slot)
            self._wait_ready(list(range(1, a.workers)))
            if not self.stopping:
                pids = ",".join(str(p.pid) for p in self.workers.values())
                print(f"fastws {__version__} serving {a.app} on {self.url} with {a.workers} workers "
                      f"(pid {os.getpid()}, workers {pids})", flush=True)
            self._supervise()
            return 0 if self.fast_crashes < self.MAX_FAST_CRASHES else 1
        finally:
            self._stop_all()
            for s, h in old.items():
                signal.signal(s, h)
            if self._reserve is not None:
                self._reserve.close()

    def _supervise(self) -> None:
        from multiprocessing.connection import wait

        while not self.stopping:
            sentinels = {p.sentinel: slot for slot, p in self.workers.items()}
            ready = wait(list(sentinels), timeout=0.2)
            while not self.queue.empty():
                self.queue.get()  # "ready" of restarted workers
            for s in ready:
                slot = sentinels[s]
                p = self.workers[slot]
                p.join()
                if self.stopping:
                    break
                lived = time.monotonic() - self.started[slot]
                self.fast_crashes = self.fast_crashes + 1 if lived < self.RESTART_WINDOW else 0
                if self.fast_crashes >= self.MAX_FAST_CRASHES:
                    log.error("fastws: workers keep dying (worker %d exit code %s); stopping", slot, p.exitcode)
                    self.stopping = True
                    break
                log.warning("fastws: worker %d (pid %s) exited with code %s; restarting it", slot, p.pid, p.exitcode)
                self._start(slot)

    def _stop_all(self) -> None:
        live = [p for p in self.workers.values() if p.is_alive()]
        for p in live:
            try:
                os.kill(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        grace = (self.args.shutdown_timeout if self.args.shutdown_timeout is not None else 10.0) + 5.0
        deadline = time.monotonic() + grace
        for p in live:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in live:
            if p.is_alive():
                log.warning("fastws: worker pid %s did not stop in %.0f s; killing it", p.pid, grace)
                p.kill()
                p.join(1)
