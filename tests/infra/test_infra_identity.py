"""The Entra side of Secure Webhook, for every example stack, from the mock run."""

from __future__ import annotations

import re

from infra.identity import AZURE_MONITOR_APP_ID, SECURE_WEBHOOK_ROLE, SECURE_WEBHOOK_ROLE_ID
from infra.plan import Plan
from tests.infra.harness import CUSTOM_IDENTIFIER_URI, stack_value

APPLICATION = "azuread:index/application:Application"
IDENTIFIER_URI = "azuread:index/applicationIdentifierUri:ApplicationIdentifierUri"
SERVICE_PRINCIPAL = "azuread:index/servicePrincipal:ServicePrincipal"
ROLE_ASSIGNMENT = "azuread:index/appRoleAssignment:AppRoleAssignment"
CLIENT_CONFIG = "azuread:index/getClientConfig:getClientConfig"


def our_service_principal(plan: Plan):
    return next(sp for sp in plan.of_type(SERVICE_PRINCIPAL) if sp.inputs["clientId"] != AZURE_MONITOR_APP_ID)


def azure_monitor_service_principal(plan: Plan):
    return next(sp for sp in plan.of_type(SERVICE_PRINCIPAL) if sp.inputs["clientId"] == AZURE_MONITOR_APP_ID)


def test_api_application_has_an_identifier_uri_naming_its_client_id(stack_plan: Plan) -> None:
    app = stack_plan.one(APPLICATION)
    uri = stack_plan.one(IDENTIFIER_URI)
    assert uri.inputs["applicationId"] == app.id, "the identifier URI is not attached to the API application"
    assert uri.inputs["identifierUri"] == f"api://{app.outputs['clientId']}", uri.inputs["identifierUri"]
    assert app.urn in uri.dependencies
    # Set by its own resource, so the application must not fight over the same property.
    assert app.options.get("ignoreChanges") == ["identifierUris"], app.options


def test_identifier_uri_from_config_is_used_as_given(run_variant_plan: Plan) -> None:
    uri = run_variant_plan.one(IDENTIFIER_URI)
    assert uri.inputs["identifierUri"] == CUSTOM_IDENTIFIER_URI


def test_api_application_asks_for_v2_access_tokens(stack_plan: Plan) -> None:
    app = stack_plan.one(APPLICATION)
    assert app.inputs["api"]["requestedAccessTokenVersion"] == 2, app.inputs.get("api")
    assert app.inputs["signInAudience"] == "AzureADMyOrg"


def test_app_role_for_action_groups_is_application_only_with_a_fixed_id(stack_plan: Plan) -> None:
    (role,) = stack_plan.one(APPLICATION).inputs["appRoles"]
    assert role["value"] == SECURE_WEBHOOK_ROLE == "ActionGroupsSecureWebhook"
    assert role["allowedMemberTypes"] == ["Application"], "users must not be assignable to the webhook role"
    assert role["enabled"] is True
    assert role["id"] == SECURE_WEBHOOK_ROLE_ID, "the role id changed: Azure would replace the role"
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", role["id"])


def test_role_id_is_the_same_in_every_stack(plans: dict[str, Plan]) -> None:
    ids = {stack: plan.one(APPLICATION).inputs["appRoles"][0]["id"] for stack, plan in plans.items()}
    assert set(ids.values()) == {SECURE_WEBHOOK_ROLE_ID}, ids


def test_api_service_principal_requires_an_app_role_assignment(stack_plan: Plan) -> None:
    app = stack_plan.one(APPLICATION)
    sp = our_service_principal(stack_plan)
    assert sp.inputs["clientId"] == app.outputs["clientId"], "the service principal is not the API application's"
    assert sp.inputs["appRoleAssignmentRequired"] is True


def test_azure_monitor_service_principal_is_adopted_or_created_and_never_deleted(stack_plan: Plan) -> None:
    sp = azure_monitor_service_principal(stack_plan)
    assert sp.inputs["clientId"] == "461e8683-5575-4561-ac7f-899cc907d62a" == AZURE_MONITOR_APP_ID
    assert sp.inputs["useExisting"] is True, "an existing Azure Monitor service principal would make up fail"
    assert sp.options.get("retainOnDelete") is True, "pulumi destroy would delete a first-party service principal"


def test_role_is_assigned_to_azure_monitor_by_the_roles_id(stack_plan: Plan) -> None:
    assignment = stack_plan.one(ROLE_ASSIGNMENT)
    app = stack_plan.one(APPLICATION)
    assert assignment.inputs["appRoleId"] == app.outputs["appRoleIds"][SECURE_WEBHOOK_ROLE] == SECURE_WEBHOOK_ROLE_ID
    assert assignment.inputs["principalObjectId"] == azure_monitor_service_principal(stack_plan).outputs["objectId"], (
        "the role is not granted to Azure Monitor's service principal"
    )
    assert assignment.inputs["resourceObjectId"] == our_service_principal(stack_plan).outputs["objectId"], (
        "the role is not the API's own (resource = our service principal)"
    )
    assert app.urn in assignment.dependencies, "the assignment may run before the role exists"


def test_deploying_identity_and_configured_owners_own_the_application(stack_plan: Plan, stack: str) -> None:
    assert any(token == CLIENT_CONFIG for token, _ in stack_plan.calls), "the deploying identity is never looked up"
    deployer = "${deploying-identity.objectId}"  # what the mock's getClientConfig returns
    extra = stack_value(stack, "appOwners") or []
    expected = sorted({deployer, *extra})
    assert stack_plan.one(APPLICATION).inputs["owners"] == expected, (
        "Azure rejects an action group whose application the deployer does not own (AadWebhookResourceNotOwnedByCaller)"
    )
    assert our_service_principal(stack_plan).inputs["owners"] == expected
