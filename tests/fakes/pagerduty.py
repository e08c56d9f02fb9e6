"""A fake PagerDuty Events API v2 (`POST /v2/enqueue`), from PagerDuty's developer documentation.

- A trigger with a `dedup_key` that names an open alert of the same routing key is folded into it;
  otherwise it opens a new alert (and incident). After a resolve, a trigger with that key opens a
  NEW incident; a resolve (or acknowledge) for a key with no open alert is accepted and dropped.
- 202 `{"status": "success", "message": "Event processed", "dedup_key"}` on success; 400
  `{"status": "invalid event", "message": "Event object is invalid", "errors": [...]}` for an event
  that breaks the schema (summary over 1024, dedup_key over 255, unknown severity or action, missing
  source); an unknown routing key is 400 too (the integration does not exist).
- The REST API's `GET /incidents?incident_key=&statuses[]=` and `POST /incidents/{id}/notes` (201),
  with `Authorization: Token token=<api token>` (else 401) and a `From` header naming a user (else 400);
  an incident's `incident_key` is the dedup_key of the alert that opened it; `GET /abilities` (any valid
  token, no `From`) lists the account's abilities.
- `rate_limit`: at most that many events per `rate_window` seconds per routing key, then 429 (the
  documented limit is about 120 a minute). Other failure modes come from `FakeServer.inject`.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from tests.fakes import FakeServer

SEVERITIES = ("critical", "error", "warning", "info")
ACTIONS = ("trigger", "acknowledge", "resolve")


def _invalid(*errors: str) -> web.Response:
    return web.json_response({"status": "invalid event", "message": "Event object is invalid",
                              "errors": list(errors)}, status=400)


class FakePagerDuty(FakeServer):
    def __init__(self, *, routing_keys: tuple[str, ...] = ("R0UTINGKEY0000000000000000000001",),
                 rate_limit: int | None = None, rate_window: float = 60.0, api_token: str = "pd-rest-token",
                 users: tuple[str, ...] = ("relay@example.com",)) -> None:
        super().__init__()
        self.api_token = api_token
        self.users = set(users)
        self.routing_keys = set(routing_keys)
        self.rate_limit = rate_limit
        self.rate_window = rate_window
        self.incidents: list[dict[str, Any]] = []  # every incident ever opened, in order
        self.events: list[dict[str, Any]] = []  # every accepted event
        self._sent: dict[str, list[float]] = {}

    @property
    def routing_key(self) -> str:
        return sorted(self.routing_keys)[0]

    def open_incident(self, routing_key: str, dedup_key: str) -> dict[str, Any] | None:
        return next((i for i in self.incidents if i["routing_key"] == routing_key and i["dedup_key"] == dedup_key
                     and i["status"] != "resolved"), None)

    def incidents_for(self, dedup_key: str) -> list[dict[str, Any]]:
        return [i for i in self.incidents if i["dedup_key"] == dedup_key]

    def error_body(self, status: int) -> Any:
        return {"status": "error", "message": f"injected {status}"}

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v2/enqueue", self.enqueue)
        app.router.add_get("/incidents", self.list_incidents)
        app.router.add_get("/abilities", self.abilities)
        app.router.add_post("/incidents/{id}/notes", self.add_note)

    async def abilities(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Token token={self.api_token}":
            return web.json_response({"error": {"message": "Unauthorized", "code": 2006}}, status=401)
        return web.json_response({"abilities": ["teams", "read_only_users", "urgencies"]})

    def _rest_refusal(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Authorization") != f"Token token={self.api_token}":
            return web.json_response({"error": {"message": "Unauthorized", "code": 2006}}, status=401)
        return None

    async def list_incidents(self, request: web.Request) -> web.Response:
        refused = self._rest_refusal(request)
        if refused is not None:
            return refused
        key = request.query.get("incident_key")
        statuses = request.query.getall("statuses[]", [])
        found = [i for i in self.incidents if (key is None or i["dedup_key"] == key)
                 and (not statuses or i["status"] in statuses)]
        return web.json_response({"incidents": [{"id": f"PINC{i['number']}", "incident_key": i["dedup_key"],
                                                 "status": i["status"]} for i in found], "more": False})

    async def add_note(self, request: web.Request) -> web.Response:
        refused = self._rest_refusal(request)
        if refused is not None:
            return refused
        if request.headers.get("From") not in self.users:
            return web.json_response({"error": {"message": "Invalid Input Provided", "code": 2001,
                                                "errors": ["A valid user email is required in the From header."]}},
                                     status=400)
        incident = next((i for i in self.incidents if f"PINC{i['number']}" == request.match_info["id"]), None)
        if incident is None:
            return web.json_response({"error": {"message": "Not Found", "code": 2100}}, status=404)
        content = ((await request.json()).get("note") or {}).get("content")
        incident.setdefault("notes", []).append(content)
        return web.json_response({"note": {"id": "PNOTE", "content": content}}, status=201)

    async def enqueue(self, request: web.Request) -> web.Response:
        try:
            event = await request.json()
        except ValueError:
            return _invalid("Event object is not valid JSON")
        if not isinstance(event, dict):
            return _invalid("Event object is not an object")
        key = event.get("routing_key")
        if key not in self.routing_keys:
            return _invalid("'routing_key' is invalid")
        if self.rate_limit is not None:
            now = time.monotonic()
            sent = [t for t in self._sent.get(key, []) if t > now - self.rate_window]
            if len(sent) >= self.rate_limit:
                return web.json_response({"status": "throttle", "message": "Requests for this service are arriving"
                                          " too quickly. Please retry later."}, status=429)
            self._sent[key] = [*sent, now]
        action = event.get("event_action")
        dedup = event.get("dedup_key")
        errors = []
        if action not in ACTIONS:
            errors.append("'event_action' is invalid")
        if dedup is not None and (not isinstance(dedup, str) or len(dedup) > 255):
            errors.append("'dedup_key' must be a string of at most 255 characters")
        if action != "trigger" and not dedup:
            errors.append("'dedup_key' is required for acknowledge and resolve events")
        payload = event.get("payload")
        if action == "trigger":
            if not isinstance(payload, dict):
                errors.append("'payload' is missing or not an object")
            else:
                summary = payload.get("summary")
                if not isinstance(summary, str) or not summary or len(summary) > 1024:
                    errors.append("'payload.summary' is missing or over 1024 characters")
                if not payload.get("source"):
                    errors.append("'payload.source' is missing")
                if payload.get("severity") not in SEVERITIES:
                    errors.append("'payload.severity' is invalid")
        if errors:
            return _invalid(*errors)
        dedup = dedup or f"pd-{len(self.events) + 1:08d}"
        self.events.append(event)
        current = self.open_incident(key, dedup)
        if action == "trigger":
            if current is None:
                self.incidents.append({"number": len(self.incidents) + 1, "routing_key": key, "dedup_key": dedup,
                                       "status": "triggered", "payload": payload, "links": event.get("links", []),
                                       "alerts": 1})
            else:
                current["alerts"] += 1  # folded into the open alert: no new incident
        elif current is not None:
            current["status"] = "resolved" if action == "resolve" else "acknowledged"
        return web.json_response({"status": "success", "message": "Event processed", "dedup_key": dedup},
                                 status=202)
