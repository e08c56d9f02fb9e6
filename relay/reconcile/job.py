"""The reconciliation job: list the configured subscriptions' alerts, store the events the relay missed.

One pass (`Reconciler.run_once`) lists each subscription's alerts over the look-back window through the
real Alerts Management client (`azure-mgmt-alertsmanagement`, Alerts - Get All with customTimeRange and
nextLink paging, at most `max_pages` pages per subscription), keeps those of the wired rules
(`plan.skip_reason`) and `accept`s each synthesized Fired / Resolved event into the store, exactly as
intake does: a key the store already holds is a duplicate and changes nothing. 429 and 5xx answers are
retried by the client's retry policy (Retry-After honoured, else exponential backoff); a pass that still
fails is logged, counted and tried again at the next beat. `run_leased` keeps it to one replica.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter

from relay.delivery.routing import ReconcileSettings
from relay.reconcile.plan import ListedAlert, listed_alert, skip_reason, synthesized, window
from relay.store.base import Store

log = logging.getLogger("relay.reconcile")

JOB_NAME = "reconcile"  # the lease's name (relay/store/leases.py)
PAGE_SIZE = 250  # alerts per page asked of the API (pageCount)
MAX_PAGES = 200  # pages per subscription and pass: 50,000 alerts; past it the pass says it stopped short
# The client's retry policy on 429 and 5xx: Retry-After when the answer has one, else 2, 4, 8... s, capped.
RETRY_TOTAL = 5
RETRY_BACKOFF_FACTOR = 2.0
RETRY_BACKOFF_MAX = 60.0


class AlertsClient(Protocol):
    """What the job uses of `azure.mgmt.alertsmanagement.aio.AlertsManagementClient`."""

    alerts: Any

    async def close(self) -> None: ...


def client_options() -> dict[str, Any]:
    """Keyword arguments for the SDK client: the retry policy above."""
    # retry_status too: azure-core retries status answers (429, 5xx) only 3 times unless told.
    return {"retry_total": RETRY_TOTAL, "retry_status": RETRY_TOTAL, "retry_backoff_factor": RETRY_BACKOFF_FACTOR,
            "retry_backoff_max": RETRY_BACKOFF_MAX}


def azure_client_factory(credential: Any, **options: Any) -> Callable[[str], AlertsClient]:
    """Clients of the real SDK, one per subscription (the relay's managed identity: DefaultAzureCredential)."""
    from azure.mgmt.alertsmanagement.aio import AlertsManagementClient

    def make(subscription: str) -> AlertsClient:
        return AlertsManagementClient(credential, subscription, **{**client_options(), **options})

    return make


class SubscriptionClients:
    """One Alerts Management client per subscription, made on first use and closed together
    (reconciliation and two-way sync each keep one set)."""

    def __init__(self, client_for: Callable[[str], AlertsClient]) -> None:
        self._client_for = client_for
        self._clients: dict[str, AlertsClient] = {}

    def __call__(self, subscription: str) -> AlertsClient:
        if subscription not in self._clients:
            self._clients[subscription] = self._client_for(subscription)
        return self._clients[subscription]

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()


@dataclass
class PassResult:
    listed: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    accepted: dict[str, int] = field(default_factory=lambda: {"Fired": 0, "Resolved": 0})
    duplicates: int = 0
    malformed: int = 0
    truncated: list[str] = field(default_factory=list)  # subscriptions whose listing hit max_pages

    def as_dict(self) -> dict[str, Any]:
        return {"listed": self.listed, "skipped": dict(self.skipped), "accepted": dict(self.accepted),
                "duplicates": self.duplicates, "malformed": self.malformed, "truncated": list(self.truncated)}


class Reconciler:
    def __init__(self, store: Store, settings: ReconcileSettings, client_for: Callable[[str], AlertsClient], *,
                 registry: CollectorRegistry | None = None, on_accept: Iterable[Callable[[], Any]] = (),
                 wall_clock: Callable[[], float] = time.time, max_pages: int = MAX_PAGES,
                 page_size: int = PAGE_SIZE) -> None:
        self.store = store
        self.settings = settings
        self._client = SubscriptionClients(client_for)
        self.on_accept = on_accept
        self.wall_clock = wall_clock
        self.max_pages = max_pages
        self.page_size = page_size
        self.reconciled = Counter("relay_reconciled_events_total",
                                  "Events reconciliation synthesized and the store took (the webhook never came)",
                                  ["condition"], registry=registry)
        for condition in ("Fired", "Resolved"):
            self.reconciled.labels(condition)
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.last_pass: PassResult | None = None
        # Per subscription, where a listing that hit max_pages stopped (the last startDateTime it read):
        # the next pass starts there instead of at the look-back's start. Kept in memory: a replica that
        # takes the lease over starts from the whole look-back again (duplicates, nothing lost).
        self.resume_from: dict[str, str] = {}

    def status(self) -> dict[str, Any]:
        """For /readyz details: when the last pass succeeded (UTC), the last failure, what it did."""
        def at(t: float | None) -> str | None:
            return None if t is None else datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"last_success": at(self.last_success), "last_error": self.last_error,
                "last_pass": self.last_pass.as_dict() if self.last_pass else None}

    async def close(self) -> None:
        await self._client.close()

    async def run_once(self) -> PassResult:
        """One pass over every configured subscription; raises when a listing fails (after retries)."""
        result = PassResult()
        now = datetime.fromtimestamp(self.wall_clock(), UTC)
        try:
            for subscription in self.settings.subscriptions:
                span = window(now, self.settings, self.resume_from.get(subscription))
                async for alert in self._listed(subscription, span, result):
                    reason = skip_reason(alert, self.settings)
                    if reason:
                        result.skipped[reason] = result.skipped.get(reason, 0) + 1
                        continue
                    await self._accept(alert, result)
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {str(exc)[:300]}"
            raise
        self.last_success = self.wall_clock()
        self.last_error = None
        self.last_pass = result
        new = sum(result.accepted.values())
        log_at = log.info if new or result.truncated or result.malformed else log.debug
        log_at("reconciliation: %d alerts listed, %d Fired and %d Resolved events stored, %d already held",
               result.listed, result.accepted["Fired"], result.accepted["Resolved"], result.duplicates)
        return result

    async def _listed(self, subscription: str, span: str, result: PassResult):  # type: ignore[no-untyped-def]
        pager = self._client(subscription).alerts.get_all(
            custom_time_range=span, include_context=False, page_count=self.page_size,
            sort_by="startDateTime", sort_order="asc")
        pages = 0
        last_started: str | None = None
        async for page in pager.by_page():
            pages += 1
            async for item in page:
                result.listed += 1
                try:
                    alert = _from_sdk(item)
                except (ValueError, AttributeError) as exc:
                    result.malformed += 1
                    log.warning("reconciliation skipped an alert it cannot read: %s", exc)
                    continue
                last_started = alert.started_at
                yield alert
            if pages >= self.max_pages:
                result.truncated.append(subscription)
                if last_started:
                    self.resume_from[subscription] = last_started
                log.warning("reconciliation stopped listing subscription %s after %d pages (%d alerts a page); "
                            "the rest waits for the next pass", subscription, pages, self.page_size)
                return
        self.resume_from.pop(subscription, None)  # listed to the end: the next pass takes the whole look-back

    async def _accept(self, alert: ListedAlert, result: PassResult) -> None:
        for event in synthesized(alert):
            if await self.store.accept(event):
                result.accepted[event.condition] += 1
                self.reconciled.labels(event.condition).inc()
                log.info("reconciled %s %s (its webhook never arrived)", event.condition, alert.alert_id)
                for wake in self.on_accept:
                    wake()
            else:
                result.duplicates += 1


def _from_sdk(item: Any) -> ListedAlert:
    """A ListedAlert from the SDK's Alert model (its essentials serialized back to the REST names)."""
    props = getattr(item, "properties", None)
    essentials = getattr(props, "essentials", None)
    if essentials is None:
        raise ValueError(f"alert {getattr(item, 'id', '?')}: properties.essentials is missing")
    return listed_alert(item.id, getattr(item, "name", None), essentials.serialize(keep_readonly=True))

