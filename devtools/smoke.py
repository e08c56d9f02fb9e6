"""`make smoke STACK=<stack>`: after a deploy, prove the whole chain works.

1. Ask Azure Monitor for a test notification through the stack's action group (ARM's createNotifications,
   a long-running operation: 202, then its status URL is polled), with the Azure SDK's own poller.
2. Check that Azure reached the relay's Secure Webhook (the notification's action details).
3. Watch the relay's store until the test alert is recorded there and delivered, then print the ticket
   it opened. The store is read with the deploy identity's Storage Table Data Reader role on the state
   table (monitoring.smokeReaderPrincipalId): nothing new listens on the relay for this.

Exit status 0 when the relay recorded and delivered the alert, 1 with a message saying what failed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from relay.store.azure import TABLE

# What Azure Monitor sends for a test: the common schema sample of a static-threshold metric alert.
DEFAULT_ALERT_TYPE = "metricstaticthreshold"
# Azure documents test notifications as taking up to a few minutes; the relay then delivers in seconds.
DEFAULT_TIMEOUT_SECONDS = 300.0
DEFAULT_POLL_SECONDS = 5.0
# TestNotificationDetailsResponse.state once every receiver was tried.
FINISHED_STATES = ("complete", "completed")


class SmokeFailed(Exception):
    """The smoke test failed; the message says where the chain broke and what to look at."""


class StateTable(Protocol):
    """What the smoke test reads of the relay's state table (azure.data.tables.TableClient has it)."""

    def query_entities(self, query_filter: str, *, parameters: Mapping[str, Any] | None = None,
                       select: Sequence[str] | None = None) -> Iterable[Mapping[str, Any]]: ...


@dataclass(frozen=True)
class StackOutputs:
    subscription_id: str
    resource_group: str
    action_group: str
    storage_account: str

    @classmethod
    def from_outputs(cls, outputs: Mapping[str, Any]) -> StackOutputs:
        """From `pulumi stack output --json`: actionGroupId and storageAccountName."""
        missing = [k for k in ("actionGroupId", "storageAccountName") if not outputs.get(k)]
        if missing:
            raise SmokeFailed(f"the stack outputs lack {', '.join(missing)}: run `pulumi up` with this version first")
        parts = str(outputs["actionGroupId"]).strip("/").split("/")
        lowered = [p.lower() for p in parts]
        try:
            subscription = parts[lowered.index("subscriptions") + 1]
            resource_group = parts[lowered.index("resourcegroups") + 1]
            group = parts[lowered.index("actiongroups") + 1]
        except (ValueError, IndexError):
            raise SmokeFailed(f"actionGroupId {outputs['actionGroupId']!r} is not an action group id") from None
        return cls(subscription, resource_group, group, str(outputs["storageAccountName"]))


@dataclass(frozen=True)
class Recorded:
    alert_id: str
    state: str  # pending, done or dead (relay/store/azure.py)


def send_test_notification(client: Any, outputs: StackOutputs, alert_type: str = DEFAULT_ALERT_TYPE,
                           timeout: float = DEFAULT_TIMEOUT_SECONDS, *, poll: float = DEFAULT_POLL_SECONDS,
                           clock: Callable[[], float] = time.monotonic,
                           sleep: Callable[[float], None] = time.sleep) -> list[Any]:
    """Send the test and wait for ARM's verdict; returns the Secure Webhook receivers' action details.
    `client`: an azure.mgmt.monitor MonitorManagementClient."""
    from azure.core.exceptions import HttpResponseError
    from azure.mgmt.monitor.models import NotificationRequestBody

    try:
        group = client.action_groups.get(outputs.resource_group, outputs.action_group)
    except HttpResponseError as exc:
        raise SmokeFailed(f"could not read action group {outputs.action_group}: {_arm_error(exc)}") from None
    receivers = [r for r in group.webhook_receivers or [] if r.use_aad_auth]
    if not receivers:
        raise SmokeFailed(f"action group {outputs.action_group} has no Secure Webhook receiver to test")
    body = NotificationRequestBody(alert_type=alert_type, webhook_receivers=receivers)
    try:
        poller = client.action_groups.begin_create_notifications_at_action_group_resource_level(
            outputs.resource_group, outputs.action_group, body
        )
        result = poller.result(timeout=timeout)
    except HttpResponseError as exc:
        raise SmokeFailed(f"Azure refused the test notification: {_arm_error(exc)}") from None
    if not poller.done() or result is None:
        raise SmokeFailed(f"Azure had not finished sending the test notification after {timeout:g}s")
    # The status URL answers 200 both while the notifications go out and once they are sent: the poller
    # stops at the first 200, so follow `state` until Azure says it is complete.
    deadline = clock() + timeout
    while (result.state or "").lower() not in FINISHED_STATES:
        if clock() >= deadline:
            raise SmokeFailed(f"Azure's test notification was still {result.state!r} after {timeout:g}s")
        sleep(poll)
        try:
            result = client.action_groups.get_test_notifications_at_action_group_resource_level(
                outputs.resource_group, outputs.action_group, _notification_id(poller)
            )
        except HttpResponseError as exc:
            raise SmokeFailed(f"could not read the test notification's status: {_arm_error(exc)}") from None
    names = {r.name for r in receivers}
    details = [d for d in result.action_details or [] if d.name in names]
    if not details:
        raise SmokeFailed(f"Azure's notification result names none of the receivers {sorted(names)}")
    failed = [d for d in details if (d.status or "").lower() not in ("succeeded", "success")]
    if failed:
        reasons = "; ".join(f"{d.name}: {d.status} ({d.detail or 'no detail'})" for d in failed)
        raise SmokeFailed(f"Azure Monitor could not deliver to the relay: {reasons}. Check that the relay is up "
                          "(/readyz) and its ingress lets the ActionGroup service tag in")
    return details


def _notification_id(poller: Any) -> str:
    """The notification id in the Location the create call answered with (`.../notificationStatus/<id>`)."""
    initial = getattr(poller.polling_method(), "_initial_response", None)
    location = initial.http_response.headers.get("Location", "") if initial is not None else ""
    path = urlsplit(location).path
    if "/notificationStatus/" not in path:
        raise SmokeFailed(f"Azure's answer named no notification status to follow (Location {location!r})")
    return path.rsplit("/", 1)[-1]


def recorded_since(table: StateTable, since: float) -> list[Recorded]:
    """Alert events the relay stored at or after `since` (epoch seconds)."""
    rows = table.query_entities("RowKey ge 'e-' and RowKey lt 'e.' and received_at ge @since",
                                parameters={"since": float(since)}, select=["alert_id", "state"])
    return [Recorded(alert_id=row["alert_id"], state=row["state"]) for row in rows]


def tickets_for(table: StateTable, since: float) -> list[dict[str, Any]]:
    """Ticket records written at or after `since`: target, key and the ticket the target gave."""
    from datetime import UTC, datetime

    stamp = datetime.fromtimestamp(since, UTC)
    rows = table.query_entities("RowKey eq 'ticket' and Timestamp ge @since", parameters={"since": stamp},
                                select=["target", "key", "data"])
    found = []
    for row in rows:
        data = json.loads(row.get("data") or "{}")
        found.append({"target": row.get("target"), "key": row.get("key"),
                      "ticket": data.get("ticket_number") or data.get("ticket_id")})
    return found


def watch_store(table: StateTable, since: float, *, timeout: float = DEFAULT_TIMEOUT_SECONDS,
                poll: float = DEFAULT_POLL_SECONDS, clock: Callable[[], float] = time.monotonic,
                sleep: Callable[[float], None] = time.sleep) -> tuple[Recorded, list[dict[str, Any]]]:
    """Wait until an alert received since `since` is delivered; returns it and the tickets written."""
    deadline = clock() + timeout
    seen: list[Recorded] = []
    while True:
        seen = recorded_since(table, since)
        dead = [r for r in seen if r.state == "dead"]
        if dead:
            raise SmokeFailed(f"the relay recorded the test alert {dead[0].alert_id} but moved it to dead letters: "
                              "`relay dead-letters list` against the store says why")
        done = [r for r in seen if r.state == "done"]
        if done:
            return done[0], tickets_for(table, since)
        if clock() >= deadline:
            break
        sleep(poll)
    if seen:
        raise SmokeFailed(f"the relay recorded the test alert {seen[0].alert_id} but had not delivered it after "
                          f"{timeout:g}s: its targets may be unreachable (see the relay's log)")
    raise SmokeFailed(f"Azure reached the relay, but the relay never recorded the test alert in {timeout:g}s: "
                      "is the relay using this stack's store (RELAY_STORE), and did it refuse the alert "
                      "(`refused alert` in ContainerAppConsoleLogs)?")


def run(client: Any, table: StateTable, outputs: StackOutputs, *, alert_type: str = DEFAULT_ALERT_TYPE,
        timeout: float = DEFAULT_TIMEOUT_SECONDS, poll: float = DEFAULT_POLL_SECONDS,
        notification_timeout: float = DEFAULT_TIMEOUT_SECONDS,
        wall_clock: Callable[[], float] = time.time, say: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole smoke test; returns what it found (the alert and its tickets). `notification_timeout`
    bounds Azure's sending, `timeout` the wait for the relay to record and deliver after that."""
    since = wall_clock() - 5  # a little slack for clock skew between this machine and the relay's
    say(f"smoke: sending a {alert_type} test notification through {outputs.action_group}")
    details = send_test_notification(client, outputs, alert_type, notification_timeout, poll=poll)
    say("smoke: Azure Monitor reached " + ", ".join(f"{d.name} ({d.detail or d.status})" for d in details))
    recorded, tickets = watch_store(table, since, timeout=timeout, poll=poll)
    say(f"smoke: the relay recorded and delivered alert {recorded.alert_id}")
    # A ticket is keyed by the alert's GUID unless incident_per groups by configuration item: prefer
    # the test alert's own; otherwise show what was written in the window (other alerts may be there).
    guid = recorded.alert_id.rstrip("/").rsplit("/", 1)[-1].lower()
    own = [t for t in tickets if guid and guid in str(t["key"]).lower()]
    tickets = own or tickets
    for ticket in tickets:
        say(f"smoke: ticket {ticket['ticket']} in {ticket['target']} (ticket key {ticket['key']})")
    if not tickets:
        say("smoke: no ticket record was written (a dry_run route, or a ticket updated rather than opened)")
    return {"alert_id": recorded.alert_id, "tickets": tickets}


def _arm_error(exc: Any) -> str:
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    return f"{exc.status_code} {code}: {getattr(error, 'message', None) or exc.message}" if code else str(exc)


def stack_outputs(stack: str) -> dict[str, Any]:
    try:
        out = subprocess.run(["pulumi", "stack", "output", "--json", "--stack", stack],
                             check=True, capture_output=True, text=True).stdout
    except FileNotFoundError:
        raise SmokeFailed("the Pulumi CLI is not installed; or pass --outputs with the stack's outputs") from None
    except subprocess.CalledProcessError as exc:
        raise SmokeFailed(f"`pulumi stack output` failed: {exc.stderr.strip()}") from None
    return json.loads(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.smoke", description=__doc__.splitlines()[0])
    parser.add_argument("stack", help="the Pulumi stack (its outputs name the action group and the store)")
    parser.add_argument("--outputs", help="a JSON file of the stack's outputs, instead of `pulumi stack output`")
    parser.add_argument("--alert-type", default=DEFAULT_ALERT_TYPE)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_SECONDS)
    parser.add_argument("--poll", type=float, default=DEFAULT_POLL_SECONDS)
    parser.add_argument("--arm-url", default=None, help="Resource Manager's URL (default: the public cloud's)")
    parser.add_argument("--table-connection-string", default=None,
                        help="read the state table with this connection string instead of the signed-in identity")
    parser.add_argument("--ca-bundle", default=None, help="trust this CA for Resource Manager (tests)")
    args = parser.parse_args(argv)
    try:
        from azure.data.tables import TableClient
        from azure.identity import DefaultAzureCredential
        from azure.mgmt.monitor import MonitorManagementClient

        raw = json.loads(Path(args.outputs).read_text()) if args.outputs else stack_outputs(args.stack)
        outputs = StackOutputs.from_outputs(raw)
        credential = DefaultAzureCredential()
        extra: dict[str, Any] = {"base_url": args.arm_url} if args.arm_url else {}
        if args.ca_bundle:
            extra["connection_verify"] = args.ca_bundle
        client = MonitorManagementClient(credential, outputs.subscription_id, **extra)
        if args.table_connection_string:
            table = TableClient.from_connection_string(args.table_connection_string, table_name=TABLE)
        else:
            table = TableClient(f"https://{outputs.storage_account}.table.core.windows.net", TABLE,
                                credential=credential)
        run(client, table, outputs, alert_type=args.alert_type, timeout=args.timeout, poll=args.poll)
    except ImportError as exc:
        print(f"smoke: {exc.name} is missing: pip install -e '.[smoke]'", file=sys.stderr)
        return 1
    except SmokeFailed as exc:
        print(f"smoke FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
