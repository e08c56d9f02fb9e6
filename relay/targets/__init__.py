"""The contract every ITSM target speaks. One module per target, each speaking one API.

A target answers one question per call: did it work, and if not, is it worth trying again
(`TargetError.retryable`)? Lifecycle decisions, retries, backoff, circuit breaking, dead letters and
metrics live once, outside the targets (see STYLE.md: Alertmanager's notify/ package).

How a target module plugs in (adding a target = one module + its entry in `TARGET_MODULES`):

- `relay/targets/<kind>.py` exposes
  `from_config(name: str, cfg: Mapping[str, Any], env: Mapping[str, str] = os.environ) -> Target`
  (or a `Forwarder`). `cfg` is the raw `targets.<name>` block of RELAY_CONFIG minus the keys the
  delivery core owns (`CORE_KEYS`: `severity`); the module validates the rest with
  `relay.targets.target_config.Options` and raises its `TargetConfigError`, whose message starts
  `target '<name>': <dotted.key>` so that `relay check-config` can point at the line.
- `from_config` does no I/O and opens no session (`VendorHTTP` opens one pooled session lazily).
  `relay check-config` calls it with an `env` in which every variable is set to a placeholder.
- The core reads `max_concurrency` and `timeout_seconds` too (defaults in `target_config`): at most
  `max_concurrency` deliveries run at once per target, each under a deadline derived from the timeout.
- `Incident` arrives rendered (`relay.delivery.rendering`): `summary` and `description` already cut to the
  kind's limits. `fields` holds what to set on create: the severity mapping for the kind
  (`relay.delivery.rendering.SEVERITY_FIELDS`, overridable per target with `severity:`) overlaid with the route's
  `fields:`. `configuration_items` is `essentials.configurationItems`, else `alertTargetIDs`;
  `resource_ids` is always `alertTargetIDs` (ARM ids, lower case as Azure sends them).
- `correlation_key` is never empty, at most 64 characters of `[A-Za-z0-9._-]`: the alert GUID, or
  `sh-<trackingId>-<subscription>` (Service Health), or `ci-<hash>` (one incident per CI), with a `.N`
  suffix for the N-th incident of one key (`on_refire: new`), so an old resolved ticket and its
  successor never share a key. `find` matches it exactly; more than one match is a non-retryable
  `TargetError`. `find` may return a resolved ticket (`resolved=True`) or skip resolved ones: the
  worker adopts a found ticket only when it is not resolved (crash recovery: created, not recorded).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol


class TargetError(Exception):
    """A call to a target failed. `retryable` says whether trying again can help."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status


def is_retryable_status(status: int) -> bool:
    """HTTP statuses a retry can fix: 408, 409, 425, 429 and 5xx. Other 4xx go to dead letters."""
    return status in (408, 409, 425, 429) or status >= 500


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


class Target(Protocol):
    kind: ClassVar[str]
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


class Forwarder(Protocol):
    """A target that owns the lifecycle itself (a vendor's own Azure endpoint): it gets the raw body."""

    kind: ClassVar[str]
    name: str

    async def forward(self, body: bytes) -> None: ...

    async def close(self) -> None: ...


# Keys of a target block that the delivery core reads and the target module never sees.
CORE_KEYS = frozenset({"severity"})

# kind -> module; imported when a target of that kind is built, so one kind's import cost or
# breakage never touches the others.
TARGET_MODULES = {
    "servicenow": "relay.targets.servicenow",
    "bmc_helix": "relay.targets.bmc_helix",
    "request_tracker": "relay.targets.request_tracker",
    "forward": "relay.targets.forward",
    "dry_run": "relay.targets.dry_run",
}


def build_target(name: str, cfg: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Target | Forwarder:
    """The target for one `targets.<name>` block (no I/O; sessions open on first use)."""
    kind = cfg.get("kind")
    module_name = TARGET_MODULES.get(kind) if isinstance(kind, str) else None
    if module_name is None:
        raise ValueError(f"target {name!r}: kind must be one of {', '.join(TARGET_MODULES)} (got {kind!r})")
    module = importlib.import_module(module_name)
    block = {k: v for k, v in cfg.items() if k not in CORE_KEYS}
    return module.from_config(name, block, os.environ if env is None else env)


def is_forwarder(target: Target | Forwarder) -> bool:
    """Forwarders take the raw body and own the lifecycle themselves; Targets get lifecycle calls."""
    return hasattr(target, "forward")
