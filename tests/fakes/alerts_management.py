"""A fake Azure Alerts Management REST API (api-version 2019-05-05-preview), from Microsoft's REST
reference (Alerts - Get All, Alerts - Get By Id, Alerts - Change State), served over HTTPS.

- `GET /subscriptions/{subscriptionId}/providers/Microsoft.AlertsManagement/alerts` lists the
  subscription's alerts with the documented filters: targetResource, targetResourceType,
  targetResourceGroup, monitorService, monitorCondition, severity, alertState, alertRule (exact,
  case-insensitive ids), timeRange (1h, 1d, 7d, 30d; default 1d) or customTimeRange
  (`<start>/<end>`, ISO 8601; both together is a 400), sortBy / sortOrder, pageCount (1-250, default
  25) with `nextLink` paging (an absolute URL carrying a skip token). The window applies to an alert's
  startDateTime. `{"value": [...], "nextLink": ...}`, each alert `{"id", "type", "name",
  "properties": {"essentials": {...}}}` with the documented essentials fields.
- `GET .../alerts/{alertId}` (404 ResourceNotFound for an unknown id), `POST .../alerts/{alertId}/
  changestate?newState=New|Acknowledged|Closed` (400 for another state): the alert with its new
  alertState, lastModifiedDateTime and lastModifiedUserName; `state_changes` records each, and
  `state_comments` the optional body's `comments` (the REST reference's `Comments`: `{"comments": "..."}`).
- Every call needs `api-version=2019-05-05-preview` (else 400 InvalidApiVersionParameter) and
  `Authorization: Bearer <token>` with the fake's token (else 401 AuthenticationFailed), as ARM does.
- 429 with Retry-After and 5xx through `FakeServer.inject`, with ARM's error body.

The Azure SDK sends bearer tokens only over HTTPS: `start` serves TLS with a certificate of a test CA
made on the fly (`ca_path` is the CA's PEM, for the client's `connection_verify`).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import ssl
import tempfile
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.fakes import FakeServer

API_VERSION = "2019-05-05-preview"
TIME_RANGES = {"1h": dt.timedelta(hours=1), "1d": dt.timedelta(days=1), "7d": dt.timedelta(days=7),
               "30d": dt.timedelta(days=30)}
STATES = ("New", "Acknowledged", "Closed")
PREFIX = "/subscriptions/{sub}/providers/Microsoft.AlertsManagement/alerts"
FILTERS = {  # query parameter -> essentials field, compared case-insensitively
    "targetResource": "targetResource", "targetResourceType": "targetResourceType",
    "targetResourceGroup": "targetResourceGroup", "monitorService": "monitorService",
    "monitorCondition": "monitorCondition", "severity": "severity", "alertState": "alertState",
    "alertRule": "alertRule", "smartGroupId": "smartGroupId",
}


def make_test_tls(directory: str | None = None) -> tuple[ssl.SSLContext, str]:
    """A test CA and a certificate for 127.0.0.1 / localhost signed by it: (server context, CA PEM path)."""
    where = Path(directory or tempfile.mkdtemp(prefix="fake-arm-tls-"))
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "secure-export test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False),
                         critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_path, cert_path, key_path = where / "ca.pem", where / "server.pem", where / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context, str(ca_path)


def arm_time(value: dt.datetime) -> str:
    """A time as the Alerts Management API writes it: UTC, 7 fractional digits, Z."""
    value = value.astimezone(dt.UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond:06d}0Z"


def _parse(text: str) -> dt.datetime:
    text = text.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    # Python takes at most 6 fractional digits: cut the 7th the API writes.
    if "." in text:
        head, rest = text.split(".", 1)
        digits = "".join(c for c in rest if c.isdigit())
        text = f"{head}.{digits[:6]}{rest[len(digits):]}"
    value = dt.datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


class FakeAlertsManagement(FakeServer):
    def __init__(self, *, token: str = "test-arm-token", now: dt.datetime | None = None) -> None:
        super().__init__()
        self.token = token
        self.now = now  # None: the wall clock (timeRange / customTimeRange windows end here)
        self.alerts: dict[str, dict[str, Any]] = {}  # lower-case id -> the alert resource
        self.state_changes: list[tuple[str, str]] = []  # (alert id, new state)
        self.state_comments: list[tuple[str, str | None]] = []  # (alert id, the change's comment)
        self.ssl_context, self.ca_path = make_test_tls()
        self._parsed: dict[str, dt.datetime] = {}

    # -- data ----------------------------------------------------------------------------------

    def add_alert(self, subscription: str, rule_id: str, started: dt.datetime, *, signal_type: str = "Metric",
                  severity: str = "Sev3", suppressed: bool = False, monitor_service: str = "Platform",
                  target_resource: str | None = None, alert_id: str | None = None) -> dict[str, Any]:
        """A Fired alert of `rule_id` in `subscription`, started at `started`; returns the resource."""
        guid = alert_id or str(uuid.uuid4())
        rid = f"/subscriptions/{subscription}/providers/Microsoft.AlertsManagement/alerts/{guid}"
        target = target_resource or (f"/subscriptions/{subscription}/resourceGroups/rg-app/providers/"
                                     f"Microsoft.Compute/virtualMachines/vm-{guid[:8]}")
        alert = {
            "id": rid, "type": "Microsoft.AlertsManagement/alerts", "name": rule_id.rsplit("/", 1)[-1],
            "properties": {"essentials": {
                "severity": severity, "signalType": signal_type, "alertState": "New",
                "monitorCondition": "Fired", "targetResource": target,
                "targetResourceName": target.rsplit("/", 1)[-1],
                "targetResourceGroup": "rg-app", "targetResourceType": "microsoft.compute/virtualmachines",
                "monitorService": monitor_service, "alertRule": rule_id,
                "sourceCreatedId": uuid.uuid4().hex, "smartGroupId": str(uuid.uuid4()),
                "smartGroupingReason": "", "startDateTime": arm_time(started),
                "lastModifiedDateTime": arm_time(started), "lastModifiedUserName": "System",
                "actionStatus": {"isSuppressed": suppressed},
                "description": f"test alert of {rule_id.rsplit('/', 1)[-1]}",
            }},
        }
        self.alerts[rid.lower()] = alert
        return alert

    def resolve(self, alert_id: str, at: dt.datetime) -> None:
        e = self.alerts[alert_id.lower()]["properties"]["essentials"]
        e["monitorCondition"] = "Resolved"
        e["monitorConditionResolvedDateTime"] = arm_time(at)
        e["lastModifiedDateTime"] = arm_time(at)

    def change_in_portal(self, alert_id: str, state: str, at: dt.datetime, user: str = "someone@example.com") -> None:
        """A person changes the alert's state in the Azure portal at `at`."""
        e = self.alerts[alert_id.lower()]["properties"]["essentials"]
        e.update(alertState=state, lastModifiedDateTime=arm_time(at), lastModifiedUserName=user)

    # -- HTTP ----------------------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application(middlewares=[self._record_and_misbehave])
        self.routes(app)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]
        return self.url

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def routes(self, app: web.Application) -> None:
        base = PREFIX.format(sub="{sub}")
        app.router.add_get(base, self.get_all)
        app.router.add_get(base + "/{alert}", self.get_by_id)
        app.router.add_post(base + "/{alert}/changestate", self.change_state)

    def error_body(self, status: int) -> Any:
        code = {429: "TooManyRequests", 500: "InternalServerError", 503: "ServiceUnavailable"}.get(status, "Error")
        return {"error": {"code": code, "message": f"injected {status}"}}

    def _refused(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _error(401, "AuthenticationFailed", "Authentication failed. The 'Authorization' header is "
                                                       "missing or invalid.")
        version = request.query.get("api-version")
        if version != API_VERSION:
            return _error(400, "InvalidApiVersionParameter",
                          f"The api-version '{version}' is invalid. The supported versions are '{API_VERSION}'.")
        return None

    def _started(self, text: str) -> dt.datetime:
        if text not in self._parsed:  # a listing parses every alert's time on every page: keep them
            self._parsed[text] = _parse(text)
        return self._parsed[text]

    def _now(self) -> dt.datetime:
        return self.now or dt.datetime.now(dt.UTC)

    def _window(self, q: Any) -> tuple[dt.datetime, dt.datetime] | web.Response:
        if "timeRange" in q and "customTimeRange" in q:
            return _error(400, "BadRequest", "timeRange and customTimeRange cannot be given together.")
        if "customTimeRange" in q:
            try:
                start, end = (_parse(p) for p in q["customTimeRange"].split("/"))
            except ValueError:
                return _error(400, "BadRequest", "customTimeRange must be '<start>/<end>' in ISO 8601.")
            if start > end:
                return _error(400, "BadRequest", "customTimeRange starts after it ends.")
            return start, end
        span = TIME_RANGES.get(q.get("timeRange", "1d"))
        if span is None:
            return _error(400, "BadRequest", f"timeRange must be one of {', '.join(TIME_RANGES)}.")
        now = self._now()
        return now - span, now

    async def get_all(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused:
            return refused
        q = request.query
        window = self._window(q)
        if isinstance(window, web.Response):
            return window
        start, end = window
        try:
            page_count = int(q.get("pageCount", "25"))
            skip = int(q.get("$skipToken", "0"))
        except ValueError:
            return _error(400, "BadRequest", "pageCount and $skipToken must be whole numbers.")
        if not 1 <= page_count <= 250:
            return _error(400, "BadRequest", "pageCount must be between 1 and 250.")
        prefix = PREFIX.format(sub=request.match_info["sub"]).lower() + "/"
        chosen = []
        for alert in self.alerts.values():
            e = alert["properties"]["essentials"]
            if not alert["id"].lower().startswith(prefix):
                continue
            if not start <= self._started(e["startDateTime"]) <= end:
                continue
            if any(key in q and str(e.get(field) or "").lower() != q[key].lower() for key, field in FILTERS.items()):
                continue
            chosen.append(alert)
        sort_by = q.get("sortBy", "lastModifiedDateTime")
        if sort_by not in ("name", "severity", "alertState", "monitorCondition", "targetResource",
                           "targetResourceName", "targetResourceGroup", "targetResourceType", "startDateTime",
                           "lastModifiedDateTime"):
            return _error(400, "BadRequest", f"sortBy {sort_by!r} is not supported.")
        def sort_key(a: dict[str, Any]) -> Any:
            return a["name"] if sort_by == "name" else a["properties"]["essentials"].get(sort_by) or ""
        chosen.sort(key=sort_key, reverse=q.get("sortOrder", "desc") == "desc")
        page = chosen[skip:skip + page_count]
        body: dict[str, Any] = {"value": page}
        if skip + page_count < len(chosen):
            rest = {k: v for k, v in q.items() if k != "$skipToken"}
            body["nextLink"] = f"{self.url}{request.path}?{urlencode({**rest, '$skipToken': skip + page_count})}"
        return web.json_response(body)

    def _alert(self, request: web.Request) -> dict[str, Any] | None:
        rid = PREFIX.format(sub=request.match_info["sub"]) + "/" + request.match_info["alert"]
        return self.alerts.get(rid.lower())

    async def get_by_id(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused:
            return refused
        alert = self._alert(request)
        if alert is None:
            return _error(404, "ResourceNotFound", f"The alert '{request.match_info['alert']}' was not found.")
        return web.json_response(alert)

    async def change_state(self, request: web.Request) -> web.Response:
        refused = self._refused(request)
        if refused:
            return refused
        alert = self._alert(request)
        if alert is None:
            return _error(404, "ResourceNotFound", f"The alert '{request.match_info['alert']}' was not found.")
        state = request.query.get("newState")
        if state not in STATES:
            return _error(400, "BadRequest", f"newState must be one of {', '.join(STATES)} (got {state!r}).")
        comment = None
        raw = await request.read()
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                return _error(400, "BadRequest", "The request body is not valid JSON.")
            comment = body.get("comments") if isinstance(body, dict) else None
        e = alert["properties"]["essentials"]
        e["alertState"] = state
        e["lastModifiedDateTime"] = arm_time(self._now())
        e["lastModifiedUserName"] = "relay"
        self.state_changes.append((alert["id"], state))
        self.state_comments.append((alert["id"], comment))
        return web.json_response(alert)
