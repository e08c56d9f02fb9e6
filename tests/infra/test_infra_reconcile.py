"""Reconciliation in the stack (docs/reconciliation.md), under Pulumi mocks: `secure-export:reconcile`
grants the relay's identity Monitoring Reader on each reconciled subscription (and only then), and the
rendered RELAY_CONFIG carries a `reconcile:` section the relay's own validator accepts."""

from __future__ import annotations

import pytest
import yaml

from infra import hosting
from infra.config import ConfigError
from infra.config import reconcile as reconcile_config
from relay.delivery.config import parse_config
from tests.infra.harness import run_stack, stack_config
from tests.infra.test_infra_hosting import IDENTITY, ROLE_ASSIGNMENT, parsed

STACK = "dev"
EXTRA = "99999999-8888-7777-6666-555555555555"


def reader_scopes(plan) -> set[str]:
    prefix = "/providers/Microsoft.Authorization/roleDefinitions/" + hosting.MONITORING_READER
    return {a.inputs["scope"] for a in plan.of_type(ROLE_ASSIGNMENT) if a.inputs["roleDefinitionId"].endswith(prefix)}


def relay_config_of(plan) -> dict:
    secrets = plan.one("azure-native:app:ContainerApp").inputs["configuration"]["secrets"]
    [mounted] = [s for s in secrets if s["name"] == hosting.CONFIG_SECRET]
    return yaml.safe_load(mounted["value"])


@pytest.fixture(scope="module")
def plan():
    return run_stack(STACK, reconcile={"subscriptions": [EXTRA], "intervalMinutes": 10, "lookBackHours": 12})


def test_monitoring_reader_on_each_reconciled_subscription(plan) -> None:
    cfg = parsed(STACK)
    sources = hosting.source_subscriptions(cfg.azure.subscription_id, [s for r in cfg.alerts for s in r.scopes])
    assert reader_scopes(plan) == {f"/subscriptions/{s}" for s in (*sources, EXTRA)}
    identity = plan.one(IDENTITY)
    prefix = "/providers/Microsoft.Authorization/roleDefinitions/" + hosting.MONITORING_READER
    readers = [a for a in plan.of_type(ROLE_ASSIGNMENT) if a.inputs["roleDefinitionId"].endswith(prefix)]
    assert readers
    for assignment in readers:  # the relay's identity holds them (the smoke reader role is another's)
        assert assignment.inputs["principalId"] == identity.outputs["principalId"]


def test_no_reconcile_section_grants_no_monitoring_reader() -> None:
    assert reader_scopes(run_stack(STACK, reconcile=None)) == set()
    assert reader_scopes(run_stack(STACK, reconcile={"enabled": False})) == set()


def test_rendered_relay_config_carries_the_rule_ids_and_passes_the_relays_checks(plan) -> None:
    cfg = parsed(STACK)
    doc = relay_config_of(plan)
    section = doc["reconcile"]
    assert section["interval_minutes"] == 10 and section["look_back_hours"] == 12
    assert EXTRA in section["subscriptions"] and cfg.azure.subscription_id.lower() in section["subscriptions"]
    expected = reconcile_config.rule_ids(cfg.azure.subscription_id, cfg.names.resource_group, cfg.alerts)
    assert section["rule_ids"] == list(expected) and expected
    assert all("/providers/Microsoft.Insights/" in r for r in expected)
    relay = parse_config(yaml.safe_dump(doc))
    assert relay.reconcile is not None and relay.reconcile.look_back_hours == 12


@pytest.mark.parametrize(("section", "key"), [
    ({"subscriptions": ["nope"]}, "secure-export:reconcile.subscriptions[0]"),
    ({"intervalMinutes": 0}, "secure-export:reconcile.intervalMinutes"),
    ({"alertTypes": ["Budget"]}, "secure-export:reconcile.alertTypes"),
    ({"lookback": 3}, "secure-export:reconcile.lookback"),
])
def test_bad_reconcile_config_names_the_key(section, key) -> None:
    from infra.config import parse

    raw, _ = stack_config(STACK, reconcile=section)
    with pytest.raises(ConfigError) as err:
        parse(raw, stack=STACK)
    assert key in str(err.value), str(err.value)
