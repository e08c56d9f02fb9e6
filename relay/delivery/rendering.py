"""What a target is sent: incidents rendered from an alert and a route, and the texts of work notes.

Templates run in Jinja2's sandbox over the alert's own JSON names (`essentials.alertRule`,
`alertContext...`, `customProperties...`) plus a few conveniences (`title`, `resource`, `ci`, ...).
Text too long for a vendor field is cut with a visible marker (`truncate`), never refused.
A missing name renders empty (alert types differ in what they carry; a rule that works for metric
alerts must not lose a log alert's ticket). A template that fails outright falls back to the default
and says so in the description: an alert is never dropped for a template.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from html.parser import HTMLParser
from typing import Any

from jinja2 import ChainableUndefined, Template, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from relay.alerts import (
    Alert,
    BudgetContext,
    LogContext,
    MetricContext,
    ServiceHealthContext,
    log_search_link,
    portal_link,
    resource_group_of,
    subscription_of,
)
from relay.delivery.lifecycle import Action, Kind
from relay.schema import RECONCILED_PROPERTY, RECONCILED_TEXT
from relay.targets import Incident, Target, TextLimits, truncate

log = logging.getLogger("relay.delivery.rendering")

# An alert without a severity (budget alerts) gets no "[Sev?]": its summary starts with its title.
# A Service Health incident's tracking id comes first after the severity: it is what Microsoft's status
# pages, support and the portal name it by, and it survives a vendor's summary limit.
DEFAULT_SUMMARY = (
    "{% if severity %}[{{ severity }}] {% endif %}"
    "{% if service_health and service_health.tracking_id %}Service Health {{ service_health.tracking_id }}: {% endif %}"
    "{{ title }}{% if resource %} on {{ resource }}{% endif %}"
)
# A Service Health communication can be long (tables of impact, workarounds): it comes last, so that
# cutting the description to a vendor's limit cuts the communication's tail, not the ids and links.
DEFAULT_DESCRIPTION = """\
Azure Monitor alert: {{ title }}
Severity: {{ severity or "none" }} | Signal: {{ essentials.signalType or "-" }} | \
Service: {{ essentials.monitoringService }}
Condition: {{ essentials.monitorCondition or "Fired" }} at {{ essentials.firedDateTime }}\
{% if essentials.resolvedDateTime %}, resolved at {{ essentials.resolvedDateTime }}{% endif %}
{% if previous_ticket %}Fired again after its previous ticket {{ previous_ticket }} was resolved: \
this ticket continues it.
{% endif %}{% if essentials.description %}Description: {{ essentials.description }}
{% endif %}{% if service_health %}{% set sh = service_health %}\
Service Health {{ sh.incident_type or "event" }} {{ sh.tracking_id or "(no tracking id)" }}, stage {{ sh.stage or "-" }}
{% if sh.impacted %}Impacted: {% for i in sh.impacted %}{{ i.service }}\
{% if i.regions %} ({{ i.regions | join(", ") }}){% endif %}{% if not loop.last %}; {% endif %}{% endfor %}
{% endif %}{% if sh.impact_start %}Impact start: {{ sh.impact_start }}\
{% if sh.impact_mitigation %} | mitigation: {{ sh.impact_mitigation }}{% endif %}
{% endif %}{% endif %}{% for c in criteria %}Metric: {{ c.metricName }} {{ c.operator }} {{ c.threshold }} \
({{ c.timeAggregation }}), value {{ c.metricValue }}
{% endfor %}{% if budget %}Budget: {{ budget.name }} ({{ budget.threshold_type or "-" }}), \
spent {{ budget.spent or "-" }} of {{ budget.amount or "-" }}
{% endif %}{% if search_query %}Query: {{ search_query }}
{% endif %}{% if log_search_link %}Log search results: {{ log_search_link }}
{% endif %}
Alert rule: {{ rule }}
Subscription: {{ subscription or "-" }} | Resource group: {{ resource_group or "-" }}
{% if configuration_items %}Configuration items: {{ configuration_items | join(", ") }}
{% endif %}{% for r in essentials.alertTargetIDs or [] %}Resource: {{ r }}
{% endfor %}Alert id: {{ essentials.alertId }}
Azure portal: {{ portal_link }}

{% if budget %}To silence it: change or remove the alert conditions of budget {{ budget.name }} \
(Azure portal > Cost Management > Budgets).{% else %}To silence it (a maintenance, a known issue): an Azure alert \
processing rule that removes the action groups for alert rule {{ rule }} (Azure portal > Monitor > Alerts > \
Alert processing rules), or disable the alert rule.{% endif %}\
{% if service_health and service_health.communication %}

Communication{% if service_health.communication_id %} {{ service_health.communication_id }}{% endif %}:
{{ service_health.communication }}{% endif %}"""

_env = SandboxedEnvironment(undefined=ChainableUndefined, autoescape=False, keep_trailing_newline=False)


def compile_template(source: str) -> Template:
    """Compile a template; raises jinja2.TemplateSyntaxError (with `.lineno`) when it is malformed."""
    return _env.from_string(source)


_DEFAULT_SUMMARY = compile_template(DEFAULT_SUMMARY)
_DEFAULT_DESCRIPTION = compile_template(DEFAULT_DESCRIPTION)


def template_context(alert: Alert, cis: tuple[str, ...] = (), previous_ticket: str | None = None) -> dict[str, Any]:
    """The names templates see. `previous_ticket`: the resolved ticket a re-fire's new ticket follows."""
    data = alert.raw.get("data") or {}
    e = alert.essentials
    ctx = alert.context
    cis = cis or e.configuration_items or e.target_ids
    title = e.alert_rule or e.monitoring_service
    if isinstance(ctx, ServiceHealthContext) and ctx.title:
        title = ctx.title
    resource = cis[0].rstrip("/").rsplit("/", 1)[-1] if cis else ""
    budget = _budget(alert)
    if budget is not None:
        # A budget alert has no rule, severity or resource: its budget is what it is about.
        title = f"Cost budget {budget['name']} spent {budget['spent']} of {budget['amount']}" if budget["spent"] \
            else f"Cost budget {budget['name']}"
        resource = ""
    return {
        "schemaId": alert.raw.get("schemaId"),
        "data": data,
        "essentials": data.get("essentials") or {},
        "alertContext": data.get("alertContext") or {},
        "customProperties": alert.custom_properties,
        "title": title,
        "severity": e.severity or "",
        "condition": alert.condition,
        "resource": resource,
        "ci": cis[0] if len(cis) == 1 else "",
        "configuration_items": list(cis),
        "subscription": subscription_of(alert) or "",
        "resource_group": resource_group_of(alert) or "",
        "correlation_key": alert.correlation_key,
        "criteria": list(ctx.criteria) if isinstance(ctx, MetricContext) else [],
        "search_query": ctx.search_query if isinstance(ctx, LogContext) else None,
        "log_search_link": log_search_link(alert),
        "portal_link": portal_link(alert),
        "previous_ticket": previous_ticket,
        "rule": e.alert_rule or (f"budget {budget['name']}" if budget else title),
        "budget": budget,
        "service_health": _service_health(alert),
    }


def _service_health(alert: Alert) -> dict[str, Any] | None:
    """A Service Health notification's facts for templates; `communication` as plain text (Azure sends HTML)."""
    ctx = alert.context
    if not isinstance(ctx, ServiceHealthContext):
        return None
    return {
        "tracking_id": ctx.tracking_id,
        "title": ctx.title,
        "stage": ctx.stage,
        "incident_type": ctx.incident_type,
        # Text that is all tags to a parser (the docs' "<MESSAGE>" placeholder) is kept as sent.
        "communication": html_text(ctx.communication or "") or (ctx.communication or "").strip(),
        "communication_id": ctx.communication_id,
        "impacted": [{"service": i.service, "regions": list(i.regions)} for i in ctx.impacted],
        "impact_start": ctx.impact_start,
        "impact_mitigation": ctx.impact_mitigation,
    }


class _TextOf(HTMLParser):
    """Plain text of an HTML fragment: block elements and <br> break lines, list items get "- "."""

    BLOCKS = frozenset({"p", "div", "br", "li", "tr", "ul", "ol", "table", "h1", "h2", "h3", "h4", "h5", "h6",
                        "blockquote", "pre", "hr"})
    SKIP = frozenset({"script", "style", "head", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.SKIP:
            self.skipping += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n")
            if tag == "li":
                self.parts.append("- ")
        elif tag in ("td", "th"):
            self.parts.append(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)  # <br/> is one break, not two

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in self.BLOCKS and tag not in ("li", "tr"):  # items and rows: one line each, no blank between
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(data)


def html_text(html: str) -> str:
    """Service Health's HTML `communication` as text a ticket shows: tags dropped, entities decoded, block
    elements on their own lines, runs of spaces and blank lines squeezed. Text without tags is kept."""
    parser = _TextOf()
    parser.feed(html)
    parser.close()
    lines = [" ".join(line.split()) for line in "".join(parser.parts).splitlines()]
    text = "\n".join(lines).strip()
    return re.sub(r"\n{3,}", "\n\n", text)


def _budget(alert: Alert) -> dict[str, str | None] | None:
    """A cost budget alert's budget: name, threshold type, amount and spend (Azure sends them as text)."""
    ctx = alert.context
    if not isinstance(ctx, BudgetContext):
        return None
    return {
        "name": ctx.budget_name or "(unnamed)",
        "threshold_type": ctx.threshold_type,
        "amount": ctx.budget_amount,
        "spent": ctx.spent_amount,
    }


def render(template: Template, context: Mapping[str, Any], fallback: Template | None = None) -> tuple[str, str | None]:
    """(text, error): on a failing template, the fallback's text and what went wrong."""
    try:
        return template.render(context).strip(), None
    except (TemplateError, ArithmeticError, TypeError, ValueError, LookupError, AttributeError) as exc:
        error = f"{type(exc).__name__}: {exc}"
        if fallback is None:
            return "", error
        return fallback.render(context).strip(), error


def render_incident(
    alert: Alert,
    *,
    target: Target,
    correlation_key: str,
    configuration_items: tuple[str, ...],
    summary: Template | None = None,
    description: Template | None = None,
    fields: Mapping[str, Any] | None = None,
    severity_fields: Mapping[str, Mapping[str, Any]] | None = None,
    body: bytes = b"",
    unbound_configuration_items: tuple[str, ...] = (),
    previous_ticket: str | None = None,
) -> Incident:
    """The incident a target should hold for this alert (or one CI of it), cut to the target's limits.

    `unbound_configuration_items` (over the per-alert limit) are listed at the end of the description.

    `severity_fields` overrides the target's own `severity_fields` (the target block's `severity:`).
    `previous_ticket`: the number of the resolved ticket this one follows (a re-fire, `on_refire: new`).
    """
    context = template_context(alert, configuration_items, previous_ticket)
    limits = _limits(target)
    problems = []
    summary_text, err = render(summary or _DEFAULT_SUMMARY, context, _DEFAULT_SUMMARY)
    if err:
        problems.append(f"summary template failed ({err}); the default was used")
    description_text, err = render(description or _DEFAULT_DESCRIPTION, context, _DEFAULT_DESCRIPTION)
    if err:
        problems.append(f"description template failed ({err}); the default was used")
    merged: dict[str, Any] = {}
    sev = alert.essentials.severity
    table = {**target.severity_fields, **(severity_fields or {})}
    if sev and sev in table:
        merged.update(table[sev])
    for name, value in (fields or {}).items():
        if isinstance(value, Template):
            text, err = render(value, context)
            if err:
                problems.append(f"field {name} template failed ({err}); the field was left out")
                continue
            merged[name] = text
        else:
            merged[name] = value
    if problems:
        log.warning("alert %s: %s", alert.correlation_key, "; ".join(problems))
        description_text = "\n".join(problems) + "\n\n" + description_text
    if reconciled(alert):
        description_text = RECONCILED_TEXT + "\n\n" + description_text
    if unbound_configuration_items:
        description_text += (f"\nConfiguration items not bound to a ticket (over the per-alert limit): "
                             f"{', '.join(unbound_configuration_items)}")
    return Incident(
        correlation_key=correlation_key,
        summary=truncate(" ".join(summary_text.split()) or "Azure Monitor alert", limits.summary),
        description=truncate(description_text, limits.description),
        severity=sev,
        fields=merged,
        configuration_items=configuration_items,
        resource_ids=alert.essentials.target_ids,
        fired_at=alert.essentials.fired_at,
        resolved_at=alert.essentials.resolved_at,
        body=body,
    )


def note_text(action: Action, kind: Kind, alert: Alert, target: Target) -> str:
    """The work note for a NOTE, RESOLVE or REOPEN: what happened, when, and which alert."""
    if isinstance(alert.context, ServiceHealthContext):
        return truncate(_service_health_note(action, kind, alert), _limits(target).note)
    e = alert.essentials
    title = template_context(alert)["title"]
    if kind is Kind.RESOLVED:
        when = e.resolved_at or alert.occurred_at
        verb = "Resolved automatically: " if action is Action.RESOLVE else ""
        text = f"{verb}Azure Monitor alert {title} resolved at {when} (resolvedDateTime)."
    elif kind is Kind.UPDATE:  # only Service Health sends updates today
        text = f"Azure Monitor update for {title}."
    elif action is Action.REOPEN:
        text = f"Reopened: Azure Monitor alert {title} fired again at {e.fired_at} after it was resolved."
    else:
        text = f"Azure Monitor alert {title} fired again at {e.fired_at}."
    text += f"\nAlert id: {e.alert_id}"
    if reconciled(alert):
        text += "\n" + RECONCILED_TEXT
    return truncate(text, _limits(target).note)


def _service_health_note(action: Action, kind: Kind, alert: Alert) -> str:
    """Every Service Health notification after the first is a note carrying its communication: the stage,
    what is impacted now, and the text Microsoft wrote (the first one is in the incident's description)."""
    sh = _service_health(alert)
    assert sh is not None
    thread = sh["tracking_id"] or sh["title"] or "(no tracking id)"
    stage = sh["stage"] or "-"
    when = alert.essentials.fired_at
    if kind is Kind.RESOLVED:
        head = ("Resolved automatically: " if action is Action.RESOLVE else "") + \
            f"Azure Service Health {thread} resolved (stage {stage}) at {when}"
    elif action is Action.REOPEN:
        head = f"Reopened: Azure Service Health {thread} is active again (stage {stage}) at {when}"
    else:
        head = f"Azure Service Health update for {thread} (stage {stage}) at {when}"
    lines = [f"{head}: {sh['title'] or '-'}"]
    if sh["impacted"]:
        lines.append("Impacted: " + "; ".join(
            i["service"] + (f" ({', '.join(i['regions'])})" if i["regions"] else "") for i in sh["impacted"]))
    if sh["communication"]:
        lines += [f"Communication{' ' + sh['communication_id'] if sh['communication_id'] else ''}:",
                  sh["communication"]]
    lines.append(f"Alert id: {alert.essentials.alert_id}")
    return "\n".join(lines)


def reconciled(alert: Alert) -> bool:
    """Whether reconciliation synthesized this event (docs/reconciliation.md) rather than a webhook."""
    return alert.custom_properties.get(RECONCILED_PROPERTY) is True


def _limits(target: Target) -> TextLimits:
    limits = target.limits
    if limits is None:  # a forwarder: it is given the raw body, never rendered text
        raise ValueError(f"target {target.name!r} ({target.kind}) sends no ticket text: it has no text limits")
    return limits
