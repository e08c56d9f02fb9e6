"""The stack config as a whole: `parse` validates what the Pulumi CLI hands the program, `load` reads it
from the running program.

`parse` takes the raw config (full keys such as `secure-export:relay`, structured values as JSON text)
and returns a `StackConfig`, or raises one `ConfigError` naming the key, in `pulumi config set --path`
syntax, and what is allowed there. This module reads the project-wide sections itself and leaves the
relay's shape to targets.py and the alert rules to alert_rules.py.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from infra import networking
from infra.config import reconcile as reconcile_config
from infra.config.alert_rules import _alerts
from infra.config.model import (
    PAYLOAD_RETENTION_DAYS,
    PROJECT,
    RELAY_CPUS,
    RELAY_PORT,
    RELAY_SHUTDOWN_GRACE_SECONDS,
    STATUS_VIEWER_IMAGE,
    STORAGE_SKUS,
    TERMINATION_MARGIN_SECONDS,
    AzureContext,
    EntraApplication,
    KeyVaultSettings,
    NetworkSettings,
    RegistryLogin,
    RelaySettings,
    StackConfig,
    StatusViewerSettings,
    secret_name,
)
from infra.config.monitoring import monitoring
from infra.config.reader import _HTTPS_URL, _LOCATION, _MISSING, ConfigError, Section, _text
from infra.config.targets import _delivery, _itsm_secret_envs, _maintenance, _routes, _secret_envs, _targets
from infra.naming import SUFFIX_LENGTH, Names, unique_suffix
from relay import schema

_PREFIX = re.compile(r"^[a-z][a-z0-9]{1,7}$")
_ENVIRONMENT = re.compile(r"^[a-z][a-z0-9]{0,6}$")
_SUFFIX = re.compile(rf"^[a-z0-9]{{1,{SUFFIX_LENGTH}}}$")
_IDENTIFIER_URI = re.compile(r"^api://[^\s]*[^\s/]$")
_IMAGE = re.compile(r"^[a-z0-9.-]+(:\d+)?/[a-z0-9._/-]+(:[\w.-]{1,128}|@sha256:[0-9a-f]{64})$")
# A name both Key Vault and Container Apps accept for a secret.
_SECRET_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,125}[a-z0-9])?$")
# Keys the bootstrap stack (infra/bootstrap) owns now; the main stack reads its outputs instead.
_MOVED_TO_BOOTSTRAP = ("appOwners", "identifierUri")


def parse(raw: Mapping[str, Any], *, stack: str, secret_keys: Sequence[str] = ()) -> StackConfig:
    """Validate the whole stack config. `raw` holds full keys (`secure-export:targets`) and the
    CLI's values: plain strings, structured values as JSON text. `secret_keys` (the keys set with
    `--secret`) is accepted for the CLI's interface; no key of this project needs to be secret."""
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
        entra=_entra(project),
        action_group_short_name=_short_name(project),
        storage_sku=project.choice("storageSku", STORAGE_SKUS, "Standard_LRS", what="storage SKU"),
        payload_retention_days=project.integer(
            "payloadRetentionDays", PAYLOAD_RETENTION_DAYS, minimum=1, maximum=36500
        ),
        network=_network(project),
        key_vault=_key_vault(project),
        relay=_relay(project, delivery),
        targets=targets,
        routes=_routes(project, targets),
        delivery=delivery,
        alerts=_alerts(project, azure),
        itsm_secret_envs=_itsm_secret_envs(project, targets),
        monitoring=monitoring(project),
        status_viewer=_status_viewer(project),
        reconcile=reconcile_config.parse(project),
        maintenance=_maintenance(project),
    )
    _check_registry_secret(project, config)
    project.finish()
    return config


def referenced_secret_envs(raw: Mapping[str, Any]) -> tuple[str, ...]:
    """The ITSM secrets (env var names) the stack's targets reference, sorted."""
    return _secret_envs(_targets(_project(raw)))


def _project(raw: Mapping[str, Any]) -> Section:
    structured = {
        *("appOwners", "tags", "keyVault", "relay", "targets", "routes", "delivery", "alerts", "itsmSecrets"),
        "reconcile",
        *("entra", "network", "monitoring", "statusViewer", "maintenance"),
    }
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
    return Section(PROJECT, view, separator=":")


def _azure(raw: Mapping[str, Any]) -> AzureContext:
    def required(key: str, pattern: re.Pattern[str], expected: str, example: str) -> str:
        value = raw.get(key)
        if value is None:
            raise ConfigError(key, f"is required; set it with `pulumi config set {key} {example}`", expected)
        return _text(key, value, pattern, expected)

    tenant = required("azure-native:tenantId", schema.GUID, "a tenant GUID", "<tenant id>")
    azuread_tenant = required("azuread:tenantId", schema.GUID, "a tenant GUID", "<tenant id>")
    if azuread_tenant.lower() != tenant.lower():
        raise ConfigError(
            "azuread:tenantId",
            f"{azuread_tenant} differs from azure-native:tenantId {tenant}",
            "the same tenant as azure-native:tenantId (the Entra app and the action group must share it)",
        )
    return AzureContext(
        tenant_id=tenant,
        subscription_id=required(
            "azure-native:subscriptionId", schema.GUID, "a subscription GUID", "<subscription id>"
        ),
        location=required("azure-native:location", _LOCATION, "an Azure region name such as westeurope", "westeurope"),
    )


def _entra(project: Section) -> EntraApplication:
    """The bootstrap stack's outputs (`pulumi stack output` in infra/bootstrap), copied once."""
    for moved in _MOVED_TO_BOOTSTRAP:
        if project.has(moved):
            raise ConfigError(
                project.key_of(moved),
                "is set in the bootstrap stack now (infra/bootstrap), which owns the Entra application",
                "no such key here: move it to infra/bootstrap/Pulumi.<stack>.yaml and set secure-export:entra "
                "from that stack's outputs",
            )
    entra = project.mapping("entra", required=True)
    assert entra is not None
    client_id = entra.text("clientId", pattern=schema.GUID, expected="the application's client id (a GUID)")
    application = EntraApplication(
        client_id=client_id,
        object_id=entra.text("objectId", pattern=schema.GUID, expected="the application's object id (a GUID)"),
        identifier_uri=entra.text(
            "identifierUri",
            f"api://{client_id}",
            pattern=_IDENTIFIER_URI,
            expected="the application's api:// identifier URI (default: api://<client id>)",
        ),
    )
    entra.finish()
    return application


def _status_viewer(project: Section) -> StatusViewerSettings | None:
    """`statusViewer`: off unless `enabled: true`; then the Entra app registration's client id is required."""
    viewer = project.section("statusViewer")
    if not viewer.flag("enabled", False):
        for key in ("clientId", "image", "clientSecretName"):
            viewer.raw(key, None)  # known keys, kept while the viewer is switched off
        viewer.finish()
        return None
    settings = StatusViewerSettings(
        client_id=viewer.text(
            "clientId",
            pattern=schema.GUID,
            expected="the client id (a GUID) of the Entra app registration operators sign in with "
            "(docs/deploy.md: the status page)",
        ),
        image=viewer.text(
            "image",
            STATUS_VIEWER_IMAGE,
            pattern=_IMAGE,
            expected="a registry-qualified nginx image reference with a tag or digest",
        ),
        secret_name=viewer.text(
            "clientSecretName",
            "status-viewer-client-secret",
            pattern=_SECRET_NAME,
            expected="a Key Vault secret name: lowercase letters, digits and dashes",
        ),
    )
    viewer.finish()
    return settings


def _ipv4_range(key: str, value: Any) -> str:
    expected = "IPv4 ranges in CIDR notation, e.g. 20.21.22.0/24 (Container Apps ingress rules take IPv4 only)"
    text = _text(key, value, None, expected)
    try:
        network = ipaddress.IPv4Network(text, strict=True)
    except ValueError as error:
        raise ConfigError(key, f"{text!r} is not an IPv4 range ({error})", expected) from None
    return str(network)


def _network(project: Section) -> NetworkSettings:
    network = project.section("network")
    ranges = network.strings("ingressAllowedRanges", (), check=_ipv4_range, expected="IPv4 CIDR ranges")
    if len(set(ranges)) != len(ranges):
        duplicate = next(r for r in ranges if ranges.count(r) > 1)
        raise ConfigError(network.key_of("ingressAllowedRanges"), f"lists {duplicate} twice", "distinct ranges")
    settings = NetworkSettings(
        ingress_allowed_ranges=ranges,
        virtual_network=_vnet_prefix(network) if network.has("virtualNetwork") else None,
    )
    network.finish()
    return settings


def _vnet_prefix(network: Section) -> str:
    key = network.key_of("virtualNetwork")
    smallest = networking.SMALLEST_ENVIRONMENT_SUBNET - 1
    expected = f"a private IPv4 range from /16 to /{smallest}, e.g. 10.42.0.0/24 (split into two subnets)"
    try:
        prefix = ipaddress.IPv4Network(network.raw("virtualNetwork"), strict=True)
        networking.split_address_space(str(prefix))
    except ValueError as error:
        raise ConfigError(key, f"is not usable ({error})", expected) from None
    if not (prefix.is_private and prefix.prefixlen >= 16):
        raise ConfigError(key, f"{prefix} is not a private range from /16 to /{smallest}", expected)
    return str(prefix)


def _check_registry_secret(project: Section, config: StackConfig) -> None:
    registry = config.relay.registry
    if registry is None or registry.password_secret is None:
        return
    itsm = {secret_name(env) for env in config.itsm_secret_envs}
    if registry.password_secret in itsm:
        raise ConfigError(
            f"{project.key_of('relay')}.registry.passwordSecret",
            f"{registry.password_secret!r} is also the Key Vault secret of an ITSM credential",
            "a Key Vault secret name of its own",
        )


def _registry(relay: Section, image: str | None) -> RegistryLogin | None:
    if image is None:
        if relay.has("registry"):
            raise ConfigError(
                relay.key_of("registry"),
                "applies only to a prebuilt relay.image",
                "leave it out: the stack's own registry is read with the relay's identity",
            )
        return None
    registry = relay.section("registry")
    username = registry.text("username", None)
    password_secret = registry.text(
        "passwordSecret",
        None if username is None else _MISSING,
        pattern=_SECRET_NAME,
        expected="the name of the Key Vault secret holding the password (lowercase letters, digits and dashes)",
    )
    if username is None and password_secret is not None:
        raise ConfigError(registry.key_of("username"), "is required with passwordSecret", "the registry user name")
    registry.finish()
    return RegistryLogin(server=image.split("/", 1)[0], username=username, password_secret=password_secret)


def _short_name(project: Section) -> str:
    name = project.text("actionGroupShortName", "SecureExport")
    if len(name) > 12:
        raise ConfigError(
            project.key_of("actionGroupShortName"),
            f"{name!r} is {len(name)} characters long",
            "1 to 12 characters (Azure's limit for an action group's short name)",
        )
    return name


def _key_vault(project: Section) -> KeyVaultSettings:
    vault = project.section("keyVault")
    settings = KeyVaultSettings(
        purge_protection=vault.flag("purgeProtection", True),
        soft_delete_retention_days=vault.integer("softDeleteRetentionDays", 90, minimum=7, maximum=90),
    )
    vault.finish()
    return settings


def _relay(project: Section, delivery: Mapping[str, Any]) -> RelaySettings:
    relay = project.section("relay")
    cpu = relay.number("cpu", 0.5)
    if cpu not in RELAY_CPUS:
        raise ConfigError(
            relay.key_of("cpu"), f"{cpu:g} cores is not a Container Apps size", ", ".join(f"{c:g}" for c in RELAY_CPUS)
        )
    # At least 1: after failed retries Azure Monitor stops calling a webhook for 15 minutes, and a
    # cold start from zero can outlast its timeout.
    min_replicas = relay.integer("minReplicas", 1, minimum=1, maximum=1000)
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
    image = relay.text(
        "image",
        None,
        pattern=_IMAGE,
        expected="a registry-qualified image reference with a tag or digest, "
        "e.g. myregistry.azurecr.io/secure-export-relay@sha256:<64 hex digits>",
    )
    settings = RelaySettings(
        image=image,
        registry=_registry(relay, image),
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
