"""The `secure-export:monitoring` section: who hears about the relay itself, what the self-monitoring
rules alert on, where the relay's metrics go (OpenTelemetry) and who may read the store after a deploy.

Self-monitoring is declared when `monitoring.emails` lists at least one address: a fallback action group
with no receiver would watch the relay and tell nobody."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from infra.config.reader import _HTTPS_URL, ConfigError, Section, _text
from relay import schema

# A pragmatic mailbox check: one @, no spaces, a dot in the domain (Azure validates the rest when saved).
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
# Azure's limit on an e-mail receiver's name within an action group.
RECEIVER_NAME_LENGTH = 128


@dataclass(frozen=True)
class OpenTelemetrySettings:
    """Metrics pushed with OTLP to the Container Apps environment's managed OpenTelemetry agent, which
    forwards them to `endpoint` (any OTLP/HTTP collector). The agent's Application Insights destination
    takes traces and logs only, not metrics (learn.microsoft.com/azure/container-apps/opentelemetry-agents)."""

    endpoint: str  # an https:// OTLP endpoint the agent sends to
    export_interval_seconds: int = 60


@dataclass(frozen=True)
class MonitoringSettings:
    emails: tuple[str, ...]  # the fallback action group's e-mail receivers
    short_name: str = "SecExpOps"  # at most 12 characters, shown in the e-mail subject
    # Refused tokens in 5 minutes above which someone is probing the webhook (or a key rotation broke).
    refused_tokens_threshold: int = 20
    # 5xx answers in 5 minutes above which Azure Monitor's retries are losing alerts.
    server_errors_threshold: int = 5
    # The object id of the identity that runs `make smoke` (the deploy identity): it gets Storage Table
    # Data Reader on the state table only, so the smoke test can see the relay record its test alert.
    smoke_reader_principal_id: str | None = None
    open_telemetry: OpenTelemetrySettings | None = None


def _email(key: str, value: Any) -> str:
    return _text(key, value, _EMAIL, "an e-mail address such as oncall@example.com")


def monitoring(project: Section) -> MonitoringSettings | None:
    """The validated section, or None when no e-mail receiver is given (no self-monitoring)."""
    section = project.section("monitoring")
    emails = section.strings("emails", None, check=_email, expected="e-mail addresses")
    if emails is None:
        if section.has("openTelemetry") or section.has("smokeReaderPrincipalId"):
            raise ConfigError(
                section.key_of("emails"),
                "is required when any other monitoring key is set",
                "a list of e-mail addresses that hear when the relay itself fails",
            )
        section.finish()
        return None
    if len({e.lower() for e in emails}) != len(emails):
        raise ConfigError(section.key_of("emails"), "lists an address twice", "distinct e-mail addresses")
    short_name = section.text("shortName", "SecExpOps")
    if len(short_name) > 12:
        raise ConfigError(
            section.key_of("shortName"),
            f"{short_name!r} is {len(short_name)} characters long",
            "1 to 12 characters (Azure's limit for an action group's short name)",
        )
    settings = MonitoringSettings(
        emails=emails,
        short_name=short_name,
        refused_tokens_threshold=section.integer("refusedTokensThreshold", 20, minimum=1, maximum=100000),
        server_errors_threshold=section.integer("serverErrorsThreshold", 5, minimum=1, maximum=100000),
        smoke_reader_principal_id=section.text(
            "smokeReaderPrincipalId",
            None,
            pattern=schema.GUID,
            expected="the object id (a GUID) of the identity that runs `make smoke`",
        ),
        open_telemetry=_open_telemetry(section),
    )
    section.finish()
    return settings


def _open_telemetry(section: Section) -> OpenTelemetrySettings | None:
    otel = section.mapping("openTelemetry", required=False)
    if otel is None:
        return None
    settings = OpenTelemetrySettings(
        endpoint=otel.text("endpoint", pattern=_HTTPS_URL, expected="the https:// URL of an OTLP/HTTP collector"),
        export_interval_seconds=otel.integer("exportIntervalSeconds", 60, minimum=10, maximum=3600),
    )
    otel.finish()
    return settings
