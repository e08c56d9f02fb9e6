"""Issue 12 item 14: the ticket key is the alert GUID alone, so the full alert id is kept with the ticket
record; an event with the same GUID and another full id (another subscription) is refused delivery and
recorded, and the genuine alert's events go on as before."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from relay.delivery.lifecycle import Action, EventFacts, Kind, Policy, TicketState, decide
from tests import test_worker
from tests.test_worker import GUID, SUB, T1, T2, FakeTarget, accept, alert_body, drained, make_config, until

OTHER_SUB = "bbbbbbbb-1111-4222-8333-444444444444"
FULL = f"/subscriptions/{SUB}/providers/microsoft.alertsmanagement/alerts/{GUID}"
OTHER = f"/subscriptions/{OTHER_SUB}/providers/microsoft.alertsmanagement/alerts/{GUID}"

store = test_worker.store
running = test_worker.running


def from_other_subscription(body: bytes) -> bytes:
    doc = json.loads(body)
    doc["data"]["essentials"]["alertId"] = doc["data"]["essentials"]["alertId"].replace(SUB, OTHER_SUB)
    return json.dumps(doc).encode()


async def test_resolved_from_another_subscription_with_the_same_guid_does_not_resolve(store, running, fault_report):
    target = FakeTarget()
    await accept(store, alert_body())
    worker = await running(store, make_config(), {"itsm": target})
    await until(lambda: drained(store), "the genuine Fired delivered")
    await accept(store, from_other_subscription(alert_body(condition="Resolved", resolved=T1)))
    await accept(store, from_other_subscription(alert_body(fired=T2)))
    worker.notify()
    await until(lambda: drained(store), "the impostor events handled")
    [ticket] = target.tickets.values()
    assert not ticket["resolved"], "another subscription's Resolved with the same GUID resolved the incident"
    assert [c for c, _ in target.calls] == ["find", "create"], f"impostor events reached the target: {target.calls}"
    record = await store.get_ticket("itsm", GUID)
    assert record.data["alert_ids"] == {GUID: FULL}
    assert len(record.data["refused"]) == 2 and all(OTHER in r for r in record.data["refused"])
    labels = {"target": "itsm", "outcome": "refuse"}
    assert worker.metrics.registry.get_sample_value("relay_deliveries_total", labels) == 2
    # The genuine alert still resolves its incident.
    await accept(store, alert_body(condition="Resolved", resolved=T1))
    worker.notify()
    await until(lambda: drained(store), "the genuine resolve handled")
    assert ticket["resolved"]
    fault_report("alert identity", "2 events of another subscription with the same GUID refused and recorded; "
                                   "the genuine Resolved resolved")


def facts(kind: Kind, alert_id: str, at: str = "2024-05-01T10:00:00.000000000Z") -> EventFacts:
    return EventFacts(alert=GUID, kind=kind, fired_at="2024-05-01T10:00:00.000000000Z", occurred_at=at,
                      alert_id=alert_id)


@given(st.sampled_from(list(Kind)), st.text(min_size=1, max_size=40).map(str.lower))
def test_decide_refuses_any_event_whose_full_id_differs_from_the_ticket(kind, other):
    opened = decide(facts(Kind.FIRED, FULL.lower()), None, Policy()).state.with_ticket("t1", "T1")
    assert opened.alert_ids == {GUID: FULL.lower()}
    decision = decide(facts(kind, other), opened, Policy())
    if other == FULL.lower():
        assert decision.action is not Action.REFUSE
    else:
        assert decision.action is Action.REFUSE and not decision.action.calls_target
        assert decision.state.alerts == opened.alerts and decision.state.open == opened.open
        assert decision.state.refused[-1].endswith(other)


def test_records_without_alert_ids_learn_them_from_the_next_event():
    legacy = TicketState.from_data({"ticket_id": "t1", "open": True, "generation": 1,
                                    "alerts": {GUID: ["2024-05-01T10:00:00.000000000Z", False, "x"]}})
    decision = decide(facts(Kind.RESOLVED, FULL.lower()), legacy, Policy())
    assert decision.action is Action.RESOLVE and decision.state.alert_ids == {GUID: FULL.lower()}
    assert TicketState.from_data(decision.state.to_data()) == decision.state
