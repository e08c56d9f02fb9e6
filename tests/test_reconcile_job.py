"""The reconciliation job against the Alerts Management fake with the real SDK over HTTPS: bounded
paging, malformed alerts, a failing pass (after the client's retries) reported and retried, and the
lease keeping passes to one replica."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from azure.core.exceptions import HttpResponseError

from relay.delivery.routing import ReconcileSettings
from relay.reconcile import JOB_NAME, Reconciler, azure_client_factory
from relay.reconcile.job import MAX_PAGES, PAGE_SIZE, RETRY_TOTAL
from relay.store.leases import JobLease, run_leased
from relay.store.sqlite import SqliteStore
from tests.fakes.alerts_management import FakeAlertsManagement
from tests.test_alerts_management_fake import StaticCredential

SUB = "11111111-2222-3333-4444-555555555555"
RULE = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Insights/metricAlerts/cpu-high"
SETTINGS = ReconcileSettings(subscriptions=(SUB,), rule_ids=(RULE.lower(),))


@pytest.fixture
async def fake():
    server = FakeAlertsManagement()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def store(tmp_path):
    s = SqliteStore(tmp_path / "relay.db")
    await s.open()
    yield s
    await s.close()


def reconciler(store, fake, **kw) -> Reconciler:
    clients = azure_client_factory(StaticCredential(), base_url=fake.url, connection_verify=fake.ca_path,
                                   retry_backoff_factor=0.01)
    return Reconciler(store, kw.pop("settings", SETTINGS), clients, **kw)


def test_defaults():
    assert (PAGE_SIZE, MAX_PAGES, RETRY_TOTAL) == (250, 200, 5)


async def test_paging_is_bounded_and_the_rest_waits_for_the_next_pass(store, fake):
    now = dt.datetime.now(dt.UTC)
    for i in range(7):
        fake.add_alert(SUB, RULE, now - dt.timedelta(minutes=60 - i))
    job = reconciler(store, fake, max_pages=2, page_size=3)
    first = await job.run_once()
    assert (first.listed, first.accepted["Fired"], first.truncated) == (6, 6, [SUB])
    assert len(fake.calls_to("/alerts", "GET")) == 2
    assert fake.calls_to("/alerts")[0].query["customTimeRange"].endswith("Z")
    # Oldest first: the next pass starts where this one stopped (the sixth alert's second), so it
    # reaches the seventh; listed to the end, the pass after takes the whole look-back again.
    second = await job.run_once()
    assert (second.accepted["Fired"], second.truncated) == (1, [])
    assert second.listed < 7
    third = await job.run_once()
    assert third.truncated == [SUB] and third.accepted["Fired"] == 0
    await job.close()


async def test_a_malformed_alert_is_skipped_and_counted(store, fake):
    now = dt.datetime.now(dt.UTC)
    good = fake.add_alert(SUB, RULE, now - dt.timedelta(minutes=5))
    bad = fake.add_alert(SUB, RULE, now - dt.timedelta(minutes=4))
    bad["properties"]["essentials"].pop("alertRule")
    job = reconciler(store, fake)
    result = await job.run_once()
    assert (result.malformed, result.accepted["Fired"]) == (1, 1)
    assert good["id"]
    await job.close()


async def test_a_pass_failing_after_the_retries_is_reported_then_retried(store, fake):
    fake.add_alert(SUB, RULE, dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))
    fake.inject("status", status=503, times=RETRY_TOTAL + 1, path="/alerts")
    job = reconciler(store, fake)
    with pytest.raises(HttpResponseError):
        await job.run_once()
    assert job.status()["last_success"] is None and "503" in job.status()["last_error"]
    assert len(fake.calls_to("/alerts")) == RETRY_TOTAL + 1
    result = await job.run_once()  # the next beat
    assert result.accepted["Fired"] == 1
    assert job.status()["last_error"] is None and job.status()["last_success"]
    await job.close()


async def test_an_alert_of_another_subscription_listing_needs_its_own_pass(store, fake):
    other = "99999999-2222-3333-4444-555555555555"
    rule = RULE.replace(SUB, other)
    fake.add_alert(other, rule, dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))
    both = ReconcileSettings(subscriptions=(SUB, other), rule_ids=(RULE.lower(), rule.lower()))
    job = reconciler(store, fake, settings=both)
    assert (await job.run_once()).accepted["Fired"] == 1
    assert {c.path.split("/")[2] for c in fake.calls_to("/alerts")} == {SUB, other}
    await job.close()


async def test_two_replicas_one_lease_one_pass_per_beat(store, fake):
    fake.add_alert(SUB, RULE, dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5))
    jobs = [reconciler(store, fake), reconciler(store, fake)]
    stopping = asyncio.Event()
    tasks = [asyncio.create_task(run_leased(JobLease(store, JOB_NAME, owner=f"replica-{i}", seconds=60),
                                            every=0.2, run=job.run_once, stopping=stopping))
             for i, job in enumerate(jobs)]
    await asyncio.sleep(1.0)
    stopping.set()
    await asyncio.gather(*tasks)
    ran = [job.last_success is not None for job in jobs]
    assert ran.count(True) == 1, ran
    assert sum(j.reconciled.labels("Fired")._value.get() for j in jobs) == 1
    for job in jobs:
        await job.close()
