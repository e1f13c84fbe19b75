"""Type stubs for fastws/bench/_echo.pyx."""

from array import array
from typing import Any

def now() -> float: ...

class EchoConn:
    load: Any
    conn: Any
    payload: Any
    sends: Any
    finished_ok: bool
    left: int
    n: int
    bad: int
    size: int
    t: float
    def __init__(self, load: Any, latencies: array[float]) -> None: ...
    def on_message(self, ws: Any, msg: Any) -> None: ...
    def on_close(self, ws: Any, code: int, reason: str) -> None: ...
