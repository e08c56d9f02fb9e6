"""The delivery worker's Prometheus metrics, registered on the registry the app scrapes (the intake's)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class DeliveryMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.deliveries = Counter(
            "relay_deliveries",
            "Deliveries by target and outcome: create, new, adopt, note, resolve, reopen, record, nothing,"
            " forward, retry, circuit_open, dead_letter; parent_* and link for storm grouping",
            ["target", "outcome"],
            registry=self.registry,
        )
        self.dead_letters = Counter(
            "relay_dead_letters",
            "Events moved to dead letters, by reason: non_retryable, attempts_exhausted, unparseable",
            ["reason"],
            registry=self.registry,
        )
        self.orphan_events = Counter(
            "relay_orphan_events",
            "Events of a ticket key the store held no record of (a lost or replaced store, or a Resolved whose"
            " Fired it never had), other than an ordinary first Fired, by target and the action taken: resolve,"
            " adopt, new, reopen, note, record",
            ["target", "outcome"],
            registry=self.registry,
        )
        self.unrouted = Counter(
            "relay_unrouted_alerts",
            "Alerts that matched no route (completed without delivery)",
            registry=self.registry,
        )
        self.circuit_state = Gauge(
            "relay_circuit_state",
            "Circuit breaker per target: 0 closed, 1 open, 2 half-open",
            ["target"],
            registry=self.registry,
        )
        self.call_seconds = Histogram(
            "relay_target_call_seconds",
            "Duration of calls to targets, by target and call",
            ["target", "call"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "relay_deliveries_in_flight",
            "Claimed events being delivered now",
            registry=self.registry,
        )
