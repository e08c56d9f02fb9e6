"""What every vendor target shares: Retry-After, truncation, key guards, CI references, token reuse, and
which failures got no answer (the call may have been applied)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import pytest

from relay.targets import Incident, TargetError, truncate
from relay.targets.vendor_api import (
    CIRef,
    TokenAuth,
    VendorHTTP,
    checked_key,
    ci_references,
    parse_retry_after,
)
from tests.fakes.receiver import RecordingReceiver

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
VM = "/subscriptions/s1/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/web-01"
DB = "/subscriptions/s1/resourcegroups/rg/providers/microsoft.sql/servers/sql-01"


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        (" 5 ", 5.0),
        ("0", 0.0),
        ("-3", 0.0),
        ("Thu, 01 Jan 2026 12:00:30 GMT", 30.0),
        ("Thu, 01 Jan 2026 11:00:00 GMT", 0.0),
        (None, None),
        ("", None),
        ("soon", None),
        ("nan", None),
    ],
)
def test_retry_after_is_read_as_seconds_or_an_http_date(header, seconds):
    assert parse_retry_after(header, now=NOW) == seconds


def test_truncate_keeps_short_text_and_marks_cut_text_within_the_limit():
    assert truncate("short", 10) == "short"
    cut = truncate("x" * 50, 20)
    assert len(cut) == 20 and cut.endswith("[truncated]")
    assert truncate("abcdef", 3) == "abc"


def incident(key: str = "k", cis: tuple[str, ...] = (), resource_ids: tuple[str, ...] = ()) -> Incident:
    return Incident(key, "s", "d", None, configuration_items=cis, resource_ids=resource_ids)


@pytest.mark.parametrize("key", ["", " ", "\t", "k ", " k"])
def test_an_empty_or_padded_key_is_refused_for_good(key):
    with pytest.raises(TargetError) as info:
        checked_key("t", incident(key), max_length=100)
    assert not info.value.retryable


def test_a_key_over_the_field_length_or_with_forbidden_characters_is_refused():
    with pytest.raises(TargetError, match="over the 10"):
        checked_key("t", incident("k" * 11), max_length=10)
    with pytest.raises(TargetError, match="'\\^'"):
        checked_key("t", incident("a^b"), max_length=10, forbidden="^")
    assert checked_key("t", incident("abc-1.2_3"), max_length=10, forbidden="^") == "abc-1.2_3"


@pytest.mark.parametrize("char", ["]", "\\", "-", "^", "'", '"'])
def test_forbidden_characters_are_taken_literally_even_where_a_pattern_would_read_them(char):
    with pytest.raises(TargetError, match="contains"):
        checked_key("t", incident(f"a{char}b"), max_length=10, forbidden="]\\-^'\"")
    assert checked_key("t", incident("ab.c"), max_length=10, forbidden="]\\-^'\"") == "ab.c"


@pytest.mark.parametrize("key", ["a\x00b", "a\x1fb", "a\nb"])
def test_a_key_with_a_control_character_is_refused_for_good(key):
    with pytest.raises(TargetError, match="contains") as info:
        checked_key("t", incident(key), max_length=10, forbidden="^")
    assert not info.value.retryable


def test_ci_references_pair_names_with_the_arm_id_of_the_resource_they_name():
    refs = ci_references(incident(cis=("web-01", "printer-7"), resource_ids=(VM.lower(), DB)))
    assert refs == [CIRef(VM.lower(), "web-01"), CIRef(None, "printer-7")]


def test_ci_references_drop_duplicates_in_any_case_and_blank_items():
    refs = ci_references(incident(cis=(VM, VM.upper(), " ", DB)))
    assert refs == [CIRef(VM, "web-01"), CIRef(DB, "sql-01")]


async def test_a_burst_of_401s_on_one_stale_token_leads_to_one_login():
    logins = 0

    async def login(http):
        nonlocal logins
        logins += 1
        await asyncio.sleep(0)
        return f"token-{logins}", 3600.0

    auth = TokenAuth("Bearer", login, default_lifetime=3600)
    http = VendorHTTP(
        target="t",
        base_url="http://127.0.0.1:9",
        timeout_seconds=1,
        max_connections=1,
        auth=auth,
        logger=logging.getLogger("test"),
    )
    stale = await auth.header(http)
    for _ in range(5):
        assert auth.expired(stale)
    headers = await asyncio.gather(*(auth.header(http) for _ in range(5)))
    assert set(headers) == {"Bearer token-2"} and logins == 2


async def test_a_connection_refused_is_retryable():
    http = VendorHTTP(
        target="t",
        base_url="http://127.0.0.1:9",
        timeout_seconds=1,
        max_connections=1,
        auth=None,
        logger=logging.getLogger("test"),
    )
    try:
        with pytest.raises(TargetError) as info:
            await http.request("GET", "/x")
    finally:
        await http.close()
    assert info.value.retryable and info.value.status is None


@pytest.fixture
async def receiver():
    server = RecordingReceiver()
    await server.start()
    yield server
    await server.stop()


async def call(base_url: str) -> TargetError:
    """POST raw bytes; the TargetError that the call (or its answer, through `failure`) ends in."""
    http = VendorHTTP(target="t", base_url=base_url, timeout_seconds=0.3, max_connections=1, auth=None,
                      logger=logging.getLogger("test"))
    try:
        with pytest.raises(TargetError) as info:
            reply = await http.request("POST", "/hook", data=b"{}", headers={"Content-Type": "application/json"})
            raise http.failure(reply, "POST /hook")
    finally:
        await http.close()
    return info.value


async def test_a_refused_connection_sent_nothing_so_it_is_not_unanswered():
    error = await call("http://127.0.0.1:9")
    assert error.retryable and not error.unanswered


@pytest.mark.parametrize(("fault", "kw"), [("slow", {"delay": 5}), ("reset", {}), ("reset_after", {})])
async def test_a_call_that_got_no_answer_is_unanswered(receiver, fault, kw):
    receiver.inject(fault, **kw)
    error = await call(receiver.url)
    assert error.retryable and error.unanswered and error.status is None, str(error)


@pytest.mark.parametrize("status", [400, 503])
async def test_any_answer_is_not_unanswered(receiver, status):
    receiver.inject("status", status=status)
    error = await call(receiver.url)
    assert error.status == status and not error.unanswered
