"""A typed model of Azure Monitor's common alert schema, and the parser that builds it.

The parser checks what the relay relies on and tolerates the documented quirks (null severity on
cost alerts, `ActivityLog` without a space, numeric `level`, `impactedServices` as string or array,
missing `configurationItems`). Everything else stays in `raw`, so nothing unknown is dropped.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from relay.schema import GUID, SEVERITIES

SCHEMA_ID = "azureMonitorCommonAlertSchema"
CONDITIONS = ("Fired", "Resolved")
# Azure writes both spellings: "Activity Log" in most samples, "ActivityLog" in the Service Health one.
SIGNAL_TYPES = {"Metric": "Metric", "Log": "Log", "Activity Log": "Activity Log", "ActivityLog": "Activity Log"}


class SchemaError(ValueError):
    """The body is JSON but not a common-schema alert; `field` names the offending JSON path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class Essentials:
    alert_id: str
    monitoring_service: str
    fired_at: str
    alert_rule: str | None = None
    alert_rule_id: str | None = None
    severity: str | None = None
    signal_type: str | None = None
    monitor_condition: str | None = None
    resolved_at: str | None = None
    target_ids: tuple[str, ...] = ()
    configuration_items: tuple[str, ...] = ()
    origin_alert_id: str | None = None
    description: str | None = None
    target_resource_group: str | None = None
    target_resource_type: str | None = None
    investigation_link: str | None = None


@dataclass(frozen=True, slots=True)
class MetricContext:
    condition_type: str | None
    window_start: str | None
    window_end: str | None
    criteria: tuple[dict[str, Any], ...]


@dataclass(frozen=True, slots=True)
class LogContext:
    """Log search alerts: V1 (Log Analytics, Application Insights) and V2 / Simple Log Alert."""

    version: str  # "v1" or "v2"
    search_query: str | None
    result_count: int | None


@dataclass(frozen=True, slots=True)
class ActivityLogContext:
    operation_name: str | None
    status: str | None
    level: str | None
    event_source: str | None
    caller: str | None
    properties: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ImpactedService:
    """One entry of Service Health's `impactedServices`: a service and the regions it is impaired in."""

    service: str
    regions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ServiceHealthContext:
    tracking_id: str | None
    title: str | None
    stage: str | None
    incident_type: str | None
    impacted_services: tuple[str, ...]
    # What an engineer reads: the notification's text (HTML, as Azure sends it), its id, the impact.
    communication: str | None = None
    communication_id: str | None = None
    impacted: tuple[ImpactedService, ...] = ()
    impact_start: str | None = None
    impact_mitigation: str | None = None


@dataclass(frozen=True, slots=True)
class ResourceHealthContext:
    title: str | None
    current_health_status: str | None
    previous_health_status: str | None
    cause: str | None


@dataclass(frozen=True, slots=True)
class SmartDetectorContext:
    detector_name: str | None
    detection_summary: str | None


@dataclass(frozen=True, slots=True)
class PrometheusContext:
    expression: str | None
    labels: dict[str, Any]
    annotations: dict[str, Any]


@dataclass(frozen=True, slots=True)
class BudgetContext:
    category: str | None
    budget_name: str | None
    spent_amount: str | None
    threshold_type: str | None = None  # Actual or Forecasted
    budget_amount: str | None = None  # BudgetThreshold, as Azure writes it ("$50.00")


@dataclass(frozen=True, slots=True)
class OtherContext:
    """A monitoring service this model does not know yet: kept whole in `Alert.raw`."""


AlertContext = (
    MetricContext
    | LogContext
    | ActivityLogContext
    | ServiceHealthContext
    | ResourceHealthContext
    | SmartDetectorContext
    | PrometheusContext
    | BudgetContext
    | OtherContext
)


@dataclass(frozen=True, slots=True)
class Alert:
    essentials: Essentials
    context: AlertContext
    custom_properties: dict[str, Any]
    raw: dict[str, Any] = field(repr=False)

    @property
    def correlation_key(self) -> str:
        """The alert GUID: the last segment of alertId (fits ServiceNow's 100-char correlation_id).

        Some alert ids end in a name, not a GUID (activity-log test actions carry the rule id, cost
        alerts `.../alerts/<budget alert name>`); two such alerts of different rules can share that
        name, so they are keyed by a hash of the whole (case-insensitive) id instead.
        """
        last = self.essentials.alert_id.rstrip("/").rsplit("/", 1)[-1]
        if GUID.match(last):
            return last.lower()
        return "id-" + hashlib.sha256(self.essentials.alert_id.lower().encode()).hexdigest()[:40]

    @property
    def condition(self) -> str:
        """Fired or Resolved. Cost alerts may send null: they only ever fire."""
        return self.essentials.monitor_condition or "Fired"

    @property
    def occurred_at(self) -> str:
        """The time of this state: resolvedDateTime for a resolve when Azure sends one, else firedDateTime."""
        if self.condition == "Resolved" and self.essentials.resolved_at:
            return self.essentials.resolved_at
        return self.essentials.fired_at

    @property
    def resolves(self) -> bool:
        """Whether this event resolves the alert (Service Health carries it in the context's stage)."""
        if self.condition == "Resolved":
            return True
        ctx = self.context
        return isinstance(ctx, ServiceHealthContext) and (ctx.stage or "").lower() == "resolved"


def parse_alert_json(body: bytes) -> Alert:
    """Parse raw bytes; raises ValueError (bad JSON) or SchemaError (not the common schema)."""
    return parse_alert(json.loads(body))


def parse_alert(doc: Any) -> Alert:
    if not isinstance(doc, dict):
        raise SchemaError("$", "the body must be a JSON object")
    schema_id = doc.get("schemaId")
    if schema_id != SCHEMA_ID:
        raise SchemaError(
            "schemaId",
            f"must be {SCHEMA_ID!r} (got {schema_id!r}); enable the common alert schema on the action group",
        )
    data = _obj(doc, "data", "data")
    essentials = _parse_essentials(_obj(data, "essentials", "data.essentials"))
    context_doc = data.get("alertContext")
    if context_doc is None:
        context_doc = {}
    if not isinstance(context_doc, dict):
        raise SchemaError("data.alertContext", "must be an object")
    custom = data.get("customProperties")
    if custom is None:
        custom = {}
    if not isinstance(custom, dict):
        raise SchemaError("data.customProperties", "must be an object or null")
    context = _parse_context(essentials.monitoring_service, context_doc)
    return Alert(essentials=essentials, context=context, custom_properties=custom, raw=doc)


_ISO_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:?\d{2})?$")
# How far ahead of the relay's clock a firedDateTime or resolvedDateTime may lie (clocks drift; an event
# from next year would silence its ticket key until then). Other times, such as a planned-maintenance
# notice's impact window, may lie further ahead and are not checked.
MAX_FUTURE = timedelta(days=1)


@functools.lru_cache(maxsize=1024)
def parse_time(text: str) -> datetime:
    """An ISO 8601 time as the common schema writes it, as an aware UTC datetime; ValueError when it is not
    one, or names an impossible date (month 13, 30 February) or offset (+99:99). Remembered for the last
    1,024 texts (a failure is not): intake reads each alert's times twice, to validate them and to check
    how far ahead they lie, and a storm's alerts share a few firing seconds."""
    m = _ISO_TIME.match(text)
    if not m:
        raise ValueError("not an ISO 8601 time")
    whole, frac, tz = m.groups()
    offset = "+00:00" if tz in (None, "Z") else (tz if ":" in tz else f"{tz[:3]}:{tz[3:]}")
    hours, minutes = int(offset[1:3]), int(offset[4:6])
    if hours > 23 or minutes > 59:
        raise ValueError(f"offset {tz} is not a UTC offset")
    micro = (frac or ".0")[1:7].ljust(6, "0")
    try:
        return datetime.fromisoformat(f"{whole}.{micro}{offset}").astimezone(UTC)
    except OverflowError:  # year 1 less an offset, year 9999 plus one
        raise ValueError("the time lies outside the years 1 to 9999 in UTC") from None


def check_times(alert: Alert, now: datetime) -> None:
    """Refuse (SchemaError) a firedDateTime or resolvedDateTime more than MAX_FUTURE after `now`."""
    p = "data.essentials"
    e = alert.essentials
    for key, value in (("firedDateTime", e.fired_at), ("resolvedDateTime", e.resolved_at)):
        if value is not None and parse_time(value) > now + MAX_FUTURE:
            raise SchemaError(f"{p}.{key}", f"lies more than a day in the future ({value[:40]!r})")


def _parse_essentials(e: dict[str, Any]) -> Essentials:
    p = "data.essentials"
    alert_id = _str(e, "alertId", p, required=True)
    if not alert_id.strip("/"):
        raise SchemaError(f"{p}.alertId", "must not be empty")
    service = _str(e, "monitoringService", p, required=True)
    fired = _time(e, "firedDateTime", p, required=True)
    severity = _str(e, "severity", p)
    if severity is not None and severity not in SEVERITIES:
        raise SchemaError(f"{p}.severity", f"must be one of {', '.join(SEVERITIES)} or null (got {severity!r})")
    signal = _str(e, "signalType", p)
    if signal is not None:
        signal = SIGNAL_TYPES.get(signal, signal)
    condition = _str(e, "monitorCondition", p)
    if condition is not None and condition not in CONDITIONS:
        raise SchemaError(f"{p}.monitorCondition", f"must be Fired, Resolved or null (got {condition!r})")
    return Essentials(
        alert_id=alert_id,
        monitoring_service=service,
        fired_at=fired,
        alert_rule=_str(e, "alertRule", p),
        alert_rule_id=_str(e, "alertRuleID", p) or _str(e, "alertRuleId", p),
        severity=severity,
        signal_type=signal,
        monitor_condition=condition,
        resolved_at=_time(e, "resolvedDateTime", p),
        target_ids=_str_list(e, "alertTargetIDs", p),
        configuration_items=_str_list(e, "configurationItems", p),
        origin_alert_id=_str(e, "originAlertId", p),
        description=_str(e, "description", p),
        target_resource_group=_str(e, "targetResourceGroup", p),
        target_resource_type=_str(e, "targetResourceType", p),
        investigation_link=_str(e, "investigationLink", p),
    )


def _parse_context(service: str, c: dict[str, Any]) -> AlertContext:
    p = "data.alertContext"
    s = service.lower()
    if s == "platform":
        cond = c.get("condition") or {}
        if not isinstance(cond, dict):
            raise SchemaError(f"{p}.condition", "must be an object")
        all_of = cond.get("allOf") or []
        if not isinstance(all_of, list) or not all(isinstance(x, dict) for x in all_of):
            raise SchemaError(f"{p}.condition.allOf", "must be a list of objects")
        return MetricContext(
            condition_type=_text(c.get("conditionType")),
            window_start=_text(cond.get("windowStartTime")),
            window_end=_text(cond.get("windowEndTime")),
            criteria=tuple(all_of),
        )
    if s in ("log analytics", "application insights"):
        count = c.get("ResultCount")
        return LogContext(
            version="v1",
            search_query=_text(c.get("SearchQuery")),
            result_count=count if isinstance(count, int) and not isinstance(count, bool) else None,
        )
    if s in ("log alerts v2", "simple log alert"):
        cond = c.get("condition") or {}
        all_of = cond.get("allOf") if isinstance(cond, dict) else None
        query = None
        if isinstance(all_of, list) and all_of and isinstance(all_of[0], dict):
            query = _text(all_of[0].get("searchQuery"))
        return LogContext(version="v2", search_query=query, result_count=None)
    if s == "servicehealth":
        props = _props(c, p)
        impacted = _impacted(props.get("impactedServices"), props)
        return ServiceHealthContext(
            tracking_id=_text(props.get("trackingId")),
            title=_text(props.get("title")),
            stage=_text(props.get("stage")),
            incident_type=_text(props.get("incidentType")),
            impacted_services=tuple(i.service for i in impacted),
            communication=_text(props.get("communication")) or _text(props.get("defaultLanguageContent")),
            communication_id=_text(props.get("communicationId")),
            impacted=impacted,
            impact_start=_text(props.get("impactStartTime")),
            impact_mitigation=_text(props.get("impactMitigationTime")),
        )
    if s == "resource health":
        props = _props(c, p)
        return ResourceHealthContext(
            title=_text(props.get("title")),
            current_health_status=_text(props.get("currentHealthStatus")),
            previous_health_status=_text(props.get("previousHealthStatus")),
            cause=_text(props.get("cause")),
        )
    if s.startswith("activity log"):
        return ActivityLogContext(
            operation_name=_text(c.get("operationName")),
            status=_text(c.get("status")),
            level=_text(c.get("level")),
            event_source=_text(c.get("eventSource")),
            caller=_text(c.get("caller")),
            properties=_props(c, p),
        )
    if s == "smartdetector":
        return SmartDetectorContext(
            detector_name=_text(c.get("SmartDetectorName")),
            detection_summary=_text(c.get("DetectionSummary")),
        )
    if s == "prometheus":
        labels = c.get("labels") or {}
        annotations = c.get("annotations") or {}
        return PrometheusContext(
            expression=_text(c.get("expression")),
            labels=labels if isinstance(labels, dict) else {},
            annotations=annotations if isinstance(annotations, dict) else {},
        )
    if s == "costalerts":
        data = c.get("AlertData") or {}
        data = data if isinstance(data, dict) else {}
        return BudgetContext(
            category=_text(c.get("AlertCategory")),
            budget_name=_text(data.get("BudgetName")),
            spent_amount=_text(data.get("SpentAmount")),
            threshold_type=_text(data.get("ThresholdType")),
            budget_amount=_text(data.get("BudgetThreshold")),
        )
    return OtherContext()


def _impacted(value: Any, props: dict[str, Any]) -> tuple[ImpactedService, ...]:
    """impactedServices is a JSON string in older payloads and an array in newer ones, each entry a
    `ServiceName` with its `ImpactedRegions` (`RegionName`). Without it, the notification's own
    `service` and `region` (the first impacted ones, as Azure fills them) stand in."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = [value] if value else []
    out = []
    for item in value if isinstance(value, list) else []:
        if isinstance(item, dict) and isinstance(item.get("ServiceName"), str):
            regions = item.get("ImpactedRegions")
            names = tuple(r["RegionName"] for r in (regions if isinstance(regions, list) else ())
                          if isinstance(r, dict) and isinstance(r.get("RegionName"), str))
            out.append(ImpactedService(item["ServiceName"], names))
        elif isinstance(item, str):
            out.append(ImpactedService(item))
    if not out:
        service, region = _text(props.get("service")), _text(props.get("region"))
        if service:
            out.append(ImpactedService(service, (region,) if region else ()))
    return tuple(out)


def _obj(parent: dict[str, Any], key: str, path: str) -> dict[str, Any]:
    value = parent.get(key)
    if value is None:
        raise SchemaError(path, "is required")
    if not isinstance(value, dict):
        raise SchemaError(path, "must be an object")
    return value


def _props(c: dict[str, Any], path: str) -> dict[str, Any]:
    props = c.get("properties")
    if props is None:
        return {}
    if not isinstance(props, dict):
        raise SchemaError(f"{path}.properties", "must be an object")
    return props


def _str(e: dict[str, Any], key: str, path: str, required: bool = False) -> Any:
    value = e.get(key)
    if value is None:
        if required:
            raise SchemaError(f"{path}.{key}", "is required")
        return None
    if not isinstance(value, str):
        raise SchemaError(f"{path}.{key}", f"must be a string (got {type(value).__name__})")
    if required and not value:
        raise SchemaError(f"{path}.{key}", "must not be empty")
    return value


def _time(e: dict[str, Any], key: str, path: str, required: bool = False) -> Any:
    value = _str(e, key, path, required)
    if value is not None:
        try:
            parse_time(value)
        except ValueError as exc:
            raise SchemaError(f"{path}.{key}", f"must be an ISO 8601 UTC time (got {value[:40]!r}: {exc})") from None
    return value


def _str_list(e: dict[str, Any], key: str, path: str) -> tuple[str, ...]:
    value = e.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise SchemaError(f"{path}.{key}", "must be a list of strings or null")
    return tuple(value)


def _text(value: Any) -> str | None:
    """A loosely typed context field: numbers (level, eventSource) become text, objects are dropped."""
    if value is None or isinstance(value, (dict, list)):
        return None
    return str(value)


# -- facts about an alert, used by routing, rendering and the lifecycle ---------------------------

def configuration_items(alert: Alert) -> tuple[str, ...]:
    """`configurationItems`, falling back to `alertTargetIDs` (ARM ids)."""
    return alert.essentials.configuration_items or alert.essentials.target_ids


def bind_configuration_items(cis: tuple[str, ...], limit: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(bound, rest): the first `limit` distinct CIs (case-insensitive) are bound to tickets, the rest
    only listed, so that one alert naming thousands of CIs cannot open thousands of incidents or CMDB
    records (and make them again on every retry)."""
    if limit < 1:
        raise ValueError(f"the configuration item limit must be at least 1 (got {limit})")
    seen: set[str] = set()
    distinct = []
    for ci in cis:
        if ci.lower() not in seen:
            seen.add(ci.lower())
            distinct.append(ci)
    return tuple(distinct[:limit]), tuple(distinct[limit:])


_SUBSCRIPTION = re.compile(r"/subscriptions/([^/]+)", re.IGNORECASE)


def subscription_of(alert: Alert) -> str | None:
    """The subscription id, from the first target id or else the alert id."""
    for text in (*alert.essentials.target_ids, alert.essentials.alert_id):
        m = _SUBSCRIPTION.search(text)
        if m:
            return m.group(1)
    return None


_RESOURCE_GROUP = re.compile(r"/resourcegroups/([^/]+)", re.IGNORECASE)


def resource_group_of(alert: Alert) -> str | None:
    """`targetResourceGroup`, else the resource group in the first target id that has one."""
    if alert.essentials.target_resource_group:
        return alert.essentials.target_resource_group
    for rid in alert.essentials.target_ids:
        m = _RESOURCE_GROUP.search(rid)
        if m:
            return m.group(1)
    return None


# The Azure portal's alert details blade, which takes the whole alert id (URL-encoded).
PORTAL_ALERT_URL = "https://portal.azure.com/#view/Microsoft_Azure_Monitoring_Alerts/AlertDetails.ReactView/alertId/"


def portal_link(alert: Alert) -> str:
    """Where a person sees the alert in the Azure portal: `investigationLink` when Azure sent one, else the
    alert details page built from the alert id."""
    if alert.essentials.investigation_link:
        return alert.essentials.investigation_link
    return PORTAL_ALERT_URL + quote(alert.essentials.alert_id, safe="")


def log_search_link(alert: Alert) -> str | None:
    """A log alert's link to its query results in the portal (filtered when Azure gives one), else None."""
    if not isinstance(alert.context, LogContext):
        return None
    data = alert.raw.get("data")
    ctx = data.get("alertContext") if isinstance(data, dict) else None
    if not isinstance(ctx, dict):
        return None
    candidates: list[Any] = [ctx.get("LinkToFilteredSearchResultsUI"), ctx.get("LinkToSearchResultsUI"),
                             ctx.get("LinkToSearchResults")]
    condition = ctx.get("condition")
    all_of = condition.get("allOf") if isinstance(condition, dict) else None
    if isinstance(all_of, list) and all_of and isinstance(all_of[0], dict):
        candidates[:0] = [all_of[0].get("linkToFilteredSearchResultsUI"), all_of[0].get("linkToSearchResultsUI")]
    return next((c for c in candidates if isinstance(c, str) and c.startswith("https://")), None)
