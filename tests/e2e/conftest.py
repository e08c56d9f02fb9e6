"""The real Request Tracker, started once per test session (skipped, or failed under REQUIRE_E2E=1,
when it is not installed), and its REST2 client for checking what the relay did there."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from tests.conftest import skip_or_fail
from tests.e2e.rt_relay import RTAdmin
from tests.rt_server import RTUnavailable, RunningRT, start_rt

log = logging.getLogger("tests.e2e")


@pytest.fixture(scope="session")
def rt_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningRT]:
    try:
        rt = start_rt(tmp_path_factory.mktemp("request-tracker"))
    except RTUnavailable as exc:
        skip_or_fail(str(exc))
        raise  # unreachable: skip_or_fail raises
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in rt.timings.items())
    log.warning("Request Tracker ready at %s (%s)", rt.url, timings)
    try:
        yield rt
    finally:
        rt.stop()


@pytest.fixture
async def admin(rt_server: RunningRT) -> AsyncIterator[RTAdmin]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield RTAdmin(rt_server, session)
