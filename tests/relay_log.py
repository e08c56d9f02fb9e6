"""Reading a relay's log in either RELAY_LOG_FORMAT, for the tests that scan it: JSON lines (the default
when the log goes to a file, as in every test) or text lines, where a traceback spans several lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# aiohttp's own refusals of malformed HTTP (a 400 from its parser): expected, not a relay error.
EXPECTED_EXCEPTIONS = ("aiohttp.http_exceptions.",)


TEXT = "_text_line"  # marks a record read from a text line


def records(path: Path) -> list[dict[str, Any]]:
    """One dict per log record: a JSON log line as it is; a text line as {"message": line, TEXT: True}.
    Other JSON lines (the default dry-run target writes its calls to stdout, which tests send to the same
    file) are not log records and are left out."""
    out: list[dict[str, Any]] = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                doc = json.loads(line)
            except ValueError:
                doc = None
            if isinstance(doc, dict):
                if "level" in doc and "logger" in doc:
                    out.append(doc)
                continue
        out.append({"message": line, TEXT: True})
    return out


def messages(path: Path) -> list[str]:
    return [str(r.get("message", "")) for r in records(path)]


def count(path: Path, needle: str) -> int:
    """How many records' messages contain `needle`."""
    return sum(needle in m for m in messages(path))


def tracebacks(path: Path) -> list[str]:
    """Tracebacks nothing expected: a JSON record's `exc_info`, or a text traceback's lines."""
    found = []
    recs = records(path)
    for r in recs:
        exc = r.get("exc_info")
        if isinstance(exc, str) and not exc.rstrip().splitlines()[-1].startswith(EXPECTED_EXCEPTIONS):
            found.append(f"{r.get('message')}\n{exc}")
    lines = [r["message"] for r in recs if r.get(TEXT)]
    for i, line in enumerate(lines):
        if not line.startswith("Traceback (most recent call last)"):
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j][:1] not in (" ", "\t")), len(lines) - 1)
        if not lines[end].startswith(EXPECTED_EXCEPTIONS):
            found.append("\n".join([*lines[max(0, i - 1):i + 1], "  ...", *lines[end - 2:end + 1]]))
    return found
