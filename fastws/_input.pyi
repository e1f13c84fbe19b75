"""Type stubs for a connection's read path (fastws/_input.pyx): a C-level base of Connection."""

from typing import Any

from fastws._output import Output

class Input(Output):
    """The read path and receive queue of a connection (use fastws.Connection)."""
    close_code: int
    close_reason: str
    latency: float
    def get_buffer(self, sizehint: int) -> Any: ...
    def buffer_updated(self, nbytes: int) -> None: ...
