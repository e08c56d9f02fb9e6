"""Azure resource names for one stack, derived once from the prefix, the environment and a suffix.

Names follow the Cloud Adoption Framework abbreviations (rg-, log-, st, kv-, id-, cr, cae-, ca-, ag-).
Storage accounts, key vaults and registries are globally unique, so their names carry a short suffix.
For storage and the registry it is a hash of the subscription, prefix and environment: the same stack
always gets the same names (like Bicep's uniqueString), and two subscriptions do not collide. The key
vault's is random and kept in the state instead (hosting.py), because a deleted vault's name stays
reserved while it is soft-deleted.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass

_BASE36 = string.digits + string.ascii_lowercase
SUFFIX_LENGTH = 6


def unique_suffix(subscription_id: str, prefix: str, environment: str) -> str:
    """Six lowercase base-36 characters, stable for one subscription, prefix and environment."""
    digest = hashlib.sha256(f"{subscription_id.lower()}/{prefix}/{environment}".encode()).digest()
    number = int.from_bytes(digest[:8], "big")
    chars = []
    for _ in range(SUFFIX_LENGTH):
        number, rest = divmod(number, 36)
        chars.append(_BASE36[rest])
    return "".join(chars)


@dataclass(frozen=True)
class Names:
    """Every Azure and Entra name the stack uses. Prefix <= 8, environment <= 7, suffix <= 6 characters
    keep the tightest ones (storage account and key vault: 24 characters) within Azure's limits."""

    prefix: str
    environment: str
    suffix: str

    @property
    def resource_group(self) -> str:
        return f"rg-{self.prefix}-{self.environment}"

    @property
    def log_workspace(self) -> str:
        return f"log-{self.prefix}-{self.environment}"

    @property
    def storage_account(self) -> str:
        return f"st{self.prefix}{self.environment}{self.suffix}"

    @property
    def key_vault_stem(self) -> str:
        """The key vault's name before its random suffix (SUFFIX_LENGTH characters, kept in the
        state): a soft-deleted vault keeps its name reserved, so a redeployed stack needs a new one."""
        return f"kv-{self.prefix}{self.environment}"

    @property
    def managed_identity(self) -> str:
        return f"id-{self.prefix}-{self.environment}-relay"

    @property
    def container_registry(self) -> str:
        return f"cr{self.prefix}{self.environment}{self.suffix}"

    @property
    def virtual_network(self) -> str:
        return f"vnet-{self.prefix}-{self.environment}"

    @property
    def container_environment(self) -> str:
        return f"cae-{self.prefix}-{self.environment}"

    @property
    def container_app(self) -> str:
        return f"ca-{self.prefix}-{self.environment}-relay"

    @property
    def action_group(self) -> str:
        return f"ag-{self.prefix}-{self.environment}-secure-webhook"

    @property
    def fallback_action_group(self) -> str:
        """The group that e-mails people when the relay itself fails (infra/monitoring.py)."""
        return f"ag-{self.prefix}-{self.environment}-relay-fallback"

    @property
    def application(self) -> str:
        """Display name of the Entra application that Azure Monitor requests tokens for."""
        return f"{self.prefix}-{self.environment}-secure-webhook"

    @property
    def image_repository(self) -> str:
        return "secure-export-relay"
