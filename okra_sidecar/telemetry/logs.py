"""Logs: text on a terminal, else one JSON object per line with the trace and span ids."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from opentelemetry import trace

from okra_sidecar.config import TelemetrySettings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# LogRecord's own attributes; anything else on a record came in through `extra=` and is kept.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "message", "trace_id", "span_id", ...}` per line.

    trace_id and span_id are the W3C hex forms, as trace backends show them, taken from the
    span current when the record is formatted (handlers format in the logging call's context).
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            entry["trace_id"] = f"{span_context.trace_id:032x}"
            entry["span_id"] = f"{span_context.span_id:016x}"
            entry["trace_flags"] = f"{int(span_context.trace_flags):02x}"
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        return json.dumps(entry, default=str, ensure_ascii=False)


def setup_logging(settings: TelemetrySettings, *, stream: TextIO | None = None) -> None:
    """Send the root logger's records to stderr as JSON lines or text, at the set level.

    `auto` writes text to a terminal, where a person reads it, and JSON lines anywhere else,
    where a collector parses them.
    """
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    log_format = settings.log_format
    if log_format == "auto":
        log_format = "text" if stream.isatty() else "json"
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)


__all__ = ["JsonFormatter", "setup_logging"]
