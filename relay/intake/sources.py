"""Which alert sources the relay takes: the subscription allow-list and alert-rule id patterns.

Any action group in the tenant can call the relay with a valid Azure Monitor token (the token does not
say which action group, subscription or rule sent it), so the alert's own ids are checked. A pure
decision over the alert: the handler answers 403 and stores nothing when it refuses.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from relay.alerts import Alert, subscription_of


@dataclass(frozen=True, slots=True)
class SourcePolicy:
    """Empty tuples allow any source (the relay warns at start when no subscription is listed)."""

    subscriptions: tuple[str, ...] = ()  # lower-case subscription GUIDs
    alert_rules: tuple[str, ...] = ()  # case-insensitive glob patterns over alertRuleID

    @property
    def open(self) -> bool:
        return not self.subscriptions and not self.alert_rules


def source_refusal(alert: Alert, policy: SourcePolicy) -> str | None:
    """Why `alert` comes from a source the policy does not allow, or None when it is allowed."""
    if policy.subscriptions:
        sub = (subscription_of(alert) or "").lower()
        if sub not in policy.subscriptions:
            return f"subscription {sub or '(none)'} is not in RELAY_ALLOWED_SUBSCRIPTIONS"
    if policy.alert_rules:
        rule = (alert.essentials.alert_rule_id or "").lower()
        if not any(fnmatchcase(rule, pattern.lower()) for pattern in policy.alert_rules):
            return f"alert rule {rule or '(none)'} matches no RELAY_ALLOWED_ALERT_RULES pattern"
    return None
