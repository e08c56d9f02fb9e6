"""What a reconciliation pass does with the alerts the Alerts Management API listed: pure functions.

`listed_alert` turns one alert of the API (`properties.essentials` as the REST reference documents
it) into a `ListedAlert`; `keep` says whether it is the relay's business (a wired rule, the configured
alert types, not suppressed by an alert processing rule); `synthesized` builds the common-schema bodies
of its Fired (and, once resolved, Resolved) events, whose idempotency keys equal those of the webhooks
Azure would have sent (`relay.store.base.key_time`). No I/O and no clock: `window` takes the time in.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from relay.alerts import SCHEMA_ID, parse_alert
from relay.delivery.routing import ReconcileSettings
from relay.schema import RECONCILED_PROPERTY
from relay.store.base import Event, key_time


@dataclass(frozen=True, slots=True)
class ListedAlert:
    """One alert as the Alerts Management API lists it; times as ISO 8601 text in UTC."""

    alert_id: str
    name: str | None
    rule_id: str
    condition: str  # Fired or Resolved (monitorCondition)
    started_at: str  # startDateTime: the webhook's firedDateTime
    resolved_at: str | None  # monitorConditionResolvedDateTime: the webhook's resolvedDateTime
    signal_type: str | None
    monitor_service: str | None
    severity: str | None
    suppressed: bool  # actionStatus.isSuppressed: an alert processing rule removed its action groups
    target_resource: str | None = None
    target_resource_name: str | None = None
    target_resource_group: str | None = None
    target_resource_type: str | None = None
    description: str | None = None


def iso(value: Any) -> str | None:
    """A time the SDK gave (a datetime, or text) as ISO 8601 UTC text with Z; None stays None."""
    if value is None:
        return None
    if isinstance(value, datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=UTC)
        return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")
    return str(value)


def listed_alert(alert_id: str, name: str | None, essentials: Mapping[str, Any]) -> ListedAlert:
    """A ListedAlert from an alert's id, name and essentials (REST names: startDateTime, alertRule...).

    Raises ValueError naming the missing field when the API left out what reconciliation needs."""
    for required in ("alertRule", "startDateTime", "monitorCondition"):
        if not essentials.get(required):
            raise ValueError(f"alert {alert_id}: properties.essentials.{required} is missing")
    condition = str(essentials["monitorCondition"])
    if condition not in ("Fired", "Resolved"):
        raise ValueError(f"alert {alert_id}: monitorCondition must be Fired or Resolved (got {condition!r})")
    status = essentials.get("actionStatus") or {}
    return ListedAlert(
        alert_id=alert_id,
        name=name,
        rule_id=str(essentials["alertRule"]),
        condition=condition,
        started_at=iso(essentials["startDateTime"]) or "",
        resolved_at=iso(essentials.get("monitorConditionResolvedDateTime")),
        signal_type=essentials.get("signalType"),
        monitor_service=essentials.get("monitorService"),
        severity=essentials.get("severity"),
        suppressed=bool(status.get("isSuppressed")),
        target_resource=essentials.get("targetResource"),
        target_resource_name=essentials.get("targetResourceName"),
        target_resource_group=essentials.get("targetResourceGroup"),
        target_resource_type=essentials.get("targetResourceType"),
        description=essentials.get("description"),
    )


def window(now: datetime, settings: ReconcileSettings, resume_from: str | None = None) -> str:
    """The API's customTimeRange for one pass: `<start>/<end>`, the look-back up to `now` (UTC, seconds).
    `resume_from`: where the last pass stopped short (the startDateTime of the last alert it listed);
    the window then starts there, if that is inside the look-back."""
    end = now.astimezone(UTC).replace(microsecond=0)
    start = end - timedelta(hours=settings.look_back_hours)
    if resume_from:
        resume = datetime.fromisoformat(key_time(resume_from).replace("Z", "+00:00"))
        start = min(max(start, resume), end)
    return f"{start.strftime('%Y-%m-%dT%H:%M:%SZ')}/{end.strftime('%Y-%m-%dT%H:%M:%SZ')}"


def skip_reason(alert: ListedAlert, settings: ReconcileSettings) -> str | None:
    """Why a listed alert is not the relay's business, or None to reconcile it."""
    if alert.rule_id.rstrip("/").lower() not in settings.rule_ids:
        return "rule"  # a rule not wired to the relay's action groups
    if alert.suppressed:
        return "suppressed"  # an alert processing rule removed the action groups: no webhook was due
    if alert.signal_type not in settings.alert_types:
        return "alert_type"
    if alert.condition == "Resolved" and not alert.resolved_at:
        return "no_resolved_time"  # cannot key the Resolved the webhook would have carried
    return None


def body(alert: ListedAlert, condition: str) -> dict[str, Any]:
    """The common-schema body of `alert`'s `condition` event, as the webhook would have carried it (the
    fields the API knows), marked with RECONCILED_PROPERTY."""
    rule_name = alert.rule_id.rstrip("/").rsplit("/", 1)[-1]
    essentials: dict[str, Any] = {
        "alertId": alert.alert_id,
        "alertRule": rule_name,
        "alertRuleID": alert.rule_id,
        "severity": alert.severity,
        "signalType": alert.signal_type,
        "monitorCondition": condition,
        "monitoringService": alert.monitor_service or "Platform",
        "alertTargetIDs": [alert.target_resource] if alert.target_resource else [],
        "configurationItems": [alert.target_resource_name] if alert.target_resource_name else [],
        "originAlertId": alert.alert_id.rstrip("/").rsplit("/", 1)[-1],
        "firedDateTime": alert.started_at,
        "description": alert.description or "",
        "essentialsVersion": "1.0",
        "alertContextVersion": "1.0",
    }
    if alert.target_resource_group:
        essentials["targetResourceGroup"] = alert.target_resource_group
    if alert.target_resource_type:
        essentials["targetResourceType"] = alert.target_resource_type
    if condition == "Resolved":
        essentials["resolvedDateTime"] = alert.resolved_at
    return {
        "schemaId": SCHEMA_ID,
        "data": {"essentials": essentials, "alertContext": {}, "customProperties": {RECONCILED_PROPERTY: True}},
    }


def synthesized(alert: ListedAlert) -> list[Event]:
    """The events of `alert` a webhook would have delivered: its Fired, and its Resolved once resolved.
    Their keys are the webhooks' keys, so the store takes only those it never received."""
    conditions = ["Fired"] if alert.condition == "Fired" else ["Fired", "Resolved"]
    out = []
    for condition in conditions:
        doc = body(alert, condition)
        raw = json.dumps(doc, separators=(",", ":")).encode()
        out.append(Event.from_alert(parse_alert(doc), raw))
    return out

