"""The alert rules a stack declares (`secure-export:alerts`): one parser per kind of Azure Monitor alert.

Every rule's action is the stack's action group, so a rule names only what it watches and when it fires.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from infra.config.model import (
    ACTIVITY_STATUSES,
    ALERT_KINDS,
    DIMENSION_OPERATORS,
    DYNAMIC_OPERATORS,
    DYNAMIC_SENSITIVITIES,
    LOG_OPERATORS,
    METRIC_AGGREGATIONS,
    METRIC_FREQUENCIES,
    METRIC_OPERATORS,
    METRIC_WINDOWS,
    RESOURCE_HEALTH_STATUSES,
    SERVICE_HEALTH_INCIDENT_TYPES,
    SEVERITIES,
    AdministrativeAlertRule,
    AlertRule,
    AzureContext,
    Dimension,
    DynamicMetricAlertRule,
    LogSearchAlertRule,
    MetricAlertRule,
    ResourceHealthAlertRule,
    ServiceHealthAlertRule,
)
from infra.config.reader import _LOCATION, _MISSING, ConfigError, Section, _choice, _items, _text
from relay import schema

_GUID_BODY = schema.GUID.pattern.removeprefix("^").removesuffix("$")
_ARM_ID = re.compile(
    rf"^/subscriptions/{_GUID_BODY}"
    r"(/resourceGroups/[-\w.()]{1,90}"
    r"(/providers/[A-Za-z0-9]+\.[A-Za-z0-9.]+(/[A-Za-z0-9.]+/[^/\s]+)+)?)?$"
)
_SUBSCRIPTION_ID = re.compile(r"^/subscriptions/[0-9a-fA-F-]{36}$")
_RULE_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._()-]{0,126}[A-Za-z0-9_()])?$")
_RESOURCE_TYPE = re.compile(r"^[A-Za-z0-9]+\.[A-Za-z0-9.]+(/[A-Za-z0-9]+)+$")
_OPERATION_NAME = re.compile(r"^[A-Za-z0-9]+\.[A-Za-z0-9.]+(/[A-Za-z0-9._-]+)+$")
_DURATION = re.compile(r"^P(?:T([1-9]\d*)([MH])|([1-9]\d*)D)$")

_ARM_ID_EXPECTED = (
    "an Azure resource id: /subscriptions/<subscription GUID>[/resourceGroups/<name>"
    "[/providers/<Namespace>/<type>/<name>...]]"
)


def _arm_id(key: str, value: Any) -> str:
    return _text(key, value, _ARM_ID, _ARM_ID_EXPECTED)


def _severity(rule: Section) -> int:
    return SEVERITIES.index(rule.choice("severity", SEVERITIES, what="severity"))


def _minutes(duration: str) -> int:
    match = _DURATION.match(duration)
    assert match is not None
    if match.group(3):
        return int(match.group(3)) * 1440
    return int(match.group(1)) * (60 if match.group(2) == "H" else 1)


def _window(
    rule: Section,
    windows: Sequence[str] | None,
    frequencies: Sequence[str] | None,
    default_window: str,
    default_frequency: str,
) -> tuple[str, str]:
    def read(name: str, options: Sequence[str] | None, default: str) -> str:
        if options is not None:
            return rule.choice(name, options, default, what="duration")
        return rule.text(name, default, pattern=_DURATION, expected="an ISO 8601 duration such as PT5M, PT1H or P1D")

    window = read("windowSize", windows, default_window)
    frequency = read("evaluationFrequency", frequencies, default_frequency)
    if _minutes(frequency) > _minutes(window):
        raise ConfigError(
            rule.key_of("evaluationFrequency"),
            f"{frequency} is longer than windowSize {window}",
            f"a duration up to {window}",
        )
    return window, frequency


def _dimensions(rule: Section) -> tuple[Dimension, ...]:
    dimensions = []
    for key, value in _items(rule.key_of("dimensions"), rule.raw("dimensions", [])):
        dimension = Section(key, value)
        dimensions.append(
            Dimension(
                name=dimension.text("name"),
                operator=dimension.choice("operator", DIMENSION_OPERATORS, "Include", what="dimension operator"),
                values=dimension.strings("values", expected="dimension values ('*' for all)"),
            )
        )
        dimension.finish()
    return tuple(dimensions)


def _failing_periods(rule: Section, default: int) -> tuple[int, int]:
    periods = rule.section("failingPeriods")
    evaluation = periods.integer("evaluationPeriods", default, minimum=1, maximum=6)
    failing = periods.integer("minFailingPeriods", evaluation, minimum=1, maximum=6)
    if failing > evaluation:
        raise ConfigError(
            periods.key_of("minFailingPeriods"),
            f"{failing} exceeds evaluationPeriods {evaluation}",
            f"1 to {evaluation}",
        )
    periods.finish()
    return evaluation, failing


def _metric_target(rule: Section, scopes: tuple[str, ...]) -> tuple[str | None, str | None]:
    """Multi-resource metric alerts (several scopes, or a resource group or subscription) need the
    target resource type and region; a single resource does not."""
    needed = len(scopes) > 1 or "/providers/" not in scopes[0]
    default = _MISSING if needed else None
    resource_type = rule.text(
        "targetResourceType",
        default,
        pattern=_RESOURCE_TYPE,
        expected="a resource type such as Microsoft.Compute/virtualMachines (needed with several scopes)",
    )
    region = rule.text(
        "targetResourceRegion",
        default,
        pattern=_LOCATION,
        expected="an Azure region name such as westeurope (needed with several scopes)",
    )
    return resource_type, region


def _alerts(project: Section, azure: AzureContext) -> tuple[AlertRule, ...]:
    rules: list[AlertRule] = []
    seen: dict[str, str] = {}
    for key, value in _items(project.key_of("alerts"), project.raw("alerts", [])):
        rule = Section(key, value)
        name = rule.text(
            "name",
            pattern=_RULE_NAME,
            expected="1-128 letters, digits, '.', '_', '-', '(' or ')', starting with a letter or digit",
        )
        if name.lower() in seen:
            raise ConfigError(
                rule.key_of("name"),
                f"{name!r} is already used by {seen[name.lower()]}",
                "a name unique among the stack's alerts",
            )
        seen[name.lower()] = key
        kind = rule.choice("kind", ALERT_KINDS, what="alert kind")
        common = {
            "name": name,
            "description": rule.text("description", ""),
            "enabled": rule.flag("enabled", True),
        }
        rules.append(_ALERT_PARSERS[kind](rule, common, azure))
        rule.finish()
    return tuple(rules)


def _metric_alert(rule: Section, common: dict[str, Any], azure: AzureContext) -> MetricAlertRule:
    scopes = rule.strings("scopes", check=_arm_id, expected="Azure resource ids")
    window, frequency = _window(rule, METRIC_WINDOWS, METRIC_FREQUENCIES, "PT5M", "PT1M")
    resource_type, region = _metric_target(rule, scopes)
    return MetricAlertRule(
        **common,
        severity=_severity(rule),
        scopes=scopes,
        metric_namespace=rule.text("metricNamespace"),
        metric_name=rule.text("metricName"),
        aggregation=rule.choice("aggregation", METRIC_AGGREGATIONS, what="aggregation"),
        operator=rule.choice("operator", METRIC_OPERATORS, what="operator"),
        threshold=rule.number("threshold"),
        window_size=window,
        evaluation_frequency=frequency,
        dimensions=_dimensions(rule),
        target_resource_type=resource_type,
        target_resource_region=region,
    )


def _dynamic_metric_alert(rule: Section, common: dict[str, Any], azure: AzureContext) -> DynamicMetricAlertRule:
    scopes = rule.strings("scopes", check=_arm_id, expected="Azure resource ids")
    window, frequency = _window(rule, METRIC_WINDOWS, METRIC_FREQUENCIES, "PT5M", "PT5M")
    evaluation, failing = _failing_periods(rule, 4)
    resource_type, region = _metric_target(rule, scopes)
    return DynamicMetricAlertRule(
        **common,
        severity=_severity(rule),
        scopes=scopes,
        metric_namespace=rule.text("metricNamespace"),
        metric_name=rule.text("metricName"),
        aggregation=rule.choice("aggregation", METRIC_AGGREGATIONS, what="aggregation"),
        operator=rule.choice("operator", DYNAMIC_OPERATORS, what="operator for dynamic thresholds"),
        sensitivity=rule.choice("sensitivity", DYNAMIC_SENSITIVITIES, "Medium", what="sensitivity"),
        evaluation_periods=evaluation,
        min_failing_periods=failing,
        window_size=window,
        evaluation_frequency=frequency,
        dimensions=_dimensions(rule),
        target_resource_type=resource_type,
        target_resource_region=region,
    )


def _log_search_alert(rule: Section, common: dict[str, Any], azure: AzureContext) -> LogSearchAlertRule:
    aggregation = rule.choice("aggregation", METRIC_AGGREGATIONS, "Count", what="aggregation")
    column = rule.text("metricMeasureColumn", None if aggregation == "Count" else _MISSING)
    window, frequency = _window(rule, None, None, "PT5M", "PT5M")
    evaluation, failing = _failing_periods(rule, 1)
    override = _query_time_range(rule, _minutes(window) * evaluation)
    return LogSearchAlertRule(
        **common,
        severity=_severity(rule),
        scopes=rule.strings("scopes", check=_arm_id, expected="Log Analytics workspace or resource ids"),
        location=rule.text(
            "location", azure.location, pattern=_LOCATION, expected="an Azure region name such as westeurope"
        ),
        query=rule.text("query"),
        aggregation=aggregation,
        metric_measure_column=column,
        operator=rule.choice("operator", LOG_OPERATORS, what="operator for log search alerts"),
        threshold=rule.number("threshold"),
        window_size=window,
        evaluation_frequency=frequency,
        evaluation_periods=evaluation,
        min_failing_periods=failing,
        dimensions=_dimensions(rule),
        override_query_time_range=override,
    )


# Azure's bound on a log search rule's query time range (overrideQueryTimeRange).
_MAX_QUERY_TIME_RANGE_MINUTES = 2 * 1440


def _query_time_range(rule: Section, default_minutes: int) -> str | None:
    """`overrideQueryTimeRange`: how far back the query looks, when longer than windowSize x
    evaluationPeriods (Azure's default). A "no data for N minutes" query needs it: with the default
    range, a resource silent for longer than the window has no rows at all and the alert resolves."""
    value = rule.text(
        "overrideQueryTimeRange", None, pattern=_DURATION, expected="an ISO 8601 duration such as PT1H or P2D"
    )
    if value is None:
        return None
    if not default_minutes <= _minutes(value) <= _MAX_QUERY_TIME_RANGE_MINUTES:
        raise ConfigError(
            rule.key_of("overrideQueryTimeRange"),
            f"{value} is outside the range Azure accepts",
            f"at least windowSize x evaluationPeriods ({default_minutes} minutes) and at most P2D",
        )
    return value


def _subscription_scopes(rule: Section, azure: AzureContext, *, subscription_only: bool = False) -> tuple[str, ...]:
    def check(key: str, value: Any) -> str:
        if subscription_only:
            return _text(key, value, _SUBSCRIPTION_ID, "a subscription id: /subscriptions/<subscription GUID>")
        return _arm_id(key, value)

    return rule.strings("scopes", (f"/subscriptions/{azure.subscription_id}",), check=check)


def _administrative_alert(rule: Section, common: dict[str, Any], azure: AzureContext) -> AdministrativeAlertRule:
    return AdministrativeAlertRule(
        **common,
        scopes=_subscription_scopes(rule, azure),
        operation_name=rule.text(
            "operationName",
            pattern=_OPERATION_NAME,
            expected="an operation such as Microsoft.Compute/virtualMachines/delete",
        ),
        status=rule.choice("status", ACTIVITY_STATUSES, None, what="status"),
    )


def _service_health_alert(rule: Section, common: dict[str, Any], azure: AzureContext) -> ServiceHealthAlertRule:
    return ServiceHealthAlertRule(
        **common,
        scopes=_subscription_scopes(rule, azure, subscription_only=True),
        incident_types=rule.strings(
            "incidentTypes", (), check=lambda k, v: _choice(k, v, SERVICE_HEALTH_INCIDENT_TYPES, "incident type")
        ),
        regions=rule.strings("regions", ()),
        services=rule.strings("services", ()),
    )


def _resource_health_alert(rule: Section, common: dict[str, Any], azure: AzureContext) -> ResourceHealthAlertRule:
    return ResourceHealthAlertRule(
        **common,
        scopes=_subscription_scopes(rule, azure),
        health_statuses=rule.strings(
            "healthStatuses",
            ("Degraded", "Unavailable"),
            check=lambda k, v: _choice(k, v, RESOURCE_HEALTH_STATUSES, "health status"),
        ),
        resource_types=rule.strings(
            "resourceTypes",
            (),
            check=lambda k, v: _text(k, v, _RESOURCE_TYPE, "a resource type such as Microsoft.Compute/virtualMachines"),
        ),
    )


_ALERT_PARSERS: dict[str, Callable[[Section, dict[str, Any], AzureContext], AlertRule]] = {
    "metric": _metric_alert,
    "dynamicMetric": _dynamic_metric_alert,
    "logSearch": _log_search_alert,
    "administrative": _administrative_alert,
    "serviceHealth": _service_health_alert,
    "resourceHealth": _resource_health_alert,
}
