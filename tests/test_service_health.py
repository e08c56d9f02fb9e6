"""Service Health tickets: one per incident and subscription, the tracking id in the summary, impacted
services and regions and the first communication in the description, every later communication a note.

The notifications of one incident are built from the official test-action sample (the only full
Service Health payload Microsoft publishes) by changing what differs between its notifications:
stage, communication, communicationId and firedDateTime.
"""

from __future__ import annotations

import copy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.alerts import ImpactedService, parse_alert
from relay.delivery.lifecycle import Action, Kind, Policy, TicketState, decide, event_facts, ticket_keys
from relay.delivery.rendering import html_text, note_text, render_incident
from relay.targets import truncate
from relay.targets.bmc_helix import BmcHelixTarget
from relay.targets.request_tracker import RequestTrackerTarget
from relay.targets.servicenow import ServiceNowTarget
from tests.conftest import load_sample

SUB_A = "aaaa0a0a-bb1b-cc2c-dd3d-eeeeee4e4e4e"
SUB_B = "bbbb1b1b-cc2c-dd3d-ee4e-ffffff5f5f5f"


class Kind_:  # what rendering reads of a target: the class facts (as `relay route` uses them)
    def __init__(self, cls: type) -> None:
        self.name, self.kind, self.limits, self.severity_fields = "t", cls.kind, cls.limits, cls.severity_fields


RT = Kind_(RequestTrackerTarget)
SNOW = Kind_(ServiceNowTarget)


def notification(stage: str, communication: str, n: int, *, sub: str = SUB_A, fired: str | None = None,
                 impacted: list | str | None = None) -> dict:
    """The n-th notification of incident TEST-TTT, as seen by subscription `sub`."""
    doc = load_sample("testaction-servicehealth-fired.json")
    e = doc["data"]["essentials"]
    guid = f"0000000{n}-aaaa-bbbb-cccc-dddddddddddd"
    e["alertId"] = f"/subscriptions/{sub}/providers/Microsoft.AlertsManagement/alerts/{guid}"
    e["alertTargetIDs"] = [f"/subscriptions/{sub}"]
    e["firedDateTime"] = fired or f"2025-04-15T18:{20 + n:02d}:36.256Z"
    props = doc["data"]["alertContext"]["properties"]
    props["stage"] = stage
    props["communication"] = communication
    props["communicationId"] = f"comm-{n}"
    if impacted is not None:
        props["impactedServices"] = impacted
    return doc


def incident(doc: dict, target=RT):
    alert = parse_alert(doc)
    [key] = ticket_keys(alert, "alert")
    return render_incident(alert, target=target, correlation_key=key.key, configuration_items=key.configuration_items)


# -- the model --------------------------------------------------------------------------------------

def test_the_official_sample_gives_communication_impact_and_times():
    ctx = parse_alert(load_sample("testaction-servicehealth-fired.json")).context
    assert ctx.communication == "<p>ThisisatestfromServiceHealthAlert</p>"
    assert ctx.communication_id == "11223344556677"
    assert ctx.impacted == (ImpactedService("AzureServiceName", ("Global",)),)
    assert ctx.impact_start == ctx.impact_mitigation == "2025-04-15T18:20:36.256Z"


def test_the_official_fragment_with_impacted_services_as_a_json_string():
    from tests.test_alerts import envelope

    ctx = parse_alert(envelope("ServiceHealth", load_sample("context-activitylog-servicehealth.json"),
                               "Activity Log")).context
    assert ctx.impacted == (ImpactedService("Azure Synapse Analytics", ("East US",)),)
    assert ctx.stage == "Planned" and ctx.incident_type == "Maintenance"


@pytest.mark.parametrize("impacted,expected", [
    ([{"ServiceName": "SQL Database",
       "ImpactedRegions": [{"RegionName": "West Europe"}, {"RegionName": "North Europe"}]},
      {"ServiceName": "App Service", "ImpactedRegions": []}],
     (ImpactedService("SQL Database", ("West Europe", "North Europe")), ImpactedService("App Service"))),
    ('[{"ServiceName": "Storage", "ImpactedRegions": [{"RegionName": "East US"}]}]',
     (ImpactedService("Storage", ("East US",)),)),
    (["Virtual Machines"], (ImpactedService("Virtual Machines"),)),
    ("not json", (ImpactedService("not json"),)),
    # Unusable entries are skipped; with nothing left, the notification's own service and region stand in.
    ([{"ImpactedRegions": []}, 7, None], (ImpactedService("AzureServiceName", ("Global",)),)),
    ([{"ServiceName": "Cosmos DB", "ImpactedRegions": [{"RegionName": 3}, "East US", {"RegionName": "West US"}]}],
     (ImpactedService("Cosmos DB", ("West US",)),)),
    (None, (ImpactedService("AzureServiceName", ("Global",)),)),
])
def test_impacted_services_in_every_shape_azure_writes(impacted, expected):
    doc = load_sample("testaction-servicehealth-fired.json")
    props = doc["data"]["alertContext"]["properties"]
    if impacted is None:
        del props["impactedServices"]
    else:
        props["impactedServices"] = impacted
    ctx = parse_alert(doc).context
    assert ctx.impacted == expected
    assert ctx.impacted_services == tuple(i.service for i in expected)


# -- the ticket ------------------------------------------------------------------------------------

def test_the_summary_leads_with_the_tracking_id_and_survives_the_shortest_vendor_limit():
    doc = notification("Active", "<p>We are investigating.</p>", 1)
    doc["data"]["alertContext"]["properties"]["title"] = "Degraded performance " * 10
    for target in (RT, SNOW, Kind_(BmcHelixTarget)):
        summary = incident(doc, target).summary
        assert summary.startswith("[Sev4] Service Health TEST-TTT: Degraded performance"), summary
        assert len(summary) <= target.limits.summary


def test_the_description_carries_stage_impact_and_the_first_communication_as_text():
    impacted = [{"ServiceName": "SQL Database", "ImpactedRegions": [{"RegionName": "West Europe"},
                                                                    {"RegionName": "North Europe"}]},
                {"ServiceName": "App Service", "ImpactedRegions": [{"RegionName": "West Europe"}]}]
    doc = notification("Active", "<p>Starting at 18:00 UTC customers <strong>may</strong> see errors.</p>"
                       "<p>Next update&nbsp;in 60 minutes.</p>", 1, impacted=impacted)
    text = incident(doc).description
    assert "Service Health Incident TEST-TTT, stage Active\n" in text
    assert "Impacted: SQL Database (West Europe, North Europe); App Service (West Europe)\n" in text
    assert "Impact start: 2025-04-15T18:20:36.256Z | mitigation: 2025-04-15T18:20:36.256Z" in text
    assert ("Communication comm-1:\nStarting at 18:00 UTC customers may see errors.\n\n"
            "Next update in 60 minutes.") in text
    assert "<p>" not in text and "<strong>" not in text


def test_a_long_communication_comes_last_so_the_description_limit_cuts_only_its_tail():
    doc = notification("Active", "<p>" + "impact details " * 1000 + "</p>", 1)
    text = incident(doc, SNOW).description
    assert len(text) == SNOW.limits.description and text.endswith("…[truncated]")
    for fact in ("Service Health Incident TEST-TTT, stage Active", "Impacted: AzureServiceName (Global)",
                 "Alert id: /subscriptions/", "Azure portal: https://portal.azure.com/", "To silence it"):
        assert fact in text
    assert text.index("To silence it") < text.index("Communication comm-1:\nimpact details impact details")


def test_a_placeholder_communication_the_parser_takes_for_a_tag_is_kept_as_sent():
    from tests.test_alerts import envelope

    doc = envelope("ServiceHealth", load_sample("context-activitylog-servicehealth.json"), "Activity Log")
    text = incident(doc).description
    assert "Communication <GUID>:\n<MESSAGE>" in text
    assert "Impacted: Azure Synapse Analytics (East US)" in text


def test_templates_see_the_service_health_facts():
    from relay.delivery.rendering import compile_template

    alert = parse_alert(notification("Active", "<p>hello</p>", 1))
    tpl = compile_template("{{ service_health.tracking_id }}|{{ service_health.communication }}|"
                           "{{ service_health.impacted[0].regions | join(',') }}")
    inc = render_incident(alert, target=RT, correlation_key="k", configuration_items=(), summary=tpl)
    assert inc.summary == "TEST-TTT|hello|Global"
    other = parse_alert(load_sample("testaction-metric-static-fired.json"))
    assert render_incident(other, target=RT, correlation_key="k", configuration_items=(),
                           summary=compile_template("[{{ service_health }}]")).summary == "[None]"


# -- the thread: one ticket, a note per communication ----------------------------------------------

def run_thread(docs: list[dict], policy: Policy | None = None) -> list[tuple[Action, str | None]]:
    """Decide each notification in turn (as the worker does), with the note text of each note-bearing action."""
    state: TicketState | None = None
    out = []
    for doc in docs:
        alert = parse_alert(doc)
        facts = event_facts(alert)
        decision = decide(facts, state, policy or Policy())
        text = note_text(decision.action, facts.kind, alert, RT) \
            if decision.action in (Action.NOTE, Action.RESOLVE, Action.REOPEN) else None
        state = decision.state.with_ticket("1", "1") if decision.action.opens_incident else decision.state
        out.append((decision.action, text))
    return out


def test_an_incident_thread_opens_one_ticket_and_notes_each_communication():
    docs = [
        notification("Active", "<p>We are investigating.</p>", 1),
        notification("Active", "<p>Mitigation in progress.</p>", 2),
        notification("Resolved", "<p>Mitigated at 19:40 UTC.</p>", 3),
        notification("RCA", "<p>Root cause: a configuration change.</p>", 4),
    ]
    keys = {ticket_keys(parse_alert(d), "alert")[0].key for d in docs}
    assert keys == {f"sh-test-ttt-{SUB_A}"}
    result = run_thread(docs)
    assert [a for a, _ in result] == [Action.CREATE, Action.NOTE, Action.RESOLVE, Action.NOTE]
    assert "Communication comm-1:\nWe are investigating." in incident(docs[0]).description
    _, update = result[1]
    assert update.startswith("Azure Service Health update for TEST-TTT (stage Active) at 2025-04-15T18:22:36.256Z")
    assert "Impacted: AzureServiceName (Global)\nCommunication comm-2:\nMitigation in progress." in update
    _, resolve = result[2]
    assert resolve.startswith("Resolved automatically: Azure Service Health TEST-TTT resolved (stage Resolved)")
    assert "Mitigated at 19:40 UTC." in resolve
    _, rca = result[3]
    assert "(stage RCA)" in rca and "Root cause: a configuration change." in rca
    assert all(f"/subscriptions/{SUB_A}/" in text for _, text in result[1:])


def test_a_redelivered_communication_is_not_noted_twice():
    first = notification("Active", "<p>a</p>", 1)
    second = notification("Active", "<p>b</p>", 2)
    assert [a for a, _ in run_thread([first, second, copy.deepcopy(second)])] == \
        [Action.CREATE, Action.NOTE, Action.NOTHING]


def test_a_resolve_before_the_ticket_exists_opens_nothing_and_a_late_active_then_opens_nothing():
    # Azure sends each notification once per subscription; one lost on the way must not open a ticket
    # for an incident that is over.
    actions = [a for a, _ in run_thread([notification("Resolved", "done", 3), notification("Active", "late", 1)])]
    assert actions == [Action.RECORD, Action.RECORD]


def test_with_on_resolve_note_the_resolve_communication_is_a_note_without_the_resolved_prefix():
    result = run_thread([notification("Active", "a", 1), notification("Resolved", "<p>over</p>", 2)],
                        Policy(on_resolve="note"))
    assert result[1][0] is Action.NOTE
    assert result[1][1].startswith("Azure Service Health TEST-TTT resolved (stage Resolved)")


def test_a_reactivated_incident_reopens_with_its_communication_when_the_route_says_so():
    result = run_thread([notification("Active", "a", 1), notification("Resolved", "b", 2),
                         notification("Active", "<p>It is back.</p>", 3)], Policy(on_refire="reopen"))
    assert result[2][0] is Action.REOPEN
    assert result[2][1].startswith("Reopened: Azure Service Health TEST-TTT is active again (stage Active)")
    assert "It is back." in result[2][1]


def test_each_subscription_gets_its_own_ticket_for_one_incident():
    a = parse_alert(notification("Active", "a", 1, sub=SUB_A))
    b = parse_alert(notification("Active", "a", 1, sub=SUB_B))
    [ka], [kb] = ticket_keys(a, "alert"), ticket_keys(b, "alert")
    assert ka.key == f"sh-test-ttt-{SUB_A}" and kb.key == f"sh-test-ttt-{SUB_B}"


def test_a_long_communication_is_cut_to_the_note_limit_keeping_its_head():
    long = "<p>" + "word " * 5000 + "</p>"
    alert = parse_alert(notification("Active", long, 2))
    text = note_text(Action.NOTE, Kind.FIRED, alert, SNOW)
    assert len(text) <= SNOW.limits.note
    assert text.startswith("Azure Service Health update for TEST-TTT") and text.endswith("…[truncated]")
    assert text == truncate(text, SNOW.limits.note)


# -- HTML as text ---------------------------------------------------------------------------------

@pytest.mark.parametrize("html,text", [
    ("<p>a</p><p>b</p>", "a\n\nb"),
    ("a<br>b<br/>c", "a\nb\nc"),
    ("<ul><li>one</li><li>two &amp; three</li></ul>", "- one\n- two & three"),
    ("x <script>bad()</script>y <style>p{}</style>z", "x y z"),
    ("latency < 5 ms & rising", "latency < 5 ms & rising"),
    ("  many   spaces\n\n\n\nlines ", "many spaces\n\nlines"),
    ("<table><tr><td>A</td><td>B</td></tr><tr><td>C</td></tr></table>", "A B\nC"),
    ("<h2>Summary of impact</h2><p>Between 09:00 and 10:00&#160;UTC</p>",
     "Summary of impact\n\nBetween 09:00 and 10:00 UTC"),
    ("<a href='https://aka.ms/x'>aka.ms/x</a>", "aka.ms/x"),
    ("", ""),
])
def test_html_text(html, text):
    assert html_text(html) == text


@given(st.text())
def test_html_text_never_fails_and_leaves_no_padding_or_runs_of_blank_lines(text):
    out = html_text(text)
    assert "\n\n\n" not in out
    assert all(line == line.strip() and "  " not in line for line in out.split("\n"))


@given(st.text(alphabet=st.characters(blacklist_characters="<&", blacklist_categories=("Cs",))))
def test_text_without_markup_is_only_squeezed(text):
    lines = [" ".join(line.split()) for line in text.splitlines()]
    expected = "\n".join(lines).strip()
    while "\n\n\n" in expected:
        expected = expected.replace("\n\n\n", "\n\n")
    assert html_text(text) == expected
