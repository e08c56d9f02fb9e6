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
from pulumi_azure_native import (
    app,
    authorization,
    containerregistry,
    keyvault,
    managedidentity,
    operationalinsights,
    storage,
)

from infra.config import RELAY_PORT, AzureContext, KeyVaultSettings, RelaySettings, SecretValue
from infra.identity import AZURE_MONITOR_APP_ID, SECURE_WEBHOOK_ROLE
from infra.naming import Names
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

# The targets-and-routes YAML reaches the container as a Container Apps secret mounted as a file.
CONFIG_SECRET = "relay-config"
CONFIG_DIR = "/etc/relay"
CONFIG_FILE = "relay.yaml"
CONTAINER_NAME = "relay"
# Changing a Container Apps secret does not start a new revision; changing an env var does. This
# digest of the relay YAML makes a config change roll the replicas.
CONFIG_DIGEST_ENV = "SECURE_EXPORT_CONFIG_SHA256"

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
    relay_config_yaml: str
    itsm_secrets: Mapping[str, SecretValue]  # env var name -> value, stored in Key Vault
    audiences: Sequence[pulumi.Input[str]]  # token audiences: the Application ID URI and the client id
    # RELAY_ALLOWED_SUBSCRIPTIONS: where the stack's alerts come from (`source_subscriptions`); the stack's
    # own subscription when empty.
    allowed_subscriptions: Sequence[str] = ()


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


def secret_name(env_var: str) -> str:
    """The Key Vault and Container Apps secret name for an ITSM secret's env var (SNOW_PASSWORD ->
    snow-password): both services allow lowercase letters, digits and dashes."""
    return env_var.lower().replace("_", "-")


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
        self._store(located)
        self._vault(located)
        self._registry_and_image(located)
        grants = self._grants()

        keys = operationalinsights.get_shared_keys_output(
            resource_group_name=args.resource_group_name,
            workspace_name=self.workspace.name,
            opts=pulumi.InvokeOutputOptions(parent=self),
        )
        self.environment = app.ManagedEnvironment(
            f"{name}-environment",
            environment_name=args.names.container_environment,
            app_logs_configuration=app.AppLogsConfigurationArgs(
                destination="log-analytics",
                log_analytics_configuration=app.LogAnalyticsConfigurationArgs(
                    customer_id=self.workspace.customer_id,
                    shared_key=pulumi.Output.secret(keys.primary_shared_key),
                ),
            ),
            **located,
            opts=self._child,
        )
        self.container_app = app.ContainerApp(
            f"{name}-app",
            container_app_name=args.names.container_app,
            environment_id=self.environment.id,
            identity=app.ManagedServiceIdentityArgs(type="UserAssigned", user_assigned_identities=[self.identity.id]),
            configuration=self._configuration(),
            template=self._template(),
            **located,
            # The first revision must start with its registry, Key Vault and storage rights in place.
            opts=pulumi.ResourceOptions(parent=self, depends_on=grants),
        )

        self.fqdn: pulumi.Output[str] = self.container_app.configuration.apply(
            lambda configuration: configuration.ingress.fqdn
        )
        self.webhook_url: pulumi.Output[str] = pulumi.Output.concat("https://", self.fqdn, "/alerts")
        self.register_outputs({"fqdn": self.fqdn, "webhook_url": self.webhook_url, "image_ref": self.image_ref})

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

    def _vault(self, located: dict) -> None:
        """Key Vault holding the ITSM credentials; the Container App reads them by reference."""
        name, args = self._name, self._args
        self.key_vault = keyvault.Vault(
            f"{name}-vault",
            vault_name=args.names.key_vault,
            properties=keyvault.VaultPropertiesArgs(
                tenant_id=args.azure.tenant_id,
                sku=keyvault.SkuArgs(family=keyvault.SkuFamily.A, name=keyvault.SkuName.STANDARD),
                enable_rbac_authorization=True,
                # Azure accepts only true or absent: purge protection cannot be switched off once on.
                enable_purge_protection=True if args.key_vault.purge_protection else None,
                soft_delete_retention_in_days=args.key_vault.soft_delete_retention_days,
            ),
            **located,
            opts=self._child,
        )
        self.vault_secrets: dict[str, keyvault.Secret] = {}
        for env_var, secret in args.itsm_secrets.items():
            self.vault_secrets[env_var] = keyvault.Secret(
                f"{name}-secret-{secret_name(env_var)}",
                resource_group_name=args.resource_group_name,
                vault_name=self.key_vault.name,
                secret_name=secret_name(env_var),
                properties=keyvault.SecretPropertiesArgs(
                    value=pulumi.Output.secret(secret.value), content_type="text/plain"
                ),
                opts=self._child,
            )

    def _registry_and_image(self, located: dict) -> None:
        """The registry the Container App pulls from with its identity, and the relay image: a
        prebuilt reference from config, or relay/Dockerfile built and pushed by pulumi-docker-build.
        Pushing uses the registry's admin credentials, so they are enabled only for that case."""
        name, args = self._name, self._args
        build = args.relay.image is None
        self.registry = containerregistry.Registry(
            f"{name}-registry",
            registry_name=args.names.container_registry,
            sku=containerregistry.SkuArgs(name=containerregistry.SkuName.BASIC),
            admin_user_enabled=build,
            **located,
            opts=self._child,
        )
        if not build:
            self.image_ref: pulumi.Output[str] = pulumi.Output.from_input(args.relay.image)
            return
        credentials = containerregistry.list_registry_credentials_output(
            resource_group_name=args.resource_group_name,
            registry_name=self.registry.name,
            opts=pulumi.InvokeOutputOptions(parent=self),
        )
        # Paths relative to the working directory Pulumi runs the program in, so that the
        # recorded inputs do not depend on where the repository is checked out.
        here = Path.cwd()
        self.image = docker_build.Image(
            f"{name}-image",
            context=docker_build.BuildContextArgs(location=os.path.relpath(REPO_ROOT, here)),
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
            registries=[
                docker_build.RegistryArgs(
                    address=self.registry.login_server,
                    username=credentials.username,
                    password=pulumi.Output.secret(credentials.passwords.apply(lambda passwords: passwords[0].value)),
                )
            ],
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
            self._grant("registry-pull", ACR_PULL, self.registry.id),
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
        return app.ConfigurationArgs(
            active_revisions_mode=app.ActiveRevisionsMode.SINGLE,
            ingress=app.IngressArgs(
                external=True,
                target_port=RELAY_PORT,
                transport=app.IngressTransportMethod.AUTO,
                allow_insecure=False,  # HTTPS only: plain HTTP is redirected
                traffic=[app.TrafficWeightArgs(latest_revision=True, weight=100)],
            ),
            registries=[app.RegistryCredentialsArgs(server=self.registry.login_server, identity=self.identity.id)],
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
