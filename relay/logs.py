"""How the relay logs: JSON (one object per line, python-json-logger) or text with control characters
escaped, aiohttp's report of a malformed request cut to one line without headers (a bad header line would
otherwise put a token in the log), and an access log that leaves out the probes."""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web import BaseRequest, StreamResponse
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonEncoder, JsonFormatter

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
# The fields a JSON line carries beside time, level, logger and message, where they apply (passed with
# `extra=` at the log call): what an operator filters on. Documented in README.md ("Logs").
FIELDS = ("alert_key", "event_key", "condition", "target", "ticket", "ticket_key", "subject", "link", "outcome",
          "latency_ms", "status", "field")
# Probed every few seconds by the platform: a line each would drown the log.
QUIET_PATHS = frozenset({"/healthz", "/readyz"})
# C0 controls (newline, carriage return, ESC ...), DEL and C1 controls: a logged alert field holding one
# could forge a log line or drive a terminal.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class EscapingFormatter(logging.Formatter):
    """The message with its control characters escaped (\\n, \\x1b); tracebacks keep their own lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


# A record's own attributes (LogRecord's, and what formatting adds): everything else on it came as `extra=`.
_RECORD_ATTRS = frozenset(RESERVED_ATTRS) | frozenset(logging.makeLogRecord({}).__dict__) | {"message"}


class LineJsonFormatter(JsonFormatter):
    """python-json-logger's object, built in one pass: its generic path (format-string fields, renames,
    defaults, static fields, a datetime through the encoder's fallback) cost ~3x the JSON encoding itself,
    on every line the relay writes at INFO (one per accepted alert, one per delivery, one per request).
    One encoder, made once: python-json-logger's own (its fallback for values JSON has no type for)."""

    def __init__(self) -> None:
        super().__init__(json_ensure_ascii=True)
        self._encoder = JsonEncoder(ensure_ascii=True)

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {"level": record.levelname, "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            data["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exc_info"] = record.exc_text
        if record.stack_info:
            data["stack_info"] = self.formatStack(record.stack_info)
        for key, value in record.__dict__.items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                data[key] = value
        data["time"] = datetime.fromtimestamp(record.created, tz=UTC).isoformat()
        return self._encoder.encode(data)


def json_formatter() -> logging.Formatter:
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the `extra=` fields, and a
    traceback as `exc_info` (a string). JSON escapes every control character (ensure_ascii also escapes
    C1 controls and U+2028/U+2029), so no field can break a line."""
    return LineJsonFormatter()


class MalformedRequestFilter(logging.Filter):
    """aiohttp logs a request its parser refused with the exception, whose text quotes the offending
    header line (a token, say) and an 11-line traceback. Keep one line: who, and what kind of error."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg = "refused a malformed request from %s: %s (%s)"
            record.args = (remote, type(exc).__name__, exc.code)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class AccessLogger(AbstractAccessLogger):
    """One line per request, except the probes (QUIET_PATHS). The path without its query string (a
    query could carry a code or a key) and no header at all: an Authorization header never gets here."""

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        if request.path in QUIET_PATHS:
            return
        self.logger.info(
            '%s "%s %s" %d %d %.6fs', request.remote, request.method, request.path, response.status,
            response.body_length, time,
            extra={"remote": request.remote, "method": request.method, "path": request.path,
                   "status": response.status, "latency_ms": round(time * 1000, 3)},
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


def configure(level: str, fmt: str = "text", stream: TextIO | None = None) -> None:
    """The relay's logging: one stream handler (stderr by default), JSON or escaped text."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(json_formatter() if fmt == "json" else EscapingFormatter(FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    install_request_filter()


def install_request_filter() -> None:
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestFilter) for f in server.filters):
        server.addFilter(MalformedRequestFilter())
