"""The intake's Prometheus metrics, in a registry of the app's own (so tests can build many apps)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class IntakeMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "relay_alert_requests",
            "POST /alerts requests by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self._outcomes: dict[str, Any] = {}
        self.auth_failures = Counter(
            "relay_auth_failures",
            "Refused tokens by reason",
            ["reason"],
            registry=self.registry,
        )
        self.commit_seconds = Histogram(
            "relay_commit_seconds",
            "Time from a parsed alert to its durable commit",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        # target: a target that takes inbound events, or "-" (off or no such target: a caller cannot grow
        # the label set by naming targets).
        self.itsm_events = Counter(
            "relay_itsm_events",
            "POST /itsm-events requests by target and outcome",
            ["target", "outcome"],
            registry=self.registry,
        )
        self.pending = Gauge(
            "relay_pending_deliveries",
            "Events accepted and not yet delivered (read from the store at scrape time)",
            registry=self.registry,
        )

    def outcome(self, name: str) -> Any:
        """`requests.labels(name)`, looked up once per outcome (labels() takes a lock and builds a key on
        every call, on each request's path)."""
        child = self._outcomes.get(name)
        if child is None:
            child = self._outcomes[name] = self.requests.labels(name)
        return child
