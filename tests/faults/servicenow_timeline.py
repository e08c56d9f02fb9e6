"""The ServiceNow fake with a timeline: when each call came, which alert it was for, how it was answered,
and when an incident was actually created or resolved (a hung call applies after the caller gave up).

The fault tests read it to check what only the target can see: the order in which one alert's incident
was opened and resolved, and the pause the relay left after an answer carrying Retry-After.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

from aiohttp import web

from tests.fakes.servicenow import FakeServiceNow

_QUERY_KEY = re.compile(r"correlation_id(?:=|STARTSWITH)([^^]+)")  # find, and search by key prefix
_QUERY_RECORD = re.compile(r"(?:^|\^)(?:sys_id|element_id)=([^^]+)")  # read: the incident, its work notes
_RECORD_PATH = re.compile(r"/api/now/(?:v1/)?table/incident/([0-9a-f]+)$")


@dataclass(frozen=True)
class Answered:
    """One call: when it arrived and was answered (time.monotonic), and what it was."""

    started: float
    ended: float
    method: str
    path: str
    correlation_id: str | None  # the alert it was for, None when the call names none
    status: int  # 0: the connection was dropped instead of answered
    retry_after: str | None
    state: str | None  # the incident state a PATCH asked for


class TimedServiceNow(FakeServiceNow):
    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.timeline: list[Answered] = []
        self.in_flight = 0  # calls being answered now (a hung one counts until it lands)
        self.applied: list[tuple[float, str, str]] = []  # (time.monotonic, "created" | "resolved", correlation id)

    async def create_record(self, request: web.Request) -> web.Response:
        before = set(self.incidents)
        resp = await super().create_record(request)
        for sys_id in set(self.incidents) - before:
            self.applied.append((time.monotonic(), "created", self.incidents[sys_id].get("correlation_id", "")))
        return resp

    async def update_record(self, request: web.Request) -> web.Response:
        record = self.incidents.get(request.match_info["sys_id"]) if request.match_info["table"] == "incident" else None
        was = record.get("state") if record else None
        resp = await super().update_record(request)
        if record is not None and resp.status == 200 and record.get("state") == "6" and was != "6":
            self.applied.append((time.monotonic(), "resolved", record.get("correlation_id", "")))
        return resp

    @web.middleware
    async def _record_and_misbehave(self, request: web.Request, handler):  # type: ignore[no-untyped-def]
        started = time.monotonic()
        body = await request.read()  # cached: the fake's own middleware reads it again
        key, state = self._alert_of(request, body)
        self.in_flight += 1
        try:
            resp = await super()._record_and_misbehave(request, handler)
        except BaseException:
            self.timeline.append(Answered(started, time.monotonic(), request.method, request.path, key, 0, None,
                                          state))
            raise
        finally:
            self.in_flight -= 1
        transport = request.transport
        dropped = transport is None or transport.is_closing()
        self.timeline.append(Answered(started, time.monotonic(), request.method, request.path, key,
                                      0 if dropped else resp.status, resp.headers.get("Retry-After"), state))
        return resp

    def _alert_of(self, request: web.Request, body: bytes) -> tuple[str | None, str | None]:
        """The correlation id a call is about (from its query, its body or the record it names)."""
        match = _QUERY_KEY.search(request.query.get("sysparm_query", ""))
        if match:
            return match.group(1), None
        named = _QUERY_RECORD.search(request.query.get("sysparm_query", ""))
        if named and named.group(1) in self.incidents:
            return self.incidents[named.group(1)].get("correlation_id"), None
        doc = {}
        if body:
            try:
                doc = json.loads(body)
            except ValueError:
                doc = {}
        state = str(doc["state"]) if isinstance(doc, dict) and "state" in doc else None
        if isinstance(doc, dict) and doc.get("correlation_id"):
            return str(doc["correlation_id"]), state
        record = _RECORD_PATH.search(request.path)
        if record and record.group(1) in self.incidents:
            return self.incidents[record.group(1)].get("correlation_id"), state
        return None, state

    def calls_for(self, correlation_id: str) -> list[Answered]:
        return [a for a in self.timeline if a.correlation_id == correlation_id]

    def applied_to(self, correlation_id: str) -> list[str]:
        """What happened to this alert's incident, in order: "created", "resolved"."""
        return [what for _, what, key in self.applied if key == correlation_id]

    def steps_twice(self) -> dict[str, list[str]]:
        """Incidents (by number) that got one journal entry (a work note, a resolve or reopen note) more
        than once, with the repeated texts: a step applied twice."""
        repeated: dict[str, list[str]] = {}
        for sys_id, entries in self.journal.items():
            seen: set[tuple[str, str]] = set()
            for entry in entries:
                if entry in seen:
                    repeated.setdefault(self.incidents[sys_id].get("number", sys_id), []).append(entry[1][:60])
                seen.add(entry)
        return repeated

