"""secure-export, one stack per environment: the relay on Container Apps, the action group that calls
it, and the alert rules that use the group. The Entra application Azure Monitor requests tokens for
comes from the bootstrap stack (infra/bootstrap), through `secure-export:entra`."""

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

cfg = config.load()  # validated before any resource is declared
names = cfg.names

group = resources.ResourceGroup(
    "resource-group", resource_group_name=names.resource_group, location=cfg.azure.location, tags=cfg.tags
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
        payload_retention_days=cfg.payload_retention_days,
        network=cfg.network,
        relay_config_yaml=relay_config.render(cfg.targets, cfg.routes, cfg.delivery, cfg.maintenance),
        itsm_secret_envs=cfg.itsm_secret_envs,
        audiences=[cfg.entra.identifier_uri, cfg.entra.client_id],
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
        application_object_id=cfg.entra.object_id,
        identifier_uri=cfg.entra.identifier_uri,
        rules=cfg.alerts,
    ),
)

pulumi.export("webhookUrl", hosting.webhook_url)
pulumi.export("applicationClientId", cfg.entra.client_id)
pulumi.export("identifierUri", cfg.entra.identifier_uri)
pulumi.export("actionGroupId", alerting.action_group.id)
pulumi.export("relayFqdn", hosting.fqdn)
pulumi.export("keyVaultName", hosting.key_vault.name)  # where operators set the ITSM secret values
