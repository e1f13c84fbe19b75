"""Type stubs for fastws/bench/_listeners.pyx."""

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

class FanState:
    load: Any
    reached: array[int]
    nsubs: int
    max_pubs: int
    size: int
    def __init__(self, load: Any, reached: array[int], max_pubs: int, size: int) -> None: ...

class FanSub:
    conn: Any
    finished_ok: bool
    verify: bool
    n: int
    @property
    def load(self) -> Any: ...
    def __init__(self, state: FanState) -> None: ...
    def on_message(self, ws: Any, msg: Any) -> None: ...
    def on_close(self, ws: Any, code: int, reason: str) -> None: ...
