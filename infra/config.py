"""The stack's configuration: one typed model, validated before any resource is declared.

`parse` takes the raw config the Pulumi CLI hands the program (full keys such as
`secure-export:relay`, structured values as JSON text) and returns a `StackConfig`, or raises one
`ConfigError` naming the key, in `pulumi config set --path` syntax, and what is allowed there.

Targets and routes use the relay's own snake_case shape (they are rendered verbatim into the relay's
YAML, see relay_config.py); everything else uses Pulumi's camelCase convention.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from infra.naming import SUFFIX_LENGTH, Names, unique_suffix

PROJECT = "secure-export"

SEVERITIES = ("Sev0", "Sev1", "Sev2", "Sev3", "Sev4")

# Target kinds the relay implements, and the auth types each one speaks (None: no auth block).
TARGET_AUTH = {
    "servicenow": ("basic", "oauth"),
    "bmc_helix": ("ar_jwt",),
    "request_tracker": ("token", "basic"),
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
    "none": (),
}
# Route keys the relay reads besides match, target and fields; passed to it as they are.
ROUTE_OPTIONS = ("on_repeat", "on_refire", "on_resolve", "incident_per", "summary", "description", "continue")
ROUTE_MATCH_LISTS = ("severity", "monitoring_service", "alert_rule", "signal_type", "subscription", "resource_group")

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
# Consumption-plan Container Apps: CPU in quarter cores, memory fixed at 2 GiB per core.
RELAY_CPUS = tuple(q / 4 for q in range(1, 17))
RELAY_PORT = 8080
# The relay's default for delivery.shutdown_grace_seconds (docs/configuration.md, `delivery`), and the
# margin Container Apps must add before it kills the container after SIGTERM.
RELAY_SHUTDOWN_GRACE_SECONDS = 20
TERMINATION_MARGIN_SECONDS = 10

_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_ARM_ID = re.compile(
    r"^/subscriptions/[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"(/resourceGroups/[-\w.()]{1,90}"
    r"(/providers/[A-Za-z0-9]+\.[A-Za-z0-9.]+(/[A-Za-z0-9.]+/[^/\s]+)+)?)?$"
)
_SUBSCRIPTION_ID = re.compile(r"^/subscriptions/[0-9a-fA-F-]{36}$")
_LOCATION = re.compile(r"^[a-z][a-z0-9]+$")
_PREFIX = re.compile(r"^[a-z][a-z0-9]{1,7}$")
_ENVIRONMENT = re.compile(r"^[a-z][a-z0-9]{0,6}$")
_SUFFIX = re.compile(rf"^[a-z0-9]{{1,{SUFFIX_LENGTH}}}$")
_HTTPS_URL = re.compile(r"^https://[^\s/?#]+[^\s]*$")
_IDENTIFIER_URI = re.compile(r"^api://[^\s]*[^\s/]$")
_IMAGE = re.compile(r"^[a-z0-9.-]+(:\d+)?/[a-z0-9._/-]+(:[\w.-]{1,128}|@sha256:[0-9a-f]{64})$")
_TARGET_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_ENV_VAR = re.compile(r"^[A-Z][A-Z0-9_]{0,127}$")
_RESERVED_ENV_PREFIXES = ("RELAY_", "AZURE_", "SECURE_EXPORT_")
_RULE_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._()-]{0,126}[A-Za-z0-9_()])?$")
_RESOURCE_TYPE = re.compile(r"^[A-Za-z0-9]+\.[A-Za-z0-9.]+(/[A-Za-z0-9]+)+$")
_OPERATION_NAME = re.compile(r"^[A-Za-z0-9]+\.[A-Za-z0-9.]+(/[A-Za-z0-9._-]+)+$")
_SECRET_LOOKING = re.compile(r"password|secret|token|api_?key|credential", re.IGNORECASE)
_DURATION = re.compile(r"^P(?:T([1-9]\d*)([MH])|([1-9]\d*)D)$")

_ENV_VAR_EXPECTED = "an environment variable name such as SNOW_PASSWORD (A-Z, 0-9, _)"
_ARM_ID_EXPECTED = (
    "an Azure resource id: /subscriptions/<subscription GUID>[/resourceGroups/<name>"
    "[/providers/<Namespace>/<type>/<name>...]]"
)


class ConfigError(ValueError):
    """A stack config value is missing or wrong: names the key and what is allowed."""

    def __init__(self, key: str, problem: str, allowed: str | None = None) -> None:
        self.key = key
        message = f"{key}: {problem}"
        if allowed:
            message += f"; allowed: {allowed}"
        super().__init__(message)


@dataclass(frozen=True)
class SecretValue:
    """A secret from `pulumi config set --secret`; its repr never shows the value."""

    value: str = field(repr=False)


@dataclass(frozen=True)
class AzureContext:
    """Where the stack deploys: read from the providers' own config keys, so that the providers and
    the program can never disagree on tenant or subscription."""

    tenant_id: str
    subscription_id: str
    location: str


@dataclass(frozen=True)
class RelaySettings:
    """How the relay runs on Container Apps (`secure-export:relay`)."""

    image: str | None  # prebuilt image reference; None: build relay/Dockerfile and push it to the stack's registry
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
class MetricAlertRule:
    """A metric alert with a static threshold."""

    name: str
    description: str
    enabled: bool
    severity: int
    scopes: tuple[str, ...]
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
class DynamicMetricAlertRule:
    """A metric alert whose threshold Azure learns from the metric's history."""

    name: str
    description: str
    enabled: bool
    severity: int
    scopes: tuple[str, ...]
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
class LogSearchAlertRule:
    """A log search (scheduled query) alert; always auto-mitigated so that resolves reach the relay."""

    name: str
    description: str
    enabled: bool
    severity: int
    scopes: tuple[str, ...]
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


@dataclass(frozen=True)
class AdministrativeAlertRule:
    """An activity log alert on an administrative operation (create, delete, action)."""

    name: str
    description: str
    enabled: bool
    scopes: tuple[str, ...]
    operation_name: str
    status: str | None


@dataclass(frozen=True)
class ServiceHealthAlertRule:
    name: str
    description: str
    enabled: bool
    scopes: tuple[str, ...]
    incident_types: tuple[str, ...]  # empty: every incident type
    regions: tuple[str, ...]
    services: tuple[str, ...]


@dataclass(frozen=True)
class ResourceHealthAlertRule:
    name: str
    description: str
    enabled: bool
    scopes: tuple[str, ...]
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
    app_owners: tuple[str, ...]  # object ids owning the Entra app besides the deploying identity
    identifier_uri: str | None  # None: api://<client id>, accepted by every tenant's URI policy
    action_group_short_name: str
    storage_sku: str
    key_vault: KeyVaultSettings
    relay: RelaySettings
    targets: tuple[Target, ...]
    routes: tuple[Route, ...]
    delivery: Mapping[str, Any]  # the relay's optional `delivery` tuning, passed as it is
    alerts: tuple[AlertRule, ...]
    itsm_secrets: Mapping[str, SecretValue]  # env var name -> value


# ---------------------------------------------------------------------------------------------
# Reading values: each check raises ConfigError naming the key.

_MISSING: Any = object()


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"{value!r}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"{value!r}"


def _text(key: str, value: Any, pattern: re.Pattern[str] | None = None, expected: str = "") -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, f"must be a non-empty string, got {_describe(value)}", expected or "a non-empty string")
    if pattern is not None and not pattern.match(value):
        raise ConfigError(key, f"{value!r} is not valid", expected)
    return value


def _choice(key: str, value: Any, options: Sequence[str], what: str = "value") -> str:
    if value not in options:
        raise ConfigError(key, f"unknown {what} {_describe(value)}", ", ".join(options))
    return value


def _integer(key: str, value: Any, minimum: int, maximum: int) -> int:
    number = value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        number = int(value)
    if isinstance(number, bool) or not isinstance(number, int):
        raise ConfigError(key, f"must be a whole number, got {_describe(value)}", f"{minimum} to {maximum}")
    if not minimum <= number <= maximum:
        raise ConfigError(key, f"{number} is out of range", f"{minimum} to {maximum}")
    return number


def _number(key: str, value: Any) -> float:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(key, f"must be a number, got {_describe(value)}", "a number")
    return float(value)


def _flag(key: str, value: Any) -> bool:
    if isinstance(value, str) and value in ("true", "false"):
        return value == "true"
    if not isinstance(value, bool):
        raise ConfigError(key, f"must be true or false, got {_describe(value)}", "true or false")
    return value


def _items(key: str, value: Any) -> Iterator[tuple[str, Any]]:
    if not isinstance(value, list | tuple):
        raise ConfigError(key, f"must be a list, got {_describe(value)}", "a list")
    for index, item in enumerate(value):
        yield f"{key}[{index}]", item


class _Object:
    """One config mapping being read. It remembers which keys were read, so that `finish` can
    reject the unknown ones (a typo must not silently fall back to a default).

    Readers take a default: `_MISSING` makes the key required, `None` makes it optional, anything
    else is used when the key is absent (and is validated like a given value)."""

    def __init__(self, key: str, value: Any, *, separator: str = ".") -> None:
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"must be a mapping, got {_describe(value)}", "a mapping")
        self.key = key
        self._value = value
        self._separator = separator
        self._known: list[str] = []

    def key_of(self, name: str) -> str:
        return f"{self.key}{self._separator}{name}"

    def has(self, name: str) -> bool:
        return self._value.get(name) is not None

    def raw(self, name: str, default: Any = _MISSING, expected: str = "a value") -> Any:
        self._known.append(name)
        value = self._value.get(name)
        if value is None:
            if default is _MISSING:
                raise ConfigError(self.key_of(name), "is required", expected)
            return default
        return value

    def text(
        self, name: str, default: Any = _MISSING, *, pattern: re.Pattern[str] | None = None, expected: str = ""
    ) -> Any:
        value = self.raw(name, default, expected or "a non-empty string")
        return None if value is None else _text(self.key_of(name), value, pattern, expected)

    def choice(self, name: str, options: Sequence[str], default: Any = _MISSING, what: str = "value") -> Any:
        value = self.raw(name, default, ", ".join(options))
        return None if value is None else _choice(self.key_of(name), value, options, what)

    def integer(self, name: str, default: Any = _MISSING, *, minimum: int, maximum: int) -> Any:
        value = self.raw(name, default, f"a whole number from {minimum} to {maximum}")
        return None if value is None else _integer(self.key_of(name), value, minimum, maximum)

    def number(self, name: str, default: Any = _MISSING) -> Any:
        value = self.raw(name, default, "a number")
        return None if value is None else _number(self.key_of(name), value)

    def flag(self, name: str, default: bool) -> bool:
        return _flag(self.key_of(name), self.raw(name, default))

    def strings(
        self, name: str, default: Any = _MISSING, *, check: Callable[[str, Any], str] | None = None, expected: str = ""
    ) -> Any:
        """A non-empty list of strings, each checked; the default when the key is absent."""
        if not self.has(name):
            return self.raw(name, default, f"a list of {expected or 'strings'}")
        items = list(_items(self.key_of(name), self.raw(name)))
        if not items:
            raise ConfigError(
                self.key_of(name),
                "must not be an empty list",
                f"a list of {expected or 'strings'}; or leave the key out",
            )
        return tuple(check(k, v) if check else _text(k, v) for k, v in items)

    def section(self, name: str) -> _Object:
        """An optional nested mapping: absent reads as empty, so its own defaults apply."""
        return _Object(self.key_of(name), self.raw(name, {}))

    def mapping(self, name: str, *, required: bool) -> _Object | None:
        value = self.raw(name, _MISSING if required else None, "a mapping")
        return None if value is None else _Object(self.key_of(name), value)

    def string_map(self, name: str) -> dict[str, str]:
        """A mapping of free-form string keys to string values (tags, ITSM fields)."""
        section = self.section(name)
        return {_text(section.key, k): _text(section.key_of(k), v) for k, v in section.entries()}

    def entries(self) -> Iterator[tuple[str, Any]]:
        return iter(self._value.items())

    def rest(self) -> dict[str, Any]:
        """The keys not read so far, taken as they are (and counted as known)."""
        rest = {k: v for k, v in self._value.items() if k not in self._known}
        self._known.extend(rest)
        return rest

    def finish(self) -> None:
        unknown = sorted(set(self._value) - set(self._known))
        if unknown:
            raise ConfigError(self.key_of(unknown[0]), "unknown key", ", ".join(dict.fromkeys(self._known)))


# ---------------------------------------------------------------------------------------------
# The model


def parse(raw: Mapping[str, Any], *, stack: str, secret_keys: Sequence[str] = ()) -> StackConfig:
    """Validate the whole stack config. `raw` holds full keys (`secure-export:targets`) and the
    CLI's values: plain strings, structured values as JSON text."""
    azure = _azure(raw)
    project = _project(raw)

    environment = project.text(
        "environment",
        stack,
        pattern=_ENVIRONMENT,
        expected="1-7 lowercase letters and digits starting with a letter (default: the stack name)",
    )
    prefix = project.text(
        "namePrefix", "secexp", pattern=_PREFIX, expected="2-8 lowercase letters and digits starting with a letter"
    )
    suffix = project.text(
        "uniqueSuffix",
        unique_suffix(azure.subscription_id, prefix, environment),
        pattern=_SUFFIX,
        expected=f"1-{SUFFIX_LENGTH} lowercase letters and digits",
    )
    names = Names(prefix=prefix, environment=environment, suffix=suffix)
    tags = {"workload": PROJECT, "environment": environment, "managed-by": "pulumi", **project.string_map("tags")}

    targets = _targets(project)
    delivery = _delivery(project)
    config = StackConfig(
        azure=azure,
        names=names,
        tags=tags,
        app_owners=project.strings("appOwners", (), check=_guid("an object id GUID"), expected="object id GUIDs"),
        identifier_uri=project.text(
            "identifierUri",
            None,
            pattern=_IDENTIFIER_URI,
            expected="an api:// URI not ending in '/', e.g. api://<tenant id>/secure-export "
            "(default: api://<client id>)",
        ),
        action_group_short_name=_short_name(project),
        storage_sku=project.choice("storageSku", STORAGE_SKUS, "Standard_LRS", what="storage SKU"),
        key_vault=_key_vault(project),
        relay=_relay(project, delivery),
        targets=targets,
        routes=_routes(project, targets),
        delivery=delivery,
        alerts=_alerts(project, azure),
        itsm_secrets=_itsm_secrets(project, targets, secret_keys),
    )
    project.finish()
    return config


def referenced_secret_envs(raw: Mapping[str, Any]) -> tuple[str, ...]:
    """The ITSM secrets (env var names) the stack's targets reference, sorted."""
    return _secret_envs(_targets(_project(raw)))


def _project(raw: Mapping[str, Any]) -> _Object:
    structured = {"appOwners", "tags", "keyVault", "relay", "targets", "routes", "delivery", "alerts", "itsmSecrets"}
    view: dict[str, Any] = {}
    for full_key, value in raw.items():
        if not full_key.startswith(f"{PROJECT}:"):
            continue
        name = full_key.split(":", 1)[1]
        if name in structured and isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as error:
                raise ConfigError(
                    full_key,
                    f"is not valid structured config ({error.msg})",
                    "a mapping in the stack file, or values set with `pulumi config set --path`",
                ) from None
        view[name] = value
    return _Object(PROJECT, view, separator=":")


def _azure(raw: Mapping[str, Any]) -> AzureContext:
    def required(key: str, pattern: re.Pattern[str], expected: str, example: str) -> str:
        value = raw.get(key)
        if value is None:
            raise ConfigError(key, f"is required; set it with `pulumi config set {key} {example}`", expected)
        return _text(key, value, pattern, expected)

    tenant = required("azure-native:tenantId", _GUID, "a tenant GUID", "<tenant id>")
    azuread_tenant = required("azuread:tenantId", _GUID, "a tenant GUID", "<tenant id>")
    if azuread_tenant.lower() != tenant.lower():
        raise ConfigError(
            "azuread:tenantId",
            f"{azuread_tenant} differs from azure-native:tenantId {tenant}",
            "the same tenant as azure-native:tenantId (the Entra app and the action group must share it)",
        )
    return AzureContext(
        tenant_id=tenant,
        subscription_id=required("azure-native:subscriptionId", _GUID, "a subscription GUID", "<subscription id>"),
        location=required("azure-native:location", _LOCATION, "an Azure region name such as westeurope", "westeurope"),
    )


def _guid(expected: str) -> Callable[[str, Any], str]:
    return lambda key, value: _text(key, value, _GUID, expected)


def _arm_id(key: str, value: Any) -> str:
    return _text(key, value, _ARM_ID, _ARM_ID_EXPECTED)


def _short_name(project: _Object) -> str:
    name = project.text("actionGroupShortName", "SecureExport")
    if len(name) > 12:
        raise ConfigError(
            project.key_of("actionGroupShortName"),
            f"{name!r} is {len(name)} characters long",
            "1 to 12 characters (Azure's limit for an action group's short name)",
        )
    return name


def _key_vault(project: _Object) -> KeyVaultSettings:
    vault = project.section("keyVault")
    settings = KeyVaultSettings(
        purge_protection=vault.flag("purgeProtection", True),
        soft_delete_retention_days=vault.integer("softDeleteRetentionDays", 90, minimum=7, maximum=90),
    )
    vault.finish()
    return settings


def _relay(project: _Object, delivery: Mapping[str, Any]) -> RelaySettings:
    relay = project.section("relay")
    cpu = relay.number("cpu", 0.5)
    if cpu not in RELAY_CPUS:
        raise ConfigError(
            relay.key_of("cpu"), f"{cpu:g} cores is not a Container Apps size", ", ".join(f"{c:g}" for c in RELAY_CPUS)
        )
    min_replicas = relay.integer("minReplicas", 1, minimum=0, maximum=1000)
    max_replicas = relay.integer("maxReplicas", 3, minimum=1, maximum=1000)
    if max_replicas < min_replicas:
        raise ConfigError(
            relay.key_of("maxReplicas"),
            f"{max_replicas} is below minReplicas {min_replicas}",
            f"{min_replicas} to 1000",
        )
    metrics_port = relay.integer("metricsPort", 9090, minimum=1024, maximum=65535)
    if metrics_port == RELAY_PORT:
        raise ConfigError(
            relay.key_of("metricsPort"),
            f"{metrics_port} is the relay's public port",
            f"any port from 1024 to 65535 except {RELAY_PORT}",
        )
    settings = RelaySettings(
        image=relay.text(
            "image",
            None,
            pattern=_IMAGE,
            expected="a registry-qualified image reference with a tag or digest, "
            "e.g. myregistry.azurecr.io/secure-export-relay@sha256:<64 hex digits>",
        ),
        cpu=cpu,
        memory=f"{cpu * 2:g}Gi",
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        http_concurrent_requests=relay.integer("httpConcurrentRequests", 50, minimum=1, maximum=1000),
        queue_length=relay.integer("queueLength", 20, minimum=1, maximum=10000),
        metrics_port=metrics_port,
        openid_config_url=relay.text("openidConfigUrl", None, pattern=_HTTPS_URL, expected="an https:// URL"),
        log_retention_days=relay.integer("logRetentionDays", 30, minimum=30, maximum=730),
        termination_grace_seconds=max(
            30,
            math.ceil(delivery.get("shutdown_grace_seconds", RELAY_SHUTDOWN_GRACE_SECONDS))
            + TERMINATION_MARGIN_SECONDS,
        ),
    )
    relay.finish()
    return settings


# --- targets, routes and their secrets (the relay's shape) ---------------------------------------


def _targets(project: _Object) -> tuple[Target, ...]:
    targets = project.section("targets")
    parsed = []
    for name, value in targets.entries():
        key = targets.key_of(name)
        _text(key, name, _TARGET_NAME, "target names of 1-63 lowercase letters, digits, '_' or '-'")
        parsed.append(_target(name, _Object(key, value)))
    if not parsed:
        raise ConfigError(targets.key, "must declare at least one target", ", ".join(TARGET_AUTH))
    return tuple(parsed)


def _target(name: str, target: _Object) -> Target:
    kind = target.choice("kind", tuple(TARGET_AUTH), what="target kind")
    auth_types = TARGET_AUTH[kind]
    base_url = None
    auth = None
    if kind != "dry_run":
        base_url = target.text("base_url", pattern=_HTTPS_URL, expected="an https:// URL")
        auth_block = target.mapping("auth", required=None not in auth_types)
        if auth_block is not None:
            auth = _auth(auth_block, kind, auth_types)
    timeout = target.number("timeout_seconds", None)
    if timeout is not None and not 0 < timeout <= 600:
        raise ConfigError(target.key_of("timeout_seconds"), f"{timeout:g} is out of range", "more than 0, up to 600")
    parsed = Target(
        name=name,
        kind=kind,
        base_url=base_url,
        auth=auth,
        timeout_seconds=timeout,
        max_concurrency=target.integer("max_concurrency", None, minimum=1, maximum=256),
        options=_no_inline_secrets(target.key, target.rest()),
    )
    target.finish()
    return parsed


def _env_references(options: Mapping[str, Any]) -> Iterator[str]:
    for name, value in options.items():
        if name.endswith("_env") and isinstance(value, str):
            yield value
        elif isinstance(value, Mapping):
            yield from _env_references(value)


def _no_inline_secrets(key: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Secrets reach the relay only as environment variable names: refuse a key that looks like one,
    and check that `*_env` values are variable names the relay's own settings do not use."""
    for name, value in options.items():
        if name.endswith("_env"):
            _env_name(f"{key}.{name}", value)
        elif _SECRET_LOOKING.search(name):
            raise ConfigError(
                f"{key}.{name}",
                "looks like a secret written inline",
                f"an environment variable reference ({name}_env) filled from secure-export:itsmSecrets",
            )
        if isinstance(value, Mapping):
            _no_inline_secrets(f"{key}.{name}", value)
    return dict(options)


def _auth(auth: _Object, kind: str, auth_types: Sequence[str | None]) -> TargetAuth:
    allowed = [t for t in auth_types if t is not None]
    auth_type = auth.choice("type", allowed, what=f"auth type for a {kind} target")
    fields = {}
    for name in AUTH_FIELDS[auth_type]:
        if name.endswith("_env"):
            fields[name] = _env_name(auth.key_of(name), auth.raw(name, expected=_ENV_VAR_EXPECTED))
        else:
            fields[name] = auth.text(name)
    auth.finish()
    return TargetAuth(type=auth_type, fields=fields)


def _env_name(key: str, value: Any) -> str:
    name = _text(key, value, _ENV_VAR, _ENV_VAR_EXPECTED)
    if name.startswith(_RESERVED_ENV_PREFIXES):
        raise ConfigError(
            key,
            f"{name} collides with the relay's own settings",
            f"names not starting with {', '.join(_RESERVED_ENV_PREFIXES)}",
        )
    return name


_ROUTE_MATCH_CHECKS: dict[str, Callable[[str, Any], str]] = {
    "severity": lambda key, value: _choice(key, value, SEVERITIES, "severity"),
    "subscription": _guid("a subscription GUID"),
}


def _secret_envs(targets: Sequence[Target]) -> tuple[str, ...]:
    return tuple(sorted({env for target in targets for env in target.secret_envs}))


def _routes(project: _Object, targets: Sequence[Target]) -> tuple[Route, ...]:
    target_names = [t.name for t in targets]
    routes = []
    routes_expected = "a list of {match, target, fields} routes, tried in order"
    for key, value in _items(project.key_of("routes"), project.raw("routes", expected=routes_expected)):
        route = _Object(key, value)
        match = route.section("match")
        criteria: dict[str, Any] = {}
        for name in ROUTE_MATCH_LISTS:
            if isinstance(match.raw(name, None), str):  # the relay takes one value or a list
                criteria[name] = (_ROUTE_MATCH_CHECKS.get(name, _text)(match.key_of(name), match.raw(name)),)
                continue
            values = match.strings(name, None, check=_ROUTE_MATCH_CHECKS.get(name))
            if values:
                criteria[name] = values
        properties = match.string_map("custom_properties")
        if properties:
            criteria["custom_properties"] = properties
        match.finish()
        target = route.choice("target", target_names, what="target")
        fields = route.section("fields")
        options = {name: route.raw(name) for name in ROUTE_OPTIONS if route.has(name)}
        for name in ROUTE_OPTIONS:
            route.raw(name, None)
        routes.append(
            Route(
                target=target,
                match=criteria,
                fields={name: _field_value(fields.key_of(name), value) for name, value in fields.entries()},
                options=_no_inline_secrets(route.key, options),
            )
        )
        route.finish()
    if not routes:
        raise ConfigError(
            project.key_of("routes"), "must hold at least one route, or no alert reaches a target", routes_expected
        )
    return tuple(routes)


def _field_value(key: str, value: Any) -> str | int | float:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigError(
            key, f"must be a string or a number, got {_describe(value)}", "a string (template) or a number"
        )
    return value


def _delivery(project: _Object) -> dict[str, Any]:
    """The relay's `delivery` section (retries, circuit breaker, shutdown grace): the relay checks it."""
    delivery = project.section("delivery")
    values = dict(delivery.entries())
    if "shutdown_grace_seconds" in values:
        grace = _number(delivery.key_of("shutdown_grace_seconds"), values["shutdown_grace_seconds"])
        if not 0 < grace <= 3600 - TERMINATION_MARGIN_SECONDS:
            raise ConfigError(
                delivery.key_of("shutdown_grace_seconds"),
                f"{grace:g} is out of range",
                f"more than 0, up to {3600 - TERMINATION_MARGIN_SECONDS} (Container Apps waits at most 3600 s)",
            )
        values["shutdown_grace_seconds"] = grace
    return values


def _itsm_secrets(project: _Object, targets: Sequence[Target], secret_keys: Sequence[str]) -> dict[str, SecretValue]:
    needed = _secret_envs(targets)
    secrets = project.section("itsmSecrets")
    if project.has("itsmSecrets") and project.key_of("itsmSecrets") not in secret_keys:
        raise ConfigError(
            project.key_of("itsmSecrets"),
            "is stored in clear text in the stack file",
            "values set with `pulumi config set --secret --path 'itsmSecrets.<NAME>' <value>`",
        )
    values = {}
    for name, value in secrets.entries():
        key = secrets.key_of(name)
        if name not in needed:
            raise ConfigError(key, "is not referenced by any target's *_env key", ", ".join(needed) or "none")
        if not isinstance(value, str) or not value:
            # Never echo the value: it is a secret even when it is malformed.
            raise ConfigError(key, "must be a non-empty string", "a secret string")
        values[name] = SecretValue(value)
    for name in needed:
        if name not in values:
            users = ", ".join(t.name for t in targets if name in t.secret_envs)
            raise ConfigError(
                secrets.key_of(name),
                f"is missing (referenced by targets {users})",
                f"a secret value, set with `pulumi config set --secret --path 'itsmSecrets.{name}' <value>`",
            )
    return dict(sorted(values.items()))


# --- alert rules ------------------------------------------------------------------------------


def _severity(rule: _Object) -> int:
    return SEVERITIES.index(rule.choice("severity", SEVERITIES, what="severity"))


def _minutes(duration: str) -> int:
    match = _DURATION.match(duration)
    assert match is not None
    if match.group(3):
        return int(match.group(3)) * 1440
    return int(match.group(1)) * (60 if match.group(2) == "H" else 1)


def _window(
    rule: _Object,
    windows: Sequence[str] | None,
    frequencies: Sequence[str] | None,
    default_window: str,
    default_frequency: str,
) -> tuple[str, str]:
    def read(name: str, options: Sequence[str] | None, default: str) -> str:
        if options is not None:
            return rule.choice(name, options, default, what="duration")
        return rule.text(name, default, pattern=_DURATION, expected="an ISO 8601 duration such as PT5M, PT1H or P1D")

    window = read("windowSize", windows, default_window)
    frequency = read("evaluationFrequency", frequencies, default_frequency)
    if _minutes(frequency) > _minutes(window):
        raise ConfigError(
            rule.key_of("evaluationFrequency"),
            f"{frequency} is longer than windowSize {window}",
            f"a duration up to {window}",
        )
    return window, frequency


def _dimensions(rule: _Object) -> tuple[Dimension, ...]:
    dimensions = []
    for key, value in _items(rule.key_of("dimensions"), rule.raw("dimensions", [])):
        dimension = _Object(key, value)
        dimensions.append(
            Dimension(
                name=dimension.text("name"),
                operator=dimension.choice("operator", DIMENSION_OPERATORS, "Include", what="dimension operator"),
                values=dimension.strings("values", expected="dimension values ('*' for all)"),
            )
        )
        dimension.finish()
    return tuple(dimensions)


def _failing_periods(rule: _Object, default: int) -> tuple[int, int]:
    periods = rule.section("failingPeriods")
    evaluation = periods.integer("evaluationPeriods", default, minimum=1, maximum=6)
    failing = periods.integer("minFailingPeriods", evaluation, minimum=1, maximum=6)
    if failing > evaluation:
        raise ConfigError(
            periods.key_of("minFailingPeriods"),
            f"{failing} exceeds evaluationPeriods {evaluation}",
            f"1 to {evaluation}",
        )
    periods.finish()
    return evaluation, failing


def _metric_target(rule: _Object, scopes: tuple[str, ...]) -> tuple[str | None, str | None]:
    """Multi-resource metric alerts (several scopes, or a resource group or subscription) need the
    target resource type and region; a single resource does not."""
    needed = len(scopes) > 1 or "/providers/" not in scopes[0]
    default = _MISSING if needed else None
    resource_type = rule.text(
        "targetResourceType",
        default,
        pattern=_RESOURCE_TYPE,
        expected="a resource type such as Microsoft.Compute/virtualMachines (needed with several scopes)",
    )
    region = rule.text(
        "targetResourceRegion",
        default,
        pattern=_LOCATION,
        expected="an Azure region name such as westeurope (needed with several scopes)",
    )
    return resource_type, region


def _alerts(project: _Object, azure: AzureContext) -> tuple[AlertRule, ...]:
    rules: list[AlertRule] = []
    seen: dict[str, str] = {}
    for key, value in _items(project.key_of("alerts"), project.raw("alerts", [])):
        rule = _Object(key, value)
        name = rule.text(
            "name",
            pattern=_RULE_NAME,
            expected="1-128 letters, digits, '.', '_', '-', '(' or ')', starting with a letter or digit",
        )
        if name.lower() in seen:
            raise ConfigError(
                rule.key_of("name"),
                f"{name!r} is already used by {seen[name.lower()]}",
                "a name unique among the stack's alerts",
            )
        seen[name.lower()] = key
        kind = rule.choice("kind", ALERT_KINDS, what="alert kind")
        common = {
            "name": name,
            "description": rule.text("description", ""),
            "enabled": rule.flag("enabled", True),
        }
        rules.append(_ALERT_PARSERS[kind](rule, common, azure))
        rule.finish()
    return tuple(rules)


def _metric_alert(rule: _Object, common: dict[str, Any], azure: AzureContext) -> MetricAlertRule:
    scopes = rule.strings("scopes", check=_arm_id, expected="Azure resource ids")
    window, frequency = _window(rule, METRIC_WINDOWS, METRIC_FREQUENCIES, "PT5M", "PT1M")
    resource_type, region = _metric_target(rule, scopes)
    return MetricAlertRule(
        **common,
        severity=_severity(rule),
        scopes=scopes,
        metric_namespace=rule.text("metricNamespace"),
        metric_name=rule.text("metricName"),
        aggregation=rule.choice("aggregation", METRIC_AGGREGATIONS, what="aggregation"),
        operator=rule.choice("operator", METRIC_OPERATORS, what="operator"),
        threshold=rule.number("threshold"),
        window_size=window,
        evaluation_frequency=frequency,
        dimensions=_dimensions(rule),
        target_resource_type=resource_type,
        target_resource_region=region,
    )


def _dynamic_metric_alert(rule: _Object, common: dict[str, Any], azure: AzureContext) -> DynamicMetricAlertRule:
    scopes = rule.strings("scopes", check=_arm_id, expected="Azure resource ids")
    window, frequency = _window(rule, METRIC_WINDOWS, METRIC_FREQUENCIES, "PT5M", "PT5M")
    evaluation, failing = _failing_periods(rule, 4)
    resource_type, region = _metric_target(rule, scopes)
    return DynamicMetricAlertRule(
        **common,
        severity=_severity(rule),
        scopes=scopes,
        metric_namespace=rule.text("metricNamespace"),
        metric_name=rule.text("metricName"),
        aggregation=rule.choice("aggregation", METRIC_AGGREGATIONS, what="aggregation"),
        operator=rule.choice("operator", DYNAMIC_OPERATORS, what="operator for dynamic thresholds"),
        sensitivity=rule.choice("sensitivity", DYNAMIC_SENSITIVITIES, "Medium", what="sensitivity"),
        evaluation_periods=evaluation,
        min_failing_periods=failing,
        window_size=window,
        evaluation_frequency=frequency,
        dimensions=_dimensions(rule),
        target_resource_type=resource_type,
        target_resource_region=region,
    )


def _log_search_alert(rule: _Object, common: dict[str, Any], azure: AzureContext) -> LogSearchAlertRule:
    aggregation = rule.choice("aggregation", METRIC_AGGREGATIONS, "Count", what="aggregation")
    column = rule.text("metricMeasureColumn", None if aggregation == "Count" else _MISSING)
    window, frequency = _window(rule, None, None, "PT5M", "PT5M")
    evaluation, failing = _failing_periods(rule, 1)
    return LogSearchAlertRule(
        **common,
        severity=_severity(rule),
        scopes=rule.strings("scopes", check=_arm_id, expected="Log Analytics workspace or resource ids"),
        location=rule.text(
            "location", azure.location, pattern=_LOCATION, expected="an Azure region name such as westeurope"
        ),
        query=rule.text("query"),
        aggregation=aggregation,
        metric_measure_column=column,
        operator=rule.choice("operator", LOG_OPERATORS, what="operator for log search alerts"),
        threshold=rule.number("threshold"),
        window_size=window,
        evaluation_frequency=frequency,
        evaluation_periods=evaluation,
        min_failing_periods=failing,
        dimensions=_dimensions(rule),
    )


def _subscription_scopes(rule: _Object, azure: AzureContext, *, subscription_only: bool = False) -> tuple[str, ...]:
    def check(key: str, value: Any) -> str:
        if subscription_only:
            return _text(key, value, _SUBSCRIPTION_ID, "a subscription id: /subscriptions/<subscription GUID>")
        return _arm_id(key, value)

    return rule.strings("scopes", (f"/subscriptions/{azure.subscription_id}",), check=check)


def _administrative_alert(rule: _Object, common: dict[str, Any], azure: AzureContext) -> AdministrativeAlertRule:
    return AdministrativeAlertRule(
        **common,
        scopes=_subscription_scopes(rule, azure),
        operation_name=rule.text(
            "operationName",
            pattern=_OPERATION_NAME,
            expected="an operation such as Microsoft.Compute/virtualMachines/delete",
        ),
        status=rule.choice("status", ACTIVITY_STATUSES, None, what="status"),
    )


def _service_health_alert(rule: _Object, common: dict[str, Any], azure: AzureContext) -> ServiceHealthAlertRule:
    return ServiceHealthAlertRule(
        **common,
        scopes=_subscription_scopes(rule, azure, subscription_only=True),
        incident_types=rule.strings(
            "incidentTypes", (), check=lambda k, v: _choice(k, v, SERVICE_HEALTH_INCIDENT_TYPES, "incident type")
        ),
        regions=rule.strings("regions", ()),
        services=rule.strings("services", ()),
    )


def _resource_health_alert(rule: _Object, common: dict[str, Any], azure: AzureContext) -> ResourceHealthAlertRule:
    return ResourceHealthAlertRule(
        **common,
        scopes=_subscription_scopes(rule, azure),
        health_statuses=rule.strings(
            "healthStatuses",
            ("Degraded", "Unavailable"),
            check=lambda k, v: _choice(k, v, RESOURCE_HEALTH_STATUSES, "health status"),
        ),
        resource_types=rule.strings(
            "resourceTypes",
            (),
            check=lambda k, v: _text(k, v, _RESOURCE_TYPE, "a resource type such as Microsoft.Compute/virtualMachines"),
        ),
    )


_ALERT_PARSERS: dict[str, Callable[[_Object, dict[str, Any], AzureContext], AlertRule]] = {
    "metric": _metric_alert,
    "dynamicMetric": _dynamic_metric_alert,
    "logSearch": _log_search_alert,
    "administrative": _administrative_alert,
    "serviceHealth": _service_health_alert,
    "resourceHealth": _resource_health_alert,
}


def load() -> StackConfig:
    """The running stack's config, from what the Pulumi CLI passed the program."""
    import pulumi
    from pulumi.runtime import config as runtime_config

    # The CLI passes config as the PULUMI_CONFIG environment variable (structured values as JSON
    # text); tests and `make plan` set it in the runtime instead. CONFIG is the only way to list keys.
    raw = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    secret_keys = {*runtime_config.get_config_secret_keys_env(), *filter(runtime_config.is_config_secret, raw)}
    try:
        return parse(raw, stack=pulumi.get_stack(), secret_keys=sorted(secret_keys))
    except ConfigError as error:
        # RunError ends the program with this one message and no traceback.
        raise pulumi.RunError(str(error)) from None
