"""Network facts the stack's optional hardening uses: the split of the VNet's address space, the
private DNS zones of the private endpoints, and the ActionGroup service-tag ranges for the ingress.

`python -m infra.networking <ServiceTags_Public_*.json>` prints the ActionGroup IPv4 ranges of
Microsoft's weekly service tags file (https://www.microsoft.com/download/details.aspx?id=56519) as the
`secure-export:network.ingressAllowedRanges` value to paste into a stack file (docs/deploy.md).
"""

from __future__ import annotations

import ipaddress
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# The public cloud's private DNS zone of each private endpoint group the stack uses
# (learn.microsoft.com/azure/private-link/private-endpoint-dns).
PRIVATE_DNS_ZONES = {
    "blob": "privatelink.blob.core.windows.net",
    "queue": "privatelink.queue.core.windows.net",
    "table": "privatelink.table.core.windows.net",
    "vault": "privatelink.vaultcore.azure.net",
}
# A workload-profiles Container Apps environment needs a subnet of at least /27.
SMALLEST_ENVIRONMENT_SUBNET = 27
ACTION_GROUP_TAG = "ActionGroup"


def split_address_space(prefix: str) -> tuple[str, str]:
    """The VNet's two subnets: the first half for the Container Apps environment, the second for
    the private endpoints. Raises ValueError when a half would be smaller than /27."""
    network = ipaddress.IPv4Network(prefix, strict=True)
    if network.prefixlen + 1 > SMALLEST_ENVIRONMENT_SUBNET:
        raise ValueError(f"{prefix} is too small: each half must be at least /{SMALLEST_ENVIRONMENT_SUBNET}")
    environment, endpoints = network.subnets(prefixlen_diff=1)
    return str(environment), str(endpoints)


def action_group_ranges(service_tags: Mapping[str, Any]) -> list[str]:
    """The IPv4 ranges of the global ActionGroup tag in a service tags document, collapsed and
    sorted. Container Apps ingress rules take IPv4 only; action groups call from IPv4 addresses."""
    found = [entry for entry in service_tags.get("values", []) if entry.get("name") == ACTION_GROUP_TAG]
    if not found:
        raise ValueError(f"the service tags file has no {ACTION_GROUP_TAG!r} tag")
    prefixes = found[0].get("properties", {}).get("addressPrefixes", [])
    ipv4 = [ipaddress.ip_network(p) for p in prefixes if ipaddress.ip_network(p).version == 4]
    if not ipv4:
        raise ValueError(f"the {ACTION_GROUP_TAG!r} tag lists no IPv4 range")
    return [str(n) for n in ipaddress.collapse_addresses(ipv4)]


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m infra.networking <ServiceTags_Public_YYYYMMDD.json>", file=sys.stderr)
        return 2
    try:
        document = json.loads(Path(argv[0]).read_text())
        ranges = action_group_ranges(document)
    except (OSError, ValueError) as error:
        print(f"networking: {argv[0]}: {error}", file=sys.stderr)
        return 1
    change = document.get("changeNumber", "?")
    print(f"  # ActionGroup service tag, change number {change} ({Path(argv[0]).name}); refresh: docs/deploy.md")
    print("  secure-export:network:")
    print("    ingressAllowedRanges:")
    for address_range in ranges:
        print(f"      - {address_range}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
