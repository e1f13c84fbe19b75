"""What the end-to-end benchmark scripts share: a ``fastws serve`` process pinned to CPU 0 (the
load runs on CPU 1 when there are two) and its CPU time from /proc."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class ServerProcess:
    """``fastws serve TARGET --port 0 FLAGS...`` from the repository root, started and read until
    it prints its URL (``url``, ``host``, ``port``, ``address``)."""

    def __init__(self, target: str, *flags: str) -> None:
        cmd = [sys.executable, "-m", "fastws", "--log-level", "warning", "serve", target, "--port", "0", *flags]
        if os.cpu_count() and os.cpu_count() > 1:
            cmd = ["taskset", "-c", "0", *cmd]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.url = line.split(" on ")[1].split()[0]
        host, port = self.url.rsplit("/", 1)[-1].rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.address = (host, self.port)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def setup_load_client() -> None:
    """Pin this (load client) process to CPU 1 when there are two, and run it on uvloop if present."""
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
