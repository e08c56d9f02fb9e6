"""`make smoke` (devtools/smoke.py) against a fake Resource Manager over HTTPS, through the real Azure SDK
client and its long-running-operation poller, with a real relay on Azurite delivering to the fake
ServiceNow: the test alert is recorded and its ticket printed; a relay that never records it, a relay
that is down, a refused token and ARM's rate limit each fail with a message saying so."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from aiohttp import web
from azure.core.credentials import AccessToken
from azure.data.tables import TableClient
from azure.mgmt.monitor import MonitorManagementClient

from devtools import smoke
from devtools.smoke import Recorded, SmokeFailed, StackOutputs
from relay.app import create_app
from relay.settings import Settings
from relay.store.azure import AzureStorageStore
from tests.azurite import unique_names
from tests.fakes.arm import FakeArm
from tests.fakes.servicenow import FakeServiceNow

pytest_plugins = ["tests.azurite"]

SUBSCRIPTION = "11111111-2222-3333-4444-555555555555"
RESOURCE_GROUP = "rg-secexp-dev"
GROUP = "ag-secexp-dev-secure-webhook"


class Token:
    """A TokenCredential handing the SDK the bearer token the fake ARM expects."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)


@pytest.fixture
async def arm(issuer):  # type: ignore[no-untyped-def]
    fake = FakeArm(issuer, SUBSCRIPTION)
    await fake.start()
    yield fake
    await fake.stop()


def arm_client(arm: FakeArm, tmp_path, token: str | None = None) -> tuple[MonitorManagementClient, Token]:  # type: ignore[no-untyped-def]
    credential = Token(token or arm.token)
    client = MonitorManagementClient(credential, SUBSCRIPTION, base_url=arm.url,
                                     connection_verify=arm.ca_file(tmp_path))
    return client, credential


def outputs_for(group_id: str) -> StackOutputs:
    return StackOutputs.from_outputs({"actionGroupId": group_id, "storageAccountName": "stsecexpdevabc123"})


@pytest.fixture
async def relay_on_azurite(azurite, issuer, tmp_path):  # type: ignore[no-untyped-def]
    """A relay on its own Azurite table delivering to the fake ServiceNow; yields (url, table, servicenow)."""
    servicenow = FakeServiceNow()
    await servicenow.start()
    config = tmp_path / "relay.yaml"
    config.write_text(f"""\
targets:
  servicenow:
    kind: servicenow
    base_url: {servicenow.url}
    auth: {{type: basic, username: {servicenow.username}, password_env: SN_PASSWORD}}
routes:
  - target: servicenow
delivery: {{poll_seconds: 0.2}}
""")
    names = unique_names()
    store = AzureStorageStore(connection_string=azurite.connection_string, names=names)
    env = {**issuer.relay_env(), "RELAY_STORE": f"sqlite:///{tmp_path / 'unused.db'}", "RELAY_CONFIG": str(config)}
    import os

    os.environ["SN_PASSWORD"] = servicenow.password
    try:
        app = create_app(Settings.from_env(env), store=store, deliver=True)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        table = TableClient.from_connection_string(azurite.connection_string, table_name=names.table)
        yield f"http://127.0.0.1:{port}/alerts", table, servicenow
        await runner.cleanup()
        await servicenow.stop()
    finally:
        os.environ.pop("SN_PASSWORD", None)


async def test_smoke_passes_and_prints_the_ticket_the_relay_opened(arm, relay_on_azurite, tmp_path) -> None:
    url, table, servicenow = relay_on_azurite
    group_id = arm.add_action_group(RESOURCE_GROUP, GROUP, url)
    client, credential = arm_client(arm, tmp_path)
    lines: list[str] = []
    found = await asyncio.to_thread(smoke.run, client, table, outputs_for(group_id), timeout=30, poll=0.2,
                                    say=lines.append)
    (incident,) = servicenow.incidents.values()
    assert found["tickets"] == [{"target": "servicenow", "key": found["tickets"][0]["key"],
                                 "ticket": incident["number"]}], found
    assert found["alert_id"] == arm.sent[0]["data"]["essentials"]["alertId"]
    assert found["alert_id"].rsplit("/", 1)[-1] in found["tickets"][0]["key"], "not the test alert's own ticket"
    assert any(incident["number"] in line for line in lines), lines
    (notification,) = arm.notifications.values()
    assert notification.polls > arm.polls_before_done, "the SDK did not poll the status URL until done"
    assert credential.scopes and all(s == ("https://management.azure.com/.default",) for s in credential.scopes)


async def test_smoke_fails_when_the_relay_never_records_the_test_alert(arm, azurite, tmp_path) -> None:
    # Answers like a relay (202) and keeps nothing: e.g. a relay on another store than the stack's.
    async def blackhole(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"status": "accepted"}, status=202)

    app = web.Application()
    app.router.add_post("/alerts", blackhole)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    names = unique_names()
    store = AzureStorageStore(connection_string=azurite.connection_string, names=names)
    await store.open()  # the stack's (empty) store
    try:
        group_id = arm.add_action_group(RESOURCE_GROUP, GROUP, f"http://127.0.0.1:{port}/alerts")
        client, _ = arm_client(arm, tmp_path)
        table = TableClient.from_connection_string(azurite.connection_string, table_name=names.table)
        with pytest.raises(SmokeFailed, match="never recorded the test alert in 2s"):
            await asyncio.to_thread(smoke.run, client, table, outputs_for(group_id), timeout=2, poll=0.2,
                                    say=lambda _: None)
        assert len(arm.sent) == 1, "Azure never called the receiver"
    finally:
        await store.close()
        await runner.cleanup()


class EmptyTable:
    def __init__(self) -> None:
        self.queries: list[str] = []

    def query_entities(self, query_filter: str, **kwargs: Any) -> list[dict[str, Any]]:
        self.queries.append(query_filter)
        return []


async def test_smoke_fails_when_azure_cannot_reach_the_relay(arm, tmp_path) -> None:
    group_id = arm.add_action_group(RESOURCE_GROUP, GROUP, "http://127.0.0.1:1/alerts")  # nothing listens
    client, _ = arm_client(arm, tmp_path)
    table = EmptyTable()
    with pytest.raises(SmokeFailed, match="could not deliver to the relay: secure-export-relay: Failed"):
        await asyncio.to_thread(smoke.run, client, table, outputs_for(group_id), timeout=10, say=lambda _: None)
    assert not table.queries, "the store was read although Azure never reached the relay"


async def test_smoke_says_when_resource_manager_refuses_the_token(arm, tmp_path) -> None:
    group_id = arm.add_action_group(RESOURCE_GROUP, GROUP, "http://127.0.0.1:1/alerts")
    client, _ = arm_client(arm, tmp_path, token="someone-elses-token")
    with pytest.raises(SmokeFailed, match=r"could not read action group .*401 AuthenticationFailed"):
        await asyncio.to_thread(smoke.run, client, EmptyTable(), outputs_for(group_id), timeout=10,
                                say=lambda _: None)


async def test_smoke_reports_the_test_notification_rate_limit(arm, tmp_path) -> None:
    group_id = arm.add_action_group(RESOURCE_GROUP, GROUP, "http://127.0.0.1:1/alerts")
    client, _ = arm_client(arm, tmp_path)
    for _ in range(2):  # the documented two per action group in five minutes
        with pytest.raises(SmokeFailed, match="could not deliver"):
            await asyncio.to_thread(smoke.send_test_notification, client, outputs_for(group_id), timeout=10)
    with pytest.raises(SmokeFailed, match="refused the test notification: 429 TooManyRequests"):
        await asyncio.to_thread(smoke.send_test_notification, client, outputs_for(group_id), timeout=10)


async def test_unknown_action_group_is_named(arm, tmp_path) -> None:
    client, _ = arm_client(arm, tmp_path)
    outputs = StackOutputs(SUBSCRIPTION, RESOURCE_GROUP, "ag-missing", "st")
    with pytest.raises(SmokeFailed, match="could not read action group ag-missing: 404 ResourceNotFound"):
        await asyncio.to_thread(smoke.send_test_notification, client, outputs, timeout=10)


class Rows:
    """A state table whose event rows change between reads, for the watch loop's decisions."""

    def __init__(self, states: list[list[str]]) -> None:
        self.states = states
        self.reads = 0

    def query_entities(self, query_filter: str, **kwargs: Any) -> list[dict[str, Any]]:
        if "ticket" in query_filter:
            return [{"target": "rt", "key": "k", "data": json.dumps({"ticket_id": "42"})}]
        states = self.states[min(self.reads, len(self.states) - 1)]
        self.reads += 1
        return [{"alert_id": "/a/1", "state": s} for s in states]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize(
    ("states", "outcome"),
    [
        ([[], ["pending"], ["done"]], "done"),
        ([["done"]], "done"),
        ([["pending"], ["dead"]], "dead letters"),
        ([[]], "never recorded the test alert in 300s"),
        ([["pending"]], "had not delivered it after 300s"),
    ],
)
def test_watch_store_decides_from_what_the_store_holds(states: list[list[str]], outcome: str) -> None:
    clock = FakeClock()
    table = Rows(states)
    if outcome == "done":
        recorded, tickets = smoke.watch_store(table, 0.0, clock=clock, sleep=clock.sleep)
        assert recorded == Recorded("/a/1", "done") and tickets == [{"target": "rt", "key": "k", "ticket": "42"}]
    else:
        with pytest.raises(SmokeFailed, match=outcome):
            smoke.watch_store(table, 0.0, clock=clock, sleep=clock.sleep)  # the default timeout: 300 s
        assert clock.now >= smoke.DEFAULT_TIMEOUT_SECONDS or "dead" in outcome


@pytest.mark.parametrize(
    ("outputs", "words"),
    [
        ({"storageAccountName": "st"}, "lack actionGroupId"),
        ({"actionGroupId": "/subscriptions/x/resourceGroups/rg/providers/microsoft.insights/actionGroups/ag"},
         "lack storageAccountName"),
        ({"actionGroupId": "not-an-id", "storageAccountName": "st"}, "not an action group id"),
    ],
)
def test_bad_stack_outputs_are_named(outputs: dict, words: str) -> None:
    with pytest.raises(SmokeFailed, match=words):
        StackOutputs.from_outputs(outputs)


def test_stack_outputs_parse_the_action_group_id() -> None:
    parsed = outputs_for(f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/"
                         f"microsoft.insights/actionGroups/{GROUP}")
    assert parsed == StackOutputs(SUBSCRIPTION, RESOURCE_GROUP, GROUP, "stsecexpdevabc123")


async def test_the_make_smoke_command_passes_against_the_fake(arm, relay_on_azurite, tmp_path, azurite,
                                                            monkeypatch, capsys) -> None:
    """`python -m devtools.smoke <stack>` as `make smoke` runs it, with the stack's outputs from a file and
    Resource Manager's URL and CA pointed at the fake; the signed-in identity is the test credential."""
    import azure.identity

    url, table, servicenow = relay_on_azurite
    group_id = arm.add_action_group(RESOURCE_GROUP, GROUP, url)
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps({"actionGroupId": group_id, "storageAccountName": "stsecexpdevabc123"}))
    monkeypatch.setattr(azure.identity, "DefaultAzureCredential", lambda: Token(arm.token))
    # The relay's table has a test-unique name; the command reads the default one, so point it there.
    monkeypatch.setattr(smoke, "TABLE", table.table_name)
    code = await asyncio.to_thread(smoke.main, [
        "dev", "--outputs", str(outputs), "--arm-url", arm.url, "--ca-bundle", arm.ca_file(tmp_path),
        "--table-connection-string", azurite.connection_string, "--poll", "0.2",
    ])
    out = capsys.readouterr()
    assert code == 0, out.err
    (incident,) = servicenow.incidents.values()
    assert f"ticket {incident['number']} in servicenow" in out.out, out.out


def test_the_command_fails_with_a_message_when_the_outputs_are_incomplete(tmp_path, capsys) -> None:
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps({"webhookUrl": "https://relay/alerts"}))
    assert smoke.main(["dev", "--outputs", str(outputs)]) == 1
    assert "smoke FAILED: the stack outputs lack actionGroupId, storageAccountName" in capsys.readouterr().err


def test_defaults_a_user_gets() -> None:
    assert smoke.DEFAULT_TIMEOUT_SECONDS == 300 and smoke.DEFAULT_POLL_SECONDS == 5
    assert smoke.DEFAULT_ALERT_TYPE == "metricstaticthreshold"


class WindowTable:
    """A store holding the test alert, delivered, and two tickets written in the window."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys

    def query_entities(self, query_filter: str, **kwargs: Any) -> list[dict[str, Any]]:
        if "ticket" in query_filter:
            return [{"target": "rt", "key": k, "data": json.dumps({"ticket_id": k.upper()})} for k in self.keys]
        return [{"alert_id": "/subscriptions/s/providers/Microsoft.AlertsManagement/alerts/ABC-123", "state": "done"}]


class Passing:
    """The parts of the ARM client `send_test_notification` uses, answering that the webhook was reached."""

    class action_groups:
        @staticmethod
        def get(resource_group: str, name: str) -> Any:
            from azure.mgmt.monitor.models import ActionGroupResource, WebhookReceiver

            return ActionGroupResource(location="Global", group_short_name="x", enabled=True, webhook_receivers=[
                WebhookReceiver(name="relay", service_uri="https://relay/alerts", use_aad_auth=True)])

        @staticmethod
        def begin_create_notifications_at_action_group_resource_level(*args: Any) -> Any:
            from azure.mgmt.monitor.models import ActionDetail, TestNotificationDetailsResponse

            class Done:
                def result(self, timeout: float) -> Any:
                    return TestNotificationDetailsResponse(state="Complete", action_details=[
                        ActionDetail(mechanism_type="Webhook", name="relay", status="Succeeded", detail="HTTP 202")])

                def done(self) -> bool:
                    return True

            return Done()


@pytest.mark.parametrize(
    ("keys", "shown"),
    [(["abc-123", "zzz-999"], ["ABC-123"]), (["ci-1f2e", "zzz-999"], ["CI-1F2E", "ZZZ-999"]), ([], [])],
)
def test_the_test_alerts_own_ticket_is_shown_when_the_window_holds_others(keys: list[str], shown: list[str]) -> None:
    outputs = StackOutputs(SUBSCRIPTION, RESOURCE_GROUP, GROUP, "st")
    lines: list[str] = []
    found = smoke.run(Passing(), WindowTable(keys), outputs, timeout=1, poll=0.1, say=lines.append)
    assert [t["ticket"] for t in found["tickets"]] == shown
    if not shown:
        assert any("no ticket record was written" in line for line in lines), lines


async def test_a_status_url_answering_200_while_running_is_followed_until_complete(issuer, relay_on_azurite,
                                                                                  tmp_path) -> None:
    arm = FakeArm(issuer, SUBSCRIPTION, running_as_200=True, polls_before_done=3)
    await arm.start()
    try:
        url, table, servicenow = relay_on_azurite
        group_id = arm.add_action_group(RESOURCE_GROUP, GROUP, url)
        client, _ = arm_client(arm, tmp_path)
        found = await asyncio.to_thread(smoke.run, client, table, outputs_for(group_id), timeout=30, poll=0.2,
                                        say=lambda _: None)
        (notification,) = arm.notifications.values()
        assert notification.polls > 3, "the smoke test stopped at the first 200 while Azure was still sending"
        (incident,) = servicenow.incidents.values()
        assert found["tickets"][0]["ticket"] == incident["number"]
    finally:
        await arm.stop()

