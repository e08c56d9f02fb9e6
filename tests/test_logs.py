"""RELAY_LOG_LEVEL / RELAY_LOG_FORMAT, the JSON formatter and the access log, unit by unit."""

from __future__ import annotations

import io
import json
import logging

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from hypothesis import given
from hypothesis import strategies as st

from relay.logs import FORMAT, QUIET_PATHS, AccessLogger, EscapingFormatter, json_formatter
from relay.settings import LogSettings, SettingsError


@pytest.mark.parametrize("env,terminal,expected", [
    ({}, False, LogSettings("INFO", "json")),
    ({}, True, LogSettings("INFO", "text")),
    ({"RELAY_LOG_FORMAT": "text"}, False, LogSettings("INFO", "text")),
    ({"RELAY_LOG_FORMAT": " JSON "}, True, LogSettings("INFO", "json")),
    ({"RELAY_LOG_LEVEL": "debug"}, False, LogSettings("DEBUG", "json")),
    ({"RELAY_LOG_LEVEL": "", "RELAY_LOG_FORMAT": ""}, True, LogSettings("INFO", "text")),
])
def test_log_settings_defaults_and_values(env, terminal, expected):
    assert LogSettings.from_env(env, terminal=terminal) == expected


@pytest.mark.parametrize("env,variable", [
    ({"RELAY_LOG_LEVEL": "verbose"}, "RELAY_LOG_LEVEL"),
    ({"RELAY_LOG_LEVEL": "10"}, "RELAY_LOG_LEVEL"),
    ({"RELAY_LOG_FORMAT": "logfmt"}, "RELAY_LOG_FORMAT"),
])
def test_a_bad_log_variable_is_named(env, variable):
    with pytest.raises(SettingsError, match=variable):
        LogSettings.from_env(env, terminal=False)


def record(msg: str, *args: object, exc: BaseException | None = None, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("relay.test", logging.WARNING, __file__, 1, msg, args,
                            (type(exc), exc, exc.__traceback__) if exc else None)
    rec.__dict__.update(extra)
    return rec


@given(message=st.text(), ticket=st.text())
def test_a_json_line_is_one_line_whatever_the_message_holds(message, ticket):
    line = json_formatter().format(record("alert %s", message, ticket=ticket))
    assert "\n" not in line and "\r" not in line and "\u2028" not in line and "\x85" not in line
    doc = json.loads(line)
    assert doc["message"] == f"alert {message}" and doc["ticket"] == ticket
    assert doc["level"] == "WARNING" and doc["logger"] == "relay.test" and doc["time"].endswith("+00:00")


def test_a_traceback_is_one_field_of_one_line():
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError as exc:
        line = json_formatter().format(record("failed", exc=exc))
    assert len(line.splitlines()) == 1
    doc = json.loads(line)
    assert doc["exc_info"].startswith("Traceback") and doc["exc_info"].endswith("RuntimeError: boom\nsecond line")


def test_text_lines_keep_escaping_control_characters():
    line = EscapingFormatter(FORMAT).format(record("alert %s", "a\nb\x1b[31m"))
    assert line.endswith("alert a\\nb\\x1b[31m") and len(line.splitlines()) == 1


def access_lines(path: str, status: int = 200) -> list[logging.LogRecord]:
    logger = logging.getLogger("test.access")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        request = make_mocked_request("POST", path + "?code=abc", headers={"Authorization": "Bearer secret"})
        AccessLogger(logger, "").log(request, web.Response(status=status, text="x"), 0.0123)
    finally:
        logger.removeHandler(handler)
    return [json.loads(line) for line in stream.getvalue().splitlines()]


@pytest.mark.parametrize("path", sorted(QUIET_PATHS))
def test_the_probes_get_no_access_line(path):
    assert access_lines(path) == []


def test_an_access_line_has_method_path_status_and_latency_but_no_query_or_header():
    [line] = access_lines("/alerts", 202)
    assert (line["method"], line["path"], line["status"], line["latency_ms"]) == ("POST", "/alerts", 202, 12.3)
    assert "code=abc" not in json.dumps(line) and "secret" not in json.dumps(line)


def test_the_fault_suite_log_scan_finds_tracebacks_in_either_format(tmp_path):
    from tests import relay_log

    unexpected = json_formatter().format(record("boom", exc=_raised(RuntimeError("bad"))))
    parser_refusal = "Traceback (most recent call last):\n  ...\naiohttp.http_exceptions.BadStatusLine: x"
    expected = json.dumps({"level": "ERROR", "logger": "aiohttp.server", "message": "x", "exc_info": parser_refusal})
    dry_run_output = json.dumps({"target": "dry_run", "call": "create", "text": "not a log record"})
    text = ("2026-01-01 INFO relay.app ok\nTraceback (most recent call last):\n  File \"x\", line 1\n"
            "KeyError: 'k'\n")
    log = tmp_path / "relay.log"
    log.write_text("\n".join([unexpected, expected, dry_run_output]) + "\n" + text)
    found = relay_log.tracebacks(log)
    assert len(found) == 2, found
    assert "RuntimeError: bad" in found[0] and "KeyError: 'k'" in found[1]
    assert relay_log.count(log, "boom") == 1 and relay_log.count(log, "not a log record") == 0


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught
