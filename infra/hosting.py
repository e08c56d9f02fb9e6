"""Relay hosting: the relay on Azure Container Apps with its store, secrets, image and identity.

Everything the relay touches is created here, so that the relay itself needs data-plane rights only:
its user-assigned identity gets one role per resource it uses, scoped to that resource.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_docker_build as docker_build
import pulumi_random as random
import pulumiverse_time as time
from pulumi_azure_native import (
    app,
    authorization,
    containerregistry,
    keyvault,
    managedidentity,
    monitor,
    network,
    operationalinsights,
    privatedns,
    storage,
)

from infra import networking
from infra.config import (
    RELAY_PORT,
    WORKLOAD_PROFILE,
    AzureContext,
    KeyVaultSettings,
    NetworkSettings,
    RelaySettings,
    secret_name,
)
from infra.config.monitoring import OpenTelemetrySettings
from infra.identity import AZURE_MONITOR_APP_ID, SECURE_WEBHOOK_ROLE
from infra.naming import SUFFIX_LENGTH, Names
from relay import schema

# Azure Storage names the relay's store uses; the queue-length scale rule watches EVENTS_QUEUE. Their
# twins are QUEUE, POISON_QUEUE, TABLE and CONTAINER in relay/store/azure.py: written twice so that infra
# never imports the relay's store, and tests/infra/test_infra_hosting.py fails if these change.
EVENTS_QUEUE = "relay-events"
POISON_QUEUE = "relay-events-poison"
STATE_TABLE = "relaystate"
PAYLOAD_CONTAINER = "relay-payloads"

# Azure built-in role definition ids
# (learn.microsoft.com/azure/role-based-access-control/built-in-roles).
STORAGE_QUEUE_DATA_CONTRIBUTOR = "974c5e8b-45b9-4653-ba55-5f855dd0fb88"
STORAGE_TABLE_DATA_CONTRIBUTOR = "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3"
STORAGE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"
KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
ACR_PULL = "7f951dda-4ed3-4680-a7ca-43fe172d538d"
MONITORING_READER = "43d0d8ad-25c7-4714-9337-8ba259a9fe05"
# Monitoring Contributor, Azure's built-in role (learn.microsoft.com, "Azure built-in roles for Monitor"):
# it includes Microsoft.AlertsManagement/alerts/changestate/action, which two-way sync calls.
MONITORING_CONTRIBUTOR = "749f88d5-cbae-40b8-bcfc-e573ddc772fa"

# Role assignments can take minutes to reach the services that check them (Azure documents up to 30):
# the first revision waits this long after its grants, so that its Key Vault references, image pull
# and queue scaler find their rights. A longer delay is a rerun of `pulumi up` (docs/deploy.md).
RBAC_PROPAGATION_WAIT = "120s"

# What each Key Vault secret the stack creates holds until an operator sets the real value: secret
# values never pass through Pulumi config or state.
PLACEHOLDER_SECRET_VALUE = "not set yet: az keyvault secret set --vault-name <vault> --name <this secret> --value ..."

# The targets-and-routes YAML reaches the container as a Container Apps secret mounted as a file.
CONFIG_SECRET = "relay-config"
CONFIG_DIR = "/etc/relay"
CONFIG_FILE = "relay.yaml"
CONTAINER_NAME = "relay"
# Changing a Container Apps secret does not start a new revision; changing an env var does. This
# digest of the relay YAML makes a config change roll the replicas.
CONFIG_DIGEST_ENV = "SECURE_EXPORT_CONFIG_SHA256"

# The managed OpenTelemetry agent's destination name for the stack's OTLP collector (it takes the relay's
# metrics and traces; the name predates traces and is kept so the environment's config does not churn),
# and the service name the relay's metrics and spans carry
# (learn.microsoft.com/azure/container-apps/opentelemetry-agents).
OTEL_DESTINATION = "relay-metrics"
OTEL_SERVICE_NAME = "secure-export-relay"

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO_ROOT / "relay" / "Dockerfile"


@dataclass(frozen=True)
class RelayHostingArgs:
    names: Names
    azure: AzureContext
    resource_group_name: pulumi.Input[str]
    tags: Mapping[str, str]
    relay: RelaySettings
    key_vault: KeyVaultSettings
    storage_sku: str
    payload_retention_days: int  # the lifecycle rule deletes payload blobs older than this
    network: NetworkSettings
    relay_config_yaml: str
    itsm_secret_envs: Sequence[str]  # env var names; each a Key Vault secret whose value an operator sets
    audiences: Sequence[pulumi.Input[str]]  # token audiences: the Application ID URI and the client id
    # RELAY_ALLOWED_SUBSCRIPTIONS: where the stack's alerts come from (`source_subscriptions`); the stack's
    # own subscription when empty.
    allowed_subscriptions: Sequence[str] = ()
    # Metrics over OTLP through the environment's managed OpenTelemetry agent (None: /metrics only).
    open_telemetry: OpenTelemetrySettings | None = None
    # Expose the relay's admin port (RELAY_METRICS_PORT: /metrics, the status page) to the other apps of
    # its environment, never outside it: for the status viewer (infra/status_viewer.py). Off: no mapping.
    admin_port_in_environment: bool = False
    # Subscriptions reconciliation lists alerts of (docs/reconciliation.md): Monitoring Reader on each.
    reconcile_subscriptions: Sequence[str] = ()
    # Subscriptions whose alerts two-way sync closes or acknowledges (routes with `sync:` on): Monitoring
    # Contributor on each, beside Monitoring Reader.
    sync_subscriptions: Sequence[str] = ()


_SUBSCRIPTION = re.compile(r"^/subscriptions/([0-9a-fA-F-]{36})(?:/|$)")


def source_subscriptions(subscription_id: str, scopes: Sequence[str]) -> tuple[str, ...]:
    """The subscriptions alerts may come from: the stack's (it holds the action group) and every one an
    alert rule's scopes name, lower-case, in first-seen order."""
    found = [subscription_id.lower()]
    for scope in scopes:
        m = _SUBSCRIPTION.match(scope)
        if m and m.group(1).lower() not in found:
            found.append(m.group(1).lower())
    return tuple(found)


class RelayHosting(pulumi.ComponentResource):
    """Log Analytics, storage (queues, table, blobs), Key Vault, identity with least-privilege roles,
    registry and image, Container Apps environment and the relay's Container App.

    Outputs: `fqdn` (the relay's public host name), `webhook_url` (what the action group calls),
    `container_app`, `identity`, `storage_account`, `key_vault`, `image_ref`.
    """

    def __init__(self, name: str, args: RelayHostingArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("secure-export:hosting:RelayHosting", name, None, opts)
        self._name = name
        self._args = args
        self._child = pulumi.ResourceOptions(parent=self)
        located = {"resource_group_name": args.resource_group_name, "location": args.azure.location, "tags": args.tags}

        self.workspace = operationalinsights.Workspace(
            f"{name}-logs",
            workspace_name=args.names.log_workspace,
            sku=operationalinsights.WorkspaceSkuArgs(name="PerGB2018"),
            retention_in_days=args.relay.log_retention_days,
            **located,
            opts=self._child,
        )
        self.identity = managedidentity.UserAssignedIdentity(
            f"{name}-identity", resource_name_=args.names.managed_identity, **located, opts=self._child
        )
        self._virtual_network(located)
        self._store(located)
        self._vault(located)
        self._private_endpoints(located)
        self._registry_and_image(located)
        grants = self._grants()
        self.rbac_wait = time.Sleep(
            f"{name}-rbac-propagation",
            create_duration=RBAC_PROPAGATION_WAIT,
            opts=pulumi.ResourceOptions(parent=self, depends_on=grants),
        )

        self.environment = app.ManagedEnvironment(
            f"{name}-environment",
            environment_name=args.names.container_environment,
            # Logs reach the workspace through a diagnostic setting (below), not its shared key: the
            # state then holds no secret, and a preview needs no right beyond Reader.
            app_logs_configuration=app.AppLogsConfigurationArgs(destination="azure-monitor"),
            # Workload profiles (v2), not the legacy Consumption-only kind: VNet integration, private
            # endpoints and zone redundancy need it. The app runs on its serverless Consumption profile.
            workload_profiles=[app.WorkloadProfileArgs(name=WORKLOAD_PROFILE, workload_profile_type=WORKLOAD_PROFILE)],
            vnet_configuration=(
                app.VnetConfigurationArgs(infrastructure_subnet_id=self.environment_subnet.id, internal=False)
                if self.vnet is not None
                else None
            ),
            open_telemetry_configuration=_open_telemetry_agent(args.open_telemetry),
            **located,
            opts=self._child,
        )
        self.environment_logs = monitor.DiagnosticSetting(
            f"{name}-environment-logs",
            name="to-log-analytics",
            resource_uri=self.environment.id,
            workspace_id=self.workspace.id,
            # Resource-specific tables (ContainerAppConsoleLogs, ContainerAppSystemLogs).
            log_analytics_destination_type="Dedicated",
            logs=[monitor.DiagnosticsLogSettingsArgs(category_group="allLogs", enabled=True)],
            opts=self._child,
        )
        self.container_app = app.ContainerApp(
            f"{name}-app",
            container_app_name=args.names.container_app,
            environment_id=self.environment.id,
            workload_profile_name=WORKLOAD_PROFILE,
            identity=app.ManagedServiceIdentityArgs(type="UserAssigned", user_assigned_identities=[self.identity.id]),
            configuration=self._configuration(),
            template=self._template(),
            **located,
            # The first revision must start with its registry, Key Vault and storage rights in place
            # (and, in a VNet, with the private endpoints it reaches them through).
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.rbac_wait, *self.private_endpoints]),
        )

        self.fqdn: pulumi.Output[str] = self.container_app.configuration.apply(
            lambda configuration: configuration.ingress.fqdn
        )
        self.webhook_url: pulumi.Output[str] = pulumi.Output.concat("https://", self.fqdn, "/alerts")
        self.register_outputs({"fqdn": self.fqdn, "webhook_url": self.webhook_url, "image_ref": self.image_ref})

    def _virtual_network(self, located: dict) -> None:
        """Optional (`network.virtualNetwork`): a VNet with one subnet for the Container Apps
        environment (delegated to it) and one for the private endpoints of storage and Key Vault."""
        name, args = self._name, self._args
        self.vnet: network.VirtualNetwork | None = None
        if args.network.virtual_network is None:
            return
        environment_prefix, endpoints_prefix = networking.split_address_space(args.network.virtual_network)
        self.vnet = network.VirtualNetwork(
            f"{name}-vnet",
            virtual_network_name=args.names.virtual_network,
            address_space=network.AddressSpaceArgs(address_prefixes=[args.network.virtual_network]),
            **located,
            opts=self._child,
        )
        in_vnet = {"resource_group_name": args.resource_group_name, "virtual_network_name": self.vnet.name}
        self.environment_subnet = network.Subnet(
            f"{name}-environment-subnet",
            subnet_name="container-apps",
            address_prefix=environment_prefix,
            delegations=[network.DelegationArgs(name="container-apps", service_name="Microsoft.App/environments")],
            **in_vnet,
            opts=self._child,
        )
        self.endpoints_subnet = network.Subnet(
            f"{name}-endpoints-subnet",
            subnet_name="private-endpoints",
            address_prefix=endpoints_prefix,
            **in_vnet,
            # Azure updates one subnet of a VNet at a time.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.environment_subnet]),
        )

    def _private_endpoints(self, located: dict) -> None:
        """In a VNet: a private endpoint and private DNS zone for each storage service the relay uses
        and for Key Vault, whose public network access is then off."""
        self.private_endpoints: list[pulumi.Resource] = []
        if self.vnet is None:
            return
        name, args = self._name, self._args
        in_group = {"resource_group_name": args.resource_group_name}
        for target, group, zone_name in (
            (self.storage_account, "blob", networking.PRIVATE_DNS_ZONES["blob"]),
            (self.storage_account, "queue", networking.PRIVATE_DNS_ZONES["queue"]),
            (self.storage_account, "table", networking.PRIVATE_DNS_ZONES["table"]),
            (self.key_vault, "vault", networking.PRIVATE_DNS_ZONES["vault"]),
        ):
            zone = privatedns.PrivateZone(
                f"{name}-{group}-dns", private_zone_name=zone_name, location="global", **in_group, opts=self._child
            )
            link = privatedns.VirtualNetworkLink(
                f"{name}-{group}-dns-link",
                private_zone_name=zone.name,
                virtual_network_link_name=args.names.virtual_network,
                virtual_network=privatedns.SubResourceArgs(id=self.vnet.id),
                registration_enabled=False,
                location="global",
                **in_group,
                opts=self._child,
            )
            endpoint = network.PrivateEndpoint(
                f"{name}-{group}-endpoint",
                private_endpoint_name=f"pe-{args.names.prefix}-{args.names.environment}-{group}",
                subnet=network.SubnetArgs(id=self.endpoints_subnet.id),
                private_link_service_connections=[
                    network.PrivateLinkServiceConnectionArgs(
                        name=group, private_link_service_id=target.id, group_ids=[group]
                    )
                ],
                **located,
                opts=self._child,
            )
            zone_group = network.PrivateDnsZoneGroup(
                f"{name}-{group}-dns-group",
                private_endpoint_name=endpoint.name,
                private_dns_zone_group_name="default",
                private_dns_zone_configs=[network.PrivateDnsZoneConfigArgs(name=group, private_dns_zone_id=zone.id)],
                **in_group,
                opts=self._child,
            )
            self.private_endpoints += [link, zone_group]

    def _store(self, located: dict) -> None:
        """The relay's shared store (its `azure-storage://` backend): queues, state table and payload
        blobs, reachable only with Entra tokens (no shared keys, no public blobs)."""
        name, args = self._name, self._args
        self.storage_account = storage.StorageAccount(
            f"{name}-storage",
            account_name=args.names.storage_account,
            kind=storage.Kind.STORAGE_V2,
            sku=storage.SkuArgs(name=args.storage_sku),
            allow_blob_public_access=False,
            allow_shared_key_access=False,
            default_to_o_auth_authentication=True,
            enable_https_traffic_only=True,
            minimum_tls_version=storage.MinimumTlsVersion.TLS1_2,
            # In a VNet the relay reaches the account through private endpoints; nothing else may.
            public_network_access="Disabled" if self.vnet is not None else None,
            **located,
            opts=self._child,
        )
        in_account = {"resource_group_name": args.resource_group_name, "account_name": self.storage_account.name}
        self.events_queue = storage.Queue(
            f"{name}-events-queue", queue_name=EVENTS_QUEUE, **in_account, opts=self._child
        )
        self.poison_queue = storage.Queue(
            f"{name}-poison-queue", queue_name=POISON_QUEUE, **in_account, opts=self._child
        )
        self.state_table = storage.Table(f"{name}-state-table", table_name=STATE_TABLE, **in_account, opts=self._child)
        self.payload_container = storage.BlobContainer(
            f"{name}-payloads",
            container_name=PAYLOAD_CONTAINER,
            public_access=storage.PublicAccess.NONE,
            **in_account,
            opts=self._child,
        )
        # Payload blobs the relay no longer needs are deleted by the relay; this rule deletes whatever
        # is left (a crashed expiry pass, an abandoned event) after the retention period.
        self.payload_lifecycle = storage.ManagementPolicy(
            f"{name}-payload-lifecycle",
            management_policy_name="default",  # the only name Azure accepts: one policy per account
            policy=storage.ManagementPolicySchemaArgs(
                rules=[
                    storage.ManagementPolicyRuleArgs(
                        name="expire-relay-payloads",
                        enabled=True,
                        type=storage.RuleType.LIFECYCLE,
                        definition=storage.ManagementPolicyDefinitionArgs(
                            filters=storage.ManagementPolicyFilterArgs(
                                blob_types=["blockBlob"], prefix_match=[f"{PAYLOAD_CONTAINER}/"]
                            ),
                            actions=storage.ManagementPolicyActionArgs(
                                base_blob=storage.ManagementPolicyBaseBlobArgs(
                                    delete=storage.DateAfterModificationArgs(
                                        days_after_modification_greater_than=args.payload_retention_days
                                    )
                                )
                            ),
                        ),
                    )
                ]
            ),
            **in_account,
            opts=self._child,
        )

    def _vault(self, located: dict) -> None:
        """Key Vault holding the ITSM credentials; the Container App reads them by reference.

        Its name ends in a random suffix kept in the state: a destroyed vault stays soft-deleted (and
        its name reserved) for the retention period, so a redeployed stack gets a new name instead of
        failing. Secrets are created once with a placeholder; operators set the real values."""
        name, args = self._name, self._args
        self.vault_suffix = random.RandomString(
            f"{name}-vault-suffix", length=SUFFIX_LENGTH, special=False, upper=False, opts=self._child
        )
        self.key_vault = keyvault.Vault(
            f"{name}-vault",
            vault_name=pulumi.Output.concat(args.names.key_vault_stem, self.vault_suffix.result),
            properties=keyvault.VaultPropertiesArgs(
                tenant_id=args.azure.tenant_id,
                sku=keyvault.SkuArgs(family=keyvault.SkuFamily.A, name=keyvault.SkuName.STANDARD),
                enable_rbac_authorization=True,
                # Azure accepts only true or absent: purge protection cannot be switched off once on.
                enable_purge_protection=True if args.key_vault.purge_protection else None,
                soft_delete_retention_in_days=args.key_vault.soft_delete_retention_days,
                public_network_access="Disabled" if self.vnet is not None else None,
            ),
            **located,
            opts=self._child,
        )
        self.vault_secrets: dict[str, keyvault.Secret] = {
            env_var: self._placeholder_secret(secret_name(env_var)) for env_var in args.itsm_secret_envs
        }
        registry = args.relay.registry
        self.registry_password: keyvault.Secret | None = (
            self._placeholder_secret(registry.password_secret) if registry and registry.password_secret else None
        )

    def _placeholder_secret(self, secret: str) -> keyvault.Secret:
        return keyvault.Secret(
            f"{self._name}-secret-{secret}",
            resource_group_name=self._args.resource_group_name,
            vault_name=self.key_vault.name,
            secret_name=secret,
            properties=keyvault.SecretPropertiesArgs(value=PLACEHOLDER_SECRET_VALUE, content_type="text/plain"),
            # Written once; the value an operator sets later is never compared nor overwritten.
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["properties.value"]),
        )

    def _registry_and_image(self, located: dict) -> None:
        """The relay image: a prebuilt reference from config (pulled from its own registry, no
        registry here), or relay/Dockerfile built by pulumi-docker-build and pushed to the stack's
        registry. The registry has no admin user: the deploy job pushes with its Entra identity
        (AcrPush, docker credentials from `az acr login`), the Container App pulls with its own (AcrPull)."""
        name, args = self._name, self._args
        self.registry: containerregistry.Registry | None = None
        if args.relay.image is not None:
            self.image_ref: pulumi.Output[str] = pulumi.Output.from_input(args.relay.image)
            return
        self.registry = containerregistry.Registry(
            f"{name}-registry",
            registry_name=args.names.container_registry,
            sku=containerregistry.SkuArgs(name=containerregistry.SkuName.BASIC),
            admin_user_enabled=False,
            **located,
            opts=self._child,
        )
        # Paths relative to the working directory Pulumi runs the program in, so that the
        # recorded inputs do not depend on where the repository is checked out.
        here = Path.cwd()
        self.image = docker_build.Image(
            f"{name}-image",
            context=docker_build.BuildContextArgs(location=os.path.relpath(REPO_ROOT, here)),
            # relay/Dockerfile.dockerignore keeps the context to what the image copies.
            dockerfile=docker_build.DockerfileArgs(location=os.path.relpath(DOCKERFILE, here)),
            platforms=[docker_build.Platform.LINUX_AMD64],
            push=True,
            # Previews show the image as changing without building it: no Docker needed to preview.
            build_on_preview=False,
            tags=[
                pulumi.Output.concat(
                    self.registry.login_server, f"/{args.names.image_repository}:{args.names.environment}"
                )
            ],
            # No `registries`: the push uses the host's Docker credentials, which the deploy job gets
            # from its own Entra identity (.github/docker-credential-acr-entra), never a password.
            opts=self._child,
        )
        # tag@digest: a new build changes the reference, which rolls a new revision.
        self.image_ref = self.image.ref

    def _grant(self, label: str, role: str, scope: pulumi.Input[str]) -> authorization.RoleAssignment:
        return authorization.RoleAssignment(
            f"{self._name}-{label}",
            principal_id=self.identity.principal_id,
            # A new identity may not have replicated yet; the type lets Azure skip the lookup.
            principal_type=authorization.PrincipalType.SERVICE_PRINCIPAL,
            role_definition_id=(
                f"/subscriptions/{self._args.azure.subscription_id}/providers/Microsoft.Authorization/roleDefinitions/{role}"
            ),
            scope=scope,
            opts=self._child,
        )

    def _grants(self) -> list[authorization.RoleAssignment]:
        """Least privilege: each role on the one resource that needs it, not on the account."""
        return [
            self._grant("events-queue-data", STORAGE_QUEUE_DATA_CONTRIBUTOR, self.events_queue.id),
            self._grant("poison-queue-data", STORAGE_QUEUE_DATA_CONTRIBUTOR, self.poison_queue.id),
            self._grant("state-table-data", STORAGE_TABLE_DATA_CONTRIBUTOR, self.state_table.id),
            self._grant("payloads-blob-data", STORAGE_BLOB_DATA_CONTRIBUTOR, self.payload_container.id),
            self._grant("vault-secrets-user", KEY_VAULT_SECRETS_USER, self.key_vault.id),
            *([self._grant("registry-pull", ACR_PULL, self.registry.id)] if self.registry is not None else []),
            # Reconciliation reads alerts (Alerts - Get All) on each subscription it covers; another
            # subscription's assignment needs Owner or User Access Administrator there (docs/deploy.md).
            *(self._grant(f"monitoring-reader-{sub}", MONITORING_READER, f"/subscriptions/{sub}")
              for sub in self._args.reconcile_subscriptions),
            # Two-way sync changes alert states (Alerts - Change State), only where a syncing route's
            # alerts come from.
            *(self._grant(f"monitoring-contributor-{sub}", MONITORING_CONTRIBUTOR, f"/subscriptions/{sub}")
              for sub in self._args.sync_subscriptions),
        ]

    def _registries(self) -> list[app.RegistryCredentialsArgs]:
        """One entry for the registry the image comes from: Container Apps signs in to a registry
        only when an entry names its server, and pulls anonymously otherwise."""
        if self.registry is not None:
            return [app.RegistryCredentialsArgs(server=self.registry.login_server, identity=self.identity.id)]
        login = self._args.relay.registry
        assert login is not None  # set by the config whenever relay.image is
        if login.username is None:
            return [app.RegistryCredentialsArgs(server=login.server, identity=self.identity.id)]
        return [
            app.RegistryCredentialsArgs(
                server=login.server, username=login.username, password_secret_ref=login.password_secret
            )
        ]

    def _configuration(self) -> app.ConfigurationArgs:
        args = self._args
        secrets = [app.SecretArgs(name=CONFIG_SECRET, value=args.relay_config_yaml)]
        secrets += [
            app.SecretArgs(
                name=secret_name(env_var),
                key_vault_url=secret.properties.secret_uri,
                identity=self.identity.id,
            )
            for env_var, secret in self.vault_secrets.items()
        ]
        if self.registry_password is not None:
            secrets.append(
                app.SecretArgs(
                    name=self._args.relay.registry.password_secret,  # type: ignore[union-attr]
                    key_vault_url=self.registry_password.properties.secret_uri,
                    identity=self.identity.id,
                )
            )
        return app.ConfigurationArgs(
            active_revisions_mode=app.ActiveRevisionsMode.SINGLE,
            ingress=app.IngressArgs(
                external=True,
                target_port=RELAY_PORT,
                transport=app.IngressTransportMethod.AUTO,
                allow_insecure=False,  # HTTPS only: plain HTTP is redirected
                traffic=[app.TrafficWeightArgs(latest_revision=True, weight=100)],
                # Optional: only Azure Monitor's ActionGroup service-tag ranges may call (any rule
                # set makes Container Apps deny every other address).
                ip_security_restrictions=[
                    app.IpSecurityRestrictionRuleArgs(
                        name=f"action-group-{number:03d}",
                        ip_address_range=address_range,
                        action=app.Action.ALLOW,
                        description="Azure Monitor ActionGroup service tag",
                    )
                    for number, address_range in enumerate(args.network.ingress_allowed_ranges, start=1)
                ]
                or None,
                # Internal only (external=False): reachable from the environment's apps, not its ingress.
                additional_port_mappings=[
                    app.IngressPortMappingArgs(
                        external=False, target_port=args.relay.metrics_port, exposed_port=args.relay.metrics_port
                    )
                ]
                if args.admin_port_in_environment
                else None,
            ),
            registries=self._registries(),
            secrets=secrets,
        )

    def _environment_variables(self) -> list[app.EnvironmentVarArgs]:
        """The relay's environment contract (the variables relay/settings.py reads; docs/deploy.md,
        section 5), plus one variable per ITSM secret."""
        args, relay = self._args, self._args.relay
        plain: dict[str, pulumi.Input[str]] = {
            "RELAY_TENANT_ID": args.azure.tenant_id,
            "RELAY_AUDIENCES": pulumi.Output.all(*args.audiences).apply(",".join),
            "RELAY_ALLOWED_APP_IDS": AZURE_MONITOR_APP_ID,
            "RELAY_REQUIRED_ROLE": SECURE_WEBHOOK_ROLE,
            "RELAY_STORE": pulumi.Output.concat(schema.AZURE_STORAGE_ACCOUNT_PREFIX, self.storage_account.name),
            "AZURE_CLIENT_ID": self.identity.client_id,  # which identity DefaultAzureCredential uses
            "RELAY_HOST": "0.0.0.0",
            "RELAY_PORT": str(RELAY_PORT),
            "RELAY_METRICS_PORT": str(relay.metrics_port),  # not behind the ingress
            # The relay binds /metrics to 127.0.0.1 by default; in the container, its own interface, so
            # that the environment's scraper reaches it (the ingress only ever targets RELAY_PORT).
            "RELAY_METRICS_HOST": "0.0.0.0",
            # Any action group in the tenant can get a valid token: take only the stack's own sources.
            "RELAY_ALLOWED_SUBSCRIPTIONS": ",".join(
                args.allowed_subscriptions or source_subscriptions(args.azure.subscription_id, ())
            ),
            "RELAY_CONFIG": f"{CONFIG_DIR}/{CONFIG_FILE}",
            CONFIG_DIGEST_ENV: hashlib.sha256(args.relay_config_yaml.encode()).hexdigest(),
        }
        if relay.openid_config_url:
            plain["RELAY_OPENID_CONFIG_URL"] = relay.openid_config_url
        if args.open_telemetry is not None:
            # The agent sets OTEL_EXPORTER_OTLP_ENDPOINT in the container; the relay exports metrics and traces
            # when it is set.
            plain["OTEL_SERVICE_NAME"] = OTEL_SERVICE_NAME
            plain["OTEL_METRIC_EXPORT_INTERVAL"] = str(args.open_telemetry.export_interval_seconds * 1000)
        env = [app.EnvironmentVarArgs(name=key, value=value) for key, value in plain.items()]
        env += [app.EnvironmentVarArgs(name=var, secret_ref=secret_name(var)) for var in self.vault_secrets]
        return env

    def _template(self) -> app.TemplateArgs:
        relay = self._args.relay
        return app.TemplateArgs(
            containers=[
                app.ContainerArgs(
                    name=CONTAINER_NAME,
                    image=self.image_ref,
                    env=self._environment_variables(),
                    resources=app.ContainerResourcesArgs(cpu=relay.cpu, memory=relay.memory),
                    probes=[
                        app.ContainerAppProbeArgs(
                            type=app.Type.LIVENESS,
                            http_get=app.ContainerAppProbeHttpGetArgs(port=RELAY_PORT, path="/healthz"),
                            period_seconds=10,
                            failure_threshold=3,
                        ),
                        app.ContainerAppProbeArgs(
                            type=app.Type.READINESS,
                            http_get=app.ContainerAppProbeHttpGetArgs(port=RELAY_PORT, path="/readyz"),
                            period_seconds=5,
                            failure_threshold=3,
                        ),
                    ],
                    volume_mounts=[app.VolumeMountArgs(volume_name=CONFIG_SECRET, mount_path=CONFIG_DIR)],
                )
            ],
            # Container Apps' SIGTERM-to-SIGKILL window, longer than the relay's own shutdown grace.
            termination_grace_period_seconds=relay.termination_grace_seconds,
            volumes=[
                app.VolumeArgs(
                    name=CONFIG_SECRET,
                    storage_type=app.StorageType.SECRET,
                    secrets=[app.SecretVolumeItemArgs(secret_ref=CONFIG_SECRET, path=CONFIG_FILE)],
                )
            ],
            scale=app.ScaleArgs(
                min_replicas=relay.min_replicas,
                max_replicas=relay.max_replicas,
                rules=[
                    app.ScaleRuleArgs(
                        name="http-concurrency",
                        http=app.HttpScaleRuleArgs(
                            metadata={"concurrentRequests": str(relay.http_concurrent_requests)}
                        ),
                    ),
                    app.ScaleRuleArgs(
                        name="events-queue-length",
                        azure_queue=app.QueueScaleRuleArgs(
                            account_name=self.storage_account.name,
                            queue_name=EVENTS_QUEUE,
                            queue_length=relay.queue_length,
                            identity=self.identity.id,  # no storage keys: the scaler uses the identity
                        ),
                    ),
                ],
            ),
        )


def _open_telemetry_agent(settings: OpenTelemetrySettings | None) -> app.OpenTelemetryConfigurationArgs | None:
    """The environment's managed agent, forwarding the relay's metrics and traces to the stack's OTLP
    collector (logs stay with the environment's Log Analytics workspace)."""
    if settings is None:
        return None
    return app.OpenTelemetryConfigurationArgs(
        destinations_configuration=app.DestinationsConfigurationArgs(
            otlp_configurations=[app.OtlpConfigurationArgs(name=OTEL_DESTINATION, endpoint=settings.endpoint)]
        ),
        metrics_configuration=app.MetricsConfigurationArgs(destinations=[OTEL_DESTINATION]),
        traces_configuration=app.TracesConfigurationArgs(destinations=[OTEL_DESTINATION]),
    )
