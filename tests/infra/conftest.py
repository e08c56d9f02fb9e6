"""Fixtures for the Pulumi program's tests: each stack file in stacks/ run once under Pulumi's mocks."""

from __future__ import annotations

import pytest

from infra.plan import Plan
from tests.infra.harness import STACKS, run_stack, run_variant


@pytest.fixture(scope="session")
def plans() -> dict[str, Plan]:
    return {stack: run_stack(stack) for stack in STACKS}


@pytest.fixture(params=STACKS)
def stack(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def stack_plan(plans: dict[str, Plan], stack: str) -> Plan:
    return plans[stack]


@pytest.fixture(scope="session")
def run_variant_plan() -> Plan:
    """The dev stack with a prebuilt image, a configured identifier URI and a sovereign-cloud OpenID URL."""
    return run_variant()
