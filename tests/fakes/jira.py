"""A fake Jira Service Management site: the REST surface the relay uses, from Atlassian's documentation.

Cloud (REST v3) or Data Center (REST v2), chosen per fake:
- `POST /rest/api/{3|2}/issue` (201 `{id, key, self}`): v3 refuses a description that is not an
  Atlassian Document Format document, v2 one that is not a string; labels may hold no spaces and at
  most 255 characters; `summary` at most 255; `properties` are stored as entity properties.
- `POST /rest/servicedeskapi/request` (201 `{issueId, issueKey, ...}`) for a known service desk and
  request type; `PUT .../issue/{key}/properties/{prop}`.
- Cloud search is `POST /rest/api/3/search/jql` (`jql`, `fields`, `properties`, `maxResults`,
  `reconcileIssues`, `nextPageToken`): it is eventually consistent, an issue shows up only
  `search_lag` seconds after its create unless its id is in `reconcileIssues`; the old
  `/rest/api/3/search` and `/rest/api/2/search` answer 410 on Cloud. Data Center has `/rest/api/2/search`
  (consistent). JQL: `labels = "x"` (case-insensitive, as Jira compares labels), `ORDER BY`.
- `GET .../issue/{key}?fields=`; comments (`POST .../issue/{key}/comment`, body ADF on v3, text on v2;
  `sd.public.comment` makes one internal; `GET` lists them, `orderBy=-created`) and transitions
  (`GET ...?expand=transitions.fields`, `POST` 204): a JSM-like workflow
  Open -> In Progress -> Resolved -> (Reopen) Open; Resolve asks for a resolution ("Resolution is
  required", 400, without one), a transition the current status does not offer is 400.
- Assets: `POST /jsm/assets/workspace/{id}/v1/object/aql` (Cloud, `values`) and
  `GET /rest/assets/1.0/aql/objects` (Data Center, `objectEntries`), on `"<attribute>" = "<value>"`
  (case-insensitive), optionally `objectType = "<name>" AND ...`.
- Read-only lookups: `GET .../myself`, `GET .../project/{key}` (404 "No project could be found with
  key"), `GET /rest/servicedeskapi/servicedesk/{id}` and `.../requesttype/{id}` (404 when unknown).
Auth: email + API token over basic (Cloud) or a personal access token as Bearer (Data Center); 401
otherwise. Failure modes come from `FakeServer.inject` (429 with Retry-After, 5xx, resets, ...).
"""

from __future__ import annotations

import base64
import re
import time
from typing import Any

from aiohttp import web

from tests.fakes import FakeServer

# status -> (category key, transitions offered from it: (id, name, to status, fields on its screen))
STATUSES = {"Open": "new", "In Progress": "indeterminate", "Resolved": "done"}
WORKFLOW: dict[str, list[tuple[str, str, str, tuple[str, ...]]]] = {
    "Open": [("11", "Start progress", "In Progress", ()), ("31", "Resolve", "Resolved", ("resolution",))],
    "In Progress": [("31", "Resolve", "Resolved", ("resolution",)), ("21", "Stop progress", "Open", ())],
    "Resolved": [("41", "Reopen", "Open", ())],
}
_LABEL_CLAUSE = re.compile(r'^labels\s*=\s*"([^"]*)"\s*(?:ORDER BY .*)?$', re.IGNORECASE)
_AQL = re.compile(r'^(?:objectType\s*=\s*"(?P<type>[^"]*)"\s+AND\s+)?"(?P<attr>[^"]+)"\s*=\s*"(?P<value>[^"]*)"$')


def _errors(status: int, messages: list[str] | None = None, errors: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"errorMessages": messages or [], "errors": errors or {}}, status=status)


def is_adf(doc: Any) -> bool:
    return isinstance(doc, dict) and doc.get("type") == "doc" and doc.get("version") == 1 and isinstance(
        doc.get("content"), list)


class FakeJira(FakeServer):
    def __init__(
        self,
        *,
        deployment: str = "cloud",
        email: str = "relay@example.com",
        token: str = "jira-api-token",
        project: str = "OPS",
        service_desk_id: str = "1",
        request_type_id: str = "10",
        workspace_id: str = "ws-1",
        search_lag: float = 0.0,
    ) -> None:
        super().__init__()
        self.deployment = deployment
        self.email = email
        self.token = token
        self.project = project
        self.service_desk_id = service_desk_id
        self.request_type_id = request_type_id
        self.workspace_id = workspace_id
        self.search_lag = search_lag
        self.issues: dict[str, dict[str, Any]] = {}  # by key
        self.assets: list[dict[str, Any]] = []
        self._seq = 0
        self._id = 10000

    @property
    def api(self) -> str:
        return "/rest/api/3" if self.deployment == "cloud" else "/rest/api/2"

    @property
    def assets_url(self) -> str:
        if self.deployment == "cloud":
            return f"{self.url}/jsm/assets/workspace/{self.workspace_id}/v1"
        return f"{self.url}/rest/assets/1.0"

    # -- seeding and inspection ------------------------------------------------------------------

    def add_asset(self, object_type: str, attributes: dict[str, str]) -> dict[str, Any]:
        n = len(self.assets) + 1
        obj = {"id": str(n), "objectKey": f"CMDB-{n}", "globalId": f"{self.workspace_id}:{n}",
               "objectType": object_type, "attributes": attributes}
        self.assets.append(obj)
        return obj

    def issues_labelled(self, label: str) -> list[dict[str, Any]]:
        return [i for i in self.issues.values() if label.lower() in (x.lower() for x in i["fields"]["labels"])]

    def comments(self, key: str) -> list[dict[str, Any]]:
        return self.issues[key]["comments"]

    def status(self, key: str) -> str:
        return self.issues[key]["fields"]["status"]["name"]

    def error_body(self, status: int) -> Any:
        return {"errorMessages": [f"injected {status}"], "errors": {}}

    # -- routes ----------------------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        app.middlewares.append(self._auth)
        for v in ("2", "3"):
            app.router.add_post(f"/rest/api/{v}/issue", self.create_issue)
            app.router.add_post(f"/rest/api/{v}/search", self.search_v2)
            app.router.add_get(f"/rest/api/{v}/issue/{{key}}/transitions", self.list_transitions)
            app.router.add_post(f"/rest/api/{v}/issue/{{key}}/transitions", self.do_transition)
            app.router.add_post(f"/rest/api/{v}/issue/{{key}}/comment", self.add_comment)
            app.router.add_get(f"/rest/api/{v}/issue/{{key}}/comment", self.get_comments)
            app.router.add_get(f"/rest/api/{v}/issue/{{key}}", self.get_issue)
            app.router.add_put(f"/rest/api/{v}/issue/{{key}}/properties/{{prop}}", self.set_property)
            app.router.add_get(f"/rest/api/{v}/myself", self.myself)
            app.router.add_get(f"/rest/api/{v}/project/{{key}}", self.get_project)
        app.router.add_get("/rest/servicedeskapi/servicedesk/{id}", self.get_service_desk)
        app.router.add_get("/rest/servicedeskapi/servicedesk/{id}/requesttype/{rt}", self.get_request_type)
        app.router.add_post("/rest/api/3/search/jql", self.search_jql)
        app.router.add_post("/rest/servicedeskapi/request", self.create_request)
        app.router.add_post("/jsm/assets/workspace/{ws}/v1/object/aql", self.aql_cloud)
        app.router.add_get("/rest/assets/1.0/aql/objects", self.aql_dc)

    @web.middleware
    async def _auth(self, request: web.Request, handler):  # type: ignore[no-untyped-def]
        header = request.headers.get("Authorization", "")
        if self.deployment == "cloud":
            expected = "Basic " + base64.b64encode(f"{self.email}:{self.token}".encode()).decode()
        else:
            expected = f"Bearer {self.token}"
        if header != expected:
            return _errors(401, ["You are not authorized to perform this operation. Please log in."])
        return await handler(request)

    # -- read-only lookups (the relay's start-up check) ------------------------------------------

    async def myself(self, request: web.Request) -> web.Response:
        if self.deployment == "cloud":
            return web.json_response({"accountId": "5b10ac8d82e05b22cc7d4ef5", "emailAddress": self.email,
                                      "active": True})
        return web.json_response({"name": "relay", "key": "JIRAUSER10100", "active": True})

    async def get_project(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        if key.upper() != self.project.upper():
            return _errors(404, [f"No project could be found with key '{key}'."])
        return web.json_response({"id": "10000", "key": self.project, "name": "Operations"})

    async def get_service_desk(self, request: web.Request) -> web.Response:
        if request.match_info["id"] != self.service_desk_id:
            return _errors(404, ["The service desk does not exist"])
        return web.json_response({"id": self.service_desk_id, "projectKey": self.project})

    async def get_request_type(self, request: web.Request) -> web.Response:
        if request.match_info["id"] != self.service_desk_id:
            return _errors(404, ["The service desk does not exist"])
        if request.match_info["rt"] != self.request_type_id:
            return _errors(404, ["The request type you are trying to use does not exist"])
        return web.json_response({"id": self.request_type_id, "name": "Report an incident"})

    def _v(self, request: web.Request) -> str:
        return "3" if request.path.startswith("/rest/api/3") else "2"

    def _issue(self, request: web.Request) -> dict[str, Any] | None:
        key = request.match_info["key"]
        return self.issues.get(key) or next((i for i in self.issues.values() if i["id"] == key), None)

    def _check_fields(self, fields: dict[str, Any], v3: bool) -> dict[str, str]:
        problems = {}
        summary = fields.get("summary")
        if not isinstance(summary, str) or not summary.strip():
            problems["summary"] = "You must specify a summary of the issue."
        elif len(summary) > 255:
            problems["summary"] = "Summary must be less than 255 characters."
        desc = fields.get("description")
        if desc is not None and v3 and not is_adf(desc):
            problems["description"] = "Operation value must be an Atlassian Document"
        if desc is not None and not v3 and not isinstance(desc, str):
            problems["description"] = "Operation value must be a string"
        for label in fields.get("labels") or []:
            if not isinstance(label, str) or " " in label or len(label) > 255:
                problems["labels"] = "The label can't contain spaces and must be at most 255 characters."
        return problems

    def _store(self, fields: dict[str, Any], properties: dict[str, Any]) -> dict[str, Any]:
        self._seq += 1
        self._id += 1
        key = f"{self.project}-{self._seq}"
        stored = {**fields, "status": {"name": "Open", "statusCategory": {"key": "new"}}, "resolution": None,
                  "labels": list(fields.get("labels") or []), "created": time.time()}
        issue = {"id": str(self._id), "key": key, "fields": stored, "properties": dict(properties),
                 "comments": [], "visible_at": time.monotonic() + self.search_lag, "history": []}
        self.issues[key] = issue
        return issue

    async def create_issue(self, request: web.Request) -> web.Response:
        v3 = self._v(request) == "3"
        if v3 != (self.deployment == "cloud"):
            return _errors(404, ["This API version is not served here"])
        body = await request.json()
        fields = dict(body.get("fields") or {})
        if (fields.get("project") or {}).get("key") != self.project:
            return _errors(400, errors={"project": "valid project is required"})
        if not (fields.get("issuetype") or {}).get("name"):
            return _errors(400, errors={"issuetype": "valid issue type is required"})
        problems = self._check_fields(fields, v3)
        if problems:
            return _errors(400, errors=problems)
        props = {p["key"]: p["value"] for p in body.get("properties") or []}
        issue = self._store(fields, props)
        return web.json_response({"id": issue["id"], "key": issue["key"], "self": f"{self.url}/rest/api/3/issue/"
                                  f"{issue['id']}"}, status=201)

    async def create_request(self, request: web.Request) -> web.Response:
        body = await request.json()
        if str(body.get("serviceDeskId")) != self.service_desk_id:
            return _errors(404, ["The service desk does not exist"])
        if str(body.get("requestTypeId")) != self.request_type_id:
            return _errors(400, ["The request type you are trying to use does not exist"])
        fields = dict(body.get("requestFieldValues") or {})
        if not isinstance(fields.get("description", ""), str):
            return _errors(400, errors={"description": "must be text"})
        problems = self._check_fields({k: v for k, v in fields.items() if k != "description"}, False)
        if problems:
            return _errors(400, errors=problems)
        issue = self._store(fields, {})
        return web.json_response({"issueId": issue["id"], "issueKey": issue["key"],
                                  "currentStatus": {"status": "Open", "statusCategory": "NEW"}}, status=201)

    async def set_property(self, request: web.Request) -> web.Response:
        issue = self._issue(request)
        if issue is None:
            return _errors(404, ["Issue does not exist or you do not have permission to see it."])
        created = request.match_info["prop"] not in issue["properties"]
        issue["properties"][request.match_info["prop"]] = await request.json()
        return web.Response(status=201 if created else 200)

    # -- search ----------------------------------------------------------------------------------

    def _matching(self, jql: str) -> list[dict[str, Any]]:
        m = _LABEL_CLAUSE.match(jql.strip())
        if not m:
            raise ValueError(jql)
        found = self.issues_labelled(m.group(1))
        return sorted(found, key=lambda i: i["fields"]["created"], reverse=True)

    def _shape(self, issue: dict[str, Any], fields: list[str], props: list[str]) -> dict[str, Any]:
        out = {"id": issue["id"], "key": issue["key"], "fields": {f: issue["fields"].get(f) for f in fields}}
        if props:
            out["properties"] = {p: issue["properties"][p] for p in props if p in issue["properties"]}
        return out

    async def search_jql(self, request: web.Request) -> web.Response:
        if self.deployment != "cloud":
            return _errors(404, ["null for uri"])
        body = await request.json()
        try:
            found = self._matching(str(body.get("jql", "")))
        except ValueError:
            return _errors(400, ["Error in the JQL Query: the fake understands only labels = \"...\""])
        reconcile = {str(i) for i in body.get("reconcileIssues") or []}
        now = time.monotonic()
        found = [i for i in found if i["visible_at"] <= now or i["id"] in reconcile]
        limit = int(body.get("maxResults", 50))
        shaped = [self._shape(i, list(body.get("fields") or []), list(body.get("properties") or []))
                  for i in found[:limit]]
        return web.json_response({"issues": shaped, "isLast": len(found) <= limit})

    async def search_v2(self, request: web.Request) -> web.Response:
        if self.deployment == "cloud" or self._v(request) == "3":
            return _errors(410, ["The requested API has been removed. Please migrate to /rest/api/3/search/jql."])
        body = await request.json()
        try:
            found = self._matching(str(body.get("jql", "")))
        except ValueError:
            return _errors(400, ["Error in the JQL Query"])
        limit = int(body.get("maxResults", 50))
        shaped = [self._shape(i, list(body.get("fields") or []), list(body.get("properties") or []))
                  for i in found[:limit]]
        return web.json_response({"startAt": 0, "maxResults": limit, "total": len(found), "issues": shaped})

    # -- comments and transitions ----------------------------------------------------------------

    async def add_comment(self, request: web.Request) -> web.Response:
        issue = self._issue(request)
        if issue is None:
            return _errors(404, ["Issue does not exist or you do not have permission to see it."])
        body = await request.json()
        text = body.get("body")
        if (self._v(request) == "3" and not is_adf(text)) or (self._v(request) == "2" and not isinstance(text, str)):
            return _errors(400, errors={"comment": "Comment body is not in the format this API version takes"})
        internal = any(p.get("key") == "sd.public.comment" and (p.get("value") or {}).get("internal")
                       for p in body.get("properties") or [])
        comment = {"id": str(len(issue["comments"]) + 1), "body": text, "internal": internal}
        issue["comments"].append(comment)
        issue["history"].append("comment")
        return web.json_response(comment, status=201)

    async def get_comments(self, request: web.Request) -> web.Response:
        issue = self._issue(request)
        if issue is None:
            return _errors(404, ["Issue does not exist or you do not have permission to see it."])
        comments = list(issue["comments"])
        if request.query.get("orderBy") == "-created":
            comments.reverse()
        limit = int(request.query.get("maxResults", 50))
        return web.json_response({"startAt": 0, "maxResults": limit, "total": len(comments),
                                  "comments": comments[:limit]})

    async def get_issue(self, request: web.Request) -> web.Response:
        issue = self._issue(request)
        if issue is None:
            return _errors(404, ["Issue does not exist or you do not have permission to see it."])
        wanted = request.query.get("fields", "")
        fields = {f: issue["fields"].get(f) for f in wanted.split(",") if f} if wanted else issue["fields"]
        return web.json_response({"id": issue["id"], "key": issue["key"], "fields": fields})

    async def list_transitions(self, request: web.Request) -> web.Response:
        issue = self._issue(request)
        if issue is None:
            return _errors(404, ["Issue does not exist or you do not have permission to see it."])
        expand = "transitions.fields" in request.query.get("expand", "")
        out = []
        for tid, name, to, screen in WORKFLOW[issue["fields"]["status"]["name"]]:
            t: dict[str, Any] = {"id": tid, "name": name,
                                 "to": {"name": to, "statusCategory": {"key": STATUSES[to]}}}
            if expand:
                t["fields"] = {f: {"required": True, "name": f.title()} for f in screen}
            out.append(t)
        return web.json_response({"transitions": out})

    async def do_transition(self, request: web.Request) -> web.Response:
        issue = self._issue(request)
        if issue is None:
            return _errors(404, ["Issue does not exist or you do not have permission to see it."])
        body = await request.json()
        tid = str((body.get("transition") or {}).get("id"))
        offered = {t[0]: t for t in WORKFLOW[issue["fields"]["status"]["name"]]}
        if tid not in offered:
            return _errors(400, [f"Transition id '{tid}' is not valid for this issue."])
        _, _, to, screen = offered[tid]
        fields = body.get("fields") or {}
        if "resolution" in screen and not (fields.get("resolution") or {}).get("name"):
            return _errors(400, errors={"resolution": "Resolution is required."})
        issue["fields"]["status"] = {"name": to, "statusCategory": {"key": STATUSES[to]}}
        issue["fields"]["resolution"] = fields.get("resolution") if STATUSES[to] == "done" else None
        issue["history"].append(to)
        return web.Response(status=204)

    # -- Assets ----------------------------------------------------------------------------------

    def _aql(self, query: str) -> list[dict[str, Any]] | None:
        m = _AQL.match(query.strip())
        if not m:
            return None
        return [o for o in self.assets
                if (m["type"] is None or o["objectType"].lower() == m["type"].lower())
                and o["attributes"].get(m["attr"], "").lower() == m["value"].lower()]

    async def aql_cloud(self, request: web.Request) -> web.Response:
        if request.match_info["ws"] != self.workspace_id:
            return _errors(404, ["No workspace with this id"])
        found = self._aql(str((await request.json()).get("qlQuery", "")))
        if found is None:
            return web.json_response({"errorMessages": ["AQL: could not parse the query"]}, status=400)
        limit = int(request.query.get("maxResults", 25))
        return web.json_response({"startAt": 0, "maxResults": limit, "total": len(found), "values": found[:limit],
                                  "isLast": True})

    async def aql_dc(self, request: web.Request) -> web.Response:
        found = self._aql(request.query.get("qlQuery", ""))
        if found is None:
            return web.json_response({"errorMessages": ["IQL/AQL could not be parsed"]}, status=400)
        limit = int(request.query.get("resultPerPage", 25))
        return web.json_response({"objectEntries": found[:limit], "totalFilterCount": len(found)})
