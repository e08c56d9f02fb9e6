"""The relay's configuration vocabulary, defined once: names, choices, bounds and defaults.

The relay's RELAY_CONFIG validator (`relay.delivery.config`), its target option readers and the Pulumi
program's stack-config model (`infra.config`) all check against these definitions, so a value the
stack accepts is a value the relay accepts. Standard library only: `infra/` imports this module and
nothing else of the relay (an import-linter contract in pyproject.toml says so), and the relay's
container image never carries the Pulumi SDKs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

# Azure Monitor's alert severities, as the common alert schema spells them.
SEVERITIES = ("Sev0", "Sev1", "Sev2", "Sev3", "Sev4")

GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")

# RELAY_STORE: the URL forms of the store backends (`relay.store.open_store` maps each to its backend;
# the settings check and the stack's RELAY_STORE value use the same forms).
SQLITE_URL_PREFIX = "sqlite://"
AZURE_STORAGE_ACCOUNT_PREFIX = "azure-storage://"  # azure-storage://<account>: managed identity
AZURE_CONNECTION_STRING_PREFIXES = ("DefaultEndpointsProtocol=", "UseDevelopmentStorage=")
AZURE_STORAGE_URL_PREFIXES = (AZURE_STORAGE_ACCOUNT_PREFIX, *AZURE_CONNECTION_STRING_PREFIXES)
STORE_URL_PREFIXES = (SQLITE_URL_PREFIX, *AZURE_STORAGE_URL_PREFIXES)

# The relay's read-only status page, on its admin port (RELAY_METRICS_PORT), never the public one; a page
# per alert and anything else of the page's lie below STATUS_PATH + "/". The status viewer
# (infra/status_viewer.py) proxies exactly these and nothing else of that port.
STATUS_PATH = "/status"

# A target's name: a metric label, a log field and part of the ticket records' keys.
TARGET_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
TARGET_NAME_RULE = "target names use letters, digits, _ and - (at most 64)"



# A route's lifecycle choices (docs/configuration.md); the first member of each is the default.
class OnRepeat(StrEnum):
    """The alert fired again while its incident is open."""

    NOTE = "note"
    NOTHING = "nothing"


class OnRefire(StrEnum):
    """The alert fired again after its incident was resolved."""

    NEW = "new"
    REOPEN = "reopen"
    IGNORE = "ignore"


class OnResolve(StrEnum):
    """The alert resolved."""

    RESOLVE = "resolve"
    NOTE = "note"
    NOTHING = "nothing"


class IncidentPer(StrEnum):
    """One incident per alert, or one per (alert rule, configuration item) as the ITSM connector did."""

    ALERT = "alert"
    CONFIGURATION_ITEM = "configuration_item"


ON_REPEAT = tuple(OnRepeat)
ON_REFIRE = tuple(OnRefire)
ON_RESOLVE = tuple(OnResolve)
INCIDENT_PER = tuple(IncidentPer)


# The keys of a route, and of its `match:`; every match key but custom_properties takes one pattern or a list.
ROUTE_KEYS = ("match", "target", "fields", "on_repeat", "on_refire", "on_resolve", "incident_per", "summary",
              "description", "continue", "group")
ROUTE_KEYS = (*ROUTE_KEYS, "flapping")  # issue 15: flap damping (relay.delivery.flapping)
ROUTE_KEYS = (*ROUTE_KEYS, "sync")  # issue 16: two-way sync (relay.reconcile.sync)
MATCH_KEYS = ("severity", "monitoring_service", "alert_rule", "signal_type", "subscription", "resource_group",
              "custom_properties")
MATCH_LISTS = tuple(k for k in MATCH_KEYS if k != "custom_properties")
# Route keys passed to the relay as written, besides match, target and fields.
ROUTE_OPTIONS = tuple(k for k in ROUTE_KEYS if k not in ("match", "target", "fields"))

# Keys that would hold a secret inline; secrets are only ever named, as `<key>_env: VARIABLE`.
# `value` counts only inside an `auth` block (header auth names its secret with value_env).
INLINE_SECRET_KEYS = ("password", "client_secret", "token", "secret", "api_key", "apikey")


@dataclass(frozen=True, slots=True)
class Bound:
    """An inclusive range of numbers a setting may take, and its default."""

    low: float
    high: float
    default: float
    whole: bool = False  # whole numbers only

    def accepts(self, value: object) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.whole and not isinstance(value, int):
            return False
        return self.low <= value <= self.high

    def describe(self) -> str:
        """What is allowed, for error messages: `a number from 0.1 to 600`."""
        what = "a whole number" if self.whole else "a number"
        return f"{what} from {self.low:g} to {self.high:g}"


# Per target, read by the delivery core: each call's timeout, deliveries at once, and calls per second
# (0: no limit). 32 at once keeps a storm moving (about 320 incidents/s at 50 ms a call, 2 calls each);
# docs/configuration.md says what it costs the target.
TIMEOUT_SECONDS = Bound(0.1, 600, 30.0)
MAX_CONCURRENCY = Bound(1, 256, 32, whole=True)
RATE_LIMIT_PER_SECOND = Bound(0, 10_000, 0.0)

# The `delivery:` section of RELAY_CONFIG: retries, circuit breaker, leases and shutdown.
DELIVERY: dict[str, Bound] = {
    "max_attempts": Bound(1, 1000, 24, whole=True),
    "backoff_base_seconds": Bound(0.001, 86400, 2.0),
    "backoff_max_seconds": Bound(0.001, 86400, 600.0),
    "circuit_failures": Bound(1, 1000, 5, whole=True),
    "circuit_open_seconds": Bound(0.001, 86400, 30.0),
    # A claim's lease, renewed every third of it while its delivery runs: a crashed relay's events
    # go to another worker (or the restarted one) within about one lease.
    "lease_seconds": Bound(0.001, 3600, 30.0),
    # The longest one event's delivery may take over all its routes (the lease is renewed meanwhile).
    "deadline_seconds": Bound(0.001, 86400, 600.0),
    # Events still failing this long after intake accepted them become dead letters (besides max_attempts).
    "max_age_seconds": Bound(1, 30 * 86400, 86400.0),
    # How long recording an outcome (complete, retry, dead letter) is retried before the lease decides.
    "record_retry_seconds": Bound(0, 3600, 30.0),
    # Under Container Apps' default 30 s termination grace period (the stack adds its margin to it).
    "shutdown_grace_seconds": Bound(0.001, 86400, 20.0),
    "poll_seconds": Bound(0.001, 86400, 1.0),
    # Configuration items bound per alert (issue 12: one alert with 3,000 CIs opened 3,000 incidents); the
    # rest are listed in the incident's description.
    "max_configuration_items": Bound(1, 1000, 20, whole=True),
}

# The `retention:` section of RELAY_CONFIG: how long the store keeps what delivery no longer needs
# (`Store.expire`), and how often it looks. Azure Monitor retries a webhook for minutes, so even a day
# of delivered events keeps its retries deduplicated.
RETENTION: dict[str, Bound] = {
    "delivered_days": Bound(1, 3650, 14),
    "dead_letter_days": Bound(1, 3650, 90),
    # At least a day: reconciliation (a later issue) looks back 24 h at tickets that resolved.
    "closed_ticket_days": Bound(1, 3650, 30),
    "interval_minutes": Bound(1, 1440, 60),
}

# The `reconcile:` section of RELAY_CONFIG (docs/reconciliation.md): how often the relay lists its
# subscriptions' alerts from the Alerts Management API and how far back. The look-back may not exceed
# the store's `retention.delivered_days` (the keys it dedups against must still be there).
RECONCILE: dict[str, Bound] = {
    "interval_minutes": Bound(1, 1440, 5),
    "look_back_hours": Bound(1, 720, 24),
}
# Alert types reconciliation can take, as the Alerts Management API's signalType names them; the
# default takes both (only stateful metric and log alerts ever resolve).
RECONCILE_ALERT_TYPES = ("Metric", "Log")
RECONCILE_KEYS = ("subscriptions", "rule_ids", "alert_types", *RECONCILE)

# Two-way sync (docs/reconciliation.md "Two-way sync"): a route's `sync:` says what a person's change of its
# tickets does to the Azure alert (both off by default); the top-level `sync:` how often each syncing
# target is polled for the tickets that changed.
SYNC_ROUTE_KEYS = ("close_alert", "acknowledge_on_progress")
SYNC: dict[str, Bound] = {
    "interval_seconds": Bound(10, 86400, 60),
}
# The custom property a body synthesized by reconciliation carries (a webhook never does: customProperties
# come from the action group, and RELAY_ALLOWED_* decide who may send); rendering marks the ticket text.
RECONCILED_PROPERTY = "relay.reconciled"
RECONCILED_TEXT = ("Reconciled by the relay: this event was read from the Azure Alerts Management API; "
                   "its webhook never reached the relay.")

# `delivery:` settings whose default depends on each target: absent, they are derived per target.
# adopt_after_seconds: how long a create that got no answer may still land before the next attempt
# searches for it and adopts it; absent, ADOPT_AFTER_TIMEOUTS x that target's timeout_seconds (the
# default shown here is that of a target with the default timeout).
ADOPT_AFTER_TIMEOUTS = 6
DELIVERY_DERIVED: dict[str, Bound] = {
    "adopt_after_seconds": Bound(0.001, 86400, ADOPT_AFTER_TIMEOUTS * TIMEOUT_SECONDS.default),
}


# A route's storm grouping (`group:`, docs/lifecycle.md "Storm grouping"): alerts that agree on every `by`
# field and fire in one window of `window_seconds` form a group; past `open_parent_after` of them one
# parent incident opens, and later ones are `children: note` (work notes on the parent, no ticket) or
# `link` (their own incident linked to the parent, at most `max_children` per window, then notes).
class GroupChildren(StrEnum):
    NOTE = "note"
    LINK = "link"


GROUP_CHILDREN = tuple(GroupChildren)
GROUP_KEYS = ("by", "window_seconds", "open_parent_after", "children", "max_children")
# The alert fields a group may be formed by (the route match keys that name one value per alert).
GROUP_BY = ("alert_rule", "resource_group", "subscription", "severity", "monitoring_service", "signal_type")
GROUP_BY_DEFAULT = ("alert_rule",)
GROUP: dict[str, Bound] = {
    "window_seconds": Bound(60, 86400, 900),
    "open_parent_after": Bound(1, 100, 5, whole=True),
    "max_children": Bound(0, 100, 20, whole=True),
}

# Issue 15, noise control. A route's `flapping:` (relay.delivery.flapping): an alert that changes state more
# than `transitions` times within `window_seconds` is flapping; its resolves are then held
# `hold_resolve_seconds` (at most the window). No defaults for the first two: the block states them.
FLAPPING: dict[str, Bound] = {
    "window_seconds": Bound(60, 86400, 3600),
    "transitions": Bound(2, 1000, 4, whole=True),
    "hold_resolve_seconds": Bound(1, 86400, 900),
}

# The top-level `maintenance:` list (relay.delivery.maintenance): each window's keys, its scope's keys
# (the route match keys plus resource-id globs), its schedule's keys and its modes (the first: default).
MAINTENANCE_KEYS = ("name", "scope", "schedule", "mode")
MAINTENANCE_SCOPE_KEYS = (*MATCH_KEYS, "resource_id")
MAINTENANCE_SCHEDULE_KEYS = ("start", "end", "cron", "duration_minutes", "time_zone")


class MaintenanceMode(StrEnum):
    """What a window does with an alert in its scope: record only, or note an existing ticket (no creates)."""

    RECORD = "record"
    NOTE = "note"


MAINTENANCE_MODES = tuple(MaintenanceMode)
# A recurring window's cron expression must fire within this many years of now (check-config).
CRON_HORIZON_YEARS = 5
MAINTENANCE_DURATION_MINUTES = Bound(1, 7 * 24 * 60, 60, whole=True)  # whole minutes: runs start on minutes
