"""Type stubs for the endpoint counters (fastws/_stats.pyx)."""

STATUSES: tuple[int, ...]
"""The HTTP statuses counted one by one when a handshake is refused (others count as "other")."""
