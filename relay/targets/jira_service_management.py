"""Jira Service Management target: an issue (platform API) or a request (Service Management API) per
incident, notes as internal comments, resolve and reopen by workflow transition, CIs from Assets.

Cloud speaks REST v3 (descriptions and comments in Atlassian Document Format, search through the
eventually consistent `/rest/api/3/search/jql`); Data Center speaks v2 (wiki markup, `/rest/api/2/search`).
JQL has no exact match on text, so the search goes by a label derived from the correlation key
(labels match with `=`) and each hit must also carry the key in the issue's entity property.
It has no `read` nor `search` (labels cannot be searched by prefix): its steps make themselves
idempotent instead, a resolve or reopen reads the status first and a comment already among the
latest is not added again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from relay.targets import Finding, Incident, TargetError, TextLimits, Ticket, truncate
from relay.targets.target_config import COMMON_KEYS, Options, option_keys
from relay.targets.vendor_api import (
    Auth,
    CIRef,
    Reply,
    StaticAuth,
    VendorHTTP,
    checked_key,
    ci_references,
)

log = logging.getLogger("relay.targets.jira_service_management")

KIND = "jira_service_management"
DEPLOYMENTS = ("cloud", "data_center")
MODES = ("issue", "request")  # platform issue (project + issue type) or JSM request (service desk + type)
CI_BINDINGS = ("bind_if_found", "none")
# A label holds at most 255 characters and no spaces; the key (<= 64 of [A-Za-z0-9._-]) fits as it is.
LABEL_MAX = 255
# Jira's summary field holds 255 characters; text fields (description, comments) 32767.
SUMMARY_MAX = 255
TEXT_MAX = 32767
# Atlassian's Assets REST API on Cloud lives on its own host, under the site's workspace id.
CLOUD_ASSETS_BASE = "https://api.atlassian.com/jsm/assets/workspace/{workspace}/v1"
DC_ASSETS_PATH = "/rest/assets/1.0"
# The comment property JSM reads to make a comment internal (not shown to the customer).
INTERNAL_COMMENT = {"key": "sd.public.comment", "value": {"internal": True}}
# Fields the target owns: a route field cannot overwrite them.
OWNED_FIELDS = frozenset({"summary", "description", "labels", "project", "issuetype"})
# Statuses the find skips unless nothing else carries the key: done is history the worker may not adopt.
DONE = "done"
# Cloud's search lags behind a create: the ids of issues this process created are passed back to it
# (`reconcileIssues`, at most 50 a call) so that a retry after an unrecorded create finds them.
RECONCILE_KEPT = 50
# Comments are not idempotent: before adding one, the latest are read, and an identical one is not added again.
RECENT_COMMENTS = 20


@dataclass(frozen=True, slots=True)
class JiraOptions:
    """Target-specific options (each field is an option key), with the defaults docs/targets.md lists."""

    deployment: str = field(default="cloud", metadata={"choices": DEPLOYMENTS})
    mode: str = field(default="issue", metadata={"choices": MODES})
    project_key: str | None = None  # mode issue
    issue_type: str = "Incident"  # mode issue: JSM's ITSM projects ship "Incident"
    service_desk_id: str | None = None  # mode request
    request_type_id: str | None = None  # mode request
    label_prefix: str = field(default="azure-alert-", metadata={"max_length": 100})
    property_key: str = "secure-export"  # the issue entity property holding the exact correlation key
    resolve_status: str | None = None  # the transition's target status; else the first into category done
    reopen_status: str | None = None  # else the first transition into category indeterminate, then new
    resolution: str = "Done"  # set when the resolve transition asks for a resolution
    ci_binding: str = field(default="none", metadata={"choices": CI_BINDINGS})
    assets_field: str | None = None  # the Assets object custom field, e.g. customfield_10123
    assets_attribute: str = "ARM ID"  # the object attribute holding the ARM id
    assets_object_type: str | None = None  # narrows the AQL to one object type (its name)
    assets_workspace_id: str | None = None  # Cloud: the site's Assets workspace id
    assets_base_url: str | None = None  # overrides where Assets is called (tests, a proxy)
    defaults: Mapping[str, str] = field(default_factory=dict)  # static fields on every new issue


OPTION_KEYS = option_keys(JiraOptions)


class JiraServiceManagementTarget:
    kind: ClassVar[str] = KIND
    limits: ClassVar[TextLimits] = TextLimits(summary=SUMMARY_MAX, description=TEXT_MAX, note=TEXT_MAX)
    # Jira's default priority scheme: Highest, High, Medium, Low, Lowest.
    severity_fields: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "Sev0": {"priority": "Highest"},
        "Sev1": {"priority": "High"},
        "Sev2": {"priority": "Medium"},
        "Sev3": {"priority": "Low"},
        "Sev4": {"priority": "Lowest"},
    }
    options_class: ClassVar[type] = JiraOptions
    # For the per-target rate limit: API-token traffic meets Jira Cloud's per-second burst limits (per
    # endpoint and method) and a per-issue write limit; 5 a second is a conservative pace, not a quota.
    default_rate_limit_per_second: ClassVar[float] = 5.0

    def ticket_url(self, ticket: Ticket) -> str:
        """The issue's page, by its key (for people: logs, the demo)."""
        return f"{self.http.base_url}/browse/{ticket.number or ticket.id}"

    def __init__(self, name: str, http: VendorHTTP, options: JiraOptions, assets: VendorHTTP | None = None) -> None:
        self.name = name
        self.http = http
        self.options = options
        self.assets = assets
        self.cloud = options.deployment == "cloud"
        self.api = "/rest/api/3" if self.cloud else "/rest/api/2"
        self._created: dict[str, int] = {}  # correlation key -> issue id, the latest RECONCILE_KEPT creates

    # -- the Target protocol ---------------------------------------------------------------------

    async def check(self) -> list[Finding]:
        """Read-only probes: the credentials (`GET /myself`), then the project (issue mode) or the service
        desk and its request type (request mode) the incidents go to."""
        try:
            reply = await self.http.request("GET", f"{self.api}/myself")
        except TargetError as exc:
            return [Finding("site", "failed", str(exc)), Finding("credentials", "unchecked",
                                                                  "not checked: the site did not answer")]
        if reply.status != 200:
            failure = str(self.http.failure(reply, f"read {self.api}/myself", _error_text(reply)))
            return [Finding("credentials", "failed", failure)]
        findings = [Finding("credentials", "ok", "the site accepts them")]
        if self.options.mode == "issue":
            probes = [(f"project {self.options.project_key!r}", f"{self.api}/project/{self.options.project_key}")]
        else:
            desk = f"/rest/servicedeskapi/servicedesk/{self.options.service_desk_id}"
            probes = [(f"service desk {self.options.service_desk_id!r}", desk),
                      (f"request type {self.options.request_type_id!r}",
                       f"{desk}/requesttype/{self.options.request_type_id}")]
        for what, path in probes:
            reply = await self.http.request("GET", path)
            if reply.status == 200:
                findings.append(Finding(what, "ok", "visible to this account"))
            else:
                findings.append(Finding(what, "failed", str(self.http.failure(reply, f"read {what}",
                                                                               _error_text(reply)))))
        return findings

    async def find(self, incident: Incident) -> Ticket | None:
        """The not-done issue carrying the key; else the latest done one (resolved=True); else None."""
        key = self._key(incident)
        issues = await self._search(key, [self._created[key]] if key in self._created else None)
        mine = [i for i in issues if self._carries(i, key)]
        open_ = [i for i in mine if self._category(i) != DONE]
        if len(open_) > 1:
            keys = ", ".join(str(i.get("key")) for i in open_)
            raise TargetError(
                f"{self.name}: more than one open issue carries correlation key {key!r} ({keys}); "
                "resolve or merge the duplicates in Jira, then replay",
                retryable=False,
            )
        if open_:
            return self._ticket(open_[0], resolved=False)
        return self._ticket(mine[0], resolved=True) if mine else None

    async def create(self, incident: Incident) -> Ticket:
        key = self._key(incident)
        label = self._label(key)
        assets = await self._bind_cis(incident)
        fields: dict[str, Any] = dict(self.options.defaults)
        fields.update(self._route_fields(incident))
        fields["summary"] = truncate(incident.summary, self.limits.summary)
        fields["labels"] = [label]
        if assets and self.options.assets_field:
            fields[self.options.assets_field] = assets
        if self.options.mode == "request":
            fields["description"] = incident.description  # the JSM API takes text, on Cloud too
            body = {
                "serviceDeskId": self.options.service_desk_id,
                "requestTypeId": self.options.request_type_id,
                "requestFieldValues": fields,
            }
            reply = await self.http.request("POST", "/rest/servicedeskapi/request", json_body=body)
            data = self.http.parse_json(reply, "create request", _error_text, ok=(200, 201))
            issue_id, issue_key = _pick(data, "issueId"), _pick(data, "issueKey")
            if not issue_id or not issue_key:
                raise self.http.bad_answer(reply, "create request", "the answer carries no issueId/issueKey")
            ticket = Ticket(id=str(issue_id), number=str(issue_key))
            self._remember(key, ticket)
            await self._set_property(ticket, key)
            return ticket
        fields["project"] = {"key": self.options.project_key}
        fields["issuetype"] = {"name": self.options.issue_type}
        fields["description"] = self._text(incident.description)
        body = {"fields": fields, "properties": [{"key": self.options.property_key, "value": {"correlation_key": key}}]}
        reply = await self.http.request("POST", f"{self.api}/issue", json_body=body)
        data = self.http.parse_json(reply, "create issue", _error_text, ok=(200, 201))
        if not _pick(data, "id") or not _pick(data, "key"):
            raise self.http.bad_answer(reply, "create issue", "the answer carries no id/key")
        ticket = Ticket(id=str(data["id"]), number=str(data["key"]))
        self._remember(key, ticket)
        return ticket

    async def note(self, ticket: Ticket, incident: Incident, text: str) -> None:
        await self._comment(ticket, text)

    async def resolve(self, ticket: Ticket, incident: Incident, text: str) -> None:
        # Each step checks first, so a resolve retried after a crash or a hung call is applied once.
        if await self._status_category(ticket) != DONE:
            await self._transition(ticket, "resolve", self.options.resolve_status, (DONE,))
        await self._comment(ticket, text)

    async def reopen(self, ticket: Ticket, incident: Incident, text: str) -> None:
        if await self._status_category(ticket) == DONE:
            await self._transition(ticket, "reopen", self.options.reopen_status, ("indeterminate", "new"))
        await self._comment(ticket, text)

    async def close(self) -> None:
        await self.http.close()
        if self.assets is not None:
            await self.assets.close()

    def _remember(self, key: str, ticket: Ticket) -> None:
        if self.cloud and ticket.id.isdigit():
            self._created.pop(key, None)
            self._created[key] = int(ticket.id)
            while len(self._created) > RECONCILE_KEPT:
                del self._created[next(iter(self._created))]

    # -- search ----------------------------------------------------------------------------------

    def _key(self, incident: Incident) -> str:
        return checked_key(self.name, incident, max_length=LABEL_MAX - len(self.options.label_prefix), forbidden='"\\ ')

    def _label(self, key: str) -> str:
        return f"{self.options.label_prefix}{key}"

    async def _search(self, key: str, reconcile: list[int] | None = None) -> list[dict[str, Any]]:
        jql = f'labels = "{self._label(key)}" ORDER BY created DESC'
        fields = ["status", "labels", "created"]
        if self.cloud:
            body: dict[str, Any] = {"jql": jql, "fields": fields, "properties": [self.options.property_key],
                                    "maxResults": 10}
            if reconcile:
                body["reconcileIssues"] = reconcile
            reply = await self.http.request("POST", "/rest/api/3/search/jql", json_body=body)
        else:
            body = {"jql": jql, "fields": fields, "properties": [self.options.property_key], "maxResults": 10}
            reply = await self.http.request("POST", "/rest/api/2/search", json_body=body)
        data = self.http.parse_json(reply, "search issues", _error_text)
        issues = data.get("issues") if isinstance(data, dict) else None
        if not isinstance(issues, list) or not all(isinstance(i, dict) for i in issues):
            raise self.http.bad_answer(reply, "search issues", "the answer has no list of issues")
        return issues

    def _carries(self, issue: Mapping[str, Any], key: str) -> bool:
        """The exact check JQL cannot make: the entity property holds the key (else the label, exactly)."""
        props = issue.get("properties")
        value = props.get(self.options.property_key) if isinstance(props, Mapping) else None
        if isinstance(value, Mapping) and "correlation_key" in value:
            return value["correlation_key"] == key
        labels = (issue.get("fields") or {}).get("labels") or []
        return self._label(key) in labels

    @staticmethod
    def _category(issue: Mapping[str, Any]) -> str:
        status = (issue.get("fields") or {}).get("status") or {}
        return str((status.get("statusCategory") or {}).get("key", ""))

    @staticmethod
    def _ticket(issue: Mapping[str, Any], *, resolved: bool) -> Ticket:
        return Ticket(id=str(issue.get("id")), number=str(issue.get("key") or "") or None, resolved=resolved)

    # -- writes ----------------------------------------------------------------------------------

    async def _set_property(self, ticket: Ticket, key: str) -> None:
        """A request's property is set after the create (the JSM API takes none); the label still finds it."""
        try:
            reply = await self.http.request(
                "PUT", f"{self.api}/issue/{ticket.number}/properties/{self.options.property_key}",
                json_body={"correlation_key": key},
            )
            if reply.status not in (200, 201):
                raise self.http.failure(reply, "set issue property", _error_text(reply))
        except TargetError as exc:
            # The request exists: failing now would make the caller create it again.
            log.warning("%s: property %s not set on %s (the label still finds it): %s", self.name,
                        self.options.property_key, ticket.number, exc)

    async def _comment(self, ticket: Ticket, text: str) -> None:
        """An internal comment, unless one of the latest already says this (a retried note is added once)."""
        content = self._text(truncate(text, self.limits.note))
        path = f"{self.api}/issue/{ticket.number or ticket.id}/comment"
        reply = await self.http.request("GET", path, params={"orderBy": "-created", "maxResults": str(RECENT_COMMENTS)})
        data = self.http.parse_json(reply, f"read comments of {ticket.number}", _error_text)
        recent = data.get("comments") if isinstance(data, dict) else None
        if not isinstance(recent, list):
            raise self.http.bad_answer(reply, f"read comments of {ticket.number}", "the answer has no comments")
        if any(isinstance(c, dict) and c.get("body") == content for c in recent):
            log.info("%s: %s already carries this comment; not added again", self.name, ticket.number)
            return
        reply = await self.http.request("POST", path, json_body={"body": content, "properties": [INTERNAL_COMMENT]})
        self.http.parse_json(reply, f"comment on {ticket.number}", _error_text, ok=(200, 201))

    async def _status_category(self, ticket: Ticket) -> str:
        reply = await self.http.request("GET", f"{self.api}/issue/{ticket.number or ticket.id}",
                                        params={"fields": "status"})
        data = self.http.parse_json(reply, f"read {ticket.number}", _error_text)
        if not isinstance(data, dict):
            raise self.http.bad_answer(reply, f"read {ticket.number}", "the answer is not an issue")
        return self._category(data)

    async def _transition(self, ticket: Ticket, what: str, status: str | None, categories: tuple[str, ...]) -> None:
        path = f"{self.api}/issue/{ticket.number or ticket.id}/transitions"
        reply = await self.http.request("GET", path, params={"expand": "transitions.fields"})
        data = self.http.parse_json(reply, f"{what} {ticket.number}: list transitions", _error_text)
        transitions = data.get("transitions") if isinstance(data, dict) else None
        if not isinstance(transitions, list):
            raise self.http.bad_answer(reply, f"{what} {ticket.number}", "the answer has no transitions")
        chosen = choose_transition(transitions, status, categories)
        if chosen is None:
            offered = ", ".join(f"{t.get('name')} -> {(t.get('to') or {}).get('name')}" for t in transitions)
            wanted = f"status {status!r}" if status else f"status category {' or '.join(categories)}"
            raise TargetError(
                f"{self.name}: {what} of {ticket.number}: no transition leads to {wanted} from its status "
                f"(offered: {offered or 'none'}); set {what}_status to one of the statuses its workflow offers",
                retryable=False,
            )
        body: dict[str, Any] = {"transition": {"id": str(chosen["id"])}}
        if "resolution" in (chosen.get("fields") or {}):
            body["fields"] = {"resolution": {"name": self.options.resolution}}
        reply = await self.http.request("POST", path, json_body=body)
        if reply.status != 204:
            raise self.http.failure(reply, f"{what} {ticket.number}", _error_text(reply))

    def _text(self, text: str) -> Any:
        """The description or comment as each API wants it: ADF on Cloud v3, wiki markup on v2."""
        return adf(text) if self.cloud else wiki_text(text)

    def _route_fields(self, incident: Incident) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in incident.fields.items():
            if value is None or value == "":
                continue
            if name in OWNED_FIELDS:
                log.warning("%s: route field %r is set by the relay; ignored", self.name, name)
                continue
            # priority and other named options take {"name": ...}; a plain custom field takes its value.
            out[name] = {"name": str(value)} if name == "priority" else value
        return out

    # -- configuration items (Assets) ------------------------------------------------------------

    async def _bind_cis(self, incident: Incident) -> list[dict[str, str]]:
        """The Assets objects whose ARM-id attribute names the incident's resources; missing ones unbound."""
        if self.options.ci_binding == "none" or self.assets is None:
            return []
        bound: list[dict[str, str]] = []
        for ref in ci_references(incident):
            if not ref.arm_id or any(c in ref.arm_id for c in '"\\') or any(ord(c) < 32 for c in ref.arm_id):
                continue
            try:
                found = await self._lookup(ref)
            except TargetError as exc:
                if exc.retryable:
                    raise
                log.warning("%s: CI %s left unbound: %s", self.name, ref.arm_id, exc)
                continue
            if found is None:
                log.info("%s: no Assets object has %s %s; left unbound", self.name, self.options.assets_attribute,
                         ref.arm_id)
            elif found not in bound:
                bound.append(found)
        return bound

    async def _lookup(self, ref: CIRef) -> dict[str, str] | None:
        assert self.assets is not None and ref.arm_id
        aql = f'"{self.options.assets_attribute}" = "{ref.arm_id}"'
        if self.options.assets_object_type:
            aql = f'objectType = "{self.options.assets_object_type}" AND {aql}'
        if self.cloud:
            reply = await self.assets.request("POST", "/object/aql", params={"maxResults": "2"},
                                              json_body={"qlQuery": aql})
            data = self.assets.parse_json(reply, "Assets AQL search", _error_text)
            objects = data.get("values") if isinstance(data, dict) else None
        else:
            reply = await self.assets.request("GET", "/aql/objects", params={"qlQuery": aql, "resultPerPage": "2"})
            data = self.assets.parse_json(reply, "Assets AQL search", _error_text)
            objects = data.get("objectEntries") if isinstance(data, dict) else None
        if not isinstance(objects, list):
            raise self.assets.bad_answer(reply, "Assets AQL search", "the answer has no list of objects")
        if len(objects) > 1:
            log.warning("%s: more than one Assets object has %s %s; left unbound", self.name,
                        self.options.assets_attribute, ref.arm_id)
            return None
        if not objects:
            return None
        obj = objects[0]
        if self.cloud:
            return {"workspaceId": str(self.options.assets_workspace_id), "id": str(obj.get("globalId") or
                    f"{self.options.assets_workspace_id}:{obj.get('id')}"), "objectId": str(obj.get("id"))}
        return {"key": str(obj.get("objectKey"))}


TARGET_CLASS = JiraServiceManagementTarget


def choose_transition(
    transitions: list[Mapping[str, Any]], status: str | None, categories: tuple[str, ...]
) -> Mapping[str, Any] | None:
    """The transition into `status` (by name, any case), else the first into the first of `categories`
    that any transition reaches. Transition ids differ per workflow: they are never configured."""
    def to(t: Mapping[str, Any]) -> Mapping[str, Any]:
        return t.get("to") or {}

    usable = [t for t in transitions if isinstance(t, Mapping) and t.get("id") is not None]
    if status:
        return next((t for t in usable if str(to(t).get("name", "")).lower() == status.lower()), None)
    for category in categories:
        for t in usable:
            if (to(t).get("statusCategory") or {}).get("key") == category:
                return t
    return None


def adf(text: str) -> dict[str, Any]:
    """Plain text as an Atlassian Document Format document: one paragraph per line, URLs as links."""
    content = []
    for line in text.split("\n"):
        if not line.strip():
            continue
        nodes: list[dict[str, Any]] = []
        for i, word in enumerate(line.split(" ")):
            piece = word if i == 0 else " " + word
            if word.startswith(("https://", "http://")):
                if i:
                    nodes.append({"type": "text", "text": " "})
                nodes.append({"type": "text", "text": word, "marks": [{"type": "link", "attrs": {"href": word}}]})
            elif nodes and "marks" not in nodes[-1]:
                nodes[-1]["text"] += piece
            else:
                nodes.append({"type": "text", "text": piece})
        content.append({"type": "paragraph", "content": nodes})
    return {"type": "doc", "version": 1, "content": content}


# Characters Jira's wiki markup would read as formatting (macros, links, bold, italics, tables, ...).
_WIKI_SPECIAL = frozenset("{}[]*_|^~+#!")


def wiki_text(text: str) -> str:
    """Plain text as wiki markup that shows as written: formatting characters escaped, URLs kept whole
    (so they still link)."""
    out = []
    for line in text.split("\n"):
        words = []
        for word in line.split(" "):
            if word.startswith(("https://", "http://")):
                words.append(word)
            else:
                words.append("".join("\\" + c if c in _WIKI_SPECIAL else c for c in word))
        out.append(" ".join(words))
    return "\n".join(out)


def adf_text(doc: Any) -> str:
    """The text of an ADF document (what `adf` made), one line per paragraph."""
    if isinstance(doc, str):
        return doc
    lines = []
    for block in (doc or {}).get("content", []):
        lines.append("".join(node.get("text", "") for node in block.get("content", [])))
    return "\n".join(lines)


def _pick(data: Any, key: str) -> Any:
    return data.get(key) if isinstance(data, dict) else None


def _error_text(reply: Reply) -> str | None:
    """Jira's `{"errorMessages": [...], "errors": {field: message}}`, or None to show the raw body."""
    body = reply.json_or_none()
    if not isinstance(body, dict):
        return None
    parts = [str(m) for m in body.get("errorMessages") or []]
    errors = body.get("errors")
    if isinstance(errors, dict):
        parts += [f"{k}: {v}" for k, v in errors.items()]
    if body.get("errorMessage"):
        parts.append(str(body["errorMessage"]))
    return "; ".join(parts) or None


def from_config(name: str, cfg: Mapping[str, Any], env: Mapping[str, str] = os.environ) -> JiraServiceManagementTarget:
    """Build the target from its YAML block; every mistake is in one TargetConfigError, each naming its key."""
    opts = Options(name, cfg)
    opts.reject_unknown(COMMON_KEYS | OPTION_KEYS)
    base_url = opts.base_url()
    options = opts.read(JiraOptions)
    if options.mode == "issue" and not options.project_key:
        opts.problem("project_key", "is required with mode: issue (the project the issues go in)")
    if options.mode == "request":
        for key in ("service_desk_id", "request_type_id"):
            if not getattr(options, key):
                opts.problem(key, "is required with mode: request")
    if any(c in options.label_prefix for c in ' "\\'):
        opts.problem("label_prefix", "must not hold spaces, quotes or backslashes (it becomes a label)")
    for key in sorted(set(options.defaults) & OWNED_FIELDS):
        opts.problem(f"defaults.{key}", "is set by the relay itself")
    assets_base = None
    if options.ci_binding == "bind_if_found":
        if not options.assets_field:
            opts.problem("assets_field", "is required with ci_binding: bind_if_found (the Assets custom field)")
        if any(c in options.assets_attribute + (options.assets_object_type or "") for c in '"\\'):
            opts.problem("assets_attribute", "must not hold quotes or backslashes (it goes into AQL)")
        if options.assets_base_url:
            assets_base = options.assets_base_url.rstrip("/")
        elif options.deployment == "cloud":
            if not options.assets_workspace_id:
                opts.problem("assets_workspace_id", "is required on Cloud with ci_binding: bind_if_found")
            assets_base = CLOUD_ASSETS_BASE.format(workspace=options.assets_workspace_id)
        else:
            assets_base = base_url + DC_ASSETS_PATH
    auth = _auth(opts, env, options.deployment)
    http = VendorHTTP.from_options(opts, base_url=base_url, auth=auth, logger=log)
    assets = VendorHTTP.from_options(opts, base_url=assets_base, auth=auth, logger=log) if assets_base else None
    opts.check()
    return JiraServiceManagementTarget(name, http, options, assets)


def _auth(opts: Options, env: Mapping[str, str], deployment: str) -> Auth | None:
    """Cloud: an Atlassian account's email and API token over basic. Data Center: a personal access token."""
    auth = opts.section("auth")
    default = "api_token" if deployment == "cloud" else "pat"
    kind = auth.variant("type", ("api_token", "pat"), default)
    if kind is None:
        return None
    if kind == "api_token":
        auth.reject_unknown({"type", "email", "token_env"})
        return StaticAuth.basic(auth.text("email"), auth.secret("token_env", env))
    auth.reject_unknown({"type", "token_env"})
    return StaticAuth(f"Bearer {auth.secret('token_env', env)}")
