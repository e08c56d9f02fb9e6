"""The stack config model: what it accepts, its defaults, and one message per bad value that names the
key and what is allowed there."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infra import config
from infra.naming import Names, unique_suffix
from tests.infra.harness import STACKS, stack_config

DELETE = object()
SUBSCRIPTION = "11111111-1111-1111-1111-111111111111"
CLIENT_ID = "44444444-4444-4444-4444-444444444444"


def dev_config_with(
    change: Callable[[dict[str, Any]], None] = lambda c: None,
    *,
    stack: str = "dev",
) -> config.StackConfig:
    """Parse the dev stack file after `change` edits its decoded values."""
    raw, secret_keys = stack_config("dev")
    decoded: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            decoded[key] = json.loads(value) if key.startswith("secure-export:") else value
        except json.JSONDecodeError:
            decoded[key] = value
    change(decoded)
    encoded = {k: v if isinstance(v, str) else json.dumps(v) for k, v in decoded.items() if v is not DELETE}
    return config.parse(encoded, stack=stack, secret_keys=secret_keys)


def alert(c: dict[str, Any], index: int) -> dict[str, Any]:
    return c["secure-export:alerts"][index]


def servicenow(c: dict[str, Any]) -> dict[str, Any]:
    return c["secure-export:targets"]["servicenow"]


def set_key(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda c: c.__setitem__(key, value)


OTHER_RESOURCE = (
    f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-app-dev/providers/Microsoft.Compute/virtualMachines/vm-2"
)

# (what is wrong, the edit, the key the message must name, what the message must say is allowed)
BAD_CONFIG = [
    (
        "action group short name over 12 characters",
        set_key("secure-export:actionGroupShortName", "SecureExport1"),  # 13; the 12-character default passes
        "secure-export:actionGroupShortName",
        "1 to 12 characters",
    ),
    (
        "unknown severity in a route",
        lambda c: c["secure-export:routes"][0]["match"].__setitem__("severity", ["Sev1", "Sev5"]),
        "secure-export:routes[0].match.severity[1]",
        "Sev0, Sev1, Sev2, Sev3, Sev4",
    ),
    (
        "unknown severity in an alert",
        lambda c: alert(c, 0).__setitem__("severity", "Critical"),
        "secure-export:alerts[0].severity",
        "Sev0, Sev1, Sev2, Sev3, Sev4",
    ),
    (
        "unknown alert kind",
        lambda c: alert(c, 0).__setitem__("kind", "metrics"),
        "secure-export:alerts[0].kind",
        "metric, dynamicMetric, logSearch, administrative, serviceHealth, resourceHealth",
    ),
    (
        "malformed ARM id in an alert's scopes",
        lambda c: alert(c, 0).__setitem__("scopes", [f"/subscription/{SUBSCRIPTION}/resourceGroups/rg"]),
        "secure-export:alerts[0].scopes[0]",
        "/subscriptions/<subscription GUID>",
    ),
    (
        "ARM id with a resource group but a broken provider segment",
        lambda c: alert(c, 0).__setitem__("scopes", [f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg/providers/vm"]),
        "secure-export:alerts[0].scopes[0]",
        "/providers/<Namespace>/<type>/<name>",
    ),
    (
        "ITSM secret values in the stack config",
        set_key("secure-export:itsmSecrets", {"SNOW_PASSWORD": "x"}),
        "secure-export:itsmSecrets",
        "az keyvault secret set",
    ),
    (
        "unknown target kind",
        lambda c: servicenow(c).__setitem__("kind", "jira"),
        "secure-export:targets.servicenow.kind",
        "servicenow, bmc_helix, request_tracker, jira_service_management, pagerduty, forward, dry_run",
    ),
    (
        "auth type the target kind does not speak",
        lambda c: servicenow(c).__setitem__(
            "auth", {"type": "ar_jwt", "username": "u", "password_env": "SNOW_PASSWORD"}
        ),
        "secure-export:targets.servicenow.auth.type",
        "basic, oauth",
    ),
    (
        "password written inline in an auth block",
        lambda c: servicenow(c)["auth"].__setitem__("password", "hunter2"),
        "secure-export:targets.servicenow.auth.password",
        "type, username, password_env",
    ),
    (
        "secret-looking target option written inline",
        lambda c: servicenow(c).__setitem__("api_token", "abc"),
        "secure-export:targets.servicenow.api_token",
        "api_token_env",
    ),
    (
        "secret env var named like one of the relay's own settings",
        lambda c: servicenow(c)["auth"].__setitem__("password_env", "RELAY_TENANT_ID"),
        "secure-export:targets.servicenow.auth.password_env",
        "not starting with RELAY_",
    ),
    (
        "kind-specific option naming one of the relay's own settings as its secret",
        lambda c: servicenow(c).__setitem__("signing_key_env", "RELAY_STORE"),
        "secure-export:targets.servicenow.signing_key_env",
        "not starting with RELAY_",
    ),
    (
        "secret env var that is not a variable name",
        lambda c: servicenow(c)["auth"].__setitem__("password_env", "snow password"),
        "secure-export:targets.servicenow.auth.password_env",
        "an environment variable name",
    ),
    (
        "target base URL over plain http",
        lambda c: servicenow(c).__setitem__("base_url", "http://dev00000.service-now.com"),
        "secure-export:targets.servicenow.base_url",
        "an https:// URL",
    ),
    (
        "target without its required auth block",
        lambda c: servicenow(c).pop("auth"),
        "secure-export:targets.servicenow.auth",
        "a mapping",
    ),
    (
        "route naming an undeclared target",
        lambda c: c["secure-export:routes"][0].__setitem__("target", "snow"),
        "secure-export:routes[0].target",
        "servicenow, audit",
    ),
    (
        "route matching on an unknown field",
        lambda c: c["secure-export:routes"][0]["match"].__setitem__("sev", ["Sev1"]),
        "secure-export:routes[0].match.sev",
        "severity, monitoring_service, alert_rule, signal_type, subscription, resource_group, custom_properties",
    ),
    (
        "route matching a subscription that is not a GUID",
        lambda c: c["secure-export:routes"][0]["match"].__setitem__("subscription", ["prod"]),
        "secure-export:routes[0].match.subscription[0]",
        "a subscription GUID",
    ),
    (
        "route key the relay does not know",
        lambda c: c["secure-export:routes"][0].__setitem__("on_refires", "reopen"),
        "secure-export:routes[0].on_refires",
        "on_repeat, on_refire, on_resolve, incident_per, summary, description, continue",
    ),
    (
        "route field that is neither text nor a number",
        lambda c: c["secure-export:routes"][0]["fields"].__setitem__("urgent", True),
        "secure-export:routes[0].fields.urgent",
        "a string (template) or a number",
    ),
    (
        "relay shutdown grace longer than Container Apps allows",
        set_key("secure-export:delivery", {"shutdown_grace_seconds": 4000}),
        "secure-export:delivery.shutdown_grace_seconds",
        "up to 3590",
    ),
    (
        "no routes at all",
        set_key("secure-export:routes", []),
        "secure-export:routes",
        "a list of {match, target, fields} routes",
    ),
    (
        "no targets at all",
        set_key("secure-export:targets", {}),
        "secure-export:targets",
        "servicenow, bmc_helix",
    ),
    (
        "misspelt top-level key",
        set_key("secure-export:actionGroupShortname", "SecExp"),
        "secure-export:actionGroupShortname",
        "actionGroupShortName",
    ),
    (
        "misspelt nested key",
        lambda c: c["secure-export:relay"].__setitem__("minReplica", 2),
        "secure-export:relay.minReplica",
        "minReplicas",
    ),
    (
        "structured value that is not JSON",
        set_key("secure-export:relay", "{minReplicas: [}"),
        "secure-export:relay",
        "a mapping in the stack file",
    ),
    (
        "Entra tenant differing from the Azure tenant",
        set_key("azuread:tenantId", "99999999-9999-9999-9999-999999999999"),
        "azuread:tenantId",
        "the same tenant as azure-native:tenantId",
    ),
    (
        "no Azure location",
        set_key("azure-native:location", DELETE),
        "azure-native:location",
        "an Azure region name",
    ),
    (
        "subscription id that is not a GUID",
        set_key("azure-native:subscriptionId", "my-subscription"),
        "azure-native:subscriptionId",
        "a subscription GUID",
    ),
    (
        "no replica kept warm",
        lambda c: c["secure-export:relay"].__setitem__("minReplicas", 0),
        "secure-export:relay.minReplicas",
        "1 to 1000",
    ),
    (
        "query time range shorter than the rule's window",
        lambda c: alert(c, 2).__setitem__("overrideQueryTimeRange", "PT10M"),
        "secure-export:alerts[2].overrideQueryTimeRange",
        "at least windowSize x evaluationPeriods (15 minutes) and at most P2D",
    ),
    (
        "query time range beyond two days",
        lambda c: alert(c, 2).__setitem__("overrideQueryTimeRange", "P3D"),
        "secure-export:alerts[2].overrideQueryTimeRange",
        "at most P2D",
    ),
    (
        "query time range that is not a duration",
        lambda c: alert(c, 2).__setitem__("overrideQueryTimeRange", "2 days"),
        "secure-export:alerts[2].overrideQueryTimeRange",
        "an ISO 8601 duration",
    ),
    (
        "fewer maximum than minimum replicas",
        lambda c: c["secure-export:relay"].update(minReplicas=3, maxReplicas=2),
        "secure-export:relay.maxReplicas",
        "3 to 1000",
    ),
    (
        "CPU that is not a Container Apps size",
        lambda c: c["secure-export:relay"].__setitem__("cpu", 0.3),
        "secure-export:relay.cpu",
        "0.25, 0.5, 0.75, 1",
    ),
    (
        "metrics port equal to the public port",
        lambda c: c["secure-export:relay"].__setitem__("metricsPort", 8080),
        "secure-export:relay.metricsPort",
        "except 8080",
    ),
    (
        "replica count that is not a number",
        lambda c: c["secure-export:relay"].__setitem__("maxReplicas", "many"),
        "secure-export:relay.maxReplicas",
        "1 to 1000",
    ),
    (
        "prebuilt image without registry or digest",
        lambda c: c["secure-export:relay"].__setitem__("image", "secure-export-relay"),
        "secure-export:relay.image",
        "a registry-qualified image reference",
    ),
    (
        "OpenID metadata URL over plain http",
        lambda c: c["secure-export:relay"].__setitem__("openidConfigUrl", "http://login.example/x"),
        "secure-export:relay.openidConfigUrl",
        "an https:// URL",
    ),
    (
        "purge protection that is not a boolean",
        set_key("secure-export:keyVault", {"purgeProtection": "yes"}),
        "secure-export:keyVault.purgeProtection",
        "true or false",
    ),
    (
        "identifier URI that is not api://",
        lambda c: c["secure-export:entra"].__setitem__("identifierUri", "https://relay.example.com/"),
        "secure-export:entra.identifierUri",
        "api:// identifier URI",
    ),
    (
        "no Entra application from the bootstrap stack",
        set_key("secure-export:entra", DELETE),
        "secure-export:entra",
        "a mapping",
    ),
    (
        "Entra client id that is not a GUID",
        lambda c: c["secure-export:entra"].__setitem__("clientId", "secure-export"),
        "secure-export:entra.clientId",
        "the application's client id (a GUID)",
    ),
    (
        "application owners in the main stack (the bootstrap stack owns them now)",
        set_key("secure-export:appOwners", ["33333333-3333-3333-3333-333333333333"]),
        "secure-export:appOwners",
        "move it to infra/bootstrap/Pulumi.<stack>.yaml",
    ),
    (
        "identifier URI in the main stack (the bootstrap stack owns it now)",
        set_key("secure-export:identifierUri", "api://x/secure-export"),
        "secure-export:identifierUri",
        "move it to infra/bootstrap",
    ),
    (
        "ingress range that is not IPv4 CIDR",
        set_key("secure-export:network", {"ingressAllowedRanges": ["2603:1030::/40"]}),
        "secure-export:network.ingressAllowedRanges[0]",
        "IPv4 ranges in CIDR notation",
    ),
    (
        "ingress range with host bits set",
        set_key("secure-export:network", {"ingressAllowedRanges": ["20.21.22.5/24"]}),
        "secure-export:network.ingressAllowedRanges[0]",
        "IPv4 ranges in CIDR notation",
    ),
    (
        "ingress range listed twice",
        set_key("secure-export:network", {"ingressAllowedRanges": ["20.21.22.0/24", "20.21.22.0/24"]}),
        "secure-export:network.ingressAllowedRanges",
        "distinct ranges",
    ),
    (
        "VNet too small for two subnets of at least /27",
        set_key("secure-export:network", {"virtualNetwork": "10.42.0.0/27"}),
        "secure-export:network.virtualNetwork",
        "a private IPv4 range from /16 to /26",
    ),
    (
        "VNet on public addresses",
        set_key("secure-export:network", {"virtualNetwork": "20.42.0.0/24"}),
        "secure-export:network.virtualNetwork",
        "a private IPv4 range",
    ),
    (
        "registry sign-in for an image the stack builds",
        lambda c: c["secure-export:relay"].__setitem__("registry", {"username": "bot", "passwordSecret": "pw"}),
        "secure-export:relay.registry",
        "the stack's own registry is read with the relay's identity",
    ),
    (
        "registry user name without a password secret",
        lambda c: c["secure-export:relay"].update(image="ghcr.io/x/relay:1", registry={"username": "bot"}),
        "secure-export:relay.registry.passwordSecret",
        "the name of the Key Vault secret holding the password",
    ),
    (
        "registry password secret named like an ITSM secret",
        lambda c: c["secure-export:relay"].update(
            image="ghcr.io/x/relay:1", registry={"username": "bot", "passwordSecret": "snow-password"}
        ),
        "secure-export:relay.registry.passwordSecret",
        "a Key Vault secret name of its own",
    ),
    (
        "payload retention of zero days",
        set_key("secure-export:payloadRetentionDays", 0),
        "secure-export:payloadRetentionDays",
        "1 to 36500",
    ),
    (
        "unknown storage SKU",
        set_key("secure-export:storageSku", "Premium_LRS"),
        "secure-export:storageSku",
        "Standard_LRS, Standard_ZRS",
    ),
    (
        "metric alert over several resources without their type",
        lambda c: alert(c, 0)["scopes"].append(OTHER_RESOURCE),
        "secure-export:alerts[0].targetResourceType",
        "Microsoft.Compute/virtualMachines",
    ),
    (
        "metric alert threshold that is not a number",
        lambda c: alert(c, 0).__setitem__("threshold", "ninety"),
        "secure-export:alerts[0].threshold",
        "a number",
    ),
    (
        "metric alert window Azure does not offer",
        lambda c: alert(c, 0).__setitem__("windowSize", "PT10M"),
        "secure-export:alerts[0].windowSize",
        "PT1M, PT5M, PT15M",
    ),
    (
        "evaluation frequency longer than the window",
        lambda c: alert(c, 0).__setitem__("evaluationFrequency", "PT30M"),
        "secure-export:alerts[0].evaluationFrequency",
        "a duration up to PT15M",
    ),
    (
        "dynamic threshold with an operator it does not support",
        lambda c: alert(c, 1).__setitem__("operator", "Equals"),
        "secure-export:alerts[1].operator",
        "GreaterThan, LessThan, GreaterOrLessThan",
    ),
    (
        "more failing periods than evaluated ones",
        lambda c: alert(c, 1).__setitem__("failingPeriods", {"evaluationPeriods": 2, "minFailingPeriods": 3}),
        "secure-export:alerts[1].failingPeriods.minFailingPeriods",
        "1 to 2",
    ),
    (
        "log search operator spelt as for metric alerts",
        lambda c: alert(c, 2).__setitem__("operator", "Equals"),
        "secure-export:alerts[2].operator",
        "Equal, GreaterThan",
    ),
    (
        "log search average without the column to average",
        lambda c: alert(c, 2).__setitem__("aggregation", "Average"),
        "secure-export:alerts[2].metricMeasureColumn",
        "a non-empty string",
    ),
    (
        "log search window that is not an ISO 8601 duration",
        lambda c: alert(c, 2).__setitem__("windowSize", "15 minutes"),
        "secure-export:alerts[2].windowSize",
        "an ISO 8601 duration",
    ),
    (
        "administrative alert on something that is not an operation",
        lambda c: alert(c, 3).__setitem__("operationName", "delete vm"),
        "secure-export:alerts[3].operationName",
        "Microsoft.Compute/virtualMachines/delete",
    ),
    (
        "severity on an activity log alert, which has none",
        lambda c: alert(c, 3).__setitem__("severity", "Sev1"),
        "secure-export:alerts[3].severity",
        "description, enabled, scopes, operationName, status",
    ),
    (
        "service health alert scoped below a subscription",
        lambda c: alert(c, 4).__setitem__("scopes", [f"/subscriptions/{SUBSCRIPTION}/resourceGroups/rg-app-dev"]),
        "secure-export:alerts[4].scopes[0]",
        "/subscriptions/<subscription GUID>",
    ),
    (
        "unknown service health incident type",
        lambda c: alert(c, 4).__setitem__("incidentTypes", ["Outage"]),
        "secure-export:alerts[4].incidentTypes[0]",
        "Incident, Maintenance, Informational, ActionRequired, Security",
    ),
    (
        "unknown resource health status",
        lambda c: alert(c, 5).__setitem__("healthStatuses", ["Down"]),
        "secure-export:alerts[5].healthStatuses[0]",
        "Available, Degraded, Unavailable, Unknown",
    ),
    (
        "two alerts with one name",
        lambda c: alert(c, 1).__setitem__("name", alert(c, 0)["name"]),
        "secure-export:alerts[1].name",
        "a name unique among the stack's alerts",
    ),
    (
        "alert name Azure would reject",
        lambda c: alert(c, 0).__setitem__("name", "cpu > 90%"),
        "secure-export:alerts[0].name",
        "starting with a letter or digit",
    ),
    (
        "empty scope list",
        lambda c: alert(c, 0).__setitem__("scopes", []),
        "secure-export:alerts[0].scopes",
        "leave the key out",
    ),
    (
        "scopes given as one string instead of a list",
        lambda c: alert(c, 0).__setitem__("scopes", OTHER_RESOURCE),
        "secure-export:alerts[0].scopes",
        "a list",
    ),
]


@pytest.mark.parametrize(("problem", "change", "key", "allowed"), BAD_CONFIG, ids=[case[0] for case in BAD_CONFIG])
def test_bad_value_fails_with_one_message_naming_key_and_what_is_allowed(
    problem: str, change: Callable[[dict[str, Any]], None], key: str, allowed: str
) -> None:
    with pytest.raises(config.ConfigError) as caught:
        dev_config_with(change)
    message = str(caught.value)
    assert caught.value.key == key, f"{problem}: the error names {caught.value.key!r}, not {key!r}: {message}"
    assert message.startswith(f"{key}: "), f"{problem}: the message does not start with the key: {message}"
    assert "\n" not in message, f"{problem}: the message is more than one line: {message!r}"
    assert "; allowed: " in message and allowed in message.split("; allowed: ", 1)[1], (
        f"{problem}: the message does not say that {allowed!r} is allowed: {message}"
    )


def test_environment_defaults_to_the_stack_name_and_must_fit_azure_names() -> None:
    assert dev_config_with(stack="dev").names.environment == "dev"
    with pytest.raises(config.ConfigError) as caught:
        dev_config_with(stack="Dev_EU")
    assert caught.value.key == "secure-export:environment"
    assert "default: the stack name" in str(caught.value), str(caught.value)
    renamed = dev_config_with(set_key("secure-export:environment", "deveu"), stack="Dev_EU")
    assert renamed.names.resource_group == "rg-secexp-deveu"


@pytest.mark.parametrize("stack", STACKS)
def test_every_example_stack_file_is_valid_config(stack: str) -> None:
    parsed = config.parse(*stack_config(stack)[:1], stack=stack, secret_keys=stack_config(stack)[1])
    assert parsed.targets and parsed.routes, f"stacks/Pulumi.{stack}.yaml declares no targets or routes"
    kinds = {type(rule).__name__ for rule in parsed.alerts}
    assert len(kinds) == 6, f"stacks/Pulumi.{stack}.yaml should show every alert kind, has {sorted(kinds)}"


def minimal_raw(**project: Any) -> dict[str, str]:
    raw = {
        "azure-native:tenantId": "00000000-0000-0000-0000-000000000000",
        "azuread:tenantId": "00000000-0000-0000-0000-000000000000",
        "azure-native:subscriptionId": SUBSCRIPTION,
        "azure-native:location": "westeurope",
        "secure-export:targets": json.dumps({"audit": {"kind": "dry_run"}}),
        "secure-export:routes": json.dumps([{"target": "audit"}]),
        "secure-export:entra": json.dumps({"clientId": CLIENT_ID, "objectId": SUBSCRIPTION}),
    }
    raw.update({f"secure-export:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in project.items()})
    return raw


def test_minimal_config_gets_the_documented_defaults() -> None:
    parsed = config.parse(minimal_raw(), stack="qa")
    relay = parsed.relay
    assert (relay.cpu, relay.memory, relay.min_replicas, relay.max_replicas) == (0.5, "1Gi", 1, 3)
    assert (relay.http_concurrent_requests, relay.queue_length, relay.metrics_port) == (50, 20, 9090)
    assert relay.image is None and relay.openid_config_url is None and relay.log_retention_days == 30
    assert parsed.key_vault == config.KeyVaultSettings(purge_protection=True, soft_delete_retention_days=90)
    assert parsed.storage_sku == "Standard_LRS"
    assert parsed.action_group_short_name == "SecureExport"
    assert parsed.entra.identifier_uri == f"api://{CLIENT_ID}" and parsed.alerts == ()
    assert parsed.itsm_secret_envs == () and parsed.payload_retention_days == 90
    assert parsed.network == config.NetworkSettings(ingress_allowed_ranges=(), virtual_network=None)
    assert parsed.tags == {"workload": "secure-export", "environment": "qa", "managed-by": "pulumi"}
    assert parsed.names.prefix == "secexp" and parsed.names.environment == "qa"


def test_network_hardening_settings_are_read() -> None:
    parsed = config.parse(
        minimal_raw(network={"ingressAllowedRanges": ["20.21.22.0/24"], "virtualNetwork": "10.42.0.0/24"}),
        stack="qa",
    )
    assert parsed.network == config.NetworkSettings(
        ingress_allowed_ranges=("20.21.22.0/24",), virtual_network="10.42.0.0/24"
    )


def test_values_set_with_config_set_path_arrive_as_strings_and_are_accepted() -> None:
    # `pulumi config set --path relay.minReplicas 2` stores the string "2".
    parsed = config.parse(
        minimal_raw(relay={"minReplicas": "2", "cpu": "1.5"}, keyVault={"purgeProtection": "false"}), stack="qa"
    )
    assert (parsed.relay.min_replicas, parsed.relay.cpu, parsed.relay.memory) == (2, 1.5, "3Gi")
    assert parsed.key_vault.purge_protection is False


def test_relay_route_options_single_match_values_and_numeric_fields_are_accepted() -> None:
    def change(c: dict[str, Any]) -> None:
        route = c["secure-export:routes"][0]
        route.update(on_refire="reopen", incident_per="configuration_item", summary="{{ title }}", **{"continue": True})
        route["match"] = {"resource_group": "rg-sap-*"}
        route["fields"]["impact"] = 2

    route = dev_config_with(change).routes[0]
    assert route.match == {"resource_group": ("rg-sap-*",)}
    assert route.fields["impact"] == 2
    assert route.options == {
        "on_refire": "reopen",
        "incident_per": "configuration_item",
        "summary": "{{ title }}",
        "continue": True,
    }


def test_forward_targets_may_say_auth_none() -> None:
    def change(c: dict[str, Any]) -> None:
        c["secure-export:targets"]["hook"] = {
            "kind": "forward",
            "base_url": "https://hook.example",
            "auth": {"type": "none"},
        }

    hook = next(t for t in dev_config_with(change).targets if t.name == "hook")
    assert hook.auth == config.TargetAuth(type="none", fields={}) and hook.secret_envs == ()


def test_relay_shutdown_grace_sets_the_termination_grace_period() -> None:
    assert config.parse(minimal_raw(), stack="qa").relay.termination_grace_seconds == 30  # 20 s default + 10
    longer = config.parse(minimal_raw(delivery={"shutdown_grace_seconds": 45.5}), stack="qa")
    assert longer.relay.termination_grace_seconds == 56
    assert longer.delivery == {"shutdown_grace_seconds": 45.5}


def test_kind_specific_target_options_pass_through_untouched() -> None:
    parsed = dev_config_with(lambda c: servicenow(c).update(close_code="Solved (Permanently)", ci_binding="create"))
    target = next(t for t in parsed.targets if t.name == "servicenow")
    assert target.options == {"close_code": "Solved (Permanently)", "ci_binding": "create"}


def test_referenced_secret_envs_lists_every_env_reference_once_sorted() -> None:
    raw = minimal_raw(
        targets={
            "a": {
                "kind": "servicenow",
                "base_url": "https://a.example",
                "auth": {"type": "oauth", "client_id": "c", "client_secret_env": "A_SECRET"},
            },
            "b": {
                "kind": "forward",
                "base_url": "https://b.example",
                "auth": {"type": "header", "name": "X-Key", "value_env": "B_KEY"},
            },
            "c": {
                "kind": "request_tracker",
                "base_url": "https://c.example",
                "auth": {"type": "token", "token_env": "A_SECRET"},
                "ci_binding": {"lookup_token_env": "C_LOOKUP"},  # a kind-specific option naming a secret
            },
        },
    )
    assert config.referenced_secret_envs(raw) == ("A_SECRET", "B_KEY", "C_LOOKUP")


# --- names ---------------------------------------------------------------------------------------

prefixes = st.from_regex(r"\A[a-z][a-z0-9]{1,7}\Z")
environments = st.from_regex(r"\A[a-z][a-z0-9]{0,6}\Z")
subscriptions = st.uuids().map(str)


@given(prefix=prefixes, environment=environments, subscription=subscriptions)
def test_derived_azure_names_fit_azure_naming_rules(prefix: str, environment: str, subscription: str) -> None:
    names = Names(prefix, environment, unique_suffix(subscription, prefix, environment))
    assert re.fullmatch(r"[a-z0-9]{3,24}", names.storage_account), names.storage_account
    vault = names.key_vault_stem + "a1b2c3"  # the random suffix hosting.py adds (SUFFIX_LENGTH characters)
    assert re.fullmatch(r"[a-zA-Z][a-zA-Z0-9-]{1,22}[a-zA-Z0-9]", vault), vault
    assert "--" not in vault, vault
    assert re.fullmatch(r"[a-zA-Z0-9]{5,50}", names.container_registry), names.container_registry
    assert re.fullmatch(r"[a-z][a-z0-9-]{0,30}[a-z0-9]", names.container_app), names.container_app
    assert len(names.resource_group) <= 90 and len(names.container_environment) <= 60


def test_unique_suffix_is_stable_per_subscription_and_differs_between_them() -> None:
    first = unique_suffix(SUBSCRIPTION, "secexp", "dev")
    assert first == unique_suffix(SUBSCRIPTION.upper(), "secexp", "dev")
    assert first != unique_suffix("22222222-2222-2222-2222-222222222222", "secexp", "dev")
    assert first != unique_suffix(SUBSCRIPTION, "secexp", "prod")


def test_load_reads_the_config_the_pulumi_cli_passes_in_its_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import pulumi

    raw, secret_keys = stack_config("dev")
    pulumi.runtime.set_all_config({}, [])  # as in a real run: nothing but the CLI's environment
    monkeypatch.setenv("PULUMI_CONFIG", json.dumps(raw))
    monkeypatch.setenv("PULUMI_CONFIG_SECRET_KEYS", json.dumps(secret_keys))
    monkeypatch.setattr(pulumi, "get_stack", lambda: "dev")
    loaded = config.load()
    assert loaded.itsm_secret_envs == ("SNOW_PASSWORD",)
    assert loaded.names.environment == "dev" and loaded.azure.subscription_id == SUBSCRIPTION
    monkeypatch.setenv("PULUMI_CONFIG", json.dumps({**raw, "secure-export:relay": json.dumps({"minReplicas": 0})}))
    with pytest.raises(pulumi.RunError, match=r"^secure-export:relay.minReplicas: "):
        config.load()
