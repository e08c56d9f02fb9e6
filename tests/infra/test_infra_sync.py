"""Two-way sync in the stack, under Pulumi mocks: a route with `sync:` on grants the relay's identity
Monitoring Contributor on the subscriptions its alerts come from (and only then), and the rendered
RELAY_CONFIG carries the route's `sync:` as the relay's own validator accepts it."""

from __future__ import annotations

import pytest
import yaml

from infra import hosting
from infra.config import reconcile as reconcile_config
from infra.config.model import Route
from relay.delivery.config import parse_config
from tests.infra.harness import run_stack
from tests.infra.test_infra_hosting import IDENTITY, ROLE_ASSIGNMENT, parsed
from tests.infra.test_infra_reconcile import relay_config_of

STACK = "dev"
OTHER = "99999999-8888-7777-6666-555555555555"
TARGETS = {
    "rt": {"kind": "request_tracker", "base_url": "https://rt.example.com",
           "auth": {"type": "token", "token_env": "RT_TOKEN"}},
    "audit": {"kind": "dry_run"},
}


def contributor_scopes(plan) -> set[str]:
    suffix = "/providers/Microsoft.Authorization/roleDefinitions/" + hosting.MONITORING_CONTRIBUTOR
    return {a.inputs["scope"] for a in plan.of_type(ROLE_ASSIGNMENT) if a.inputs["roleDefinitionId"].endswith(suffix)}


def sources() -> tuple[str, ...]:
    cfg = parsed(STACK)
    return hosting.source_subscriptions(cfg.azure.subscription_id, [s for r in cfg.alerts for s in r.scopes])


@pytest.fixture(scope="module")
def plan():
    routes = [{"match": {"severity": ["Sev0", "Sev1"]}, "target": "rt", "sync": {"close_alert": True}},
              {"target": "audit"}]
    return run_stack(STACK, targets=TARGETS, routes=routes)


def test_monitoring_contributor_on_every_source_subscription_of_a_syncing_route(plan) -> None:
    assert contributor_scopes(plan) == {f"/subscriptions/{s}" for s in sources()}
    identity = plan.one(IDENTITY)
    suffix = "/providers/Microsoft.Authorization/roleDefinitions/" + hosting.MONITORING_CONTRIBUTOR
    for assignment in plan.of_type(ROLE_ASSIGNMENT):
        if assignment.inputs["roleDefinitionId"].endswith(suffix):
            assert assignment.inputs["principalId"] == identity.outputs["principalId"]


def test_the_rendered_route_carries_sync_and_passes_the_relays_checks(plan) -> None:
    doc = relay_config_of(plan)
    assert doc["routes"][0]["sync"] == {"close_alert": True}
    relay = parse_config(yaml.safe_dump(doc), check_target_options=True)
    assert relay.syncing_targets() == ("rt",)


def test_no_syncing_route_grants_no_monitoring_contributor() -> None:
    assert contributor_scopes(run_stack(STACK)) == set()


@pytest.mark.parametrize(("routes", "expected"), [
    ([Route("rt", {}, {}, {"sync": {"close_alert": False}})], ()),
    ([Route("rt", {}, {}, {"sync": {"acknowledge_on_progress": True}})], ("s1", "s2")),
    ([Route("rt", {"subscription": (OTHER.upper(),)}, {}, {"sync": {"close_alert": True}})], (OTHER,)),
    ([Route("rt", {}, {}, {"on_refire": "new"})], ()),
])
def test_sync_subscriptions_follow_the_syncing_routes_match(routes, expected) -> None:
    assert reconcile_config.sync_subscriptions(routes, ["S1", "s2"]) == expected
