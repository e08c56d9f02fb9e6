"""PagerDuty target: alerts through the Events API v2 (`POST /v2/enqueue`), trigger and resolve.

The Events API cannot search, read, note or reopen: the `dedup_key` (the correlation key) is the
idempotency, so a trigger sent twice is one PagerDuty alert and `find` answers None; notes are
skipped (or, with a REST API token configured, added to the incident through the REST API); a
re-fire after a resolve opens a new PagerDuty incident (reopen does not apply, and `relay
check-config` refuses `on_refire: reopen` for this kind, see `unsupported_route_options`).
It cannot be read, so it has no `read` nor `search`: a retried step is sent again and PagerDuty's
deduplication by `dedup_key` makes it harmless (a repeated trigger joins the open alert, a repeated
resolve is dropped); a lost store is not rebuilt from it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from relay.alerts import Alert, SchemaError, parse_alert_json, portal_link, resource_group_of, subscription_of
from relay.targets import Finding, Incident, TargetError, TextLimits, Ticket, truncate
from relay.targets.target_config import COMMON_KEYS, Options, option_keys
from relay.targets.vendor_api import Reply, StaticAuth, VendorHTTP, checked_key

log = logging.getLogger("relay.targets.pagerduty")

KIND = "pagerduty"
EVENTS_API = "https://events.pagerduty.com"
ENQUEUE = "/v2/enqueue"
REST_API = "https://api.pagerduty.com"
REST_ACCEPT = "application/vnd.pagerduty+json;version=2"
DEDUP_KEY_MAX = 255  # Events API v2: dedup_key holds 255 characters
SUMMARY_MAX = 1024  # payload.summary
CUSTOM_DETAILS_TEXT_MAX = 8000  # the rendered description in custom_details (the event's total is 512 KB)
PAYLOAD_SEVERITIES = ("critical", "error", "warning", "info")
# A route field naming the environment variable with another integration's routing key.
ROUTE_ROUTING_KEY = "routing_key_env"


@dataclass(frozen=True, slots=True)
class PagerDutyOptions:
    """Target-specific options (each field is an option key), with the defaults docs/targets.md lists."""

    routing_key_env: str | None = None  # the variable holding the integration's routing key (required)
    default_severity: str = field(default="warning", metadata={"choices": PAYLOAD_SEVERITIES})
    source: str | None = None  # payload.source when the alert names no resource; default "Azure Monitor"
    api_token_env: str | None = None  # a REST API token: notes are then added to the incident
    from_email: str | None = None  # the PagerDuty user the REST API records notes as (required with a token)
    api_base_url: str | None = None  # the REST API's root; default https://api.pagerduty.com


OPTION_KEYS = option_keys(PagerDutyOptions)


class PagerDutyTarget:
    kind: ClassVar[str] = KIND
    # The summary is payload.summary; the description goes into custom_details; notes are not sent.
    limits: ClassVar[TextLimits] = TextLimits(summary=SUMMARY_MAX, description=CUSTOM_DETAILS_TEXT_MAX, note=1024)
    # payload.severity: PagerDuty has four levels for Azure's five.
    severity_fields: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "Sev0": {"severity": "critical"},
        "Sev1": {"severity": "error"},
        "Sev2": {"severity": "warning"},
        "Sev3": {"severity": "info"},
        "Sev4": {"severity": "info"},
    }
    options_class: ClassVar[type] = PagerDutyOptions
    # Route options that cannot apply to this kind (option -> value -> why), refused by `relay check-config`.
    unsupported_route_options: ClassVar[Mapping[str, Mapping[str, str]]] = {
        "on_refire": {"reopen": "the Events API cannot reopen: a trigger after a resolve opens a new incident "
                                "(use on_refire: new)"},
    }
    # PagerDuty's documented Events API limit: about 120 events a minute per integration key.
    default_rate_limit_per_second: ClassVar[float] = 2.0

    def __init__(self, name: str, http: VendorHTTP, options: PagerDutyOptions, routing_key: str,
                 env: Mapping[str, str], rest: VendorHTTP | None = None) -> None:
        self.name = name
        self.http = http
        self.options = options
        self.rest = rest  # the REST API, for notes, when a token is configured
        self._routing_key = routing_key
        self._env = env

    def __repr__(self) -> str:  # never show the routing key
        return f"PagerDutyTarget({self.name!r})"

    # -- the Target protocol ---------------------------------------------------------------------

    async def check(self) -> list[Finding]:
        """The routing key cannot be checked: the Events API's only call sends an event. With a REST API
        token, `GET /abilities` (a read) checks the token."""
        findings = [Finding("routing key", "unchecked", "not checked: the Events API has no call that checks a "
                            "routing key without sending an event (a test alert does)")]
        if self.rest is None:
            return findings
        try:
            reply = await self.rest.request("GET", "/abilities", accept=REST_ACCEPT)
        except TargetError as exc:
            return [*findings, Finding("REST API token", "failed", str(exc))]
        if reply.status == 200:
            return [*findings, Finding("REST API token", "ok", "the REST API accepts it")]
        failure = self.rest.failure(reply, "read the account's abilities (GET /abilities)", _rest_error_text(reply))
        return [*findings, Finding("REST API token", "failed", str(failure))]

    async def find(self, incident: Incident) -> Ticket | None:
        """Always None: the Events API cannot search, and a trigger repeated with its dedup_key is one alert."""
        self._key(incident)
        return None

    async def create(self, incident: Incident) -> Ticket:
        key = self._key(incident)
        await self._send("trigger", incident, self._trigger_payload(incident))
        return Ticket(id=key, number=key)

    async def note(self, ticket: Ticket, incident: Incident, text: str) -> None:
        """Skipped without a REST API token; with one, a note on the open incident carrying the dedup key."""
        if self.rest is None:
            log.debug("%s: notes are not sent through the Events API (%s)", self.name, ticket.id)
            return
        reply = await self.rest.request(
            "GET", "/incidents", params={"incident_key": ticket.id}, accept=REST_ACCEPT,
        )
        data = self.rest.parse_json(reply, f"find the incident of {ticket.id}", _rest_error_text)
        incidents = data.get("incidents") if isinstance(data, dict) else None
        if not isinstance(incidents, list):
            raise self.rest.bad_answer(reply, f"find the incident of {ticket.id}", "the answer has no incidents")
        incidents = [i for i in incidents if isinstance(i, dict) and i.get("status") in ("triggered", "acknowledged")]
        if not incidents:
            # Not yet an incident (the event is still being processed) or already resolved: nothing to note.
            log.info("%s: no open PagerDuty incident carries %s; note skipped", self.name, ticket.id)
            return
        incident_id = incidents[0].get("id")
        reply = await self.rest.request(
            "POST", f"/incidents/{incident_id}/notes", json_body={"note": {"content": truncate(text, 25000)}},
            headers={"From": str(self.options.from_email)}, accept=REST_ACCEPT,
        )
        self.rest.parse_json(reply, f"note on {incident_id}", _rest_error_text, ok=(200, 201))

    async def resolve(self, ticket: Ticket, incident: Incident, text: str) -> None:
        await self._send("resolve", incident, None, dedup_key=ticket.id)

    async def reopen(self, ticket: Ticket, incident: Incident, text: str) -> None:
        raise TargetError(
            f"{self.name}: PagerDuty's Events API cannot reopen {ticket.id}; use on_refire: new for this target",
            retryable=False,
        )

    async def close(self) -> None:
        await self.http.close()
        if self.rest is not None:
            await self.rest.close()

    # -- Events API ------------------------------------------------------------------------------

    def _key(self, incident: Incident) -> str:
        return checked_key(self.name, incident, max_length=DEDUP_KEY_MAX)

    def _routing_key_for(self, incident: Incident) -> str:
        variable = incident.fields.get(ROUTE_ROUTING_KEY)
        if not variable:
            return self._routing_key
        value = self._env.get(str(variable), "")
        if not value:
            raise TargetError(
                f"{self.name}: the route's {ROUTE_ROUTING_KEY} names the environment variable {variable}, "
                "which is not set or empty",
                retryable=False,
            )
        return value

    def _trigger_payload(self, incident: Incident) -> dict[str, Any]:
        alert = _alert(incident)
        severity = str(incident.fields.get("severity") or self.options.default_severity)
        if severity not in PAYLOAD_SEVERITIES:
            raise TargetError(
                f"{self.name}: severity {severity!r} is not one PagerDuty takes ({', '.join(PAYLOAD_SEVERITIES)})",
                retryable=False,
            )
        e = alert.essentials if alert else None
        resource = incident.resource_ids[0] if incident.resource_ids else (
            incident.configuration_items[0] if incident.configuration_items else None)
        payload: dict[str, Any] = {
            "summary": truncate(incident.summary, SUMMARY_MAX),
            "source": resource or self.options.source or "Azure Monitor",
            "severity": severity,
        }
        if e is not None:
            payload["timestamp"] = e.fired_at
            payload["component"] = e.target_resource_type or (resource.rsplit("/", 1)[-1] if resource else None)
            payload["group"] = resource_group_of(alert)
            payload["class"] = e.signal_type or e.monitoring_service
        details: dict[str, Any] = {"description": incident.description}
        if e is not None:
            details.update({
                "alert_rule": e.alert_rule, "severity": e.severity, "monitoring_service": e.monitoring_service,
                "subscription": subscription_of(alert), "resource_group": resource_group_of(alert),
                "alert_id": e.alert_id, "fired_at": e.fired_at,
            })
        details["resources"] = list(incident.resource_ids)
        payload["custom_details"] = {k: v for k, v in details.items() if v not in (None, "", [])}
        return {k: v for k, v in payload.items() if v is not None}

    async def _send(self, action: str, incident: Incident, payload: dict[str, Any] | None,
                    dedup_key: str | None = None) -> None:
        event: dict[str, Any] = {
            "routing_key": self._routing_key_for(incident),
            "event_action": action,
            "dedup_key": dedup_key or self._key(incident),
        }
        if payload is not None:
            event["payload"] = payload
            alert = _alert(incident)
            if alert is not None:
                event["links"] = [{"href": portal_link(alert), "text": "Alert in the Azure portal"}]
            event["client"] = "secure-export (Azure Monitor)"
        reply = await self.http.request("POST", ENQUEUE, json_body=event)
        what = f"{action} {event['dedup_key']}"
        if reply.status != 202:
            raise self.http.failure(reply, what, _error_text(reply))
        body = reply.json_or_none()
        if not isinstance(body, dict) or body.get("status") != "success":
            raise self.http.bad_answer(reply, what, "the body does not say status: success")


TARGET_CLASS = PagerDutyTarget


def _alert(incident: Incident) -> Alert | None:
    """The common-schema alert the incident was rendered from (source, component, group, class)."""
    if not incident.body:
        return None
    try:
        return parse_alert_json(incident.body)
    except (ValueError, SchemaError):
        return None


def _error_text(reply: Reply) -> str | None:
    """The Events API's `{"status", "message", "errors": [...]}`, or None to show the raw body."""
    body = reply.json_or_none()
    if not isinstance(body, dict):
        return None
    parts = [str(body[k]) for k in ("status", "message") if body.get(k)]
    parts += [str(e) for e in body.get("errors") or []]
    return ": ".join(parts) or None


def _rest_error_text(reply: Reply) -> str | None:
    """The REST API's `{"error": {"message", "errors": [...]}}`, or None to show the raw body."""
    body = reply.json_or_none()
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None
    parts = [str(error.get("message") or "")] + [str(e) for e in error.get("errors") or []]
    return ": ".join(p for p in parts if p) or None


def from_config(name: str, cfg: Mapping[str, Any], env: Mapping[str, str] = os.environ) -> PagerDutyTarget:
    """Build the target from its YAML block; every mistake is in one TargetConfigError, each naming its key."""
    opts = Options(name, cfg)
    opts.reject_unknown((COMMON_KEYS - {"auth"}) | OPTION_KEYS)
    base_url = opts.base_url() if opts.has("base_url") else EVENTS_API
    options = opts.read(PagerDutyOptions)
    routing_key = opts.secret("routing_key_env", env)
    http = VendorHTTP.from_options(opts, base_url=base_url, auth=None, logger=log)
    rest = None
    if options.api_token_env:
        token = opts.secret("api_token_env", env)
        if not options.from_email:
            opts.problem("from_email", "is required with api_token_env (the REST API records notes as a user)")
        rest_url = REST_API
        if options.api_base_url:
            rest_url = Options(name, {"base_url": options.api_base_url}, "api_", opts.problems).base_url()
        rest = VendorHTTP.from_options(opts, base_url=rest_url, auth=StaticAuth(f"Token token={token}"), logger=log)
    opts.check()
    return PagerDutyTarget(name, http, options, routing_key, env, rest)
