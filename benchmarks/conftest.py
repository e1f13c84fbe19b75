"""Micro-benchmarks (pytest-benchmark). Run: .venv/bin/python -m pytest benchmarks --benchmark-only

Every run prints the environment so numbers can be compared."""

import platform

import Cython

import fastws
from fastws import _frames


def pytest_report_header(config):
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return [f"fastws {fastws.__version__}, Python {platform.python_version()}, Cython {Cython.__version__}, "
            f"mask kernel {_frames.mask_impl()}, CPU {cpu}"]
