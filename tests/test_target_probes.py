"""The start-up probes (`check()`) of ServiceNow, BMC Helix, Jira, PagerDuty, forward and dry run, against
the vendor fakes: what a working setup, wrong credentials, a missing table, form or field, an unreadable
dictionary, a hibernating or unreachable instance report; and that no probe writes anything.
(Request Tracker's probe runs against a real RT in tests/e2e/test_request_tracker_check.py; here only
what a real RT will not do on demand: a 5xx, a hibernating-style HTML page, a reset.)"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from relay.delivery.target_check import check_target
from relay.targets import Finding, bmc_helix, dry_run, forward, pagerduty, request_tracker, servicenow
from relay.targets import jira_service_management as jsm
from tests.fakes.bmc_helix import FakeBmcHelix
from tests.fakes.jira import FakeJira
from tests.fakes.pagerduty import FakePagerDuty
from tests.fakes.request_tracker import FakeRequestTracker
from tests.fakes.servicenow import FakeServiceNow

WRITES = ("POST", "PUT", "PATCH", "DELETE")
LOGINS = ("/oauth_token.do", "/api/jwt/login", "/api/jwt/logout")


def by_check(found: list[Finding]) -> dict[str, Finding]:
    return {f.check: f for f in found}


def statuses(found: list[Finding]) -> dict[str, str]:
    return {f.check: f.status for f in found}


def assert_no_writes(fake: Any) -> None:
    writes = [f"{c.method} {c.path}" for c in fake.calls if c.method in WRITES and c.path not in LOGINS]
    assert writes == [], f"a probe must only read, but it sent {writes}"


async def probe(target: Any) -> list[Finding]:
    try:
        return list(await target.check())
    finally:
        await target.close()


# -- ServiceNow ------------------------------------------------------------------------------------


def sn_target(fake: FakeServiceNow, auth: dict[str, Any] | None = None, password: str | None = None,
              **options: Any) -> servicenow.ServiceNowTarget:
    cfg = {
        "kind": "servicenow",
        "base_url": fake.url,
        "auth": auth or {"type": "basic", "username": fake.username, "password_env": "SN_PASSWORD"},
        "timeout_seconds": 5,
        **options,
    }
    env = {"SN_PASSWORD": password or fake.password, "SN_CLIENT_SECRET": fake.client_secret}
    return servicenow.from_config("sn-test", cfg, env=env)


@pytest.fixture
async def snow() -> AsyncIterator[FakeServiceNow]:
    server = FakeServiceNow()
    await server.start()
    yield server
    await server.stop()


SN_OK = {"credentials": "ok", "table 'incident'": "ok", "field 'correlation_id' on 'incident'": "ok"}


async def test_servicenow_working_setup_finds_correlation_id_on_task_in_the_dictionary(snow):
    found = await probe(sn_target(snow))
    assert statuses(found) == SN_OK
    field = by_check(found)["field 'correlation_id' on 'incident'"]
    assert "sys_dictionary" in field.detail and "task" in field.detail and "100" in field.detail
    assert_no_writes(snow)


async def test_servicenow_oauth_working_setup_passes(snow):
    auth = {"type": "oauth", "client_id": snow.client_id, "client_secret_env": "SN_CLIENT_SECRET"}
    assert statuses(await probe(sn_target(snow, auth=auth))) == SN_OK


async def test_servicenow_wrong_password_fails_credentials_and_checks_nothing_else(snow):
    found = by_check(await probe(sn_target(snow, password="wrong")))
    assert found["credentials"].status == "failed" and "401" in found["credentials"].detail
    assert found["table 'incident'"].status == "unchecked"
    assert "credentials were refused" in found["field 'correlation_id' on 'incident'"].detail


async def test_servicenow_refused_oauth_client_fails_credentials(snow):
    snow.client_secret = "rotated"  # the instance's secret changed; the relay's did not
    auth = {"type": "oauth", "client_id": snow.client_id, "client_secret_env": "SN_CLIENT_SECRET"}
    target = sn_target(snow, auth=auth)
    snow.client_secret = "rotated-again"
    found = by_check(await probe(target))
    assert found["credentials"].status == "failed" and "OAuth token request" in found["credentials"].detail


async def test_servicenow_a_table_the_instance_does_not_have_is_reported(snow):
    found = by_check(await probe(sn_target(snow, table="u_azure_alerts")))
    assert found["credentials"].status == "ok"
    assert found["table 'u_azure_alerts'"].status == "failed"
    assert "Invalid table u_azure_alerts" in found["table 'u_azure_alerts'"].detail
    assert found["field 'correlation_id' on 'u_azure_alerts'"].status == "unchecked"


async def test_servicenow_an_unreadable_dictionary_falls_back_to_a_row_of_the_table():
    fake = FakeServiceNow(dictionary_readable=False)
    await fake.start()
    try:
        fake.add_incident(short_description="seeded", correlation_id="x")
        field = by_check(await probe(sn_target(fake)))["field 'correlation_id' on 'incident'"]
        assert field.status == "ok" and "not readable by this account (HTTP 403)" in field.detail
        fake.incidents.clear()
        field = by_check(await probe(sn_target(fake)))["field 'correlation_id' on 'incident'"]
        assert field.status == "unchecked" and "no row to look at" in field.detail
    finally:
        await fake.stop()


async def test_servicenow_a_correlation_column_the_account_cannot_read_fails_on_the_row_fallback():
    fake = FakeServiceNow(dictionary_readable=False, unreadable_columns=frozenset({"correlation_id"}))
    await fake.start()
    try:
        fake.add_incident(short_description="seeded")
        field = by_check(await probe(sn_target(fake)))["field 'correlation_id' on 'incident'"]
        assert field.status == "failed" and "has no correlation_id column" in field.detail
    finally:
        await fake.stop()


async def test_servicenow_an_instance_without_correlation_id_fails_the_field():
    fake = FakeServiceNow(correlation_id_length=None)
    await fake.start()
    try:
        field = by_check(await probe(sn_target(fake)))["field 'correlation_id' on 'incident'"]
        assert field.status == "failed" and "lists no correlation_id on incident or task" in field.detail
    finally:
        await fake.stop()


async def test_servicenow_a_correlation_id_too_short_for_the_keys_fails():
    fake = FakeServiceNow(correlation_id_length=40)
    await fake.start()
    try:
        field = by_check(await probe(sn_target(fake)))["field 'correlation_id' on 'incident'"]
        assert field.status == "failed" and "max_length 40" in field.detail and "64" in field.detail
    finally:
        await fake.stop()


async def test_servicenow_a_dictionary_query_the_instance_ignores_still_finds_only_the_column():
    """An ACL on sys_dictionary's `element` makes the instance ignore that clause and return every
    column's row: only a row naming correlation_id may count."""
    fake = FakeServiceNow(unreadable_columns=frozenset({"element"}))
    await fake.start()
    try:
        field = by_check(await probe(sn_target(fake)))["field 'correlation_id' on 'incident'"]
        # Rows without `element` prove nothing, and the table has no row to look at.
        assert field.status == "unchecked" and "do not name their column" in field.detail, field
        fake.add_incident(short_description="seeded")
        field = by_check(await probe(sn_target(fake)))["field 'correlation_id' on 'incident'"]
        assert field.status == "ok" and "present on a row of incident" in field.detail, field
    finally:
        await fake.stop()


async def test_servicenow_a_hibernating_instance_fails_the_table(snow):
    snow.inject("html", path="/api/now/table/incident")
    found = by_check(await probe(sn_target(snow)))
    assert found["table 'incident'"].status == "failed" and "instead of JSON" in found["table 'incident'"].detail


async def test_servicenow_an_unreachable_instance_fails_the_table_not_the_credentials(snow):
    snow.inject("reset", times=3, path="/api/now/table/incident")  # aiohttp retries an idempotent GET once
    found = by_check(await probe(sn_target(snow)))
    assert found["credentials"].status == "unchecked"
    assert found["table 'incident'"].status == "failed" and "failed" in found["table 'incident'"].detail


# -- BMC Helix -------------------------------------------------------------------------------------


def helix_target(fake: FakeBmcHelix, password: str | None = None, **options: Any) -> bmc_helix.BmcHelixTarget:
    cfg = {
        "kind": "bmc_helix",
        "base_url": fake.url,
        "auth": {"type": "ar_jwt", "username": fake.username, "password_env": "HELIX_PASSWORD"},
        "timeout_seconds": 5,
        **options,
    }
    return bmc_helix.from_config("helix-test", cfg, env={"HELIX_PASSWORD": password or fake.password})


@pytest.fixture
async def helix() -> AsyncIterator[FakeBmcHelix]:
    server = FakeBmcHelix()
    await server.start()
    yield server
    await server.stop()


FORM = "form 'HPD:IncidentInterface'"
FIELD = "field 'Vendor Ticket Number' on 'HPD:IncidentInterface'"


async def test_helix_working_setup_logs_in_and_searches_the_form_reading_nothing(helix):
    helix.add_incident(**{"Vendor Ticket Number": "some-key", "Status": "Assigned"})
    found = await probe(helix_target(helix))
    assert statuses(found) == {"credentials": "ok", FORM: "ok", FIELD: "ok"}
    search = helix.calls_to("/api/arsys/v1/entry/HPD:IncidentInterface", "GET")
    assert len(search) == 1 and "'Vendor Ticket Number' = " in search[0].query["q"]
    assert_no_writes(helix)


async def test_helix_wrong_password_fails_credentials_with_ars_message(helix):
    found = by_check(await probe(helix_target(helix, password="wrong")))
    assert found["credentials"].status == "failed"
    assert "ARERR 623" in found["credentials"].detail and "Authentication failed" in found["credentials"].detail
    assert found[FORM].status == "unchecked" and found[FIELD].status == "unchecked"


async def test_helix_a_correlation_field_the_form_lacks_is_reported(helix):
    found = by_check(await probe(helix_target(helix, correlation_field="Azure Alert Key")))
    assert found[FORM].status == "ok"
    field = found["field 'Azure Alert Key' on 'HPD:IncidentInterface'"]
    assert field.status == "failed" and "ARERR 1587" in field.detail


async def test_helix_a_form_that_does_not_answer_is_reported(helix):
    helix.inject("status", status=503, path="/api/arsys/v1/entry/HPD:IncidentInterface")
    found = by_check(await probe(helix_target(helix)))
    assert found["credentials"].status == "ok"
    assert found[FORM].status == "failed" and "503" in found[FORM].detail
    assert found[FIELD].status == "unchecked"


async def test_helix_an_unreachable_login_leaves_credentials_unchecked_and_fails_the_form(helix):
    helix.inject("reset", path="/api/jwt/login")
    found = by_check(await probe(helix_target(helix)))
    assert found["credentials"].status == "unchecked" and found[FORM].status == "failed"


# -- Jira Service Management ---------------------------------------------------------------------


def jira_target(fake: FakeJira, token: str | None = None, **options: Any) -> jsm.JiraServiceManagementTarget:
    cloud = fake.deployment == "cloud"
    cfg: dict[str, Any] = {
        "kind": "jira_service_management",
        "base_url": fake.url,
        "deployment": fake.deployment,
        "auth": {"type": "api_token", "email": fake.email, "token_env": "JIRA_TOKEN"} if cloud
        else {"type": "pat", "token_env": "JIRA_TOKEN"},
        "timeout_seconds": 5,
        **({"project_key": fake.project} if options.get("mode", "issue") == "issue" else {}),
        **options,
    }
    return jsm.from_config("jira-test", cfg, env={"JIRA_TOKEN": token or fake.token})


@pytest.fixture(params=["cloud", "data_center"])
async def jira(request: pytest.FixtureRequest) -> AsyncIterator[FakeJira]:
    server = FakeJira(deployment=request.param)
    await server.start()
    yield server
    await server.stop()


async def test_jira_issue_mode_checks_credentials_and_project(jira):
    found = await probe(jira_target(jira))
    assert statuses(found) == {"credentials": "ok", f"project {jira.project!r}": "ok"}
    assert_no_writes(jira)


async def test_jira_wrong_token_and_unknown_project_are_reported(jira):
    found = by_check(await probe(jira_target(jira, token="wrong")))
    assert found["credentials"].status == "failed" and "401" in found["credentials"].detail
    found = by_check(await probe(jira_target(jira, project_key="NOPE")))
    assert found["project 'NOPE'"].status == "failed" and "No project could be found" in found["project 'NOPE'"].detail


async def test_jira_request_mode_checks_service_desk_and_request_type(jira):
    ok = await probe(jira_target(jira, mode="request", service_desk_id=jira.service_desk_id,
                                 request_type_id=jira.request_type_id))
    assert all(f.status == "ok" for f in ok) and len(ok) == 3
    found = by_check(await probe(jira_target(jira, mode="request", service_desk_id=jira.service_desk_id,
                                             request_type_id="999")))
    assert found["request type '999'"].status == "failed"


# -- PagerDuty, forward, dry run -------------------------------------------------------------------


def pd_target(fake: FakePagerDuty, **options: Any) -> pagerduty.PagerDutyTarget:
    cfg = {"kind": "pagerduty", "base_url": fake.url, "routing_key_env": "PD_KEY", "timeout_seconds": 5, **options}
    env = {"PD_KEY": fake.routing_key, "PD_API_TOKEN": fake.api_token, "PD_WRONG": "nope"}
    return pagerduty.from_config("pd-test", cfg, env=env)


@pytest.fixture
async def pd() -> AsyncIterator[FakePagerDuty]:
    server = FakePagerDuty()
    await server.start()
    yield server
    await server.stop()


async def test_pagerduty_says_the_routing_key_cannot_be_checked_and_sends_no_event(pd):
    found = await probe(pd_target(pd))
    assert statuses(found) == {"routing key": "unchecked"}
    assert pd.calls == [] and pd.events == []


async def test_pagerduty_checks_a_rest_api_token_when_one_is_configured(pd):
    rest = {"api_token_env": "PD_API_TOKEN", "from_email": "relay@example.com", "api_base_url": pd.url}
    assert by_check(await probe(pd_target(pd, **rest)))["REST API token"].status == "ok"
    found = by_check(await probe(pd_target(pd, **{**rest, "api_token_env": "PD_WRONG"})))
    assert found["REST API token"].status == "failed" and "401" in found["REST API token"].detail
    assert pd.events == []


async def test_forward_cannot_be_checked_without_delivering_and_calls_nothing(pd):
    target = forward.from_config("fwd", {"kind": "forward", "base_url": f"{pd.url}/v2/enqueue", "timeout_seconds": 5})
    check = await check_target("fwd", target, now=0.0)
    await target.close()
    assert check.status == "unchecked" and pd.calls == []


async def test_dry_run_is_always_ok(tmp_path):
    target = dry_run.from_config("dry", {"kind": "dry_run", "path": str(tmp_path / "calls.jsonl")})
    check = await check_target("dry", target, now=0.0)
    assert check.status == "ok" and "calls.jsonl" in check.findings[0].detail


# -- Request Tracker: failures a real RT will not produce on demand ------------------------------


@pytest.fixture
async def rt() -> AsyncIterator[FakeRequestTracker]:
    server = FakeRequestTracker()
    server.add_queue("Azure Alerts", custom_fields=("AzureAlertId",))
    await server.start()
    yield server
    await server.stop()


def rt_target(fake: FakeRequestTracker) -> request_tracker.RequestTrackerTarget:
    cfg = {"kind": "request_tracker", "base_url": fake.url, "queue": "Azure Alerts", "timeout_seconds": 5,
           "auth": {"type": "token", "token_env": "RT_TOKEN"}}
    return request_tracker.from_config("rt-test", cfg, env={"RT_TOKEN": fake.token})


async def test_rt_fake_answers_the_probe_as_rt_does(rt):
    assert {f.status for f in await probe(rt_target(rt))} == {"ok"}
    assert_no_writes_but_searches(rt)


def assert_no_writes_but_searches(fake: FakeRequestTracker) -> None:
    # RT's REST2 searches are POSTs to collection endpoints; nothing else may be posted.
    posts = {c.path for c in fake.calls if c.method in WRITES}
    assert posts and all(p.endswith("/customfields") for p in posts), posts


async def test_rt_an_instance_that_answers_503_fails_credentials_as_unanswered(rt):
    rt.inject("status", status=503, path="/REST/2.0/rt")
    found = by_check(await probe(rt_target(rt)))
    assert found["credentials"].status == "failed" and "503" in found["credentials"].detail
    assert all(f.status == "unchecked" and "RT did not answer" in f.detail
               for name, f in found.items() if name != "credentials")


async def test_rt_an_html_page_in_place_of_the_queue_fails_the_queue(rt):
    rt.inject("html", path="/REST/2.0/queue/Azure")
    found = by_check(await probe(rt_target(rt)))
    queue = found["queue 'Azure Alerts'"]
    assert queue.status == "failed" and "instead of JSON" in queue.detail
    assert found["custom field 'AzureAlertId' applied to queue 'Azure Alerts'"].status == "unchecked"
