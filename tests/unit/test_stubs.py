"""The hand-written stubs next to the extensions match what the extensions export (mypy.stubtest)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_stubs_match_the_extensions():
    pytest.importorskip("mypy")
    result = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "fastws._frames", "fastws._stats", "fastws._message", "fastws._transport",
         "fastws._endpoint", "fastws._output", "fastws._input", "fastws._fanout", "fastws._protocol", "fastws._limits",
         "fastws._batch",
         "--allowlist", str(ROOT / "tests" / "stubtest_allowlist.txt")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
