"""The Entra side of Secure Webhook: the bootstrap stack (infra/bootstrap) for every example bootstrap
stack file, from the mock run."""

from __future__ import annotations

import re

import pytest

from infra import plan as infra_plan
from infra.config import ConfigError
from infra.config.bootstrap import BOOTSTRAP_PROJECT, parse_bootstrap
from infra.identity import AZURE_MONITOR_APP_ID, SECURE_WEBHOOK_ROLE, SECURE_WEBHOOK_ROLE_ID
from infra.plan import Plan
from tests.infra.harness import BOOTSTRAP_STACKS, CUSTOM_IDENTIFIER_URI, STACKS, bootstrap_config, bootstrap_value

APPLICATION = "azuread:index/application:Application"
IDENTIFIER_URI = "azuread:index/applicationIdentifierUri:ApplicationIdentifierUri"
SERVICE_PRINCIPAL = "azuread:index/servicePrincipal:ServicePrincipal"
ROLE_ASSIGNMENT = "azuread:index/appRoleAssignment:AppRoleAssignment"
GET_SERVICE_PRINCIPAL = "azuread:index/getServicePrincipal:getServicePrincipal"
CLIENT_CONFIG = "azuread:index/getClientConfig:getClientConfig"


@pytest.fixture(scope="module")
def bootstrap_plans() -> dict[str, Plan]:
    return {stack: infra_plan.run_bootstrap(stack) for stack in BOOTSTRAP_STACKS}


@pytest.fixture(params=BOOTSTRAP_STACKS)
def bootstrap_stack(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def plan(bootstrap_plans: dict[str, Plan], bootstrap_stack: str) -> Plan:
    return bootstrap_plans[bootstrap_stack]


def test_every_main_stack_has_a_bootstrap_stack() -> None:
    assert BOOTSTRAP_STACKS == STACKS, "a main stack has no bootstrap stack file in stacks/bootstrap (or the reverse)"


def our_service_principal(plan: Plan):
    (sp,) = [sp for sp in plan.of_type(SERVICE_PRINCIPAL) if sp.inputs["clientId"] != AZURE_MONITOR_APP_ID]
    return sp


def test_api_application_has_an_identifier_uri(plan: Plan, bootstrap_stack: str) -> None:
    app = plan.one(APPLICATION)
    uri = plan.one(IDENTIFIER_URI)
    assert uri.inputs["applicationId"] == app.id, "the identifier URI is not attached to the API application"
    configured = bootstrap_value(bootstrap_stack, "identifierUri")
    assert uri.inputs["identifierUri"] == (configured or f"api://{app.outputs['clientId']}"), uri.inputs
    assert app.urn in uri.dependencies
    # Set by its own resource, so the application must not fight over the same property.
    assert app.options.get("ignoreChanges") == ["identifierUris"], app.options


def test_identifier_uri_from_config_is_used_as_given() -> None:
    plan = infra_plan.run_bootstrap("dev", bootstrap_config("dev", identifierUri=CUSTOM_IDENTIFIER_URI))
    assert plan.one(IDENTIFIER_URI).inputs["identifierUri"] == CUSTOM_IDENTIFIER_URI


def test_api_application_asks_for_v2_access_tokens(plan: Plan) -> None:
    app = plan.one(APPLICATION)
    assert app.inputs["api"]["requestedAccessTokenVersion"] == 2, app.inputs.get("api")
    assert app.inputs["signInAudience"] == "AzureADMyOrg"
    assert app.inputs["displayName"] == f"secexp-{plan.stack}-secure-webhook", "named like the main stack's names"


def test_app_role_for_action_groups_is_application_only_with_a_fixed_id(plan: Plan) -> None:
    (role,) = plan.one(APPLICATION).inputs["appRoles"]
    assert role["value"] == SECURE_WEBHOOK_ROLE == "ActionGroupsSecureWebhook"
    assert role["allowedMemberTypes"] == ["Application"], "users must not be assignable to the webhook role"
    assert role["enabled"] is True
    assert role["id"] == SECURE_WEBHOOK_ROLE_ID, "the role id changed: Azure would replace the role"
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", role["id"])


def test_api_service_principal_requires_an_app_role_assignment(plan: Plan) -> None:
    app = plan.one(APPLICATION)
    sp = our_service_principal(plan)
    assert sp.inputs["clientId"] == app.outputs["clientId"], "the service principal is not the API application's"
    assert sp.inputs["appRoleAssignmentRequired"] is True


def test_azure_monitor_service_principal_is_read_never_managed(plan: Plan) -> None:
    # Adopting it (use_existing) would PATCH Microsoft's first-party SP, shared by every action group
    # of the tenant: tags and appRoleAssignmentRequired rewritten, or a 403 without Graph write rights.
    managed = [sp.name for sp in plan.of_type(SERVICE_PRINCIPAL) if sp.inputs["clientId"] == AZURE_MONITOR_APP_ID]
    assert managed == [], f"Azure Monitor's service principal is a resource of the stack: {managed}"
    lookups = [args for token, args in plan.calls if token == GET_SERVICE_PRINCIPAL]
    assert lookups == [{"clientId": "461e8683-5575-4561-ac7f-899cc907d62a"}], lookups
    assert AZURE_MONITOR_APP_ID == "461e8683-5575-4561-ac7f-899cc907d62a"


def test_role_is_granted_to_azure_monitor_by_the_roles_id(plan: Plan) -> None:
    assignment = plan.one(ROLE_ASSIGNMENT)
    app = plan.one(APPLICATION)
    assert assignment.inputs["appRoleId"] == app.outputs["appRoleIds"][SECURE_WEBHOOK_ROLE] == SECURE_WEBHOOK_ROLE_ID
    assert assignment.inputs["principalObjectId"] == "${azure-monitor-service-principal.objectId}", (
        "the role is not granted to the Azure Monitor service principal that was looked up"
    )
    assert assignment.inputs["resourceObjectId"] == our_service_principal(plan).outputs["objectId"], (
        "the role is not the API's own (resource = our service principal)"
    )
    assert app.urn in assignment.dependencies, "the assignment may run before the role exists"


def test_a_tenant_without_azure_monitors_service_principal_can_create_it_once() -> None:
    plan = infra_plan.run_bootstrap("dev", bootstrap_config("dev", createAzureMonitorServicePrincipal="true"))
    (sp,) = [sp for sp in plan.of_type(SERVICE_PRINCIPAL) if sp.inputs["clientId"] == AZURE_MONITOR_APP_ID]
    assert "useExisting" not in sp.inputs, "use_existing would update the first-party SP"
    assert sp.options.get("retainOnDelete") is True, "pulumi destroy would delete a first-party service principal"
    assert plan.one(ROLE_ASSIGNMENT).inputs["principalObjectId"] == sp.outputs["objectId"]
    assert not [token for token, _ in plan.calls if token == GET_SERVICE_PRINCIPAL]


def test_owners_are_exactly_the_configured_list(plan: Plan, bootstrap_stack: str) -> None:
    # Not "whoever ran the last up": a person's local up must not drop the CI identity as owner
    # (after which saving the action group fails with AadWebhookResourceNotOwnedByCaller).
    expected = sorted(bootstrap_value(bootstrap_stack, "owners"))
    assert plan.one(APPLICATION).inputs["owners"] == expected
    assert our_service_principal(plan).inputs["owners"] == expected
    assert not [token for token, _ in plan.calls if token == CLIENT_CONFIG], "the deploying identity is added"


def test_bootstrap_outputs_are_the_main_stacks_entra_keys(plan: Plan) -> None:
    app = plan.one(APPLICATION)
    assert plan.outputs == {
        "clientId": app.outputs["clientId"],
        "objectId": app.outputs["objectId"],
        "identifierUri": plan.one(IDENTIFIER_URI).inputs["identifierUri"],
    }


BAD_BOOTSTRAP = [
    ("no owners", {"owners": None}, f"{BOOTSTRAP_PROJECT}:owners", "users or service principals"),
    ("empty owner list", {"owners": []}, f"{BOOTSTRAP_PROJECT}:owners", "leave the key out"),
    ("owner that is not an object id", {"owners": ["alice@example.com"]}, f"{BOOTSTRAP_PROJECT}:owners[0]", "GUID"),
    (
        "owner listed twice",
        {"owners": ["88888888-8888-8888-8888-888888888888", "88888888-8888-8888-8888-888888888888"]},
        f"{BOOTSTRAP_PROJECT}:owners",
        "groups cannot own an application",
    ),
    (
        "identifier URI that is not api://",
        {"identifierUri": "https://x/"},
        f"{BOOTSTRAP_PROJECT}:identifierUri",
        "api://",
    ),
    ("misspelt key", {"owner": "x"}, f"{BOOTSTRAP_PROJECT}:owner", "owners"),
]


@pytest.mark.parametrize(("problem", "overrides", "key", "allowed"), BAD_BOOTSTRAP, ids=[c[0] for c in BAD_BOOTSTRAP])
def test_bad_bootstrap_config_names_the_key_and_what_is_allowed(
    problem: str, overrides: dict, key: str, allowed: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_bootstrap(bootstrap_config("dev", **overrides), stack="dev")
    assert caught.value.key == key, f"{problem}: {caught.value}"
    assert allowed in str(caught.value).split("; allowed: ", 1)[1], f"{problem}: {caught.value}"


def test_bootstrap_config_error_stops_the_program_before_any_resource() -> None:
    with pytest.raises(infra_plan.ProgramFailed) as caught:
        infra_plan.run_bootstrap("dev", bootstrap_config("dev", owners=None))
    assert type(caught.value.cause).__name__ == "RunError"
    assert [r.name for r in caught.value.plan.resources if r.custom] == []
