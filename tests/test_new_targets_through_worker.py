"""Jira Service Management and PagerDuty through the delivery worker (real SQLite store, the vendors'
fakes): create, note, resolve, re-fire, and a crash between the vendor call and recording its result."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from relay.delivery.routing import DeliverySettings, RelayConfig, Route, TargetConfig
from relay.targets import jira_service_management as jsm
from relay.targets import pagerduty
from tests.fakes.jira import FakeJira
from tests.fakes.pagerduty import FakePagerDuty
from tests.test_worker import (
    GUID,
    T1,
    T2,
    SpyStore,
    accept,
    alert_body,
    drained,
    metric,
    running,
    store,
    until,
)

__all__ = ["running", "store"]  # the worker tests' fixtures, used here too

T3 = "2024-05-01T10:25:00Z"


def config(kind: str, lease_seconds: float = 30) -> RelayConfig:
    return RelayConfig(
        targets={"itsm": TargetConfig(name="itsm", kind=kind, block={}, timeout_seconds=5, max_concurrency=4)},
        routes=(Route(target="itsm"),),
        delivery=DeliverySettings(poll_seconds=0.01, backoff_base_seconds=0.01, backoff_max_seconds=0.05,
                                  lease_seconds=lease_seconds, shutdown_grace_seconds=5),
    )


@pytest.fixture
async def jira() -> AsyncIterator[FakeJira]:
    fake = FakeJira(deployment="cloud")
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def pd() -> AsyncIterator[FakePagerDuty]:
    fake = FakePagerDuty()
    await fake.start()
    yield fake
    await fake.stop()


def jira_target(fake: FakeJira) -> jsm.JiraServiceManagementTarget:
    cfg = {"kind": "jira_service_management", "base_url": fake.url, "project_key": fake.project,
           "auth": {"type": "api_token", "email": fake.email, "token_env": "T"}, "timeout_seconds": 5}
    return jsm.from_config("itsm", cfg, env={"T": fake.token})


def pd_target(fake: FakePagerDuty) -> pagerduty.PagerDutyTarget:
    cfg = {"kind": "pagerduty", "base_url": fake.url, "routing_key_env": "K", "timeout_seconds": 5}
    return pagerduty.from_config("itsm", cfg, env={"K": fake.routing_key})


async def test_jira_create_note_resolve_and_refire_opens_a_new_issue_naming_the_previous(store, running, jira):
    await accept(store, alert_body())
    await accept(store, alert_body(fired=T1))  # fired again while open: a note
    await accept(store, alert_body(condition="Resolved", fired=T1, resolved=T2))
    await accept(store, alert_body(fired=T3))  # after the resolve: a new issue
    await running(store, config("jira_service_management"), {"itsm": jira_target(jira)})
    await until(lambda: drained(store), "every event delivered")
    first, second = sorted(jira.issues.values(), key=lambda i: i["id"])
    assert first["fields"]["labels"] == [f"azure-alert-{GUID}"]
    assert second["fields"]["labels"] == [f"azure-alert-{GUID}.2"]
    assert (first["fields"]["status"]["name"], second["fields"]["status"]["name"]) == ("Resolved", "Open")
    assert first["history"] == ["comment", "Resolved", "comment"]  # the repeat note, the resolve note
    assert all(c["internal"] for c in first["comments"])
    text = jsm.adf_text(second["fields"]["description"])
    assert f"previous ticket {first['key']} was resolved" in text, text


async def test_jira_adopts_after_a_crash_even_though_the_search_lags_behind_the_create(store, running, jira):
    # The search shows a new issue only 0.5 s after its create; the restarted relay knows no issue ids to
    # reconcile, so what keeps it from creating again is that it waits out the crashed intent (the lease).
    jira.search_lag = 0.5
    lease = 2.0
    await accept(store, alert_body())
    await accept(store, alert_body(condition="Resolved", resolved=T1))
    crashing = SpyStore(store, fail_puts=1)
    first = await running(crashing, config("jira_service_management", lease), {"itsm": jira_target(jira)})
    await until(lambda: len(jira.issues) == 1, "the first process created the issue")
    await until(lambda: crashing.fail_final_puts == 0, "the first process failed to record it")
    await first.stop(grace_seconds=0)
    restarted = await running(store, config("jira_service_management", lease), {"itsm": jira_target(jira)})
    await until(lambda: drained(store), "both events delivered by the restarted worker")
    [issue] = jira.issues.values()
    assert issue["fields"]["status"]["name"] == "Resolved"
    assert metric(restarted, "relay_deliveries_total", target="itsm", outcome="adopt") == 1


async def test_jira_refire_on_data_center_goes_through_v2(store, running):
    fake = FakeJira(deployment="data_center")
    await fake.start()
    try:
        cfg = {"kind": "jira_service_management", "base_url": fake.url, "project_key": fake.project,
               "deployment": "data_center", "auth": {"type": "pat", "token_env": "T"}}
        target = jsm.from_config("itsm", cfg, env={"T": fake.token})
        await accept(store, alert_body())
        await accept(store, alert_body(condition="Resolved", resolved=T1))
        await accept(store, alert_body(fired=T2))
        await running(store, config("jira_service_management"), {"itsm": target})
        await until(lambda: drained(store), "every event delivered")
    finally:
        await fake.stop()
    assert [i["fields"]["status"]["name"] for i in fake.issues.values()] == ["Resolved", "Open"]
    assert {c.path for c in fake.calls if "search" in c.path} == {"/rest/api/2/search"}


async def test_pagerduty_trigger_resolve_and_refire(store, running, pd):
    await accept(store, alert_body())
    await accept(store, alert_body(fired=T1))  # a repeat: no event (notes are not sent)
    await accept(store, alert_body(condition="Resolved", fired=T1, resolved=T2))
    await accept(store, alert_body(fired=T3))
    await running(store, config("pagerduty"), {"itsm": pd_target(pd)})
    await until(lambda: drained(store), "every event delivered")
    assert [(i["dedup_key"], i["status"]) for i in pd.incidents] == [(GUID, "resolved"), (f"{GUID}.2", "triggered")]
    assert [e["event_action"] for e in pd.events] == ["trigger", "resolve", "trigger"]
    assert "Fired again after its previous ticket" in pd.incidents[1]["payload"]["custom_details"]["description"]


async def test_pagerduty_crash_between_send_and_record_is_one_incident(store, running, pd):
    await accept(store, alert_body())
    await accept(store, alert_body(condition="Resolved", resolved=T1))
    crashing = SpyStore(store, fail_puts=1)
    first = await running(crashing, config("pagerduty", 0.3), {"itsm": pd_target(pd)})
    await until(lambda: len(pd.events) == 1, "the first process sent the trigger")
    await until(lambda: crashing.fail_final_puts == 0, "the first process failed to record it")
    await first.stop(grace_seconds=0)
    await running(store, config("pagerduty", 0.3), {"itsm": pd_target(pd)})  # find says none: sent again
    await until(lambda: drained(store), "both events delivered by the restarted worker")
    [incident] = pd.incidents
    assert incident["status"] == "resolved"
    assert [e["event_action"] for e in pd.events] == ["trigger", "trigger", "resolve"], "sent again, deduplicated"
