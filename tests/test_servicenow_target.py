"""The ServiceNow target against the fake instance: Table API calls, guards, CI binding, failures."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.targets import CHANGES_LIMIT, TICKET_STATES, Incident, Ticket, TicketChange, can_sync, servicenow
from relay.targets.target_config import TargetConfigError
from tests.conftest import expect_error
from tests.fakes.servicenow import FakeServiceNow

KEY = "5b6c1c8e-0b7a-4a41-9f43-2d1f5a9f6c11"
SUB = "/subscriptions/11111111-2222-3333-4444-555555555555"
VM = f"{SUB}/resourceGroups/RG-Web/providers/Microsoft.Compute/virtualMachines/web-01"
DB = f"{SUB}/resourcegroups/rg-data/providers/microsoft.sql/servers/sql-01"


def an_incident(
    key: str = KEY, cis: tuple[str, ...] = (), resource_ids: tuple[str, ...] = (), **fields: Any
) -> Incident:
    return Incident(
        resource_ids=resource_ids,
        correlation_key=key,
        summary="CPU over 90% on web-01",
        description="Metric alert 'cpu-high' fired at 2026-01-01T10:00:00Z",
        severity="Sev2",
        fields=fields,
        configuration_items=cis,
        fired_at="2026-01-01T10:00:00Z",
    )


def make_target(
    fake: FakeServiceNow, auth: dict[str, Any] | None = None, **options: Any
) -> servicenow.ServiceNowTarget:
    cfg = {
        "kind": "servicenow",
        "base_url": fake.url,
        "auth": auth or {"type": "basic", "username": fake.username, "password_env": "SN_PASSWORD"},
        "timeout_seconds": 5,
        **options,
    }
    env = {"SN_PASSWORD": fake.password, "SN_CLIENT_SECRET": fake.client_secret}
    return servicenow.from_config("sn-test", cfg, env=env)


OAUTH = {"type": "oauth", "client_id": "relay-client", "client_secret_env": "SN_CLIENT_SECRET"}


@pytest.fixture
async def fake() -> AsyncIterator[FakeServiceNow]:
    server = FakeServiceNow()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def target(fake: FakeServiceNow) -> AsyncIterator[servicenow.ServiceNowTarget]:
    t = make_target(fake)
    yield t
    await t.close()


# -- create ----------------------------------------------------------------------------------------


async def test_create_sets_correlation_id_display_and_route_fields(fake, target):
    ticket = await target.create(
        an_incident(
            assignment_group="Cloud Ops", category="Software", caller="azure.monitor", impact=2, urgency=1
        )
    )
    record = fake.incidents[ticket.id]
    assert ticket.number == record["number"] and not ticket.resolved
    assert record["correlation_id"] == KEY
    assert record["correlation_display"] == "Azure Monitor"
    assert record["short_description"] == "CPU over 90% on web-01"
    assert (record["impact"], record["urgency"]) == ("2", "1"), (
        "impact/urgency must come from the route fields"
    )
    assert record["assignment_group"] == "Cloud Ops" and record["category"] == "Software"
    assert record["caller_id"] == "azure.monitor", "the route field 'caller' maps to caller_id"
    assert (
        fake.calls_to("/api/now/table/incident", "POST")[0]
        .headers["Content-Type"]
        .startswith("application/json")
    )


async def test_create_truncates_a_long_summary_with_a_marker(fake, target):
    long = Incident(correlation_key=KEY, summary="x" * 500, description="d", severity="Sev3")
    ticket = await target.create(long)
    short = fake.incidents[ticket.id]["short_description"]
    assert len(short) == 160 and short.endswith("[truncated]")


async def test_route_field_cannot_overwrite_the_correlation_id(fake, target):
    ticket = await target.create(an_incident(correlation_id="something-else", state="7"))
    assert fake.incidents[ticket.id]["correlation_id"] == KEY
    assert fake.incidents[ticket.id]["state"] == "1"


async def test_create_binds_ci_by_object_id_ignoring_case(fake, target):
    ci = fake.add_ci("web-01", object_id=VM.lower(), sys_class_name="cmdb_ci_vm_instance")
    ticket = await target.create(an_incident(cis=(VM,)))
    assert fake.incidents[ticket.id]["cmdb_ci"] == ci["sys_id"]


async def test_create_binds_ci_by_name_when_no_object_id_matches(fake, target):
    ci = fake.add_ci("web-01")
    ticket = await target.create(an_incident(cis=(VM,)))
    assert fake.incidents[ticket.id]["cmdb_ci"] == ci["sys_id"]
    queries = [c.query["sysparm_query"] for c in fake.calls_to("/api/now/table/cmdb_ci", "GET")]
    assert queries == [f"object_id={VM}", "name=web-01"], "look up by object_id first, then by name"


async def test_a_ci_given_by_name_is_looked_up_by_the_arm_id_of_the_resource_it_names(fake, target):
    ci = fake.add_ci("web-01 (prod)", object_id=VM)
    ticket = await target.create(an_incident(cis=("web-01",), resource_ids=(VM.lower(), DB)))
    assert fake.incidents[ticket.id]["cmdb_ci"] == ci["sys_id"]
    [lookup] = fake.calls_to("/api/now/table/cmdb_ci", "GET")
    assert lookup.query["sysparm_query"] == f"object_id={VM.lower()}", "only the CI this incident is about"


async def test_missing_ci_is_left_unbound_by_default(fake, target):
    ticket = await target.create(an_incident(cis=(VM,)))
    assert fake.incidents[ticket.id].get("cmdb_ci", "") == ""
    assert fake.cis == {}, "bind_if_found must never create CIs"


async def test_create_if_missing_creates_the_ci_in_the_configured_class_table(fake):
    target = make_target(fake, ci_binding="create_if_missing", ci_class="cmdb_ci_vm_instance")
    try:
        ticket = await target.create(an_incident(cis=(VM,)))
    finally:
        await target.close()
    [ci] = fake.cis.values()
    assert (ci["name"], ci["object_id"], ci["sys_class_name"]) == ("web-01", VM, "cmdb_ci_vm_instance")
    assert fake.incidents[ticket.id]["cmdb_ci"] == ci["sys_id"]


async def test_cis_after_the_first_become_affected_ci_rows(fake, target):
    vm = fake.add_ci("web-01", object_id=VM)
    db = fake.add_ci("sql-01", object_id=DB)
    ticket = await target.create(an_incident(cis=(VM, DB, VM.upper())))
    assert fake.incidents[ticket.id]["cmdb_ci"] == vm["sys_id"]
    assert [(r["task"], r["ci_item"]) for r in fake.task_cis.values()] == [(ticket.id, db["sys_id"])]


async def test_a_ci_name_shared_by_two_cis_is_left_unbound(fake, target):
    fake.add_ci("web-01")
    fake.add_ci("web-01")
    ticket = await target.create(an_incident(cis=(VM,)))
    assert fake.incidents[ticket.id].get("cmdb_ci", "") == ""


async def test_a_cmdb_lookup_refused_for_good_still_creates_the_incident(fake, target):
    fake.inject("status", path="/api/now/table/cmdb_ci", status=403, times=2)
    ticket = await target.create(an_incident(cis=(VM,)))
    assert ticket.id in fake.incidents


async def test_a_cmdb_lookup_worth_retrying_fails_the_create(fake, target):
    fake.inject("status", path="/api/now/table/cmdb_ci", status=503)
    error = await expect_error(target.create(an_incident(cis=(VM,))))
    assert error.retryable
    assert fake.incidents == {}, "no incident may be created without trying its CIs"


# -- find ------------------------------------------------------------------------------------------


async def test_find_returns_the_open_incident_carrying_the_key(fake, target):
    fake.add_incident(correlation_id="another-alert", state="2")
    record = fake.add_incident(correlation_id=KEY, state="2")
    ticket = await target.find(an_incident())
    assert ticket == Ticket(id=record["sys_id"], number=record["number"], resolved=False)


async def test_find_asks_for_two_rows_at_most(fake, target):
    await target.find(an_incident())
    [call] = fake.calls_to("/api/now/table/incident", "GET")[:1]
    assert call.query["sysparm_limit"] == "2"
    assert call.query["sysparm_query"].startswith(f"correlation_id={KEY}^")


async def test_find_returns_none_when_no_incident_carries_the_key(fake, target):
    fake.add_incident(correlation_id="another-alert", state="2")
    assert await target.find(an_incident()) is None


async def test_find_returns_the_latest_resolved_incident_marked_resolved_when_none_is_open(fake, target):
    fake.add_incident(correlation_id=KEY, state="6")
    latest = fake.add_incident(correlation_id=KEY, state="6")
    ticket = await target.find(an_incident())
    assert ticket == Ticket(id=latest["sys_id"], number=latest["number"], resolved=True)


async def test_find_prefers_the_open_incident_over_resolved_ones(fake, target):
    fake.add_incident(correlation_id=KEY, state="6")
    open_one = fake.add_incident(correlation_id=KEY, state="1")
    assert (await target.find(an_incident())).id == open_one["sys_id"]


async def test_find_ignores_closed_and_canceled_incidents(fake, target):
    fake.add_incident(correlation_id=KEY, state="7")
    fake.add_incident(correlation_id=KEY, state="8")
    assert await target.find(an_incident()) is None


async def test_two_open_incidents_with_one_key_is_an_error_a_person_must_settle(fake, target):
    a = fake.add_incident(correlation_id=KEY, state="1")
    b = fake.add_incident(correlation_id=KEY, state="2")
    error = await expect_error(target.find(an_incident()))
    assert not error.retryable
    assert a["number"] in str(error) and b["number"] in str(error)


async def test_find_refuses_the_unfiltered_list_an_ignored_clause_returns(fake):
    # correlation_id not readable by this account: ServiceNow ignores the clause and returns everything.
    fake.unreadable_columns = frozenset({"correlation_id"})
    fake.add_incident(correlation_id=KEY, state="2")
    fake.add_incident(correlation_id="another-alert", state="2")
    target = make_target(fake)
    try:
        error = await expect_error(target.find(an_incident()))
    finally:
        await target.close()
    assert not error.retryable
    assert "ignored a query clause" in str(error)


async def test_find_with_invalid_query_returning_no_rows_finds_nothing(fake, target):
    fake.invalid_query_returns_no_rows = True
    fake.unreadable_columns = frozenset({"correlation_id"})
    fake.add_incident(correlation_id=KEY, state="2")
    assert await target.find(an_incident()) is None


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("", "empty"),
        ("   ", "blank"),
        (f" {KEY}", "padded"),
        ("a" * 101, "over 100 characters"),
        ("abc^ORstate=1", "query separator"),
        ("abc\ndef", "control character"),
    ],
)
async def test_unsafe_keys_are_refused_without_calling_servicenow(fake, target, key, why):
    error = await expect_error(target.find(an_incident(key=key)))
    assert not error.retryable, f"a {why} key must not be retried"
    error = await expect_error(target.create(an_incident(key=key)))
    assert not error.retryable
    assert fake.calls == [], f"a {why} key must never reach ServiceNow"


# -- note, resolve, reopen -------------------------------------------------------------------------


async def test_note_appends_a_work_note(fake, target):
    ticket = await target.create(an_incident())
    await target.note(ticket, an_incident(), "fired again at 10:05")
    await target.note(ticket, an_incident(), "fired again at 10:10")
    assert fake.notes(ticket.id) == ["fired again at 10:05", "fired again at 10:10"]


async def test_resolve_sets_state_6_with_close_code_and_notes(fake):
    target = make_target(fake, close_code="Resolved by caller")
    try:
        ticket = await target.create(an_incident())
        await target.resolve(ticket, an_incident(), "Alert resolved at 2026-01-01T10:30:00Z")
    finally:
        await target.close()
    record = fake.incidents[ticket.id]
    assert record["state"] == "6", "resolve must set Resolved (6), never Closed (7)"
    assert record["close_code"] == "Resolved by caller"
    assert record["close_notes"] == "Alert resolved at 2026-01-01T10:30:00Z"


async def test_resolve_of_a_closed_incident_is_refused_for_good(fake, target):
    record = fake.add_incident(correlation_id=KEY, state="7", close_code="x", close_notes="y")
    error = await expect_error(target.resolve(Ticket(record["sys_id"], record["number"]), an_incident(), "r"))
    assert (error.status, error.retryable) == (403, False)


async def test_reopen_sets_in_progress_with_a_work_note(fake, target):
    ticket = await target.create(an_incident())
    await target.resolve(ticket, an_incident(), "resolved")
    await target.reopen(ticket, an_incident(), "fired again after resolve")
    assert fake.incidents[ticket.id]["state"] == "2"
    assert fake.notes(ticket.id) == ["fired again after resolve"]


async def test_update_of_a_deleted_incident_is_not_retryable(fake, target):
    error = await expect_error(target.note(Ticket("0" * 32, "INC0000001"), an_incident(), "n"))
    assert (error.status, error.retryable) == (404, False)
    assert "No Record found" in str(error)


# -- failures --------------------------------------------------------------------------------------


async def test_429_is_retryable_and_carries_retry_after_seconds(fake, target):
    fake.inject("status", status=429, retry_after="17")
    error = await expect_error(target.find(an_incident()))
    assert (error.status, error.retryable, error.retry_after) == (429, True, 17.0)
    assert "Rate limit exceeded" in str(error)


async def test_503_retry_after_as_an_http_date_becomes_seconds(fake, target):
    fake.inject("status", status=503, retry_after="Wed, 21 Oct 2015 07:28:00 GMT")
    error = await expect_error(target.find(an_incident()))
    assert error.retryable and error.retry_after == 0.0, "a date in the past means retry now"


@pytest.mark.parametrize("status", [500, 502, 504])
async def test_server_errors_are_retryable(fake, target, status):
    fake.inject("status", status=status)
    error = await expect_error(target.create(an_incident()))
    assert (error.status, error.retryable, error.retry_after) == (status, True, None)


async def test_a_hibernating_instance_answering_html_200_is_retryable(fake, target):
    fake.inject("html")
    error = await expect_error(target.find(an_incident()))
    assert error.retryable
    assert "text/html" in str(error)


async def test_a_slow_answer_times_out_as_retryable(fake):
    target = make_target(fake, timeout_seconds=0.2)
    fake.inject("slow", delay=2.0)
    try:
        error = await expect_error(target.find(an_incident()))
    finally:
        await target.close()
    assert error.retryable and "timed out" in str(error)


async def test_a_connection_reset_is_retryable(fake, target):
    fake.inject("reset")
    error = await expect_error(target.create(an_incident()))
    assert error.retryable
    assert fake.incidents == {}


async def test_a_reset_after_create_leaves_an_incident_that_find_adopts(fake, target):
    fake.inject("reset_after", path="/api/now/table/incident", method="POST")
    error = await expect_error(target.create(an_incident()))
    assert error.retryable
    [record] = fake.incidents.values()
    assert (await target.find(an_incident())).id == record["sys_id"]


# -- auth ------------------------------------------------------------------------------------------


async def test_oauth_token_is_requested_form_encoded_once_and_reused(fake):
    target = make_target(fake, auth=OAUTH)
    try:
        ticket = await target.create(an_incident())
        await target.note(ticket, an_incident(), "n")
    finally:
        await target.close()
    [token_call] = fake.calls_to("/oauth_token.do")
    assert token_call.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert token_call.form() == {
        "grant_type": "client_credentials",
        "client_id": "relay-client",
        "client_secret": fake.client_secret,
    }
    table_calls = fake.calls_to("/api/now/table/")
    assert all(c.headers["Authorization"].startswith("Bearer ") for c in table_calls)


async def test_an_expired_oauth_token_is_fetched_again_once_and_the_call_repeated(fake):
    target = make_target(fake, auth=OAUTH)
    try:
        ticket = await target.create(an_incident())
        fake.expire_tokens()
        await target.note(ticket, an_incident(), "after expiry")
    finally:
        await target.close()
    assert fake.tokens_issued == 2
    assert fake.notes(ticket.id) == ["after expiry"]


async def test_a_401_with_a_fresh_token_is_not_retried_again(fake):
    target = make_target(fake, auth=OAUTH)
    fake.inject("status", status=401, times=5, path="/api/now/table/")
    try:
        error = await expect_error(target.find(an_incident()))
    finally:
        await target.close()
    assert (error.status, error.retryable) == (401, False)
    assert len(fake.calls_to("/api/now/table/")) == 2, "one call, then one more with a fresh token"


async def test_a_refused_client_secret_is_not_retryable(fake):
    target = make_target(fake, auth=OAUTH)
    fake.client_secret = "rotated"
    try:
        error = await expect_error(target.find(an_incident()))
    finally:
        await target.close()
    assert (error.status, error.retryable) == (401, False)
    assert "OAuth" in str(error)


async def test_a_wrong_basic_password_is_not_retryable(fake, target):
    fake.password = "changed"
    error = await expect_error(target.find(an_incident()))
    assert (error.status, error.retryable) == (401, False)
    assert len(fake.calls) == 1, "basic credentials cannot be refreshed: no second call"


async def test_secrets_never_appear_in_errors_or_logs(fake, caplog):
    caplog.set_level(logging.DEBUG)
    target = make_target(fake, auth=OAUTH)
    fake.inject("status", status=500, path="/api/now/table/")
    try:
        error = await expect_error(target.find(an_incident()))
        basic = make_target(fake)
        fake.password = "changed-" + fake.password
        await expect_error(basic.find(an_incident()))
        await basic.close()
    finally:
        await target.close()
    issued = {c.headers.get("Authorization", "") for c in fake.calls} - {""}
    for secret in [fake.client_secret, "relay-password", *issued]:
        assert secret not in caplog.text and secret not in str(error), "a secret leaked into logs or errors"
    assert "<redacted>" in repr(target.http.auth)


# -- session ---------------------------------------------------------------------------------------


async def test_one_pooled_session_serves_every_call_until_close(fake, target):
    ticket = await target.create(an_incident())
    session = target.http._session
    await target.note(ticket, an_incident(), "n")
    assert target.http._session is session, "calls must share one pooled session"
    await target.close()
    assert session.closed


# -- configuration ---------------------------------------------------------------------------------


def test_config_rejects_an_unknown_option_by_name():
    with pytest.raises(TargetConfigError, match="close_cod"):
        servicenow.from_config(
            "sn",
            {
                "base_url": "https://x.service-now.com",
                "close_cod": "x",
                "auth": {"type": "basic", "username": "u", "password_env": "P"},
            },
            env={"P": "p"},
        )


def test_config_refuses_an_inline_password():
    with pytest.raises(TargetConfigError, match=r"auth\.password "):
        servicenow.from_config(
            "sn",
            {
                "base_url": "https://x.service-now.com",
                "auth": {"type": "basic", "username": "u", "password": "hunter2"},
            },
            env={},
        )


def test_config_names_the_unset_secret_variable():
    with pytest.raises(TargetConfigError, match="SN_SECRET"):
        servicenow.from_config(
            "sn",
            {
                "base_url": "https://x.service-now.com",
                "auth": {"type": "oauth", "client_id": "c", "client_secret_env": "SN_SECRET"},
            },
            env={},
        )


def test_config_refuses_plain_http_to_a_remote_instance():
    with pytest.raises(TargetConfigError, match="https"):
        servicenow.from_config(
            "sn",
            {
                "base_url": "http://x.service-now.com",
                "auth": {"type": "basic", "username": "u", "password_env": "P"},
            },
            env={"P": "p"},
        )


def test_config_rejects_an_unknown_ci_binding():
    with pytest.raises(TargetConfigError, match="ci_binding"):
        servicenow.from_config(
            "sn",
            {
                "base_url": "https://x.service-now.com",
                "ci_binding": "always",
                "auth": {"type": "basic", "username": "u", "password_env": "P"},
            },
            env={"P": "p"},
        )


# -- read and search (idempotent steps, store-loss recovery) -------------------------------------------

async def test_search_finds_the_key_and_its_successors_newest_first_in_any_state(fake, target):
    first = fake.add_incident(correlation_id=KEY, state="6", close_code="x", close_notes="y")
    second = fake.add_incident(correlation_id=f"{KEY}.2", state="2")
    fake.add_incident(correlation_id="another-alert", state="2")
    found = await target.search(KEY)
    assert [(f.correlation_key, f.ticket.id, f.ticket.resolved) for f in found] == [
        (f"{KEY}.2", second["sys_id"], False), (KEY, first["sys_id"], True)]
    query = fake.calls_to("/api/now/table/incident", "GET")[-1].query["sysparm_query"]
    assert query.startswith(f"correlation_idSTARTSWITH{KEY}^")


async def test_search_refuses_the_unfiltered_list_an_ignored_clause_returns(fake):
    fake.unreadable_columns = frozenset({"correlation_id"})
    fake.add_incident(correlation_id="another-alert", state="2")
    target = make_target(fake)
    try:
        error = await expect_error(target.search(KEY))
    finally:
        await target.close()
    assert not error.retryable and "ignored a query clause" in str(error)


async def test_read_gives_the_state_and_the_latest_work_notes_newest_first(fake, target):
    record = fake.add_incident(correlation_id=KEY, state="2")
    ticket = Ticket(record["sys_id"], record["number"])
    for n in range(7):
        await target.note(ticket, an_incident(), f"note {n}")
    other = fake.add_incident(correlation_id="other", state="2")
    await target.note(Ticket(other["sys_id"], other["number"]), an_incident(), "not this one")
    view = await target.read(ticket)
    assert view.resolved is False
    assert view.notes == ("note 6", "note 5", "note 4", "note 3", "note 2")
    await target.resolve(ticket, an_incident(), "resolved")
    assert (await target.read(ticket)).resolved is True


# -- two-way sync: changed_since ---------------------------------------------------------------------

T0 = datetime(2026, 3, 1, 10, 0, 0, tzinfo=UTC)


class SteppedClock:
    """The fake's clock: each change is stamped at `now`, which a test moves on."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def at(self, seconds: float) -> None:
        self.now = T0 + timedelta(seconds=seconds)


@pytest.fixture
def clock(fake: FakeServiceNow) -> SteppedClock:
    fake.clock = SteppedClock()
    return fake.clock


@pytest.mark.parametrize(
    ("state", "reads"),
    [
        ("1", "open"),  # New
        ("2", "in_progress"),  # In Progress
        ("3", "in_progress"),  # On Hold: someone's work, waiting
        ("6", "resolved"),
        ("7", "closed"),
        ("8", "closed"),  # Canceled: no work is due, as final as Closed
        ("4", "open"),  # a state the instance added: never read as resolved or closed
        ("", "open"),
    ],
)
def test_incident_states_map_to_the_sync_states(state, reads):
    assert servicenow.sync_state(state) == reads
    assert reads in TICKET_STATES


def test_every_documented_incident_state_has_a_sync_state():
    assert set(servicenow.SYNC_STATES) == {"1", "2", "3", "6", "7", "8"}
    assert set(servicenow.SYNC_STATES.values()) == set(TICKET_STATES)


async def test_changed_since_answers_keyed_incidents_changed_at_or_after_since_oldest_first(fake, target, clock):
    clock.at(-60)
    fake.add_incident(correlation_id="before-since", state="2")
    clock.at(0)
    at_since = fake.add_incident(correlation_id=KEY, state="1", by="relay")
    clock.at(30)
    fake.add_incident(state="2")  # no correlation_id: not the relay's
    later = fake.add_incident(correlation_id=f"{KEY}.2", state="2", by="relay")
    clock.at(90)
    fake.update_as(at_since["sys_id"], "jane.doe", state="6", close_code="Solution provided", close_notes="fixed")

    changes = await target.changed_since(T0)

    assert [(c.correlation_key, c.ticket.id, c.state, c.changed_at, c.changed_by) for c in changes] == [
        (f"{KEY}.2", later["sys_id"], "in_progress", T0 + timedelta(seconds=30), "relay"),
        (KEY, at_since["sys_id"], "resolved", T0 + timedelta(seconds=90), "jane.doe"),
    ]
    assert changes[1].ticket.resolved and changes[1].ticket.number == at_since["number"]
    call = fake.calls_to("/api/now/table/incident", "GET")[-1]
    assert call.query["sysparm_query"] == (
        "correlation_idISNOTEMPTY^sys_updated_on>=2026-03-01 10:00:00^ORDERBYsys_updated_on^ORDERBYsys_id"
    )
    assert call.query["sysparm_limit"] == str(CHANGES_LIMIT), "the contract's default bound"
    assert "sysparm_display_value" not in call.query, "date-times must come back as UTC values"


async def test_changed_since_converts_since_to_utc_and_cuts_it_to_the_second(fake, target, clock):
    fake.add_incident(correlation_id=KEY)  # stamped T0 exactly
    since = (T0 + timedelta(microseconds=700_000)).astimezone(timezone(timedelta(hours=2)))
    changes = await target.changed_since(since)
    assert [c.correlation_key for c in changes] == [KEY], "an update in the same second is not missed"
    assert "sys_updated_on>=2026-03-01 10:00:00^" in fake.calls_to("/api/now/table/incident")[-1].query["sysparm_query"]
    assert changes[0].changed_at.utcoffset() == timedelta(0)


async def test_changed_since_stops_at_the_limit_and_pages_on_from_the_last_change(fake, target, clock):
    keys = [f"{KEY}.{n}" for n in range(2, 7)]
    for n, key in enumerate(keys):
        clock.at(n * 10)
        fake.add_incident(correlation_id=key)
    first = await target.changed_since(T0, limit=2)
    assert [c.correlation_key for c in first] == keys[:2]
    rest = await target.changed_since(first[-1].changed_at, limit=10)
    assert [c.correlation_key for c in rest] == keys[1:], "from the last one's instant, that one included"


async def test_the_relays_own_changes_are_stamped_with_its_account(fake, target, clock):
    record = fake.add_incident(correlation_id=KEY, state="1", by="relay")
    clock.at(60)
    await target.resolve(Ticket(record["sys_id"], record["number"]), an_incident(), "alert resolved")
    (change,) = await target.changed_since(T0 + timedelta(seconds=60))
    assert (change.state, change.changed_by) == ("resolved", fake.username)


async def test_a_work_note_by_a_person_is_a_change_too(fake, target, clock):
    record = fake.add_incident(correlation_id=KEY, state="2", by="relay")
    clock.at(120)
    fake.update_as(record["sys_id"], "jane.doe", work_notes="looking into it")
    (change,) = await target.changed_since(T0 + timedelta(seconds=100))
    assert (change.state, change.changed_by) == ("in_progress", "jane.doe")


async def test_a_child_resolved_with_its_parent_is_a_change_by_whoever_resolved_the_parent(fake, target, clock):
    parent = fake.add_incident(correlation_id="parent-key", state="2")
    child = fake.add_incident(correlation_id=KEY, state="2", parent_incident=parent["sys_id"])
    clock.at(60)
    fake.update_as(parent["sys_id"], "jane.doe", state="6", close_code="Solution provided", close_notes="done")
    changes = await target.changed_since(T0 + timedelta(seconds=60))
    assert {(c.ticket.id, c.state, c.changed_by) for c in changes} == {
        (parent["sys_id"], "resolved", "jane.doe"), (child["sys_id"], "resolved", "jane.doe")}


async def test_changed_since_refuses_the_unfiltered_list_an_ignored_clause_returns(fake, clock):
    fake.unreadable_columns = frozenset({"sys_updated_on"})
    fake.add_incident(correlation_id=KEY)
    target = make_target(fake)
    try:
        error = await expect_error(target.changed_since(T0 + timedelta(hours=1)))
    finally:
        await target.close()
    assert not error.retryable and "ignored a query clause" in str(error) and "sys_updated_on" in str(error)


async def test_changed_since_with_an_unknown_state_reads_open_and_says_so(fake, target, clock, caplog):
    fake.add_incident(correlation_id=KEY, state="4")
    with caplog.at_level(logging.WARNING, logger="relay.targets.servicenow"):
        (change,) = await target.changed_since(T0)
    assert change.state == "open"
    assert "'4'" in caplog.text and "does not know" in caplog.text


@pytest.mark.parametrize(("status", "retry_after"), [(429, 17.0), (503, None), (502, None)])
async def test_changed_since_failures_worth_retrying_are_retryable(fake, target, clock, status, retry_after):
    fake.inject("status", status=status, path="/api/now/table/incident",
                retry_after=None if retry_after is None else "17")
    error = await expect_error(target.changed_since(T0))
    assert (error.status, error.retryable, error.retry_after) == (status, True, retry_after)


async def test_changed_since_needs_an_aware_since_and_a_positive_limit(target):
    with pytest.raises(ValueError, match="time zone"):
        await target.changed_since(datetime(2026, 3, 1, 10, 0))
    with pytest.raises(ValueError, match="limit"):
        await target.changed_since(T0, limit=0)


def test_the_servicenow_target_declares_changed_since():
    assert can_sync(servicenow.ServiceNowTarget)


async def _page_all(target: servicenow.ServiceNowTarget, since: datetime, limit: int) -> list[TicketChange]:
    """Two-way sync's poll as the contract has it: ask again from the last one's changed_at, dropping what
    was already seen at that instant, until a page comes back short."""
    seen: set[tuple[str, datetime]] = set()
    got: list[TicketChange] = []
    for _ in range(100):
        page = await target.changed_since(since, limit=limit)
        got.extend(c for c in page if (c.ticket.id, c.changed_at) not in seen)
        seen.update((c.ticket.id, c.changed_at) for c in page)
        if len(page) < limit:
            return got
        since = page[-1].changed_at
    raise AssertionError("the poll never came to an end")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    changes=st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["1", "2", "6", "7"])), min_size=1, max_size=25),
    start=st.integers(0, 25),
    limit=st.integers(2, 4),
)
def test_paging_changed_since_sees_each_keyed_incident_in_its_latest_state_once(changes, start, limit):
    """Whatever changed when (one change a second), paging from `since` answers every keyed incident whose
    last change is at or after it, in its latest state, and nothing else. (A page asked from the last one's
    instant answers that one again, so a page must hold more than the changes of one second: limit >= 2
    here, CHANGES_LIMIT in the relay.)"""

    async def scenario() -> None:
        clock = SteppedClock()
        fake = FakeServiceNow(clock=clock)
        await fake.start()
        target = make_target(fake)
        try:
            records: dict[int, dict[str, str]] = {}
            for second, (n, state) in enumerate(changes):
                clock.at(second)
                if n not in records:
                    records[n] = fake.add_incident(correlation_id=f"{KEY}.{n}" if n else "", state=state, by="relay")
                else:
                    fake.update_as(records[n]["sys_id"], "jane.doe", state=state)
            since = T0 + timedelta(seconds=start)
            got = await _page_all(target, since, limit)
            expected = {(r["sys_id"], servicenow.sync_state(r["state"])) for r in records.values()
                        if r["correlation_id"] and servicenow.parse_datetime(r["sys_updated_on"]) >= since}
            latest = {c.ticket.id: c.state for c in got}
            assert set(latest.items()) == expected
            assert len(latest) == len(got), "an incident answered twice for one change"
            assert [c.changed_at for c in got] == sorted(c.changed_at for c in got), "oldest first"
        finally:
            await target.close()
            await fake.stop()

    asyncio.run(scenario())
