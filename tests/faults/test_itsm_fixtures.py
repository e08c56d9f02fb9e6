"""Fixtures of the fake ITSM servers for the fault tests (a module of fixtures, no tests)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.fakes.bmc_helix import FakeBmcHelix
from tests.fakes.request_tracker import FakeRequestTracker
from tests.fakes.servicenow import FakeServiceNow
from tests.test_request_tracker_target import QUEUE


@pytest.fixture
async def servicenow_fake() -> AsyncIterator[FakeServiceNow]:
    server = FakeServiceNow()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def rt() -> AsyncIterator[FakeRequestTracker]:
    server = FakeRequestTracker()
    server.add_queue(QUEUE, custom_fields=("AzureAlertId",))
    server.catalogs.add("General assets")
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def bmc() -> AsyncIterator[FakeBmcHelix]:
    server = FakeBmcHelix()
    await server.start()
    yield server
    await server.stop()
