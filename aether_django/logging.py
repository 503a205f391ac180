"""Structured logs: a formatter that writes each record as one JSON object.

The library passes the facts of a record as ``extra=`` fields, so they become keys
of the object: ``node`` and ``term`` on leadership, rebalance and failure records,
``moved`` and ``nodes`` on rebalances, ``failed`` (a list) on node failures.

LOGGING = {
    "version": 1,
    "formatters": {"json": {"()": "aether_django.logging.JSONFormatter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json"}},
    "loggers": {"aether_django": {"handlers": ["console"], "level": "INFO"}},
}
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JSONFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, extras, exception.

    Extras that JSON can hold (strings, numbers, booleans, None, lists and dicts of
    them) are written as they are; anything else as its ``repr``.
    """

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = _jsonable(value)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=repr)


def _jsonable(value: Any) -> Any:
    """``value`` if JSON can hold it, else its repr: a log line must always be written."""
    if isinstance(value, str | int | float | bool | None):
        return value
    try:
        json.dumps(value, default=repr)
    except (TypeError, ValueError):  # keys JSON cannot hold, or a cycle
        return repr(value)
    return value
