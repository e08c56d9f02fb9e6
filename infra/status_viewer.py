"""The operators' way in to the relay's status page in Azure, without opening the relay's admin port to
the internet: a small nginx Container App in the relay's environment, signed in to with Container Apps
authentication (Entra ID, an app registration that requires assignment), proxying the status page and
nothing else to the relay's admin port, which the relay exposes inside the environment only.

Why this shape (docs/deploy.md, "The status page"): the relay's public ingress must keep serving
/alerts to Azure Monitor with no interactive sign-in in front of it, and its admin port also serves
/metrics, which names token-failure reasons and targets. A separate app keeps both facts apart: the
sign-in applies to the viewer alone, and the viewer's proxy forwards the status page's paths only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import pulumi
import pulumiverse_time as time
from pulumi_azure_native import app, authorization, keyvault, managedidentity

from infra.config import WORKLOAD_PROFILE, AzureContext, StatusViewerSettings
from infra.naming import Names
from relay.schema import STATUS_PATH

# The relay serves its status page at STATUS_PATH on its admin port (RELAY_METRICS_PORT), with anything
# below it (assets, a page per alert) under STATUS_PATH + "/". Everything else on that port (/metrics)
# stays out of the viewer's reach.
# The port nginx listens on inside the viewer's container (unprivileged), the viewer ingress's target.
VIEWER_PORT = 8080
# Container Apps authentication's sign-in callback for the Entra provider: the redirect URI the app
# registration must list (learn.microsoft.com/azure/container-apps/authentication-entra).
CALLBACK_PATH = "/.auth/login/aad/callback"
# The Container Apps secret Easy Auth reads the app registration's client secret from (a Key Vault reference).
CLIENT_SECRET_SETTING = "microsoft-provider-authentication-secret"
NGINX_CONFIG_SECRET = "nginx-config"
NGINX_CONFIG_DIR = "/etc/nginx/conf.d"
NGINX_CONFIG_FILE = "default.conf"
# Azure built-in role: read secret values (learn.microsoft.com/azure/role-based-access-control/built-in-roles).
KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
# Until an operator sets it, the client secret holds this (values never pass through Pulumi state).
PLACEHOLDER_SECRET_VALUE = "not set yet: az keyvault secret set --vault-name <vault> --name <this secret> --value ..."
# A role assignment can take minutes to reach Key Vault; the viewer's first revision waits this long.
RBAC_PROPAGATION_WAIT = "120s"

_APP_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}[a-z0-9]$")


@dataclass(frozen=True)
class StatusViewerArgs:
    """Where the viewer runs and what it reaches. Validated (`validate`) before anything is declared."""

    names: Names
    azure: AzureContext
    resource_group_name: pulumi.Input[str]
    tags: Mapping[str, str]
    settings: StatusViewerSettings
    environment_id: pulumi.Input[str]  # the relay's Container Apps environment
    relay_app_name: str  # the relay's Container App: its name is its host name inside the environment
    admin_port: int  # RELAY_METRICS_PORT, exposed by the relay inside the environment only
    key_vault_id: pulumi.Input[str]
    key_vault_name: pulumi.Input[str]

    def validate(self) -> None:
        if not _APP_NAME.match(self.relay_app_name):
            raise ValueError(f"relay_app_name {self.relay_app_name!r} is not a Container App name")
        if not 1024 <= self.admin_port <= 65535 or self.admin_port == VIEWER_PORT:
            raise ValueError(f"admin_port {self.admin_port} must be 1024-65535 and not the viewer's {VIEWER_PORT}")


def nginx_config(upstream_host: str, upstream_port: int, listen: str | int = VIEWER_PORT) -> str:
    """The viewer's one server block: the status page's paths go to the relay's admin port, anything
    else is 404 here (never proxied). The operator's sign-in cookie and headers are not passed on.
    `listen` is the container's port (tests run the same block on a loopback address)."""
    upstream = f"http://{upstream_host}:{upstream_port}"
    proxied = f"""        proxy_pass {upstream};
        proxy_http_version 1.1;
        proxy_set_header Host {upstream_host};
        proxy_set_header Cookie "";
        proxy_set_header Authorization "";
        proxy_set_header X-MS-TOKEN-AAD-ACCESS-TOKEN "";
        proxy_set_header X-MS-TOKEN-AAD-ID-TOKEN "";
        proxy_connect_timeout 5s;
        proxy_read_timeout 30s;
        limit_except GET HEAD {{ deny all; }}
"""
    return f"""# Rendered by infra/status_viewer.py: the relay's status page, read-only, and nothing else.
server {{
    listen {listen};
    server_tokens off;
    location = / {{
        return 302 {STATUS_PATH};
    }}
    location = {STATUS_PATH} {{
{proxied}    }}
    location ^~ {STATUS_PATH}/ {{
{proxied}    }}
    location / {{
        return 404;
    }}
}}
"""


class StatusViewer(pulumi.ComponentResource):
    """The viewer's identity (Key Vault Secrets User on its one secret), the client secret's Key Vault
    placeholder, the nginx Container App and its Container Apps authentication.

    Outputs: `fqdn`, `url` (the status page, what operators open), `redirect_uri` (what the app
    registration must list), `container_app`, `auth_config`, `client_secret` (the Key Vault secret).
    """

    def __init__(self, name: str, args: StatusViewerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        args.validate()
        super().__init__("secure-export:hosting:StatusViewer", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        located = {"resource_group_name": args.resource_group_name, "location": args.azure.location,
                   "tags": args.tags}
        settings = args.settings

        self.identity = managedidentity.UserAssignedIdentity(
            f"{name}-identity", resource_name_=f"id-{args.names.prefix}-{args.names.environment}-viewer",
            **located, opts=child,
        )
        self.client_secret = keyvault.Secret(
            f"{name}-client-secret",
            resource_group_name=args.resource_group_name,
            vault_name=args.key_vault_name,
            secret_name=settings.secret_name,
            properties=keyvault.SecretPropertiesArgs(value=PLACEHOLDER_SECRET_VALUE, content_type="text/plain"),
            # Written once; the value an operator sets later is never compared nor overwritten.
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["properties.value"]),
        )
        # Least privilege: the one secret, not the vault (which holds the ITSM credentials).
        self.secret_grant = authorization.RoleAssignment(
            f"{name}-client-secret-user",
            principal_id=self.identity.principal_id,
            principal_type=authorization.PrincipalType.SERVICE_PRINCIPAL,
            role_definition_id=(
                f"/subscriptions/{args.azure.subscription_id}/providers/Microsoft.Authorization/"
                f"roleDefinitions/{KEY_VAULT_SECRETS_USER}"
            ),
            scope=pulumi.Output.concat(args.key_vault_id, "/secrets/", settings.secret_name),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.client_secret]),
        )
        self.rbac_wait = time.Sleep(
            f"{name}-rbac-propagation", create_duration=RBAC_PROPAGATION_WAIT,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.secret_grant]),
        )
        self.container_app = app.ContainerApp(
            f"{name}-app",
            container_app_name=f"ca-{args.names.prefix}-{args.names.environment}-viewer",
            environment_id=args.environment_id,
            workload_profile_name=WORKLOAD_PROFILE,
            identity=app.ManagedServiceIdentityArgs(type="UserAssigned", user_assigned_identities=[self.identity.id]),
            configuration=app.ConfigurationArgs(
                active_revisions_mode=app.ActiveRevisionsMode.SINGLE,
                ingress=app.IngressArgs(
                    external=True,
                    target_port=VIEWER_PORT,
                    transport=app.IngressTransportMethod.AUTO,
                    allow_insecure=False,
                    traffic=[app.TrafficWeightArgs(latest_revision=True, weight=100)],
                ),
                secrets=[
                    app.SecretArgs(name=NGINX_CONFIG_SECRET, value=nginx_config(args.relay_app_name, args.admin_port)),
                    app.SecretArgs(name=CLIENT_SECRET_SETTING, key_vault_url=self.client_secret.properties.secret_uri,
                                   identity=self.identity.id),
                ],
            ),
            template=app.TemplateArgs(
                containers=[
                    app.ContainerArgs(
                        name="viewer",
                        image=settings.image,
                        resources=app.ContainerResourcesArgs(cpu=0.25, memory="0.5Gi"),
                        volume_mounts=[app.VolumeMountArgs(volume_name=NGINX_CONFIG_SECRET,
                                                           mount_path=NGINX_CONFIG_DIR)],
                    )
                ],
                volumes=[
                    app.VolumeArgs(
                        name=NGINX_CONFIG_SECRET,
                        storage_type=app.StorageType.SECRET,
                        secrets=[app.SecretVolumeItemArgs(secret_ref=NGINX_CONFIG_SECRET, path=NGINX_CONFIG_FILE)],
                    )
                ],
                # People, not Azure Monitor, call it: it may sleep at zero and wake on a request.
                scale=app.ScaleArgs(min_replicas=0, max_replicas=1),
            ),
            **located,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.rbac_wait]),
        )
        issuer = f"https://login.microsoftonline.com/{args.azure.tenant_id}/v2.0"
        self.auth_config = app.ContainerAppsAuthConfig(
            f"{name}-auth",
            auth_config_name="current",  # the only name Container Apps accepts: one per app
            container_app_name=self.container_app.name,
            resource_group_name=args.resource_group_name,
            platform=app.AuthPlatformArgs(enabled=True),
            global_validation=app.GlobalValidationArgs(
                unauthenticated_client_action=app.UnauthenticatedClientActionV2.REDIRECT_TO_LOGIN_PAGE,
                redirect_to_provider="azureactivedirectory",
            ),
            http_settings=app.HttpSettingsArgs(require_https=True),
            identity_providers=app.IdentityProvidersArgs(
                azure_active_directory=app.AzureActiveDirectoryArgs(
                    enabled=True,
                    registration=app.AzureActiveDirectoryRegistrationArgs(
                        client_id=settings.client_id,
                        client_secret_setting_name=CLIENT_SECRET_SETTING,
                        open_id_issuer=issuer,
                    ),
                    validation=app.AzureActiveDirectoryValidationArgs(
                        allowed_audiences=[settings.client_id, f"api://{settings.client_id}"],
                    ),
                )
            ),
            opts=child,
        )
        self.fqdn: pulumi.Output[str] = self.container_app.configuration.apply(
            lambda configuration: configuration.ingress.fqdn
        )
        self.url: pulumi.Output[str] = pulumi.Output.concat("https://", self.fqdn, STATUS_PATH)
        self.redirect_uri: pulumi.Output[str] = pulumi.Output.concat("https://", self.fqdn, CALLBACK_PATH)
        self.register_outputs({"fqdn": self.fqdn, "url": self.url, "redirect_uri": self.redirect_uri})
