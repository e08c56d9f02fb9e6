"""A fake BMC Helix ITSM server: the AR System REST and CMDB REST surface the relay uses.

Implemented, from BMC's documentation and the peers that call it:
- `POST /api/jwt/login` (form-encoded username/password -> the token as plain text),
  `POST /api/jwt/logout`; every other call needs `Authorization: AR-JWT <token>`;
- `POST /api/arsys/v1/entry/HPD:IncidentInterface_Create?fields=values(...)` -> 201 and the asked-for
  values; required fields, selection values and a customer known to CTM:People are checked;
- `GET /api/arsys/v1/entry/HPD:IncidentInterface?q=<qualification>&fields=values(...)&limit&sort`
  -> `{"entries": [{"values", "_links"}]}`; the entry id looks like `INC...|INC...`;
- `PUT /api/arsys/v1/entry/HPD:IncidentInterface/{id}` -> 204; Resolved needs a Status_Reason (and a
  Resolution for restoration service types); Closed and Cancelled incidents refuse changes;
- `POST /api/arsys/v1/entry/HPD:WorkLog` -> 201, and `GET` on it with `q`, `fields`, `limit`, `sort`
  (each entry gets a `Submit Date`);
- `GET /api/cmdb/v1.0/instances/{dataset}/{namespace}/{class}?qualification&attributes&limit`
  (`BMC_BaseElement` spans every class) and `POST /api/cmdb/v1.0/instances`.
- every create and modify of an incident stamps `Last Modified Date` (ISO 8601 with the zone, as the REST
  API writes date/times: `2026-03-01T10:00:00.000+0000`) and `Last Modified By` (the login that made the
  change); `update_as(number, login, ...)` is a person's change in Mid Tier. A work-log entry is a record
  of HPD:WorkLog and leaves the incident's stamps alone;
- qualifications take a date/time as an integer, seconds since 1970 UTC (what AR stores; a quoted date
  string would be read in the user's locale and time zone), `$NULL$` for "no value", and `sort` takes
  several `field.asc|desc` separated by commas (date/times sort by time).
Unlike ServiceNow, AR rejects an unknown field (in a qualification or a write) with an error.
Errors are lists of AR status objects. `expire_tokens()` makes every issued token answer 401.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from tests.fakes import FakeServer

IMPACTS = ("1-Extensive/Widespread", "2-Significant/Large", "3-Moderate/Limited", "4-Minor/Localized")
URGENCIES = ("1-Critical", "2-High", "3-Medium", "4-Low")
STATUSES = ("New", "Assigned", "In Progress", "Pending", "Resolved", "Closed", "Cancelled")
SERVICE_TYPES = (
    "User Service Restoration",
    "User Service Request",
    "Infrastructure Restoration",
    "Infrastructure Event",
)
REPORTED_SOURCES = (
    "Direct Input",
    "Email",
    "External Escalation",
    "Fax",
    "Self Service",
    "Systems Management",
    "Phone",
    "Voice Mail",
    "Walk In",
    "Web",
    "Other",
    "BMC Impact Manager Event",
)
SELECTIONS = {
    "Impact": IMPACTS,
    "Urgency": URGENCIES,
    "Status": STATUSES,
    "Service_Type": SERVICE_TYPES,
    "Reported Source": REPORTED_SOURCES,
}
INCIDENT_FIELDS = frozenset(
    {
        "Request ID",
        "Incident Number",
        "Submit Date",
        "Status",
        "Status_Reason",
        "Resolution",
        "Description",
        "Detailed_Decription",
        "Impact",
        "Urgency",
        "Priority",
        "Service_Type",
        "Reported Source",
        "First_Name",
        "Last_Name",
        "Login_ID",
        "Company",
        "Assigned Support Company",
        "Assigned Support Organization",
        "Assigned Group",
        "Assignee",
        "Assignee Login ID",
        "TemplateID",
        "HPD_CI",
        "HPD_CI_ReconID",
        "HPD_CI_FormName",
        "ServiceCI",
        "ServiceCI_ReconID",
        "z1D_Action",
        "Vendor Ticket Number",
        "Outbound Identifier",
        "Submitter",
        "Last Modified Date",
        "Last Modified By",
    }
)
# Date/time fields: compared and sorted by time (AR keeps them as seconds since 1970 UTC).
DATE_FIELDS = frozenset({"Submit Date", "Last Modified Date"})
# Core fields only the server sets (Submit Date, Last Modified By, Modified Date): a write naming one is refused.
CORE_FIELDS = frozenset({"Last Modified Date", "Last Modified By", "Submit Date"})
WORK_LOG_FIELDS = frozenset(
    {
        "Incident Number",
        "Work Log Type",
        "Description",
        "Detailed Description",
        "View Access",
        "Secure Work Log",
    }
)


def _ar_error(status: int, number: int, text: str, appended: str | None = None) -> web.Response:
    return web.json_response(
        [
            {
                "messageType": "ERROR",
                "messageNumber": number,
                "messageText": text,
                "messageAppendedText": appended,
            }
        ],
        status=status,
    )


class QualificationError(ValueError):
    pass


_TOKEN = re.compile(
    r"""\s*(?:(?P<field>'[^']*')|(?P<string>"(?:[^"]|"")*")|(?P<number>-?\d+\b)|(?P<null>\$NULL\$)|"""
    r"""(?P<op>!=|<=|>=|=|<|>|\bLIKE\b)|"""
    r"""(?P<word>\bAND\b|\bOR\b|\bNOT\b)|(?P<paren>[()]))""",
    re.IGNORECASE,
)


def parse_qualification(text: str, known: frozenset[str]) -> Any:
    """A predicate over a values dict for an AR qualification (fields quoted ', strings quoted ")."""
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise QualificationError(f"cannot parse the qualification at {text[pos : pos + 20]!r}")
        kind = m.lastgroup or ""
        tokens.append((kind, m.group(kind)))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1

    def expr(i: int) -> tuple[Any, int]:
        left, i = term(i)
        while i < len(tokens) and tokens[i][0] == "word" and tokens[i][1].upper() == "OR":
            right, i = term(i + 1)
            left = (lambda a, b: lambda v: a(v) or b(v))(left, right)
        return left, i

    def term(i: int) -> tuple[Any, int]:
        left, i = factor(i)
        while i < len(tokens) and tokens[i][0] == "word" and tokens[i][1].upper() == "AND":
            right, i = factor(i + 1)
            left = (lambda a, b: lambda v: a(v) and b(v))(left, right)
        return left, i

    def factor(i: int) -> tuple[Any, int]:
        if i >= len(tokens):
            raise QualificationError("the qualification ends too early")
        kind, value = tokens[i]
        if kind == "word" and value.upper() == "NOT":
            inner, i = factor(i + 1)
            return (lambda v: not inner(v)), i
        if kind == "paren" and value == "(":
            inner, i = expr(i + 1)
            if i >= len(tokens) or tokens[i] != ("paren", ")"):
                raise QualificationError("unbalanced parentheses")
            return inner, i + 1
        if (
            kind == "field"
            and i + 2 < len(tokens)
            and tokens[i + 1][0] == "op"
            and tokens[i + 2][0] in ("string", "number", "null")
        ):
            name = value[1:-1]
            if name not in known:
                raise QualificationError(f"field {name!r} does not exist on this form")
            op = tokens[i + 1][1].upper()
            literal_kind, literal = tokens[i + 2]
            if literal_kind == "null":
                if op not in ("=", "!="):
                    raise QualificationError(f"$NULL$ compares with = or != only, not {op}")
                return (lambda v: (v.get(name) in (None, "")) == (op == "=")), i + 3
            if literal_kind == "number":
                if name not in DATE_FIELDS:
                    raise QualificationError(f"field {name!r} is not a date/time: compare it with a string")
                return _time_comparison(name, op, int(literal)), i + 3
            expected = literal[1:-1].replace('""', '"')
            return _comparison(name, op, expected), i + 3
        raise QualificationError(f"unexpected {value!r}")

    predicate, end = expr(0)
    if end != len(tokens):
        raise QualificationError(f"unexpected {tokens[end][1]!r}")
    return predicate


def _comparison(name: str, op: str, expected: str) -> Any:
    def test(values: dict[str, Any]) -> bool:
        actual = str(values.get(name) or "").lower()  # SQL Server's default collation ignores case
        wanted = expected.lower()
        if op == "=":
            return actual == wanted
        if op == "!=":
            return actual != wanted
        if op == "LIKE":
            pattern = "^" + re.escape(wanted).replace("%", ".*").replace("_", ".") + "$"
            return re.match(pattern, actual) is not None
        return {"<": actual < wanted, ">": actual > wanted, "<=": actual <= wanted, ">=": actual >= wanted}[
            op
        ]

    return test


def _epoch(value: Any) -> int | None:
    """Seconds since 1970 of a stored ISO 8601 date/time, or None when there is none."""
    if not value:
        return None
    return int(datetime.fromisoformat(str(value)).timestamp())


def _time_comparison(name: str, op: str, seconds: int) -> Any:
    def test(values: dict[str, Any]) -> bool:
        actual = _epoch(values.get(name))
        if actual is None:
            return False
        return {"=": actual == seconds, "!=": actual != seconds, "<": actual < seconds, ">": actual > seconds,
                "<=": actual <= seconds, ">=": actual >= seconds}.get(op, False)

    return test


def _sort(rows: list[dict[str, Any]], sort: str) -> None:
    """AR's `sort=a.asc,b.desc`: the first field first; date/times by time."""
    for part in reversed([p.strip() for p in sort.split(",") if p.strip()]):
        name, _, direction = part.rpartition(".")
        if name in DATE_FIELDS:
            rows.sort(key=lambda r, n=name: _epoch(r.get(n)) or 0, reverse=direction.lower() == "desc")
        else:
            rows.sort(key=lambda r, n=name: str(r.get(n) or ""), reverse=direction.lower() == "desc")


def iso(moment: datetime) -> str:
    """A date/time as the AR REST API writes it: `2026-03-01T10:00:00.000+0000`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")


@dataclass
class CI:
    instance_id: str
    class_name: str
    namespace: str
    dataset: str
    attributes: dict[str, Any] = field(default_factory=dict)


class FakeBmcHelix(FakeServer):
    def __init__(
        self,
        *,
        username: str = "relay",
        password: str = "relay-password",
        people: tuple[tuple[str, str, str], ...] = (("Allen", "Allbrook", "allen"),),
        extra_fields: frozenset[str] = frozenset(),
        require_assignee_to_resolve: bool = False,
        reconcile_new_cis: bool = True,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        super().__init__()
        self.username = username
        self.password = password
        self.people = people  # CTM:People: (first name, last name, login)
        self.fields = INCIDENT_FIELDS | extra_fields
        self.require_assignee_to_resolve = require_assignee_to_resolve
        self.reconcile_new_cis = reconcile_new_cis
        # What Last Modified Date says for a change made now (default: the real time).
        self.clock: Callable[[], datetime] = clock or (lambda: datetime.now(UTC))
        self.incidents: dict[str, dict[str, Any]] = {}  # by Incident Number
        self.work_logs: list[dict[str, Any]] = []
        self.status_changes: dict[str, list[str]] = {}  # Incident Number -> the statuses it was moved to
        self.cis: list[CI] = []
        self.tokens: set[str] = set()
        self.logins = 0
        self.logouts = 0
        self._seq = 0

    # -- seeding and inspection ------------------------------------------------------------------

    def add_incident(self, *, by: str = "Remedy Application Service", **values: Any) -> dict[str, Any]:
        self._seq += 1
        number = f"INC{self._seq:012d}"
        record = {
            "Incident Number": number,
            "Request ID": f"{number}|{number}",
            "Status": "Assigned",
            # One second apart, so that a sort on it is the order of creation (the find sorts newest first).
            "Submit Date": f"2026-01-01T{self._seq // 3600:02d}:{self._seq // 60 % 60:02d}:{self._seq % 60:02d}"
            ".000+0000",
            "Submitter": by,
            **values,
        }
        self._stamp(record, by)
        self.incidents[number] = record
        return record

    def update_as(self, number: str, login: str, **values: Any) -> dict[str, Any]:
        """A person's change in Mid Tier (the form's own checks are the person's business)."""
        record = self.incidents[number]
        if "Status" in values and values["Status"] != record.get("Status"):
            self.status_changes.setdefault(number, []).append(values["Status"])
        record.update(values)
        self._stamp(record, login)
        return record

    def _stamp(self, record: dict[str, Any], login: str) -> None:
        record["Last Modified Date"] = iso(self.clock())
        record["Last Modified By"] = login

    def add_ci(
        self,
        name: str,
        class_name: str = "BMC_ComputerSystem",
        recon_id: str | None = None,
        **attributes: Any,
    ) -> CI:
        self._seq += 1
        ci = CI(
            instance_id=f"OI-{secrets.token_hex(8).upper()}",
            class_name=class_name,
            namespace="BMC.CORE",
            dataset="BMC.ASSET",
            attributes={
                "Name": name,
                "ReconciliationIdentity": recon_id or f"RE{secrets.token_hex(10).upper()}",
                **attributes,
            },
        )
        self.cis.append(ci)
        return ci

    def expire_tokens(self) -> None:
        self.tokens.clear()

    def work_log_texts(self, number: str) -> list[str]:
        return [w["Detailed Description"] for w in self.work_logs if w.get("Incident Number") == number]

    # -- server ----------------------------------------------------------------------------------

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/api/jwt/login", self.login)
        app.router.add_post("/api/jwt/logout", self.logout)
        app.router.add_post("/api/arsys/v1/entry/HPD:IncidentInterface_Create", self.create_incident)
        app.router.add_get("/api/arsys/v1/entry/HPD:IncidentInterface", self.search_incidents)
        app.router.add_put("/api/arsys/v1/entry/HPD:IncidentInterface/{entry_id}", self.modify_incident)
        app.router.add_post("/api/arsys/v1/entry/HPD:WorkLog", self.create_work_log)
        app.router.add_get("/api/arsys/v1/entry/HPD:WorkLog", self.search_work_logs)
        app.router.add_get("/api/cmdb/v1.0/instances/{dataset}/{namespace}/{class_name}", self.search_cis)
        app.router.add_post("/api/cmdb/v1.0/instances", self.create_cis)

    def error_body(self, status: int) -> Any:
        return [
            {
                "messageType": "ERROR",
                "messageNumber": 9999,
                "messageText": f"Injected HTTP {status}",
                "messageAppendedText": None,
            }
        ]

    async def login(self, request: web.Request) -> web.Response:
        if request.content_type != "application/x-www-form-urlencoded":
            return _ar_error(400, 623, "Authentication failed", "login expects a form")
        form = await request.post()
        if form.get("username") != self.username or form.get("password") != self.password:
            return _ar_error(401, 623, "Authentication failed", str(form.get("username")))
        token = secrets.token_urlsafe(32)
        self.tokens.add(token)
        self.logins += 1
        return web.Response(text=token, content_type="text/plain")

    async def logout(self, request: web.Request) -> web.Response:
        token = request.headers.get("Authorization", "").removeprefix("AR-JWT ")
        if token in self.tokens:
            self.tokens.discard(token)
            self.logouts += 1
        return web.Response(status=204)

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        return header.startswith("AR-JWT ") and header[len("AR-JWT ") :] in self.tokens

    def _unauthorized(self) -> web.Response:
        return _ar_error(401, 623, "Authentication failed", "The token is invalid or expired")

    async def create_incident(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        values = (await request.json()).get("values") or {}
        unknown = sorted(set(values) - self.fields)
        if unknown:
            return _ar_error(400, 8755, "Field not found on the form", unknown[0])
        core = sorted(set(values) & CORE_FIELDS)
        if core:
            return _ar_error(400, 8756, "The field is a core field set by the server", core[0])
        for required in ("Description", "Impact", "Urgency", "Status", "Reported Source", "Service_Type"):
            if not values.get(required):
                return _ar_error(400, 326, "Required field cannot be blank.", f"HPD:Help Desk : {required}")
        bad = self._bad_selection(values)
        if bad:
            return bad
        if values.get("z1D_Action") != "CREATE":
            return _ar_error(400, 10000, "z1D_Action must be CREATE on the create interface")
        if not self._customer_known(values):
            return _ar_error(400, 1291053, "A valid customer is required (First_Name/Last_Name or Login_ID).")
        record = self.add_incident(by=self.username, **{k: v for k, v in values.items() if k != "z1D_Action"})
        record["Status"] = values["Status"]
        wanted = _fields_param(request.query.get("fields"))
        body = {"values": {k: record.get(k) for k in (wanted or ["Incident Number"])}}
        location = f"{self.url}/api/arsys/v1/entry/HPD:IncidentInterface_Create/{record['Incident Number']}"
        return web.json_response(body, status=201, headers={"Location": location})

    async def search_incidents(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        rows = list(self.incidents.values())
        if request.query.get("q"):
            try:
                predicate = parse_qualification(request.query["q"], self.fields)
            except QualificationError as exc:
                return _ar_error(400, 1587, "Error in the qualification", str(exc))
            rows = [r for r in rows if predicate(r)]
        sort = request.query.get("sort")
        if sort:
            _sort(rows, sort)
        limit = int(request.query.get("limit", "0") or 0)
        if limit:
            rows = rows[:limit]
        wanted = _fields_param(request.query.get("fields"))
        entries = [
            {
                "values": {k: r.get(k) for k in wanted} if wanted else dict(r),
                "_links": {
                    "self": [
                        {"href": f"{self.url}/api/arsys/v1/entry/HPD:IncidentInterface/{r['Request ID']}"}
                    ]
                },
            }
            for r in rows
        ]
        return web.json_response({"entries": entries, "_links": {"self": [{"href": str(request.url)}]}})

    async def modify_incident(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        entry_id = request.match_info["entry_id"]
        record = next((r for r in self.incidents.values() if r["Request ID"] == entry_id), None)
        if record is None:
            return _ar_error(404, 302, "Entry does not exist in database", entry_id)
        if record.get("Status") in ("Closed", "Cancelled"):
            return _ar_error(400, 1291018, f"A {record['Status']} incident cannot be modified.")
        values = (await request.json()).get("values") or {}
        unknown = sorted(set(values) - self.fields)
        if unknown:
            return _ar_error(400, 8755, "Field not found on the form", unknown[0])
        core = sorted(set(values) & CORE_FIELDS)
        if core:
            return _ar_error(400, 8756, "The field is a core field set by the server", core[0])
        bad = self._bad_selection(values)
        if bad:
            return bad
        merged = {**record, **values}
        if merged.get("Status") == "Resolved":
            if not merged.get("Status_Reason"):
                return _ar_error(400, 1291064, "Status Reason is required when the status is Resolved.")
            if str(merged.get("Service_Type", "")).endswith("Restoration") and not merged.get("Resolution"):
                return _ar_error(400, 1291065, "Resolution is required for restoration incidents.")
            if self.require_assignee_to_resolve and not merged.get("Assignee"):
                return _ar_error(400, 1291066, "The Assignee must be set to move past the Assigned status.")
        if "Status" in values and values["Status"] != record.get("Status"):
            self.status_changes.setdefault(record["Incident Number"], []).append(values["Status"])
        record.update(values)
        self._stamp(record, self.username)  # the login the AR-JWT was issued to
        return web.Response(status=204)

    async def create_work_log(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        values = (await request.json()).get("values") or {}
        unknown = sorted(set(values) - WORK_LOG_FIELDS)
        if unknown:
            return _ar_error(400, 8755, "Field not found on the form", unknown[0])
        if values.get("Incident Number") not in self.incidents:
            return _ar_error(
                400, 1291000, "The Incident Number is not valid", str(values.get("Incident Number"))
            )
        if not values.get("Detailed Description") or not values.get("Work Log Type"):
            return _ar_error(
                400, 326, "Required field cannot be blank.", "HPD:WorkLog : Detailed Description"
            )
        self._seq += 1
        submitted = f"2026-01-02T00:{self._seq // 60:02d}:{self._seq % 60:02d}.000+0000"
        self.work_logs.append({**values, "Submit Date": submitted})
        return web.Response(
            status=201,
            headers={"Location": f"{self.url}/api/arsys/v1/entry/HPD:WorkLog/WLG{len(self.work_logs):012d}"},
        )

    async def search_work_logs(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        rows = list(self.work_logs)
        if request.query.get("q"):
            try:
                predicate = parse_qualification(request.query["q"], WORK_LOG_FIELDS | {"Submit Date"})
            except QualificationError as exc:
                return _ar_error(400, 1587, "Error in the qualification", str(exc))
            rows = [r for r in rows if predicate(r)]
        sort = request.query.get("sort")
        if sort:
            _sort(rows, sort)
        limit = int(request.query.get("limit", "0") or 0)
        if limit:
            rows = rows[:limit]
        wanted = _fields_param(request.query.get("fields"))
        entries = [{"values": {k: r.get(k) for k in wanted} if wanted else dict(r)} for r in rows]
        return web.json_response({"entries": entries})

    async def search_cis(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        dataset, class_name = request.match_info["dataset"], request.match_info["class_name"]
        rows = [
            c for c in self.cis if c.dataset == dataset and class_name in ("BMC_BaseElement", c.class_name)
        ]
        if request.query.get("qualification"):
            known = frozenset(k for c in self.cis for k in c.attributes) | {"Name", "ReconciliationIdentity"}
            try:
                predicate = parse_qualification(request.query["qualification"], known)
            except QualificationError as exc:
                return _ar_error(400, 1587, "Error in the qualification", str(exc))
            rows = [c for c in rows if predicate(c.attributes)]
        total = len(rows)
        limit = int(request.query.get("limit", "0") or 0)
        if limit:
            rows = rows[:limit]
        wanted = [a for a in request.query.get("attributes", "").split(",") if a]
        instances = [
            {
                "instance_id": c.instance_id,
                "class_name_key": {"name": c.class_name, "namespace": c.namespace},
                "attributes": {a: c.attributes.get(a) for a in wanted} if wanted else dict(c.attributes),
            }
            for c in rows
        ]
        return web.json_response({"instances": instances, "num_matches": total})

    async def create_cis(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._unauthorized()
        created = []
        for item in (await request.json()).get("instances") or []:
            key = item.get("class_name_key") or {}
            attributes = dict(item.get("attributes") or {})
            if not attributes.get("Name"):
                return _ar_error(400, 326, "Required field cannot be blank.", "Name")
            ci = self.add_ci(
                attributes.pop("Name"),
                class_name=key.get("name", "BMC_BaseElement"),
                recon_id=None if self.reconcile_new_cis else "0",
                **attributes,
            )
            ci.dataset = item.get("dataset_id", "BMC.ASSET")
            ci.namespace = key.get("namespace", "BMC.CORE")
            created.append({"instance_id": ci.instance_id})
        return web.json_response({"instances": created}, status=201)

    # -- helpers ---------------------------------------------------------------------------------

    def _bad_selection(self, values: dict[str, Any]) -> web.Response | None:
        for name, allowed in SELECTIONS.items():
            if name in values and values[name] is not None and values[name] not in allowed:
                return _ar_error(
                    400,
                    306,
                    "Value does not fall within the limits specified for the field",
                    f"{name}: {values[name]!r}",
                )
        return None

    def _customer_known(self, values: dict[str, Any]) -> bool:
        for first, last, login in self.people:
            if values.get("Login_ID") == login:
                return True
            if values.get("First_Name") == first and values.get("Last_Name") == last:
                return True
        return False


def _fields_param(raw: str | None) -> list[str]:
    """`values(a,b,c)` -> ["a", "b", "c"]."""
    if not raw:
        return []
    m = re.fullmatch(r"\s*values\((.*)\)\s*", raw)
    return [f.strip() for f in m.group(1).split(",") if f.strip()] if m else []
