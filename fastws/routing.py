"""Path routing for :class:`fastws.App`: ``/rooms/{name}`` patterns, matched in order.

A pattern is a path whose segments may be parameters:

- ``{name}`` matches one non-empty segment (no ``/``);
- ``{name:int}`` matches digits and is converted to ``int``;
- ``{name:path}`` matches the rest of the path, slashes included (may be empty).

Static paths are looked up in a dict; patterns are tried in registration order
and the first match wins.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

__all__ = ["compile_path", "Router"]

_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::(str|int|path))?\}")
_KINDS = {"str": "[^/]+", "int": "[0-9]+", "path": ".*"}


def compile_path(path: str) -> tuple[re.Pattern[str] | None, dict[str, Callable[[str], Any]]]:
    """Compile a route pattern.

    Returns:
        ``(regex, converters)``; ``regex`` is None for a static path.

    Raises:
        ValueError: the path does not start with ``/``, repeats a parameter name,
            or has a brace that is not a parameter.
    """
    if not path.startswith("/"):
        raise ValueError(f"route path must start with '/': {path!r}")
    regex = "^"
    pos = 0
    converters: dict[str, Callable[[str], Any]] = {}
    for m in _PARAM.finditer(path):
        literal = path[pos:m.start()]
        if "{" in literal or "}" in literal:
            raise ValueError(f"invalid parameter in route path {path!r}")
        name, kind = m.group(1), m.group(2) or "str"
        if name in converters:
            raise ValueError(f"parameter {name!r} appears twice in {path!r}")
        converters[name] = int if kind == "int" else str
        regex += re.escape(literal) + f"(?P<{name}>{_KINDS[kind]})"
        pos = m.end()
    tail = path[pos:]
    if "{" in tail or "}" in tail:
        raise ValueError(f"invalid parameter in route path {path!r}")
    if not converters:
        return None, {}
    return re.compile(regex + re.escape(tail) + "$"), converters


class Router:
    """Maps a request path to the entry registered for it and the path parameters.

    Entries are opaque to the router (the App stores its endpoints in them).
    """

    __slots__ = ("_static", "_patterns")

    def __init__(self) -> None:
        self._static: dict[str, Any] = {}
        self._patterns: list[tuple[str, re.Pattern[str], dict[str, Callable[[str], Any]], Any]] = []

    def entry(self, path: str, factory: Callable[[], Any]) -> Any:
        """The entry for exactly this pattern, created with ``factory()`` the first time."""
        regex, converters = compile_path(path)
        if regex is None:
            found = self._static.get(path)
            if found is None:
                found = self._static[path] = factory()
            return found
        for p, _, _, e in self._patterns:
            if p == path:
                return e
        e = factory()
        self._patterns.append((path, regex, converters, e))
        return e

    def match(self, path: str) -> tuple[Any, dict[str, Any]] | None:
        """``(entry, params)`` for ``path``, or None when nothing matches."""
        found = self._static.get(path)
        if found is not None:
            return found, {}
        for _, regex, converters, e in self._patterns:
            m = regex.match(path)
            if m is not None:
                params: dict[str, Any] = {}
                for name, value in m.groupdict().items():
                    params[name] = converters[name](value)
                return e, params
        return None

    def __len__(self) -> int:
        return len(self._static) + len(self._patterns)
