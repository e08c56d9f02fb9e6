"""The contract every ITSM target speaks, and the registry that builds one. One module per target.

A target answers one question per call: did it work, and if not, is it worth trying again
(`TargetError.retryable`)? Lifecycle decisions, retries, backoff, circuit breaking, dead letters and
metrics live once, outside the targets (in `relay.delivery`), as in Alertmanager's notify/ package.

Adding a target = one module, one `TARGET_MODULES` line, its fake of the vendor API (under
`tests/fakes/`) and its tests (with its smallest block in `tests/conftest.py`). Nothing else in the
relay names a kind: what the relay needs to know about a kind, the kind's module declares.

- `relay/targets/<kind>.py` exposes `TARGET_CLASS` and
  `from_config(name: str, cfg: Mapping[str, Any], env: Mapping[str, str] = os.environ) -> Target`
  (or a `Forwarder`). `TARGET_CLASS` declares the kind's facts as class attributes: `kind`, `limits`
  (`TextLimits`, or None for a kind that sends no ticket text), `severity_fields` (the default
  severity -> vendor fields) and `options_class` (the dataclass of its options: the fields are the
  option keys, their defaults the defaults). `build_target` refuses a module that lacks one.
  Optional: `unsupported_route_options` (route option -> value -> why it cannot apply, e.g. a kind
  that cannot reopen refuses `on_refire: reopen`), which `relay check-config` reads.
- `cfg` is the raw `targets.<name>` block of RELAY_CONFIG minus the keys the delivery core owns
  (`CORE_KEYS`: `severity`, `rate_limit_per_second`); the module reads the rest with
  `relay.targets.target_config.Options`, which collects every problem of the block, and raises one
  `TargetConfigError` carrying them as `(dotted key, message)`, so that `relay check-config` can
  point at each one's line.
- `from_config` does no I/O and opens no session (`VendorHTTP` opens one pooled session lazily).
  `relay check-config` calls it with an `env` in which every variable is set to a placeholder.
- The core reads `max_concurrency` and `timeout_seconds` too (bounds and defaults in `relay.schema`):
  at most `max_concurrency` deliveries run at once per target, each under a deadline derived from
  the timeout.
- `Incident` arrives rendered (`relay.delivery.rendering`): `summary` and `description` already cut to
  the target's `limits` (`truncate`). `fields` holds what to set on create: the target's
  `severity_fields` (overridable per target with `severity:`) overlaid with the route's `fields:`.
  `configuration_items` is `essentials.configurationItems`, else `alertTargetIDs`; `resource_ids` is
  always `alertTargetIDs` (ARM ids, lower case as Azure sends them).
- `correlation_key` is never empty, at most 64 characters of `[A-Za-z0-9._-]`: the alert GUID, or
  `sh-<trackingId>-<subscription>` (Service Health), or `ci-<hash>` (one incident per CI), with a `.N`
  suffix for the N-th incident of one key (`on_refire: new`), so an old resolved ticket and its
  successor never share a key. `find` matches it exactly; more than one match is a non-retryable
  `TargetError`. `find` may return a resolved ticket (`resolved=True`) or skip resolved ones: the
  worker adopts a found ticket only when it is not resolved (crash recovery: created, not recorded).
- Optional, `check()`: a start-up probe without side effects (only reads: a login, a GET, a search)
  answering a list of `Finding`s, one per thing it checked (credentials, the queue, the correlation
  field, ...), each `ok`, `failed` or `unchecked` (it could not be checked, and the detail says why).
  `relay check-targets` and `relay serve` run it (`relay.delivery.target_check`); a target without
  one is reported as not checked. What it finds is never raised (a failure is a finding); a target that
  does not answer at all may raise `TargetError`, which the runner turns into a failed `reachable`.
- Optional, for a target whose API can be read (`can_read`, `can_search`; see `Readable`):
  `read(ticket)` answers the ticket's status and the texts of its latest notes (a retried resolve,
  reopen or note skips what is already there), and `search(key)` answers the tickets whose
  correlation key starts with `key` (`key`, `key.N`), with those keys, newest first (a lost store is
  rebuilt from them). A target that cannot be read (dry_run, forward) leaves both out and says so in its
  docstring: a retried step is sent again and relies on the target's own deduplication.
- Optional, for storm grouping (`can_link`, see `Linkable`): `link(child, parent)` makes one ticket the
  child of another (ServiceNow `parent_incident`, Request Tracker MemberOf). A kind without it gets the
  parent and its notes only; `relay check-config` refuses `group.children: link` for it. Optional too:
  `retitle(ticket, summary)`, which sets a parent's summary as its count grows.
- Optional, for two-way sync (`can_sync`, see `Syncable`): `changed_since(since, limit)` answers the
  tickets carrying a relay correlation key that changed at or after `since`, oldest first (ServiceNow
  `sys_updated_on`, Request Tracker `LastUpdated`, BMC Helix `Last Modified Date`; all in UTC), each as
  a `TicketChange` with the state it is in now and who changed it, where the API says.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import ModuleType
from typing import Any, ClassVar, Protocol

from relay.targets.target_config import TargetConfigError


class TargetError(Exception):
    """A call to a target failed. `retryable` says whether trying again can help.

    `unanswered`: no answer came back (the call timed out, or the connection dropped after it was
    sent), so the target may have applied it, or may still. Not for a refused connection (nothing was
    sent) nor for any answer, whatever its status.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        status: int | None = None,
        unanswered: bool = False,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status
        self.unanswered = unanswered


def is_retryable_status(status: int) -> bool:
    """HTTP statuses a retry can fix: 408, 409, 425, 429 and 5xx. Other 4xx go to dead letters."""
    return status in (408, 409, 425, 429) or status >= 500


@dataclass(frozen=True, slots=True)
class TextLimits:
    """How many characters a target's text fields hold: the ticket's summary, its description, a note."""

    summary: int
    description: int
    note: int


def truncate(text: str, limit: int, marker: str = " …[truncated]") -> str:
    """Fit `text` into a vendor field of `limit` characters, saying that it was cut."""
    if len(text) <= limit:
        return text
    if limit <= len(marker):
        return text[:limit]
    return text[: limit - len(marker)].rstrip() + marker


@dataclass(frozen=True, slots=True)
class Incident:
    """What the relay wants a target to hold for one alert (or one CI of it), already rendered."""

    correlation_key: str
    summary: str
    description: str
    severity: str | None
    fields: Mapping[str, Any] = field(default_factory=dict)  # route fields: assignment group, impact, ...
    configuration_items: tuple[str, ...] = ()
    resource_ids: tuple[str, ...] = ()  # alertTargetIDs: ARM ids, for CMDB lookups by id
    fired_at: str | None = None
    resolved_at: str | None = None
    body: bytes = field(default=b"", repr=False)  # the original common-schema body, as Azure sent it


@dataclass(frozen=True, slots=True)
class Ticket:
    """A work item in a target: its id for API calls, a number for people, and whether it is resolved."""

    id: str
    number: str | None = None
    resolved: bool = False


def ticket_link(target: object, ticket: Ticket) -> str | None:
    """The ticket's page for people, when the target's module knows how to name it (an optional
    `ticket_url(ticket)`: RT, ServiceNow, Jira); None otherwise (PagerDuty's events API gives none)."""
    url = getattr(target, "ticket_url", None)
    return url(ticket) if callable(url) else None


# How many of a ticket's latest notes `read` returns: a retried note looks for its marker among them.
NOTES_READ = 5
# How many tickets `search` returns at most, newest first: the highest `.N` suffixes are among them.
SEARCH_LIMIT = 50


@dataclass(frozen=True, slots=True)
class TicketView:
    """A ticket as its target reads it back: whether it is resolved (not open), and the texts of its latest
    notes (work notes, work-log entries, comments), newest first, at most `NOTES_READ`."""

    resolved: bool
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FoundTicket:
    """A ticket a search by key found, with the correlation key it carries."""

    correlation_key: str
    ticket: Ticket


class Target(Protocol):
    kind: ClassVar[str]
    limits: ClassVar[TextLimits]  # the incident's texts are cut to these before the target sees them
    severity_fields: ClassVar[Mapping[str, Mapping[str, Any]]]  # Sev0..Sev4 -> fields set on create
    options_class: ClassVar[type]  # the dataclass of the kind's options
    name: str

    async def find(self, incident: Incident) -> Ticket | None:
        """The ticket carrying `incident.correlation_key`, or None. Many matches is an error."""
        ...

    async def create(self, incident: Incident) -> Ticket:
        """Open a ticket bound to the incident's configuration items."""
        ...

    async def note(self, ticket: Ticket, incident: Incident, text: str) -> None: ...

    async def resolve(self, ticket: Ticket, incident: Incident, text: str) -> None: ...

    async def reopen(self, ticket: Ticket, incident: Incident, text: str) -> None: ...

    async def close(self) -> None:
        """Release the target's pooled HTTP session."""
        ...


class Readable(Protocol):
    """The calls of a target whose API can be read back (every ITSM target but dry_run)."""

    async def read(self, ticket: Ticket) -> TicketView:
        """The ticket's status and its latest notes' texts."""
        ...

    async def search(self, key: str) -> list[FoundTicket]:
        """Tickets whose correlation key starts with `key` (so `key` and every `key.N`; the caller drops
        other keys a prefix also matches), newest first, at most SEARCH_LIMIT. A row that does not carry
        such a key means the target ignored the filter: a non-retryable TargetError."""
        ...


FINDING_STATUSES = ("ok", "failed", "unchecked")


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing a target's start-up probe checked: what (`check`, e.g. "credentials", "queue 'General'"),
    how it went (`status`: ok, failed, or unchecked when something before it failed or the account may
    not look), and what was found or why not (`detail`; never a secret)."""

    check: str
    status: str
    detail: str = ""

    def __post_init__(self) -> None:
        if self.status not in FINDING_STATUSES:
            raise ValueError(f"finding status must be one of {', '.join(FINDING_STATUSES)} (got {self.status!r})")


def can_check(target: object) -> bool:
    return callable(getattr(target, "check", None))


def can_read(target: object) -> bool:
    return callable(getattr(target, "read", None))


def can_search(target: object) -> bool:
    return callable(getattr(target, "search", None))


class Linkable(Protocol):
    """A target that can make one ticket the child of another (storm grouping's parent incident)."""

    async def link(self, child: Ticket, parent: Ticket) -> None:
        """Link `child` to `parent` (idempotent: linking again changes nothing)."""
        ...


def can_retitle(target: object) -> bool:
    """Whether a target declares `retitle(ticket, summary)`: a storm parent's summary keeps its count current."""
    return callable(getattr(target, "retitle", None))


def can_link(target: object) -> bool:
    """Whether a target (or a kind's TARGET_CLASS) declares `link`; one that does not gets notes only."""
    return callable(getattr(target, "link", None))


# How many changed tickets one `changed_since` call answers at most: the poller pages on from the last one.
CHANGES_LIMIT = 100
# A ticket's state as two-way sync sees it, whatever the vendor calls it: open (new, or reopened),
# in_progress (someone took it), resolved, closed.
TICKET_STATES = ("open", "in_progress", "resolved", "closed")


@dataclass(frozen=True, slots=True)
class TicketChange:
    """A ticket the relay opened, as a target reports it after a change: its state now (one of
    `TICKET_STATES`), when it last changed (`changed_at`, UTC, timezone-aware) and by whom (`changed_by`,
    the account, where the API says; the relay's own account means the relay made the change)."""

    ticket: Ticket
    correlation_key: str
    state: str
    changed_at: datetime
    changed_by: str | None = None

    def __post_init__(self) -> None:
        if self.state not in TICKET_STATES:
            raise ValueError(f"ticket state must be one of {', '.join(TICKET_STATES)} (got {self.state!r})")
        if self.changed_at.tzinfo is None:
            raise ValueError("changed_at must carry its time zone (UTC)")


class Syncable(Protocol):
    """A target that can say which of the relay's tickets changed since a time (two-way sync's poll)."""

    async def changed_since(self, since: datetime, limit: int = CHANGES_LIMIT) -> list[TicketChange]:
        """Tickets carrying a relay correlation key whose last change is at or after `since` (UTC), oldest
        first, at most `limit` (the caller asks again from the last one's `changed_at`, and drops what it
        has already seen at that instant). Bounded and incremental: one query, never a scan of every ticket."""
        ...


def can_sync(target: object) -> bool:
    """Whether a target declares `changed_since` (two-way sync can poll it)."""
    return callable(getattr(target, "changed_since", None))


class Forwarder(Protocol):
    """A target that owns the lifecycle itself (a vendor's own Azure endpoint): it gets the raw body."""

    kind: ClassVar[str]
    limits: ClassVar[None]  # it sends no ticket text
    severity_fields: ClassVar[Mapping[str, Mapping[str, Any]]]
    options_class: ClassVar[type]
    name: str

    async def forward(self, body: bytes) -> None: ...

    async def close(self) -> None: ...


# Keys of a target block that the delivery core reads and the target module never sees.
CORE_KEYS = frozenset({"severity", "rate_limit_per_second"})

# kind -> module; imported when a target of that kind is built, so one kind's import cost or
# breakage never touches the others.
TARGET_MODULES = {
    "servicenow": "relay.targets.servicenow",
    "bmc_helix": "relay.targets.bmc_helix",
    "request_tracker": "relay.targets.request_tracker",
    "jira_service_management": "relay.targets.jira_service_management",
    "pagerduty": "relay.targets.pagerduty",
    "forward": "relay.targets.forward",
    "dry_run": "relay.targets.dry_run",
}


class TargetModuleError(ImportError):
    """A kind's module does not declare what the relay needs to know about the kind."""


_UNDECLARED: Any = object()


def load_kind(kind: str) -> ModuleType:
    """The module of a kind in `TARGET_MODULES`, checked for the facts every kind declares."""
    module_name = TARGET_MODULES[kind]
    module = importlib.import_module(module_name)
    where = f"target kind {kind!r} ({module_name})"
    if not callable(getattr(module, "from_config", None)):
        raise TargetModuleError(f"{where} does not declare from_config(name, cfg, env)")
    cls = getattr(module, "TARGET_CLASS", None)
    if not isinstance(cls, type):
        raise TargetModuleError(f"{where} does not declare TARGET_CLASS, the class from_config builds")
    if getattr(cls, "kind", None) != kind:
        raise TargetModuleError(f"{where} does not declare kind = {kind!r} on {cls.__name__}")
    limits = getattr(cls, "limits", _UNDECLARED)
    if limits is _UNDECLARED or not (limits is None or isinstance(limits, TextLimits)):
        raise TargetModuleError(
            f"{where} does not declare limits on {cls.__name__}: a TextLimits(summary, description, note), "
            "or None for a kind that sends no ticket text"
        )
    if not isinstance(getattr(cls, "severity_fields", None), Mapping):
        raise TargetModuleError(
            f"{where} does not declare severity_fields on {cls.__name__}: a mapping of severity to the fields "
            "it sets on create ({} for none)"
        )
    options = getattr(cls, "options_class", None)
    if not (isinstance(options, type) and dataclasses.is_dataclass(options)):
        raise TargetModuleError(
            f"{where} does not declare options_class on {cls.__name__}: the dataclass of its options"
        )
    return module


def build_target(name: str, cfg: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Target | Forwarder:
    """The target for one `targets.<name>` block (no I/O; sessions open on first use)."""
    kind = cfg.get("kind")
    if not isinstance(kind, str) or kind not in TARGET_MODULES:
        raise TargetConfigError(name, [("kind", f"must be one of {', '.join(TARGET_MODULES)} (got {kind!r})")])
    module = load_kind(kind)
    block = {k: v for k, v in cfg.items() if k not in CORE_KEYS}
    return module.from_config(name, block, os.environ if env is None else env)


def is_forwarder(target: Target | Forwarder) -> bool:
    """Forwarders take the raw body and own the lifecycle themselves; Targets get lifecycle calls."""
    return hasattr(target, "forward")
