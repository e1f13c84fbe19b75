"""Numbers for ``fastws bench``: percentiles, a log-scale latency histogram, merging.

Latencies are recorded raw (seconds, in an ``array('d')``: 8 bytes each, the
count is bounded by the run's own message cap) and reduced once at the end, so
percentiles are exact, not bucketed.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["percentiles", "histogram", "latency_summary", "MAX_SAMPLES"]

#: at most this many latency samples are kept per process (8 MB each 1M); beyond it every
#: k-th sample is kept (k doubles each time), so memory stays bounded on any run
MAX_SAMPLES = 4_000_000


class Samples:
    """A bounded recorder: ``add(seconds)`` (``array.append``, bound once by the listeners).

    When more than :data:`MAX_SAMPLES` are held, every second one is dropped in place
    (``stride`` doubles): percentiles then weigh later samples more, never memory."""

    __slots__ = ("data", "stride", "add")

    def __init__(self) -> None:
        self.data = array("d")
        self.stride = 1
        self.add = self.data.append

    def check(self) -> None:
        """Called from the ticker: thin the samples when over the cap."""
        if len(self.data) > MAX_SAMPLES:
            del self.data[1::2]
            self.stride *= 2


def percentiles(values: Sequence[float], qs: Iterable[float] = (50, 90, 99)) -> dict[str, float]:
    """Nearest-rank percentiles of ``values`` (already sorted or not), plus max and mean."""
    if not values:
        return {}
    data = sorted(values)
    n = len(data)
    out: dict[str, float] = {}
    for q in qs:
        rank = max(1, math.ceil(q / 100 * n))
        out[f"p{q:g}"] = data[rank - 1]
    out["max"] = data[-1]
    out["mean"] = math.fsum(data) / n
    return out


def latency_summary(values: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/max/mean in milliseconds (empty when there are no samples)."""
    return {k: v * 1000.0 for k, v in percentiles(values).items()}


def histogram(values: Sequence[float], buckets_per_decade: int = 10) -> list[dict[str, Any]]:
    """A log-scale histogram of latencies in ms: ``[{"le_ms": upper bound, "count": n}, ...]``
    (only non-empty buckets, in increasing order)."""
    counts: dict[int, int] = {}
    for v in values:
        ms = v * 1000.0
        k = math.ceil(math.log10(ms) * buckets_per_decade) if ms > 1e-4 else -4 * buckets_per_decade
        counts[k] = counts.get(k, 0) + 1
    return [{"le_ms": round(10 ** (k / buckets_per_decade), 6), "count": counts[k]} for k in sorted(counts)]
