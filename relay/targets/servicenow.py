"""ServiceNow target: incidents through the Table API, configuration items bound from `cmdb_ci`.

It speaks that one API and says whether a failure is worth retrying; lifecycle, retries and dead
letters live outside. The guards here come from peers' bugs: ServiceNow ignores a query clause it
cannot apply and returns every row, so each row of a search must prove it carries the key.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import quote

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
    TokenAuth,
    VendorHTTP,
    basic_auth,
    checked_key,
    ci_references,
)

log = logging.getLogger("relay.targets.servicenow")

KIND = "servicenow"
# Incident `state` choices (ServiceNow state model): we resolve (6) and reopen to In Progress (2);
# Closed (7) needs itil_admin and makes the record read-only, so the relay never sets it.
STATE_IN_PROGRESS = "2"
STATE_RESOLVED = "6"
STATE_CLOSED = "7"
STATE_CANCELED = "8"
# `correlation_id` holds 100 characters: its dictionary length, which Kibana's connector enforces too
# (an instance can change it; docs/targets.md lists what to confirm on one).
FIELD_LIMITS: Mapping[str, int] = {"correlation_key": 100}
CI_BINDINGS = ("bind_if_found", "create_if_missing", "none")
# Route fields with a name other than their incident column; everything else goes through as a column.
ROUTE_FIELD_COLUMNS: Mapping[str, str] = {"caller": "caller_id"}
# Columns the target owns: a route field cannot overwrite them.
OWNED_COLUMNS = frozenset(
    {
        "correlation_id",
        "correlation_display",
        "state",
        "close_code",
        "close_notes",
        "cmdb_ci",
        "short_description",
        "description",
        "work_notes",
        "sys_id",
        "number",
    }
)
# Incident state -> the state two-way sync sees (relay.targets.TICKET_STATES). On Hold (3) is a person's
# work waiting on something: in progress. Canceled (8) is a person deciding that no work is due: for the
# alert that is as final as Closed, so it reads closed. A state an instance added reads open (and is
# logged): the relay never closes an Azure alert on a state it does not know.
SYNC_STATES: Mapping[str, str] = {
    "1": "open",
    "2": "in_progress",
    "3": "in_progress",
    STATE_RESOLVED: "resolved",
    STATE_CLOSED: "closed",
    STATE_CANCELED: "closed",
}
UNKNOWN_STATE_READS = "open"
# How the Table API writes date-time values without display values (sys_updated_on): UTC, no zone. An
# encoded query's date-time given as text (not through javascript:) is taken as UTC too.
DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"
_CHANGE_FIELDS = "sys_id,number,state,correlation_id,sys_updated_on,sys_updated_by"
OAUTH_TOKEN_PATH = "/oauth_token.do"
DEFAULT_TOKEN_LIFETIME = 1800.0  # ServiceNow's default access-token lifespan (KB0778194)
_TICKET_FIELDS = "sys_id,number,state,correlation_id"
# States in which an incident is no longer open.
INACTIVE_STATES = frozenset({STATE_RESOLVED, STATE_CLOSED, STATE_CANCELED})
# Journal entries (work notes, comments) are rows of sys_journal_field, one per entry.
JOURNAL_TABLE = "sys_journal_field"
# The field dictionary: one row per table column (`name` the table, `element` the column). An inherited
# column's row is on the table that defines it: correlation_id is defined on `task`, which incident extends.
DICTIONARY_TABLE = "sys_dictionary"
CORRELATION_COLUMN = "correlation_id"
CORRELATION_DEFINED_ON = "task"
# The longest correlation key the relay writes (relay.targets: at most 64 characters).
LONGEST_KEY = 64


@dataclass(frozen=True, slots=True)
class ServiceNowOptions:
    """Target-specific options (each field is an option key), with the defaults docs/targets.md lists."""

    table: str = "incident"
    correlation_display: str = field(default="Azure Monitor", metadata={"max_length": 100})
    close_code: str = "Solution provided"  # the choice list is instance-specific: configure it
    ci_binding: str = field(default="bind_if_found", metadata={"choices": CI_BINDINGS})
    ci_class: str = "cmdb_ci"  # the table a missing CI is created in (create_if_missing)
    affected_cis: bool = True  # CIs after the first become task_ci rows ("Affected CIs")
    input_display_value: bool = False  # route fields give reference fields by name, not sys_id
    defaults: Mapping[str, str] = field(default_factory=dict)  # static columns on every new incident


OPTION_KEYS = option_keys(ServiceNowOptions)


class ServiceNowTarget:
    kind: ClassVar[str] = KIND
    # incident.short_description 160, description 4000 (dictionary defaults; instances can differ);
    # notes (work_notes, close_notes) are cut to 4000 too.
    limits: ClassVar[TextLimits] = TextLimits(summary=160, description=4000, note=4000)
    # impact x urgency (1 High, 2 Medium, 3 Low) through the default priority lookup gives
    # Sev0 P1, Sev1 P2, Sev2 P3, Sev3 P4, Sev4 P5.
    severity_fields: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "Sev0": {"impact": "1", "urgency": "1"},
        "Sev1": {"impact": "1", "urgency": "2"},
        "Sev2": {"impact": "2", "urgency": "2"},
        "Sev3": {"impact": "2", "urgency": "3"},
        "Sev4": {"impact": "3", "urgency": "3"},
    }
    options_class: ClassVar[type] = ServiceNowOptions

    def ticket_url(self, ticket: Ticket) -> str:
        """The record's form in the instance's UI (for people: logs, the demo)."""
        return f"{self.http.base_url}/nav_to.do?uri={self.options.table}.do%3Fsys_id%3D{ticket.id}"

    def __init__(
        self, name: str, http: VendorHTTP, options: ServiceNowOptions, ci_cache: CICache[str] | None = None
    ) -> None:
        self.name = name
        self.http = http
        self.options = options
        self.ci_cache: CICache[str] = ci_cache if ci_cache is not None else CICache()

    def ticket_link(self, ticket: Ticket) -> str:
        """The record's form in the instance's UI, `<instance>/<table>.do?sys_id=<sys_id>` (the alert trail
        and status page link to it)."""
        return f"{self.http.base_url.rstrip('/')}/{quote(self.options.table)}.do?sys_id={quote(ticket.id)}"

    # -- the Target protocol ---------------------------------------------------------------------

    async def find(self, incident: Incident) -> Ticket | None:
        """The open incident carrying the key; else the latest Resolved one (resolved=True); else None.

        One query for open and Resolved together, newest first (`relay.targets.ticket_search`); a
        second, for open ones only, when that page is full. Two open incidents with one key is an
        error a person must settle. Closed and Canceled incidents are read-only history and never
        returned.
        """
        key = self._key(incident)
        table = self.options.table
        rows = await self._query(
            table, f"correlation_id={key}^stateNOT IN7,8^ORDERBYDESCsys_created_on", _TICKET_FIELDS, FIND_LIMIT
        )
        self._verify_rows(rows, key, exclude_states={STATE_CLOSED, STATE_CANCELED})
        found = pick_ticket([self._ticket(r, resolved=str(r.get("state")) == STATE_RESOLVED) for r in rows])
        if found.unsettled:
            opened = await self._query(
                table, f"correlation_id={key}^stateNOT IN6,7,8^ORDERBYDESCsys_created_on", _TICKET_FIELDS, FIND_LIMIT
            )
            self._verify_rows(opened, key, exclude_states={STATE_RESOLVED, STATE_CLOSED, STATE_CANCELED})
            found = pick_ticket(
                [self._ticket(r, resolved=str(r.get("state")) == STATE_RESOLVED) for r in rows],
                open_rows=[self._ticket(r, resolved=False) for r in opened],
            )
        if found.duplicates:
            numbers = ", ".join(str(t.number or t.id) for t in found.duplicates)
            raise TargetError(
                f"{self.name}: more than one open incident carries correlation_id {key!r} ({numbers}); "
                "resolve or merge the duplicates in ServiceNow, then replay",
                retryable=False,
            )
        return found.ticket

    async def read(self, ticket: Ticket) -> TicketView:
        """The incident's state, and its latest work notes from sys_journal_field (newest first)."""
        rows = await self._query(self.options.table, f"sys_id={ticket.id}", "sys_id,state", 1)
        rows = [r for r in rows if str(r.get("sys_id", "")) == ticket.id]
        if not rows:
            raise TargetError(
                f"{self.name}: incident {ticket.number or ticket.id} cannot be read (deleted, or an ACL hides it)",
                retryable=False,
            )
        notes = await self._query(
            JOURNAL_TABLE,
            f"element_id={ticket.id}^element=work_notes^ORDERBYDESCsys_created_on",
            "element_id,element,value",
            NOTES_READ,
        )
        for row in notes:
            if str(row.get("element_id", "")) != ticket.id or row.get("element") != "work_notes":
                raise TargetError(
                    f"{self.name}: ServiceNow answered a search of {JOURNAL_TABLE} for the work notes of "
                    f"{ticket.number or ticket.id} with an entry of {row.get('element_id')!s} "
                    f"({row.get('element')!s}): it ignored a query clause (is {JOURNAL_TABLE} readable "
                    "by this account?)",
                    retryable=False,
                )
        return TicketView(
            resolved=str(rows[0].get("state", "")) in INACTIVE_STATES,
            notes=tuple(str(r.get("value", "")) for r in notes),
        )

    async def search(self, key: str) -> list[FoundTicket]:
        """Every incident whose correlation_id starts with `key`, newest first, in any state."""
        if not key or "^" in key or len(key) > FIELD_LIMITS["correlation_key"]:
            raise TargetError(f"{self.name}: cannot search for the key {key!r}", retryable=False)
        rows = await self._query(
            self.options.table,
            f"correlation_idSTARTSWITH{key}^ORDERBYDESCsys_created_on",
            _TICKET_FIELDS,
            SEARCH_LIMIT,
        )
        found = []
        for row in rows:
            carried = str(row.get("correlation_id", ""))
            if not carried.lower().startswith(key.lower()) or not row.get("sys_id"):
                raise TargetError(
                    f"{self.name}: ServiceNow answered a search for correlation_id starting with {key!r} with "
                    f"{row.get('number') or row.get('sys_id')!s} (correlation_id {carried!r}): it ignored a "
                    "query clause; refusing to pick a ticket from an unfiltered list",
                    retryable=False,
                )
            resolved = str(row.get("state", "")) in INACTIVE_STATES
            found.append(FoundTicket(carried, self._ticket(row, resolved=resolved)))
        return found

    async def changed_since(self, since: datetime, limit: int = CHANGES_LIMIT) -> list[TicketChange]:
        """Incidents carrying a correlation_id whose `sys_updated_on` is at or after `since`, oldest first
        (then by sys_id), at most `limit`: one Table API query. `since` is cut to the whole second, the
        field's precision, so nothing of that second is missed. `changed_by` is `sys_updated_by` (a user
        name; the relay's own account for the relay's changes)."""
        if since.tzinfo is None:
            raise ValueError("since must carry its time zone")
        if limit < 1:
            raise ValueError(f"limit must be at least 1 (got {limit})")
        floor = since.astimezone(UTC).replace(microsecond=0)
        query = (f"correlation_idISNOTEMPTY^sys_updated_on>={floor.strftime(DATETIME_FORMAT)}"
                 "^ORDERBYsys_updated_on^ORDERBYsys_id")
        rows = await self._query(self.options.table, query, _CHANGE_FIELDS, limit)
        changes: list[TicketChange] = []
        for row in rows:
            carried = str(row.get("correlation_id", ""))
            changed_at = parse_datetime(row.get("sys_updated_on"))
            if not carried or not row.get("sys_id") or changed_at is None or changed_at < floor or (
                changes and changed_at < changes[-1].changed_at
            ):
                raise TargetError(
                    f"{self.name}: ServiceNow answered a search for incidents with a correlation_id updated "
                    f"since {floor.strftime(DATETIME_FORMAT)} UTC, oldest first, with "
                    f"{row.get('number') or row.get('sys_id')!s} (correlation_id {carried!r}, sys_updated_on "
                    f"{row.get('sys_updated_on')!r}): it ignored a query clause (is sys_updated_on readable by "
                    "this account, and are date-times answered without display values?)",
                    retryable=False,
                )
            state = str(row.get("state", ""))
            ticket_state = sync_state(state)
            if state not in SYNC_STATES:
                log.warning("%s: %s is in state %r, which the relay does not know: it reads %s (the relay never "
                            "closes an alert on it)", self.name, row.get("number"), state, ticket_state)
            ticket = self._ticket(row, resolved=state in INACTIVE_STATES)
            changes.append(TicketChange(ticket, carried, ticket_state, changed_at,
                                        str(row.get("sys_updated_by") or "") or None))
        return changes

    async def create(self, incident: Incident) -> Ticket:
        key = self._key(incident)
        bound = await self._bind_cis(incident)
        cis = [sys_id for sys_id, _ in bound]
        values: dict[str, str] = dict(self.options.defaults)
        values.update(self._route_columns(incident))
        values.update(
            short_description=truncate(incident.summary, self.limits.summary),
            description=incident.description,
            correlation_id=key,
            correlation_display=self.options.correlation_display,
        )
        if cis:
            values["cmdb_ci"] = cis[0]
        params = {**self._write_params(), "sysparm_fields": f"{_TICKET_FIELDS},cmdb_ci"}
        try:
            reply = await self.http.request("POST", f"/api/now/table/{self.options.table}", params=params,
                                            json_body=self._refuse_scripts(values))
            record = self._result(reply, "create incident", ok=(200, 201))
        except TargetError as exc:
            if not exc.retryable:  # refused: a cached CI may be what it refused (deleted, or merged)
                for _, ci_key in bound:
                    self.ci_cache.invalidate(ci_key)
            raise
        if not isinstance(record, dict) or not record.get("sys_id"):
            raise self.http.bad_answer(reply, "create incident", "the result carries no sys_id")
        ticket = self._ticket(record, resolved=False)
        if str(record.get("correlation_id", "")).lower() != key.lower():
            log.error(
                "%s: incident %s was created but its correlation_id reads %r, not %r: a crash before the "
                "relay records it would create a duplicate (is correlation_id writable by this account?)",
                self.name,
                ticket.number,
                record.get("correlation_id"),
                key,
            )
        if cis and record.get("cmdb_ci") is not None and str(record["cmdb_ci"]) != cis[0]:
            log.warning("%s: %s did not keep cmdb_ci %s; looking the CI up afresh next time", self.name,
                        ticket.number, cis[0])
            self.ci_cache.invalidate(bound[0][1])
        if self.options.affected_cis:
            for ci, ci_key in bound[1:]:
                if not await self._add_affected_ci(ticket, ci):
                    self.ci_cache.invalidate(ci_key)
        return ticket

    async def note(self, ticket: Ticket, incident: Incident, text: str) -> None:
        await self._patch(ticket, {"work_notes": text}, "add work note")

    async def resolve(self, ticket: Ticket, incident: Incident, text: str) -> None:
        record = await self._patch(
            ticket,
            {
                "state": STATE_RESOLVED,
                "close_code": self.options.close_code,
                "close_notes": truncate(text, self.limits.note),
            },
            "resolve incident",
        )
        self._expect_state(record, STATE_RESOLVED, ticket, "resolve")

    async def reopen(self, ticket: Ticket, incident: Incident, text: str) -> None:
        record = await self._patch(
            ticket, {"state": STATE_IN_PROGRESS, "work_notes": text}, "reopen incident"
        )
        self._expect_state(record, STATE_IN_PROGRESS, ticket, "reopen")

    async def link(self, child: Ticket, parent: Ticket) -> None:
        """Make `child` a child incident of `parent` (its `parent_incident` reference). ServiceNow's stock
        business rules then resolve the child when the parent resolves (copying the resolution notes) and
        reopen it when an ITIL user reopens the parent; the relay reads a child before resolving it."""
        params = {"sysparm_fields": "sys_id,number,parent_incident", "sysparm_exclude_reference_link": "true"}
        reply = await self.http.request("PATCH", f"/api/now/table/{self.options.table}/{child.id}", params=params,
                                        json_body={"parent_incident": parent.id})
        record = self._result(reply, f"link {child.number or child.id} to {parent.number or parent.id}")
        # Table API drops a field the account may not write, without an error: check it held.
        if not isinstance(record, dict) or str(record.get("parent_incident", "")) != parent.id:
            raise TargetError(
                f"{self.name}: {child.number or child.id} did not keep parent_incident {parent.number or parent.id} "
                f"(it reads {record.get('parent_incident') if isinstance(record, dict) else None!r}); is "
                "parent_incident writable by this account?",
                retryable=False,
            )

    async def retitle(self, ticket: Ticket, summary: str) -> None:
        """Set the incident's short_description (a storm parent's count, kept current)."""
        await self._patch(ticket, {"short_description": truncate(summary, self.limits.summary)}, "retitle incident")

    async def close(self) -> None:
        await self.http.close()

    # -- the start-up check ----------------------------------------------------------------------

    async def check(self) -> list[Finding]:
        """Read-only probes: the credentials and the table (one row of it, at most), and correlation_id in
        the field dictionary (sys_dictionary) where the account may read it, else on the row read."""
        table = self.options.table
        table_check, field_check = f"table {table!r}", f"field {CORRELATION_COLUMN!r} on {table!r}"
        try:
            reply = await self.http.request(
                "GET",
                f"/api/now/table/{table}",
                params={"sysparm_limit": "1", "sysparm_fields": f"sys_id,{CORRELATION_COLUMN}",
                        "sysparm_exclude_reference_link": "true"},
            )
        except TargetError as exc:  # the OAuth login failed, or the instance did not answer
            refused = exc.status in (400, 401, 403)
            because = "the credentials were refused" if refused else "the instance did not answer"
            if not refused:  # nothing answered: the table is what failed; the credentials are untested
                return [Finding("credentials", "unchecked", f"not checked: {because}"),
                        Finding(table_check, "failed", str(exc)),
                        Finding(field_check, "unchecked", f"not checked: {because}")]
            return [Finding("credentials", "failed", str(exc)),
                    Finding(table_check, "unchecked", f"not checked: {because}"),
                    Finding(field_check, "unchecked", f"not checked: {because}")]
        if reply.status == 401:
            failure = str(self.http.failure(reply, f"read {table}", _error_text(reply)))
            return [Finding("credentials", "failed", failure),
                    Finding(table_check, "unchecked", "not checked: the credentials were refused"),
                    Finding(field_check, "unchecked", "not checked: the credentials were refused")]
        findings = [Finding("credentials", "ok", "the instance accepts them")]
        rows = reply.json_or_none()
        rows = rows.get("result") if isinstance(rows, dict) and reply.status == 200 else None
        if not isinstance(rows, list):
            findings.append(Finding(table_check, "failed", str(self.http.failure(reply, f"read {table}",
                                                                                  _error_text(reply)))))
            findings.append(Finding(field_check, "unchecked", "not checked: the table does not answer"))
            return findings
        findings.append(Finding(table_check, "ok", "answers"))
        findings.append(await self._check_correlation_field(table, rows))
        return findings

    async def _check_correlation_field(self, table: str, rows: list[Any]) -> Finding:
        what = f"field {CORRELATION_COLUMN!r} on {table!r}"
        tables = sorted({table, CORRELATION_DEFINED_ON})
        reply = await self.http.request(
            "GET",
            f"/api/now/table/{DICTIONARY_TABLE}",
            params={"sysparm_query": f"nameIN{','.join(tables)}^element={CORRELATION_COLUMN}",
                    "sysparm_fields": "name,element,max_length,active", "sysparm_limit": "10"},
        )
        body = reply.json_or_none()
        entries = body.get("result") if isinstance(body, dict) and reply.status == 200 else None
        if isinstance(entries, list):
            # An ignored clause returns other columns' rows: only rows naming the column count.
            mine = [e for e in entries if isinstance(e, dict) and e.get("element") == CORRELATION_COLUMN
                    and e.get("name") in tables]
            if mine:
                length = max(_int(e.get("max_length")) for e in mine)
                where = ", ".join(sorted({str(e["name"]) for e in mine}))
                if 0 < length < LONGEST_KEY:
                    return Finding(what, "failed", f"{DICTIONARY_TABLE} gives it max_length {length} (on {where}): "
                                   f"keys of up to {LONGEST_KEY} characters would be cut; lengthen it")
                return Finding(what, "ok", f"in {DICTIONARY_TABLE} (on {where}, max_length {length or '?'})")
            if len(entries) == len(mine):  # the dictionary was readable and has no such column
                return Finding(what, "failed", f"{DICTIONARY_TABLE} lists no {CORRELATION_COLUMN} on "
                               f"{' or '.join(tables)} (or an ACL hides its rows)")
        # The dictionary is closed to this account: a row of the table shows whether the column exists.
        why = (f"{DICTIONARY_TABLE} is not readable by this account (HTTP {reply.status})" if entries is None
               else f"{DICTIONARY_TABLE} answered rows that do not name their column (an ACL hides `element`)")
        if rows and isinstance(rows[0], dict):
            if CORRELATION_COLUMN in rows[0]:
                return Finding(what, "ok", f"present on a row of {table} ({why})")
            return Finding(what, "failed", f"a row of {table} has no {CORRELATION_COLUMN} column, or the account may "
                           f"not read it ({why})")
        return Finding(what, "unchecked", f"not checked: {why}, and {table} has no row to look at")

    # -- Table API -------------------------------------------------------------------------------

    def _key(self, incident: Incident) -> str:
        return checked_key(self.name, incident, max_length=FIELD_LIMITS["correlation_key"], forbidden="^")

    async def _query(self, table: str, query: str, fields: str, limit: int) -> list[dict[str, Any]]:
        params = {
            "sysparm_query": query,
            "sysparm_fields": fields,
            "sysparm_limit": str(limit),
            "sysparm_exclude_reference_link": "true",
        }
        reply = await self.http.request("GET", f"/api/now/table/{table}", params=params)
        rows = self._result(reply, f"search {table}")
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise self.http.bad_answer(reply, f"search {table}", "the result is not a list of records")
        if len(rows) > limit:
            raise self.http.bad_answer(
                reply, f"search {table}", f"it returned {len(rows)} rows for sysparm_limit={limit}"
            )
        return rows

    async def _patch(self, ticket: Ticket, values: Mapping[str, str], what: str) -> dict[str, Any]:
        reply = await self.http.request(
            "PATCH",
            f"/api/now/table/{self.options.table}/{ticket.id}",
            params=self._write_params(),
            json_body=dict(values),
        )
        record = self._result(reply, f"{what} {ticket.number or ticket.id}")
        if not isinstance(record, dict):
            raise self.http.bad_answer(reply, what, "the result is not a record")
        return record

    def _write_params(self) -> dict[str, str]:
        params = {"sysparm_fields": _TICKET_FIELDS, "sysparm_exclude_reference_link": "true"}
        if self.options.input_display_value:
            params["sysparm_input_display_value"] = "true"
        return params

    def _result(self, reply: Reply, what: str, ok: tuple[int, ...] = (200,)) -> Any:
        data = self.http.parse_json(reply, what, _error_text, ok)
        if not isinstance(data, dict) or "result" not in data:
            raise self.http.bad_answer(reply, what, "the body has no 'result'")
        return data["result"]

    def _verify_rows(
        self,
        rows: list[dict[str, Any]],
        key: str,
        *,
        exclude_states: set[str] | None = None,
        only_state: str | None = None,
    ) -> None:
        """Every row must carry the key and the asked-for state: otherwise the clause was ignored."""
        for row in rows:
            carried = str(row.get("correlation_id", ""))
            state = str(row.get("state", ""))
            wrong_state = (exclude_states is not None and state in exclude_states) or (
                only_state is not None and state != only_state
            )
            if carried.lower() != key.lower() or wrong_state:
                raise TargetError(
                    f"{self.name}: ServiceNow answered a search for correlation_id {key!r} with "
                    f"{row.get('number') or row.get('sys_id')!s} "
                    f"(correlation_id {carried!r}, state {state!r}): "
                    "it ignored a query clause (field missing, renamed or not readable by this account); "
                    "refusing to pick a ticket from an unfiltered list",
                    retryable=False,
                )

    def _ticket(self, record: Mapping[str, Any], *, resolved: bool) -> Ticket:
        return Ticket(
            id=str(record["sys_id"]), number=str(record.get("number") or "") or None, resolved=resolved
        )

    def _expect_state(self, record: Mapping[str, Any], state: str, ticket: Ticket, what: str) -> None:
        got = str(record.get("state", ""))
        if got != state:
            raise TargetError(
                f"{self.name}: {what} of {ticket.number or ticket.id} left state {got!r}, not {state!r} "
                "(a business rule, data policy or ACL refused the change)",
                retryable=False,
            )

    def _route_columns(self, incident: Incident) -> dict[str, str]:
        columns: dict[str, str] = {}
        for name, value in incident.fields.items():
            if value is None or value == "":
                continue
            column = ROUTE_FIELD_COLUMNS.get(name, name)
            if column in OWNED_COLUMNS:
                log.warning("%s: route field %r would overwrite %s; ignored", self.name, name, column)
                continue
            columns[column] = str(value)
        return columns

    # -- configuration items ---------------------------------------------------------------------

    def _refuse_scripts(self, values: dict[str, str]) -> dict[str, str]:
        """Record values that ServiceNow would run as a script (`javascript:...`) are left out, logged."""
        for column in [c for c, v in values.items() if is_script(v)]:
            log.warning("%s: value of %s starts with javascript:, which ServiceNow would evaluate; left out",
                        self.name, column)
            del values[column]
        return values

    async def _bind_cis(self, incident: Incident) -> list[tuple[str, Hashable]]:
        """(sys_id, cache key) of the incident's CIs, first by `object_id` (the ARM id), then by name.

        Answers come from the target's CMDB cache when fresh. A CI that cannot be looked up for a
        reason a retry cannot fix is left unbound (the incident matters more than the binding); a
        retryable failure fails the create so it is tried again.
        """
        if self.options.ci_binding == "none":
            return []
        bound: list[tuple[str, Hashable]] = []
        for ref in ci_references(incident):
            if any(_UNQUERYABLE.search(v) or is_script(v) for v in (ref.arm_id or "", ref.name)):
                log.warning("%s: CI %r cannot be put in an encoded query; left unbound", self.name, ref)
                continue
            cache_key = ci_key(ref)
            sys_id = await self.ci_cache.lookup(cache_key, lambda ref=ref: self._resolve_ci(ref))
            if sys_id is not None and sys_id not in (s for s, _ in bound):
                bound.append((sys_id, cache_key))
        return bound

    async def _resolve_ci(self, ref: CIRef) -> str | None:
        """The CI's sys_id from cmdb_ci (created if the option says so), or None: what the cache keeps."""
        try:
            sys_id = await self._lookup_ci(ref)
            if sys_id is None and self.options.ci_binding == "create_if_missing":
                sys_id = await self._create_ci(ref)
        except TargetError as exc:
            if exc.retryable:
                raise
            log.warning("%s: CI %s left unbound: %s", self.name, ref.arm_id or ref.name, exc)
            return None
        if sys_id is None:
            log.info("%s: CI %s not found in cmdb_ci; left unbound", self.name, ref.arm_id or ref.name)
        return sys_id

    async def _lookup_ci(self, ref: CIRef) -> str | None:
        if ref.arm_id:
            # Encoded-query equality is case-insensitive on ServiceNow's database; the comparison
            # below also guards against an ignored clause.
            rows = await self._query("cmdb_ci", f"object_id={ref.arm_id}", "sys_id,name,object_id", 2)
            rows = [r for r in rows if str(r.get("object_id", "")).lower() == ref.arm_id.lower()]
            if len(rows) == 1:
                return str(rows[0]["sys_id"])
            if len(rows) > 1:
                log.warning("%s: more than one CI has object_id %r; left unbound", self.name, ref.arm_id)
                return None
        rows = await self._query("cmdb_ci", f"name={ref.name}", "sys_id,name", 2)
        rows = [r for r in rows if str(r.get("name", "")).lower() == ref.name.lower()]
        if len(rows) > 1:
            log.warning("%s: more than one CI is named %r; left unbound", self.name, ref.name)
            return None
        return str(rows[0]["sys_id"]) if rows else None

    async def _create_ci(self, ref: CIRef) -> str:
        values = {"name": ref.name}
        if ref.arm_id:
            values["object_id"] = ref.arm_id
        reply = await self.http.request(
            "POST",
            f"/api/now/table/{self.options.ci_class}",
            params={"sysparm_fields": "sys_id,name", "sysparm_exclude_reference_link": "true"},
            json_body=values,
        )
        record = self._result(reply, f"create CI in {self.options.ci_class}", ok=(200, 201))
        if not isinstance(record, dict) or not record.get("sys_id"):
            raise self.http.bad_answer(reply, "create CI", "the result carries no sys_id")
        log.info("%s: created CI %s for %s", self.name, record["sys_id"], ref.arm_id or ref.name)
        return str(record["sys_id"])

    async def _add_affected_ci(self, ticket: Ticket, ci_sys_id: str) -> bool:
        """Link one more CI to the incident; False when ServiceNow refused it (logged, not raised)."""
        try:
            reply = await self.http.request(
                "POST",
                "/api/now/table/task_ci",
                params={"sysparm_fields": "sys_id", "sysparm_exclude_reference_link": "true"},
                json_body={"task": ticket.id, "ci_item": ci_sys_id},
            )
            self._result(reply, "add affected CI", ok=(200, 201))
        except TargetError as exc:
            # The incident exists: failing now would make the caller create it again.
            log.warning("%s: affected CI %s not added to %s: %s", self.name, ci_sys_id, ticket.number, exc)
            return False
        return True


TARGET_CLASS = ServiceNowTarget


# ServiceNow evaluates a query value or field value that starts with `javascript:` on the server (any
# case; it tolerates whitespace around and inside the word), so none is ever sent.
_SCRIPT = re.compile(r"\s*j\s*a\s*v\s*a\s*s\s*c\s*r\s*i\s*p\s*t\s*:", re.IGNORECASE)
# What an encoded query cannot carry in a value: its clause separator, and control characters.
_UNQUERYABLE = re.compile(r"[\^\x00-\x1f]")


def _int(value: Any) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


def sync_state(state: str) -> str:
    """The two-way sync state (relay.targets.TICKET_STATES) of an incident `state` value."""
    return SYNC_STATES.get(state, UNKNOWN_STATE_READS)


def parse_datetime(value: Any) -> datetime | None:
    """A Table API date-time ("YYYY-MM-DD HH:MM:SS", UTC) as an aware datetime; None when it is not one."""
    try:
        return datetime.strptime(str(value), DATETIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def is_script(value: object) -> bool:
    return isinstance(value, str) and _SCRIPT.match(value) is not None


def _error_text(reply: Reply) -> str | None:
    """ServiceNow's `{"error": {"message", "detail"}}`, or None to show the raw body."""
    body = reply.json_or_none()
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None
    parts = [str(error.get(k)) for k in ("message", "detail") if error.get(k)]
    return ": ".join(parts) or None


def from_config(name: str, cfg: Mapping[str, Any], env: Mapping[str, str] = os.environ) -> ServiceNowTarget:
    """Build the target from its YAML block; every mistake is in one TargetConfigError, each naming its key."""
    opts = Options(name, cfg)
    opts.reject_unknown(COMMON_KEYS | OPTION_KEYS | CACHE_KEYS)
    base_url = opts.base_url()
    options = opts.read(ServiceNowOptions)
    cache = read_settings(opts)
    for column in sorted(set(options.defaults) & OWNED_COLUMNS):
        opts.problem(f"defaults.{column}", "is set by the relay itself")
    http = VendorHTTP.from_options(opts, base_url=base_url, auth=_auth(opts, env), logger=log)
    opts.check()
    return ServiceNowTarget(name, http, options, CICache(cache))


def _auth(opts: Options, env: Mapping[str, str]) -> Auth | None:
    auth = opts.section("auth")
    kind = auth.variant("type", ("basic", "oauth"), "basic")
    if kind is None:
        return None
    if kind == "basic":
        return basic_auth(auth, env)
    auth.reject_unknown({"type", "client_id", "client_secret_env"})
    client_id = auth.text("client_id")
    client_secret = auth.secret("client_secret_env", env)

    async def login(http: VendorHTTP) -> tuple[str, float | None]:
        # Form-encoded, as documented for oauth_token.do (a JSON body is refused).
        reply = await http.request(
            "POST",
            OAUTH_TOKEN_PATH,
            form={"grant_type": "client_credentials", "client_id": client_id, "client_secret": client_secret},
            authenticate=False,
        )
        if reply.status != 200:
            raise http.failure(reply, "OAuth token request (client credentials)")
        if not reply.is_json:
            raise http.not_json(reply, "OAuth token request")
        try:
            data = reply.json()
            token = data["access_token"]
        except (ValueError, KeyError, TypeError):
            raise http.bad_answer(reply, "OAuth token request", "the body has no access_token") from None
        if not isinstance(token, str) or not token:
            raise http.bad_answer(reply, "OAuth token request", "access_token is empty")
        return token, _seconds(data.get("expires_in"))

    return TokenAuth("Bearer", login, default_lifetime=DEFAULT_TOKEN_LIFETIME)


def _seconds(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
