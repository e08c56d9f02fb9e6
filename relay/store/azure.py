"""The Azure Storage backend of the store: what lets several relay replicas share one state.

Layout (names are the constants below; the Pulumi program creates the same ones):

- Table `relaystate`, one partition per alert (`a` + sha256 of the lower-cased alert id):
  - `alert`: the alert's `next_seq` counter.
  - `e-<idempotency key>`: the event (dedup marker, metadata, inline body or blob name, and with tracing
    on intake's W3C `trace_context`) and its `state`: pending, done or dead.
  - `q-<seq, 16 digits>`: one row per event waiting for delivery, holding its lease
    (`lease_until`, `receipt`, `token`), back-off (`available_at`), attempts and last error, and a
    copy of the event (so that a claim reads one row, not two).
  - `r-<idempotency key>-<time, 20 digits>`: one row per recorded delivery attempt of the event (the
    alert trail: its outcome, decisions and target calls), written in the same entity batch as the
    outcome, which also marks the e-row `has_trail`; retention deletes them before their e-row.
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

Leases are short and renewed: `renew` extends `lease_until` under the q-row's ETag and pushes the
token's visibility out as far. Each write changes that ETag and the token's pop receipt, while the
worker keeps the Claim it was handed; so the store keeps each held claim's current ETag and pop
receipt (`_Lease`, keyed by the claim's receipt) and settles with them. An ETag that no longer
matches is re-read: the same receipt means a write of ours lost its answer; another receipt, or
no row, means the lease is lost (LeaseLost for renew; nothing done for complete, retry or dead
letter). A dead replica stops renewing, so its tokens come back one lease after its last renewal.

Retention (`expire`): bounded, resumable scans for finished e-rows and closed ticket rows; every
delete is ETag-guarded or tolerates "already gone", so replicas may run it at once.

Costs: `operations` counts every storage request by service and operation (docs/storage.md has
the counts per event and what each step needs).

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
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

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
from relay.store.base import (
    TRAIL_DETAIL_LIMIT,
    Attempt,
    Claim,
    DeadLetter,
    Event,
    EventTrail,
    Expired,
    LeaseLost,
    Retention,
    StoreNotFound,
    StoreUnavailable,
    TicketRecord,
    TrailEntry,
    VersionConflict,
    check_trail_query,
    tickets_of,
    trail_from_json,
    trail_json,
)

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
SETUP_RETRY_SECONDS = 5.0  # storage unreachable at start: how often `open` tries again, in the background
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
# Finished events past their age, whatever their partition: one scan of the table, page by page.
# (The SDK substitutes a parameter only where spaces surround it.)
_EXPIRED_EVENTS = ("RowKey ge 'e-' and RowKey lt 'e.' and ((state eq 'done' and finished_at lt @done )"
                   " or (state eq 'dead' and finished_at lt @dead ))")
_EXPIRED_TICKETS = "RowKey eq 'ticket' and closed_at lt @closed"
# One expire pass reads at most this many pages of each query (a page is one storage operation and
# holds at most 1,000 rows); the next pass goes on where this one stopped.
EXPIRE_PAGES_PER_PASS = 10
EXPIRE_PAGE_ROWS = 1000
EXPIRE_CONCURRENCY = 16
# An e-row's state as the trail names it.
_TRAIL_STATE = {"pending": "pending", "done": "delivered", "dead": "dead"}
_EVENT_KEY = re.compile(r"^[0-9a-f]{64}$")
_EVENT_ROWS_SINCE = "RowKey ge 'e-' and RowKey lt 'e.' and received_at ge @since"
# A settled or abandoned claim's lease state is forgotten this long after its lease ended.
FORGET_LEASES_AFTER_SECONDS = 3600.0


@dataclass(slots=True)
class _Lease:
    """What proves a claim now: the q-row's ETag and the token's pop receipt change on every write
    (claim, renew), while the worker keeps the Claim it was handed. Keyed by the claim's receipt."""

    etag: str
    pop_receipt: str
    lease_until: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class OperationCounter:
    """Counts the storage operations a store sends, by service and operation, as the account bills
    them: a request hook runs after the SDK's retry policy, so a retried request counts each time."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.trace: list[tuple[str, str, str]] | None = None  # (service, operation, URL) while a list

    def hook(self, service: str) -> Callable[[Any], None]:
        def count(request: Any) -> None:
            http = request.http_request
            operation = operation_name(service, http.method, http.url)
            self.counts[(service, operation)] += 1
            if self.trace is not None:
                self.trace.append((service, operation, http.url))
        return count

    def total(self) -> int:
        return sum(self.counts.values())

    def snapshot(self) -> Counter[tuple[str, str]]:
        return Counter(self.counts)


def operation_name(service: str, method: str, url: str) -> str:
    """The storage operation a request is, from its method and URL (the REST API's names)."""
    parts = urlsplit(url)
    path, query = parts.path, parts.query
    if service == "table":
        if path.endswith("/$batch"):
            return "entity group transaction"
        if path.rstrip("/").endswith("/Tables") or "/Tables(" in path:
            return {"POST": "create table", "DELETE": "delete table"}.get(method, "query tables")
        if "(" in path.rsplit("/", 1)[-1] and "PartitionKey=" in path:
            return {"GET": "get entity", "DELETE": "delete entity", "PUT": "update entity",
                    "MERGE": "merge entity", "PATCH": "merge entity"}.get(method, method)
        return "insert entity" if method == "POST" else "query entities"
    if service == "queue":
        if "/messages" in path:
            if method == "POST":
                return "put message"
            if method == "GET":
                return "peek messages" if "peekonly=true" in query else "get messages"
            if method == "PUT":
                return "update message"
            if method == "DELETE":
                return "delete message" if "popreceipt=" in query else "clear messages"
        if "comp=metadata" in query:
            return "get queue metadata"
        return {"PUT": "create queue", "DELETE": "delete queue"}.get(method, method)
    if "restype=container" in query:
        return {"PUT": "create container", "DELETE": "delete container"}.get(method, "get container properties")
    return {"PUT": "put blob", "GET": "get blob", "DELETE": "delete blob", "HEAD": "get blob properties"}.get(
        method, method)


class AzureStorageStore:
    def __init__(self, *, connection_string: str | None = None, account: str | None = None,
                 names: StorageNames = StorageNames(),
                 operation_timeout: float = OPERATION_TIMEOUT_SECONDS, create: bool = True) -> None:
        """create: make the queues, table and container at `open` when missing (`relay serve`). False for
        an operating command: `open` only looks for them, and raises StoreNotFound when one is missing."""
        if (connection_string is None) == (account is None):
            raise ValueError("give either an Azure Storage connection string or an account name")
        if account is not None and not _ACCOUNT.match(account):
            raise ValueError(f"malformed storage account name {account!r}: 3-24 lowercase letters and digits")
        self._connection_string = connection_string
        self.account = account or _account_of(connection_string or "")
        self.names = names
        self.operation_timeout = operation_timeout
        self.create = create
        self._credential: Any = None
        self._table: TableClient | None = None
        self._queue: QueueClient | None = None
        self._poison: QueueClient | None = None
        self._container: ContainerClient | None = None
        self._next_sweep = 0.0  # monotonic; the first claim sweeps, so a restart recovers strays
        self._sweeper: asyncio.Task[int] | None = None
        self._ready = False  # the queues, table and container are known to exist
        self._setup: asyncio.Task[None] | None = None
        self._leases: dict[str, _Lease] = {}  # by claim receipt: the claims this replica holds
        self._expire_from: dict[str, Any] = {}  # by query: where the last expire pass stopped
        self.operations = OperationCounter()

    @classmethod
    def from_url(cls, url: str, *, create: bool = True) -> AzureStorageStore:
        """`azure-storage://<account>` (managed identity) or a connection string (Azurite, keys)."""
        if url.startswith(AZURE_STORAGE_ACCOUNT_PREFIX):
            return cls(account=url.removeprefix(AZURE_STORAGE_ACCOUNT_PREFIX).strip("/"), create=create)
        return cls(connection_string=url, create=create)

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
        count = self.operations.hook
        if self._connection_string is not None:
            cs = self._connection_string
            self._table = TableClient.from_connection_string(cs, n.table, raw_request_hook=count("table"),
                                                             **table_opts)
            self._queue = QueueClient.from_connection_string(cs, n.queue, raw_request_hook=count("queue"),
                                                             **storage_opts)
            self._poison = QueueClient.from_connection_string(cs, n.poison_queue,
                                                              raw_request_hook=count("queue"), **storage_opts)
            self._container = ContainerClient.from_connection_string(cs, n.container,
                                                                     raw_request_hook=count("blob"), **storage_opts)
        else:
            from azure.identity.aio import DefaultAzureCredential

            self._credential = cred = DefaultAzureCredential()
            base = f"{self.account}.{{}}.core.windows.net"
            table_url, queue_url, blob_url = (f"https://{base.format(s)}" for s in ("table", "queue", "blob"))
            self._table = TableClient(table_url, n.table, credential=cred, raw_request_hook=count("table"),
                                      **table_opts)
            self._queue = QueueClient(queue_url, n.queue, credential=cred, raw_request_hook=count("queue"),
                                      **storage_opts)
            self._poison = QueueClient(queue_url, n.poison_queue, credential=cred,
                                       raw_request_hook=count("queue"), **storage_opts)
            self._container = ContainerClient(blob_url, n.container, credential=cred,
                                              raw_request_hook=count("blob"), **storage_opts)
        if not self.create:
            await self._find()  # an operating command: unreachable or missing storage is its answer
            return
        try:
            await self._set_up()
        except StoreUnavailable as exc:
            # Start anyway: /readyz reports not ready (ping fails) and intake answers 503, which Azure
            # retries, while this keeps trying; a relay that exits here is restarted into the same outage.
            log.warning("%s; serving with /readyz failing, trying again every %gs", exc, SETUP_RETRY_SECONDS)
            self._setup = asyncio.create_task(self._set_up_eventually(), name="azure-store-setup")

    async def _set_up(self) -> None:
        async with self._storage("create the queues, table and container"):
            await asyncio.gather(
                _ensure(self._t.create_table()),
                _ensure(self._q.create_queue()),
                _ensure(self._poison.create_queue()),  # type: ignore[union-attr]
                _ensure(self._container.create_container()),  # type: ignore[union-attr]
            )
        self._ready = True

    async def _find(self) -> None:
        """Check that the queues, table and container exist, creating nothing (one read each)."""

        async def missing(kind: str, name: str, look: Any) -> str | None:
            try:
                await look
            except ResourceNotFoundError:
                return f"{kind} {name!r}"
            return None

        async def first_row() -> None:
            async for _ in self._t.list_entities(results_per_page=1, select=["RowKey"]):
                break

        n = self.names
        async with self._storage("look for the queues, table and container"):
            found = await asyncio.gather(
                missing("table", n.table, first_row()),
                missing("queue", n.queue, self._q.get_queue_properties()),
                missing("queue", n.poison_queue, self._poison.get_queue_properties()),  # type: ignore[union-attr]
                missing("container", n.container,
                        self._container.get_container_properties()),  # type: ignore[union-attr]
            )
        absent = [what for what in found if what is not None]
        if absent:
            raise StoreNotFound(
                f"no relay store in storage account {self.account} (from --store or RELAY_STORE): "
                f"{', '.join(absent)} not found; nothing was created; name the relay's store")
        self._ready = True

    async def _set_up_eventually(self) -> None:
        while not self._ready:
            await asyncio.sleep(SETUP_RETRY_SECONDS)
            try:
                await self._set_up()
            except StoreUnavailable as exc:
                log.warning("%s; trying again in %gs", exc, SETUP_RETRY_SECONDS)
        log.info("azure storage (%s) reachable: queues, table and container ready", self.account)

    async def close(self) -> None:
        if self._setup is not None:
            self._setup.cancel()
            with contextlib.suppress(BaseException):
                await self._setup
            self._setup = None
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
        if event.trace_context:  # intake's span (tracing on): a property of the same entities, no operation more
            entity["trace_context"] = event.trace_context
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
        # A Fired is most often its alert's first event: try creating the alert row (one operation
        # saved). Anything else follows a Fired, so read the counter first (one failed transaction saved).
        alert: TableEntity | None = None if event.condition == "Fired" else await self._get(pk, "alert")
        for attempt in range(ACCEPT_TRIES):
            seq = int(alert["next_seq"]) if alert is not None else 0
            counter: dict[str, Any] = {"PartitionKey": pk, "RowKey": "alert", "next_seq": seq + 1}
            ops: list[Any] = [
                ("create", {**entity, "seq": seq}),
                ("create", _new_queue_row(pk, seq, entity)),
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
        if not self._ready:
            raise StoreUnavailable(f"azure storage ({self.account}): not set up yet (unreachable at start)")
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
        self._forget_old_leases(time.time())
        async with self._storage("claim events"):
            claims: list[Claim] = []
            # Redundant tokens are deleted as they come; look behind them a couple of times.
            for _ in range(3):
                want = limit - len(claims)
                if want <= 0:
                    break
                visibility = min(MAX_VISIBILITY_SECONDS, math.ceil(lease_seconds) + 1)
                page_size = min(32, want)  # a Get Messages call returns at most 32
                try:
                    messages = await self._receive(page_size, visibility)
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
                if len(messages) < page_size:
                    break
            return claims

    async def _receive(self, count: int, visibility: int) -> list[Any]:
        """One Get Messages call. (Iterating the SDK's pager whole costs a second, empty call
        whenever a page holds some messages but fewer than asked for: nearly every busy claim.)"""
        pages = self._q.receive_messages(messages_per_page=count, visibility_timeout=visibility).by_page()
        async for page in pages:
            return [m async for m in page]
        return []

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
        head, has_next = await self._head_and_next(pk)
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
        lease_until = now + lease_seconds
        leased_row = {"PartitionKey": pk, "RowKey": head["RowKey"], "attempts": attempts + 1,
                      "lease_until": lease_until, "receipt": receipt, "token": message.id}
        try:
            meta = await self._t.update_entity(leased_row, mode=UpdateMode.MERGE, etag=head.metadata["etag"],
                                               match_condition=MatchConditions.IfNotModified)
        except (ResourceModifiedError, ResourceNotFoundError):
            # Another replica changed the head first; let this token be looked at again.
            await self._rearm(message.id, message.pop_receipt, 0)
            return None
        if head.get("alert_id") is not None:  # the q-row carries the event (since it was accepted)
            source: TableEntity | None = head
        else:  # a q-row written before q-rows carried their event
            source = await self._get(pk, "e-" + head["key"])
            if source is None:
                log.error("alert %s: queued event %s has no event row; leaving its lease to expire",
                          pk, head["key"])
                return None
        event = await self._event(source)  # type: ignore[arg-type]
        self._leases[receipt] = _Lease(etag=meta["etag"], pop_receipt=message.pop_receipt,
                                       lease_until=lease_until)
        # The lease's ETag proves the claim: whoever takes the event over changes it. `x`: the alert
        # had a next event already, so completing hands the token over without looking.
        handle = json.dumps({"p": pk, "s": int(head["seq"]), "e": meta["etag"], "m": message.id,
                             "r": message.pop_receipt, "x": has_next})
        return Claim(event=event, receipt=receipt, attempts=attempts, handle=handle,
                     received_at=float(source.get("received_at", 0.0)))  # type: ignore[union-attr]

    async def sweep(self, stranded_after: float = STRANDED_AFTER_SECONDS) -> int:
        """Wake the alerts whose next event has been due for `stranded_after` seconds yet untouched:
        their wake-up was lost (accept died before its queue send and Azure did not retry). A live
        wake-up would have leased them long before. Returns how many alerts were woken."""
        async with self._storage("look for stranded events"):
            now = time.time()
            heads: dict[str, TableEntity] = {}
            # Only the columns it needs: q-rows carry their event's body.
            rows = self._t.query_entities("RowKey ge 'q-' and RowKey lt 'q.'", results_per_page=1000,
                                          select=["PartitionKey", "RowKey", "available_at", "lease_until",
                                                  "queued_at"])
            async for row in rows:
                heads.setdefault(row["PartitionKey"], row)  # rows come in key order: the first is the head
            woken = 0
            for pk, head in heads.items():
                queued_at = head.get("queued_at")
                if queued_at is None:  # a q-row written before q-rows had `queued_at`
                    full = await self._get(pk, head["RowKey"])
                    if full is None:
                        continue
                    queued_at = full.metadata["timestamp"].timestamp()
                due_since = max(float(head["available_at"]), float(head["lease_until"]), float(queued_at))
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

    def _lease(self, claim: Claim) -> _Lease:
        """This replica's current proof of the claim (from its handle if this replica never held it)."""
        lease = self._leases.get(claim.receipt)
        if lease is None:
            h = json.loads(claim.handle)
            lease = self._leases[claim.receipt] = _Lease(etag=h["e"], pop_receipt=h["r"], lease_until=0.0)
        return lease

    def _forget_old_leases(self, now: float) -> None:
        for receipt in [r for r, le in self._leases.items() if le.lease_until < now - FORGET_LEASES_AFTER_SECONDS]:
            del self._leases[receipt]

    async def _still_held(self, claim: Claim, lease: _Lease) -> bool:
        """After an ETag mismatch: True (and the fresh ETag) if the q-row is still under this claim's
        receipt, as when a write of ours went through but its answer was lost."""
        h = json.loads(claim.handle)
        row = await self._get(h["p"], _queue_row(h["s"]))
        if row is None or row.get("receipt") != claim.receipt:
            return False
        lease.etag = row.metadata["etag"]
        return True

    async def renew(self, claim: Claim, lease_seconds: float) -> None:
        async with self._storage("renew a lease"):
            lease = self._lease(claim)
            async with lease.lock:
                await self._renew(claim, lease, lease_seconds)

    async def _renew(self, claim: Claim, lease: _Lease, lease_seconds: float) -> None:
        h = json.loads(claim.handle)
        lease_until = time.time() + lease_seconds
        row = {"PartitionKey": h["p"], "RowKey": _queue_row(h["s"]), "lease_until": lease_until}
        for _ in range(2):
            try:
                meta = await self._t.update_entity(row, mode=UpdateMode.MERGE, etag=lease.etag,
                                                   match_condition=MatchConditions.IfNotModified)
                break
            except (ResourceModifiedError, ResourceNotFoundError):
                if not await self._still_held(claim, lease):
                    self._leases.pop(claim.receipt, None)
                    raise LeaseLost(f"event {claim.event.key[:12]}: its lease was taken over or settled") from None
        else:
            raise StoreUnavailable(f"azure storage ({self.account}): a lease changed twice while renewing it")
        lease.etag, lease.lease_until = meta["etag"], lease_until
        # The token's visibility is the lease's safety net: push it out with the lease. A token
        # already received again by another replica (it saw the lease and re-armed it) needs nothing.
        try:
            token = await self._q.update_message(
                h["m"], lease.pop_receipt, visibility_timeout=min(MAX_VISIBILITY_SECONDS, math.ceil(lease_seconds) + 1))
        except (ResourceNotFoundError, HttpResponseError) as exc:
            if not _lost_token(exc):
                raise
        else:
            lease.pop_receipt = token.pop_receipt

    async def complete(self, claim: Claim) -> None:
        async with self._storage("complete a delivery"):
            lease = self._lease(claim)
            async with lease.lock:
                try:
                    await self._finish(claim, lease, "done")
                finally:
                    self._leases.pop(claim.receipt, None)

    async def retry_later(self, claim: Claim, delay_seconds: float, error: str, *,
                          count_attempt: bool = True) -> None:
        async with self._storage("schedule a retry"):
            lease = self._lease(claim)
            async with lease.lock:
                try:
                    await self._retry_later(claim, lease, delay_seconds, error, count_attempt)
                finally:
                    self._leases.pop(claim.receipt, None)

    async def _retry_later(self, claim: Claim, lease: _Lease, delay_seconds: float, error: str,
                           count_attempt: bool) -> None:
        h = json.loads(claim.handle)
        delay = max(0.0, delay_seconds)
        waiting = {"PartitionKey": h["p"], "RowKey": _queue_row(h["s"]),
                   "available_at": time.time() + delay, "lease_until": 0.0, "receipt": "",
                   "token": h["m"], "last_error": error[:2000]}
        if not count_attempt:  # the claim counted an attempt that never reached the target
            waiting["attempts"] = claim.attempts
        trail = _trail_row(h["p"], claim, "retry", error)
        for _ in range(2):
            try:
                if trail is None:
                    await self._t.update_entity(waiting, mode=UpdateMode.MERGE, etag=lease.etag,
                                                match_condition=MatchConditions.IfNotModified)
                else:  # the attempt's trail rides in the same request (one entity batch)
                    await self._t.submit_transaction([
                        ("update", waiting, {"mode": UpdateMode.MERGE, "etag": lease.etag,
                                             "match_condition": MatchConditions.IfNotModified}),
                        ("upsert", trail, {"mode": UpdateMode.REPLACE}),
                        ("update", {"PartitionKey": h["p"], "RowKey": "e-" + claim.event.key, "has_trail": True},
                         {"mode": UpdateMode.MERGE}),
                    ])
                break
            except (ResourceModifiedError, ResourceNotFoundError, TableTransactionError) as exc:
                if isinstance(exc, TableTransactionError) and _code(exc) not in _CONFLICTS:
                    raise
                if not await self._still_held(claim, lease):
                    return  # the lease ran out and another replica took the event
        else:
            return
        if not await self._rearm(h["m"], lease.pop_receipt, delay):
            # Someone else holds the token now: add one that wakes up on time.
            await self._send_token(h["p"], delay)

    async def dead_letter(self, claim: Claim, error: str) -> None:
        async with self._storage("dead-letter an event"):
            lease = self._lease(claim)
            async with lease.lock:
                try:
                    await self._dead_letter(claim, lease, error)
                finally:
                    self._leases.pop(claim.receipt, None)

    async def _dead_letter(self, claim: Claim, lease: _Lease, error: str) -> None:
        h = json.loads(claim.handle)
        row = await self._get(h["p"], _queue_row(h["s"]))
        if row is None or row.get("receipt") != claim.receipt:
            return  # the lease ran out and another replica took the event
        lease.etag = row.metadata["etag"]
        # Index first: an event marked dead must always be listed. A crash between the two
        # writes leaves an index row for a pending event, which listings skip.
        index = {"PartitionKey": DEAD_PARTITION, "RowKey": claim.event.key, "alert_partition": h["p"],
                 "attempts": claim.attempts + 1, "error": error[:4000], "dead_at": time.time()}
        await self._t.upsert_entity(index, mode=UpdateMode.REPLACE)
        if not await self._finish(claim, lease, "dead", error):
            with contextlib.suppress(ResourceNotFoundError):
                await self._t.delete_entity(DEAD_PARTITION, claim.event.key)

    async def _finish(self, claim: Claim, lease: _Lease, state: str, error: str = "") -> bool:
        """Remove a held event from its alert's queue and hand the token to the next event."""
        h = json.loads(claim.handle)
        trail = _trail_row(h["p"], claim, "delivered" if state == "done" else "dead_letter", error)
        for _ in range(2):
            try:
                await self._t.submit_transaction([
                    ("delete", {"PartitionKey": h["p"], "RowKey": _queue_row(h["s"])},
                     {"etag": lease.etag, "match_condition": MatchConditions.IfNotModified}),
                    ("update", {"PartitionKey": h["p"], "RowKey": "e-" + claim.event.key, "state": state,
                                "finished_at": time.time(), **({"has_trail": True} if trail else {})},
                     {"mode": UpdateMode.MERGE}),
                    # The attempt's trail, in the same entity batch (no request of its own).
                    *([("upsert", trail, {"mode": UpdateMode.REPLACE})] if trail is not None else []),
                ])
                break
            except TableTransactionError as exc:
                if _code(exc) not in _CONFLICTS:
                    raise
                if not await self._still_held(claim, lease):
                    return False  # the lease ran out and another replica took the event
        else:
            return False
        # A next event seen at claim time is still queued (only a lease holder deletes a q-row, and
        # this claim held the alert's only lease): hand the token over without looking.
        if h.get("x") or await self._head(h["p"]) is not None:
            if not await self._rearm(h["m"], lease.pop_receipt, 0):
                await self._send_token(h["p"])
        else:
            await self._delete_token(h["m"], lease.pop_receipt)
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
                    ("create", _new_queue_row(pk, seq, erow)),
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

    # -- retention ---------------------------------------------------------------------------------

    async def expire(self, now: float, retention: Retention) -> Expired:
        """One bounded pass: at most EXPIRE_PAGES_PER_PASS pages of each of two scans (finished
        events, closed tickets), resumed by the next pass where this one stopped. Every delete is
        ETag-guarded or tolerates "already gone", so replicas running passes at once only repeat work."""
        done_cut, dead_cut = now - retention.delivered_seconds, now - retention.dead_letter_seconds
        events = dead = blobs = tickets = 0
        touched: set[str] = set()
        async for rows in self._expire_pages("events", _EXPIRED_EVENTS, {"done": done_cut, "dead": dead_cut},
                                             ["PartitionKey", "RowKey", "state", "body_blob", "key", "has_trail"]):
            results = await self._bounded(self._expire_event(row) for row in rows)
            for row, (gone, blob) in zip(rows, results, strict=True):
                blobs += blob
                if gone:
                    touched.add(row["PartitionKey"])
                    if row["state"] == "dead":
                        dead += 1
                    else:
                        events += 1
        async for rows in self._expire_pages("tickets", _EXPIRED_TICKETS,
                                             {"closed": now - retention.ticket_seconds},
                                             ["PartitionKey", "RowKey"]):
            tickets += sum(await self._bounded(
                self._delete_unchanged(r["PartitionKey"], r["RowKey"], r.metadata["etag"]) for r in rows))
        await self._bounded(self._drop_empty_alert(pk) for pk in touched)
        if events or dead or tickets:
            log.info("retention: deleted %d delivered events, %d dead letters, %d ticket records, %d blobs",
                     events, dead, tickets, blobs)
        return Expired(events=events, dead_letters=dead, tickets=tickets, blobs=blobs)

    async def _expire_pages(self, name: str, query: str, parameters: dict[str, Any],
                            select: list[str]) -> AsyncIterator[list[TableEntity]]:
        """Up to EXPIRE_PAGES_PER_PASS pages of a scan, each read within the operation timeout."""
        pages = self._t.query_entities(query, parameters=parameters, select=select,
                                       results_per_page=EXPIRE_PAGE_ROWS).by_page(
            continuation_token=self._expire_from.get(name))
        for _ in range(EXPIRE_PAGES_PER_PASS):
            async with self._storage("scan for expired rows"):
                try:
                    page = await anext(pages)
                except StopAsyncIteration:
                    self._expire_from.pop(name, None)  # the scan is complete: start over next pass
                    return
                rows = [r async for r in page]
            self._expire_from[name] = pages.continuation_token  # type: ignore[attr-defined]
            if rows:
                yield rows
            if not self._expire_from[name]:
                self._expire_from.pop(name, None)
                return

    async def _bounded(self, jobs: Any) -> list[Any]:
        """Run deletions a few at a time, each within the operation timeout."""
        sem = asyncio.Semaphore(EXPIRE_CONCURRENCY)

        async def one(job: Any) -> Any:
            async with sem, self._storage("delete expired rows"):
                return await job

        return await asyncio.gather(*(one(j) for j in jobs))

    async def _expire_event(self, row: TableEntity) -> tuple[bool, int]:
        """Delete a finished event (its dead-letter index row and payload blob first, so that a pass
        cut short leaves the e-row for the next pass to find). Returns (deleted, blobs deleted)."""
        if row["state"] == "dead":
            with contextlib.suppress(ResourceNotFoundError):
                await self._t.delete_entity(DEAD_PARTITION, row["key"])
        if row.get("has_trail"):  # set on the e-row by every write of a trail row
            await self._expire_trail(row["PartitionKey"], row["key"])
        blobs = 0
        if row.get("body_blob"):
            assert self._container is not None
            try:
                await self._container.delete_blob(row["body_blob"])
                blobs = 1
            except ResourceNotFoundError:
                pass
        return await self._delete_unchanged(row["PartitionKey"], row["RowKey"], row.metadata["etag"]), blobs

    async def _expire_trail(self, pk: str, key: str) -> None:
        """Delete an expiring event's trail rows (one read, then one batch per 100 rows)."""
        rows = [r async for r in self._t.query_entities(
            "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
            parameters={"pk": pk, "lo": f"r-{key}-", "hi": f"r-{key}."}, select=["RowKey"])]
        for start in range(0, len(rows), 100):
            try:
                await self._t.submit_transaction([
                    ("delete", {"PartitionKey": pk, "RowKey": r["RowKey"]}) for r in rows[start:start + 100]])
            except TableTransactionError as exc:
                if _code(exc) not in _CONFLICTS:  # another pass deleted some: the next pass finds the rest
                    raise

    async def _delete_unchanged(self, pk: str, rk: str, etag: str) -> bool:
        """Delete a row unless it changed since it was read (a replay, a reopened ticket)."""
        # A one-operation transaction, not delete_entity: the SDK's delete swallows "not found", and
        # only one of two replicas racing over a row may count it.
        try:
            await self._t.submit_transaction([
                ("delete", {"PartitionKey": pk, "RowKey": rk},
                 {"etag": etag, "match_condition": MatchConditions.IfNotModified})])
            return True
        except TableTransactionError as exc:
            if _code(exc) not in _CONFLICTS:
                raise
            return False  # another pass deleted it, or it changed and is no longer expired

    async def _drop_empty_alert(self, pk: str) -> None:
        """An alert whose every event expired keeps only its counter row: delete it too, under its
        ETag, so that an accept racing with this (which writes the counter) wins."""
        # One page of the partition's first two rows ('alert' sorts before 'e-' and 'q-'): the
        # counter row with its ETag, and whether anything is left beside it.
        pages = self._t.query_entities("PartitionKey eq @pk", parameters={"pk": pk}, select=["RowKey"],
                                       results_per_page=2).by_page()
        async for page in pages:
            rows = [r async for r in page]
            if len(rows) == 1 and rows[0]["RowKey"] == "alert":
                await self._delete_unchanged(pk, "alert", rows[0].metadata["etag"])
            return

    # -- the alert trail (reads) --------------------------------------------------------------------

    async def add_trail(self, alert_id: str, key: str, outcome: str, entries: tuple[TrailEntry, ...]) -> bool:
        if not entries:
            return False
        pk = alert_partition(alert_id)
        row = {"PartitionKey": pk, "RowKey": f"r-{key}-{time.time_ns():020d}", "at": time.time(),
               "outcome": outcome, "error": "", "entries": trail_json(entries)}
        async with self._storage("add to an event's trail"):
            try:  # the e-row must still be there (the merge fails the batch otherwise): one entity batch
                await self._t.submit_transaction([
                    ("update", {"PartitionKey": pk, "RowKey": "e-" + key, "has_trail": True},
                     {"mode": UpdateMode.MERGE}),
                    ("upsert", row, {"mode": UpdateMode.REPLACE}),
                ])
            except TableTransactionError as exc:
                if _code(exc) == "ResourceNotFound":
                    return False
                raise
        return True

    async def alert_trail(self, alert: str) -> list[EventTrail]:
        async with self._storage("read an alert's trail"):
            pk = alert_partition(alert)
            if _EVENT_KEY.match(alert):  # an event key: find its partition (a scan of the table)
                async for row in self._t.query_entities("RowKey eq @rk", parameters={"rk": "e-" + alert},
                                                        select=["PartitionKey"]):
                    pk = row["PartitionKey"]
                    break
            rows = [r async for r in self._t.query_entities("PartitionKey eq @pk", parameters={"pk": pk})]
        attempts: dict[str, list[Attempt]] = {}
        for r in rows:
            if r["RowKey"].startswith("r-"):
                key = r["RowKey"][2:].rsplit("-", 1)[0]
                attempts.setdefault(key, []).append(
                    Attempt(at=float(r["at"]), outcome=r["outcome"], error=r.get("error") or "",
                            entries=trail_from_json(r.get("entries"))))
        trails = []
        for r in sorted((r for r in rows if r["RowKey"].startswith("e-")), key=lambda r: int(r["seq"])):
            done = tuple(attempts.get(r["key"], ()))
            trails.append(_event_trail(r, done, tickets_of(done)))
        return trails

    async def recent_events(self, *, since: float | None = None, state: str | None = None,
                            limit: int = 100) -> list[EventTrail]:
        check_trail_query(state, limit)
        # A scan of the event rows (server-side filtered by time): an admin read, not a hot path.
        async with self._storage("list recent events"):
            rows = [r async for r in self._t.query_entities(
                _EVENT_ROWS_SINCE, parameters={"since": float(since or 0.0)},
                select=["PartitionKey", "RowKey", "key", "alert_id", "condition", "occurred_at", "received_at",
                        "state", "seq"])]
            rows = [r for r in rows if state is None or _TRAIL_STATE.get(r.get("state", "")) == state]
            rows.sort(key=lambda r: (float(r["received_at"]), int(r["seq"])), reverse=True)
            rows = rows[:limit]
            # Tickets come from the events' trail rows: one query per listed event.
            trails = await asyncio.gather(*(self._tickets_of_event(r) for r in rows))
        return list(trails)

    async def _tickets_of_event(self, erow: TableEntity) -> EventTrail:
        pk, key = erow["PartitionKey"], erow["key"]
        rows = [r async for r in self._t.query_entities(
            "PartitionKey eq @pk and RowKey ge @lo and RowKey lt @hi",
            parameters={"pk": pk, "lo": f"r-{key}-", "hi": f"r-{key}."}, select=["at", "outcome", "entries"])]
        done = tuple(Attempt(at=float(r["at"]), outcome=r["outcome"], entries=trail_from_json(r.get("entries")))
                     for r in rows)
        return _event_trail(erow, (), tickets_of(done))

    async def event(self, alert_id: str, key: str) -> Event | None:
        """One stored event by its key (the scheduler's due events re-read a deferred event's body)."""
        async with self._storage("read an event"):
            erow = await self._get(alert_partition(alert_id), "e-" + key)
            return await self._event(erow) if erow is not None else None

    # -- ticket records ----------------------------------------------------------------------------

    async def get_ticket(self, target: str, key: str) -> TicketRecord | None:
        async with self._storage("read a ticket record"):
            row = await self._get(ticket_partition(target, key), "ticket")
            if row is None:
                return None
            closed_at = row.get("closed_at")
            return TicketRecord(target=target, key=key, data=json.loads(row["data"]),
                                version=row.metadata["etag"],
                                closed_at=float(closed_at) if closed_at is not None else None)

    async def put_ticket(self, record: TicketRecord) -> TicketRecord:
        async with self._storage("write a ticket record"):
            entity: dict[str, Any] = {"PartitionKey": ticket_partition(record.target, record.key),
                                      "RowKey": "ticket", "target": record.target, "key": record.key,
                                      "data": json.dumps(record.data, sort_keys=True)}
            if record.closed_at is not None:  # REPLACE drops it when the ticket is open again
                entity["closed_at"] = float(record.closed_at)
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
            return TicketRecord(record.target, record.key, record.data, meta["etag"], record.closed_at)

    # -- pieces ------------------------------------------------------------------------------------

    async def _get(self, pk: str, rk: str) -> TableEntity | None:
        try:
            return await self._t.get_entity(pk, rk)
        except ResourceNotFoundError:
            return None

    async def _head(self, pk: str) -> TableEntity | None:
        async for row in self._t.query_entities(_QUEUE_ROWS, parameters={"pk": pk}, results_per_page=1,
                                                select=["RowKey"]):
            return row
        return None

    async def _head_and_next(self, pk: str) -> tuple[TableEntity | None, bool]:
        """The alert's first q-row, and whether a second one exists, in one operation (one page)."""
        pages = self._t.query_entities(_QUEUE_ROWS, parameters={"pk": pk}, results_per_page=2).by_page()
        async for page in pages:
            rows = [r async for r in page]
            return (rows[0] if rows else None), len(rows) > 1
        return None, False

    async def _event(self, erow: TableEntity) -> Event:
        if erow.get("body_blob"):
            assert self._container is not None
            body = await (await self._container.download_blob(erow["body_blob"])).readall()
        else:
            body = erow.get("body") or b""
        return Event(key=erow["key"], alert_id=erow["alert_id"], condition=erow["condition"],
                     occurred_at=erow["occurred_at"], body=bytes(body), trace_context=erow.get("trace_context") or "")

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


# The event's fields a q-row carries, so that a claim reads the q-row alone (not the e-row too).
_EVENT_FIELDS = ("key", "alert_id", "condition", "occurred_at", "received_at", "body", "body_blob", "trace_context")


def _trail_row(pk: str, claim: Claim, outcome: str, error: str = "") -> dict[str, Any] | None:
    """The r-row recording one attempt of a claim (None when the worker attached no trail)."""
    if not claim.trail:
        return None
    return {"PartitionKey": pk, "RowKey": f"r-{claim.event.key}-{time.time_ns():020d}", "at": time.time(),
            "outcome": outcome, "error": error[:TRAIL_DETAIL_LIMIT], "entries": trail_json(claim.trail)}


def _event_trail(erow: TableEntity, attempts: tuple[Attempt, ...], tickets: tuple[Any, ...]) -> EventTrail:
    return EventTrail(key=erow["key"], alert_id=erow["alert_id"], condition=erow["condition"],
                      occurred_at=erow["occurred_at"], received_at=float(erow["received_at"]),
                      state=_TRAIL_STATE.get(erow.get("state", ""), "pending"), attempts=attempts, tickets=tickets)


def _new_queue_row(pk: str, seq: int, erow: dict[str, Any]) -> dict[str, Any]:
    carried = {f: erow[f] for f in _EVENT_FIELDS if erow.get(f) is not None}
    return {**carried, "PartitionKey": pk, "RowKey": _queue_row(seq), "seq": seq, "attempts": 0,
            "available_at": 0.0, "lease_until": 0.0, "receipt": "", "token": "", "last_error": "",
            "queued_at": time.time()}


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
