"""The BMC Helix target against the fake AR System: AR-JWT, interface forms, CMDB binding, failures."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.targets import CHANGES_LIMIT, TICKET_STATES, Incident, Ticket, TicketChange, bmc_helix, can_sync
from relay.targets.target_config import TargetConfigError
from tests.conftest import expect_error
from tests.fakes.bmc_helix import FakeBmcHelix

KEY = "0f3c2d8e-9a4b-4c1d-8e7f-6a5b4c3d2e1f"
VM = (
    "/subscriptions/11111111-2222-3333-4444-555555555555/resourceGroups/RG-Web"
    "/providers/Microsoft.Compute/virtualMachines/web-01"
)
CUSTOMER = {"First_Name": "Allen", "Last_Name": "Allbrook", "Company": "Calbro Services"}


def an_incident(key: str = KEY, cis: tuple[str, ...] = (), **fields: Any) -> Incident:
    return Incident(
        correlation_key=key,
        summary="CPU over 90% on web-01",
        description="Metric alert 'cpu-high' fired at 2026-01-01T10:00:00Z",
        severity="Sev1",
        fields=fields,
        configuration_items=cis,
    )


def make_target(fake: FakeBmcHelix, **options: Any) -> bmc_helix.BmcHelixTarget:
    cfg = {
        "kind": "bmc_helix",
        "base_url": fake.url,
        "auth": {"type": "ar_jwt", "username": fake.username, "password_env": "HELIX_PASSWORD"},
        "timeout_seconds": 5,
        "defaults": CUSTOMER,
        **options,
    }
    return bmc_helix.from_config("helix-test", cfg, env={"HELIX_PASSWORD": fake.password})


@pytest.fixture
async def fake() -> AsyncIterator[FakeBmcHelix]:
    server = FakeBmcHelix()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def target(fake: FakeBmcHelix) -> AsyncIterator[bmc_helix.BmcHelixTarget]:
    t = make_target(fake)
    yield t
    await t.close()


# -- create ----------------------------------------------------------------------------------------


async def test_create_goes_through_the_create_interface_with_the_key_in_the_correlation_field(fake, target):
    ticket = await target.create(an_incident(assignment_group="Cloud Ops", impact=2, urgency=1))
    record = fake.incidents[ticket.id]
    assert ticket == Ticket(id=record["Incident Number"], number=record["Incident Number"])
    assert record["Vendor Ticket Number"] == KEY
    assert (record["Impact"], record["Urgency"]) == ("2-Significant/Large", "1-Critical")
    assert record["Assigned Group"] == "Cloud Ops"
    assert (record["Service_Type"], record["Reported Source"]) == (
        "Infrastructure Event",
        "Systems Management",
    )
    assert record["Detailed_Decription"].startswith("Metric alert"), "the product's own spelling"
    [call] = fake.calls_to("HPD:IncidentInterface_Create", "POST")
    assert call.query["fields"] == "values(Incident Number)"
    assert call.json()["values"]["z1D_Action"] == "CREATE"


async def test_create_uses_a_configured_correlation_field(fake):
    fake.fields = fake.fields | {"AzureAlertId"}
    target = make_target(fake, correlation_field="AzureAlertId")
    try:
        ticket = await target.create(an_incident())
        assert fake.incidents[ticket.id]["AzureAlertId"] == KEY
        assert (await target.find(an_incident())).id == ticket.id
    finally:
        await target.close()


async def test_servicenow_style_route_fields_never_reach_the_form(fake, target):
    ticket = await target.create(an_incident(category="Software", contact_type="monitoring"))
    sent = fake.calls_to("HPD:IncidentInterface_Create")[0].json()["values"]
    assert "category" not in sent and "contact_type" not in sent
    assert ticket.id in fake.incidents


async def test_a_customer_unknown_to_helix_is_refused_for_good(fake):
    target = make_target(fake, defaults={"First_Name": "No", "Last_Name": "Body"})
    try:
        error = await expect_error(target.create(an_incident()))
    finally:
        await target.close()
    assert (error.status, error.retryable) == (400, False)
    assert "ARERR 1291053" in str(error), "the AR error number and text must reach the dead letter"


async def test_create_binds_the_ci_found_by_name_through_hpd_ci_reconid(fake, target):
    ci = fake.add_ci("web-01")
    ticket = await target.create(an_incident(cis=(VM,)))
    record = fake.incidents[ticket.id]
    assert record["HPD_CI_ReconID"] == ci.attributes["ReconciliationIdentity"]
    assert (record["HPD_CI"], record["HPD_CI_FormName"]) == ("web-01", "BMC.CORE:BMC_ComputerSystem")
    [lookup] = fake.calls_to("/api/cmdb/v1.0/instances/BMC.ASSET/BMC.CORE/BMC_BaseElement")
    assert lookup.query["qualification"] == "'Name' = \"web-01\""


async def test_create_looks_up_the_arm_id_first_when_an_attribute_holds_it(fake):
    fake.add_ci("web-01")  # a namesake in another subscription
    ci = fake.add_ci("web-01", CloudResourceId=VM.lower())
    target = make_target(fake, ci_id_attribute="CloudResourceId")
    try:
        ticket = await target.create(an_incident(cis=(VM,)))
    finally:
        await target.close()
    assert fake.incidents[ticket.id]["HPD_CI_ReconID"] == ci.attributes["ReconciliationIdentity"]


async def test_an_unreconciled_ci_is_not_bound(fake, target):
    fake.add_ci("web-01", recon_id="0")
    ticket = await target.create(an_incident(cis=(VM,)))
    assert "HPD_CI_ReconID" not in fake.incidents[ticket.id]


async def test_a_missing_ci_is_left_unbound_by_default(fake, target):
    ticket = await target.create(an_incident(cis=(VM,)))
    assert "HPD_CI_ReconID" not in fake.incidents[ticket.id]
    assert fake.cis == [] and not fake.calls_to("/api/cmdb/v1.0/instances", "POST")


async def test_create_if_missing_creates_the_ci_and_binds_it(fake):
    target = make_target(fake, ci_binding="create_if_missing")
    try:
        ticket = await target.create(an_incident(cis=(VM,)))
    finally:
        await target.close()
    [ci] = fake.cis
    assert (ci.class_name, ci.attributes["Name"], ci.attributes["ShortDescription"]) == (
        "BMC_ComputerSystem",
        "web-01",
        VM,
    )
    assert fake.incidents[ticket.id]["HPD_CI_ReconID"] == ci.attributes["ReconciliationIdentity"]


# -- find ------------------------------------------------------------------------------------------


async def test_find_returns_the_open_incident_carrying_the_key(fake, target):
    fake.add_incident(**{"Vendor Ticket Number": "another-alert"})
    record = fake.add_incident(**{"Vendor Ticket Number": KEY, "Status": "In Progress"})
    ticket = await target.find(an_incident())
    assert ticket == Ticket(id=record["Incident Number"], number=record["Incident Number"], resolved=False)
    call = fake.calls_to("HPD:IncidentInterface", "GET")[0]
    assert call.query["limit"] == "2"
    assert call.query["q"].startswith(f"'Vendor Ticket Number' = \"{KEY}\" AND (")


async def test_find_returns_none_when_no_incident_carries_the_key(fake, target):
    fake.add_incident(**{"Vendor Ticket Number": "another-alert"})
    assert await target.find(an_incident()) is None


async def test_find_returns_the_latest_resolved_incident_when_none_is_open(fake, target):
    fake.add_incident(**{"Vendor Ticket Number": KEY, "Status": "Resolved"})
    latest = fake.add_incident(**{"Vendor Ticket Number": KEY, "Status": "Resolved"})
    fake.add_incident(**{"Vendor Ticket Number": KEY, "Status": "Closed"})
    ticket = await target.find(an_incident())
    assert ticket == Ticket(id=latest["Incident Number"], number=latest["Incident Number"], resolved=True)


async def test_two_open_incidents_with_one_key_is_an_error_a_person_must_settle(fake, target):
    a = fake.add_incident(**{"Vendor Ticket Number": KEY})
    b = fake.add_incident(**{"Vendor Ticket Number": KEY, "Status": "Pending"})
    error = await expect_error(target.find(an_incident()))
    assert not error.retryable
    assert a["Incident Number"] in str(error) and b["Incident Number"] in str(error)


async def test_a_correlation_field_missing_from_the_form_is_an_error_not_an_empty_result(fake):
    target = make_target(fake, correlation_field="AzureAlertId")
    try:
        error = await expect_error(target.find(an_incident()))
    finally:
        await target.close()
    assert (error.status, error.retryable) == (400, False)
    assert "AzureAlertId" in str(error)


async def test_a_key_with_a_double_quote_is_escaped_in_the_qualification(fake, target):
    record = fake.add_incident(**{"Vendor Ticket Number": 'a"b'})
    assert (await target.find(an_incident(key='a"b'))).id == record["Incident Number"]
    assert (
        fake.calls_to("HPD:IncidentInterface", "GET")[0]
        .query["q"]
        .startswith('\'Vendor Ticket Number\' = "a""b"')
    )


@pytest.mark.parametrize("key", ["", " ", "x" * 101, "a\nb"])
async def test_unsafe_keys_are_refused_without_calling_helix(fake, target, key):
    assert not (await expect_error(target.find(an_incident(key=key)))).retryable
    assert not (await expect_error(target.create(an_incident(key=key)))).retryable
    assert fake.calls == []


# -- note, resolve, reopen -------------------------------------------------------------------------


async def test_note_adds_an_hpd_work_log_entry(fake, target):
    ticket = await target.create(an_incident())
    await target.note(ticket, an_incident(), "fired again at 10:05")
    assert fake.work_log_texts(ticket.id) == ["fired again at 10:05"]
    assert fake.work_logs[0]["Work Log Type"] == "General Information"


async def test_resolve_puts_status_resolved_with_reason_and_resolution_on_the_interface_entry(fake, target):
    ticket = await target.create(an_incident())
    await target.resolve(ticket, an_incident(), "Alert resolved at 2026-01-01T10:30:00Z")
    record = fake.incidents[ticket.id]
    assert (record["Status"], record["Status_Reason"]) == ("Resolved", "Automated Resolution Reported")
    assert record["Resolution"] == "Alert resolved at 2026-01-01T10:30:00Z"
    [put] = fake.calls_to("/HPD:IncidentInterface/", "PUT")
    assert put.path.endswith(f"{ticket.id}|{ticket.id}"), "PUT goes to the join form's entry id"


async def test_resolve_after_find_uses_the_entry_id_the_search_returned(fake, target):
    record = fake.add_incident(**{"Vendor Ticket Number": KEY})
    ticket = await target.find(an_incident())
    await target.resolve(ticket, an_incident(), "resolved")
    assert record["Status"] == "Resolved"
    assert len(fake.calls_to("HPD:IncidentInterface", "GET")) == 1, "no second lookup by Incident Number"


async def test_resolve_sends_configured_values_when_the_instance_needs_an_assignee(fake):
    fake.require_assignee_to_resolve = True
    bare = make_target(fake)
    with_assignee = make_target(
        fake, resolve_values={"Assignee": "Relay Bot"}, status_reason="No Further Action Required"
    )
    try:
        ticket = await bare.create(an_incident())
        error = await expect_error(bare.resolve(ticket, an_incident(), "resolved"))
        assert (error.status, error.retryable) == (400, False)
        await with_assignee.resolve(ticket, an_incident(), "resolved")
    finally:
        await bare.close()
        await with_assignee.close()
    assert fake.incidents[ticket.id]["Status_Reason"] == "No Further Action Required"


async def test_reopen_moves_back_to_in_progress_and_logs_why(fake, target):
    ticket = await target.create(an_incident())
    await target.resolve(ticket, an_incident(), "resolved")
    await target.reopen(ticket, an_incident(), "fired again after resolve")
    record = fake.incidents[ticket.id]
    assert (record["Status"], record["Status_Reason"]) == ("In Progress", None)
    assert fake.work_log_texts(ticket.id) == ["fired again after resolve"]


async def test_a_closed_incident_refuses_resolve_for_good(fake, target):
    record = fake.add_incident(**{"Vendor Ticket Number": KEY, "Status": "Closed"})
    error = await expect_error(
        target.resolve(Ticket(record["Incident Number"], record["Incident Number"]), an_incident(), "r")
    )
    assert (error.status, error.retryable) == (400, False)


async def test_an_incident_number_unknown_to_helix_is_not_retryable(fake, target):
    error = await expect_error(
        target.resolve(Ticket("INC000000999999", "INC000000999999"), an_incident(), "r")
    )
    assert not error.retryable


# -- auth ------------------------------------------------------------------------------------------


async def test_login_is_form_encoded_and_the_token_is_sent_as_ar_jwt(fake, target):
    ticket = await target.create(an_incident())
    await target.note(ticket, an_incident(), "n")
    [login] = fake.calls_to("/api/jwt/login")
    assert login.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert login.form() == {"username": "relay", "password": fake.password}
    others = [c for c in fake.calls if not c.path.startswith("/api/jwt/")]
    assert others and all(c.headers["Authorization"].startswith("AR-JWT ") for c in others)


async def test_an_expired_token_logs_in_again_once_and_repeats_the_call(fake, target):
    ticket = await target.create(an_incident())
    fake.expire_tokens()
    await target.note(ticket, an_incident(), "after expiry")
    assert fake.logins == 2
    assert fake.work_log_texts(ticket.id) == ["after expiry"]


async def test_a_refused_login_is_not_retryable(fake, target):
    fake.password = "rotated"
    error = await expect_error(target.find(an_incident()))
    assert (error.status, error.retryable) == (401, False)
    assert "login" in str(error)


async def test_close_logs_the_token_out(fake):
    target = make_target(fake)
    await target.find(an_incident())
    await target.close()
    assert fake.logouts == 1 and fake.tokens == set()


async def test_the_password_never_appears_in_logs_or_errors(fake, caplog):
    caplog.set_level(logging.DEBUG)
    target = make_target(fake)
    fake.inject("status", status=500, path="/api/arsys/")
    try:
        error = await expect_error(target.find(an_incident()))
    finally:
        await target.close()
    tokens = {c.headers.get("Authorization", "") for c in fake.calls} - {""}
    for secret in [fake.password, *tokens]:
        assert secret not in caplog.text and secret not in str(error), "a secret leaked"


# -- failures --------------------------------------------------------------------------------------


async def test_429_is_retryable_with_retry_after(fake, target):
    fake.inject("status", status=429, retry_after="30", path="/api/arsys/")
    error = await expect_error(target.find(an_incident()))
    assert (error.status, error.retryable, error.retry_after) == (429, True, 30.0)


@pytest.mark.parametrize("status", [500, 503])
async def test_server_errors_are_retryable_and_show_the_ar_message(fake, target, status):
    fake.inject("status", status=status, path="/api/arsys/")
    error = await expect_error(target.create(an_incident()))
    assert (error.status, error.retryable) == (status, True)
    assert "ARERR 9999" in str(error)


async def test_a_slow_answer_times_out_as_retryable(fake):
    target = make_target(fake, timeout_seconds=0.2)
    fake.inject("slow", delay=2.0, path="/api/arsys/")
    try:
        error = await expect_error(target.find(an_incident()))
    finally:
        await target.close()
    assert error.retryable and "timed out" in str(error)


async def test_a_connection_reset_is_retryable(fake, target):
    fake.inject("reset", path="/api/arsys/")
    assert (await expect_error(target.create(an_incident()))).retryable


async def test_an_html_page_instead_of_json_is_retryable(fake, target):
    fake.inject("html", path="/api/arsys/")
    error = await expect_error(target.find(an_incident()))
    assert error.retryable and "text/html" in str(error)


async def test_a_reset_after_create_leaves_an_incident_that_find_adopts(fake, target):
    fake.inject("reset_after", path="HPD:IncidentInterface_Create")
    assert (await expect_error(target.create(an_incident()))).retryable
    [record] = fake.incidents.values()
    assert (await target.find(an_incident())).id == record["Incident Number"]


async def test_a_retryable_cmdb_failure_fails_the_create_before_anything_is_written(fake, target):
    fake.inject("status", status=503, path="/api/cmdb/")
    assert (await expect_error(target.create(an_incident(cis=(VM,))))).retryable
    assert fake.incidents == {}


# -- configuration ---------------------------------------------------------------------------------


def base_cfg(**extra: Any) -> dict[str, Any]:
    return {
        "base_url": "https://helix.example.com",
        "auth": {"type": "ar_jwt", "username": "u", "password_env": "P"},
        **extra,
    }


def test_config_rejects_an_unknown_option_by_name():
    with pytest.raises(TargetConfigError, match="status_reson"):
        bmc_helix.from_config("h", base_cfg(status_reson="x"), env={"P": "p"})


def test_config_rejects_an_unknown_service_type():
    with pytest.raises(TargetConfigError, match="service_type"):
        bmc_helix.from_config("h", base_cfg(service_type="Infrastructure"), env={"P": "p"})


def test_config_names_the_unset_password_variable():
    with pytest.raises(TargetConfigError, match="password_env names the environment variable P"):
        bmc_helix.from_config("h", base_cfg(), env={})


def test_config_refuses_a_quote_in_the_correlation_field():
    with pytest.raises(TargetConfigError, match="correlation_field"):
        bmc_helix.from_config("h", base_cfg(correlation_field="a'b"), env={"P": "p"})


# -- read and search (idempotent steps, store-loss recovery) -------------------------------------------

async def test_search_finds_the_key_and_its_successors_newest_first_in_any_status(fake, target):
    first = fake.add_incident(**{"Vendor Ticket Number": KEY, "Status": "Resolved"})
    second = fake.add_incident(**{"Vendor Ticket Number": f"{KEY}.2", "Status": "Assigned"})
    fake.add_incident(**{"Vendor Ticket Number": "another-alert", "Status": "Assigned"})
    found = await target.search(KEY)
    assert [(f.correlation_key, f.ticket.id, f.ticket.resolved) for f in found] == [
        (f"{KEY}.2", second["Incident Number"], False), (KEY, first["Incident Number"], True)]
    assert fake.calls_to("HPD:IncidentInterface", "GET")[-1].query["q"] == f"'Vendor Ticket Number' LIKE \"{KEY}%\""


async def test_read_gives_the_status_and_the_latest_work_log_entries_newest_first(fake, target):
    number = fake.add_incident(**{"Vendor Ticket Number": KEY})["Incident Number"]
    ticket = Ticket(number, number)
    for n in range(7):
        await target.note(ticket, an_incident(), f"entry {n}")
    other = fake.add_incident(**{"Vendor Ticket Number": "other"})["Incident Number"]
    await target.note(Ticket(other, other), an_incident(), "not this one")
    view = await target.read(ticket)
    assert view.resolved is False
    assert view.notes == ("entry 6", "entry 5", "entry 4", "entry 3", "entry 2")
    await target.resolve(ticket, an_incident(), "resolved")
    assert (await target.read(ticket)).resolved is True


# -- two-way sync: changed_since ---------------------------------------------------------------------

T0 = datetime(2026, 3, 1, 10, 0, 0, tzinfo=UTC)


class SteppedClock:
    """The fake's clock: each change is stamped at `now`, which a test moves on."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def at(self, seconds: float) -> None:
        self.now = T0 + timedelta(seconds=seconds)


@pytest.fixture
def clock(fake: FakeBmcHelix) -> SteppedClock:
    fake.clock = SteppedClock()
    return fake.clock


@pytest.mark.parametrize(
    ("status", "reads"),
    [
        ("New", "open"),
        ("Assigned", "open"),  # the relay creates incidents Assigned: nobody has taken it yet
        ("In Progress", "in_progress"),
        ("Pending", "in_progress"),  # someone's work, waiting
        ("Resolved", "resolved"),
        ("Closed", "closed"),
        ("Cancelled", "closed"),  # no work is due: as final as Closed
        ("Waiting Approval", "open"),  # a status the instance added: never read as resolved or closed
        ("", "open"),
    ],
)
def test_incident_statuses_map_to_the_sync_states(status, reads):
    assert bmc_helix.sync_state(status) == reads
    assert reads in TICKET_STATES


def test_every_documented_status_has_a_sync_state():
    assert set(bmc_helix.SYNC_STATES) == {"New", "Assigned", "In Progress", "Pending", "Resolved", "Closed",
                                          "Cancelled"}
    assert set(bmc_helix.SYNC_STATES.values()) == set(TICKET_STATES)


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("2019-10-15T23:36:18.000+0000", datetime(2019, 10, 15, 23, 36, 18, tzinfo=UTC)),  # BMC's own example
        ("2026-03-01T12:00:00.000+0200", datetime(2026, 3, 1, 10, 0, 0, tzinfo=UTC)),
        ("2026-03-01T10:00:00Z", datetime(2026, 3, 1, 10, 0, 0, tzinfo=UTC)),
        (1772359200, datetime(2026, 3, 1, 10, 0, 0, tzinfo=UTC)),  # seconds since 1970, as AR stores it
        ("2026-03-01T10:00:00", None),  # no zone: which time would it be?
        ("03/01/2026 10:00:00", None),
        (None, None),
        (True, None),
    ],
)
def test_last_modified_dates_are_read_with_their_zone_as_utc(value, parsed):
    assert bmc_helix.parse_datetime(value) == parsed


async def test_changed_since_answers_keyed_incidents_modified_at_or_after_since_oldest_first(fake, target, clock):
    clock.at(-60)
    fake.add_incident(**{"Vendor Ticket Number": "before-since"})
    clock.at(0)
    at_since = await target.create(an_incident())
    clock.at(30)
    fake.add_incident(Status="In Progress")  # no correlation value: not the relay's
    later = await target.create(an_incident(f"{KEY}.2"))
    clock.at(90)
    fake.update_as(at_since.id, "allen", Status="Resolved", Status_Reason="No Further Action Required")

    changes = await target.changed_since(T0)

    assert [(c.correlation_key, c.ticket.number, c.state, c.changed_at, c.changed_by) for c in changes] == [
        (f"{KEY}.2", later.number, "open", T0 + timedelta(seconds=30), fake.username),
        (KEY, at_since.number, "resolved", T0 + timedelta(seconds=90), "allen"),
    ]
    assert changes[1].ticket.resolved
    call = fake.calls_to("/api/arsys/v1/entry/HPD:IncidentInterface", "GET")[-1]
    assert call.query["q"] == f"'Vendor Ticket Number' != $NULL$ AND 'Last Modified Date' >= {int(T0.timestamp())}"
    assert call.query["sort"] == "Last Modified Date.asc,Incident Number.asc"
    assert call.query["limit"] == str(CHANGES_LIMIT), "the contract's default bound"
    assert "Last Modified By" in call.query["fields"]


async def test_changed_since_converts_since_to_utc_seconds(fake, target, clock):
    fake.add_incident(**{"Vendor Ticket Number": KEY})  # stamped T0 exactly
    since = (T0 + timedelta(microseconds=700_000)).astimezone(timezone(timedelta(hours=-5)))
    changes = await target.changed_since(since)
    assert [c.correlation_key for c in changes] == [KEY], "an update in the same second is not missed"
    assert fake.calls_to("HPD:IncidentInterface", "GET")[-1].query["q"].endswith(f">= {int(T0.timestamp())}")


async def test_changed_since_uses_the_configured_correlation_field(fake, clock):
    fake.fields = fake.fields | {"Correlation ID"}
    fake.add_incident(**{"Correlation ID": KEY})
    fake.add_incident(**{"Vendor Ticket Number": "someone-else"})
    target = make_target(fake, correlation_field="Correlation ID")
    try:
        changes = await target.changed_since(T0)
    finally:
        await target.close()
    assert [c.correlation_key for c in changes] == [KEY]


async def test_changed_since_stops_at_the_limit_and_pages_on_from_the_last_change(fake, target, clock):
    keys = [f"{KEY}.{n}" for n in range(2, 7)]
    for n, key in enumerate(keys):
        clock.at(n * 10)
        fake.add_incident(**{"Vendor Ticket Number": key})
    first = await target.changed_since(T0, limit=2)
    assert [c.correlation_key for c in first] == keys[:2]
    rest = await target.changed_since(first[-1].changed_at, limit=10)
    assert [c.correlation_key for c in rest] == keys[1:], "from the last one's instant, that one included"


async def test_the_relays_own_resolve_is_stamped_with_its_login(fake, target, clock):
    ticket = await target.create(an_incident())
    clock.at(60)
    await target.resolve(ticket, an_incident(), "alert resolved")
    (change,) = await target.changed_since(T0 + timedelta(seconds=60))
    assert (change.state, change.changed_by) == ("resolved", fake.username)


async def test_changed_since_refuses_rows_outside_what_it_asked_for(fake, target, clock):
    fake.add_incident(**{"Vendor Ticket Number": KEY})
    # A proxy or a changed API answering an old row: the search cannot be trusted.
    fake.inject("status", status=200, path="HPD:IncidentInterface", body={"entries": [
        {"values": {"Request ID": "INC1|INC1", "Incident Number": "INC1", "Status": "Assigned",
                    "Vendor Ticket Number": KEY, "Last Modified Date": "2020-01-01T00:00:00.000+0000"}}]})
    error = await expect_error(target.changed_since(T0))
    assert not error.retryable and "refusing to trust the search" in str(error)


async def test_changed_since_with_an_unknown_status_reads_open_and_says_so(fake, target, clock, caplog):
    fake.add_incident(**{"Vendor Ticket Number": KEY, "Status": "Waiting Approval"})
    with caplog.at_level(logging.WARNING, logger="relay.targets.bmc_helix"):
        (change,) = await target.changed_since(T0)
    assert change.state == "open"
    assert "'Waiting Approval'" in caplog.text and "does not know" in caplog.text


@pytest.mark.parametrize(("status", "retry_after"), [(429, 17.0), (503, None), (500, None)])
async def test_changed_since_failures_worth_retrying_are_retryable(fake, target, clock, status, retry_after):
    await target.create(an_incident())  # logged in
    fake.inject("status", status=status, path="HPD:IncidentInterface", method="GET",
                retry_after=None if retry_after is None else "17")
    error = await expect_error(target.changed_since(T0))
    assert (error.status, error.retryable, error.retry_after) == (status, True, retry_after)


async def test_changed_since_needs_an_aware_since_and_a_positive_limit(target):
    with pytest.raises(ValueError, match="time zone"):
        await target.changed_since(datetime(2026, 3, 1, 10, 0))
    with pytest.raises(ValueError, match="limit"):
        await target.changed_since(T0, limit=0)


def test_the_bmc_helix_target_declares_changed_since():
    assert can_sync(bmc_helix.BmcHelixTarget)


async def _page_all(target: bmc_helix.BmcHelixTarget, since: datetime, limit: int) -> list[TicketChange]:
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


@settings(max_examples=40, deadline=None)
@given(
    changes=st.lists(st.tuples(st.integers(0, 5), st.sampled_from(["Assigned", "In Progress", "Resolved", "Closed"])),
                     min_size=1, max_size=25),
    start=st.integers(0, 25),
    limit=st.integers(2, 4),
)
def test_paging_changed_since_sees_each_keyed_incident_in_its_latest_status_once(changes, start, limit):
    """Whatever changed when (one change a second), paging from `since` answers every keyed incident whose
    last change is at or after it, in its latest status, and nothing else."""

    async def scenario() -> None:
        clock = SteppedClock()
        fake = FakeBmcHelix(clock=clock)
        await fake.start()
        target = make_target(fake)
        try:
            records: dict[int, dict[str, Any]] = {}
            for second, (n, status) in enumerate(changes):
                clock.at(second)
                if n not in records:
                    keyed = {"Vendor Ticket Number": f"{KEY}.{n}"} if n else {}
                    records[n] = fake.add_incident(Status=status, **keyed)
                else:
                    fake.update_as(records[n]["Incident Number"], "allen", Status=status)
            since = T0 + timedelta(seconds=start)
            got = await _page_all(target, since, limit)
            expected = {(r["Incident Number"], bmc_helix.sync_state(r["Status"])) for r in records.values()
                        if r.get("Vendor Ticket Number")
                        and bmc_helix.parse_datetime(r["Last Modified Date"]) >= since}
            latest = {c.ticket.id: c.state for c in got}
            assert set(latest.items()) == expected
            assert len(latest) == len(got), "an incident answered twice for one change"
            assert [c.changed_at for c in got] == sorted(c.changed_at for c in got), "oldest first"
        finally:
            await target.close()
            await fake.stop()

    asyncio.run(scenario())
