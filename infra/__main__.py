"""secure-export, one stack per environment: Entra app and role for Azure Monitor's Secure Webhook,
the relay on Container Apps, the action group that calls it, and the alert rules that use the group."""

import sys
from pathlib import Path

# Pulumi runs this directory as a script (`main: infra/`); import its modules as the `infra` package,
# as the tests and `make plan` do, so that there is one copy of each.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pulumi
from pulumi_azure_native import resources

from infra import config, relay_config
from infra.alerting import Alerting, AlertingArgs
from infra.hosting import RelayHosting, RelayHostingArgs, source_subscriptions
from infra.identity import SecureWebhookIdentity, SecureWebhookIdentityArgs

cfg = config.load()  # validated before any resource is declared
names = cfg.names

group = resources.ResourceGroup(
    "resource-group", resource_group_name=names.resource_group, location=cfg.azure.location, tags=cfg.tags
)

identity = SecureWebhookIdentity(
    "secure-webhook",
    SecureWebhookIdentityArgs(
        display_name=names.application, identifier_uri=cfg.identifier_uri, extra_owners=cfg.app_owners
    ),
)

hosting = RelayHosting(
    "relay",
    RelayHostingArgs(
        names=names,
        azure=cfg.azure,
        resource_group_name=group.name,
        tags=cfg.tags,
        relay=cfg.relay,
        key_vault=cfg.key_vault,
        storage_sku=cfg.storage_sku,
        relay_config_yaml=relay_config.render(cfg.targets, cfg.routes, cfg.delivery),
        itsm_secrets=cfg.itsm_secrets,
        audiences=[identity.identifier_uri, identity.client_id],
        allowed_subscriptions=source_subscriptions(cfg.azure.subscription_id,
                                                   [scope for rule in cfg.alerts for scope in rule.scopes]),
    ),
)

alerting = Alerting(
    "alerting",
    AlertingArgs(
        resource_group_name=group.name,
        tags=cfg.tags,
        action_group_name=names.action_group,
        short_name=cfg.action_group_short_name,
        webhook_url=hosting.webhook_url,
        tenant_id=cfg.azure.tenant_id,
        application_object_id=identity.application_object_id,
        identifier_uri=identity.identifier_uri,
        rules=cfg.alerts,
        entra_dependencies=identity.ordering_dependencies,
    ),
)

pulumi.export("webhookUrl", hosting.webhook_url)
pulumi.export("applicationClientId", identity.client_id)
pulumi.export("identifierUri", identity.identifier_uri)
pulumi.export("actionGroupId", alerting.action_group.id)
pulumi.export("relayFqdn", hosting.fqdn)
