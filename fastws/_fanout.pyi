"""Type stubs for fan-out (fastws/_fanout.pyx)."""

from collections.abc import Iterable

from fastws._protocol import Connection

def broadcast(connections: Iterable[Connection], data: str | bytes | bytearray | memoryview, *,
              exclude: Connection | None = None, max_buffer: int = 0) -> list[Connection]:
    """Frame ``data`` once and send it to every open connection (corked to the end of the loop turn);
    returns the connections skipped because their buffered bytes would exceed ``max_buffer``."""

def flush(connections: Iterable[Connection]) -> None:
    """Write now what ``broadcast()`` queued for these connections in this loop turn (one send each)."""
