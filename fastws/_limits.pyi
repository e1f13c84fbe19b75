"""Type stubs for the token buckets (fastws/_limits.pyx)."""

from collections.abc import Hashable

__all__ = ["TokenBucket", "BucketTable", "MessageGate", "monotonic"]

def monotonic() -> float: ...

class TokenBucket:
    rate: float
    capacity: float
    tokens: float
    last: float
    banned_until: float
    def __init__(self, rate: float, capacity: float, now: float = -1.0) -> None: ...
    def hit(self, now: float = -1.0, cost: float = 1.0, ban: float = 0.0) -> float: ...

class BucketTable:
    rate: float
    capacity: float
    ban: float
    idle_after: float
    max_entries: int
    evicted: int
    forced: int
    limited: int
    def __init__(self, rate: float, capacity: float, max_entries: int = 100000, ban: float = 0.0) -> None: ...
    def hit(self, key: Hashable, now: float = -1.0, cost: float = 1.0) -> float: ...
    def sweep(self, now: float = -1.0, limit: int = -1) -> int: ...
    def get(self, key: Hashable) -> TokenBucket | None: ...
    def __len__(self) -> int: ...
    def __contains__(self, key: object, /) -> bool: ...
    def clear(self) -> None: ...

class MessageGate:
    bucket: TokenBucket | None
    ban: float
    users: BucketTable | None
    user_key: Hashable | None
    limited: int
    def __init__(self, bucket: TokenBucket | None = None, ban: float = 0.0, users: BucketTable | None = None,
                 user_key: Hashable | None = None) -> None: ...
    def check(self) -> float: ...
    def notice_due(self, interval: float) -> bool: ...
