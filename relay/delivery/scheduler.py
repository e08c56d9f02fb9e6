"""The scheduler: time-triggered work (a maintenance window's end, a held resolve's expiry), run by one replica.

Any replica *schedules* (`Scheduler.schedule(kind, at, ident, **payload)`); the replica holding the job
lease `scheduler` (relay.store.leases: JobLease, run_leased) *runs* what is due, each entry by the handler
registered for its kind. Due work is found without scanning: entries live in small records in the
store's job records (`relay.store.leases.JOBS_TARGET`), one per minute of due time and shard
(`due-<minute>-<shard>`), and one index record (`due-index`) lists the minutes that hold any. A run reads
the index and only the minutes that are due. Writes are version-checked, so replicas scheduling at once
never lose an entry, and the index keeps a minute until its records are seen empty after it was dropped
(see `_drop_minute`), so an entry added while a run empties its minute is not stranded.

A handler must be idempotent: an entry is removed only after its handler returned, so a crash in
between runs it again. Noise control's only kind today is `alert` (the worker turns it into a due event
of the alert, `relay.delivery.worker`); storm grouping can register its own kind (e.g. a group window's
end) the same way. Entries are plain JSON: {kind, at (epoch seconds), id, ...payload}.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from relay.store.base import Store, TicketRecord, VersionConflict
from relay.store.leases import JOBS_TARGET, JobLease, run_leased

log = logging.getLogger("relay.delivery.scheduler")

LEASE_NAME = "scheduler"
BUCKET_SECONDS = 60  # entries are kept per minute of due time
SHARDS = 8  # records per minute: a storm scheduling one minute spreads its writes over these
INDEX_KEY = "due-index"
EVERY_SECONDS = 5.0  # how often the lease holder looks for due work (a timer fires at most this late)
LEASE_SECONDS = 30.0  # longer than EVERY_SECONDS plus a run: the holder keeps it while it lives
WRITE_RETRIES = 50  # version conflicts tolerated per write (replicas appending to one minute at once)

Handler = Callable[[Mapping[str, Any]], Awaitable[None]]


# -- pure pieces ------------------------------------------------------------------------------------

def minute_of(at: float) -> int:
    return int(at // BUCKET_SECONDS)


def shard_of(kind: str, ident: str) -> int:
    return int(hashlib.sha256(f"{kind}|{ident}".encode()).hexdigest()[:8], 16) % SHARDS


def due_key(minute: int, shard: int) -> str:
    return f"due-{minute}-{shard}"


def entry_id(entry: Mapping[str, Any]) -> str:
    """One entry per kind, id and time: the same timer scheduled twice is kept once (the latest payload)."""
    return f"{entry['kind']}|{entry['id']}|{float(entry['at']):.3f}"


def with_entry(entries: Sequence[Mapping[str, Any]], entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    ident = entry_id(entry)
    return [*(dict(e) for e in entries if entry_id(e) != ident), dict(entry)]


def split_due(entries: Iterable[Mapping[str, Any]], now: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(due now, later), the due ones oldest first."""
    due, later = [], []
    for e in entries:
        (due if float(e["at"]) <= now else later).append(dict(e))
    return sorted(due, key=lambda e: float(e["at"])), later


def due_minutes(index: Iterable[int], now: float) -> list[int]:
    return sorted(m for m in index if m <= minute_of(now))


# -- the shell ---------------------------------------------------------------------------------------

class Scheduler:
    def __init__(self, store: Store, *, owner: str, wall_clock: Callable[[], float] = time.time,
                 every: float = EVERY_SECONDS, lease_seconds: float = LEASE_SECONDS) -> None:
        self.store = store
        self.owner = owner
        self.wall_clock = wall_clock
        self.every = every
        self.lease_seconds = lease_seconds
        self.handlers: dict[str, Handler] = {}

    def register(self, kind: str, handler: Handler) -> None:
        """The handler that runs entries of `kind` when they are due (idempotent: it may run twice)."""
        if kind in self.handlers:
            raise ValueError(f"a scheduler handler for {kind!r} is registered already")
        self.handlers[kind] = handler

    async def schedule(self, kind: str, at: float, ident: str, **payload: Any) -> None:
        """Keep an entry due at `at` (epoch seconds); raises StoreUnavailable when the store cannot keep it
        (the caller then records nothing, and its event is tried again)."""
        entry = {**payload, "kind": kind, "at": float(at), "id": ident}
        minute = minute_of(at)
        key = due_key(minute, shard_of(kind, ident))
        await self._update(key, lambda data: {"entries": with_entry(data.get("entries") or (), entry)})
        # After the entry: a run that drops the minute from the index re-reads its records (see _drop_minute).
        await self._update(INDEX_KEY, lambda data: {"minutes": sorted({*data.get("minutes", ()), minute})}
                           if minute not in data.get("minutes", ()) else None)

    async def pending(self) -> list[dict[str, Any]]:
        """Every entry not yet run (for `relay maintenance list`, tests and audits)."""
        out: list[dict[str, Any]] = []
        for minute in await self._minutes():
            for shard in range(SHARDS):
                record = await self.store.get_ticket(JOBS_TARGET, due_key(minute, shard))
                out.extend(record.data.get("entries") or () if record else ())
        return sorted(out, key=lambda e: float(e["at"]))

    async def run_due(self) -> int:
        """Run every entry due now; returns how many ran. Entries of a kind with no handler stay."""
        now = self.wall_clock()
        ran = 0
        for minute in due_minutes(await self._minutes(), now):
            left = 0
            for shard in range(SHARDS):
                ran_here, kept = await self._run_record(due_key(minute, shard), now)
                ran += ran_here
                left += kept
            if left == 0:
                await self._drop_minute(minute)
        return ran

    async def run(self, stopping: asyncio.Event) -> None:
        """Run due work every `every` seconds while this replica holds the scheduler's lease."""
        lease = JobLease(self.store, LEASE_NAME, owner=self.owner, seconds=self.lease_seconds,
                         wall_clock=self.wall_clock)
        await run_leased(lease, every=self.every, run=self.run_due, stopping=stopping, first=self.every)

    async def _run_record(self, key: str, now: float) -> tuple[int, int]:
        record = await self.store.get_ticket(JOBS_TARGET, key)
        if record is None:
            return 0, 0
        due, _later = split_due(record.data.get("entries") or (), now)
        done: set[str] = set()
        for entry in due:
            handler = self.handlers.get(str(entry["kind"]))
            if handler is None:
                continue
            try:
                await handler(entry)
            except Exception:  # the others still run; this one stays for the next run
                log.exception("scheduled %s %s failed; trying again at the next run", entry["kind"], entry["id"])
                continue
            done.add(entry_id(entry))
        if done:
            await self._update(key, lambda data: {"entries": [e for e in data.get("entries") or ()
                                                              if entry_id(e) not in done]})
        record = await self.store.get_ticket(JOBS_TARGET, key)
        return len(done), len(record.data.get("entries") or ()) if record else 0

    async def _drop_minute(self, minute: int) -> None:
        """Drop an emptied minute from the index, then look at its records again: an entry scheduled
        meanwhile (its writer saw the minute still indexed) puts the minute back."""
        await self._update(INDEX_KEY, lambda data: {"minutes": [m for m in data.get("minutes", ()) if m != minute]})
        for shard in range(SHARDS):
            record = await self.store.get_ticket(JOBS_TARGET, due_key(minute, shard))
            if record is not None and record.data.get("entries"):
                await self._update(INDEX_KEY, lambda data: {"minutes": sorted({*data.get("minutes", ()), minute})})
                return

    async def _minutes(self) -> list[int]:
        record = await self.store.get_ticket(JOBS_TARGET, INDEX_KEY)
        return [int(m) for m in record.data.get("minutes", ())] if record else []

    async def _update(self, key: str, change: Callable[[dict[str, Any]], dict[str, Any] | None]) -> None:
        """Read-change-write one job record under its version; `change` returning None writes nothing."""
        for _ in range(WRITE_RETRIES):
            record = await self.store.get_ticket(JOBS_TARGET, key)
            data = dict(record.data) if record else {}
            new = change(data)
            if new is None:
                return
            merged = {**data, **new}
            # An emptied minute's record counts as closed, so retention removes it a while later.
            closed = self.wall_clock() if merged.get("entries") == [] else None
            try:
                await self.store.put_ticket(TicketRecord(JOBS_TARGET, key, merged,
                                                         record.version if record else None, closed))
                return
            except VersionConflict:
                await asyncio.sleep(0)
        raise VersionConflict(f"job record {key} kept changing ({WRITE_RETRIES} tries)")
