"""The relay's outbound HTTP sessions, built in one place.

Every call the relay makes (a target's API through `relay.targets.vendor_api.VendorHTTP`, the tenant's
signing keys through `relay.intake.signing_keys`) goes through a session from `client_session`: an
explicit timeout, a bounded connection pool and the relay's User-Agent, never aiohttp's defaults.
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp

USER_AGENT = "secure-export-relay"


def client_session(
    *, timeout: aiohttp.ClientTimeout, max_connections: int = 100, headers: Mapping[str, str] | None = None
) -> aiohttp.ClientSession:
    """A pooled session (call it inside the running event loop; close it when done)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max_connections),
        timeout=timeout,
        headers={"User-Agent": USER_AGENT, **(headers or {})},
    )
