"""The contract every ITSM target speaks. One module per target, each speaking one API.

A target answers one question per call: did it work, and if not, is it worth trying again
(`TargetError.retryable`)? Lifecycle decisions, retries, backoff, circuit breaking, dead letters and
metrics live once, outside the targets (see STYLE.md: Alertmanager's notify/ package).
"""

from __future__ import annotations

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
