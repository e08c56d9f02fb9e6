"""A fake Request Tracker 5: the REST2 surface the relay uses, checked against RT 5.0.3 itself.

The end-to-end suite runs the real RT; this fake exists for what a real RT will not do on demand
(429, 5xx, slow answers, resets, HTML pages) and for fast unit tests. It keeps RT's quirks:
- a custom field that does not exist, or is not applied to the ticket's queue, is dropped on create
  without an error;
- a comment whose `Status` the lifecycle refuses answers 201 with a message, not an error;
- a comment on a ticket that does not exist answers 400 "Message could not be recorded";
- searches take `query=<TicketSQL|AssetSQL>` (only the shapes the relay sends are understood:
  conditions joined by AND, one level of parentheses holding ORs); `LIKE` is a case-insensitive
  substring match, as RT wraps the value in `%`;
- `PUT /ticket/:id` with `AddMemberOf` links a ticket to its parent and answers 200 with messages,
  also when it refuses the link; the parent shows in `_hyperlinks` as `ref: parent`;
- every comment is a transaction in the ticket's history (`GET /ticket/:id/history`, with `orderby`,
  `order` and `per_page`), its text an attachment (`GET /transaction/:id/attachments`, where a
  collection gives the content as text).
- tickets carry `Creator`, `LastUpdated` (written in UTC, whole seconds: `2026-12-02T10:11:12Z`, as REST2's
  format_datetime does) and `LastUpdatedBy` (a user reference `{"type": "user", "id": <name>}`); a search
  takes `LastUpdated >= '<YYYY-MM-DD HH:MM:SS>'` read in `timezone` (the account's zone, as TicketSQL
  reads dates), `'CF.{..}' IS NOT NULL`, and `orderby=LastUpdated`; `act_as` is a person changing a ticket;
- the read-only lookups of the relay's start-up check, as RT 5.0.3 answers them: `GET /rt` (the
  version), `POST /customfields` (a search by `Name` and `LookupType`; every queue's ticket custom
  fields are of `RT::Queue-RT::Ticket`) and `GET /catalog/:name` (404 `Not Found` when unknown).
Auth: `Authorization: token <t>` or basic.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from typing import Any
from zoneinfo import ZoneInfo

from aiohttp import web

from tests.fakes import FakeServer

# RT's default lifecycle: which status may follow which.
TRANSITIONS = {
    "new": {"open", "stalled", "resolved", "rejected", "deleted"},
    "open": {"new", "stalled", "resolved", "rejected", "deleted"},
    "stalled": {"new", "open", "rejected", "resolved", "deleted"},
    "resolved": {"new", "open", "stalled", "rejected", "deleted"},
    "rejected": {"new", "open", "stalled", "resolved", "deleted"},
    "deleted": {"new", "open", "stalled", "rejected", "resolved"},
}
ACTIVE = ("new", "open", "stalled")
_CONDITION = re.compile(
    r"^\s*(?P<field>'CF\.\{[^}]+\}'|\w+)\s*(?P<op>=|!=|LIKE|>=|<=|>|<)\s*'(?P<value>(?:[^'\\]|\\.)*)'\s*$"
)
_NOT_NULL = re.compile(r"^\s*(?P<field>'CF\.\{[^}]+\}'|\w+)\s+IS\s+NOT\s+NULL\s*$", re.IGNORECASE)
DATE_FIELDS = ("LastUpdated",)


def _message(status: int, text: str) -> web.Response:
    return web.json_response({"message": text}, status=status)


class FakeRequestTracker(FakeServer):
    def __init__(
        self,
        *,
        token: str = "1-14-0123456789abcdef0123456789abcdef",
        username: str = "root",
        password: str = "password",
    ) -> None:
        super().__init__()
        self.token = token
        self.username = username
        self.password = password
        self.queues: dict[str, dict[str, Any]] = {"General": {"id": 1, "cfs": set()}}
        self.catalogs = {"General assets"}
        self.tickets: dict[int, dict[str, Any]] = {}
        self.assets: dict[int, dict[str, Any]] = {}
        self.comments: dict[int, list[str]] = {}
        self.transactions: dict[int, dict[str, Any]] = {}  # id -> {ticket, Type, Content}
        self.status_changes: dict[int, list[str]] = {}  # ticket id -> the statuses it was moved to
        self.timezone = "UTC"  # the zone TicketSQL dates are read in (the account's, else RT's $Timezone)
        self.now = lambda: dt.datetime.now(dt.UTC)  # the clock LastUpdated is written from

    def _touch(self, ticket: dict[str, Any], user: str | None = None) -> None:
        ticket["LastUpdated"] = self.now().astimezone(dt.UTC).replace(microsecond=0)
        ticket["LastUpdatedBy"] = user or self.username

    def act_as(self, user: str, ticket_id: int, status: str) -> None:
        """A person (`user`) moves a ticket to `status` in RT's web UI."""
        ticket = self.tickets[ticket_id]
        ticket["Status"] = status
        self.status_changes.setdefault(ticket_id, []).append(status)
        self._transaction(ticket_id, "Status", "")
        self._touch(ticket, user)

    # -- seeding and inspection ------------------------------------------------------------------

    def add_queue(self, name: str, custom_fields: tuple[str, ...] = ()) -> None:
        self.queues[name] = {"id": len(self.queues) + 1, "cfs": set(custom_fields)}

    def add_ticket(self, queue: str, status: str = "new", **cfs: str) -> dict[str, Any]:
        ticket = {
            "id": len(self.tickets) + 1,
            "Queue": queue,
            "Status": status,
            "Subject": "seeded",
            "CustomFields": dict(cfs),
            "RefersTo": [],
            "MemberOf": [],
            "Creator": self.username,
        }
        self._touch(ticket)
        self.tickets[ticket["id"]] = ticket
        return ticket

    def add_asset(self, name: str, catalog: str = "General assets") -> dict[str, Any]:
        asset = {"id": len(self.assets) + 1, "Name": name, "Catalog": catalog}
        self.assets[asset["id"]] = asset
        return asset

    # -- server ----------------------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/REST/2.0/rt", self.rt_info)
        r.add_post("/REST/2.0/customfields", self.search_custom_fields)
        r.add_get("/REST/2.0/catalog/{name}", self.get_catalog)
        r.add_get("/REST/2.0/queue/{name}", self.get_queue)
        r.add_post("/REST/2.0/queue/{id}/customfields", self.queue_custom_fields)
        r.add_post("/REST/2.0/tickets", self.search_tickets)
        r.add_post("/REST/2.0/ticket", self.create_ticket)
        r.add_get("/REST/2.0/ticket/{id}", self.get_ticket)
        r.add_put("/REST/2.0/ticket/{id}", self.update_ticket)
        r.add_post("/REST/2.0/ticket/{id}/comment", self.comment)
        r.add_get("/REST/2.0/ticket/{id}/history", self.history)
        r.add_get("/REST/2.0/transaction/{id}/attachments", self.transaction_attachments)
        r.add_post("/REST/2.0/assets", self.search_assets)
        r.add_post("/REST/2.0/asset", self.create_asset)

    def error_body(self, status: int) -> Any:
        return {"message": f"injected {status}"}

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if header == f"token {self.token}":
            return True
        if header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            return (user, password) == (self.username, self.password)
        return False

    async def rt_info(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _message(401, "Unauthorized")
        return web.json_response({"Version": "5.0.3", "Plugins": []})

    async def search_custom_fields(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _message(401, "Unauthorized")
        wanted = {c.get("field"): c.get("value") for c in await request.json()}
        names = sorted({cf for q in self.queues.values() for cf in q["cfs"]})
        if wanted.get("LookupType", "RT::Queue-RT::Ticket") != "RT::Queue-RT::Ticket":
            names = []
        items = [{"type": "customfield", "id": str(n)} for n, name in enumerate(names, start=1)
                 if "Name" not in wanted or name == wanted["Name"]]
        return web.json_response({"items": items, "count": len(items), "total": len(items), "page": 1})

    async def get_catalog(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _message(401, "Unauthorized")
        if request.match_info["name"] not in self.catalogs:
            return _message(404, "Not Found")
        return web.json_response({"id": 1, "Name": request.match_info["name"]})

    async def get_queue(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _message(401, "Unauthorized")
        queue = self.queues.get(request.match_info["name"])
        if queue is None:
            return _message(404, "Not Found")
        return web.json_response({"id": str(queue["id"]), "Name": request.match_info["name"]})

    async def queue_custom_fields(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _message(401, "Unauthorized")
        queue = next((q for q in self.queues.values() if str(q["id"]) == request.match_info["id"]), None)
        if queue is None:
            return _message(404, "Not Found")
        wanted = {c.get("value") for c in await request.json() if c.get("field") == "Name"}
        items = [{"type": "customfield", "id": name} for name in sorted(queue["cfs"]) if name in wanted]
        return web.json_response({"items": items, "count": len(items), "total": len(items), "page": 1})

    async def search_tickets(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _message(401, "Unauthorized")
        form = await request.post()
        try:
            conditions = _parse(str(form.get("query", "")))
        except ValueError as exc:
            return _message(400, str(exc))
        rows = [
            t for t in self.tickets.values() if all(any(self._ticket_holds(t, *c) for c in g) for g in conditions)
        ]
        order_by = str(form.get("orderby", "id"))
        rows.sort(key=lambda t: (t[order_by], t["id"]), reverse=form.get("order") == "DESC")
        per_page = int(str(form.get("per_page", "20")))
        items = [self._ticket_json(t) for t in rows[:per_page]]
        return web.json_response(
            {"items": items, "count": len(items), "total": len(rows), "page": 1, "per_page": per_page}
        )

    async def create_ticket(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _message(401, "Unauthorized")
        body = await request.json()
        queue = self.queues.get(body.get("Queue", ""))
        if queue is None:
            return _message(400, "Could not create ticket. Queue not set")
        # RT drops custom fields that are not applied to the queue, silently.
        cfs = {k: v for k, v in (body.get("CustomFields") or {}).items() if k in queue["cfs"]}
        ticket = self.add_ticket(body["Queue"], **cfs)
        ticket.update(
            Subject=body.get("Subject"),
            Content=body.get("Content"),
            Priority=body.get("Priority"),
            Requestor=body.get("Requestor"),
        )
        ticket["RefersTo"] = list(body.get("RefersTo") or [])
        return web.json_response(
            {"id": str(ticket["id"]), "type": "ticket"},
            status=201,
            headers={"Location": f"/REST/2.0/ticket/{ticket['id']}"},
        )

    async def get_ticket(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _message(401, "Unauthorized")
        ticket = self.tickets.get(int(request.match_info["id"]))
        if ticket is None:
            return _message(404, "Not Found")
        return web.json_response(self._ticket_json(ticket))

    async def update_ticket(self, request: web.Request) -> web.Response:
        """PUT /ticket/:id: `Subject` and links (`AddMemberOf`: one id or a list). As RT does, a link to a
        ticket that does not exist is refused in the answer's messages with status 200, not an error."""
        if not self._authorized(request):
            return _message(401, "Unauthorized")
        ticket = self.tickets.get(int(request.match_info["id"]))
        if ticket is None:
            return _message(404, "Not Found")
        body = await request.json()
        messages = []
        if "Subject" in body:
            messages.append(f"Subject changed from '{ticket['Subject']}' to '{body['Subject']}'")
            ticket["Subject"] = body["Subject"]
        wanted = body.get("AddMemberOf")
        for parent in wanted if isinstance(wanted, list) else [wanted] if wanted is not None else []:
            if not str(parent).isdigit() or int(parent) not in self.tickets:
                messages.append(f"Couldn't resolve '{parent}' into a Link.")
            elif str(parent) in ticket["MemberOf"]:
                messages.append("Link already exists")
            else:
                ticket["MemberOf"].append(str(parent))
                messages.append(f"Ticket {ticket['id']} member of Ticket {parent}.")
        self._touch(ticket)
        return web.json_response(messages)

    async def comment(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _message(401, "Unauthorized")
        ticket = self.tickets.get(int(request.match_info["id"]))
        if ticket is None:
            return _message(400, "Message could not be recorded")
        body = await request.json()
        self.comments.setdefault(ticket["id"], []).append(body.get("Content", ""))
        self._transaction(ticket["id"], "Comment", body.get("Content", ""))
        self._touch(ticket)
        messages = ["Comments added"]
        status = body.get("Status")
        if status:
            if status not in TRANSITIONS:
                messages.append(f"Status '{status}' isn't a valid status for this ticket.")
            elif status not in TRANSITIONS[ticket["Status"]]:
                messages.append(f"You can't change status from '{ticket['Status']}' to '{status}'.")
            else:
                messages.append(f"Status changed from '{ticket['Status']}' to '{status}'")
                ticket["Status"] = status
                self.status_changes.setdefault(ticket["id"], []).append(status)
                self._transaction(ticket["id"], "Status", "")
        return web.json_response(messages, status=201)

    async def history(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _message(401, "Unauthorized")
        ticket_id = int(request.match_info["id"])
        if ticket_id not in self.tickets:
            return _message(404, "Not Found")
        rows = [(tid, t) for tid, t in self.transactions.items() if t["ticket"] == ticket_id]
        rows.sort(key=lambda pair: pair[0], reverse=request.query.get("order") == "DESC")
        per_page = int(request.query.get("per_page", "20"))
        items = [{"id": str(tid), "type": "transaction", "Type": t["Type"]} for tid, t in rows[:per_page]]
        return web.json_response({"items": items, "count": len(items), "total": len(rows), "page": 1})

    async def transaction_attachments(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _message(401, "Unauthorized")
        txn = self.transactions.get(int(request.match_info["id"]))
        if txn is None:
            return _message(404, "Not Found")
        items = [{"id": request.match_info["id"], "type": "attachment", "Content": txn["Content"]}]
        return web.json_response({"items": items, "count": 1, "total": 1, "page": 1})

    async def search_assets(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _message(401, "Unauthorized")
        form = await request.post()
        try:
            conditions = _parse(str(form.get("query", "")))
        except ValueError as exc:
            return _message(400, str(exc))
        rows = [
            a
            for a in self.assets.values()
            if all(any(_holds(str(a.get(f, "")), op, v) for f, op, v in group) for group in conditions)
        ]
        items = [{"id": str(a["id"]), "type": "asset", "Name": a["Name"]} for a in rows]
        return web.json_response({"items": items, "count": len(items), "total": len(items), "page": 1})

    async def create_asset(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _message(401, "Unauthorized")
        body = await request.json()
        if body.get("Catalog") not in self.catalogs:
            return _message(400, "Invalid Catalog")
        asset = self.add_asset(body["Name"], body["Catalog"])
        return web.json_response({"id": str(asset["id"]), "type": "asset"}, status=201)

    # -- helpers ---------------------------------------------------------------------------------

    def _transaction(self, ticket_id: int, kind: str, content: str) -> None:
        self.transactions[len(self.transactions) + 1] = {"ticket": ticket_id, "Type": kind, "Content": content}

    def _ticket_holds(self, ticket: dict[str, Any], field: str, op: str, value: str) -> bool:
        if op == "IS NOT NULL":
            held = ticket["CustomFields"].get(field[5:-2]) if field.startswith("'CF.{") else ticket.get(field)
            return held not in (None, "")
        if field in DATE_FIELDS:
            when = dt.datetime.fromisoformat(value).replace(tzinfo=ZoneInfo(self.timezone)).astimezone(dt.UTC)
            actual_at: dt.datetime = ticket[field]
            return {">=": actual_at >= when, ">": actual_at > when, "<=": actual_at <= when,
                    "<": actual_at < when, "=": actual_at == when}[op]
        if field.startswith("'CF.{"):
            actual = str(ticket["CustomFields"].get(field[5:-2], ""))
        elif field == "Status" and value == "__Active__":
            return (ticket["Status"] in ACTIVE) == (op == "=")
        else:
            actual = str(ticket.get(field, ""))
        return _holds(actual, op, value)

    def _ticket_json(self, ticket: dict[str, Any]) -> dict[str, Any]:
        cfs = [
            {"name": name, "values": [value], "type": "customfield"}
            for name, value in ticket["CustomFields"].items()
        ]
        links = [
            {"ref": "refers-to", "type": "asset", "id": uri.split(":", 1)[1]} for uri in ticket["RefersTo"]
        ] + [{"ref": "parent", "type": "ticket", "id": parent} for parent in ticket.get("MemberOf", [])]
        return {
            "id": str(ticket["id"]),
            "type": "ticket",
            "Status": ticket["Status"],
            "Subject": ticket["Subject"],
            "CustomFields": cfs,
            "Creator": {"type": "user", "id": ticket["Creator"], "_url": f"/REST/2.0/user/{ticket['Creator']}"},
            "LastUpdated": ticket["LastUpdated"].strftime("%Y-%m-%dT%H:%M:%SZ"),
            "LastUpdatedBy": {"type": "user", "id": ticket["LastUpdatedBy"],
                              "_url": f"/REST/2.0/user/{ticket['LastUpdatedBy']}"},
            "_hyperlinks": links,
        }


def _parse(query: str) -> list[list[tuple[str, str, str]]]:
    """`a AND (b OR c)`: a list (AND) of lists (OR) of conditions; one level of parentheses."""
    groups = []
    for part in re.split(r"\s+AND\s+(?![^(]*\))", query.strip()):
        part = part.strip()
        if part.startswith("(") and part.endswith(")"):
            part = part[1:-1]
        group = []
        for alternative in re.split(r"\s+OR\s+", part):
            if (nn := _NOT_NULL.match(alternative)) is not None:
                group.append((nn["field"], "IS NOT NULL", ""))
                continue
            m = _CONDITION.match(alternative)
            if m is None:
                raise ValueError(f"Wrong query, expecting a VALUE in '{alternative}'")
            group.append((m["field"], m["op"], re.sub(r"\\(.)", r"\1", m["value"])))
        groups.append(group)
    return groups


def _holds(actual: str, op: str, value: str) -> bool:
    if op == "LIKE":
        return value.lower() in actual.lower()
    equal = actual == value  # SQLite compares case-sensitively
    return equal if op == "=" else not equal
