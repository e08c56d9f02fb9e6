"""The program as a whole: item 5's stack outputs, component boundaries, and config validated before
any resource is declared."""

from __future__ import annotations

import pytest

from infra import plan as infra_plan
from infra.plan import Plan
from tests.infra.harness import stack_config, stack_value

COMPONENTS = {
    "secure-export:hosting:RelayHosting": "relay",
    "secure-export:monitoring:Alerting": "alerting",
    "secure-export:monitoring:SelfMonitoring": "self-monitoring",  # both example stacks set monitoring.emails
}


def test_stack_exports_webhook_url_client_id_identifier_uri_action_group_and_fqdn(stack_plan: Plan, stack: str) -> None:
    outputs = stack_plan.outputs
    assert set(outputs) == {
        *("webhookUrl", "applicationClientId", "identifierUri", "actionGroupId", "relayFqdn", "keyVaultName"),
        *("storageAccountName", "fallbackActionGroupId"),  # what `make smoke` reads; the self-monitoring group
    }
    entra = stack_value(stack, "entra")
    container_app = stack_plan.one("azure-native:app:ContainerApp")
    fqdn = container_app.outputs["configuration"]["ingress"]["fqdn"]
    assert outputs["relayFqdn"] == fqdn
    assert outputs["webhookUrl"] == f"https://{fqdn}/alerts"
    assert outputs["applicationClientId"] == entra["clientId"]
    assert outputs["identifierUri"] == entra.get("identifierUri", f"api://{entra['clientId']}")
    assert outputs["actionGroupId"] == stack_plan.one("azure-native:monitor:ActionGroup", "alerting-action-group").id
    assert outputs["storageAccountName"] == stack_plan.one("azure-native:storage:StorageAccount").outputs["name"]
    assert outputs["keyVaultName"] == stack_plan.one("azure-native:keyvault:Vault").outputs["name"]


def test_every_resource_but_the_resource_group_belongs_to_a_named_component(stack_plan: Plan) -> None:
    components = {r.urn: r for r in stack_plan.resources if not r.custom}
    assert {(r.type, r.name) for r in components.values()} == set(COMPONENTS.items())
    for resource in stack_plan.resources:
        if not resource.custom or resource.type == "azure-native:resources:ResourceGroup":
            continue
        parent = components.get(resource.parent)
        assert parent is not None, f"{resource.type} {resource.name} is not inside a component"
        assert resource.name.startswith(f"{parent.name}-"), f"{resource.name} is not named from {parent.name}"


def test_main_stack_declares_nothing_in_entra(stack_plan: Plan) -> None:
    # The privileged Entra part is the bootstrap stack's (infra/bootstrap): the main stack's deploy
    # identity then needs no Microsoft Graph rights at all.
    entra = sorted({r.type for r in stack_plan.resources if r.type.startswith("azuread:")})
    assert entra == [], f"the main stack declares {entra}"
    assert not [token for token, _ in stack_plan.calls if token.startswith("azuread:")], stack_plan.calls


def test_missing_entra_application_stops_the_program_before_any_resource_is_declared() -> None:
    raw, secret_keys = stack_config("dev", entra=None)
    with pytest.raises(infra_plan.ProgramFailed) as caught:
        infra_plan.run("dev", raw, secret_keys)
    assert "secure-export:entra: is required" in str(caught.value), str(caught.value)
    assert type(caught.value.cause).__name__ == "RunError", "a config error should end the run without a traceback"
    declared = [r.name for r in caught.value.plan.resources if r.custom]
    assert declared == [], f"resources were declared before config was validated: {declared}"
