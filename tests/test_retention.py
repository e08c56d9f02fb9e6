"""Retention: the `retention:` section of RELAY_CONFIG, and the relay's periodic expire pass."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from prometheus_client import CollectorRegistry, Counter

from relay.app import RETENTION_FIRST_PASS_SECONDS, create_app, expire_periodically, retention_schedule
from relay.delivery.config import ConfigError, parse_config
from relay.delivery.routing import RetentionSettings
from relay.settings import Settings
from relay.store import Event, Expired, Retention, StoreUnavailable, idempotency_key
from relay.store.sqlite import SqliteStore
from tests.conftest import scrape

DAY = 86400.0
BASE = """\
targets:
  dry: {kind: dry_run}
routes:
  - target: dry
"""


def test_defaults_are_14_90_and_30_days_every_hour_with_the_first_pass_a_minute_after_start():
    config = parse_config(BASE)
    assert config.retention == RetentionSettings(delivered_days=14, dead_letter_days=90, closed_ticket_days=30,
                                                 interval_minutes=60)
    assert config.retention.store_retention() == Retention(14 * DAY, 90 * DAY, 30 * DAY)
    assert retention_schedule(config.retention) == (60, 3600)
    assert RETENTION_FIRST_PASS_SECONDS == 60


def test_the_section_sets_each_age_and_the_interval():
    config = parse_config(BASE + "retention: {delivered_days: 2, dead_letter_days: 30.5, closed_ticket_days: 1,"
                                 " interval_minutes: 15}\n")
    assert config.retention.store_retention() == Retention(2 * DAY, 30.5 * DAY, 1 * DAY)
    assert retention_schedule(config.retention) == (60, 900)


def test_bad_retention_values_are_reported_with_line_and_key():
    text = BASE + "retention:\n  delivered_days: 0\n  closed_ticket_days: 0.5\n  interval_minutes: soon\n  keep: 3\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    assert [p.format("FILE") for p in info.value.problems] == [
        "FILE:6: retention.delivered_days: must be a number from 1 to 3650 (got 0)",
        "FILE:7: retention.closed_ticket_days: must be a number from 1 to 3650 (got 0.5)",
        "FILE:8: retention.interval_minutes: must be a number from 1 to 1440 (got 'soon')",
        "FILE:9: retention.keep: unknown key; expected one of delivered_days, dead_letter_days, "
        "closed_ticket_days, interval_minutes",
    ]


def test_retention_must_be_a_mapping():
    with pytest.raises(ConfigError, match=r"retention: must be a mapping \(got a list\)"):
        parse_config(BASE + "retention: [14]\n")


class FailsOnce(SqliteStore):
    """A real store whose first expire pass raises, as a broken disk or a bug would."""

    def __init__(self, *args, **kw) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kw)
        self.passes = 0

    async def expire(self, now: float, retention: Retention) -> Expired:
        self.passes += 1
        if self.passes == 1:
            raise RuntimeError("boom")
        if self.passes == 2:
            raise StoreUnavailable("sqlite: disk full: cannot write relay.db")
        return await super().expire(now, retention)


def event(i: int) -> Event:
    alert_id = f"/subscriptions/s/providers/Microsoft.AlertsManagement/alerts/{i}"
    return Event(idempotency_key(alert_id, "Fired", "t"), alert_id, "Fired", "t", b"{}")


async def test_periodic_pass_survives_failures_logs_and_counts_what_it_deleted(tmp_path, caplog):
    store = FailsOnce(tmp_path / "relay.db")
    await store.open()
    registry = CollectorRegistry()
    expired = Counter("relay_store_expired_total", "x", ["kind"], registry=registry)
    caplog.set_level(logging.INFO, logger="relay.app")
    try:
        for i in range(3):
            await store.accept(event(i))
        for c in await store.claim(10, 60):
            await store.complete(c)
        # Ages of zero make everything delivered old at once; the timer is shortened, not the logic.
        settings = RetentionSettings(delivered_days=0, dead_letter_days=0, closed_ticket_days=0)
        task = asyncio.create_task(expire_periodically(store, settings, expired, first=0, every=0.01))
        deadline = time.monotonic() + 30  # a hang guard, not a timing
        while registry.get_sample_value("relay_store_expired_total", {"kind": "events"}) != 2:
            assert not task.done(), "the retention task died"
            assert time.monotonic() < deadline, "no retention pass deleted anything"
            await asyncio.sleep(0.01)
        assert not task.done(), "the task keeps running after its failed passes"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await store.close()
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("retention pass failed") for m in messages)
    assert any("retention pass failed" in m and "disk full" in m for m in messages)
    assert "retention deleted 2 delivered events, 0 dead letters, 0 ticket records, 0 blobs" in messages
    assert registry.get_sample_value("relay_store_expired_total", {"kind": "tickets"}) == 0


async def test_relay_serve_exports_the_expired_counter(issuer, tmp_path, aiohttp_client):
    settings = Settings.from_env({**issuer.relay_env(), "RELAY_STORE": f"sqlite:///{tmp_path / 'relay.db'}"})
    client = await aiohttp_client(create_app(settings, deliver=True))
    text = await scrape(client)
    for kind in ("events", "dead_letters", "tickets", "blobs"):
        assert f'relay_store_expired_total{{kind="{kind}"}} 0.0' in text


class Backlogged:
    """A store whose retention deletes a bounded batch per pass (as Azure Storage does): three full passes."""

    def __init__(self) -> None:
        self.passes = 0

    async def expire(self, now, retention):  # type: ignore[no-untyped-def]
        self.passes += 1
        return Expired(events=1000) if self.passes <= 3 else Expired()


async def test_a_pass_that_deleted_something_is_followed_soon_until_nothing_is_left():
    store = Backlogged()
    expired = Counter("relay_store_expired_total", "x", ["kind"], registry=CollectorRegistry())
    settings = RetentionSettings()
    # `every` is the default hour: only passes that found work may come sooner (after `first`).
    first, every = 0.01, retention_schedule(settings)[1]
    task = asyncio.create_task(expire_periodically(store, settings, expired, first=first, every=every))
    deadline = time.monotonic() + 30  # a hang guard, not a timing
    while store.passes < 4:
        assert time.monotonic() < deadline, f"only {store.passes} passes: a busy store's backlog is not caught up"
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    assert store.passes == 4, "once a pass finds nothing, the next waits the interval"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
