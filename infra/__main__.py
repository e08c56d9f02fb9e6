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
from infra.config import reconcile as reconcile_config
from infra.hosting import RelayHosting, RelayHostingArgs, source_subscriptions
from infra.monitoring import SelfMonitoring, SelfMonitoringArgs
from infra.status_viewer import StatusViewer, StatusViewerArgs

cfg = config.load()  # validated before any resource is declared
names = cfg.names

group = resources.ResourceGroup(
    "resource-group", resource_group_name=names.resource_group, location=cfg.azure.location, tags=cfg.tags
)

sources = source_subscriptions(cfg.azure.subscription_id, [scope for rule in cfg.alerts for scope in rule.scopes])
reconciled = reconcile_config.subscriptions(cfg.reconcile, sources) if cfg.reconcile else ()
wired_rules = reconcile_config.rule_ids(cfg.azure.subscription_id, names.resource_group, cfg.alerts)
reconcile_section = reconcile_config.relay_section(cfg.reconcile, reconciled, wired_rules) if cfg.reconcile else None
synced = reconcile_config.sync_subscriptions(cfg.routes, [*sources, *reconciled])

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
        relay_config_yaml=relay_config.render(cfg.targets, cfg.routes, cfg.delivery, reconcile_section,
                                              cfg.maintenance),
        itsm_secret_envs=cfg.itsm_secret_envs,
        audiences=[cfg.entra.identifier_uri, cfg.entra.client_id],
        allowed_subscriptions=sources,
        reconcile_subscriptions=reconciled,
        sync_subscriptions=synced,
        open_telemetry=cfg.monitoring.open_telemetry if cfg.monitoring else None,
        admin_port_in_environment=cfg.status_viewer is not None,
    ),
)

# Optional (`secure-export:statusViewer`): operators reach the status page through a signed-in viewer app.
viewer = (
    StatusViewer(
        "status-viewer",
        StatusViewerArgs(
            names=names,
            azure=cfg.azure,
            resource_group_name=group.name,
            tags=cfg.tags,
            settings=cfg.status_viewer,
            environment_id=hosting.environment.id,
            relay_app_name=names.container_app,
            admin_port=cfg.relay.metrics_port,
            key_vault_id=hosting.key_vault.id,
            key_vault_name=hosting.key_vault.name,
        ),
    )
    if cfg.status_viewer is not None
    else None
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

# Watches the relay from outside it (infra/monitoring.py): declared when monitoring.emails is set.
if cfg.monitoring is not None:
    self_monitoring = SelfMonitoring(
        "self-monitoring",
        SelfMonitoringArgs(
            settings=cfg.monitoring,
            resource_group_name=group.name,
            tags=cfg.tags,
            subscription_id=cfg.azure.subscription_id,
            location=cfg.azure.location,
            action_group_name=names.fallback_action_group,
            workspace_id=hosting.workspace.id,
            container_app_id=hosting.container_app.id,
            container_app_name=names.container_app,
            min_replicas=cfg.relay.min_replicas,
            key_vault_id=hosting.key_vault.id,
            storage_account_id=hosting.storage_account.id,
            state_table_id=hosting.state_table.id,
        ),
    )
    pulumi.export("fallbackActionGroupId", self_monitoring.action_group.id)

pulumi.export("webhookUrl", hosting.webhook_url)
pulumi.export("applicationClientId", cfg.entra.client_id)
pulumi.export("identifierUri", cfg.entra.identifier_uri)
pulumi.export("actionGroupId", alerting.action_group.id)
pulumi.export("relayFqdn", hosting.fqdn)
pulumi.export("keyVaultName", hosting.key_vault.name)  # where operators set the ITSM secret values
pulumi.export("storageAccountName", hosting.storage_account.name)  # the store `make smoke` reads
if viewer is not None:
    pulumi.export("statusViewerUrl", viewer.url)  # what operators open
    pulumi.export("statusViewerRedirectUri", viewer.redirect_uri)  # what the app registration must list
