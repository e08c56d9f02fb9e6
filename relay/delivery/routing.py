"""Where an alert goes: the targets and ordered routes of RELAY_CONFIG, as the worker reads them.

The model and its matching only; `relay.delivery.config` turns the YAML file into these objects (and
checks it), so the worker depends on neither PyYAML nor the validator.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jinja2 import Template

from relay.alerts import Alert, resource_group_of, subscription_of
from relay.delivery.flapping import Damping
from relay.delivery.grouping import GroupSpec
from relay.delivery.lifecycle import Policy
from relay.schema import (
    ADOPT_AFTER_TIMEOUTS,
    DELIVERY,
    MAX_CONCURRENCY,
    RATE_LIMIT_PER_SECOND,
    RECONCILE,
    RECONCILE_ALERT_TYPES,
    RETENTION,
    SYNC,
    TIMEOUT_SECONDS,
    IncidentPer,
)
from relay.store.base import Retention


@dataclass(frozen=True, slots=True)
class Match:
    """Every given key must match; within a key, any of its patterns (case-insensitive, `*` globs)."""

    severity: tuple[str, ...] = ()
    monitoring_service: tuple[str, ...] = ()
    alert_rule: tuple[str, ...] = ()
    signal_type: tuple[str, ...] = ()
    subscription: tuple[str, ...] = ()
    resource_group: tuple[str, ...] = ()
    custom_properties: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def matches(self, alert: Alert) -> bool:
        return self.mismatch(alert) is None

    def mismatch(self, alert: Alert) -> str | None:
        """None when the alert matches; else the first key that does not, and why (for `relay route`)."""
        e = alert.essentials
        checks: list[tuple[str, tuple[str, ...], str | None]] = [
            ("severity", self.severity, e.severity),
            ("monitoring_service", self.monitoring_service, e.monitoring_service),
            ("alert_rule", self.alert_rule, e.alert_rule),
            ("signal_type", self.signal_type, _compact(e.signal_type)),
            ("subscription", self.subscription, subscription_of(alert)),
            ("resource_group", self.resource_group, resource_group_of(alert)),
        ]
        for key, patterns, value in checks:
            if patterns and not _any_match(patterns, value):
                return f"{key}: {_shown(value)} matches none of {', '.join(patterns)}"
        for key, patterns in self.custom_properties.items():
            value = alert.custom_properties.get(key)
            if value is None or not _any_match(patterns, str(value)):
                return f"custom_properties.{key}: {_shown(value)} matches none of {', '.join(patterns)}"
        return None


@dataclass(frozen=True, slots=True)
class Route:
    target: str
    match: Match = field(default_factory=Match)
    policy: Policy = field(default_factory=Policy)
    incident_per: IncidentPer = IncidentPer.ALERT
    fields: Mapping[str, Any] = field(default_factory=dict)  # strings are compiled templates
    summary: Template | None = None
    description: Template | None = None
    continue_: bool = False
    index: int = 0
    group: GroupSpec | None = None  # storm grouping (relay.delivery.grouping); None: every alert on its own
    damping: Damping | None = None  # `flapping:` (issue 15); None: no flap damping
    sync: RouteSync = field(default_factory=lambda: RouteSync())  # `sync:` (issue 16); off by default


@dataclass(frozen=True, slots=True)
class RouteSync:
    """A route's `sync:` (two-way sync, relay.reconcile.sync): what a person's change of one of its tickets
    does to the Azure alert. Both off by default."""

    close_alert: bool = False  # a person resolved or closed the ticket: the alert goes to Closed
    acknowledge_on_progress: bool = False  # a person took the ticket (in progress): a New alert is Acknowledged

    @property
    def enabled(self) -> bool:
        return self.close_alert or self.acknowledge_on_progress


@dataclass(frozen=True, slots=True)
class SyncSettings:
    """The top-level `sync:` section; bounds and defaults are `relay.schema.SYNC`'s."""

    interval_seconds: float = SYNC["interval_seconds"].default


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    """The `delivery:` section; every default and bound is `relay.schema.DELIVERY`'s."""

    max_attempts: int = int(DELIVERY["max_attempts"].default)
    backoff_base_seconds: float = DELIVERY["backoff_base_seconds"].default
    backoff_max_seconds: float = DELIVERY["backoff_max_seconds"].default
    circuit_failures: int = int(DELIVERY["circuit_failures"].default)
    circuit_open_seconds: float = DELIVERY["circuit_open_seconds"].default
    lease_seconds: float = DELIVERY["lease_seconds"].default
    deadline_seconds: float = DELIVERY["deadline_seconds"].default
    max_age_seconds: float = DELIVERY["max_age_seconds"].default
    record_retry_seconds: float = DELIVERY["record_retry_seconds"].default
    shutdown_grace_seconds: float = DELIVERY["shutdown_grace_seconds"].default
    poll_seconds: float = DELIVERY["poll_seconds"].default
    max_configuration_items: int = int(DELIVERY["max_configuration_items"].default)
    # None: derived per target (`adopt_after`); bounds in relay.schema.DELIVERY_DERIVED.
    adopt_after_seconds: float | None = None

    def adopt_after(self, target: TargetConfig) -> float:
        """Seconds a create that got no answer is left to land before it is searched for and adopted."""
        if self.adopt_after_seconds is not None:
            return self.adopt_after_seconds
        return ADOPT_AFTER_TIMEOUTS * target.timeout_seconds


@dataclass(frozen=True, slots=True)
class RetentionSettings:
    """The `retention:` section; every default and bound is `relay.schema.RETENTION`'s."""

    delivered_days: float = RETENTION["delivered_days"].default
    dead_letter_days: float = RETENTION["dead_letter_days"].default
    closed_ticket_days: float = RETENTION["closed_ticket_days"].default
    interval_minutes: float = RETENTION["interval_minutes"].default

    def store_retention(self) -> Retention:
        """The ages as `Store.expire` takes them."""
        day = 86400.0
        return Retention(delivered_seconds=self.delivered_days * day,
                         dead_letter_seconds=self.dead_letter_days * day,
                         ticket_seconds=self.closed_ticket_days * day)


@dataclass(frozen=True, slots=True)
class TargetConfig:
    """What the delivery core reads of a target block; the target module reads `block` itself."""

    name: str
    kind: str
    block: Mapping[str, Any]  # the `targets.<name>` mapping as written
    timeout_seconds: float = TIMEOUT_SECONDS.default
    max_concurrency: int = int(MAX_CONCURRENCY.default)
    rate_limit_per_second: float = RATE_LIMIT_PER_SECOND.default  # 0: no limit (relay.delivery.rate_limit)
    severity: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # overrides the target's severity_fields


@dataclass(frozen=True, slots=True)
class ReconcileSettings:
    """The `reconcile:` section (docs/reconciliation.md); bounds and defaults are `relay.schema.RECONCILE`'s."""

    subscriptions: tuple[str, ...]  # subscription GUIDs, lower case
    rule_ids: tuple[str, ...]  # ARM ids of the alert rules wired to the relay, lower case
    alert_types: tuple[str, ...] = RECONCILE_ALERT_TYPES
    interval_minutes: float = RECONCILE["interval_minutes"].default
    look_back_hours: float = RECONCILE["look_back_hours"].default


@dataclass(frozen=True, slots=True)
class RelayConfig:
    targets: Mapping[str, TargetConfig]
    routes: tuple[Route, ...]
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    reconcile: ReconcileSettings | None = None  # None: no `reconcile:` section, the job does not run
    # `maintenance:` (issue 15): relay.delivery.maintenance.Window objects (that module imports this one).
    maintenance: tuple[Any, ...] = ()
    sync: SyncSettings = field(default_factory=SyncSettings)

    def syncing_targets(self) -> tuple[str, ...]:
        """The targets some route enables two-way sync for, in the order first named."""
        return tuple(dict.fromkeys(r.target for r in self.routes if r.sync.enabled))

    def routes_for(self, alert: Alert) -> list[Route]:
        """Matching routes in order: the first, then more while routes say `continue: true`; one per target."""
        chosen: list[Route] = []
        for route in self.routes:
            if route.match.matches(alert):
                if all(r.target != route.target for r in chosen):
                    chosen.append(route)
                if not route.continue_:
                    break
        return chosen


def default_config() -> RelayConfig:
    """No RELAY_CONFIG: everything to a dry-run target on stdout."""
    return RelayConfig(
        targets={"dry_run": TargetConfig(name="dry_run", kind="dry_run", block={"kind": "dry_run"})},
        routes=(Route(target="dry_run"),),
    )


def _shown(value: Any) -> str:
    return "(absent)" if value is None else repr(str(value))


def _compact(value: str | None) -> str | None:
    return value.replace(" ", "") if value is not None else None


def _any_match(patterns: Iterable[str], value: str | None) -> bool:
    if value is None:
        return False
    v = value.lower()
    return any(fnmatch.fnmatchcase(v, p.lower()) for p in patterns)


