"""The Azure Storage backend of the store: what lets several relay replicas share one state.

Layout (names are the constants below; the Pulumi program creates the same ones):

- Table `relaystate`, one partition per alert (`a` + sha256 of the lower-cased alert id):
  - `alert`: the alert's `next_seq` counter.
  - `e-<idempotency key>`: the event (dedup marker, metadata, inline body or blob name) and its
    `state`: pending, done or dead.
  - `q-<seq, 16 digits>`: one row per event waiting for delivery, holding its lease
    (`lease_until`, `receipt`, `token`), back-off (`available_at`), attempts and last error.
  Partition `deadletters` lists dead letters (`RowKey` = event key); ticket records live in
  partitions `t` + sha256(target, key), row `ticket`, their ETag being `TicketRecord.version`.
- Queue `relay-events`: wake-up tokens naming an alert partition. Queue `relay-events-poison`
  receives tokens that cannot be parsed.
- Container `relay-payloads`: bodies over INLINE_BODY_LIMIT, named `<key>/<sha256 of body>`.

Deduplication: `accept` writes the e-row, the q-row and the alert row's counter in one entity
group transaction. Creating an e-row that exists fails the transaction (409): the key was seen.

Ordering across replicas: the Storage queue does not order, so the queue only says "alert X may
have work"; the order and the one-lease-per-alert rule live in the table. Sequence numbers come
from the alert row's counter, updated under its ETag, so q-rows sort in commit order and a new
q-row never sorts before an existing one. Only an alert's first q-row (its head) can be leased,
by an ETag-guarded update; the head is deleted only by the claim holding its lease (complete or
dead letter). Two replicas racing for one head: one ETag wins. So at most one event per alert is
leased, and each alert's events are leased oldest first, whichever replica holds which token. A
replayed dead letter takes a new sequence number: it goes to the back of its alert's queue.

Tokens: every accept sends one; a receiver leases the head of the named alert, or, when the head
is leased or backing off, re-arms its token for when the head is due if it is the head's own
token (`q.token`), and otherwise deletes it as redundant. Completing a claim hands the token to
the alert's next event (or deletes it when none is left). The visibility timeout is the lease's
safety net: a replica that dies holding a claim leaves its token to reappear when the lease ends.

Crash window: the transaction commits before the token is sent. A process that dies in between
never answered Azure, which retries: the retry finds the e-row still pending and sends a token
again (a token per duplicate of a pending event is harmless). Without a retry, the event goes out
with the next event of its alert, whose token wakes the whole partition, or at the latest when a
replica's sweep (at its first claim, then every 5 minutes) finds the alert's head due and untouched.

Poison: a claim's `attempts` counts its earlier leases, including leases that ran out because the
worker crashed or hung on it, like a queue's dequeue count; the worker dead-letters past its limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import random
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import TableEntity, TableTransactionError, UpdateMode
from azure.data.tables.aio import TableClient
from azure.storage.blob.aio import ContainerClient
from azure.storage.queue.aio import QueueClient

from relay.schema import AZURE_STORAGE_ACCOUNT_PREFIX
from relay.store.base import Claim, DeadLetter, Event, StoreUnavailable, TicketRecord, VersionConflict

log = logging.getLogger(__name__)

QUEUE = "relay-events"
POISON_QUEUE = "relay-events-poison"
TABLE = "relaystate"
CONTAINER = "relay-payloads"

# A Table binary property holds at most 64 KiB; bodies above this go to a blob (common-schema
# payloads reach 256 KB). Most alerts are a few KB and stay inline.
INLINE_BODY_LIMIT = 32 * 1024
# Azure Monitor waits about 10 s for an answer; fail well before so it gets a 503 and retries.
OPERATION_TIMEOUT_SECONDS = 8.0
# Storage allows 7 days of visibility; a token re-armed for later than that just wakes up early.
MAX_VISIBILITY_SECONDS = 7 * 24 * 3600
# Concurrent accepts of one alert each re-read its counter after losing the ETag race.
ACCEPT_TRIES = 16
DEAD_PARTITION = "deadletters"
# Each replica looks for alerts whose next event is due but untouched (a lost wake-up) this often.
SWEEP_EVERY_SECONDS = 300.0
STRANDED_AFTER_SECONDS = 300.0
_ACCOUNT = re.compile(r"^[a-z0-9]{3,24}$")
_TOKEN = re.compile(r"^a[0-9a-f]{64}$")
# Transaction failures that mean "someone else wrote first": re-read and decide again.
_CONFLICTS = ("EntityAlreadyExists", "UpdateConditionNotSatisfied", "ResourceNotFound")


@dataclass(frozen=True, slots=True)
class StorageNames:
    """The queue, table and container one relay uses; tests give each store its own."""

    queue: str = QUEUE
    poison_queue: str = POISON_QUEUE
    table: str = TABLE
    container: str = CONTAINER


def alert_partition(alert_id: str) -> str:
    # ARM ids hold '/', which keys may not; ids are case-insensitive, like the idempotency key.
    return "a" + hashlib.sha256(alert_id.lower().encode()).hexdigest()


def ticket_partition(target: str, key: str) -> str:
    return "t" + hashlib.sha256(f"{target}\x00{key}".encode()).hexdigest()


def _queue_row(seq: int) -> str:
    return f"q-{seq:016d}"


_QUEUE_ROWS = "PartitionKey eq @pk and RowKey ge 'q-' and RowKey lt 'q.'"


class AzureStorageStore:
    def __init__(self, *, connection_string: str | None = None, account: str | None = None,
                 names: StorageNames = StorageNames(),
                 operation_timeout: float = OPERATION_TIMEOUT_SECONDS) -> None:
        if (connection_string is None) == (account is None):
            raise ValueError("give either an Azure Storage connection string or an account name")
        if account is not None and not _ACCOUNT.match(account):
            raise ValueError(f"malformed storage account name {account!r}: 3-24 lowercase letters and digits")
        self._connection_string = connection_string
        self.account = account or _account_of(connection_string or "")
        self.names = names
        self.operation_timeout = operation_timeout
        self._credential: Any = None
        self._table: TableClient | None = None
        self._queue: QueueClient | None = None
        self._poison: QueueClient | None = None
        self._container: ContainerClient | None = None
        self._next_sweep = 0.0  # monotonic; the first claim sweeps, so a restart recovers strays
        self._sweeper: asyncio.Task[int] | None = None

    @classmethod
    def from_url(cls, url: str) -> AzureStorageStore:
        """`azure-storage://<account>` (managed identity) or a connection string (Azurite, keys)."""
        if url.startswith(AZURE_STORAGE_ACCOUNT_PREFIX):
            return cls(account=url.removeprefix(AZURE_STORAGE_ACCOUNT_PREFIX).strip("/"))
        return cls(connection_string=url)

    def __repr__(self) -> str:  # never the connection string: it may hold an account key
        return f"AzureStorageStore(account={self.account!r}, table={self.names.table!r})"

    # -- lifecycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        # Fail fast: the SDK defaults retry for minutes, and intake must answer within seconds.
        table_opts: dict[str, Any] = dict(retry_total=2, retry_backoff_factor=0.5, retry_backoff_max=2,
                                          connection_timeout=5, read_timeout=10)
        # Each async queue/blob client builds its own ExponentialRetry from these: ~0.5 s, then ~2 s.
        storage_opts: dict[str, Any] = dict(initial_backoff=0.5, increment_base=1.5, random_jitter_range=0.5,
                                            retry_total=2, connection_timeout=5, read_timeout=10)
        n = self.names
        if self._connection_string is not None:
            cs = self._connection_string
            self._table = TableClient.from_connection_string(cs, n.table, **table_opts)
            self._queue = QueueClient.from_connection_string(cs, n.queue, **storage_opts)
            self._poison = QueueClient.from_connection_string(cs, n.poison_queue, **storage_opts)
            self._container = ContainerClient.from_connection_string(cs, n.container, **storage_opts)
        else:
            from azure.identity.aio import DefaultAzureCredential

            self._credential = cred = DefaultAzureCredential()
            base = f"{self.account}.{{}}.core.windows.net"
            table_url, queue_url, blob_url = (f"https://{base.format(s)}" for s in ("table", "queue", "blob"))
            self._table = TableClient(table_url, n.table, credential=cred, **table_opts)
            self._queue = QueueClient(queue_url, n.queue, credential=cred, **storage_opts)
            self._poison = QueueClient(queue_url, n.poison_queue, credential=cred, **storage_opts)
            self._container = ContainerClient(blob_url, n.container, credential=cred, **storage_opts)
        async with self._storage("create the queues, table and container"):
            await asyncio.gather(
                _ensure(self._table.create_table()),
                _ensure(self._queue.create_queue()),
                _ensure(self._poison.create_queue()),
                _ensure(self._container.create_container()),
            )

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(BaseException):
                await self._sweeper
            self._sweeper = None
        for client in (self._table, self._queue, self._poison, self._container, self._credential):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.close()
        self._table = self._queue = self._poison = self._container = self._credential = None

    @contextlib.asynccontextmanager
    async def _storage(self, doing: str) -> AsyncIterator[None]:
        """Every way of not reaching storage becomes StoreUnavailable, within the operation timeout."""
        if self._table is None:
            raise StoreUnavailable(f"azure storage: cannot {doing}: store is not open")
        try:
            async with asyncio.timeout(self.operation_timeout):
                yield
        except (AzureError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"azure storage ({self.account}): cannot {doing}: {_brief(exc)}") from exc

    @property
    def _t(self) -> TableClient:
        assert self._table is not None
        return self._table

    @property
    def _q(self) -> QueueClient:
        assert self._queue is not None
        return self._queue

    # -- intake ----------------------------------------------------------------------------------

    async def accept(self, event: Event) -> bool:
        async with self._storage("record the alert"):
            return await self._accept(event)

    async def _accept(self, event: Event) -> bool:
        pk = alert_partition(event.alert_id)
        erow = "e-" + event.key
        entity: dict[str, Any] = {
            "PartitionKey": pk, "RowKey": erow, "key": event.key, "alert_id": event.alert_id,
            "condition": event.condition, "occurred_at": event.occurred_at, "received_at": time.time(),
            "state": "pending",
        }
        blob_name = None
        if len(event.body) > INLINE_BODY_LIMIT:
            existing = await self._get(pk, erow)
            if existing is not None:  # don't upload a duplicate's payload
                await self._on_duplicate(pk, existing)
                return False
            blob_name = f"{event.key}/{hashlib.sha256(event.body).hexdigest()}"
            assert self._container is not None
            await self._container.upload_blob(blob_name, event.body, overwrite=True)
            entity["body_blob"] = blob_name
        else:
            entity["body"] = event.body
        alert: TableEntity | None = None  # most events are their alert's first: try creating its row
        for attempt in range(ACCEPT_TRIES):
            seq = int(alert["next_seq"]) if alert is not None else 0
            counter: dict[str, Any] = {"PartitionKey": pk, "RowKey": "alert", "next_seq": seq + 1}
            ops: list[Any] = [
                ("create", {**entity, "seq": seq}),
                ("create", _new_queue_row(pk, seq, event.key)),
                ("create", {**counter, "alert_id": event.alert_id}) if alert is None else
                ("update", counter, {"mode": UpdateMode.MERGE, "etag": alert.metadata["etag"],
                                     "match_condition": MatchConditions.IfNotModified}),
            ]
            try:
                await self._t.submit_transaction(ops)
            except TableTransactionError as exc:
                if _code(exc) not in _CONFLICTS:
                    raise
                existing = await self._get(pk, erow) if exc.index in (0, None) else None
                if existing is not None:
                    if blob_name is not None and existing.get("body_blob") != blob_name:
                        with contextlib.suppress(AzureError):
                            await self._container.delete_blob(blob_name)  # type: ignore[union-attr]
                    await self._on_duplicate(pk, existing)
                    return False
                await _after_lost_race(attempt)
                alert = await self._get(pk, "alert")  # another event of this alert won the counter
                continue
            await self._send_token(pk)
            return True
        raise StoreUnavailable(f"azure storage ({self.account}): too many concurrent writes to one alert")

    async def _on_duplicate(self, pk: str, existing: TableEntity) -> None:
        # A first attempt may have died between its transaction and its token: wake the alert again.
        if existing.get("state") == "pending":
            await self._send_token(pk)

    async def ping(self) -> None:
        async with self._storage("reach the table, queue and container"):
            await asyncio.gather(self._get(DEAD_PARTITION, "ping"), self._q.get_queue_properties(),
                                 self._container.get_container_properties())  # type: ignore[union-attr]

    async def pending(self) -> int:
        # A scan over the q-rows of every partition: fine for a gauge, not for a hot path.
        async with self._storage("count pending events"):
            rows = self._t.query_entities("RowKey ge 'q-' and RowKey lt 'q.'", select=["PartitionKey"])
            return sum([1 async for _ in rows])

    async def events(self) -> list[Event]:
        """Every event ever accepted, in acceptance order per replica clock (for tests and audits)."""
        async with self._storage("list events"):
            rows = [e async for e in self._t.query_entities("RowKey ge 'e-' and RowKey lt 'e.'")]
            rows.sort(key=lambda e: (e["received_at"], e["PartitionKey"], e["seq"]))
            return list(await asyncio.gather(*(self._event(e) for e in rows)))

    # -- delivery --------------------------------------------------------------------------------

    async def claim(self, limit: int, lease_seconds: float) -> list[Claim]:
        if time.monotonic() >= self._next_sweep and (self._sweeper is None or self._sweeper.done()):
            self._next_sweep = time.monotonic() + SWEEP_EVERY_SECONDS
            self._sweeper = asyncio.create_task(self._sweep_in_background(), name="azure-store-sweep")
        async with self._storage("claim events"):
            claims: list[Claim] = []
            # Redundant tokens are deleted as they come; look behind them a couple of times.
            for _ in range(3):
                want = limit - len(claims)
                if want <= 0:
                    break
                visibility = min(MAX_VISIBILITY_SECONDS, math.ceil(lease_seconds) + 1)
                try:
                    messages = [m async for m in self._q.receive_messages(
                        max_messages=want, messages_per_page=min(32, want), visibility_timeout=visibility)]
                except AzureError:
                    if claims:  # leases already taken: hand them out rather than let them expire
                        break
                    raise
                if not messages:
                    break
                by_alert: dict[str, list[Any]] = {}
                for m in messages:
                    by_alert.setdefault(m.content, []).append(m)
                results = await asyncio.gather(
                    *(self._claim_alert(content, msgs, lease_seconds) for content, msgs in by_alert.items()),
                    return_exceptions=True,
                )
                failures = [r for r in results if isinstance(r, BaseException)]
                for r in results:
                    if isinstance(r, list):
                        claims.extend(r)
                if failures and not claims:
                    raise failures[0]
                for f in failures:
                    log.warning("claim: one alert's tokens failed, its lease will expire: %s", _brief(f))
                if len(messages) < want:
                    break
            return claims

    async def _claim_alert(self, content: str, messages: list[Any], lease_seconds: float) -> list[Claim]:
        """Handle one alert's tokens in turn: the first may lease the head, the others see it leased."""
        if not _TOKEN.match(content):
            for m in messages:
                await self._to_poison(m, "not an alert token")
            return []
        claims = []
        for m in messages:
            claim = await self._claim_head(content, m, lease_seconds)
            if claim is not None:
                claims.append(claim)
        return claims

    async def _claim_head(self, pk: str, message: Any, lease_seconds: float) -> Claim | None:
        head = await self._head(pk)
        if head is None:
            await self._delete_token(message.id, message.pop_receipt)
            return None
        now = time.time()
        leased = bool(head.get("receipt")) and float(head["lease_until"]) > now
        due_at = float(head["lease_until"]) if leased else float(head["available_at"])
        if due_at > now:
            if head.get("token") == message.id:  # the head's own token: wake up when it is due
                await self._rearm(message.id, message.pop_receipt, due_at - now)
            else:  # the head's token will wake the alert; this one is redundant
                await self._delete_token(message.id, message.pop_receipt)
            return None
        receipt = uuid.uuid4().hex
        attempts = int(head["attempts"])
        leased_row = {**head, "attempts": attempts + 1, "lease_until": now + lease_seconds,
                      "receipt": receipt, "token": message.id}
        lease = self._t.update_entity(leased_row, mode=UpdateMode.REPLACE, etag=head.metadata["etag"],
                                      match_condition=MatchConditions.IfNotModified)
        # Read the event while the lease is being written: one round trip less per delivery.
        meta, erow = await asyncio.gather(lease, self._get(pk, "e-" + head["key"]), return_exceptions=True)
        if isinstance(meta, (ResourceModifiedError, ResourceNotFoundError)):
            # Another replica changed the head first; let this token be looked at again.
            await self._rearm(message.id, message.pop_receipt, 0)
            return None
        for result in (meta, erow):
            if isinstance(result, BaseException):
                raise result
        if erow is None:
            log.error("alert %s: queued event %s has no event row; leaving its lease to expire",
                      pk, head["key"])
            return None
        event = await self._event(erow)  # type: ignore[arg-type]
        # The lease's ETag proves the claim: whoever takes the event over changes it.
        handle = json.dumps({"p": pk, "s": int(head["seq"]), "e": meta["etag"],  # type: ignore[index]
                             "m": message.id, "r": message.pop_receipt})
        return Claim(event=event, receipt=receipt, attempts=attempts, handle=handle,
                     received_at=float(erow.get("received_at", 0.0)))  # type: ignore[union-attr]

    async def sweep(self, stranded_after: float = STRANDED_AFTER_SECONDS) -> int:
        """Wake the alerts whose next event has been due for `stranded_after` seconds yet untouched:
        their wake-up was lost (accept died before its queue send and Azure did not retry). A live
        wake-up would have leased them long before. Returns how many alerts were woken."""
        async with self._storage("look for stranded events"):
            now = time.time()
            heads: dict[str, TableEntity] = {}
            async for row in self._t.query_entities("RowKey ge 'q-' and RowKey lt 'q.'"):
                heads.setdefault(row["PartitionKey"], row)  # rows come in key order: the first is the head
            woken = 0
            for pk, head in heads.items():
                due_since = max(float(head["available_at"]), float(head["lease_until"]),
                                head.metadata["timestamp"].timestamp())
                if due_since <= now - stranded_after:
                    await self._send_token(pk)
                    woken += 1
            if woken:
                log.warning("woke %d alerts whose next event was due but had no wake-up in the queue", woken)
            return woken

    async def _sweep_in_background(self) -> int:
        try:
            return await self.sweep()
        except StoreUnavailable as exc:
            log.warning("sweep for stranded events failed, trying again later: %s", exc)
            return 0

    async def complete(self, claim: Claim) -> None:
        async with self._storage("complete a delivery"):
            await self._finish(claim, "done")

    async def retry_later(self, claim: Claim, delay_seconds: float, error: str, *,
                          count_attempt: bool = True) -> None:
        async with self._storage("schedule a retry"):
            h = json.loads(claim.handle)
            delay = max(0.0, delay_seconds)
            waiting = {"PartitionKey": h["p"], "RowKey": _queue_row(h["s"]),
                       "available_at": time.time() + delay, "lease_until": 0.0, "receipt": "",
                       "token": h["m"], "last_error": error[:2000]}
            if not count_attempt:  # the claim counted an attempt that never reached the target
                waiting["attempts"] = claim.attempts
            try:
                await self._t.update_entity(waiting, mode=UpdateMode.MERGE, etag=h["e"],
                                            match_condition=MatchConditions.IfNotModified)
            except (ResourceModifiedError, ResourceNotFoundError):
                return  # the lease ran out and another replica took the event
            if not await self._rearm(h["m"], h["r"], delay):
                # Someone else holds the token now: add one that wakes up on time.
                await self._send_token(h["p"], delay)

    async def dead_letter(self, claim: Claim, error: str) -> None:
        async with self._storage("dead-letter an event"):
            h = json.loads(claim.handle)
            row = await self._get(h["p"], _queue_row(h["s"]))
            if row is None or row.metadata["etag"] != h["e"]:
                return  # the lease ran out and another replica took the event
            # Index first: an event marked dead must always be listed. A crash between the two
            # writes leaves an index row for a pending event, which listings skip.
            index = {"PartitionKey": DEAD_PARTITION, "RowKey": claim.event.key, "alert_partition": h["p"],
                     "attempts": claim.attempts + 1, "error": error[:4000], "dead_at": time.time()}
            await self._t.upsert_entity(index, mode=UpdateMode.REPLACE)
            if not await self._finish(claim, "dead"):
                with contextlib.suppress(ResourceNotFoundError):
                    await self._t.delete_entity(DEAD_PARTITION, claim.event.key)

    async def _finish(self, claim: Claim, state: str) -> bool:
        """Remove a held event from its alert's queue and hand the token to the next event."""
        h = json.loads(claim.handle)
        try:
            await self._t.submit_transaction([
                ("delete", {"PartitionKey": h["p"], "RowKey": _queue_row(h["s"])},
                 {"etag": h["e"], "match_condition": MatchConditions.IfNotModified}),
                ("update", {"PartitionKey": h["p"], "RowKey": "e-" + claim.event.key, "state": state,
                            "finished_at": time.time()}, {"mode": UpdateMode.MERGE}),
            ])
        except TableTransactionError as exc:
            if _code(exc) not in _CONFLICTS:
                raise
            return False  # the lease ran out and another replica took the event
        if await self._head(h["p"]) is not None:
            if not await self._rearm(h["m"], h["r"], 0):
                await self._send_token(h["p"])
        else:
            await self._delete_token(h["m"], h["r"])
        return True

    async def dead_letters(self) -> list[DeadLetter]:
        async with self._storage("list dead letters"):
            listed = await self._dead_index()
            return [dl for dl, _ in listed]

    async def _dead_index(self) -> list[tuple[DeadLetter, TableEntity]]:
        """Dead letters whose event is dead; stale index rows of finished events are dropped."""
        query = self._t.query_entities("PartitionKey eq @p", parameters={"p": DEAD_PARTITION})
        rows = [r async for r in query]
        erows = await asyncio.gather(*(self._get(r["alert_partition"], "e-" + r["RowKey"]) for r in rows))
        listed = []
        for row, erow in zip(rows, erows, strict=True):
            state = erow.get("state") if erow is not None else None
            if state == "dead":
                event = await self._event(erow)  # type: ignore[arg-type]
                listed.append((DeadLetter(id=row["RowKey"], event=event, attempts=int(row["attempts"]),
                                          error=row["error"], dead_at=float(row["dead_at"])), erow))
            elif state != "pending":  # pending: maybe being dead-lettered right now; leave it
                with contextlib.suppress(ResourceNotFoundError):
                    await self._t.delete_entity(DEAD_PARTITION, row["RowKey"])
        listed.sort(key=lambda x: (x[0].dead_at, x[0].id))
        return listed  # type: ignore[return-value]

    async def replay(self, ids: list[str] | None) -> int:
        async with self._storage("replay dead letters"):
            listed = {dl.id: (dl, erow) for dl, erow in await self._dead_index()}
            chosen = list(listed) if ids is None else list(ids)
            for i in chosen:
                if i not in listed:
                    raise KeyError(f"no dead letter with id {i!r}")
            for i in chosen:
                _, erow = listed[i]
                await self._requeue(erow)
                with contextlib.suppress(ResourceNotFoundError):
                    await self._t.delete_entity(DEAD_PARTITION, i)
            return len(chosen)

    async def _requeue(self, erow: TableEntity) -> None:
        pk = erow["PartitionKey"]
        for attempt in range(ACCEPT_TRIES):
            alert = await self._get(pk, "alert")
            if alert is None:
                raise StoreUnavailable(f"azure storage ({self.account}): alert row of {pk} is missing")
            seq = int(alert["next_seq"])
            try:
                await self._t.submit_transaction([
                    ("update", {"PartitionKey": pk, "RowKey": "alert", "next_seq": seq + 1},
                     {"mode": UpdateMode.MERGE, "etag": alert.metadata["etag"],
                      "match_condition": MatchConditions.IfNotModified}),
                    ("create", _new_queue_row(pk, seq, erow["key"])),
                    ("update", {"PartitionKey": pk, "RowKey": erow["RowKey"], "state": "pending", "seq": seq},
                     {"mode": UpdateMode.MERGE, "etag": erow.metadata["etag"],
                      "match_condition": MatchConditions.IfNotModified}),
                ])
            except TableTransactionError as exc:
                if _code(exc) not in _CONFLICTS:
                    raise
                if exc.index == 2:  # replayed concurrently by someone else
                    return
                await _after_lost_race(attempt)
                continue
            await self._send_token(pk)
            return
        raise StoreUnavailable(f"azure storage ({self.account}): too many concurrent writes to one alert")

    # -- ticket records ----------------------------------------------------------------------------

    async def get_ticket(self, target: str, key: str) -> TicketRecord | None:
        async with self._storage("read a ticket record"):
            row = await self._get(ticket_partition(target, key), "ticket")
            if row is None:
                return None
            return TicketRecord(target=target, key=key, data=json.loads(row["data"]),
                                version=row.metadata["etag"])

    async def put_ticket(self, record: TicketRecord) -> TicketRecord:
        async with self._storage("write a ticket record"):
            entity = {"PartitionKey": ticket_partition(record.target, record.key), "RowKey": "ticket",
                      "target": record.target, "key": record.key,
                      "data": json.dumps(record.data, sort_keys=True)}
            try:
                if record.version is None:
                    meta = await self._t.create_entity(entity)
                else:
                    meta = await self._t.update_entity(entity, mode=UpdateMode.REPLACE, etag=record.version,
                                                       match_condition=MatchConditions.IfNotModified)
            except (ResourceExistsError, ResourceModifiedError, ResourceNotFoundError) as exc:
                raise VersionConflict(
                    f"ticket record {record.target}/{record.key} changed since it was read"
                ) from exc
            return TicketRecord(record.target, record.key, record.data, meta["etag"])

    # -- pieces ------------------------------------------------------------------------------------

    async def _get(self, pk: str, rk: str) -> TableEntity | None:
        try:
            return await self._t.get_entity(pk, rk)
        except ResourceNotFoundError:
            return None

    async def _head(self, pk: str) -> TableEntity | None:
        async for row in self._t.query_entities(_QUEUE_ROWS, parameters={"pk": pk}, results_per_page=1):
            return row
        return None

    async def _event(self, erow: TableEntity) -> Event:
        if erow.get("body_blob"):
            assert self._container is not None
            body = await (await self._container.download_blob(erow["body_blob"])).readall()
        else:
            body = erow.get("body") or b""
        return Event(key=erow["key"], alert_id=erow["alert_id"], condition=erow["condition"],
                     occurred_at=erow["occurred_at"], body=bytes(body))

    async def _send_token(self, pk: str, delay: float = 0) -> None:
        visibility = min(MAX_VISIBILITY_SECONDS, math.ceil(delay)) or None
        # -1: tokens never expire; the default 7-day TTL would strand an alert that waits longer.
        await self._q.send_message(pk, visibility_timeout=visibility, time_to_live=-1)

    async def _rearm(self, message_id: str, pop_receipt: str, seconds: float) -> bool:
        """Make a held token visible again after `seconds`; False if another receiver holds it now."""
        try:
            await self._q.update_message(message_id, pop_receipt,
                                         visibility_timeout=min(MAX_VISIBILITY_SECONDS, math.ceil(seconds)))
            return True
        except (ResourceNotFoundError, HttpResponseError) as exc:
            if _lost_token(exc):
                return False
            raise

    async def _delete_token(self, message_id: str, pop_receipt: str) -> None:
        try:
            await self._q.delete_message(message_id, pop_receipt)
        except (ResourceNotFoundError, HttpResponseError) as exc:
            if not _lost_token(exc):
                raise

    async def _to_poison(self, message: Any, reason: str) -> None:
        log.error("queue %s: moving message %s to %s: %s",
                  self.names.queue, message.id, self.names.poison_queue, reason)
        assert self._poison is not None
        await self._poison.send_message(message.content, time_to_live=-1)
        await self._delete_token(message.id, message.pop_receipt)


async def _after_lost_race(attempt: int) -> None:
    # Full jitter, so that writers of one hot alert stop colliding in lockstep.
    await asyncio.sleep(random.uniform(0, min(0.25, 0.005 * 2**attempt)))


def _new_queue_row(pk: str, seq: int, key: str) -> dict[str, Any]:
    return {"PartitionKey": pk, "RowKey": _queue_row(seq), "seq": seq, "key": key, "attempts": 0,
            "available_at": 0.0, "lease_until": 0.0, "receipt": "", "token": "", "last_error": ""}


def _lost_token(exc: Exception) -> bool:
    """404 or a pop-receipt mismatch: the token was re-received (or deleted) by someone else."""
    if isinstance(exc, ResourceNotFoundError):
        return True
    return _code(exc) in ("PopReceiptMismatch", "MessageNotFound")


def _code(exc: Exception) -> str:
    code = getattr(exc, "error_code", None)
    return str(getattr(code, "value", code) or "")


async def _ensure(create: Any) -> None:
    try:
        await create
    except ResourceExistsError:
        pass
    except HttpResponseError as exc:
        if exc.status_code != 403:
            raise
        # An identity with data roles only may not create; the infrastructure created them.
        log.info("azure storage: not allowed to create a resource, assuming it exists: %s", _brief(exc))


def _account_of(connection_string: str) -> str:
    if "UseDevelopmentStorage=true" in connection_string:
        return "devstoreaccount1"
    for part in connection_string.split(";"):
        name, _, value = part.partition("=")
        if name.strip() == "AccountName":
            return value.strip()
    return "unknown"


def _brief(exc: BaseException) -> str:
    """One line naming the failure; SDK messages are long and never carry keys, only URLs."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300]
