"""How the relay's text log is written: control characters escaped in every line, and aiohttp's report of a
malformed request cut to one line without headers (a bad header line would otherwise put a token in the log)."""

from __future__ import annotations

import logging
import re

from aiohttp.http_exceptions import HttpProcessingError

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
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


def configure(level: str) -> None:
    """The relay's logging: one stream handler with the escaping formatter."""
    handler = logging.StreamHandler()
    handler.setFormatter(EscapingFormatter(FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    install_request_filter()


def install_request_filter() -> None:
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestFilter) for f in server.filters):
        server.addFilter(MalformedRequestFilter())
