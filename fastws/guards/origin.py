"""The Origin allow-list for WebSocket upgrades."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

from fastws.exceptions import HandshakeError
from fastws.handshake import Request

__all__ = ["OriginGuard"]


class OriginGuard:
    """Upgrades whose ``Origin`` is not listed get ``403 Forbidden``.

    Origins compare case-insensitively, without a trailing slash; an entry with
    ``*`` is a glob (``https://*.example.com``). A request without ``Origin``
    (not a browser) is refused too unless ``allow_missing``.

    Args:
        origins: the allowed origins, e.g. ``["https://example.com"]``.
        allow_missing: accept upgrades that carry no Origin header.
    """

    __slots__ = ("origins", "allow_missing", "_exact", "_globs")

    def __init__(self, origins: Iterable[str], allow_missing: bool = False) -> None:
        if isinstance(origins, str):
            origins = [origins]
        self.origins = [o.strip().rstrip("/").lower() for o in origins]
        bad = [o for o in self.origins if "://" not in o and o != "null"]
        if bad:
            raise ValueError(f"invalid origin {bad[0]!r} (expected scheme://host[:port])")
        self.allow_missing = allow_missing
        self._exact = {o for o in self.origins if "*" not in o}
        globs = [fnmatch.translate(o) for o in self.origins if "*" in o]
        self._globs = re.compile("|".join(globs)) if globs else None

    def allowed(self, origin: str | None) -> bool:
        if origin is None:
            return self.allow_missing
        o = origin.strip().rstrip("/").lower()
        return o in self._exact or (self._globs is not None and self._globs.match(o) is not None)

    def check(self, request: Request) -> None:
        """Raises ``HandshakeError(403)`` when the request's Origin is not allowed."""
        values = request.headers.get_all("origin")
        if len(values) > 1 or not self.allowed(values[0] if values else None):
            raise HandshakeError(403, "Forbidden")
