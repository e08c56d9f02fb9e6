"""The Entra side of Secure Webhook: the API application Azure Monitor requests tokens for, its app
role, and that role granted to Azure Monitor's action-group service principal.

It does what Microsoft's PowerShell script does
(https://learn.microsoft.com/azure/azure-monitor/alerts/action-groups#secure-webhook), minus two of
its gaps: the role is assigned by its id, not as `AppRoles[0]`; and the owners are an explicit list
(whoever saves the action group must be one, else `AadWebhookResourceNotOwnedByCaller`).

Only the bootstrap stack (infra/bootstrap) declares it, run once by an Application Administrator: it
needs Microsoft Graph write rights that the main stack's deploy identity then never holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pulumi
import pulumi_azuread as azuread

# Azure Monitor's first-party "AzNS AAD Webhook" application: action groups get their tokens as its
# service principal ($azureMonitorActionGroupsAppId in Microsoft's script: "Required. Do not change.").
# Its twin is AZURE_MONITOR_APP_ID in relay/settings.py, the relay's default allowed caller: written twice
# so that infra never imports the relay's settings; tests/infra/test_infra_identity.py pins this one.
AZURE_MONITOR_APP_ID = "461e8683-5575-4561-ac7f-899cc907d62a"
# The app role value Microsoft's script creates; the relay requires it in the token's `roles` claim.
SECURE_WEBHOOK_ROLE = "ActionGroupsSecureWebhook"
# Fixed forever: a new id would replace the role and silently drop Azure Monitor's assignment.
SECURE_WEBHOOK_ROLE_ID = "5f2a7c1e-9b3d-4e8a-a6c4-2d1f0b7e9a35"
# Tokens in the v2.0 format (`aud` is the client id, `iss` ends in /v2.0), as that page advises.
ACCESS_TOKEN_VERSION = 2


@dataclass(frozen=True)
class SecureWebhookIdentityArgs:
    display_name: str
    identifier_uri: str | None  # None: api://<client id>, which every tenant's URI policy accepts
    # The complete owner set (users or service principals; Entra never lets a group own an
    # application). Nobody is added implicitly, so an `up` by someone else changes nothing.
    owners: Sequence[str]
    # Azure Monitor's service principal is read, never managed. Only a tenant that lacks it sets
    # this once, and the stack then creates it (and never deletes it).
    create_azure_monitor_service_principal: bool = False


class SecureWebhookIdentity(pulumi.ComponentResource):
    """The Entra application and role assignment that make Azure Monitor's token acceptable.

    Outputs: `client_id`, `application_object_id` (what the action group's receiver names) and
    `identifier_uri` (the token audience for v1 tokens).
    """

    def __init__(self, name: str, args: SecureWebhookIdentityArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("secure-export:entra:SecureWebhookIdentity", name, None, opts)
        owners = sorted(args.owners)

        self.application = azuread.Application(
            f"{name}-app",
            display_name=args.display_name,
            sign_in_audience="AzureADMyOrg",
            owners=owners,
            api=azuread.ApplicationApiArgs(requested_access_token_version=ACCESS_TOKEN_VERSION),
            app_roles=[
                azuread.ApplicationAppRoleArgs(
                    id=SECURE_WEBHOOK_ROLE_ID,
                    value=SECURE_WEBHOOK_ROLE,
                    display_name=SECURE_WEBHOOK_ROLE,
                    description="Azure Monitor action groups may call the secure webhook",
                    allowed_member_types=["Application"],
                    enabled=True,
                )
            ],
            # The identifier URI is its own resource (below), so that it can name the client id.
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["identifier_uris"]),
        )
        self.identifier_uri_resource = azuread.ApplicationIdentifierUri(
            f"{name}-identifier-uri",
            application_id=self.application.id,
            identifier_uri=args.identifier_uri or self.application.client_id.apply(lambda client: f"api://{client}"),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.service_principal = azuread.ServicePrincipal(
            f"{name}-sp",
            client_id=self.application.client_id,
            # Entra issues tokens for this API only to principals holding one of its roles.
            app_role_assignment_required=True,
            owners=owners,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.azure_monitor_service_principal: azuread.ServicePrincipal | None = None
        if args.create_azure_monitor_service_principal:
            # Microsoft's first-party SP, shared by every action group of the tenant: created here
            # only where it is missing, and a destroy only forgets it.
            self.azure_monitor_service_principal = azuread.ServicePrincipal(
                f"{name}-azure-monitor-sp",
                client_id=AZURE_MONITOR_APP_ID,
                opts=pulumi.ResourceOptions(parent=self, retain_on_delete=True),
            )
            azure_monitor_object_id = self.azure_monitor_service_principal.object_id
        else:
            # Read only: adopting it as a resource would PATCH it (tags, appRoleAssignmentRequired).
            azure_monitor_object_id = azuread.get_service_principal_output(
                client_id=AZURE_MONITOR_APP_ID, opts=pulumi.InvokeOutputOptions(parent=self)
            ).object_id
        self.role_assignment = azuread.AppRoleAssignment(
            f"{name}-azure-monitor-role",
            app_role_id=self.application.app_role_ids.apply(lambda ids: ids[SECURE_WEBHOOK_ROLE]),
            principal_object_id=azure_monitor_object_id,
            resource_object_id=self.service_principal.object_id,
            opts=pulumi.ResourceOptions(parent=self),
        )

        self.client_id: pulumi.Output[str] = self.application.client_id
        self.application_object_id: pulumi.Output[str] = self.application.object_id
        self.identifier_uri: pulumi.Output[str] = self.identifier_uri_resource.identifier_uri
        self.register_outputs(
            {
                "client_id": self.client_id,
                "application_object_id": self.application_object_id,
                "identifier_uri": self.identifier_uri,
            }
        )
