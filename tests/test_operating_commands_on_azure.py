"""`relay dead-letters` and `relay alerts` on an Azure Storage store (Azurite): they read and replay what a
relay's store holds and never create one (issue 18 item 7). A connection string to an account without the
relay's table, queues and container is an error naming what is missing, and leaves the account empty.

The commands use the relay's default queue, table and container names, so these tests run on an Azurite of
their own (not the session's shared one, whose tests give every store unique names).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from azure.data.tables import TableServiceClient
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueServiceClient

from relay.alerts import parse_alert_json
from relay.cli import main
from relay.store import Event, StoreNotFound, open_store
from relay.store.azure import CONTAINER, POISON_QUEUE, QUEUE, TABLE, AzureStorageStore
from tests.azurite import DEV_ACCOUNT, DEV_KEY, Azurite
from tests.conftest import SAMPLES

pytestmark = pytest.mark.e2e

ALERT_ID = "/subscriptions/s/providers/Microsoft.AlertsManagement/alerts/00000000-0000-4000-8000-00000000a2e0"
COMMANDS = [
    ["dead-letters", "list"],
    ["dead-letters", "show", "1"],
    ["dead-letters", "replay", "--all"],
    ["alerts", "list"],
    ["alerts", "show", ALERT_ID],
]


def resources(cs: str) -> dict[str, set[str]]:
    """What the account holds, read with the SDK's own listing calls (independent of the store)."""
    return {
        "tables": {t.name for t in TableServiceClient.from_connection_string(cs).list_tables()},
        "queues": {q.name for q in QueueServiceClient.from_connection_string(cs).list_queues()},
        "containers": {c.name for c in BlobServiceClient.from_connection_string(cs).list_containers()},
    }


def wipe(cs: str) -> None:
    tables = TableServiceClient.from_connection_string(cs)
    queues = QueueServiceClient.from_connection_string(cs)
    blobs = BlobServiceClient.from_connection_string(cs)
    for t in tables.list_tables():
        tables.delete_table(t.name)
    for q in queues.list_queues():
        queues.delete_queue(q.name)
    for c in blobs.list_containers():
        blobs.delete_container(c.name)


@pytest.fixture(scope="module")
def own_azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    azurite = Azurite(tmp_path_factory.mktemp("azurite-cli")).start()
    try:
        yield azurite
    finally:
        azurite.stop()


@pytest.fixture
def account(own_azurite: Azurite) -> Iterator[str]:
    """The connection string of an account holding nothing; emptied again after the test."""
    cs = own_azurite.connection_string
    wipe(cs)
    yield cs
    wipe(cs)


async def relay_store_with_a_dead_letter(cs: str) -> None:
    """What `relay serve` leaves behind: its store (created by the serving side) and one dead letter."""
    doc = json.loads((SAMPLES / "testaction-metric-static-fired.json").read_bytes())
    doc["data"]["essentials"]["alertId"] = ALERT_ID
    body = json.dumps(doc).encode()
    store = open_store(cs)  # owner: creates the queues, table and container
    await store.open()
    try:
        await store.accept(Event.from_alert(parse_alert_json(body), body))
        [claim] = await store.claim(10, 30)
        await store.dead_letter(claim, "servicenow: HTTP 400: invalid field u_azure_alert")
    finally:
        await store.close()


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_a_command_on_an_account_without_the_relays_store_fails_and_creates_nothing(account, capsys, command):
    assert main([*command, "--store", account]) == 2
    err = capsys.readouterr().err
    assert f"no relay store in storage account {DEV_ACCOUNT}" in err and "nothing was created" in err, err
    for missing in (f"table {TABLE!r}", f"queue {QUEUE!r}", f"queue {POISON_QUEUE!r}", f"container {CONTAINER!r}"):
        assert missing in err, f"the error does not name the missing {missing}: {err}"
    assert DEV_KEY not in err, "the error echoed the account key"
    assert resources(account) == {"tables": set(), "queues": set(), "containers": set()}, (
        "a read-only command created the store")


def test_the_commands_read_and_replay_an_existing_store_without_adding_to_it(account, capsys):
    asyncio.run(relay_store_with_a_dead_letter(account))
    before = resources(account)
    assert main(["dead-letters", "list", "--store", account]) == 0
    assert "invalid field u_azure_alert" in capsys.readouterr().out
    assert main(["alerts", "--store", account, "show", ALERT_ID]) == 0
    assert "dead" in capsys.readouterr().out
    assert main(["dead-letters", "replay", "--all", "--store", account]) == 0
    assert resources(account) == before


def test_a_store_missing_one_queue_is_refused_naming_it_and_the_queue_is_not_made_again(account, capsys):
    asyncio.run(relay_store_with_a_dead_letter(account))
    QueueServiceClient.from_connection_string(account).delete_queue(POISON_QUEUE)
    assert main(["dead-letters", "list", "--store", account]) == 2
    err = capsys.readouterr().err
    assert f"queue {POISON_QUEUE!r} not found" in err and f"table {TABLE!r}" not in err, err
    assert POISON_QUEUE not in resources(account)["queues"]


async def test_only_the_serving_side_creates_the_store():
    """open_store's owner flag decides: `relay serve` (the default) creates, an operating command does not."""
    cs = "UseDevelopmentStorage=true"
    serving, operating = open_store(cs), open_store(cs, owner=False)
    assert isinstance(serving, AzureStorageStore) and isinstance(operating, AzureStorageStore)
    assert (serving.create, operating.create) == (True, False)


async def test_a_non_creating_open_raises_store_not_found(account):
    store = AzureStorageStore(connection_string=account, create=False)
    with pytest.raises(StoreNotFound):
        try:
            await store.open()
        finally:
            await store.close()
    assert resources(account) == {"tables": set(), "queues": set(), "containers": set()}
