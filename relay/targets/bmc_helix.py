"""BMC Helix ITSM target: incidents through the AR System REST API, CIs from the CMDB REST API.

Create goes through `HPD:IncidentInterface_Create`; search, update and resolve through
`HPD:IncidentInterface`; work notes are `HPD:WorkLog` entries. Helix has no standard correlation
field, so the key lives in a configurable one. It speaks that one API and says whether a failure is
worth retrying; lifecycle, retries and dead letters live outside.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

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
from relay.targets.vendor_api import CIRef, Reply, TokenAuth, VendorHTTP, checked_key, ci_references

log = logging.getLogger("relay.targets.bmc_helix")

KIND = "bmc_helix"
CREATE_FORM = "HPD:IncidentInterface_Create"
INCIDENT_FORM = "HPD:IncidentInterface"
WORK_LOG_FORM = "HPD:WorkLog"
ENTRY_PATH = "/api/arsys/v1/entry/"
LOGIN_PATH = "/api/jwt/login"
LOGOUT_PATH = "/api/jwt/logout"
CMDB_PATH = "/api/cmdb/v1.0/instances"
# An AR-JWT lives about an hour by default (configurable on the server); XSOAR caches it 3600 s.
DEFAULT_TOKEN_LIFETIME = 3600.0
# What the start-up check searches the correlation field for: a value no incident carries (keys are
# `[A-Za-z0-9._-]`, so no key holds a space), so the probe reads nothing.
PROBE_KEY = "secure-export start-up check"
OPEN_STATUSES = ("New", "Assigned", "In Progress", "Pending")
RESOLVED = "Resolved"
# Status -> the state two-way sync sees (relay.targets.TICKET_STATES). The relay creates incidents Assigned
# (to a group, no one on it yet): open, like New. Pending is a person's work waiting on something: in
# progress. Cancelled is a person deciding that no work is due: for the alert as final as Closed, so it
# reads closed. A status an instance added reads open (and is logged): the relay never closes an Azure
# alert on a status it does not know.
SYNC_STATES: Mapping[str, str] = {
    "New": "open",
    "Assigned": "open",
    "In Progress": "in_progress",
    "Pending": "in_progress",
    RESOLVED: "resolved",
    "Closed": "closed",
    "Cancelled": "closed",
}
UNKNOWN_STATUS_READS = "open"
# The core fields two-way sync reads: AR stamps both on every change of the entry.
MODIFIED_DATE = "Last Modified Date"
MODIFIED_BY = "Last Modified By"
# Allowed values of the interface's selection fields (BMC's HPD:IncidentInterface_Create field list).
IMPACTS = ("1-Extensive/Widespread", "2-Significant/Large", "3-Moderate/Limited", "4-Minor/Localized")
URGENCIES = ("1-Critical", "2-High", "3-Medium", "4-Low")
SERVICE_TYPES = (
    "User Service Restoration",
    "User Service Request",
    "Infrastructure Restoration",
    "Infrastructure Event",
)
FIELD_LIMITS: Mapping[str, int] = {"correlation_key": 100, "work_log_summary": 100}
CI_BINDINGS = ("bind_if_found", "create_if_missing", "none")
# Route fields with a Helix name; other route fields go through only if they look like Helix field
# names (a capital letter or a space), so a ServiceNow-style `category` never reaches the form.
# `caller` -> Login_ID: the customer's login on the create interface.
ROUTE_FIELD_NAMES: Mapping[str, str] = {
    "assignment_group": "Assigned Group",
    "impact": "Impact",
    "urgency": "Urgency",
    "caller": "Login_ID",
}


@dataclass(frozen=True, slots=True)
class BmcHelixOptions:
    """Target-specific options (each field is an option key). Several defaults depend on how the
    instance is set up: docs/targets.md lists what to confirm on one."""

    # No standard correlation field exists on HPD:Help Desk; "Vendor Ticket Number" is writable on
    # the create interface and searchable on HPD:IncidentInterface; use a custom field where it is not.
    correlation_field: str = field(default="Vendor Ticket Number", metadata={"max_length": 254})
    status_reason: str = "Automated Resolution Reported"  # must match a Status_Reason choice exactly
    reopen_status: str = field(default="In Progress", metadata={"choices": ("Assigned", "In Progress", "Pending")})
    # Create with an assigned group so the incident can move on.
    initial_status: str = field(default="Assigned", metadata={"choices": ("New", "Assigned", "In Progress")})
    # Resolution is only recommended, not required, here.
    service_type: str = field(default="Infrastructure Event", metadata={"choices": SERVICE_TYPES})
    reported_source: str = "Systems Management"
    defaults: Mapping[str, str] = field(default_factory=dict)  # Company, First_Name, Assigned Group...
    resolve_values: Mapping[str, str] = field(default_factory=dict)  # e.g. Assignee, if resolve needs one
    work_log_type: str = "General Information"
    ci_binding: str = field(default="bind_if_found", metadata={"choices": CI_BINDINGS})
    cmdb_dataset: str = "BMC.ASSET"
    cmdb_namespace: str = "BMC.CORE"
    ci_class: str = "BMC_BaseElement"  # the base class: a search spans every CI class
    ci_create_class: str = "BMC_ComputerSystem"  # the CMDB class a missing CI is created in
    ci_id_attribute: str | None = None  # the attribute holding the ARM id, if the instance's discovery fills one


OPTION_KEYS = option_keys(BmcHelixOptions)


@dataclass(frozen=True, slots=True)
class BoundCI:
    name: str
    recon_id: str
    form_name: str


class BmcHelixTarget:
    kind: ClassVar[str] = KIND
    # Description (the summary) 100 characters, Detailed_Decription 4000; notes 4000.
    limits: ClassVar[TextLimits] = TextLimits(summary=100, description=4000, note=4000)
    # Helix's own Impact/Urgency choices, most severe first.
    severity_fields: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "Sev0": {"Impact": IMPACTS[0], "Urgency": URGENCIES[0]},
        "Sev1": {"Impact": IMPACTS[1], "Urgency": URGENCIES[1]},
        "Sev2": {"Impact": IMPACTS[2], "Urgency": URGENCIES[1]},
        "Sev3": {"Impact": IMPACTS[2], "Urgency": URGENCIES[2]},
        "Sev4": {"Impact": IMPACTS[3], "Urgency": URGENCIES[3]},
    }
    options_class: ClassVar[type] = BmcHelixOptions

    def __init__(
        self, name: str, http: VendorHTTP, options: BmcHelixOptions, ci_cache: CICache[BoundCI] | None = None
    ) -> None:
        self.name = name
        self.http = http
        self.options = options
        self.ci_cache: CICache[BoundCI] = ci_cache if ci_cache is not None else CICache()
        self._entry_ids: dict[str, str] = {}  # Incident Number -> HPD:IncidentInterface entry id

    # -- the Target protocol ---------------------------------------------------------------------

    async def find(self, incident: Incident) -> Ticket | None:
        """The open incident carrying the key; else the latest Resolved one (resolved=True); else None.

        One search for open and Resolved together, newest first (`relay.targets.ticket_search`); a
        second, for open ones only, when that page is full. Two open incidents with one key is an
        error a person must settle; Closed and Cancelled incidents are history and never returned.
        """
        key = self._key(incident)
        corr = _field(self.options.correlation_field)
        either = " OR ".join(f"'Status' = {_quote(s)}" for s in (*OPEN_STATUSES, RESOLVED))
        rows = await self._search(f"{corr} = {_quote(key)} AND ({either})", limit=FIND_LIMIT)
        self._verify_rows(rows, key, (*OPEN_STATUSES, RESOLVED))
        tickets = [self._ticket(r, resolved=r.get("Status") == RESOLVED) for r in rows]
        found = pick_ticket(tickets)
        if found.unsettled:
            statuses = " OR ".join(f"'Status' = {_quote(s)}" for s in OPEN_STATUSES)
            opened = await self._search(f"{corr} = {_quote(key)} AND ({statuses})", limit=FIND_LIMIT)
            self._verify_rows(opened, key, OPEN_STATUSES)
            found = pick_ticket(tickets, open_rows=[self._ticket(r, resolved=False) for r in opened])
        if found.duplicates:
            numbers = ", ".join(str(t.number) for t in found.duplicates)
            raise TargetError(
                f"{self.name}: more than one open incident carries {self.options.correlation_field} {key!r} "
                f"({numbers}); resolve or cancel the duplicates in Helix, then replay",
                retryable=False,
            )
        return found.ticket

    async def read(self, ticket: Ticket) -> TicketView:
        """The incident's Status, and its latest HPD:WorkLog entries' texts (newest first)."""
        number = self._number(ticket)
        params = {
            "q": f"'Incident Number' = {_quote(number)}",
            "fields": "values(Request ID,Incident Number,Status)",
            "limit": "2",
        }
        reply = await self.http.request("GET", ENTRY_PATH + INCIDENT_FORM, params=params)
        body = self._json(reply, f"read {number}")
        rows = [
            e.get("values") or {}
            for e in ((body.get("entries") or []) if isinstance(body, dict) else [])
            if isinstance(e, dict) and (e.get("values") or {}).get("Incident Number") == number
        ]
        if len(rows) != 1:
            raise TargetError(
                f"{self.name}: {INCIDENT_FORM} has {len(rows)} entries for Incident Number {number}",
                retryable=False,
            )
        params = {
            "q": f"'Incident Number' = {_quote(number)}",
            "fields": "values(Incident Number,Detailed Description)",
            "limit": str(NOTES_READ),
            "sort": "Submit Date.desc",
        }
        reply = await self.http.request("GET", ENTRY_PATH + WORK_LOG_FORM, params=params)
        logs = self._json(reply, f"read the work log of {number}")
        entries = logs.get("entries") if isinstance(logs, dict) else None
        if not isinstance(entries, list):
            raise self.http.bad_answer(reply, f"read the work log of {number}", "the answer has no 'entries' list")
        notes = []
        for entry in entries[:NOTES_READ]:
            values = (entry.get("values") or {}) if isinstance(entry, dict) else {}
            if values.get("Incident Number") != number:
                raise TargetError(
                    f"{self.name}: a search of {WORK_LOG_FORM} for {number} returned an entry of "
                    f"{values.get('Incident Number')!r}; refusing to trust it",
                    retryable=False,
                )
            notes.append(str(values.get("Detailed Description") or ""))
        return TicketView(resolved=rows[0].get("Status") not in OPEN_STATUSES, notes=tuple(notes))

    async def search(self, key: str) -> list[FoundTicket]:
        """Every incident whose correlation field starts with `key`, newest first, in any status."""
        # `_` may stay: in LIKE it matches any one character, itself included; rows are checked below.
        if not key or len(key) > FIELD_LIMITS["correlation_key"] or "%" in key:
            raise TargetError(f"{self.name}: cannot search for the key {key!r}", retryable=False)
        corr = self.options.correlation_field
        rows = await self._search(f"{_field(corr)} LIKE {_quote(key + '%')}", limit=SEARCH_LIMIT)
        found = []
        for row in rows:
            carried = str(row.get(corr, ""))
            if not carried.lower().startswith(key.lower()):
                raise TargetError(
                    f"{self.name}: a search for {corr} starting with {key!r} returned "
                    f"{row.get('Incident Number')} ({corr} {carried!r}); refusing to trust the search",
                    retryable=False,
                )
            found.append(FoundTicket(carried, self._ticket(row, resolved=row.get("Status") not in OPEN_STATUSES)))
        return found

    async def changed_since(self, since: datetime, limit: int = CHANGES_LIMIT) -> list[TicketChange]:
        """Incidents with a correlation field whose `Last Modified Date` is at or after `since`, oldest first,
        at most `limit`: one search of HPD:IncidentInterface. The time goes into the qualification as
        seconds since 1970 UTC (what AR stores), never as a date string, which AR would read in the
        account's locale and time zone; `since` is cut to the whole second, the field's precision.
        `changed_by` is `Last Modified By` (a login; the relay's own for the relay's changes)."""
        if since.tzinfo is None:
            raise ValueError("since must carry its time zone")
        if limit < 1:
            raise ValueError(f"limit must be at least 1 (got {limit})")
        floor = since.astimezone(UTC).replace(microsecond=0)
        corr = self.options.correlation_field
        qualification = f"{_field(corr)} != $NULL$ AND {_field(MODIFIED_DATE)} >= {int(floor.timestamp())}"
        rows = await self._search(qualification, limit=limit, extra_fields=(MODIFIED_DATE, MODIFIED_BY),
                                  sort=f"{MODIFIED_DATE}.asc,Incident Number.asc")
        changes: list[TicketChange] = []
        for row in rows:
            carried = str(row.get(corr) or "")
            changed_at = parse_datetime(row.get(MODIFIED_DATE))
            if not carried or changed_at is None or changed_at < floor or (
                changes and changed_at < changes[-1].changed_at
            ):
                raise TargetError(
                    f"{self.name}: a search for incidents with {corr} modified since {floor.isoformat()}, oldest "
                    f"first, returned {row.get('Incident Number')} ({corr} {carried!r}, {MODIFIED_DATE} "
                    f"{row.get(MODIFIED_DATE)!r}); refusing to trust the search",
                    retryable=False,
                )
            status = str(row.get("Status") or "")
            state = sync_state(status)
            if status not in SYNC_STATES:
                log.warning("%s: %s has Status %r, which the relay does not know: it reads %s (the relay never "
                            "closes an alert on it)", self.name, row.get("Incident Number"), status, state)
            ticket = self._ticket(row, resolved=status not in OPEN_STATUSES)
            changes.append(TicketChange(ticket, carried, state, changed_at, str(row.get(MODIFIED_BY) or "") or None))
        return changes

    async def create(self, incident: Incident) -> Ticket:
        key = self._key(incident)
        bound = await self._bind_ci(incident)
        ci = bound[0] if bound else None
        values: dict[str, Any] = {
            "Impact": IMPACTS[2],
            "Urgency": URGENCIES[2],
            **self.options.defaults,
            **self._route_values(incident),
            "Description": truncate(incident.summary, self.limits.summary),
            "Detailed_Decription": incident.description,  # sic: the product spells it this way
            "Status": self.options.initial_status,
            "Reported Source": self.options.reported_source,
            "Service_Type": self.options.service_type,
            "z1D_Action": "CREATE",
            self.options.correlation_field: key,
        }
        if ci is not None:
            values.update(HPD_CI=ci.name, HPD_CI_ReconID=ci.recon_id, HPD_CI_FormName=ci.form_name)
        try:
            reply = await self.http.request(
                "POST",
                ENTRY_PATH + CREATE_FORM,
                params={"fields": "values(Incident Number)"},
                json_body={"values": values},
            )
            body = self._json(reply, "create incident", ok=(200, 201))
        except TargetError as exc:
            if bound and not exc.retryable:  # refused: the cached CI may be what it refused
                self.ci_cache.invalidate(bound[1])
            raise
        number = (body.get("values") or {}).get("Incident Number") if isinstance(body, dict) else None
        if not number:
            raise self.http.bad_answer(reply, "create incident", "the answer carries no Incident Number")
        return Ticket(id=str(number), number=str(number))

    async def note(self, ticket: Ticket, incident: Incident, text: str) -> None:
        summary = truncate(
            text.splitlines()[0] if text else "Azure Monitor", FIELD_LIMITS["work_log_summary"]
        )
        values = {
            "Incident Number": self._number(ticket),
            "Work Log Type": self.options.work_log_type,
            "Description": summary,
            "Detailed Description": text,
            "View Access": "Internal",
            "Secure Work Log": "No",
        }
        reply = await self.http.request("POST", ENTRY_PATH + WORK_LOG_FORM, json_body={"values": values})
        self._check(reply, f"add work log to {self._number(ticket)}", ok=(200, 201, 204))

    async def resolve(self, ticket: Ticket, incident: Incident, text: str) -> None:
        values = {
            **self.options.resolve_values,
            "Status": RESOLVED,
            "Status_Reason": self.options.status_reason,
            "Resolution": text,
        }
        await self._modify(ticket, values, "resolve")

    async def reopen(self, ticket: Ticket, incident: Incident, text: str) -> None:
        # Status_Reason values belong to a status: clear the Resolved one when leaving it.
        await self._modify(ticket, {"Status": self.options.reopen_status, "Status_Reason": None}, "reopen")
        await self.note(ticket, incident, text)

    async def check(self) -> list[Finding]:
        """Read-only probes: the AR-JWT login (credentials), then one search of HPD:IncidentInterface
        qualified on the correlation field, which matches nothing: AR refuses a qualification naming a
        field the form does not have, so an answer proves the form answers and the field is searchable."""
        corr = self.options.correlation_field
        form_check, field_check = f"form {INCIDENT_FORM!r}", f"field {corr!r} on {INCIDENT_FORM!r}"
        auth = self.http.auth
        if auth is not None:
            try:
                await auth.header(self.http)
            except TargetError as exc:
                refused = exc.status in (400, 401, 403)
                because = "the credentials were refused" if refused else "the login did not answer"
                if not refused:  # nothing answered: the form is what failed; the credentials are untested
                    return [Finding("credentials", "unchecked", f"not checked: {because}"),
                            Finding(form_check, "failed", str(exc)),
                            Finding(field_check, "unchecked", f"not checked: {because}")]
                return [Finding("credentials", "failed", str(exc)),
                        Finding(form_check, "unchecked", f"not checked: {because}"),
                        Finding(field_check, "unchecked", f"not checked: {because}")]
        findings = [Finding("credentials", "ok", "AR-JWT login accepted" if auth else "no login configured")]
        params = {
            "q": f"{_field(corr)} = {_quote(PROBE_KEY)}",
            "fields": "values(Request ID)",
            "limit": "1",
        }
        reply = await self.http.request("GET", ENTRY_PATH + INCIDENT_FORM, params=params)
        body = reply.json_or_none() if reply.status == 200 else None
        if isinstance(body, dict) and isinstance(body.get("entries"), list):
            return [*findings, Finding(form_check, "ok", "answers"), Finding(field_check, "ok", "searchable")]
        failure = str(self.http.failure(reply, f"search {INCIDENT_FORM}", _ar_error_text(reply)))
        if reply.status == 400:  # AR refused the qualification: the field is what it does not know
            return [*findings, Finding(form_check, "ok", "answers"), Finding(field_check, "failed", failure)]
        return [*findings, Finding(form_check, "failed", failure),
                Finding(field_check, "unchecked", "not checked: the form does not answer")]

    async def close(self) -> None:
        auth = self.http.auth
        token = auth.take() if isinstance(auth, TokenAuth) else None
        if token is not None:
            try:  # release the server-side session; a failure here changes nothing for us
                await self.http.request(
                    "POST", LOGOUT_PATH, headers={"Authorization": f"AR-JWT {token}"}, authenticate=False
                )
            except TargetError as exc:
                log.info("%s: logout failed: %s", self.name, exc)
        await self.http.close()

    # -- AR REST ---------------------------------------------------------------------------------

    def _key(self, incident: Incident) -> str:
        return checked_key(self.name, incident, max_length=FIELD_LIMITS["correlation_key"])

    def _number(self, ticket: Ticket) -> str:
        return ticket.number or ticket.id

    async def _search(self, qualification: str, *, limit: int, extra_fields: tuple[str, ...] = (),
                      sort: str = "Submit Date.desc") -> list[dict[str, Any]]:
        corr = self.options.correlation_field
        params = {
            "q": qualification,
            "fields": f"values({','.join(['Request ID', 'Incident Number', 'Status', corr, *extra_fields])})",
            "limit": str(limit),
            "sort": sort,
        }
        reply = await self.http.request("GET", ENTRY_PATH + INCIDENT_FORM, params=params)
        body = self._json(reply, f"search {INCIDENT_FORM}")
        entries = body.get("entries") if isinstance(body, dict) else None
        if not isinstance(entries, list):
            raise self.http.bad_answer(reply, f"search {INCIDENT_FORM}", "the answer has no 'entries' list")
        if len(entries) > limit:
            raise self.http.bad_answer(
                reply, f"search {INCIDENT_FORM}", f"it returned {len(entries)} for limit={limit}"
            )
        rows = []
        for entry in entries:
            values = dict(entry.get("values") or {}) if isinstance(entry, dict) else {}
            if not values.get("Request ID"):
                values["Request ID"] = _self_entry_id(entry)
            rows.append(values)
        return rows

    def _verify_rows(self, rows: list[dict[str, Any]], key: str, statuses: tuple[str, ...]) -> None:
        """Each row must carry the key and an asked-for status, or the search cannot be trusted."""
        corr = self.options.correlation_field
        for row in rows:
            if str(row.get(corr, "")).lower() != key.lower() or row.get("Status") not in statuses:
                raise TargetError(
                    f"{self.name}: a search for {corr} {key!r} returned {row.get('Incident Number')} "
                    f"({corr} {row.get(corr)!r}, Status {row.get('Status')!r}); refusing to pick a ticket",
                    retryable=False,
                )

    def _ticket(self, row: Mapping[str, Any], *, resolved: bool) -> Ticket:
        number = str(row.get("Incident Number") or "")
        if not number:
            raise TargetError(f"{self.name}: a search row carries no Incident Number", retryable=False)
        if row.get("Request ID"):
            self._entry_ids[number] = str(row["Request ID"])
        return Ticket(id=number, number=number, resolved=resolved)

    async def _entry_id(self, number: str) -> str:
        """The HPD:IncidentInterface entry id of an incident, looked up by Incident Number."""
        if number in self._entry_ids:
            return self._entry_ids[number]
        params = {
            "q": f"'Incident Number' = {_quote(number)}",
            "fields": "values(Request ID,Incident Number)",
            "limit": "2",
        }
        reply = await self.http.request("GET", ENTRY_PATH + INCIDENT_FORM, params=params)
        body = self._json(reply, f"look up {number}")
        entries = [
            e for e in (body.get("entries") or []) if (e.get("values") or {}).get("Incident Number") == number
        ]
        if len(entries) != 1:
            raise TargetError(
                f"{self.name}: {INCIDENT_FORM} has {len(entries)} entries for Incident Number {number}",
                retryable=False,
                status=404 if not entries else None,
            )
        entry_id = (entries[0].get("values") or {}).get("Request ID") or _self_entry_id(entries[0])
        if not entry_id:
            raise self.http.bad_answer(reply, f"look up {number}", "the entry has no Request ID")
        self._entry_ids[number] = str(entry_id)
        return str(entry_id)

    async def _modify(self, ticket: Ticket, values: Mapping[str, Any], what: str) -> None:
        number = self._number(ticket)
        entry_id = await self._entry_id(number)
        reply = await self.http.request(
            "PUT", f"{ENTRY_PATH}{INCIDENT_FORM}/{entry_id}", json_body={"values": values}
        )
        self._check(reply, f"{what} {number}", ok=(200, 204))

    def _check(self, reply: Reply, what: str, ok: tuple[int, ...]) -> None:
        if reply.status not in ok:
            raise self.http.failure(reply, what, _ar_error_text(reply))
        if reply.body and not reply.is_json:
            raise self.http.not_json(reply, what)

    def _json(self, reply: Reply, what: str, ok: tuple[int, ...] = (200,)) -> Any:
        return self.http.parse_json(reply, what, _ar_error_text, ok)

    def _route_values(self, incident: Incident) -> dict[str, str]:
        values: dict[str, str] = {}
        for name, raw in incident.fields.items():
            if raw is None or raw == "":
                continue
            helix = ROUTE_FIELD_NAMES.get(name)
            if helix is None:
                if not (any(c.isupper() for c in name) or " " in name):
                    log.debug("%s: route field %r has no Helix field; not sent", self.name, name)
                    continue
                helix = name
            values[helix] = _selection(helix, raw)
        return values

    # -- CMDB ------------------------------------------------------------------------------------

    async def _bind_ci(self, incident: Incident) -> tuple[BoundCI, Hashable] | None:
        """The first of the incident's CIs found in the CMDB (created if the option says so), and its
        cache key.

        Answers come from the target's CMDB cache when fresh. Helix holds one CI per incident
        (`HPD_CI_ReconID`); a lookup refused for good leaves the incident unbound, a retryable failure
        fails the create so it is tried again.
        """
        if self.options.ci_binding == "none":
            return None
        for ref in ci_references(incident):
            cache_key = ci_key(ref)
            bound = await self.ci_cache.lookup(cache_key, lambda ref=ref: self._resolve_ci(ref))
            if bound is not None:
                return bound, cache_key
        return None

    async def _resolve_ci(self, ref: CIRef) -> BoundCI | None:
        """The CI from the CMDB (created if the option says so), or None: what the cache keeps."""
        try:
            bound = await self._lookup_ci(ref)
            if bound is None and self.options.ci_binding == "create_if_missing":
                await self._create_ci(ref)
                bound = await self._lookup_ci(ref)
        except TargetError as exc:
            if exc.retryable:
                raise
            log.warning("%s: CI %s left unbound: %s", self.name, ref.arm_id or ref.name, exc)
            return None
        if bound is None:
            log.info("%s: CI %s not found in the CMDB", self.name, ref.arm_id or ref.name)
        return bound

    async def _lookup_ci(self, ref: CIRef) -> BoundCI | None:
        lookups: list[tuple[str, str]] = []
        if self.options.ci_id_attribute and ref.arm_id:
            lookups.append((self.options.ci_id_attribute, ref.arm_id))
        lookups.append(("Name", ref.name))
        for attribute, value in lookups:
            found = await self._cmdb_search(attribute, value)
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                log.warning("%s: %d CIs have %s %r; left unbound", self.name, len(found), attribute, value)
                return None
        return None

    async def _cmdb_search(self, attribute: str, value: str) -> list[BoundCI]:
        o = self.options
        params = {
            "qualification": f"{_field(attribute)} = {_quote(value)}",
            "attributes": ",".join(dict.fromkeys(["Name", "ReconciliationIdentity", attribute])),
            "limit": "2",
        }
        path = f"{CMDB_PATH}/{o.cmdb_dataset}/{o.cmdb_namespace}/{o.ci_class}"
        reply = await self.http.request("GET", path, params=params)
        body = self._json(reply, "CMDB search")
        found = []
        for instance in (body.get("instances") or []) if isinstance(body, dict) else []:
            attrs = instance.get("attributes") or {}
            if str(attrs.get(attribute, "")).lower() != value.lower():
                continue  # a qualification the server ignored, or a different case
            recon = str(attrs.get("ReconciliationIdentity") or "")
            if recon in ("", "0"):  # not reconciled yet: nothing to bind to
                continue
            key = instance.get("class_name_key") or {}
            form = f"{key.get('namespace', o.cmdb_namespace)}:{key.get('name', o.ci_class)}"
            found.append(BoundCI(name=str(attrs.get("Name") or value), recon_id=recon, form_name=form))
        return found

    async def _create_ci(self, ref: CIRef) -> None:
        o = self.options
        attributes = {"Name": ref.name, "ShortDescription": ref.arm_id or ref.name}
        if o.ci_id_attribute and ref.arm_id:
            attributes[o.ci_id_attribute] = ref.arm_id
        instance = {
            "class_name_key": {"name": o.ci_create_class, "namespace": o.cmdb_namespace},
            "dataset_id": o.cmdb_dataset,
            "attributes": attributes,
        }
        reply = await self.http.request("POST", CMDB_PATH, json_body={"instances": [instance]})
        self._check(reply, f"create CI {o.ci_create_class}", ok=(200, 201))
        log.info("%s: created CI %s in %s", self.name, ref.arm_id or ref.name, o.ci_create_class)


TARGET_CLASS = BmcHelixTarget


def sync_state(status: str) -> str:
    """The two-way sync state (relay.targets.TICKET_STATES) of an incident's Status."""
    return SYNC_STATES.get(status, UNKNOWN_STATUS_READS)


def parse_datetime(value: Any) -> datetime | None:
    """An AR date/time as the REST API writes it (ISO 8601 with its zone, `2026-03-01T10:00:00.000+0000`),
    or as seconds since 1970, as an aware UTC datetime; None when it is neither."""
    if isinstance(value, int) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return moment.astimezone(UTC) if moment.tzinfo is not None else None


def _quote(value: str) -> str:
    """An AR qualification string literal: double quotes, an embedded one doubled."""
    return '"' + value.replace('"', '""') + '"'


def _field(name: str) -> str:
    return f"'{name}'"


def _self_entry_id(entry: Any) -> str:
    """The entry id from an entry's `_links.self` href (the last path segment)."""
    try:
        href = entry["_links"]["self"][0]["href"]
    except (KeyError, IndexError, TypeError):
        return ""
    return str(href).rstrip("/").rsplit("/", 1)[-1]


def _selection(field_name: str, value: Any) -> str:
    """Impact/Urgency given as 1-4 become Helix's labels; anything else goes as written."""
    choices = {"Impact": IMPACTS, "Urgency": URGENCIES}.get(field_name)
    text = str(value).strip()
    if choices and text.isdigit() and 1 <= int(text) <= len(choices):
        return choices[int(text) - 1]
    return text


def _ar_error_text(reply: Reply) -> str | None:
    """AR System errors: a list of status objects (`messageNumber`, `messageText`, ...)."""
    body = reply.json_or_none()
    items = body if isinstance(body, list) else [body]
    parts = []
    for item in items:
        if isinstance(item, dict) and item.get("messageText"):
            text = f"ARERR {item.get('messageNumber', '?')}: {item['messageText']}"
            if item.get("messageAppendedText"):
                text += f" ({item['messageAppendedText']})"
            parts.append(text)
    return "; ".join(parts) or None


def from_config(name: str, cfg: Mapping[str, Any], env: Mapping[str, str] = os.environ) -> BmcHelixTarget:
    """Build the target from its YAML block; every mistake is in one TargetConfigError, each naming its key."""
    opts = Options(name, cfg)
    opts.reject_unknown(COMMON_KEYS | OPTION_KEYS | CACHE_KEYS)
    base_url = opts.base_url()
    options = opts.read(BmcHelixOptions)
    cache = read_settings(opts)
    # Field names are quoted 'like this' in a qualification: a quote in one would change the query.
    for key in ("correlation_field", "ci_id_attribute"):
        if "'" in (getattr(options, key) or ""):
            opts.problem(key, "must not contain a single quote")
    http = VendorHTTP.from_options(opts, base_url=base_url, auth=_auth(opts, env), logger=log)
    opts.check()
    if options.service_type.endswith("Restoration"):
        log.info(
            "%s: %s incidents need a Resolution to resolve; the relay always sends one", name, options.service_type
        )
    return BmcHelixTarget(name, http, options, CICache(cache))


def _auth(opts: Options, env: Mapping[str, str]) -> TokenAuth | None:
    auth = opts.section("auth")
    if auth.variant("type", ("ar_jwt",), "ar_jwt") is None:
        return None
    auth.reject_unknown({"type", "username", "password_env", "auth_string"})
    form = {"username": auth.text("username"), "password": auth.secret("password_env", env)}
    if auth.has("auth_string"):
        form["authString"] = auth.text("auth_string")

    async def login(http: VendorHTTP) -> tuple[str, float | None]:
        reply = await http.request("POST", LOGIN_PATH, form=form, authenticate=False)
        if reply.status != 200:
            raise http.failure(reply, "AR-JWT login", _ar_error_text(reply))
        if reply.content_type == "text/html":
            raise http.not_json(reply, "AR-JWT login")
        token = reply.text().strip()
        if not token or any(c.isspace() for c in token):
            raise http.bad_answer(reply, "AR-JWT login", "the body is not a token")
        return token, None

    return TokenAuth("AR-JWT", login, default_lifetime=DEFAULT_TOKEN_LIFETIME)
