"""The stack's `secure-export:reconcile` section: reconciliation with the Alerts Management API
(docs/reconciliation.md). Present (and `enabled`, the default), the stack grants the relay's identity
Monitoring Reader on each subscription it reconciles and renders the relay's `reconcile:` section with
the ids of the alert rules it declares; the relay checks the values (`relay check-config`).

Two-way sync (a route's `sync:` with `close_alert` or `acknowledge_on_progress` on) changes alert states:
`sync_subscriptions` names where the identity needs Monitoring Contributor for it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from infra.config.model import AlertRule, DynamicMetricAlertRule, LogSearchAlertRule, MetricAlertRule, Route
from infra.config.reader import ConfigError, Section, _guid
from relay import schema

# Which provider type each rule kind is declared as: the rules the Alerts Management API can list with a
# monitorCondition that resolves (activity-log alerts only ever fire and are not reconciled).
RULE_TYPES: Mapping[type, str] = {
    MetricAlertRule: "Microsoft.Insights/metricAlerts",
    DynamicMetricAlertRule: "Microsoft.Insights/metricAlerts",
    LogSearchAlertRule: "Microsoft.Insights/scheduledQueryRules",
}


@dataclass(frozen=True)
class ReconcileStack:
    """`subscriptions`: extra ones to reconcile besides the stack's sources (alert rules' scopes)."""

    subscriptions: tuple[str, ...] = ()
    interval_minutes: float | None = None  # None: the relay's default
    look_back_hours: float | None = None
    alert_types: tuple[str, ...] | None = None


def parse(project: Section) -> ReconcileStack | None:
    """The section, or None when it is absent or `enabled: false`."""
    if not project.has("reconcile"):
        project.raw("reconcile", None)
        return None
    section = project.section("reconcile")
    enabled = section.flag("enabled", True)
    settings = ReconcileStack(
        subscriptions=tuple(s.lower() for s in section.strings("subscriptions", (), check=_guid("a subscription id"),
                                                                expected="subscription ids (GUIDs)")),
        interval_minutes=section.bounded("intervalMinutes", schema.RECONCILE["interval_minutes"], None),
        look_back_hours=section.bounded("lookBackHours", schema.RECONCILE["look_back_hours"], None),
        alert_types=section.strings("alertTypes", None, check=_alert_type, expected="alert types (Metric, Log)"),
    )
    section.finish()
    return settings if enabled else None


def _alert_type(key: str, value: Any) -> str:
    if value not in schema.RECONCILE_ALERT_TYPES:
        raise ConfigError(key, f"{value!r} is not an alert type reconciliation takes",
                          ", ".join(schema.RECONCILE_ALERT_TYPES))
    return str(value)


def rule_ids(subscription_id: str, resource_group: str, rules: Sequence[AlertRule]) -> tuple[str, ...]:
    """The ARM ids of the stack's rules reconciliation covers (they are declared under these names)."""
    return tuple(
        f"/subscriptions/{subscription_id}/resourceGroups/{resource_group}/providers/{RULE_TYPES[type(rule)]}/{rule.name}"
        for rule in rules if type(rule) in RULE_TYPES and rule.enabled
    )


def subscriptions(settings: ReconcileStack, sources: Sequence[str]) -> tuple[str, ...]:
    """Every subscription reconciled: the stack's sources, then the extra ones, each once."""
    return tuple(dict.fromkeys([*(s.lower() for s in sources), *settings.subscriptions]))


def relay_section(settings: ReconcileStack, subscription_ids: Sequence[str], rules: Sequence[str]) -> dict[str, Any]:
    """The relay's `reconcile:` section, keys as docs/configuration.md names them; unset ones left out."""
    section: dict[str, Any] = {"subscriptions": list(subscription_ids), "rule_ids": list(rules)}
    if settings.interval_minutes is not None:
        section["interval_minutes"] = settings.interval_minutes
    if settings.look_back_hours is not None:
        section["look_back_hours"] = settings.look_back_hours
    if settings.alert_types is not None:
        section["alert_types"] = list(settings.alert_types)
    return section


def syncs(route: Route) -> bool:
    """Whether a route turns two-way sync on (`sync: {close_alert: true}` or `acknowledge_on_progress`)."""
    sync = route.options.get("sync")
    return isinstance(sync, Mapping) and any(sync.get(key) is True for key in schema.SYNC_ROUTE_KEYS)


def sync_subscriptions(routes: Sequence[Route], sources: Sequence[str]) -> tuple[str, ...]:
    """The subscriptions whose alerts two-way sync may close or acknowledge: for each syncing route, the
    subscriptions its `match.subscription` names, else every source subscription (its alerts may come from
    any of them); each once, in order. Empty when no route syncs."""
    out: list[str] = []
    for route in routes:
        if syncs(route):
            named = route.match.get("subscription")
            out.extend(s.lower() for s in (named or sources))
    return tuple(dict.fromkeys(out))
