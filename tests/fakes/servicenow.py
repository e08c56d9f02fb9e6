"""A fake ServiceNow instance: the Table API surface the relay uses, from ServiceNow's documentation.

Implemented: `POST /oauth_token.do` (form-encoded client credentials or password grant; JSON is
refused), basic and bearer auth, and for `incident`, `cmdb_ci` (and `cmdb_ci_*` class tables, which
share the base table's rows) and `task_ci`: `GET` with `sysparm_query` / `sysparm_fields` /
`sysparm_limit` / `sysparm_offset` and `X-Total-Count`, `POST` (201 + Location), `PATCH`/`PUT`.

Behaviour kept from the real thing, because the relay must survive it:
- an invalid query clause (unknown or unreadable field) is IGNORED and every row matches, unless
  `invalid_query_returns_no_rows` (the `glide.invalid_query.returns_no_rows` property) is set;
- unknown fields in a write are dropped silently; values come back as strings;
- string comparisons are case-insensitive (the instance database's collation);
- Resolved (6) and Closed (7) need `close_code` and `close_notes` (data policy, 403);
- Closed incidents are read-only (ACL, 403); journal fields (`work_notes`, `comments`) append;
- the stock parent/child state sync (business rules on incident): when a parent incident is Resolved,
  its open children (`parent_incident`) are Resolved too, with the parent's close code and close notes
  copied; when a parent is set back to In Progress (reopened by an ITIL user), its Resolved children are.
- every insert and update stamps the record's `sys_updated_on` (UTC, "YYYY-MM-DD HH:MM:SS", the Table
  API's value without display values) and `sys_updated_by` (the user name of the account that made the
  change; a business rule's change is the session user's), `sys_created_on`/`sys_created_by` on insert;
  a work note alone is an update too. `update_as(sys_id, user, ...)` is a person's change in the UI.
  Encoded queries compare date-times given as text as UTC (`sys_updated_on>=2026-01-01 10:00:00`), and
  `>`, `>=`, `<`, `<=` compare the stored text, which for that format is the time order.
Journal entries are readable as rows of `sys_journal_field` (`element_id`, `element`, `value`,
`sys_created_on`), one per entry, as on an instance.
The field dictionary `sys_dictionary` (`name` the table, `element` the column, `max_length`,
`internal_type`, `active`) lists incident's columns, the ones incident inherits (`correlation_id`,
`correlation_display`, `short_description`, ...) on `task`, where an instance defines them. An account
without the dictionary's read ACL (`dictionary_readable=False`, the default for a role short of admin or
personalize_dictionary) gets 403 "User Not Authorized" for the whole table.
Failure modes come from `FakeServer.inject`; `expire_tokens()` makes every issued token answer 401.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from tests.fakes import FakeServer

INCIDENT_COLUMNS = frozenset(
    {
        "sys_id",
        "number",
        "state",
        "active",
        "short_description",
        "description",
        "correlation_id",
        "correlation_display",
        "urgency",
        "impact",
        "priority",
        "caller_id",
        "assignment_group",
        "category",
        "subcategory",
        "contact_type",
        "cmdb_ci",
        "parent_incident",
        "close_code",
        "close_notes",
        "work_notes",
        "comments",
        "sys_created_on",
        "sys_created_by",
        "sys_updated_on",
        "sys_updated_by",
        "sys_class_name",
    }
)
CI_COLUMNS = frozenset({"sys_id", "name", "object_id", "sys_class_name", "sys_created_on"})
TASK_CI_COLUMNS = frozenset({"sys_id", "task", "ci_item", "sys_created_on"})
JOURNAL_COLUMNS = frozenset({"sys_id", "element_id", "element", "value", "name", "sys_created_on"})
JOURNAL_FIELDS = ("work_notes", "comments")
DICTIONARY_COLUMNS = frozenset({"sys_id", "name", "element", "max_length", "internal_type", "active"})
# Incident's columns that the base table `task` defines (incident extends task), as on an instance.
TASK_COLUMNS = frozenset(
    {"sys_id", "number", "state", "active", "short_description", "description", "correlation_id",
     "correlation_display", "urgency", "impact", "priority", "assignment_group", "contact_type", "cmdb_ci",
     "work_notes", "comments", "sys_created_on", "sys_created_by", "sys_updated_on", "sys_updated_by",
     "sys_class_name"}
)
# How the Table API writes a date-time value (sysparm_display_value=false): UTC, no zone.
DATETIME_FORMAT = "%Y-%m-%d %H:%M:%S"
# Dictionary lengths of the columns above (an instance's defaults); 40 for the rest.
COLUMN_LENGTHS = {"short_description": 160, "description": 4000, "correlation_display": 100,
                  "close_notes": 4000, "work_notes": 4000, "comments": 4000}
_CLAUSE = re.compile(
    r"^(?P<field>[a-z0-9_.]+?)"
    r"(?P<op>NOT IN|IN|!=|>=|<=|>|<|=|LIKE|STARTSWITH|ENDSWITH|ISNOTEMPTY|ISEMPTY)"
    r"(?P<value>.*)$",
    re.DOTALL,
)


def _error(status: int, message: str, detail: str | None = None) -> web.Response:
    return web.json_response(
        {"error": {"message": message, "detail": detail}, "status": "failure"}, status=status
    )


class FakeServiceNow(FakeServer):
    def __init__(
        self,
        *,
        username: str = "relay",
        password: str = "relay-password",
        client_id: str = "relay-client",
        client_secret: str = "relay-secret",
        invalid_query_returns_no_rows: bool = False,
        unreadable_columns: frozenset[str] = frozenset(),
        dictionary_readable: bool = True,
        correlation_id_length: int | None = 100,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        super().__init__()
        self.username = username
        self.password = password
        self.client_id = client_id
        self.client_secret = client_secret
        self.invalid_query_returns_no_rows = invalid_query_returns_no_rows
        # Columns this account may not read (an ACL): queries on them are invalid, results omit them.
        self.unreadable_columns = unreadable_columns
        self.dictionary_readable = dictionary_readable
        # correlation_id's dictionary max_length; None: the instance has no such column at all.
        self.correlation_id_length = correlation_id_length
        # What sys_updated_on says for a change made now (default: the real time, UTC).
        self.clock: Callable[[], datetime] = clock or (lambda: datetime.now(UTC))
        self.incidents: dict[str, dict[str, str]] = {}
        self.cis: dict[str, dict[str, str]] = {}
        self.task_cis: dict[str, dict[str, str]] = {}
        self.journal: dict[str, list[tuple[str, str]]] = {}
        self.tokens: set[str] = set()
        self.tokens_issued = 0
        self._seq = 0

    # -- seeding and inspection ------------------------------------------------------------------

    def add_incident(self, *, by: str = "admin", **values: Any) -> dict[str, str]:
        record = self._new_record("incident", {"state": "1", **{k: str(v) for k, v in values.items()}}, by)
        self.incidents[record["sys_id"]] = record
        return record

    def update_as(self, sys_id: str, user: str, **values: Any) -> dict[str, str]:
        """A person's change in the UI (no data policy here: a form would have asked for the fields)."""
        record = self.incidents[sys_id]
        text = {k: str(v) for k, v in values.items()}
        journal = {k: text.pop(k) for k in JOURNAL_FIELDS if k in text}
        before = record.get("state")
        record.update(text)
        record["active"] = "false" if record.get("state") in ("7", "8") else "true"
        self._stamp(record, user)
        self._sync_children(record, before, user)
        for field_name, note in journal.items():
            self.journal.setdefault(sys_id, []).append((field_name, note))
        return record

    def add_ci(self, name: str, object_id: str = "", sys_class_name: str = "cmdb_ci") -> dict[str, str]:
        record = self._new_record(
            "cmdb_ci", {"name": name, "object_id": object_id, "sys_class_name": sys_class_name}
        )
        self.cis[record["sys_id"]] = record
        return record

    def expire_tokens(self) -> None:
        self.tokens.clear()

    def notes(self, sys_id: str, journal_field: str = "work_notes") -> list[str]:
        return [text for name, text in self.journal.get(sys_id, []) if name == journal_field]

    def incidents_with(self, **match: str) -> list[dict[str, str]]:
        return [r for r in self.incidents.values() if all(r.get(k) == v for k, v in match.items())]

    # -- server ----------------------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/oauth_token.do", self.oauth_token)
        app.router.add_get("/api/now/table/{table}", self.list_records)
        app.router.add_get("/api/now/v1/table/{table}", self.list_records)
        app.router.add_post("/api/now/table/{table}", self.create_record)
        app.router.add_post("/api/now/v1/table/{table}", self.create_record)
        for method in ("PATCH", "PUT"):
            app.router.add_route(method, "/api/now/table/{table}/{sys_id}", self.update_record)
            app.router.add_route(method, "/api/now/v1/table/{table}/{sys_id}", self.update_record)

    def error_body(self, status: int) -> Any:
        if status == 429:
            return {
                "error": {"message": "Rate limit exceeded", "detail": "Rate limit rule 'relay' exceeded"},
                "status": "failure",
            }
        return {
            "error": {"message": "Internal server error", "detail": f"injected {status}"},
            "status": "failure",
        }

    async def oauth_token(self, request: web.Request) -> web.Response:
        if request.content_type != "application/x-www-form-urlencoded":
            return web.json_response(
                {"error": "server_error", "error_description": "access_denied"}, status=401
            )
        form = await request.post()
        grant = form.get("grant_type")
        ok_client = (
            form.get("client_id") == self.client_id and form.get("client_secret") == self.client_secret
        )
        ok_user = grant != "password" or (
            form.get("username") == self.username and form.get("password") == self.password
        )
        if grant not in ("client_credentials", "password") or not ok_client or not ok_user:
            return web.json_response(
                {"error": "server_error", "error_description": "access_denied"}, status=401
            )
        token = secrets.token_urlsafe(24)
        self.tokens.add(token)
        self.tokens_issued += 1
        return web.json_response(
            {"access_token": token, "scope": "useraccount", "token_type": "Bearer", "expires_in": 1799}
        )

    def _user(self, request: web.Request) -> str:
        """Who the call runs as: the basic-auth user, or the user an OAuth client's token acts for."""
        return self.username

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            return header[len("Bearer ") :] in self.tokens
        if header.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(header[len("Basic ") :]).decode().partition(":")
            except ValueError:
                return False
            return user == self.username and password == self.password
        return False

    def _table(self, name: str) -> tuple[dict[str, dict[str, str]], frozenset[str], str | None] | None:
        """(rows, columns, class filter) for a table name; CI class tables share cmdb_ci's rows."""
        if name == "incident":
            return self.incidents, INCIDENT_COLUMNS, None
        if name == "task_ci":
            return self.task_cis, TASK_CI_COLUMNS, None
        if name == "cmdb_ci":
            return self.cis, CI_COLUMNS, None
        if name == "sys_journal_field":
            return self._journal_rows(), JOURNAL_COLUMNS, None
        if name == "sys_dictionary":
            return self._dictionary_rows(), DICTIONARY_COLUMNS, None
        if name.startswith("cmdb_ci_"):
            return self.cis, CI_COLUMNS, name
        return None

    async def list_records(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "User Not Authenticated", "Required to provide Auth information")
        table = self._table(request.match_info["table"])
        if table is None:
            return _error(400, f"Invalid table {request.match_info['table']}")
        if request.match_info["table"] == "sys_dictionary" and not self.dictionary_readable:
            return _error(403, "User Not Authorized", "Not sufficient rights to read sys_dictionary")
        rows, columns, cls = table
        readable = columns - self.unreadable_columns
        candidates = [r for r in rows.values() if cls is None or r.get("sys_class_name") == cls]
        matched = self._apply_query(candidates, request.query.get("sysparm_query", ""), readable)
        total = len(matched)
        offset = int(request.query.get("sysparm_offset", "0"))
        limit = int(request.query.get("sysparm_limit", "10000"))
        page = matched[offset : offset + limit]
        fields = request.query.get("sysparm_fields")
        result = [self._project(r, fields, readable) for r in page]
        return web.json_response({"result": result}, headers={"X-Total-Count": str(total)})

    async def create_record(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "User Not Authenticated", "Required to provide Auth information")
        name = request.match_info["table"]
        table = self._table(name)
        if table is None:
            return _error(400, f"Invalid table {name}")
        rows, columns, cls = table
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "Exception while reading request", "The payload is not valid JSON.")
        values = {k: str(v) for k, v in body.items() if k in columns and k not in ("sys_id", "number")}
        journal = {k: values.pop(k) for k in JOURNAL_FIELDS if k in values}
        if name == "incident":
            values.setdefault("state", "1")
            refused = self._data_policy({}, values)
            if refused:
                return refused
        if cls is not None:
            values["sys_class_name"] = cls
        elif name == "cmdb_ci":
            values.setdefault("sys_class_name", "cmdb_ci")
        record = self._new_record(name, values, self._user(request))
        rows[record["sys_id"]] = record
        for field_name, text in journal.items():
            self.journal.setdefault(record["sys_id"], []).append((field_name, text))
        location = f"{self.url}/api/now/table/{name}/{record['sys_id']}"
        result = self._project(record, request.query.get("sysparm_fields"), columns - self.unreadable_columns)
        return web.json_response({"result": result}, status=201, headers={"Location": location})

    async def update_record(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "User Not Authenticated", "Required to provide Auth information")
        name = request.match_info["table"]
        table = self._table(name)
        if table is None:
            return _error(400, f"Invalid table {name}")
        rows, columns, _ = table
        record = rows.get(request.match_info["sys_id"])
        if record is None:
            return _error(
                404, "No Record found", "Record doesn't exist or ACL restricts the record retrieval"
            )
        if name == "incident" and record.get("state") == "7":
            return _error(403, "Operation Failed", "ACL Exception Update Failed due to security constraints")
        body = await request.json()
        values = {k: str(v) for k, v in body.items() if k in columns and k not in ("sys_id", "number")}
        journal = {k: values.pop(k) for k in JOURNAL_FIELDS if k in values}
        if name == "incident":
            refused = self._data_policy(record, values)
            if refused:
                return refused
        before = record.get("state")
        record.update(values)
        self._stamp(record, self._user(request))
        if name == "incident":
            record["active"] = "false" if record.get("state") in ("7", "8") else "true"
            self._sync_children(record, before, self._user(request))
        for field_name, text in journal.items():
            self.journal.setdefault(record["sys_id"], []).append((field_name, text))
        result = self._project(record, request.query.get("sysparm_fields"), columns - self.unreadable_columns)
        return web.json_response({"result": result})

    # -- helpers ---------------------------------------------------------------------------------

    def _data_policy(self, current: dict[str, str], values: dict[str, str]) -> web.Response | None:
        merged = {**current, **values}
        if merged.get("state") in ("6", "7") and not (merged.get("close_code") and merged.get("close_notes")):
            return _error(
                403,
                "Operation Failed",
                "Data Policy Exception: The following fields are mandatory: "
                "Resolution code, Resolution notes",
            )
        return None

    def _stamp(self, record: dict[str, str], user: str) -> None:
        record["sys_updated_on"] = self.clock().astimezone(UTC).strftime(DATETIME_FORMAT)
        record["sys_updated_by"] = user

    def _sync_children(self, parent: dict[str, str], before: str | None, user: str = "admin") -> None:
        """ServiceNow's parent/child state sync, as its business rules run after an incident update."""
        state = parent.get("state")
        if state == before:
            return
        for child in self.incidents.values():
            if child.get("parent_incident") != parent["sys_id"]:
                continue
            if state == "6" and child.get("state") not in ("6", "7", "8"):
                child.update(state="6", close_code=parent.get("close_code", ""),
                             close_notes=parent.get("close_notes", ""))
                self._stamp(child, user)
                self.journal.setdefault(child["sys_id"], []).append(
                    ("work_notes", f"Resolved by parent incident {parent.get('number')}"))
                self._sync_children(child, None, user)
            elif state == "2" and child.get("state") == "6":
                child["state"] = "2"
                self._stamp(child, user)

    def _journal_rows(self) -> dict[str, dict[str, str]]:
        """The journal as sys_journal_field rows (read-only here: the relay writes through the incident)."""
        rows = {}
        n = 0
        for sys_id, entries in self.journal.items():
            for field_name, text in entries:
                n += 1
                row_id = f"j{n:08d}"
                # Entries of one record are numbered in the order they were written.
                rows[row_id] = {"sys_id": row_id, "element_id": sys_id, "element": field_name, "value": text,
                                "name": "incident", "sys_created_on": f"2026-01-01 {n:08d}"}
        return rows

    def _dictionary_rows(self) -> dict[str, dict[str, str]]:
        """One row per incident column, on `task` for the ones incident inherits."""
        rows = {}
        for n, column in enumerate(sorted(INCIDENT_COLUMNS), start=1):
            length: int | None = COLUMN_LENGTHS.get(column, 40)
            if column == "correlation_id":
                length = self.correlation_id_length
                if length is None:
                    continue
            row_id = f"d{n:08d}"
            rows[row_id] = {"sys_id": row_id, "name": "task" if column in TASK_COLUMNS else "incident",
                            "element": column, "max_length": str(length), "internal_type": "string",
                            "active": "true"}
        return rows

    def _new_record(self, table: str, values: dict[str, str], by: str = "admin") -> dict[str, str]:
        self._seq += 1
        record = {
            "sys_created_by": by,
            "sys_id": secrets.token_hex(16),
            "sys_created_on": f"2026-01-01 {self._seq // 3600:02d}:{self._seq // 60 % 60:02d}:"
            f"{self._seq % 60:02d}",
            **values,
        }
        self._stamp(record, by)
        if table == "incident":
            record["number"] = f"INC{10000 + self._seq:07d}"
            record["active"] = "false" if record.get("state") in ("7", "8") else "true"
            for name in JOURNAL_FIELDS:
                record[name] = ""
        return record

    def _project(
        self, record: dict[str, str], fields: str | None, readable: frozenset[str]
    ) -> dict[str, str]:
        names = [f for f in fields.split(",") if f] if fields else sorted(record)
        return {n: record.get(n, "") for n in names if n in readable and (fields or n in record)}

    def _apply_query(
        self, rows: list[dict[str, str]], query: str, readable: frozenset[str]
    ) -> list[dict[str, str]]:
        groups: list[list[tuple[str, str, str]]] = []  # AND of (OR of conditions)
        order: list[tuple[str, bool]] = []
        for part in query.split("^") if query else []:
            is_or = part.startswith("OR") and not part.startswith("ORDERBY")
            clause = part[2:] if is_or else part
            if clause.startswith("ORDERBYDESC"):
                order.append((clause[len("ORDERBYDESC") :], True))
                continue
            if clause.startswith("ORDERBY"):
                order.append((clause[len("ORDERBY") :], False))
                continue
            m = _CLAUSE.match(clause)
            if m is None or m["field"] not in readable:
                # An invalid clause: ServiceNow ignores it (returns everything) unless told otherwise.
                if self.invalid_query_returns_no_rows:
                    return []
                continue
            condition = (m["field"], m["op"], m["value"])
            if is_or and groups:
                groups[-1].append(condition)
            else:
                groups.append([condition])
        matched = [r for r in rows if all(any(_holds(r, *c) for c in group) for group in groups)]
        for field_name, descending in reversed(order):
            matched.sort(key=lambda r, f=field_name: r.get(f, ""), reverse=descending)
        return matched


def _holds(record: dict[str, str], field_name: str, op: str, value: str) -> bool:
    actual = record.get(field_name, "").lower()
    expected = value.lower()
    if op == "=":
        return actual == expected
    if op == "!=":
        return actual != expected
    if op in ("IN", "NOT IN"):
        inside = actual in [v.strip() for v in expected.split(",")]
        return inside if op == "IN" else not inside
    if op in (">", ">=", "<", "<="):  # the stored text: for date-times "YYYY-MM-DD HH:MM:SS", time order
        return bool(actual) and {">": actual > expected, ">=": actual >= expected,
                                 "<": actual < expected, "<=": actual <= expected}[op]
    if op == "LIKE":
        return expected in actual
    if op == "STARTSWITH":
        return actual.startswith(expected)
    if op == "ENDSWITH":
        return actual.endswith(expected)
    if op == "ISEMPTY":
        return actual == ""
    if op == "ISNOTEMPTY":
        return actual != ""
    return False
