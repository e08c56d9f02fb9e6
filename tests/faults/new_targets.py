"""The Jira and PagerDuty fakes as the fault tests meet them: a timeline of every call (when, for which
alert, how answered), the RELAY_CONFIG block and environment of each, and what each shows per alert.

Siblings of `servicenow_timeline.py`, so the SIGKILL and outage tests run for these targets too.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakes.jira import FakeJira
from tests.fakes.pagerduty import FakePagerDuty

LABEL_PREFIX = "azure-alert-"


@dataclass(frozen=True)
class Answered:
    started: float
    ended: float
    method: str
    path: str
    correlation_id: str | None
    status: int  # 0: the connection was dropped instead of answered
    retry_after: str | None


class _Timeline:
    """Mixed into a fake: every call on the timeline, with the alert it was for."""

    timeline: list[Answered]
    in_flight: int

    def _alert_of(self, request: web.Request, doc: Any) -> str | None:
        raise NotImplementedError

    @web.middleware
    async def _record_and_misbehave(self, request: web.Request, handler):  # type: ignore[no-untyped-def]
        started = time.monotonic()
        body = await request.read()
        try:
            doc = json.loads(body) if body else {}
        except ValueError:
            doc = {}
        key = self._alert_of(request, doc)
        self.in_flight += 1
        try:
            resp = await super()._record_and_misbehave(request, handler)  # type: ignore[misc]
        except BaseException:
            self.timeline.append(Answered(started, time.monotonic(), request.method, request.path, key, 0, None))
            raise
        finally:
            self.in_flight -= 1
        transport = request.transport
        dropped = transport is None or transport.is_closing()
        self.timeline.append(Answered(started, time.monotonic(), request.method, request.path, key,
                                      0 if dropped else resp.status, resp.headers.get("Retry-After")))
        return resp

    def calls_for(self, correlation_id: str) -> list[Answered]:
        return [a for a in self.timeline if a.correlation_id == correlation_id]


class TimedJira(_Timeline, FakeJira):
    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.timeline = []
        self.in_flight = 0

    def _alert_of(self, request: web.Request, doc: Any) -> str | None:
        if isinstance(doc, dict):
            jql = str(doc.get("jql", ""))
            if LABEL_PREFIX in jql:
                return jql.split(LABEL_PREFIX, 1)[1].split('"', 1)[0]
            labels = (doc.get("fields") or {}).get("labels") or []
            if labels:
                return str(labels[0])[len(LABEL_PREFIX):]
        parts = request.path.split("/")
        if "issue" in parts and parts.index("issue") + 1 < len(parts):
            issue = self.issues.get(parts[parts.index("issue") + 1])
            if issue and issue["fields"]["labels"]:
                return issue["fields"]["labels"][0][len(LABEL_PREFIX):]
        return None

    # What the tests check, per correlation key.
    def tickets_by_key(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for issue in self.issues.values():
            out.setdefault(issue["fields"]["labels"][0][len(LABEL_PREFIX):], []).append(issue["key"])
        return out

    def resolved(self, key: str) -> bool:
        return any(self.issues[k]["fields"]["status"]["name"] == "Resolved" for k in self.tickets_by_key()[key])

    def steps_twice(self) -> dict[str, list[str]]:
        """Issues that got one comment (a note or a resolve note) more than once."""
        twice: dict[str, list[str]] = {}
        for issue in self.issues.values():
            texts = [json.dumps(c["body"], sort_keys=True) for c in issue["comments"]]
            repeated = [t[:60] for i, t in enumerate(texts) if t in texts[:i]]
            if repeated:
                twice[issue["key"]] = repeated
        return twice

    def target_block(self, timeout: float, ci_binding: str = "none") -> str:
        return f"""\
  itsm:
    kind: jira_service_management
    base_url: {self.url}
    project_key: {self.project}
    auth: {{type: api_token, email: {self.email}, token_env: JIRA_TOKEN}}
    timeout_seconds: {timeout}
"""

    def env(self) -> dict[str, str]:
        return {"JIRA_TOKEN": self.token}


class TimedPagerDuty(_Timeline, FakePagerDuty):
    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.timeline = []
        self.in_flight = 0

    def _alert_of(self, request: web.Request, doc: Any) -> str | None:
        return str(doc["dedup_key"]) if isinstance(doc, dict) and doc.get("dedup_key") else None

    def tickets_by_key(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for incident in self.incidents:
            out.setdefault(incident["dedup_key"], []).append(str(incident["number"]))
        return out

    def resolved(self, key: str) -> bool:
        return any(i["status"] == "resolved" for i in self.incidents_for(key))

    def steps_twice(self) -> dict[str, list[str]]:
        """Keys whose events PagerDuty saw out of order: a trigger after the resolve. (A trigger sent twice
        is folded into its open alert, and a resolve sent twice is dropped: both are harmless.)"""
        wrong: dict[str, list[str]] = {}
        for key in self.tickets_by_key():
            actions = [e["event_action"] for e in self.events if e.get("dedup_key") == key]
            if "resolve" in actions and "trigger" in actions[actions.index("resolve"):]:
                wrong[key] = actions
        return wrong

    def target_block(self, timeout: float) -> str:
        return f"""\
  itsm:
    kind: pagerduty
    base_url: {self.url}
    routing_key_env: PD_ROUTING_KEY
    timeout_seconds: {timeout}
"""

    def env(self) -> dict[str, str]:
        return {"PD_ROUTING_KEY": self.routing_key}


def timed_fake(kind: str) -> TimedJira | TimedPagerDuty:
    # Jira's search lags a second behind a create, as Cloud's search/jql does (shorter than any lease).
    return TimedJira(search_lag=1.0) if kind == "jira_service_management" else TimedPagerDuty()


KINDS = ["jira_service_management", "pagerduty"]
