"""The dry-run target: writes each call it would make as one JSON line, and sends nothing.

It is what the relay uses without RELAY_CONFIG, and a safe first step with a new routing file:
`{"target", "call": find|create|note|resolve|reopen, "correlation_key", "ticket", "incident", "text"}`.
Tickets it "creates" are remembered for the life of the process, so `find` answers like a real
target would after a crash between create and record. It cannot be read back (no `read`, no
`search`): a retried note, resolve or reopen is written again, and a lost store is not recovered.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any, ClassVar

from relay.targets import Finding, Incident, TextLimits, Ticket
from relay.targets.target_config import COMMON_KEYS, ENDPOINT_KEYS, Options, option_keys


@dataclass(frozen=True, slots=True)
class DryRunOptions:
    path: str | None = None  # a file to append the JSON lines to; without it, standard output


OPTION_KEYS = option_keys(DryRunOptions)


class DryRunTarget:
    kind: ClassVar[str] = "dry_run"
    # What a ServiceNow incident holds, so a dry run shows text of the length a real target would get.
    limits: ClassVar[TextLimits] = TextLimits(summary=160, description=4000, note=4000)
    severity_fields: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    options_class: ClassVar[type] = DryRunOptions

    def __init__(self, name: str, path: str | None = None, stream: IO[str] | None = None) -> None:
        self.name = name
        self.path = path
        self._stream = stream
        self._tickets: dict[str, Ticket] = {}

    async def check(self) -> list[Finding]:
        """Nothing to reach: the dry run writes its calls to a file or stdout."""
        return [Finding("output", "ok", f"writes its calls to {self.path or 'stdout'}")]

    async def find(self, incident: Incident) -> Ticket | None:
        ticket = self._tickets.get(incident.correlation_key)
        self._write("find", incident, ticket)
        return ticket

    async def create(self, incident: Incident) -> Ticket:
        ticket = Ticket(id=f"dry-{incident.correlation_key}", number=f"DRY{len(self._tickets) + 1:07d}")
        self._tickets[incident.correlation_key] = ticket
        self._write("create", incident, ticket, full=True)
        return ticket

    async def note(self, ticket: Ticket, incident: Incident, text: str) -> None:
        self._write("note", incident, ticket, text=text)

    async def resolve(self, ticket: Ticket, incident: Incident, text: str) -> None:
        self._remember(incident, ticket, resolved=True)
        self._write("resolve", incident, ticket, text=text)

    async def reopen(self, ticket: Ticket, incident: Incident, text: str) -> None:
        self._remember(incident, ticket, resolved=False)
        self._write("reopen", incident, ticket, text=text)

    async def close(self) -> None:
        if self._stream is not None and self.path is not None:
            self._stream.close()
            self._stream = None

    def _remember(self, incident: Incident, ticket: Ticket, resolved: bool) -> None:
        self._tickets[incident.correlation_key] = Ticket(ticket.id, ticket.number, resolved=resolved)

    def _write(self, call: str, incident: Incident, ticket: Ticket | None, *, full: bool = False,
               text: str | None = None) -> None:
        record: dict[str, Any] = {"target": self.name, "call": call, "correlation_key": incident.correlation_key}
        record["ticket"] = None if ticket is None else {"id": ticket.id, "number": ticket.number}
        if full:
            record["incident"] = incident_json(incident)
        if text is not None:
            record["text"] = text
        stream = self._out()
        stream.write(json.dumps(record, ensure_ascii=False) + "\n")
        stream.flush()

    def _out(self) -> IO[str]:
        if self._stream is None:
            if self.path is None:
                return sys.stdout
            # 0600: the output holds alert bodies and ticket text.
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
            self._stream = open(fd, "a", encoding="utf-8")
        return self._stream


TARGET_CLASS = DryRunTarget


def incident_json(incident: Incident) -> dict[str, Any]:
    """An incident as plain JSON (the dry-run output); the raw body is left out."""
    return {
        "correlation_key": incident.correlation_key,
        "summary": incident.summary,
        "description": incident.description,
        "severity": incident.severity,
        "fields": json.loads(json.dumps(dict(incident.fields), default=str)),
        "configuration_items": list(incident.configuration_items),
        "resource_ids": list(incident.resource_ids),
        "fired_at": incident.fired_at,
        "resolved_at": incident.resolved_at,
    }


def from_config(name: str, cfg: Mapping[str, Any], env: Mapping[str, str] = os.environ) -> DryRunTarget:
    """`path`: a file to append the JSON lines to; without it, standard output."""
    opts = Options(name, cfg)
    opts.reject_unknown((COMMON_KEYS - ENDPOINT_KEYS) | OPTION_KEYS)
    options = opts.read(DryRunOptions)
    opts.check()
    return DryRunTarget(name, path=options.path)
