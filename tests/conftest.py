"""Shared fixtures: the development token issuer, sample payloads, and a running relay."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from devtools.dev_issuer import DevIssuer
from relay.targets import TargetError

SAMPLES = Path(__file__).parent / "samples"
COMMON_SCHEMA = "azureMonitorCommonAlertSchema"

# The smallest valid block of each target kind, its secrets in TARGET_ENV: for tests that need a built
# target of a kind (building does no I/O; sessions open on first use).
MINIMAL_TARGET_BLOCKS: dict[str, dict[str, Any]] = {
    "servicenow": {"kind": "servicenow", "base_url": "https://example.service-now.com",
                   "auth": {"type": "basic", "username": "relay", "password_env": "TARGET_SECRET"}},
    "bmc_helix": {"kind": "bmc_helix", "base_url": "https://helix.example.com",
                  "auth": {"type": "ar_jwt", "username": "relay", "password_env": "TARGET_SECRET"}},
    "request_tracker": {"kind": "request_tracker", "base_url": "https://rt.example.com",
                        "auth": {"type": "token", "token_env": "TARGET_SECRET"}},
    "jira_service_management": {"kind": "jira_service_management", "base_url": "https://example.atlassian.net",
                                "project_key": "OPS",
                                "auth": {"type": "api_token", "email": "relay@example.com",
                                         "token_env": "TARGET_SECRET"}},
    "pagerduty": {"kind": "pagerduty", "routing_key_env": "TARGET_SECRET"},
    "forward": {"kind": "forward", "base_url": "https://hook.example.com/alerts?source=azuremonitor"},
    "dry_run": {"kind": "dry_run"},
}
TARGET_ENV = {"TARGET_SECRET": "s3cret"}


def load_sample(name: str) -> dict[str, Any]:
    return json.loads((SAMPLES / name).read_text())


def full_sample_names() -> list[str]:
    return sorted(p.name for p in SAMPLES.glob("*.json") if json.loads(p.read_text()).get("schemaId") == COMMON_SCHEMA)


async def expect_error(coro: Any) -> TargetError:
    """The TargetError a target call raises (the test fails if it raises nothing)."""
    with pytest.raises(TargetError) as info:
        await coro
    return info.value


def require_e2e() -> bool:
    """Under REQUIRE_E2E=1 (CI), a missing external system fails the test instead of skipping it."""
    return os.environ.get("REQUIRE_E2E") == "1"


def skip_or_fail(reason: str) -> None:
    if require_e2e():
        pytest.fail(f"REQUIRE_E2E=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture
def empty_store(tmp_path: Path) -> Path:
    """The path of a relay's SQLite store that holds nothing, made by the store itself."""
    import asyncio

    from relay.store.sqlite import SqliteStore

    db = tmp_path / "relay.db"

    async def make() -> None:
        store = SqliteStore(db)
        await store.open()
        await store.close()

    asyncio.run(make())
    return db


@pytest.fixture
async def issuer() -> AsyncIterator[DevIssuer]:
    iss = DevIssuer()
    await iss.start()
    yield iss
    await iss.stop()


async def scrape(client: Any) -> str:
    """The text of a test client's app's /metrics, from the metrics listener (never the public port)."""
    from relay.app import metrics_url

    async with client.session.get(metrics_url(client.app)) as resp:
        assert resp.status == 200, f"/metrics answered {resp.status}"
        return await resp.text()
