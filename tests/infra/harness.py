"""Running the Pulumi program on the example stacks, for the infra tests.

The program runs through infra.plan, the same path `make plan` takes. ITSM secret values never pass
through the stack (operators set them in Key Vault), so the stack files hold none and need no stand-ins.
The bootstrap program (infra/bootstrap) runs the same way on stacks/bootstrap.
"""

from __future__ import annotations

import json
from typing import Any

from infra import plan as infra_plan
from infra.config import PROJECT
from infra.config.bootstrap import BOOTSTRAP_PROJECT

STACKS = infra_plan.stack_names()
BOOTSTRAP_STACKS = infra_plan.stack_names(infra_plan.BOOTSTRAP_STACKS_DIR)


def stack_config(stack: str, **overrides: Any) -> tuple[dict[str, str], list[str]]:
    """A stack file's config as the CLI passes it. `overrides` replace project keys (`relay={...}`
    sets secure-export:relay; None removes the key)."""
    raw, secret_keys = infra_plan.stack_file_config(stack)
    for key, value in overrides.items():
        full_key = f"{PROJECT}:{key}"
        if value is None:
            raw.pop(full_key, None)
        else:
            raw[full_key] = value if isinstance(value, str) else json.dumps(value)
    return raw, secret_keys


def stack_value(stack: str, key: str) -> Any:
    """A project key's value as written in the stack file (structured values decoded)."""
    raw, _ = infra_plan.stack_file_config(stack)
    value = raw.get(f"{PROJECT}:{key}")
    try:
        return json.loads(value) if value is not None else None
    except json.JSONDecodeError:
        return value


def run_stack(stack: str, **overrides: Any) -> infra_plan.Plan:
    return infra_plan.run(stack, *stack_config(stack, **overrides))


def bootstrap_config(stack: str, **overrides: Any) -> dict[str, str]:
    """A bootstrap stack file's config, with `overrides` as in stack_config."""
    raw, _ = infra_plan.stack_file_config(stack, infra_plan.BOOTSTRAP_STACKS_DIR)
    for key, value in overrides.items():
        full_key = f"{BOOTSTRAP_PROJECT}:{key}"
        if value is None:
            raw.pop(full_key, None)
        else:
            raw[full_key] = value if isinstance(value, str) else json.dumps(value)
    return raw


def bootstrap_value(stack: str, key: str) -> Any:
    raw, _ = infra_plan.stack_file_config(stack, infra_plan.BOOTSTRAP_STACKS_DIR)
    value = raw.get(f"{BOOTSTRAP_PROJECT}:{key}")
    try:
        return json.loads(value) if value is not None else None
    except json.JSONDecodeError:
        return value


# A dev stack with the optional settings switched on: a prebuilt image from another registry (signed
# in to with a user name and a Key Vault secret), an identifier URI of one's own, an OpenID metadata
# URL for a sovereign cloud, and the network hardening (ingress ranges, a VNet with private endpoints).
PREBUILT_IMAGE = "ghcr.io/example/secure-export-relay@sha256:" + "ab" * 32
REGISTRY_USER = "secure-export-bot"
REGISTRY_PASSWORD_SECRET = "ghcr-password"
CUSTOM_IDENTIFIER_URI = "api://00000000-0000-0000-0000-000000000000/secure-export-dev"
SOVEREIGN_OPENID_URL = "https://login.microsoftonline.us/{tenant}/v2.0/.well-known/openid-configuration"
INGRESS_RANGES = ["20.21.22.0/24", "40.41.0.0/16"]
VNET_PREFIX = "10.42.0.0/24"


def run_variant() -> infra_plan.Plan:
    relay = {
        **stack_value("dev", "relay"),
        "image": PREBUILT_IMAGE,
        "registry": {"username": REGISTRY_USER, "passwordSecret": REGISTRY_PASSWORD_SECRET},
        "openidConfigUrl": SOVEREIGN_OPENID_URL,
    }
    entra = {**stack_value("dev", "entra"), "identifierUri": CUSTOM_IDENTIFIER_URI}
    network = {"ingressAllowedRanges": INGRESS_RANGES, "virtualNetwork": VNET_PREFIX}
    return run_stack("dev", entra=entra, relay=relay, network=network)
