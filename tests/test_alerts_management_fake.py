"""The Alerts Management fake, driven by the real `azure-mgmt-alertsmanagement` client over HTTPS with a
test CA and a test credential: list filters, nextLink paging, get by id, change state, 401, 429, 5xx."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from azure.mgmt.alertsmanagement.aio import AlertsManagementClient

from tests.fakes.alerts_management import FakeAlertsManagement

SUB = "11111111-2222-3333-4444-555555555555"
RULE_A = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Insights/metricAlerts/cpu-high"
RULE_B = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Insights/scheduledQueryRules/errors"
NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


class StaticCredential:
    """An AsyncTokenCredential that hands out a fixed token (the relay uses DefaultAzureCredential)."""

    def __init__(self, token: str = "test-arm-token") -> None:
        self.token = token
        self.scopes: list[tuple[str, ...]] = []

    async def get_token(self, *scopes: str, **kwargs: object) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)

    async def close(self) -> None:
        pass

    async def __aenter__(self) -> StaticCredential:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass


def sdk_client(fake: FakeAlertsManagement, credential: StaticCredential | None = None,
               **options: object) -> AlertsManagementClient:
    return AlertsManagementClient(credential or StaticCredential(), SUB, base_url=fake.url,
                                  connection_verify=fake.ca_path, retry_backoff_factor=0.01, **options)


@pytest.fixture
async def fake():
    server = FakeAlertsManagement(now=NOW)
    await server.start()
    yield server
    await server.stop()


async def listed(client: AlertsManagementClient, **filters: object) -> list:
    return [a async for a in client.alerts.get_all(**filters)]


async def test_lists_with_the_documented_filters_and_nextlink_paging(fake):
    for i in range(7):
        fake.add_alert(SUB, RULE_A, NOW - dt.timedelta(hours=1, minutes=i))
    fired_b = fake.add_alert(SUB, RULE_B, NOW - dt.timedelta(hours=2), signal_type="Log", severity="Sev1")
    fake.resolve(fired_b["id"], NOW - dt.timedelta(hours=1))
    fake.add_alert(SUB, RULE_A, NOW - dt.timedelta(days=3))  # outside 1d
    fake.add_alert("99999999-2222-3333-4444-555555555555", RULE_A, NOW - dt.timedelta(hours=1))  # other sub
    credential = StaticCredential()
    async with sdk_client(fake, credential) as client:
        everything = await listed(client, page_count=3)
        assert len(everything) == 8
        assert len(fake.calls_to("/alerts", "GET")) == 3  # 3 + 3 + 2 through nextLink
        assert all(c.headers["Authorization"] == "Bearer test-arm-token" for c in fake.calls)
        assert credential.scopes and credential.scopes[0] == ("https://management.azure.com/.default",)
        assert {a.properties.essentials.alert_rule for a in await listed(client, alert_rule=RULE_B)} == {RULE_B}
        resolved = await listed(client, monitor_condition="Resolved")
        assert [a.id for a in resolved] == [fired_b["id"]]
        assert resolved[0].properties.essentials.monitor_condition_resolved_date_time == NOW - dt.timedelta(hours=1)
        assert len(await listed(client, severity="Sev1")) == 1
        assert len(await listed(client, time_range="7d")) == 9
        custom = f"{(NOW - dt.timedelta(minutes=63)).isoformat()}/{NOW.isoformat()}"
        assert len(await listed(client, custom_time_range=custom)) == 4
        with pytest.raises(HttpResponseError) as both:
            await listed(client, time_range="1d", custom_time_range=custom)
        assert both.value.status_code == 400 and "together" in str(both.value)


async def test_get_by_id_and_change_state(fake):
    alert = fake.add_alert(SUB, RULE_A, NOW - dt.timedelta(minutes=10))
    guid = alert["id"].rsplit("/", 1)[-1]
    async with sdk_client(fake) as client:
        got = await client.alerts.get_by_id(guid)
        assert got.id == alert["id"] and got.properties.essentials.alert_state == "New"
        changed = await client.alerts.change_state(guid, new_state="Closed")
        assert changed.properties.essentials.alert_state == "Closed"
        assert fake.state_changes == [(alert["id"], "Closed")]
        with pytest.raises(ResourceNotFoundError):
            await client.alerts.get_by_id("00000000-0000-0000-0000-000000000000")
        with pytest.raises(HttpResponseError) as bad:
            await client.alerts.change_state(guid, new_state="Resolved")
        assert bad.value.status_code == 400


async def test_a_wrong_token_is_401(fake):
    async with sdk_client(fake, StaticCredential("not-the-token")) as client:
        with pytest.raises(ClientAuthenticationError):
            await listed(client)


async def test_the_sdk_refuses_a_bearer_token_over_plain_http(fake):
    client = AlertsManagementClient(StaticCredential(), SUB, base_url=fake.url.replace("https", "http"))
    async with client:
        with pytest.raises(Exception, match=r"(?i)non-TLS|https"):
            await listed(client)
    assert fake.calls == []


async def test_429_with_retry_after_is_waited_for_and_5xx_retried(fake):
    fake.add_alert(SUB, RULE_A, NOW - dt.timedelta(minutes=10))
    fake.inject("status", status=429, retry_after="1", path="/alerts")
    fake.inject("status", status=503, path="/alerts")
    async with sdk_client(fake) as client:
        started = time.monotonic()
        assert len(await listed(client)) == 1
        assert time.monotonic() - started >= 1.0  # Retry-After: 1 was honoured
    assert len(fake.calls_to("/alerts")) == 3


async def test_5xx_past_the_retries_raises(fake):
    fake.inject("status", status=500, times=10, path="/alerts")
    async with sdk_client(fake, retry_total=2) as client:
        with pytest.raises(HttpResponseError) as err:
            await listed(client)
    assert err.value.status_code == 500 and len(fake.calls_to("/alerts")) == 3
