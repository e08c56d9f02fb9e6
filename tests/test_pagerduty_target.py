"""The PagerDuty target against the fake Events API: trigger, resolve, re-fire, idempotency by
dedup_key, the payload an on-call engineer reads, failures, and what check-config refuses."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from relay.alerts import parse_alert
from relay.delivery.config import ConfigError, parse_config
from relay.delivery.rendering import render_incident
from relay.targets import Incident, Ticket, pagerduty
from relay.targets.target_config import TargetConfigError
from tests.conftest import expect_error, load_sample
from tests.fakes.pagerduty import FakePagerDuty

KEY = "5b6c1c8e-0b7a-4a41-9f43-2d1f5a9f6c11"


def make_target(fake: FakePagerDuty, **options: Any) -> pagerduty.PagerDutyTarget:
    cfg = {"kind": "pagerduty", "base_url": fake.url, "routing_key_env": "PD_KEY", "timeout_seconds": 5, **options}
    if "api_token_env" in options:
        options.setdefault("api_base_url", fake.url)
        cfg.update(options)
    env = {"PD_KEY": fake.routing_key, "PD_DB_KEY": "DBKEY", "PD_API_TOKEN": fake.api_token}
    return pagerduty.from_config("pd-test", cfg, env=env)


def an_incident(key: str = KEY, sample: str = "testaction-metric-static-fired.json", severity: str | None = None,
                **fields: Any) -> Incident:
    doc = load_sample(sample)
    if severity:
        doc["data"]["essentials"]["severity"] = severity
    alert = parse_alert(doc)
    target = pagerduty.PagerDutyTarget
    incident = render_incident(alert, target=target, correlation_key=key,  # type: ignore[arg-type]
                               configuration_items=alert.essentials.configuration_items,
                               fields=fields, body=json.dumps(doc).encode())
    return incident


@pytest.fixture
async def fake() -> AsyncIterator[FakePagerDuty]:
    server = FakePagerDuty(routing_keys=("R0UTINGKEY0000000000000000000001", "DBKEY"))
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def target(fake: FakePagerDuty) -> AsyncIterator[pagerduty.PagerDutyTarget]:
    t = make_target(fake)
    yield t
    await t.close()


async def test_trigger_opens_one_incident_keyed_by_the_correlation_key_with_the_alerts_essentials(fake, target):
    incident = an_incident()
    ticket = await target.create(incident)
    assert ticket == Ticket(id=KEY, number=KEY)
    [opened] = fake.incidents
    [event] = fake.events
    assert (event["event_action"], event["dedup_key"]) == ("trigger", KEY)
    p = opened["payload"]
    e = parse_alert(load_sample("testaction-metric-static-fired.json")).essentials
    assert p["summary"] == incident.summary
    assert (e.severity, p["severity"]) == ("Sev4", "info")
    assert p["source"] == e.target_ids[0]
    assert p["class"] == e.signal_type and p["timestamp"] == e.fired_at
    assert p["custom_details"]["alert_rule"] == e.alert_rule
    assert p["custom_details"]["alert_id"] == e.alert_id
    [link] = opened["links"]
    assert link["href"].startswith("https://portal.azure.com/") and link["text"] == "Alert in the Azure portal"


@pytest.mark.parametrize(("severity", "expected"), [
    ("Sev0", "critical"), ("Sev1", "error"), ("Sev2", "warning"), ("Sev3", "info"), ("Sev4", "info"),
])
async def test_azure_severities_map_onto_pagerdutys_four(fake, target, severity, expected):
    await target.create(an_incident(severity=severity))
    assert fake.incidents[0]["payload"]["severity"] == expected


async def test_a_trigger_sent_again_after_a_crash_is_one_pagerduty_incident(fake, target):
    # The relay sent the trigger, died before recording it, and sends it again: find says nothing.
    await target.create(an_incident())
    assert await target.find(an_incident()) is None
    await target.create(an_incident())
    [opened] = fake.incidents
    assert opened["alerts"] == 2


async def test_resolve_resolves_it_and_a_refire_under_the_next_key_opens_a_new_incident(fake, target):
    ticket = await target.create(an_incident())
    await target.note(ticket, an_incident(), "fired again")  # skipped: the Events API takes no notes
    await target.resolve(ticket, an_incident(), "resolved")
    assert [i["status"] for i in fake.incidents] == ["resolved"]
    assert len(fake.events) == 2, "a note must not be sent as an event"
    await target.create(an_incident(key=f"{KEY}.2"))
    assert [(i["dedup_key"], i["status"]) for i in fake.incidents] == [(KEY, "resolved"), (f"{KEY}.2", "triggered")]


async def test_with_a_rest_api_token_a_note_goes_on_the_open_incident(fake):
    t = make_target(fake, api_token_env="PD_API_TOKEN", from_email="relay@example.com")
    t2 = make_target(fake, api_token_env="PD_API_TOKEN", from_email="nobody@example.com")
    try:
        ticket = await t.create(an_incident())
        await t.note(ticket, an_incident(), "fired again at 10:05")
        [note_call] = fake.calls_to("/notes")
        assert note_call.headers["Accept"] == "application/vnd.pagerduty+json;version=2"
        err = await expect_error(t2.note(ticket, an_incident(), "x"))
        await t.resolve(ticket, an_incident(), "resolved")
        await t.note(ticket, an_incident(), "after the resolve")  # no open incident: skipped
    finally:
        await t.close()
        await t2.close()
    assert fake.incidents[0]["notes"] == ["fired again at 10:05"]
    assert not err.retryable and "From header" in str(err)
    assert "pd-rest-token" not in str(err)


def test_a_rest_api_token_needs_the_user_notes_are_recorded_as():
    with pytest.raises(TargetConfigError) as info:
        pagerduty.from_config("pd", {"kind": "pagerduty", "routing_key_env": "K", "api_token_env": "T"},
                              env={"K": "k", "T": "t"})
    assert [k for k, _ in info.value.problems] == ["from_email"]


async def test_reopen_is_refused_not_retryable(fake, target):
    err = await expect_error(target.reopen(Ticket(KEY, KEY, True), an_incident(), "x"))
    assert not err.retryable and "on_refire: new" in str(err)


async def test_an_alert_without_severity_gets_the_default_severity(fake, target):
    await target.create(an_incident(sample="testaction-budget-fired.json"))
    assert fake.incidents[0]["payload"]["severity"] == "warning"


async def test_a_route_can_send_to_another_integration_by_naming_its_variable(fake, target):
    await target.create(an_incident(routing_key_env="PD_DB_KEY"))
    assert fake.events[0]["routing_key"] == "DBKEY"
    err = await expect_error(target.create(an_incident(routing_key_env="PD_MISSING")))
    assert not err.retryable and "PD_MISSING" in str(err)


async def test_202_is_success_400_is_not_retryable_429_is_with_its_retry_after(fake, target):
    fake.inject("status", status=429, retry_after="30")
    err = await expect_error(target.create(an_incident()))
    assert (err.retryable, err.retry_after) == (True, 30.0)
    fake.inject("status", status=500)
    assert (await expect_error(target.create(an_incident()))).retryable
    long = Incident(correlation_key="k" * 256, summary="s", description="d", severity=None)
    err = await expect_error(target.create(long))
    assert not err.retryable and "255" in str(err)  # refused before sending


async def test_pagerdutys_invalid_event_message_is_in_the_error(fake):
    t = make_target(fake)
    t._routing_key = "not-a-key"
    try:
        err = await expect_error(t.create(an_incident()))
    finally:
        await t.close()
    assert (err.status, err.retryable) == (400, False)
    assert "invalid event" in str(err) and "routing_key" in str(err)
    assert "not-a-key" not in repr(t)


async def test_the_fakes_rate_limit_answers_429_past_its_events_per_window(fake, target):
    fake.rate_limit = 2
    await target.create(an_incident())
    await target.create(an_incident())
    err = await expect_error(target.create(an_incident()))
    assert (err.status, err.retryable) == (429, True)


def test_the_routing_key_is_required_and_auth_is_not_an_option():
    with pytest.raises(TargetConfigError) as info:
        pagerduty.from_config("pd", {"kind": "pagerduty", "auth": {"type": "basic"}}, env={})
    assert [k for k, _ in info.value.problems] == ["auth", "routing_key_env"]


def test_the_default_endpoint_is_pagerdutys_events_api():
    t = pagerduty.from_config("pd", {"kind": "pagerduty", "routing_key_env": "K"}, env={"K": "x"})
    assert t.http.base_url == "https://events.pagerduty.com"


CONFIG = """\
targets:
  pd:
    kind: pagerduty
    routing_key_env: PD_ROUTING_KEY
routes:
  - target: pd
    on_refire: {on_refire}
"""


def test_check_config_refuses_reopen_on_a_pagerduty_route_at_its_line():
    with pytest.raises(ConfigError) as info:
        parse_config(CONFIG.format(on_refire="reopen"), source="FILE", check_target_options=True)
    [problem] = [p.format("FILE") for p in info.value.problems]
    assert problem.startswith("FILE:7: routes[0].on_refire: reopen cannot apply to target 'pd' (pagerduty)")
    assert parse_config(CONFIG.format(on_refire="new"), check_target_options=True).routes[0].target == "pd"
