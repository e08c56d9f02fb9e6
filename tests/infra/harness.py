"""Running the Pulumi program on the example stacks, for the infra tests.

The program runs through infra.plan, the same path `make plan` takes. The example stack files hold no
ITSM secrets (those are set with `pulumi config set --secret`), so the tests supply stand-ins, which
must never show up anywhere but in Key Vault.
"""

from __future__ import annotations

import json
from typing import Any

from infra import plan as infra_plan
from infra.config import PROJECT, referenced_secret_envs

STACKS = infra_plan.stack_names()


def stand_in_secret(name: str) -> str:
    return f"stand-in-value-of-{name}"


def stack_config(stack: str, **overrides: Any) -> tuple[dict[str, str], list[str]]:
    """A stack file's config as the CLI passes it, with stand-in ITSM secrets. `overrides` replace
    project keys (`relay={...}` sets secure-export:relay; None removes the key)."""
    raw, secret_keys = infra_plan.stack_file_config(stack)
    for key, value in overrides.items():
        full_key = f"{PROJECT}:{key}"
        if value is None:
            raw.pop(full_key, None)
        else:
            raw[full_key] = value if isinstance(value, str) else json.dumps(value)
    raw[infra_plan.ITSM_SECRETS_KEY] = json.dumps({name: stand_in_secret(name) for name in referenced_secret_envs(raw)})
    return raw, sorted({*secret_keys, infra_plan.ITSM_SECRETS_KEY})


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


# A dev stack with the optional settings switched on: a prebuilt image, an identifier URI of one's
# own, and an OpenID metadata URL for a sovereign cloud.
PREBUILT_IMAGE = "ghcr.io/example/secure-export-relay@sha256:" + "ab" * 32
CUSTOM_IDENTIFIER_URI = "api://00000000-0000-0000-0000-000000000000/secure-export-dev"
SOVEREIGN_OPENID_URL = "https://login.microsoftonline.us/{tenant}/v2.0/.well-known/openid-configuration"


def run_variant() -> infra_plan.Plan:
    relay = {**stack_value("dev", "relay"), "image": PREBUILT_IMAGE, "openidConfigUrl": SOVEREIGN_OPENID_URL}
    return run_stack("dev", identifierUri=CUSTOM_IDENTIFIER_URI, relay=relay)
