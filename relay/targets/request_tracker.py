"""Request Tracker 5 target: tickets through REST2, CIs as RT Assets linked to the ticket.

The correlation key lives in a ticket custom field. RT drops a custom field it does not know, or
that is not applied to the ticket's queue, without an error: the ticket would then lose its key and
every retry would open a duplicate. So before the first search or create, the target checks that the
field is applied to the queue, and refuses to work (for good) if it is not.
It speaks that one API and says whether a failure is worth retrying; lifecycle, retries and dead
letters live outside.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from relay.targets import (
    CHANGES_LIMIT,
    NOTES_READ,
    SEARCH_LIMIT,
    Finding,
    FoundTicket,
    Incident,
    TargetError,
    TextLimits,
    Ticket,
    TicketChange,
    TicketView,
    truncate,
)
from relay.targets.cmdb_cache import CACHE_KEYS, CICache, ci_key, read_settings
from relay.targets.target_config import COMMON_KEYS, Options, option_keys
from relay.targets.ticket_search import FIND_LIMIT, pick_ticket
from relay.targets.vendor_api import (
    Auth,
    CIRef,
    Reply,
    StaticAuth,
    VendorHTTP,
    basic_auth,
    checked_key,
    ci_references,
)

log = logging.getLogger("relay.targets.request_tracker")

KIND = "request_tracker"
REST2 = "/REST/2.0"
FIELD_LIMITS: Mapping[str, int] = {"correlation_key": 255, "asset_name": 255}
CI_BINDINGS = ("bind_if_found", "create_if_missing", "none")
# Ticket fields a route may set on create (RT's names); `queue` picks another queue.
TICKET_FIELDS = frozenset(
    {
        "Priority",
        "InitialPriority",
        "FinalPriority",
        "Requestor",
        "Cc",
        "AdminCc",
        "Owner",
        "Due",
        "Starts",
        "TimeEstimated",
    }
)
# RT's default lifecycle's inactive statuses (besides the configured resolved_status).
INACTIVE_STATUSES = frozenset({"resolved", "rejected", "deleted"})
# Transactions that carry a note's text: comments, and correspondence added by hand.
NOTE_TRANSACTIONS = ("Comment", "Correspond")
# The LookupType of a ticket custom field (RT::CustomField): the kind the correlation key needs.
TICKET_CF_LOOKUP = "RT::Queue-RT::Ticket"
HISTORY_PAGE = 20  # transactions read per `read`, newest first; notes are picked from these
# Two-way sync: RT's default lifecycle's statuses as `relay.targets.TICKET_STATES`. "new" is a ticket nobody
# took yet (open); "open" is RT's "someone works on it", like "stalled" (waiting on someone): in_progress;
# "resolved" (or the configured resolved_status) is resolved; "rejected" and "deleted" are closed. A status
# of a custom lifecycle not listed here reads as open while active, closed when inactive.
SYNC_STATES: Mapping[str, str] = {
    "new": "open",
    "open": "in_progress",
    "stalled": "in_progress",
    "resolved": "resolved",
    "rejected": "closed",
    "deleted": "closed",
}
# Characters with a meaning in TicketSQL/AssetSQL string literals: refused rather than escaped.
_SQL_UNSAFE = "'\"\\"


@dataclass(frozen=True, slots=True)
class RequestTrackerOptions:
    """Target-specific options (each field is an option key)."""

    queue: str = "General"
    custom_field: str = "AzureAlertId"
    asset_catalog: str = "General assets"  # the catalog RT 5 ships with
    ci_binding: str = field(default="bind_if_found", metadata={"choices": CI_BINDINGS})
    requestor: str | None = None
    resolved_status: str = "resolved"  # RT's default lifecycle: new/open/stalled -> resolved
    reopen_status: str = "open"  # the lifecycle's "Re-open" action
    # The time zone RT reads TicketSQL dates in (two-way sync's `LastUpdated >= '...'`): the relay account's
    # own Timezone preference, else RT's $Timezone (RT_Config.pm ships "US/Eastern"). REST2 answers in UTC.
    timezone: str = "UTC"


OPTION_KEYS = option_keys(RequestTrackerOptions)
# Options that go into TicketSQL/AssetSQL string literals.
_SQL_OPTIONS = ("queue", "asset_catalog", "resolved_status", "reopen_status")


class RequestTrackerTarget:
    kind: ClassVar[str] = KIND
    # Subject 200; content (the description, comments) has no practical limit: 64000 here.
    limits: ClassVar[TextLimits] = TextLimits(summary=200, description=64000, note=64000)
    # Priority on RT's default scale (PriorityAsString: Low 0, Medium 50, High 100). RT shows the label of
    # the highest value not above the number (75 shows as Medium), so Sev0-1 High, Sev2 Medium, Sev3-4 Low.
    severity_fields: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "Sev0": {"Priority": 100},
        "Sev1": {"Priority": 100},
        "Sev2": {"Priority": 50},
        "Sev3": {"Priority": 25},
        "Sev4": {"Priority": 0},
    }
    options_class: ClassVar[type] = RequestTrackerOptions

    def ticket_url(self, ticket: Ticket) -> str:
        """The ticket's page in RT's web UI (for people: logs, the demo)."""
        return f"{self.http.base_url}/Ticket/Display.html?id={ticket.id}"

    def __init__(
        self, name: str, http: VendorHTTP, options: RequestTrackerOptions, ci_cache: CICache[str] | None = None,
        account: str | None = None,
    ) -> None:
        self.name = name
        self.http = http
        self.options = options
        self._checked_queues: set[str] = set()
        # The RT user the relay acts as (two-way sync tells its own changes from a person's): the basic auth
        # user, else learnt from the Creator of the tickets it opened.
        self.account: str | None = account
        self.ci_cache: CICache[str] = ci_cache if ci_cache is not None else CICache()

    def ticket_link(self, ticket: Ticket) -> str:
        """The ticket's page in RT's web UI (the alert trail and status page link to it)."""
        return f"{self.http.base_url.rstrip('/')}/Ticket/Display.html?id={quote(ticket.id)}"

    # -- the Target protocol ---------------------------------------------------------------------

    async def find(self, incident: Incident) -> Ticket | None:
        """The active ticket carrying the key; else the latest resolved one (resolved=True); else None.

        One search for active and resolved together, newest first (`relay.targets.ticket_search`); a
        second, for active ones only, when that page is full. Two active tickets with one key is an
        error a person must settle.
        """
        key = self._key(incident)
        await self._check_queue(self.options.queue)
        cf = f"'CF.{{{self.options.custom_field}}}' = '{key}'"
        resolved = self.options.resolved_status
        rows = await self._search(f"{cf} AND (Status = '__Active__' OR Status = '{resolved}')", per_page=FIND_LIMIT)
        self._verify_rows(rows, key)
        tickets = [_ticket(r, resolved=r.get("Status") == resolved) for r in rows]
        found = pick_ticket(tickets)
        if found.unsettled:
            opened = await self._search(f"{cf} AND Status = '__Active__'", per_page=FIND_LIMIT)
            self._verify_rows(opened, key, active=True)
            found = pick_ticket(tickets, open_rows=[_ticket(r, resolved=False) for r in opened])
        if found.duplicates:
            ids = ", ".join(f"#{t.id}" for t in found.duplicates)
            raise TargetError(
                f"{self.name}: more than one active ticket carries {self.options.custom_field} {key!r} "
                f"({ids}); resolve or merge the duplicates in RT, then replay",
                retryable=False,
            )
        return found.ticket

    async def read(self, ticket: Ticket) -> TicketView:
        """The ticket's Status, and the texts of its latest comments from its history (newest first)."""
        reply = await self.http.request("GET", f"{REST2}/ticket/{ticket.id}")
        record = self._json(reply, f"read ticket #{ticket.id}")
        status = record.get("Status") if isinstance(record, dict) else None
        if not isinstance(status, str):
            raise self.http.bad_answer(reply, f"read ticket #{ticket.id}", "the answer carries no Status")
        params = {"fields": "Type", "orderby": "id", "order": "DESC", "per_page": str(HISTORY_PAGE)}
        reply = await self.http.request("GET", f"{REST2}/ticket/{ticket.id}/history", params=params)
        history = self._json(reply, f"read the history of ticket #{ticket.id}")
        items = history.get("items") if isinstance(history, dict) else None
        if not isinstance(items, list):
            raise self.http.bad_answer(reply, f"read the history of ticket #{ticket.id}", "no 'items' list")
        notes: list[str] = []
        for item in items:
            if len(notes) >= NOTES_READ:
                break
            if not isinstance(item, dict) or item.get("Type") not in NOTE_TRANSACTIONS or not item.get("id"):
                continue
            reply = await self.http.request(
                "GET", f"{REST2}/transaction/{item['id']}/attachments", params={"fields": "Content"}
            )
            parts = self._json(reply, f"read transaction #{item['id']}")
            # In a collection RT gives each attachment's content as text (only /attachment/:id is Base64).
            texts = [str(a.get("Content") or "") for a in (parts.get("items") or []) if isinstance(a, dict)]
            notes.append("\n".join(t for t in texts if t))
        return TicketView(resolved=self._inactive(status), notes=tuple(notes))

    async def search(self, key: str) -> list[FoundTicket]:
        """Every ticket whose correlation custom field starts with `key`, newest first (any status)."""
        if not key or any(c in key for c in _SQL_UNSAFE) or len(key) > FIELD_LIMITS["correlation_key"]:
            raise TargetError(f"{self.name}: cannot search for the key {key!r}", retryable=False)
        await self._check_queue(self.options.queue)
        cf = self.options.custom_field
        # TicketSQL LIKE is a case-insensitive substring match; the prefix is checked on each row below.
        rows = await self._search(f"'CF.{{{cf}}}' LIKE '{key}'", per_page=SEARCH_LIMIT)
        found = []
        for row in rows:
            values = self._cf_values(row)
            carried = next((v for v in values if v.lower().startswith(key.lower())), None)
            if carried is None or not row.get("id"):
                raise TargetError(
                    f"{self.name}: a search for {cf} starting with {key!r} returned ticket #{row.get('id')} "
                    f"({cf} {values!r}); refusing to trust the search",
                    retryable=False,
                )
            resolved = self._inactive(str(row.get("Status")))
            found.append(FoundTicket(carried, Ticket(id=str(row["id"]), number=str(row["id"]), resolved=resolved)))
        return found

    async def changed_since(self, since: datetime, limit: int = CHANGES_LIMIT) -> list[TicketChange]:
        """Tickets carrying the correlation custom field whose LastUpdated is at or after `since`, oldest
        first, at most `limit`: one REST2 search (`LastUpdated >= '<since>'` in the `timezone` option's
        zone, as TicketSQL reads dates in the account's zone; whole seconds, as RT stores them), ordered by
        LastUpdated. REST2 writes dates in UTC (`2026-12-02T10:11:12Z`); rows before `since` (a wrong
        `timezone`) are dropped with a warning. `changed_by` is LastUpdatedBy (the user's name)."""
        if since.tzinfo is None:
            raise ValueError("since must carry its time zone (UTC)")
        cf = self.options.custom_field
        local = since.astimezone(ZoneInfo(self.options.timezone)).strftime("%Y-%m-%d %H:%M:%S")
        reply, items = await self._search_rows(
            f"'CF.{{{cf}}}' IS NOT NULL AND LastUpdated >= '{local}'", per_page=limit,
            fields="Status,CustomFields,LastUpdated,LastUpdatedBy,Creator", orderby="LastUpdated", order="ASC",
            what="search changed tickets")
        floor = since.astimezone(UTC).replace(microsecond=0)
        changes: list[TicketChange] = []
        early = 0
        for row in items:
            values = self._cf_values(row) if isinstance(row, dict) else []
            changed_at = _rt_time(row.get("LastUpdated")) if isinstance(row, dict) else None
            if not values or not row.get("id") or changed_at is None:
                raise self.http.bad_answer(reply, "search changed tickets",
                                           f"ticket #{row.get('id') if isinstance(row, dict) else '?'} carries no "
                                           f"{cf} or no LastUpdated")
            if changed_at < floor:
                early += 1
                continue
            creator = _user(row.get("Creator"))
            if self.account is None and creator:
                self.account = creator  # the relay creates every ticket that carries its correlation key
            status = str(row.get("Status") or "")
            changes.append(TicketChange(
                ticket=Ticket(id=str(row["id"]), number=str(row["id"]), resolved=self._inactive(status)),
                correlation_key=values[0], state=self.sync_state(status), changed_at=changed_at,
                changed_by=_user(row.get("LastUpdatedBy"))))
        if early:
            log.warning("%s: RT answered %d tickets last updated before %s: is the target's timezone option "
                        "(%s) the relay account's time zone in RT?", self.name, early,
                        floor.isoformat(), self.options.timezone)
        changes.sort(key=lambda c: c.changed_at)
        return changes

    def sync_state(self, status: str) -> str:
        """An RT status as one of TICKET_STATES (`SYNC_STATES`; the configured resolved_status is resolved)."""
        if status == self.options.resolved_status:
            return "resolved"
        if status in SYNC_STATES:
            return SYNC_STATES[status]
        return "closed" if self._inactive(status) else "open"

    async def create(self, incident: Incident) -> Ticket:
        key = self._key(incident)
        queue = str(incident.fields.get("queue") or self.options.queue)
        await self._check_queue(queue)
        bound = await self._bind_assets(incident)
        assets = [asset_id for asset_id, _ in bound]
        body: dict[str, Any] = {
            **self._route_fields(incident),
            "Queue": queue,
            "Subject": truncate(incident.summary, self.limits.summary),
            "Content": incident.description,
            "ContentType": "text/plain",
            "CustomFields": {self.options.custom_field: key},
        }
        if self.options.requestor and "Requestor" not in body:
            body["Requestor"] = self.options.requestor
        if assets:
            body["RefersTo"] = [f"asset:{asset_id}" for asset_id in assets]
        try:
            reply = await self.http.request("POST", f"{REST2}/ticket", json_body=body)
            created = self._json(reply, "create ticket", ok=(201,))
        except TargetError as exc:
            if not exc.retryable:  # refused: a cached asset may be what it refused (deleted)
                for _, ci_key in bound:
                    self.ci_cache.invalidate(ci_key)
            raise
        ticket_id = created.get("id") if isinstance(created, dict) else None
        if not ticket_id:
            raise self.http.bad_answer(reply, "create ticket", "the answer carries no ticket id")
        return Ticket(id=str(ticket_id), number=str(ticket_id))

    async def note(self, ticket: Ticket, incident: Incident, text: str) -> None:
        await self._comment(ticket, {"Content": text, "ContentType": "text/plain"}, "comment on")

    async def resolve(self, ticket: Ticket, incident: Incident, text: str) -> None:
        await self._set_status(ticket, self.options.resolved_status, text, "resolve")

    async def reopen(self, ticket: Ticket, incident: Incident, text: str) -> None:
        await self._set_status(ticket, self.options.reopen_status, text, "reopen")

    async def link(self, child: Ticket, parent: Ticket) -> None:
        """Make `child` a member of `parent` (RT's MemberOf link, `AddMemberOf` through REST2), then read the
        child back: RT answers 200 with a message, not an error, when it refuses a link."""
        reply = await self.http.request("PUT", f"{REST2}/ticket/{child.id}", json_body={"AddMemberOf": parent.id})
        messages = self._json(reply, f"link ticket #{child.id} to #{parent.id}")
        reply = await self.http.request("GET", f"{REST2}/ticket/{child.id}")
        record = self._json(reply, f"read ticket #{child.id}")
        links = record.get("_hyperlinks") if isinstance(record, dict) else None
        parents = {str(h.get("id")) for h in links or [] if isinstance(h, dict) and h.get("ref") == "parent"}
        if str(parent.id) not in parents:
            said = "; ".join(str(m) for m in messages) if isinstance(messages, list) else str(messages)
            raise TargetError(f"{self.name}: ticket #{child.id} is not a member of #{parent.id} after linking: {said}",
                              retryable=False)

    async def retitle(self, ticket: Ticket, summary: str) -> None:
        """Set the ticket's Subject (a storm parent's count, kept current)."""
        reply = await self.http.request("PUT", f"{REST2}/ticket/{ticket.id}",
                                        json_body={"Subject": truncate(summary, self.limits.summary)})
        self._json(reply, f"retitle ticket #{ticket.id}")

    async def close(self) -> None:
        await self.http.close()

    # -- the start-up check ----------------------------------------------------------------------

    async def check(self) -> list[Finding]:
        """Read-only probes: the credentials (`GET /rt`), the queue, the ticket custom field, the field
        applied to the queue, and the asset catalog when CIs are bound. Nothing is created or changed."""
        queue, cf = self.options.queue, self.options.custom_field
        names = [f"queue {queue!r}", f"custom field {cf!r}", f"custom field {cf!r} applied to queue {queue!r}"]
        if self.options.ci_binding != "none":
            names.append(f"asset catalog {self.options.asset_catalog!r}")
        reply = await self.http.request("GET", f"{REST2}/rt")
        if reply.status != 200:
            failure = self.http.failure(reply, "read RT's version (GET /REST/2.0/rt)", _rt_message(reply))
            because = "the credentials were refused" if reply.status in (401, 403) else "RT did not answer"
            return [Finding("credentials", "failed", str(failure)),
                    *(Finding(n, "unchecked", f"not checked: {because}") for n in names)]
        info = reply.json_or_none()
        version = info.get("Version") if isinstance(info, dict) else None
        findings = [Finding("credentials", "ok", f"RT {version} accepts them" if version else "RT accepts them")]
        findings += await self._check_queue_and_field(queue, cf, names)
        if self.options.ci_binding != "none":
            catalog = self.options.asset_catalog
            reply = await self.http.request("GET", f"{REST2}/catalog/{quote(catalog, safe='')}")
            if reply.status == 200:
                findings.append(Finding(names[3], "ok", "exists"))
            elif reply.status == 404:
                findings.append(Finding(names[3], "failed", f"RT has no catalog {catalog!r} visible to this "
                                        f"account; CIs cannot be linked (ci_binding {self.options.ci_binding})"))
            else:
                findings.append(Finding(names[3], "failed", str(self.http.failure(reply, "read the catalog"))))
        return findings

    async def _check_queue_and_field(self, queue: str, cf: str, names: list[str]) -> list[Finding]:
        reply = await self.http.request("GET", f"{REST2}/queue/{quote(queue, safe='')}")
        record = reply.json_or_none() if reply.status == 200 else None
        queue_id = record.get("id") if isinstance(record, dict) else None
        if reply.status == 404:
            queue_finding = Finding(names[0], "failed", "RT has no such queue visible to this account; "
                                    "create it or fix 'queue'")
        elif not queue_id:
            queue_finding = Finding(names[0], "failed", str(self.http.failure(reply, f"read queue {queue!r}")))
        else:
            queue_finding = Finding(names[0], "ok", f"queue #{queue_id}")
        reply = await self.http.request(
            "POST",
            f"{REST2}/customfields",
            json_body=[{"field": "Name", "value": cf}, {"field": "LookupType", "value": TICKET_CF_LOOKUP}],
        )
        found = reply.json_or_none() if reply.status == 200 else None
        if reply.status != 200 or not isinstance(found, dict):
            field_finding = Finding(names[1], "failed", str(self.http.failure(reply, "search custom fields")))
        elif not found.get("items"):
            field_finding = Finding(names[1], "failed", "RT has no ticket custom field of that name (or it is "
                                    "disabled): create it (Freeform, single value, for tickets)")
        else:
            field_finding = Finding(names[1], "ok", f"custom field #{found['items'][0].get('id')}")
        if queue_id is None or field_finding.status != "ok":
            missing = "the queue" if queue_id is None else "the custom field"
            return [queue_finding, field_finding, Finding(names[2], "unchecked", f"not checked: {missing} is missing")]
        reply = await self.http.request(
            "POST", f"{REST2}/queue/{queue_id}/customfields", json_body=[{"field": "Name", "value": cf}]
        )
        applied = reply.json_or_none() if reply.status == 200 else None
        if reply.status != 200 or not isinstance(applied, dict):
            applies = Finding(names[2], "failed", str(self.http.failure(reply, "list the queue's custom fields")))
        elif not applied.get("items"):
            applies = Finding(names[2], "failed", "not applied: RT would drop the correlation key silently and "
                              "every retry would open a duplicate ticket; apply the field to the queue")
        else:
            applies = Finding(names[2], "ok", "applied")
        return [queue_finding, field_finding, applies]

    # -- REST2 -----------------------------------------------------------------------------------

    def _key(self, incident: Incident) -> str:
        return checked_key(
            self.name, incident, max_length=FIELD_LIMITS["correlation_key"], forbidden=_SQL_UNSAFE
        )

    async def _check_queue(self, queue: str) -> None:
        """The queue exists and the correlation custom field applies to it (once per queue)."""
        if queue in self._checked_queues:
            return
        reply = await self.http.request("GET", f"{REST2}/queue/{quote(queue, safe='')}")
        if reply.status == 404:
            raise TargetError(
                f"{self.name}: RT has no queue {queue!r} visible to this account; create it or fix 'queue'",
                retryable=False,
                status=404,
            )
        record = self._json(reply, f"read queue {queue!r}")
        queue_id = record.get("id") if isinstance(record, dict) else None
        if not queue_id:
            raise self.http.bad_answer(reply, f"read queue {queue!r}", "the answer carries no id")
        cf = self.options.custom_field
        reply = await self.http.request(
            "POST",
            f"{REST2}/queue/{queue_id}/customfields",
            json_body=[{"field": "Name", "value": cf}],
        )
        found = self._json(reply, f"list custom fields of queue {queue!r}")
        if not isinstance(found, dict) or not found.get("items"):
            raise TargetError(
                f"{self.name}: custom field {cf!r} is not applied to queue {queue!r}: RT would drop the "
                "correlation key silently and every retry would open a duplicate ticket. Create the field "
                "(Freeform, single value, for tickets) and apply it to the queue",
                retryable=False,
            )
        self._checked_queues.add(queue)

    async def _search(self, query: str, *, per_page: int) -> list[dict[str, Any]]:
        """Tickets matching `query`, newest first."""
        _, items = await self._search_rows(query, per_page=per_page, fields="Status,CustomFields", orderby="id",
                                           order="DESC", what="search tickets")
        return items

    async def _search_rows(self, query: str, *, per_page: int, fields: str, orderby: str, order: str,
                           what: str) -> tuple[Any, list[Any]]:
        """One REST2 ticket search (one page of at most `per_page` rows): the reply and its `items`."""
        form = {"query": query, "fields": fields, "per_page": str(per_page), "orderby": orderby, "order": order}
        reply = await self.http.request("POST", f"{REST2}/tickets", form=form)
        body = self._json(reply, what)
        items = body.get("items") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise self.http.bad_answer(reply, what, "the answer has no 'items' list")
        if len(items) > per_page:
            raise self.http.bad_answer(reply, what, f"it returned {len(items)} for per_page={per_page}")
        return reply, items

    def _inactive(self, status: str) -> bool:
        return status == self.options.resolved_status or status in INACTIVE_STATUSES

    def _cf_values(self, row: Mapping[str, Any]) -> list[str]:
        cf = self.options.custom_field
        return [
            str(v)
            for field in row.get("CustomFields") or []
            if isinstance(field, dict) and field.get("name") == cf
            for v in field.get("values") or []
        ]

    def _verify_rows(self, rows: list[dict[str, Any]], key: str, *, active: bool | None = None) -> None:
        """Each row must carry the key (and the asked-for status: active, resolved, or either for
        None), or the search cannot be trusted."""
        cf = self.options.custom_field
        resolved = self.options.resolved_status
        for row in rows:
            values = self._cf_values(row)
            status = row.get("Status")
            wrong_status = active is not None and (status == resolved if active else status != resolved)
            if key.lower() not in (v.lower() for v in values) or wrong_status:
                raise TargetError(
                    f"{self.name}: a search for {cf} {key!r} returned ticket #{row.get('id')} "
                    f"({cf} {values!r}, Status {status!r}); refusing to pick a ticket",
                    retryable=False,
                )

    async def _comment(self, ticket: Ticket, body: Mapping[str, Any], what: str) -> Any:
        reply = await self.http.request("POST", f"{REST2}/ticket/{ticket.id}/comment", json_body=dict(body))
        return self._json(reply, f"{what} ticket #{ticket.id}", ok=(200, 201))

    async def _set_status(self, ticket: Ticket, status: str, text: str, what: str) -> None:
        """Comment and change status in one call, then read the ticket back: RT answers 201 with a
        message, not an error, when a lifecycle refuses the change."""
        messages = await self._comment(
            ticket, {"Content": text, "ContentType": "text/plain", "Status": status}, what
        )
        reply = await self.http.request("GET", f"{REST2}/ticket/{ticket.id}")
        record = self._json(reply, f"read ticket #{ticket.id}")
        got = record.get("Status") if isinstance(record, dict) else None
        if got != status:
            said = "; ".join(str(m) for m in messages) if isinstance(messages, list) else str(messages)
            raise TargetError(
                f"{self.name}: {what} of ticket #{ticket.id} left Status {got!r}, not {status!r}: {said}",
                retryable=False,
            )

    def _json(self, reply: Reply, what: str, ok: tuple[int, ...] = (200,)) -> Any:
        return self.http.parse_json(reply, what, _rt_message, ok)

    def _route_fields(self, incident: Incident) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, value in incident.fields.items():
            if value is None or value == "" or name == "queue":
                continue
            if name in TICKET_FIELDS:
                values[name] = value
            else:
                log.debug("%s: route field %r is not an RT ticket field; not sent", self.name, name)
        return values

    # -- assets ----------------------------------------------------------------------------------

    async def _bind_assets(self, incident: Incident) -> list[tuple[str, Hashable]]:
        """(id, cache key) of the assets named by the incident's CIs (the ARM id, else the CI's name).

        Answers come from the target's CMDB cache when fresh. An asset lookup refused for good leaves
        the CI unlinked; a retryable failure fails the create so it is tried again.
        """
        if self.options.ci_binding == "none":
            return []
        bound: list[tuple[str, Hashable]] = []
        for ref in ci_references(incident):
            name = asset_name(ref)
            if len(name) > FIELD_LIMITS["asset_name"] or any(c in _SQL_UNSAFE or ord(c) < 32 for c in name):
                log.warning("%s: CI %r cannot be an asset name; left unlinked", self.name, name)
                continue
            cache_key = ci_key(ref)
            asset_id = await self.ci_cache.lookup(cache_key, lambda name=name, ref=ref: self._resolve_asset(name, ref))
            if asset_id is not None and asset_id not in (a for a, _ in bound):
                bound.append((asset_id, cache_key))
        return bound

    async def _resolve_asset(self, name: str, ref: CIRef) -> str | None:
        """The asset's id (created if the option says so), or None: what the cache keeps."""
        try:
            asset_id = await self._find_asset(name)
            if asset_id is None and self.options.ci_binding == "create_if_missing":
                asset_id = await self._create_asset(name, ref)
        except TargetError as exc:
            if exc.retryable:
                raise
            log.warning("%s: asset %r left unlinked: %s", self.name, name, exc)
            return None
        if asset_id is None:
            log.info("%s: no asset %r in catalog %r", self.name, name, self.options.asset_catalog)
        return asset_id

    async def _find_asset(self, name: str) -> str | None:
        # LIKE is case-insensitive in every RT database; the exact comparison below drops the child
        # resources a substring match also finds.
        catalog = self.options.asset_catalog
        form = {"query": f"Catalog = '{catalog}' AND Name LIKE '{name}'", "fields": "Name", "per_page": "100"}
        reply = await self.http.request("POST", f"{REST2}/assets", form=form)
        body = self._json(reply, "search assets")
        items = body.get("items") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise self.http.bad_answer(reply, "search assets", "the answer has no 'items' list")
        exact = [i for i in items if str(i.get("Name", "")).lower() == name.lower()]
        if len(exact) > 1:
            log.warning("%s: %d assets named %r in %r; left unlinked", self.name, len(exact), name, catalog)
            return None
        return str(exact[0]["id"]) if exact else None

    async def _create_asset(self, name: str, ref: CIRef) -> str:
        body = {
            "Name": name,
            "Catalog": self.options.asset_catalog,
            "Description": f"Azure resource {ref.name}" if ref.arm_id else ref.name,
        }
        reply = await self.http.request("POST", f"{REST2}/asset", json_body=body)
        created = self._json(reply, f"create asset {name!r}", ok=(201,))
        asset_id = created.get("id") if isinstance(created, dict) else None
        if not asset_id:
            raise self.http.bad_answer(reply, "create asset", "the answer carries no asset id")
        log.info("%s: created asset #%s %r", self.name, asset_id, name)
        return str(asset_id)


TARGET_CLASS = RequestTrackerTarget


def _ticket(row: Mapping[str, Any], *, resolved: bool) -> Ticket:
    return Ticket(id=str(row["id"]), number=str(row["id"]), resolved=resolved)


def asset_name(ref: CIRef) -> str:
    """The asset that stands for a CI is named by its ARM id (as Azure sends it), else by its name."""
    return ref.arm_id or ref.name


def _rt_time(value: Any) -> datetime | None:
    """A REST2 date (`2026-12-02T10:11:12Z`, always UTC) as an aware datetime; None when absent."""
    if not isinstance(value, str) or not value.strip():
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _user(value: Any) -> str | None:
    """A REST2 user reference (`{"type": "user", "id": "root", ...}`) as the user's name."""
    if isinstance(value, dict):
        value = value.get("id")
    return str(value) if value not in (None, "") else None


def _rt_message(reply: Reply) -> str | None:
    body = reply.json_or_none()
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return None


def from_config(
    name: str, cfg: Mapping[str, Any], env: Mapping[str, str] = os.environ
) -> RequestTrackerTarget:
    """Build the target from its YAML block; every mistake is in one TargetConfigError, each naming its key."""
    opts = Options(name, cfg)
    opts.reject_unknown(COMMON_KEYS | OPTION_KEYS | CACHE_KEYS)
    base_url = opts.base_url()
    if base_url.endswith(REST2):
        base_url = base_url[: -len(REST2)]
    options = opts.read(RequestTrackerOptions)
    cache = read_settings(opts)
    if any(c in options.custom_field for c in "{}'\"\\"):
        opts.problem("custom_field", "must not hold braces, quotes or backslashes")
    for key in _SQL_OPTIONS:
        if any(c in getattr(options, key) for c in _SQL_UNSAFE):
            opts.problem(key, "must not contain quotes or backslashes")
    try:
        ZoneInfo(options.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        opts.problem("timezone", f"must be an IANA time zone name such as UTC or Europe/Berlin (got "
                                 f"{options.timezone!r})")
    raw_auth = cfg.get("auth")
    account = raw_auth.get("username") if isinstance(raw_auth, Mapping) and raw_auth.get("type") == "basic" else None
    http = VendorHTTP.from_options(opts, base_url=base_url, auth=_auth(opts, env), logger=log)
    opts.check()
    return RequestTrackerTarget(name, http, options, CICache(cache),
                                account=account if isinstance(account, str) else None)


def _auth(opts: Options, env: Mapping[str, str]) -> Auth | None:
    auth = opts.section("auth")
    kind = auth.variant("type", ("token", "basic"), "token")
    if kind is None:
        return None
    if kind == "token":
        auth.reject_unknown({"type", "token_env"})
        return StaticAuth(f"token {auth.secret('token_env', env)}")
    return basic_auth(auth, env)
