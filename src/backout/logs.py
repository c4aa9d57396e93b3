"""The control plane's logs as JSON lines: one object per `logging` record.

The code logs through the standard library (`logging.getLogger("backout.…")`, `extra={...}`);
`configure()` installs one handler on the root logger whose formatter renders each record as

    {"timestamp": "2026-01-02T03:04:05.678Z", "level": "WARNING", "logger": "backout.supervisor",
     "event": "periodic tick failed", "queue": "processing", "exception": "Traceback …"}

on a single line: the message is interpolated as before (so `grep "rolled back"` still finds it),
`extra` fields become keys, a traceback is one escaped string. structlog rather than powertools'
Logger: its ProcessorFormatter renders records of plain `logging` loggers, which is all the control
plane has, while powertools' Logger is built around a Lambda invocation (its own logger objects,
service, cold start and request-id keys).
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import structlog

from backout.redact import REDACTOR

__all__ = ["configure", "json_formatter"]

FIRST_KEYS = ("timestamp", "level", "logger", "event")


def _from_record(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """timestamp (of the record, UTC, ms), level and logger name, from the LogRecord itself."""
    record: logging.LogRecord = event["_record"]
    created = datetime.fromtimestamp(record.created, tz=UTC)
    event["timestamp"] = created.strftime("%Y-%m-%dT%H:%M:%S.") + f"{created.microsecond // 1000:03d}Z"
    event["level"] = record.levelname
    event["logger"] = record.name
    return event


def _no_formatter_leftovers(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Drop the attributes another handler's Formatter wrote on the shared record (ExtraAdder would
    take them for extras); logging forbids them as `extra` keys, so nothing of the caller's is lost."""
    event.pop("message", None)
    event.pop("asctime", None)
    return event


def _stack(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """`stack_info=True`: the record already holds the formatted stack; keep it as "stack"."""
    if "stack_info" in event:
        event["stack"] = event.pop("stack_info")
    return event


def _first_keys_first(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """The fixed keys lead every line, the record's extra fields follow."""
    head = {k: event.pop(k) for k in FIRST_KEYS if k in event}
    return {**head, **event}


def json_formatter() -> structlog.stdlib.ProcessorFormatter:
    """A `logging.Formatter` that renders any record as one JSON object (no newline inside)."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[_from_record, structlog.stdlib.ExtraAdder(), _no_formatter_leftovers],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,  # exc_info → "exception": the formatted traceback
            _stack,
            _first_keys_first,
            structlog.processors.JSONRenderer(ensure_ascii=False),  # "v6 → v7" stays readable
        ],
    )


_installed: logging.Handler | None = None  # the handler configure() added (a second call replaces it)


def configure(
    level: int | str = logging.WARNING,
    stream: TextIO | None = None,
    *,
    file: str | os.PathLike[str] | None = None,
) -> logging.Handler:
    """Send every `logging` record at `level` or above, `backout.*` and libraries alike (as
    logging.basicConfig did), to `stream` (default stderr) or appended to `file`, as JSON lines.

    Idempotent: calling it again replaces the handler it installed. Returns that handler."""
    global _installed
    if stream is not None and file is not None:
        raise ValueError("configure() writes to a stream or a file, not both")
    handler: logging.Handler = (
        logging.FileHandler(file, encoding="utf-8") if file is not None else logging.StreamHandler(stream or sys.stderr)
    )
    handler.setFormatter(json_formatter())
    handler.addFilter(REDACTOR)  # every record, whichever logger wrote it: no secret reaches a log file
    root = logging.getLogger()
    if _installed is not None:
        root.removeHandler(_installed)
        _installed.close()
    root.addHandler(handler)
    root.setLevel(level)
    _installed = handler
    return handler
