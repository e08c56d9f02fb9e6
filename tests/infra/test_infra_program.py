"""The program as a whole: item 5's stack outputs, component boundaries, and config validated before
any resource is declared."""

from __future__ import annotations

import pytest

from infra import plan as infra_plan
from infra.plan import Plan
from tests.infra.harness import stack_config

COMPONENTS = {
    "secure-export:entra:SecureWebhookIdentity": "secure-webhook",
    "secure-export:hosting:RelayHosting": "relay",
    "secure-export:monitoring:Alerting": "alerting",
}


def test_stack_exports_webhook_url_client_id_identifier_uri_action_group_and_fqdn(stack_plan: Plan) -> None:
    outputs = stack_plan.outputs
    assert set(outputs) == {"webhookUrl", "applicationClientId", "identifierUri", "actionGroupId", "relayFqdn"}
    app = stack_plan.one("azuread:index/application:Application")
    container_app = stack_plan.one("azure-native:app:ContainerApp")
    fqdn = container_app.outputs["configuration"]["ingress"]["fqdn"]
    assert outputs["relayFqdn"] == fqdn
    assert outputs["webhookUrl"] == f"https://{fqdn}/alerts"
    assert outputs["applicationClientId"] == app.outputs["clientId"]
    assert (
        outputs["identifierUri"]
        == stack_plan.one("azuread:index/applicationIdentifierUri:ApplicationIdentifierUri").inputs["identifierUri"]
    )
    assert outputs["actionGroupId"] == stack_plan.one("azure-native:monitor:ActionGroup").id


def test_every_resource_but_the_resource_group_belongs_to_a_named_component(stack_plan: Plan) -> None:
    components = {r.urn: r for r in stack_plan.resources if not r.custom}
    assert {(r.type, r.name) for r in components.values()} == set(COMPONENTS.items())
    for resource in stack_plan.resources:
        if not resource.custom or resource.type == "azure-native:resources:ResourceGroup":
            continue
        parent = components.get(resource.parent)
        assert parent is not None, f"{resource.type} {resource.name} is not inside a component"
        assert resource.name.startswith(f"{parent.name}-"), f"{resource.name} is not named from {parent.name}"


def test_missing_itsm_secret_stops_the_program_before_any_resource_is_declared() -> None:
    raw, secret_keys = stack_config("dev")
    raw.pop(infra_plan.ITSM_SECRETS_KEY)
    with pytest.raises(infra_plan.ProgramFailed) as caught:
        infra_plan.run("dev", raw, secret_keys)
    assert "secure-export:itsmSecrets.SNOW_PASSWORD: is missing" in str(caught.value), str(caught.value)
    assert type(caught.value.cause).__name__ == "RunError", "a config error should end the run without a traceback"
    declared = [r.name for r in caught.value.plan.resources if r.custom]
    assert declared == [], f"resources were declared before config was validated: {declared}"
