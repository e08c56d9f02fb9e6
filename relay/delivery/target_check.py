"""The start-up target check: each target's own read-only probe (`check()`, in relay/targets), run for
`relay check-targets` and, at `relay serve` start and then every RECHECK_INTERVAL_SECONDS, for the log,
the `relay_target_check{target}` gauge and /readyz's details. A failed check never makes the relay
unready: an ITSM outage must not take it out of rotation (alerts are stored and delivered later).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Gauge

from relay.targets import Finding, Forwarder, Target, TargetError, can_check

log = logging.getLogger("relay.delivery.target_check")

# How long one target's probes may take in all: a few calls, each under the target's own timeout.
CHECK_TIMEOUT_SECONDS = 60.0
# How often `relay serve` checks again: a rotated or expired credential shows within this, before
# an alert meets it.
RECHECK_INTERVAL_SECONDS = 15 * 60.0


@dataclass(frozen=True, slots=True)
class TargetCheck:
    """What one target's probe found, and when (epoch seconds)."""

    target: str
    kind: str
    findings: tuple[Finding, ...]
    checked_at: float

    @property
    def status(self) -> str:
        return verdict(self.findings)


def verdict(findings: Iterable[Finding]) -> str:
    """`failed` when any finding failed; `ok` when every one is ok; `unchecked` otherwise (none failed,
    but something could not be looked at). No findings at all is `unchecked`."""
    statuses = [f.status for f in findings]
    if "failed" in statuses:
        return "failed"
    if statuses and all(s == "ok" for s in statuses):
        return "ok"
    return "unchecked"


async def check_target(
    name: str, target: Target | Forwarder, *, limit_seconds: float = CHECK_TIMEOUT_SECONDS, now: float
) -> TargetCheck:
    """Run one target's probe under `limit_seconds`. Whatever goes wrong becomes a failed finding, never an error."""
    kind = type(target).kind
    if not can_check(target):
        findings: tuple[Finding, ...] = (Finding("probe", "unchecked", f"not checked: kind {kind} has no probe"),)
        return TargetCheck(name, kind, findings, now)
    try:
        async with asyncio.timeout(limit_seconds):
            findings = tuple(await target.check())  # type: ignore[union-attr]
    except TimeoutError:
        findings = (Finding("reachable", "failed", f"the probes took longer than {limit_seconds:g}s"),)
    except TargetError as exc:  # the target did not answer (refused, reset, timed out)
        findings = (Finding("reachable", "failed", str(exc)),)
    except Exception as exc:  # a probe's bug must not stop the others, nor the relay
        log.exception("%s: the target check failed unexpectedly", name)
        findings = (Finding("probe", "failed", f"{type(exc).__name__}: {exc}"),)
    return TargetCheck(name, kind, findings, now)


async def check_targets(
    targets: Mapping[str, Target | Forwarder],
    *,
    limit_seconds: float = CHECK_TIMEOUT_SECONDS,
    clock: Callable[[], float] = time.time,
) -> dict[str, TargetCheck]:
    """Every target's check, concurrently, in the configuration's order."""
    now = clock()
    runs = (check_target(name, target, limit_seconds=limit_seconds, now=now) for name, target in targets.items())
    results = await asyncio.gather(*runs)
    return {check.target: check for check in results}


def report_lines(checks: Mapping[str, TargetCheck]) -> list[str]:
    """The checks as text, one line per target then one per finding: what `relay check-targets` prints."""
    lines = []
    for check in checks.values():
        lines.append(f"{check.target} ({check.kind}): {check.status.upper()}")
        for finding in check.findings:
            detail = f": {finding.detail}" if finding.detail else ""
            lines.append(f"  {finding.status:<9} {finding.check}{detail}")
    return lines


def readiness_details(checks: Mapping[str, TargetCheck] | None, names: Iterable[str]) -> dict[str, str]:
    """What /readyz shows: each target's verdict only (`pending` before the first check). The findings
    stay in the log and on the admin port: /readyz is on the public listener."""
    checks = checks or {}
    return {name: checks[name].status if name in checks else "pending" for name in names}


class TargetCheckMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.passed = Gauge(
            "relay_target_check",
            "The last start-up/periodic target check per target: 1 no probe failed, 0 one did",
            ["target"],
            registry=registry,
        )
        self.checked_at = Gauge(
            "relay_target_check_timestamp_seconds",
            "When each target was last checked (Unix time)",
            ["target"],
            registry=registry,
        )

    def record(self, checks: Mapping[str, TargetCheck]) -> None:
        for check in checks.values():
            self.passed.labels(check.target).set(0 if check.status == "failed" else 1)
            self.checked_at.labels(check.target).set(check.checked_at)


def log_checks(checks: Mapping[str, TargetCheck]) -> None:
    """One line per target: INFO when nothing failed, WARNING with every finding when something did."""
    for check in checks.values():
        summary = "; ".join(f"{f.check} {f.status}" + (f" ({f.detail})" if f.status != "ok" else "")
                            for f in check.findings)
        if check.status == "failed":  # the stack's "target check failed" log alert matches these words
            log.warning("target check failed for %s (%s): %s", check.target, check.kind, summary)
        else:
            log.info("target check %s (%s): %s: %s", check.target, check.kind, check.status, summary)


async def check_periodically(
    targets: Mapping[str, Target | Forwarder],
    results: dict[str, TargetCheck],
    metrics: TargetCheckMetrics,
    *,
    every: float = RECHECK_INTERVAL_SECONDS,
    limit_seconds: float = CHECK_TIMEOUT_SECONDS,
) -> None:
    """Check now, then every `every` seconds, forever; `results` always holds the latest checks."""
    while True:
        checks = await check_targets(targets, limit_seconds=limit_seconds)
        results.update(checks)
        metrics.record(checks)
        log_checks(checks)
        await asyncio.sleep(every)
