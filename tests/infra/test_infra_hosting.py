"""Relay hosting (store, Key Vault, identity and its roles, registry and image,
Container Apps), for every example stack, from the mock run."""

from __future__ import annotations

import hashlib
import posixpath
from pathlib import Path
from typing import Any

from infra import config, hosting, relay_config
from infra.identity import AZURE_MONITOR_APP_ID
from infra.plan import PROGRAM_DIR, REPO_ROOT, Declared, Plan
from tests.infra.harness import (
    INGRESS_RANGES,
    PREBUILT_IMAGE,
    REGISTRY_PASSWORD_SECRET,
    REGISTRY_USER,
    SOVEREIGN_OPENID_URL,
    VNET_PREFIX,
    run_stack,
    stack_config,
    stack_value,
)

CONTAINER_APP = "azure-native:app:ContainerApp"
ROLE_ASSIGNMENT = "azure-native:authorization:RoleAssignment"
STORAGE_ACCOUNT = "azure-native:storage:StorageAccount"
QUEUE = "azure-native:storage:Queue"
TABLE = "azure-native:storage:Table"
BLOB_CONTAINER = "azure-native:storage:BlobContainer"
VAULT = "azure-native:keyvault:Vault"
VAULT_SECRET = "azure-native:keyvault:Secret"
IDENTITY = "azure-native:managedidentity:UserAssignedIdentity"
REGISTRY = "azure-native:containerregistry:Registry"
IMAGE = "docker-build:index:Image"
WORKSPACE = "azure-native:operationalinsights:Workspace"
ENVIRONMENT = "azure-native:app:ManagedEnvironment"
RESOURCE_GROUP = "azure-native:resources:ResourceGroup"
LIFECYCLE = "azure-native:storage:ManagementPolicy"
RANDOM_STRING = "random:index/randomString:RandomString"
SLEEP = "time:index/sleep:Sleep"
VNET = "azure-native:network:VirtualNetwork"
SUBNET = "azure-native:network:Subnet"
PRIVATE_ENDPOINT = "azure-native:network:PrivateEndpoint"
DNS_ZONE = "azure-native:privatedns:PrivateZone"
DNS_LINK = "azure-native:privatedns:VirtualNetworkLink"
DNS_ZONE_GROUP = "azure-native:network:PrivateDnsZoneGroup"


def parsed(stack: str) -> config.StackConfig:
    raw, secret_keys = stack_config(stack)
    return config.parse(raw, stack=stack, secret_keys=secret_keys)


def container(plan: Plan) -> dict[str, Any]:
    (only,) = plan.one(CONTAINER_APP).inputs["template"]["containers"]
    return only


def env(plan: Plan) -> dict[str, dict[str, Any]]:
    return {var["name"]: var for var in container(plan)["env"]}


def env_value(plan: Plan, name: str) -> str:
    assert name in env(plan), f"the Container App does not set {name}"
    return env(plan)[name]["value"]


def by_name(plan: Plan, type_: str, azure_name_input: str, azure_name: str) -> Declared:
    return next(r for r in plan.of_type(type_) if r.inputs[azure_name_input] == azure_name)


def test_everything_lives_in_the_stacks_resource_group_and_region(stack_plan: Plan, stack: str) -> None:
    cfg = parsed(stack)
    group = stack_plan.one(RESOURCE_GROUP)
    assert group.inputs["resourceGroupName"] == cfg.names.resource_group
    assert group.inputs["location"] == cfg.azure.location
    for resource in stack_plan.resources:
        # Role assignments and diagnostic settings live on the resource they are about; alert rules
        # have their own locations.
        scoped = (RESOURCE_GROUP, ROLE_ASSIGNMENT, "azure-native:monitor:DiagnosticSetting")
        if resource.type.startswith("azure-native:") and resource.type not in scoped:
            if resource.type.startswith("azure-native:privatedns:"):  # private DNS zones are global
                assert resource.inputs["location"] == "global", resource.name
                continue
            assert resource.inputs["resourceGroupName"] == group.outputs["name"], f"{resource.name} is elsewhere"
            if "location" in resource.inputs and not resource.type.startswith("azure-native:monitor:"):
                assert resource.inputs["location"] == cfg.azure.location, f"{resource.name} is in another region"


def test_log_analytics_workspace_receives_the_container_apps_logs(stack_plan: Plan, stack: str) -> None:
    workspace = stack_plan.one(WORKSPACE)
    assert workspace.inputs["sku"] == {"name": "PerGB2018"}
    assert workspace.inputs["retentionInDays"] == parsed(stack).relay.log_retention_days
    environment = stack_plan.one(ENVIRONMENT)
    assert environment.inputs["appLogsConfiguration"] == {"destination": "azure-monitor"}
    setting = stack_plan.one("azure-native:monitor:DiagnosticSetting", "relay-environment-logs")
    assert setting.inputs["resourceUri"] == environment.id and setting.inputs["workspaceId"] == workspace.id
    assert setting.inputs["logs"] == [{"categoryGroup": "allLogs", "enabled": True}]
    assert setting.inputs["logAnalyticsDestinationType"] == "Dedicated"


def test_state_holds_no_secret_and_a_preview_needs_only_reader(stack_plan: Plan) -> None:
    # No workspace shared key, no registry password, no ITSM value: a preview decrypts nothing, and
    # no invoke needs a right beyond Reader (getSharedKeys and listCredentials are POST actions).
    assert [r.name for r in stack_plan.resources if r.secret_inputs] == []
    assert [token for token, _ in stack_plan.calls] == [], stack_plan.calls


def test_storage_holds_the_relays_queues_table_and_container(stack_plan: Plan, stack: str) -> None:
    account = stack_plan.one(STORAGE_ACCOUNT)
    assert account.inputs["accountName"] == parsed(stack).names.storage_account
    assert account.inputs["sku"] == {"name": parsed(stack).storage_sku}
    declared = {
        (QUEUE, "queueName", "relay-events"),
        (QUEUE, "queueName", "relay-events-poison"),
        (TABLE, "tableName", "relaystate"),
        (BLOB_CONTAINER, "containerName", "relay-payloads"),
    }
    for type_, name_input, name in declared:
        resource = by_name(stack_plan, type_, name_input, name)
        assert resource.inputs["accountName"] == account.outputs["name"], f"{name} is not in the relay's account"
    assert (hosting.EVENTS_QUEUE, hosting.POISON_QUEUE, hosting.STATE_TABLE, hosting.PAYLOAD_CONTAINER) == (
        "relay-events",
        "relay-events-poison",
        "relaystate",
        "relay-payloads",
    ), "the relay's storage names changed: the relay (relay/store/azure.py) uses these"


def test_storage_accepts_only_entra_tokens_over_tls(stack_plan: Plan) -> None:
    account = stack_plan.one(STORAGE_ACCOUNT).inputs
    assert account["allowSharedKeyAccess"] is False, "account keys would bypass the identity's roles"
    assert account["allowBlobPublicAccess"] is False
    assert account["enableHttpsTrafficOnly"] is True and account["minimumTlsVersion"] == "TLS1_2"
    assert by_name(stack_plan, BLOB_CONTAINER, "containerName", "relay-payloads").inputs["publicAccess"] == "None"


def test_key_vault_holds_one_placeholder_secret_per_itsm_secret(stack_plan: Plan, stack: str) -> None:
    cfg = parsed(stack)
    vault = stack_plan.one(VAULT)
    properties = vault.inputs["properties"]
    assert properties["enableRbacAuthorization"] is True, "access policies would bypass the identity's roles"
    assert properties["tenantId"] == cfg.azure.tenant_id
    assert properties.get("enablePurgeProtection") == (True if cfg.key_vault.purge_protection else None)
    assert properties["softDeleteRetentionInDays"] == cfg.key_vault.soft_delete_retention_days
    secrets = {s.inputs["secretName"]: s for s in stack_plan.of_type(VAULT_SECRET)}
    assert cfg.itsm_secret_envs, f"stacks/Pulumi.{stack}.yaml references no ITSM secret"
    assert sorted(secrets) == sorted(hosting.secret_name(n) for n in cfg.itsm_secret_envs), "one secret per env"
    for name in cfg.itsm_secret_envs:
        secret = secrets[hosting.secret_name(name)]
        assert secret.inputs["vaultName"] == vault.outputs["name"]
        # The stack writes a placeholder once and never compares or overwrites the value an operator
        # sets: no ITSM secret value passes through Pulumi config, state or a preview.
        assert secret.inputs["properties"]["value"] == hosting.PLACEHOLDER_SECRET_VALUE
        assert secret.options.get("ignoreChanges") == ["properties.value"], secret.options


def test_no_itsm_secret_is_part_of_the_stack_config(stack: str) -> None:
    raw, secret_keys = stack_config(stack)
    assert "secure-export:itsmSecrets" not in raw and not secret_keys, "secret values would reach the Pulumi state"


def test_key_vault_name_ends_in_a_random_suffix_kept_in_the_state(stack_plan: Plan, stack: str) -> None:
    # A destroyed vault stays soft-deleted under its name (90 days with purge protection), so a
    # deterministic name would make destroy-and-redeploy fail; the random suffix lives in the state.
    suffix = stack_plan.one(RANDOM_STRING)
    assert suffix.inputs["length"] == 6 and suffix.inputs["special"] is False and suffix.inputs["upper"] is False
    name = stack_plan.one(VAULT).inputs["vaultName"]
    assert name == parsed(stack).names.key_vault_stem + suffix.outputs["result"], name
    assert len(parsed(stack).names.key_vault_stem) + suffix.inputs["length"] <= 24, "Key Vault names stop at 24"


def test_payload_blobs_expire_after_the_configured_retention(stack_plan: Plan, stack: str) -> None:
    policy = stack_plan.one(LIFECYCLE)
    assert policy.inputs["managementPolicyName"] == "default", "Azure accepts only the name 'default'"
    assert policy.inputs["accountName"] == stack_plan.one(STORAGE_ACCOUNT).outputs["name"]
    (rule,) = policy.inputs["policy"]["rules"]
    assert rule["enabled"] is True and rule["type"] == "Lifecycle"
    assert rule["definition"]["filters"] == {"blobTypes": ["blockBlob"], "prefixMatch": ["relay-payloads/"]}
    delete = rule["definition"]["actions"]["baseBlob"]["delete"]
    assert delete == {"daysAfterModificationGreaterThan": parsed(stack).payload_retention_days}


def test_payload_retention_defaults_to_the_relays_dead_letter_retention_and_follows_config() -> None:
    assert parsed("dev").payload_retention_days == config.PAYLOAD_RETENTION_DAYS == 90
    raw, secret_keys = stack_config("dev", payloadRetentionDays=30)
    assert config.parse(raw, stack="dev", secret_keys=secret_keys).payload_retention_days == 30


def test_relay_identity_gets_one_least_privilege_role_per_resource(stack_plan: Plan, stack: str) -> None:
    identity = stack_plan.one(IDENTITY)
    subscription = parsed(stack).azure.subscription_id
    expected = {
        (hosting.STORAGE_QUEUE_DATA_CONTRIBUTOR, by_name(stack_plan, QUEUE, "queueName", "relay-events").id),
        (hosting.STORAGE_QUEUE_DATA_CONTRIBUTOR, by_name(stack_plan, QUEUE, "queueName", "relay-events-poison").id),
        (hosting.STORAGE_TABLE_DATA_CONTRIBUTOR, stack_plan.one(TABLE).id),
        (hosting.STORAGE_BLOB_DATA_CONTRIBUTOR, stack_plan.one(BLOB_CONTAINER).id),
        (hosting.KEY_VAULT_SECRETS_USER, stack_plan.one(VAULT).id),
        (hosting.ACR_PULL, stack_plan.one(REGISTRY).id),  # the example stacks build the image
    }
    granted = set()
    # The relay identity's grants (self-monitoring's smoke reader is tested in test_infra_monitoring.py).
    for assignment in relay_grants(stack_plan):
        inputs = assignment.inputs
        assert inputs["principalId"] == identity.outputs["principalId"], f"{assignment.name} is for someone else"
        assert inputs["principalType"] == "ServicePrincipal"
        prefix = f"/subscriptions/{subscription}/providers/Microsoft.Authorization/roleDefinitions/"
        assert inputs["roleDefinitionId"].startswith(prefix), inputs["roleDefinitionId"]
        granted.add((inputs["roleDefinitionId"].removeprefix(prefix), inputs["scope"]))
    assert granted == expected, f"roles granted {sorted(granted)} differ from {sorted(expected)}"
    built_in = {
        "974c5e8b-45b9-4653-ba55-5f855dd0fb88": "Storage Queue Data Contributor",
        "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Storage Table Data Contributor",
        "ba92f5b4-2d11-453d-a403-e96b0029c9fe": "Storage Blob Data Contributor",
        "4633458b-17de-408a-b874-0445c86b69e6": "Key Vault Secrets User",
        "7f951dda-4ed3-4680-a7ca-43fe172d538d": "AcrPull",
    }
    assert {role for role, _ in granted} == set(built_in), "a role id is not the Azure built-in role it names"


def test_image_is_built_from_relay_dockerfile_and_pushed_to_the_stacks_registry(stack_plan: Plan) -> None:
    registry = stack_plan.one(REGISTRY)
    image = stack_plan.one(IMAGE)
    # Pulumi runs `main: infra/` from inside infra/, so the paths are relative to it.
    assert (PROGRAM_DIR / image.inputs["context"]["location"]).resolve() == REPO_ROOT
    assert (PROGRAM_DIR / image.inputs["dockerfile"]["location"]).resolve() == REPO_ROOT / "relay" / "Dockerfile"
    assert image.inputs["push"] is True and image.inputs["platforms"] == ["linux/amd64"]
    assert all(tag.startswith(f"{registry.outputs['loginServer']}/") for tag in image.inputs["tags"]), image.inputs
    assert image.inputs["buildOnPreview"] is False, "previews would need Docker"
    assert container(stack_plan)["image"] == image.outputs["ref"], "the app does not run the image just built"


def test_image_is_pushed_with_the_deploy_identity_never_an_admin_password(stack_plan: Plan) -> None:
    # The admin user's password can push and would sit in the state (and in every preview's hands).
    assert stack_plan.one(REGISTRY).inputs["adminUserEnabled"] is False
    assert "registries" not in stack_plan.one(IMAGE).inputs, "the push would carry a registry password"
    tokens = {token for token, _ in stack_plan.calls}
    assert "azure-native:containerregistry:listRegistryCredentials" not in tokens, "admin credentials are read"


def test_prebuilt_image_needs_no_registry_of_the_stacks_own(run_variant_plan: Plan) -> None:
    assert not run_variant_plan.of_type(IMAGE), "an image is built although config names a prebuilt one"
    assert not run_variant_plan.of_type(REGISTRY), "a registry is created that nothing uses"
    roles = {a.inputs["roleDefinitionId"].rsplit("/", 1)[1] for a in run_variant_plan.of_type(ROLE_ASSIGNMENT)}
    assert hosting.ACR_PULL not in roles, "AcrPull is granted on a registry nothing pulls from"
    assert container(run_variant_plan)["image"] == PREBUILT_IMAGE


def test_container_app_pulls_from_the_stacks_registry_with_its_identity(stack_plan: Plan) -> None:
    app = stack_plan.one(CONTAINER_APP).inputs
    identity = stack_plan.one(IDENTITY)
    assert app["identity"] == {"type": "UserAssigned", "userAssignedIdentities": [identity.id]}
    (registry,) = app["configuration"]["registries"]
    assert registry == {"server": stack_plan.one(REGISTRY).outputs["loginServer"], "identity": identity.id}


def test_prebuilt_image_is_pulled_from_its_own_registry_with_a_key_vault_password(run_variant_plan: Plan) -> None:
    # Container Apps signs in only to a registry an entry names; any other pull is anonymous.
    app = run_variant_plan.one(CONTAINER_APP).inputs
    (registry,) = app["configuration"]["registries"]
    assert registry == {"server": "ghcr.io", "username": REGISTRY_USER, "passwordSecretRef": REGISTRY_PASSWORD_SECRET}
    secrets = {secret["name"]: secret for secret in app["configuration"]["secrets"]}
    vault_secret = by_name(run_variant_plan, VAULT_SECRET, "secretName", REGISTRY_PASSWORD_SECRET)
    assert vault_secret.inputs["properties"]["value"] == hosting.PLACEHOLDER_SECRET_VALUE
    assert secrets[REGISTRY_PASSWORD_SECRET] == {
        "name": REGISTRY_PASSWORD_SECRET,
        "keyVaultUrl": vault_secret.outputs["properties"]["secretUri"],
        "identity": run_variant_plan.one(IDENTITY).id,
    }


def test_prebuilt_image_without_a_user_name_is_pulled_with_the_relays_identity() -> None:
    relay = {**stack_value("dev", "relay"), "image": "otherregistry.azurecr.io/relay:1.2.3"}
    plan = run_stack("dev", relay=relay)
    (registry,) = plan.one(CONTAINER_APP).inputs["configuration"]["registries"]
    assert registry == {"server": "otherregistry.azurecr.io", "identity": plan.one(IDENTITY).id}


def test_environment_uses_workload_profiles_and_the_app_the_consumption_profile(stack_plan: Plan) -> None:
    environment = stack_plan.one(ENVIRONMENT).inputs
    profiles = [(p["name"], p["workloadProfileType"]) for p in environment.get("workloadProfiles", [])]
    assert profiles == [("Consumption", "Consumption")], (
        "a Consumption-only (legacy) environment has no VNet, private endpoints or zones"
    )
    assert stack_plan.one(CONTAINER_APP).inputs["workloadProfileName"] == "Consumption" == config.WORKLOAD_PROFILE
    assert "vnetConfiguration" not in environment, "the example stacks have no VNet"


def test_container_app_runs_in_the_stacks_environment(stack_plan: Plan, stack: str) -> None:
    app = stack_plan.one(CONTAINER_APP)
    assert app.inputs["environmentId"] == stack_plan.one(ENVIRONMENT).id
    assert app.inputs["containerAppName"] == parsed(stack).names.container_app


def test_ingress_is_external_https_only_on_the_relay_port(stack_plan: Plan, stack: str) -> None:
    ingress = stack_plan.one(CONTAINER_APP).inputs["configuration"]["ingress"]
    assert ingress["external"] is True
    assert ingress["allowInsecure"] is False, "plain HTTP would reach the relay"
    assert ingress["targetPort"] == 8080 == int(env_value(stack_plan, "RELAY_PORT"))
    assert ingress["targetPort"] != parsed(stack).relay.metrics_port, "the metrics port is public"
    assert ingress["traffic"] == [{"latestRevision": True, "weight": 100}]
    assert "ipSecurityRestrictions" not in ingress, "the example stacks accept any caller"


def test_ingress_admits_only_the_configured_action_group_ranges(run_variant_plan: Plan) -> None:
    ingress = run_variant_plan.one(CONTAINER_APP).inputs["configuration"]["ingress"]
    rules = ingress["ipSecurityRestrictions"]
    assert [rule["ipAddressRange"] for rule in rules] == INGRESS_RANGES
    assert {rule["action"] for rule in rules} == {"Allow"}, "an Allow list denies every other address"
    assert len({rule["name"] for rule in rules}) == len(rules), "rule names must be unique"


def test_vnet_puts_the_environment_in_a_delegated_subnet_and_storage_and_vault_behind_endpoints(
    run_variant_plan: Plan,
) -> None:
    plan = run_variant_plan
    vnet = plan.one(VNET)
    assert vnet.inputs["addressSpace"] == {"addressPrefixes": [VNET_PREFIX]}
    subnets = {s.inputs["subnetName"]: s for s in plan.of_type(SUBNET)}
    environment_subnet, endpoints_subnet = subnets["container-apps"], subnets["private-endpoints"]
    assert (environment_subnet.inputs["addressPrefix"], endpoints_subnet.inputs["addressPrefix"]) == (
        "10.42.0.0/25",
        "10.42.0.128/25",
    )
    assert environment_subnet.inputs["delegations"] == [
        {"name": "container-apps", "serviceName": "Microsoft.App/environments"}
    ]
    assert plan.one(ENVIRONMENT).inputs["vnetConfiguration"] == {
        "infrastructureSubnetId": environment_subnet.id,
        "internal": False,  # the webhook must stay reachable from Azure Monitor
    }
    endpoints = {e.inputs["privateLinkServiceConnections"][0]["groupIds"][0]: e for e in plan.of_type(PRIVATE_ENDPOINT)}
    assert sorted(endpoints) == ["blob", "queue", "table", "vault"]
    for group, endpoint in endpoints.items():
        target = plan.one(VAULT) if group == "vault" else plan.one(STORAGE_ACCOUNT)
        assert endpoint.inputs["privateLinkServiceConnections"][0]["privateLinkServiceId"] == target.id
        assert endpoint.inputs["subnet"]["id"] == endpoints_subnet.id
    zones = {z.inputs["privateZoneName"]: z for z in plan.of_type(DNS_ZONE)}
    assert sorted(zones) == sorted(
        f"privatelink.{zone}"
        for zone in ("blob.core.windows.net", "queue.core.windows.net", "table.core.windows.net", "vaultcore.azure.net")
    )
    assert {link.inputs["virtualNetwork"]["id"] for link in plan.of_type(DNS_LINK)} == {vnet.id}
    assert len(plan.of_type(DNS_LINK)) == len(plan.of_type(DNS_ZONE_GROUP)) == 4
    assert plan.one(STORAGE_ACCOUNT).inputs["publicNetworkAccess"] == "Disabled"
    assert plan.one(VAULT).inputs["properties"]["publicNetworkAccess"] == "Disabled"
    app = plan.one(CONTAINER_APP)
    waits = {r.urn for r in plan.of_type(DNS_ZONE_GROUP)} | {r.urn for r in plan.of_type(DNS_LINK)}
    assert waits <= app.dependencies, "the first revision could start before it can resolve the endpoints"


def test_without_a_vnet_storage_and_vault_keep_public_endpoints(stack_plan: Plan) -> None:
    assert not stack_plan.of_type(VNET) and not stack_plan.of_type(PRIVATE_ENDPOINT)
    assert "publicNetworkAccess" not in stack_plan.one(STORAGE_ACCOUNT).inputs


def test_liveness_and_readiness_probe_the_relays_health_endpoints(stack_plan: Plan) -> None:
    probes = {probe["type"]: probe for probe in container(stack_plan)["probes"]}
    assert probes["Liveness"]["httpGet"] == {"path": "/healthz", "port": 8080}
    assert probes["Readiness"]["httpGet"] == {"path": "/readyz", "port": 8080}


def test_replicas_scale_on_http_concurrency_and_queue_length(stack_plan: Plan, stack: str) -> None:
    relay = parsed(stack).relay
    scale = stack_plan.one(CONTAINER_APP).inputs["template"]["scale"]
    assert (scale["minReplicas"], scale["maxReplicas"]) == (relay.min_replicas, relay.max_replicas)
    rules = {rule["name"]: rule for rule in scale["rules"]}
    assert rules["http-concurrency"]["http"]["metadata"] == {"concurrentRequests": str(relay.http_concurrent_requests)}
    queue = rules["events-queue-length"]["azureQueue"]
    assert queue["queueName"] == "relay-events" == hosting.EVENTS_QUEUE
    assert queue["accountName"] == stack_plan.one(STORAGE_ACCOUNT).outputs["name"]
    assert queue["queueLength"] == relay.queue_length
    assert queue["identity"] == stack_plan.one(IDENTITY).id, "the queue scaler would need storage keys"


def test_cpu_and_memory_follow_config(stack_plan: Plan, stack: str) -> None:
    relay = parsed(stack).relay
    assert container(stack_plan)["resources"] == {"cpu": relay.cpu, "memory": relay.memory}


def test_container_sets_the_relays_environment_contract(stack_plan: Plan, stack: str) -> None:
    cfg = parsed(stack)
    entra = stack_value(stack, "entra")
    assert env_value(stack_plan, "RELAY_TENANT_ID") == cfg.azure.tenant_id
    assert env_value(stack_plan, "RELAY_AUDIENCES").split(",") == [
        entra.get("identifierUri", f"api://{entra['clientId']}"),
        entra["clientId"],
    ], "the relay must accept both v1 (Application ID URI) and v2 (client id) audiences"
    assert env_value(stack_plan, "RELAY_ALLOWED_APP_IDS") == AZURE_MONITOR_APP_ID
    assert env_value(stack_plan, "RELAY_REQUIRED_ROLE") == "ActionGroupsSecureWebhook"
    assert env_value(stack_plan, "RELAY_STORE") == f"azure-storage://{stack_plan.one(STORAGE_ACCOUNT).outputs['name']}"
    assert env_value(stack_plan, "AZURE_CLIENT_ID") == stack_plan.one(IDENTITY).outputs["clientId"]
    assert (env_value(stack_plan, "RELAY_HOST"), env_value(stack_plan, "RELAY_PORT")) == ("0.0.0.0", "8080")
    assert env_value(stack_plan, "RELAY_METRICS_PORT") == str(cfg.relay.metrics_port)
    assert env_value(stack_plan, "RELAY_METRICS_HOST") == "0.0.0.0", "the scraper could not reach 127.0.0.1"
    scopes = [scope for rule in cfg.alerts for scope in rule.scopes]
    allowed = env_value(stack_plan, "RELAY_ALLOWED_SUBSCRIPTIONS").split(",")
    assert allowed[0] == cfg.azure.subscription_id.lower(), "the action group's own subscription comes first"
    assert set(allowed) == set(hosting.source_subscriptions(cfg.azure.subscription_id, scopes))
    assert "RELAY_OPENID_CONFIG_URL" not in env(stack_plan), "the public cloud needs no metadata override"


def test_sovereign_cloud_metadata_url_reaches_the_relay(run_variant_plan: Plan) -> None:
    assert env_value(run_variant_plan, "RELAY_OPENID_CONFIG_URL") == SOVEREIGN_OPENID_URL


def test_relay_config_is_mounted_from_a_secret_volume_at_relay_config(stack_plan: Plan, stack: str) -> None:
    cfg = parsed(stack)
    app = stack_plan.one(CONTAINER_APP).inputs
    path = env_value(stack_plan, "RELAY_CONFIG")
    (mount,) = container(stack_plan)["volumeMounts"]
    (volume,) = app["template"]["volumes"]
    assert mount["volumeName"] == volume["name"] and volume["storageType"] == "Secret"
    (item,) = volume["secrets"]
    assert posixpath.join(mount["mountPath"], item["path"]) == path, "RELAY_CONFIG points outside the mounted file"
    secrets = {secret["name"]: secret for secret in app["configuration"]["secrets"]}
    rendered = relay_config.render(cfg.targets, cfg.routes, cfg.delivery)
    assert secrets[item["secretRef"]]["value"] == rendered, "the mounted file is not the stack's relay config"
    assert env_value(stack_plan, hosting.CONFIG_DIGEST_ENV) == hashlib.sha256(rendered.encode()).hexdigest(), (
        "a config change would not roll a new revision"
    )


def test_itsm_secrets_reach_the_relay_as_key_vault_references(stack_plan: Plan, stack: str) -> None:
    cfg = parsed(stack)
    app = stack_plan.one(CONTAINER_APP).inputs
    identity = stack_plan.one(IDENTITY)
    secrets = {secret["name"]: secret for secret in app["configuration"]["secrets"]}
    vault_secrets = {s.inputs["secretName"]: s for s in stack_plan.of_type(VAULT_SECRET)}
    for name in cfg.itsm_secret_envs:
        variable = env(stack_plan)[name]
        assert set(variable) == {"name", "secretRef"}, f"{name} is set to a plain value"
        reference = secrets[variable["secretRef"]]
        vault_secret = vault_secrets[variable["secretRef"]]
        assert reference == {
            "name": variable["secretRef"],
            "keyVaultUrl": vault_secret.outputs["properties"]["secretUri"],
            "identity": identity.id,
        }, f"{name} is not a Key Vault reference read with the relay's identity"
        assert "/<version>" not in reference["keyVaultUrl"], "a versioned reference would ignore rotations"


def test_replicas_get_longer_to_stop_than_the_relays_shutdown_grace(stack_plan: Plan, stack: str) -> None:
    grace = parsed(stack).delivery.get("shutdown_grace_seconds", config.RELAY_SHUTDOWN_GRACE_SECONDS)
    window = stack_plan.one(CONTAINER_APP).inputs["template"]["terminationGracePeriodSeconds"]
    assert window >= grace + config.TERMINATION_MARGIN_SECONDS and window >= 30, (
        f"Container Apps kills the relay {window} s after SIGTERM, before its {grace} s shutdown grace ends"
    )


def test_container_app_starts_only_after_its_roles_are_granted_and_had_time_to_propagate(stack_plan: Plan) -> None:
    app = stack_plan.one(CONTAINER_APP)
    wait = stack_plan.one(SLEEP)
    assert wait.urn in app.dependencies, "the first revision starts right after its grants"
    assert wait.inputs["createDuration"] == hosting.RBAC_PROPAGATION_WAIT == "120s"
    missing = [a.name for a in relay_grants(stack_plan) if a.urn not in wait.dependencies]
    assert not missing, f"the wait could end before {missing} exists"


def test_relay_dockerfile_named_by_the_program_exists() -> None:
    assert hosting.DOCKERFILE == REPO_ROOT / "relay" / "Dockerfile"
    assert Path(hosting.DOCKERFILE).is_file()


def test_plan_records_the_stack_files_image_repository_per_environment(stack_plan: Plan, stack: str) -> None:
    (tag,) = stack_plan.one(IMAGE).inputs["tags"]
    assert tag.endswith(f"/secure-export-relay:{parsed(stack).names.environment}"), tag
    assert stack_value(stack, "relay").get("image") is None


def test_source_subscriptions_are_the_stacks_and_its_alert_rules() -> None:
    own, other = "11111111-2222-3333-4444-555555555555", "AAAAAAAA-2222-3333-4444-555555555555"
    scopes = [f"/subscriptions/{own}/resourceGroups/rg", f"/subscriptions/{other}", f"/subscriptions/{other}/x"]
    assert hosting.source_subscriptions(own, scopes) == (own, other.lower())
    assert hosting.source_subscriptions(own.upper(), []) == (own,)


def relay_grants(plan: Plan) -> list:
    """The role assignments of the hosting component (its children are named `relay-...`)."""
    return [a for a in plan.of_type(ROLE_ASSIGNMENT) if a.name.startswith("relay-")]
