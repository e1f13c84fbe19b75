"""Logging for the ``fastws`` command: ``--log-level`` and ``--log-format plain|json``.

:func:`setup_logging` replaces the root logger's handlers with one :class:`_StderrHandler`,
so every ``fastws.*`` logger (the server's, the access log ``fastws.access``, the
supervisor's) ends up on stderr in one format. With ``json`` each record is one line
made by :class:`JSONFormatter`, which also copies the access log's extra fields
(``client``, ``method``, ``path``, ``status``, ``close_code``, ``duration_ms``) into the
object.

The handler looks ``sys.stderr`` up at every record instead of keeping the stream it saw
when it was made, so a caller that swaps or closes stderr (a test runner running
:func:`fastws.cli.main` in-process) never gets a write to a closed file.
"""

from __future__ import annotations

import datetime as _dt
import logging
import sys
from typing import Any


class JSONFormatter(logging.Formatter):
    """One JSON object per line: time (UTC ISO-8601), level, logger, message, pid, and the
    exception's traceback as ``exc`` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        import orjson

        doc: dict[str, Any] = {
            "time": _dt.datetime.fromtimestamp(record.created, _dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        for key in _ACCESS_FIELDS:  # the access log's fields (logger fastws.access)
            value = getattr(record, key, None)
            if value is not None:
                doc[key] = value
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode("utf-8")


_ACCESS_FIELDS = ("client", "method", "path", "status", "close_code", "duration_ms")


LOG_LEVELS = ["debug", "info", "warning", "error", "critical"]


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of each record (not the stream of the
    moment the handler was made, which a caller such as a test runner may have closed since)."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override,unused-ignore]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def setup_logging(level: str = "info", fmt: str = "plain") -> None:
    """Log to stderr at ``level`` in the ``plain`` or ``json`` format (replaces earlier handlers)."""
    handler = _StderrHandler()
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
