"""The Request Tracker target against the fake REST2 server: guards, assets, failures, config.

The real RT runs in tests/e2e; these tests cover what a real RT will not do on demand.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from relay.targets import Incident, Ticket, request_tracker
from relay.targets.target_config import TargetConfigError
from tests.conftest import expect_error
from tests.fakes.request_tracker import FakeRequestTracker

KEY = "7d1e2f3a-4b5c-4d6e-8f90-a1b2c3d4e5f6"
VM = "/subscriptions/s1/resourcegroups/rg-web/providers/microsoft.compute/virtualmachines/web-01"
QUEUE = "Azure Alerts"


def an_incident(
    key: str = KEY, cis: tuple[str, ...] = (), resource_ids: tuple[str, ...] = (), **fields: Any
) -> Incident:
    return Incident(
        key,
        "CPU over 90% on web-01",
        "Metric alert fired",
        "Sev1",
        fields=fields,
        configuration_items=cis,
        resource_ids=resource_ids,
    )


def make_target(fake: FakeRequestTracker, **options: Any) -> request_tracker.RequestTrackerTarget:
    cfg = {
        "kind": "request_tracker",
        "base_url": fake.url,
        "auth": {"type": "token", "token_env": "RT_TOKEN"},
        "queue": QUEUE,
        "timeout_seconds": 5,
        **options,
    }
    return request_tracker.from_config(
        "rt-test", cfg, env={"RT_TOKEN": fake.token, "RT_PASSWORD": fake.password}
    )


@pytest.fixture
async def fake() -> AsyncIterator[FakeRequestTracker]:
    server = FakeRequestTracker()
    server.add_queue(QUEUE, custom_fields=("AzureAlertId",))
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def target(fake: FakeRequestTracker) -> AsyncIterator[request_tracker.RequestTrackerTarget]:
    t = make_target(fake)
    yield t
    await t.close()


async def test_create_sets_the_key_custom_field_and_route_priority_in_the_queue(fake, target):
    ticket = await target.create(an_incident(Priority=75, assignment_group="Cloud Ops"))
    stored = fake.tickets[int(ticket.id)]
    assert (stored["Queue"], stored["CustomFields"], stored["Priority"]) == (QUEUE, {"AzureAlertId": KEY}, 75)
    sent = fake.calls_to("/REST/2.0/ticket", "POST")[0].json()
    assert "assignment_group" not in sent, "ServiceNow-style route fields never reach RT"


async def test_a_custom_field_not_applied_to_the_queue_stops_everything_before_a_ticket_exists(fake):
    target = make_target(fake, queue="General")
    try:
        find_error = await expect_error(target.find(an_incident()))
        create_error = await expect_error(target.create(an_incident()))
    finally:
        await target.close()
    assert not find_error.retryable and not create_error.retryable
    assert "not applied to queue 'General'" in str(create_error)
    assert fake.tickets == {}, "RT would drop the key silently: no ticket may be created"


async def test_a_missing_queue_is_refused_for_good(fake):
    target = make_target(fake, queue="Nope")
    try:
        error = await expect_error(target.create(an_incident()))
    finally:
        await target.close()
    assert (error.status, error.retryable) == (404, False)


async def test_the_queue_check_runs_once_per_queue(fake, target):
    await target.find(an_incident())
    await target.create(an_incident(key="other"))
    assert len(fake.calls_to(f"/REST/2.0/queue/{QUEUE}")) == 1


async def test_find_returns_the_active_ticket_else_the_latest_resolved_one(fake, target):
    fake.add_ticket(QUEUE, "resolved", AzureAlertId=KEY)
    latest = fake.add_ticket(QUEUE, "resolved", AzureAlertId=KEY)
    assert await target.find(an_incident()) == Ticket(str(latest["id"]), str(latest["id"]), resolved=True)
    active = fake.add_ticket(QUEUE, "open", AzureAlertId=KEY)
    assert await target.find(an_incident()) == Ticket(str(active["id"]), str(active["id"]), resolved=False)
    search = fake.calls_to("/REST/2.0/tickets")[0].form()
    assert search["query"] == f"'CF.{{AzureAlertId}}' = '{KEY}' AND (Status = '__Active__' OR Status = 'resolved')"
    assert (search["per_page"], search["orderby"], search["order"]) == ("2", "id", "DESC")


async def test_find_returns_none_when_no_ticket_carries_the_key(fake, target):
    fake.add_ticket(QUEUE, "open", AzureAlertId="another-alert")
    assert await target.find(an_incident()) is None


async def test_two_active_tickets_with_one_key_is_an_error_a_person_must_settle(fake, target):
    fake.add_ticket(QUEUE, "new", AzureAlertId=KEY)
    fake.add_ticket(QUEUE, "open", AzureAlertId=KEY)
    error = await expect_error(target.find(an_incident()))
    assert not error.retryable and "#1" in str(error) and "#2" in str(error)


@pytest.mark.parametrize("key", ["", " x", "it's", 'a"b', "a\\b", "x" * 256])
async def test_unsafe_keys_are_refused_without_calling_rt(fake, target, key):
    assert not (await expect_error(target.find(an_incident(key=key)))).retryable
    assert not (await expect_error(target.create(an_incident(key=key)))).retryable
    assert fake.calls == []


async def test_an_asset_named_by_the_arm_id_is_linked_whatever_its_case(fake, target):
    asset = fake.add_asset(VM.upper())
    fake.add_asset(VM + "/extensions/agent")  # a child resource: the substring search finds it too
    ticket = await target.create(an_incident(cis=("web-01",), resource_ids=(VM,)))
    assert fake.tickets[int(ticket.id)]["RefersTo"] == [f"asset:{asset['id']}"]


async def test_a_missing_asset_is_left_unlinked_by_default(fake, target):
    ticket = await target.create(an_incident(cis=(VM,)))
    assert fake.tickets[int(ticket.id)]["RefersTo"] == [] and fake.assets == {}


async def test_create_if_missing_creates_the_asset_in_the_catalog_and_links_it(fake):
    fake.catalogs.add("Azure resources")
    target = make_target(fake, ci_binding="create_if_missing", asset_catalog="Azure resources")
    try:
        ticket = await target.create(an_incident(cis=(VM,)))
    finally:
        await target.close()
    [asset] = fake.assets.values()
    assert (asset["Name"], asset["Catalog"]) == (VM, "Azure resources")
    assert fake.tickets[int(ticket.id)]["RefersTo"] == [f"asset:{asset['id']}"]


async def test_an_asset_refused_for_good_leaves_the_ticket_unlinked(fake):
    target = make_target(fake, ci_binding="create_if_missing", asset_catalog="No such catalog")
    try:
        ticket = await target.create(an_incident(cis=(VM,)))
    finally:
        await target.close()
    assert fake.tickets[int(ticket.id)]["RefersTo"] == []


async def test_note_is_a_comment(fake, target):
    ticket = await target.create(an_incident())
    await target.note(ticket, an_incident(), "fired again at 10:05")
    assert fake.comments[int(ticket.id)] == ["fired again at 10:05"]


async def test_resolve_and_reopen_change_status_with_a_comment(fake, target):
    ticket = await target.create(an_incident())
    await target.resolve(ticket, an_incident(), "resolved at 10:30")
    assert fake.tickets[int(ticket.id)]["Status"] == "resolved"
    await target.reopen(ticket, an_incident(), "fired again")
    assert fake.tickets[int(ticket.id)]["Status"] == "open"
    assert fake.comments[int(ticket.id)] == ["resolved at 10:30", "fired again"]


async def test_a_status_the_lifecycle_refuses_is_an_error_though_rt_answers_201(fake):
    target = make_target(fake, resolved_status="done")
    try:
        ticket = await target.create(an_incident())
        error = await expect_error(target.resolve(ticket, an_incident(), "r"))
    finally:
        await target.close()
    assert not error.retryable
    assert "isn't a valid status" in str(error), "RT's own message must reach the dead letter"


async def test_a_comment_on_a_ticket_rt_does_not_have_is_not_retryable(fake, target):
    error = await expect_error(target.note(Ticket("999", "999"), an_incident(), "n"))
    assert (error.status, error.retryable) == (400, False)
    assert "Message could not be recorded" in str(error)


async def test_basic_auth_works_and_a_bad_token_is_not_retryable(fake):
    basic = make_target(fake, auth={"type": "basic", "username": "root", "password_env": "RT_PASSWORD"})
    try:
        await basic.find(an_incident())
    finally:
        await basic.close()
    fake.token = "1-14-rotated"
    target = make_target(fake)
    fake.token = "1-14-other"
    try:
        error = await expect_error(target.find(an_incident()))
    finally:
        await target.close()
    assert (error.status, error.retryable) == (401, False)


async def test_the_token_never_appears_in_logs_or_errors(fake, caplog):
    caplog.set_level(logging.DEBUG)
    target = make_target(fake)
    fake.inject("status", status=500, path="/REST/2.0/tickets")
    try:
        error = await expect_error(target.find(an_incident()))
    finally:
        await target.close()
    assert fake.token not in caplog.text and fake.token not in str(error)


@pytest.mark.parametrize(
    ("kind", "extra"),
    [
        ("status", {"status": 429, "retry_after": "9"}),
        ("status", {"status": 502}),
        ("reset", {}),
        ("html", {}),
    ],
)
async def test_transient_failures_are_retryable(fake, target, kind, extra):
    fake.inject(kind, path="/REST/2.0/ticket", **extra)
    error = await expect_error(target.create(an_incident()))
    assert error.retryable
    if extra.get("status") == 429:
        assert error.retry_after == 9.0


async def test_a_slow_answer_times_out_as_retryable(fake):
    target = make_target(fake, timeout_seconds=0.2)
    fake.inject("slow", delay=2.0)
    try:
        error = await expect_error(target.find(an_incident()))
    finally:
        await target.close()
    assert error.retryable and "timed out" in str(error)


def cfg(**extra: Any) -> dict[str, Any]:
    return {"base_url": "https://rt.example.com", "auth": {"type": "token", "token_env": "T"}, **extra}


def test_config_accepts_a_base_url_that_already_ends_in_rest2():
    target = request_tracker.from_config(
        "rt", cfg(base_url="https://rt.example.com/REST/2.0/"), env={"T": "t"}
    )
    assert target.http.base_url == "https://rt.example.com"


@pytest.mark.parametrize(
    ("key", "value"),
    [("custom_field", "Azure}Id"), ("queue", "it's"), ("ci_binding", "sometimes"), ("catalog", "x")],
)
def test_config_names_the_bad_key(key, value):
    with pytest.raises(TargetConfigError, match=key):
        request_tracker.from_config("rt", cfg(**{key: value}), env={"T": "t"})


def test_config_names_the_unset_token_variable():
    with pytest.raises(TargetConfigError, match=r"auth\.token_env names the environment variable T"):
        request_tracker.from_config("rt", cfg(), env={})


# -- read and search (idempotent steps, store-loss recovery) -------------------------------------------

async def test_search_finds_the_key_and_its_successors_newest_first_in_any_status(fake, target):
    first = fake.add_ticket(QUEUE, "resolved", AzureAlertId=KEY)
    second = fake.add_ticket(QUEUE, "open", AzureAlertId=f"{KEY}.2")
    fake.add_ticket(QUEUE, "open", AzureAlertId="another-alert")
    found = await target.search(KEY)
    assert [(f.correlation_key, f.ticket.id, f.ticket.resolved) for f in found] == [
        (f"{KEY}.2", str(second["id"]), False), (KEY, str(first["id"]), True)]
    assert fake.calls_to("/REST/2.0/tickets")[-1].form()["query"] == f"'CF.{{AzureAlertId}}' LIKE '{KEY}'"


async def test_search_refuses_a_row_that_does_not_carry_the_key(fake, target, monkeypatch):
    fake.add_ticket(QUEUE, "open", AzureAlertId="another-alert")
    monkeypatch.setattr("tests.fakes.request_tracker._holds", lambda actual, op, value: True)  # a filter ignored
    error = await expect_error(target.search(KEY))
    assert not error.retryable and "refusing to trust the search" in str(error)


async def test_read_gives_the_status_and_the_latest_comments_newest_first(fake, target):
    ticket = Ticket(str(fake.add_ticket(QUEUE, "open", AzureAlertId=KEY)["id"]))
    for n in range(7):
        await target.note(ticket, an_incident(), f"comment {n}")
    view = await target.read(ticket)
    assert view.resolved is False
    assert view.notes == ("comment 6", "comment 5", "comment 4", "comment 3", "comment 2")
    await target.resolve(ticket, an_incident(), "resolved")
    view = await target.read(ticket)
    assert view.resolved is True and view.notes[0] == "resolved", "the status change's comment is a note too"
