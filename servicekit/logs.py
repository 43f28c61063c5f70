"""Structured logs: one JSON object a line, with the nameko call id.

Log calls in Warmi pass ids, codes and error class names only; this module
adds the worker's context so that a line can be followed across services.
"""
from __future__ import annotations

import json
import logging
import threading
from datetime import datetime, timezone

_context = threading.local()  # green-local once eventlet has patched threading

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def bind(**fields) -> None:
    _context.fields = fields


def clear() -> None:
    _context.fields = {}


def current() -> dict:
    return dict(getattr(_context, "fields", None) or {})


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(current())
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["error"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _DropPayloads(logging.Filter):
    """nameko logs a whole RPC reply at DEBUG; a case read carries survivor
    data, so that line never reaches a handler, at any level."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("RPC reply event complete")


_guard = _DropPayloads()


def guard_payload_logs() -> None:
    logger = logging.getLogger("nameko.rpc")
    if _guard not in logger.filters:
        logger.addFilter(_guard)


def configure(level: str = "INFO") -> None:
    """Send every logger to stderr as JSON lines."""
    guard_payload_logs()
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # eventlet.wsgi writes access lines itself; amqp chatter is noise here
    logging.getLogger("amqp").setLevel(logging.WARNING)
