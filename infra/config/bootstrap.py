"""The bootstrap stack's config (project `secure-export-entra`, infra/bootstrap): the privileged Entra
part, run once per environment by an Application Administrator.

`parse_bootstrap` validates what the Pulumi CLI hands that program and raises one `ConfigError` naming
the key, as `parse` does for the main stack.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from infra.config.reader import ConfigError, Section, _guid, _text
from infra.config.stack import _ENVIRONMENT, _IDENTIFIER_URI, _PREFIX
from infra.naming import Names
from relay import schema

BOOTSTRAP_PROJECT = "secure-export-entra"


@dataclass(frozen=True)
class BootstrapConfig:
    tenant_id: str
    display_name: str  # the application's; the same prefix and environment as the main stack's names
    identifier_uri: str | None  # None: api://<client id>
    owners: tuple[str, ...]  # the complete owner set: users or service principals, never groups
    create_azure_monitor_service_principal: bool


def parse_bootstrap(raw: Mapping[str, Any], *, stack: str) -> BootstrapConfig:
    tenant = raw.get("azuread:tenantId")
    if tenant is None:
        raise ConfigError(
            "azuread:tenantId", "is required; set it with `pulumi config set azuread:tenantId <tenant id>`", "a GUID"
        )
    view = {}
    for full_key, value in raw.items():
        if full_key.startswith(f"{BOOTSTRAP_PROJECT}:"):
            name = full_key.split(":", 1)[1]
            if name == "owners" and isinstance(value, str):  # structured values arrive as JSON text
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    raise ConfigError(full_key, "is not a list", "a list in the stack file") from None
            view[name] = value
    project = Section(BOOTSTRAP_PROJECT, view, separator=":")
    environment = project.text(
        "environment", stack, pattern=_ENVIRONMENT, expected="the main stack's environment (default: the stack name)"
    )
    prefix = project.text("namePrefix", "secexp", pattern=_PREFIX, expected="the main stack's namePrefix")
    owners_key = project.key_of("owners")
    owners_expected = (
        "object ids of users or service principals (groups cannot own an application); include the identity "
        "that deploys the main stack: Azure refuses to save an action group whose application it does not own"
    )
    owners = project.strings("owners", check=_guid("an object id GUID"), expected=owners_expected)
    if len({o.lower() for o in owners}) != len(owners):
        raise ConfigError(owners_key, "lists an owner twice", owners_expected)
    config = BootstrapConfig(
        tenant_id=_text("azuread:tenantId", tenant, schema.GUID, "a tenant GUID"),
        display_name=Names(prefix=prefix, environment=environment, suffix="").application,
        identifier_uri=project.text(
            "identifierUri",
            None,
            pattern=_IDENTIFIER_URI,
            expected="an api:// URI not ending in '/', e.g. api://<tenant id>/secure-export "
            "(default: api://<client id>)",
        ),
        owners=owners,
        create_azure_monitor_service_principal=project.flag("createAzureMonitorServicePrincipal", False),
    )
    project.finish()
    return config


def load_bootstrap() -> BootstrapConfig:
    """The running bootstrap stack's config, from what the Pulumi CLI passed the program."""
    import pulumi
    from pulumi.runtime import config as runtime_config

    raw = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    try:
        return parse_bootstrap(raw, stack=pulumi.get_stack())
    except ConfigError as error:
        raise pulumi.RunError(str(error)) from None
