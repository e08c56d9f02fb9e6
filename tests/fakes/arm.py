"""A fake of Azure Resource Manager's action group test notifications, over HTTPS with a test CA.

Written from the REST reference (Action Groups - Create Notifications At Action Group Resource Level,
api-version 2023-01-01): `POST .../actionGroups/{name}/createNotifications` answers 202 with a Location
header naming `.../notificationStatus/{id}`; that URL answers 202 (with Location and Retry-After) while
the notifications are being sent, then 200 with a TestNotificationDetailsResponse whose `actionDetails`
say, per receiver, whether it was reached. The Azure SDK refuses a bearer token over plain HTTP, hence
TLS (trustme's CA, which the client is told to trust).

Failure modes, as ARM has them: 401 without the bearer token, 404 for an unknown action group, 400 for
an alert type the API does not know, 429 past the documented rate (two test notifications per action
group in five minutes). Each Secure Webhook receiver is called the way Azure Monitor calls it: the
sample common-schema alert of the type asked for, with an Entra token from the dev issuer; its
`actionDetails` status is Succeeded on a 2xx, Failed with the status or error otherwise.
"""

from __future__ import annotations

import asyncio
import copy
import json
import ssl
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import trustme
from aiohttp import web

from devtools.dev_issuer import DevIssuer

API_VERSION = "2023-01-01"
# The alert types the API accepts (NotificationRequestBody.alertType), each with our sample payload.
SAMPLES = Path(__file__).resolve().parents[1] / "samples"
ALERT_TYPE_SAMPLES = {
    "metricstaticthreshold": "testaction-metric-static-fired.json",
    "metricsdynamicthreshold": "testaction-metric-dynamic-fired.json",
    "logalertv2": "testaction-log-v2-fired.json",
    "servicehealth": "testaction-servicehealth-fired.json",
    "resourcehealth": "testaction-resourcehealth-fired.json",
    "activitylog": "testaction-activitylog-administrative-fired.json",
    "actualcostbudget": "testaction-budget-fired.json",
    "smartalert": "testaction-smart-detection-fired.json",
}
TEST_NOTIFICATIONS_PER_GROUP = 2  # per five minutes (Azure Monitor's service limits)


@dataclass
class Notification:
    id: str
    group: str
    receivers: list[dict[str, Any]]
    alert_type: str
    details: list[dict[str, Any]] = field(default_factory=list)
    done: bool = False
    polls: int = 0


class FakeArm:
    def __init__(self, issuer: DevIssuer, subscription_id: str, *, polls_before_done: int = 2,
                 retry_after: str = "1", running_as_200: bool = False) -> None:
        self.issuer = issuer
        self.subscription_id = subscription_id
        self.token = "arm-token-" + uuid.uuid4().hex  # what the test credential hands the SDK
        self.groups: dict[tuple[str, str], dict[str, Any]] = {}
        self.notifications: dict[str, Notification] = {}
        self.polls_before_done = polls_before_done
        self.retry_after = retry_after  # seconds, as ARM's Retry-After header gives them
        # The REST reference documents only 200 for the status URL: with this, a notification still being
        # sent answers 200 with state "Running" (and the receivers done so far) instead of 202.
        self.running_as_200 = running_as_200
        self.sent: list[dict[str, Any]] = []  # the alert bodies posted to receivers
        self.ca = trustme.CA()
        self._cert = self.ca.issue_cert("127.0.0.1", "localhost")
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.url = ""

    def ca_file(self, directory: Path) -> str:
        path = directory / "arm-test-ca.pem"
        self.ca.cert_pem.write_to_path(str(path))
        return str(path)

    def add_action_group(self, resource_group: str, name: str, webhook_url: str) -> str:
        """An action group with one Secure Webhook receiver calling `webhook_url`; returns its id."""
        group_id = (f"/subscriptions/{self.subscription_id}/resourceGroups/{resource_group}"
                    f"/providers/microsoft.insights/actionGroups/{name}")
        self.groups[(resource_group.lower(), name.lower())] = {
            "id": group_id, "name": name, "type": "Microsoft.Insights/ActionGroups", "location": "Global",
            "properties": {
                "groupShortName": "SecExp", "enabled": True,
                "webhookReceivers": [{
                    "name": "secure-export-relay", "serviceUri": webhook_url, "useCommonAlertSchema": True,
                    "useAadAuth": True, "objectId": str(uuid.uuid4()), "identifierUri": "api://secure-export",
                    "tenantId": self.issuer.tenant_id,
                }],
                "emailReceivers": [], "smsReceivers": [],
            },
        }
        return group_id

    async def start(self) -> None:
        app = web.Application(middlewares=[self._bearer])
        base = "/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Insights/actionGroups/{group}"
        app.router.add_get(base, self._get_group)
        app.router.add_post(base + "/createNotifications", self._create)
        app.router.add_get(base + "/notificationStatus/{id}", self._status)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._cert.configure_cert(context)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"https://127.0.0.1:{port}"

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- ARM ----------------------------------------------------------------------------------------

    @staticmethod
    def _error(status: int, code: str, message: str) -> web.Response:
        return web.json_response({"error": {"code": code, "message": message}}, status=status)

    @web.middleware
    async def _bearer(self, request: web.Request, handler):  # type: ignore[no-untyped-def]
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return self._error(401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is "
                               "missing or not a valid bearer token.")
        if request.query.get("api-version") != API_VERSION:
            return self._error(400, "InvalidApiVersionParameter",
                               f"The api-version '{request.query.get('api-version')}' is invalid.")
        if request.match_info["sub"] != self.subscription_id:
            return self._error(404, "SubscriptionNotFound", f"The subscription '{request.match_info['sub']}' "
                               "could not be found.")
        return await handler(request)

    def _group(self, request: web.Request) -> dict[str, Any] | None:
        return self.groups.get((request.match_info["rg"].lower(), request.match_info["group"].lower()))

    def _not_found(self, request: web.Request) -> web.Response:
        return self._error(404, "ResourceNotFound", f"The Resource 'Microsoft.Insights/actionGroups/"
                           f"{request.match_info['group']}' under resource group '{request.match_info['rg']}' "
                           "was not found.")

    async def _get_group(self, request: web.Request) -> web.Response:
        group = self._group(request)
        return web.json_response(group) if group is not None else self._not_found(request)

    async def _create(self, request: web.Request) -> web.Response:
        group = self._group(request)
        if group is None:
            return self._not_found(request)
        body = await request.json()
        alert_type = body.get("alertType")
        if alert_type not in ALERT_TYPE_SAMPLES:
            return self._error(400, "InvalidRequest", f"alertType '{alert_type}' is not supported.")
        recent = [n for n in self.notifications.values() if n.group == group["id"]]
        if len(recent) >= TEST_NOTIFICATIONS_PER_GROUP:
            return self._error(429, "TooManyRequests", "Too many test notifications for this action group; "
                               "try again in 5 minutes.")
        notification = Notification(id=str(uuid.uuid4()), group=group["id"],
                                    receivers=list(body.get("webhookReceivers") or []), alert_type=alert_type)
        self.notifications[notification.id] = notification
        task = asyncio.create_task(self._send(notification))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return web.Response(status=202, headers={"Location": self._status_url(request, notification.id),
                                                 "Retry-After": self.retry_after})

    def _status_url(self, request: web.Request, notification_id: str) -> str:
        m = request.match_info
        return (f"{self.url}/subscriptions/{m['sub']}/resourceGroups/{m['rg']}/providers/Microsoft.Insights/"
                f"actionGroups/{m['group']}/notificationStatus/{notification_id}?api-version={API_VERSION}")

    async def _status(self, request: web.Request) -> web.Response:
        notification = self.notifications.get(request.match_info["id"])
        if notification is None:
            return self._error(404, "NotFound", "The notification was not found.")
        notification.polls += 1
        running = not notification.done or notification.polls <= self.polls_before_done
        if running and not self.running_as_200:
            return web.Response(status=202, headers={"Location": str(request.url), "Retry-After": self.retry_after})
        return web.json_response({
            "state": "Running" if running else "Complete",
            "createdTime": "2026-12-02T06:00:00.000Z",
            "completedTime": "2026-12-02T06:00:05.000Z",
            "actionDetails": notification.details,
        })

    # -- Azure Monitor calling the receivers ----------------------------------------------------------

    def sample_alert(self, alert_type: str) -> dict[str, Any]:
        doc = copy.deepcopy(json.loads((SAMPLES / ALERT_TYPE_SAMPLES[alert_type]).read_text()))
        essentials = doc["data"]["essentials"]
        # A fresh alert id in the stack's subscription, so each test notification is its own alert.
        essentials["alertId"] = (f"/subscriptions/{self.subscription_id}/providers/Microsoft.AlertsManagement/"
                                 f"alerts/{uuid.uuid4()}")
        return doc

    async def _send(self, notification: Notification) -> None:
        async with aiohttp.ClientSession() as http:
            for receiver in notification.receivers:
                detail = {"MechanismType": "Webhook", "Name": receiver.get("name", ""), "SubState": "Default",
                          "SendTime": "2026-12-02T06:00:01.000Z"}
                body = self.sample_alert(notification.alert_type)
                headers = {"Content-Type": "application/json"}
                if receiver.get("useAadAuth"):
                    headers["Authorization"] = self.issuer.authorization()
                try:
                    async with http.post(receiver["serviceUri"], json=body, headers=headers,
                                         timeout=aiohttp.ClientTimeout(total=10)) as resp:
                        ok = 200 <= resp.status < 300
                        detail["Status"] = "Succeeded" if ok else "Failed"
                        detail["Detail"] = f"HTTP {resp.status}"
                except (aiohttp.ClientError, TimeoutError) as exc:
                    detail["Status"] = "Failed"
                    detail["Detail"] = f"could not reach {receiver['serviceUri']}: {exc.__class__.__name__}"
                self.sent.append(body)
                notification.details.append(detail)
        notification.done = True
