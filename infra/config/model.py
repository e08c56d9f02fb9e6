"""The stack config's model: the allowed values and the typed dataclasses `parse` returns.

Targets and routes use the relay's own snake_case shape (they are rendered verbatim into the relay's
YAML, see relay_config.py); everything else uses Pulumi's camelCase convention.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from infra.config.monitoring import MonitoringSettings
from infra.naming import Names
from relay import schema

PROJECT = "secure-export"

SEVERITIES = schema.SEVERITIES

# Target kinds the relay implements, and the auth types each one speaks (None: no auth block). A mirror
# of the relay's per-kind auth, which lives in the target modules (relay/targets/<kind>.py) that infra
# cannot import; tests/infra/test_infra_relay_vocabulary.py fails when the kinds differ from TARGET_MODULES.
TARGET_AUTH = {
    "servicenow": ("basic", "oauth"),
    "bmc_helix": ("ar_jwt",),
    "request_tracker": ("token", "basic"),
    "jira_service_management": ("api_token", "pat"),
    "pagerduty": (None,),  # the routing key is an option (routing_key_env), not an auth block
    "forward": ("basic", "bearer", "header", "none", None),
    "dry_run": (None,),
}
# Keys of each auth type, in the order the relay documents them. Keys ending in `_env` name an
# environment variable holding the secret: secrets are never inline.
AUTH_FIELDS = {
    "basic": ("username", "password_env"),
    "oauth": ("client_id", "client_secret_env"),
    "token": ("token_env",),
    "bearer": ("token_env",),
    "header": ("name", "value_env"),
    "ar_jwt": ("username", "password_env"),
    "api_token": ("email", "token_env"),
    "pat": ("token_env",),
    "none": (),
}
# Route keys the relay reads besides match, target and fields; passed to it as they are.
ROUTE_OPTIONS = schema.ROUTE_OPTIONS
# Match keys that take one pattern or a list (custom_properties is a mapping).
ROUTE_MATCH_LISTS = schema.MATCH_LISTS

ALERT_KINDS = ("metric", "dynamicMetric", "logSearch", "administrative", "serviceHealth", "resourceHealth")
METRIC_AGGREGATIONS = ("Average", "Count", "Minimum", "Maximum", "Total")
METRIC_OPERATORS = ("Equals", "GreaterThan", "GreaterThanOrEqual", "LessThan", "LessThanOrEqual")
DYNAMIC_OPERATORS = ("GreaterThan", "LessThan", "GreaterOrLessThan")
DYNAMIC_SENSITIVITIES = ("Low", "Medium", "High")
# Log search rules want "Equal", not metric alerts' "Equals" (Azure/bicep-types-az#2643).
LOG_OPERATORS = ("Equal", "GreaterThan", "GreaterThanOrEqual", "LessThan", "LessThanOrEqual")
METRIC_WINDOWS = ("PT1M", "PT5M", "PT15M", "PT30M", "PT1H", "PT6H", "PT12H", "P1D")
METRIC_FREQUENCIES = ("PT1M", "PT5M", "PT15M", "PT30M", "PT1H")
DIMENSION_OPERATORS = ("Include", "Exclude")
ACTIVITY_STATUSES = ("Started", "Succeeded", "Failed")
SERVICE_HEALTH_INCIDENT_TYPES = ("Incident", "Maintenance", "Informational", "ActionRequired", "Security")
RESOURCE_HEALTH_STATUSES = ("Available", "Degraded", "Unavailable", "Unknown")
STORAGE_SKUS = ("Standard_LRS", "Standard_ZRS", "Standard_GRS", "Standard_RAGRS", "Standard_GZRS", "Standard_RAGZRS")
# The Consumption workload profile of a workload-profiles environment: CPU in quarter cores up to 4,
# memory fixed at 2 GiB per core.
RELAY_CPUS = tuple(q / 4 for q in range(1, 17))
WORKLOAD_PROFILE = "Consumption"
# Payload blobs older than this are deleted by the storage account's lifecycle rule: the relay's
# default dead-letter retention, so that a dead letter's payload is kept as long as the dead letter.
PAYLOAD_RETENTION_DAYS = int(schema.RETENTION["dead_letter_days"].default)
RELAY_PORT = 8080
# The relay's default for delivery.shutdown_grace_seconds, and the margin Container Apps must add
# before it kills the container after SIGTERM.
RELAY_SHUTDOWN_GRACE_SECONDS = schema.DELIVERY["shutdown_grace_seconds"].default
TERMINATION_MARGIN_SECONDS = 10


def secret_name(env_var: str) -> str:
    """The Key Vault and Container Apps secret name for an ITSM secret's env var (SNOW_PASSWORD ->
    snow-password): both services allow lowercase letters, digits and dashes."""
    return env_var.lower().replace("_", "-")


@dataclass(frozen=True)
class AzureContext:
    """Where the stack deploys: read from the providers' own config keys, so that the providers and
    the program can never disagree on tenant or subscription."""

    tenant_id: str
    subscription_id: str
    location: str


@dataclass(frozen=True)
class RegistryLogin:
    """How the Container App signs in to the registry of a prebuilt image (`relay.registry`)."""

    server: str  # the image reference's host
    username: str | None  # None: the relay's managed identity (grant it AcrPull on that registry)
    password_secret: str | None  # Key Vault secret holding the password, set by an operator


@dataclass(frozen=True)
class RelaySettings:
    """How the relay runs on Container Apps (`secure-export:relay`)."""

    image: str | None  # prebuilt image reference; None: build relay/Dockerfile and push it to the stack's registry
    registry: RegistryLogin | None  # set exactly when `image` is
    cpu: float
    memory: str
    min_replicas: int
    max_replicas: int
    http_concurrent_requests: int
    queue_length: int
    metrics_port: int
    openid_config_url: str | None
    log_retention_days: int
    termination_grace_seconds: int  # > the relay's shutdown grace, so in-flight deliveries can finish


# The status viewer's default image: nginx's official image, whose nginx.conf includes conf.d/*.conf,
# where the viewer mounts its one server block. Pin a digest in `statusViewer.image` for production.
STATUS_VIEWER_IMAGE = "docker.io/library/nginx:1.27-alpine"


@dataclass(frozen=True)
class StatusViewerSettings:
    """The operators' way in to the relay's status page (`secure-export:statusViewer`, off by default):
    a small proxy app behind Container Apps authentication (infra/status_viewer.py, docs/deploy.md)."""

    client_id: str  # the Entra app registration operators sign in with; it must require assignment
    image: str
    secret_name: str  # the Key Vault secret holding that registration's client secret, set by an operator


@dataclass(frozen=True)
class EntraApplication:
    """The Entra application the bootstrap stack (infra/bootstrap) created: the main stack only
    reads it (`secure-export:entra`), so its deploy identity needs no Microsoft Graph write rights."""

    client_id: str
    object_id: str  # the application's object id, which the action group's receiver names
    identifier_uri: str


@dataclass(frozen=True)
class NetworkSettings:
    """Optional network hardening (`secure-export:network`)."""

    ingress_allowed_ranges: tuple[str, ...]  # IPv4 CIDRs (the ActionGroup service tag); empty: any caller
    virtual_network: str | None  # address prefix of the stack's VNet; None: no VNet, public endpoints


@dataclass(frozen=True)
class KeyVaultSettings:
    purge_protection: bool
    soft_delete_retention_days: int


@dataclass(frozen=True)
class TargetAuth:
    type: str
    fields: Mapping[str, str]  # in the relay's documented key order

    @property
    def secret_envs(self) -> tuple[str, ...]:
        return tuple(value for key, value in self.fields.items() if key.endswith("_env"))


@dataclass(frozen=True)
class Target:
    name: str
    kind: str
    base_url: str | None
    auth: TargetAuth | None
    timeout_seconds: float | None
    max_concurrency: int | None
    rate_limit_per_second: float | None = None
    # Kind-specific keys (ServiceNow `table`, `close_code`, ...), passed to the relay as they are:
    # the relay validates them; here they are only checked for inline secrets and `*_env` references.
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def secret_envs(self) -> tuple[str, ...]:
        """Every environment variable this target's config names (keys ending in `_env`)."""
        return (*(self.auth.secret_envs if self.auth else ()), *_env_references(self.options))


@dataclass(frozen=True)
class Route:
    target: str
    match: Mapping[str, Any]  # list criteria as tuples, custom_properties as a mapping; empty: every alert
    fields: Mapping[str, str | int | float]  # string values are the relay's templates
    options: Mapping[str, Any] = field(default_factory=dict)  # on_repeat, on_refire, summary, ... (ROUTE_OPTIONS)


@dataclass(frozen=True)
class Dimension:
    name: str
    operator: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class AlertRuleBase:
    """What every kind of alert rule has; each kind's own fields follow these."""

    name: str
    description: str
    enabled: bool
    scopes: tuple[str, ...]


@dataclass(frozen=True)
class MetricAlertRule(AlertRuleBase):
    """A metric alert with a static threshold."""

    severity: int
    metric_namespace: str
    metric_name: str
    aggregation: str
    operator: str
    threshold: float
    window_size: str
    evaluation_frequency: str
    dimensions: tuple[Dimension, ...]
    target_resource_type: str | None
    target_resource_region: str | None


@dataclass(frozen=True)
class DynamicMetricAlertRule(AlertRuleBase):
    """A metric alert whose threshold Azure learns from the metric's history."""

    severity: int
    metric_namespace: str
    metric_name: str
    aggregation: str
    operator: str
    sensitivity: str
    evaluation_periods: int
    min_failing_periods: int
    window_size: str
    evaluation_frequency: str
    dimensions: tuple[Dimension, ...]
    target_resource_type: str | None
    target_resource_region: str | None


@dataclass(frozen=True)
class LogSearchAlertRule(AlertRuleBase):
    """A log search (scheduled query) alert; always auto-mitigated so that resolves reach the relay."""

    severity: int
    location: str  # the rule's region; default: the stack's
    query: str
    aggregation: str
    metric_measure_column: str | None
    operator: str
    threshold: float
    window_size: str
    evaluation_frequency: str
    evaluation_periods: int
    min_failing_periods: int
    dimensions: tuple[Dimension, ...]
    override_query_time_range: str | None = None  # None: windowSize x evaluationPeriods


@dataclass(frozen=True)
class AdministrativeAlertRule(AlertRuleBase):
    """An activity log alert on an administrative operation (create, delete, action)."""

    operation_name: str
    status: str | None


@dataclass(frozen=True)
class ServiceHealthAlertRule(AlertRuleBase):
    incident_types: tuple[str, ...]  # empty: every incident type
    regions: tuple[str, ...]
    services: tuple[str, ...]


@dataclass(frozen=True)
class ResourceHealthAlertRule(AlertRuleBase):
    health_statuses: tuple[str, ...]
    resource_types: tuple[str, ...]


AlertRule = (
    MetricAlertRule
    | DynamicMetricAlertRule
    | LogSearchAlertRule
    | AdministrativeAlertRule
    | ServiceHealthAlertRule
    | ResourceHealthAlertRule
)


@dataclass(frozen=True)
class StackConfig:
    azure: AzureContext
    names: Names
    tags: Mapping[str, str]
    entra: EntraApplication
    action_group_short_name: str
    storage_sku: str
    payload_retention_days: int
    network: NetworkSettings
    key_vault: KeyVaultSettings
    relay: RelaySettings
    targets: tuple[Target, ...]
    routes: tuple[Route, ...]
    delivery: Mapping[str, Any]  # the relay's optional `delivery` tuning, passed as it is
    alerts: tuple[AlertRule, ...]
    # Env var names of the ITSM secrets: each a Key Vault secret the stack creates with a placeholder
    # and an operator sets (`az keyvault secret set`), so no value ever reaches Pulumi config or state.
    itsm_secret_envs: tuple[str, ...]
    # The relay's self-monitoring (infra/config/monitoring.py); None when `monitoring.emails` is not set.
    monitoring: MonitoringSettings | None = None
    status_viewer: StatusViewerSettings | None = None  # None: no viewer (the default)
    # `secure-export:reconcile` (infra/config/reconcile.py); None: no reconciliation, no Monitoring Reader.
    reconcile: Any = None
    # The relay's `maintenance:` windows (issue 15), passed as they are: the relay checks them.
    maintenance: tuple[Mapping[str, Any], ...] = ()


def _env_references(options: Mapping[str, Any]) -> Iterator[str]:
    for name, value in options.items():
        if name.endswith("_env") and isinstance(value, str):
            yield value
        elif isinstance(value, Mapping):
            yield from _env_references(value)
