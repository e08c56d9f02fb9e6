"""Named leases in the store: time-triggered work with one owner at a time across replicas.

A job that must run on one replica at a time (the noise-control scheduler, reconciliation with Azure,
two-way sync polling) holds the lease named after it. The lease is a record in the store's ticket
records under the reserved target `JOBS_TARGET` (a name RELAY_CONFIG cannot give a target), written with
the record's version check, so of two replicas racing for a free lease exactly one wins, on both
backends. A holder renews it each run; a replica that dies lets it run out, and another takes over one
lease later. `lease_state` is the pure decision, with the time passed in.

    lease = JobLease(store, "reconcile", owner=worker.owner, seconds=60)
    await run_leased(lease, every=300, run=reconcile_once, stopping=stop_event)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from relay.store.base import Store, StoreUnavailable, TicketRecord, VersionConflict

log = logging.getLogger(__name__)

JOBS_TARGET = "relay:jobs"  # target names in RELAY_CONFIG allow only letters, digits, _ and -


def lease_state(data: dict[str, Any] | None, *, owner: str, now: float) -> str:
    """Who may hold a lease whose record reads `data`, at wall-clock `now`: "mine" (this owner holds it
    and it has not run out), "free" (never taken, released, or run out) or "taken" (another owner's)."""
    if not data or not data.get("owner") or float(data.get("until", 0)) <= now:
        return "free"
    return "mine" if data["owner"] == owner else "taken"


@dataclass
class JobLease:
    """One named lease. `acquire` takes or renews it for `seconds`; `release` gives it up."""

    store: Store
    name: str
    owner: str
    seconds: float
    wall_clock: Callable[[], float] = time.time

    async def acquire(self) -> bool:
        """True while this owner holds the lease (now renewed for `seconds`); False when another holds it."""
        now = self.wall_clock()
        record = await self.store.get_ticket(JOBS_TARGET, self.name)
        if lease_state(record.data if record else None, owner=self.owner, now=now) == "taken":
            return False
        data = {**(record.data if record else {}), "owner": self.owner, "until": now + self.seconds}
        try:
            await self.store.put_ticket(TicketRecord(JOBS_TARGET, self.name, data,
                                                     record.version if record else None))
        except VersionConflict:  # another replica took or renewed it between our read and write
            return False
        return True

    async def release(self) -> None:
        """Give the lease up (at shutdown), so another replica need not wait for it to run out."""
        record = await self.store.get_ticket(JOBS_TARGET, self.name)
        if record is None or lease_state(record.data, owner=self.owner, now=self.wall_clock()) != "mine":
            return
        try:
            await self.store.put_ticket(TicketRecord(JOBS_TARGET, self.name, {**record.data, "until": 0},
                                                     record.version))
        except VersionConflict:
            pass

    async def get(self, field: str, default: Any = None) -> Any:
        """A value the job keeps with its lease (e.g. where the last run got to)."""
        record = await self.store.get_ticket(JOBS_TARGET, self.name)
        return record.data.get(field, default) if record else default

    async def put(self, **fields: Any) -> bool:
        """Keep values with the lease, only while this owner holds it; False if it does not."""
        record = await self.store.get_ticket(JOBS_TARGET, self.name)
        if record is None or lease_state(record.data, owner=self.owner, now=self.wall_clock()) != "mine":
            return False
        try:
            await self.store.put_ticket(TicketRecord(JOBS_TARGET, self.name, {**record.data, **fields},
                                                     record.version))
        except VersionConflict:
            return False
        return True


async def run_leased(lease: JobLease, *, every: float, run: Callable[[], Awaitable[Any]],
                     stopping: asyncio.Event, first: float = 0.0) -> None:
    """Run `run()` every `every` seconds on whichever replica holds `lease` (renewed before each run;
    the lease should last longer than `every` plus a run). A failing run is logged and tried again at
    the next beat; the loop ends when `stopping` is set, releasing the lease."""
    delay = first
    try:
        while not stopping.is_set():
            try:
                async with asyncio.timeout(delay):
                    await stopping.wait()
                break
            except TimeoutError:
                pass
            delay = every
            try:
                if not await lease.acquire():
                    continue
                await run()
            except StoreUnavailable as exc:
                log.warning("%s: store unavailable, next try in %.0f s: %s", lease.name, every, exc)
            except Exception:  # the loop must outlive any one failure
                log.exception("%s failed, next try in %.0f s", lease.name, every)
    finally:
        try:
            await asyncio.shield(lease.release())
        except Exception as exc:  # shutting down: the lease runs out by itself
            log.warning("%s: could not release its lease: %s", lease.name, exc)
