"""The stack config speaks the relay's vocabulary: the same target kinds, target names and bounds, so a
stack the program accepts is one the relay accepts."""

from __future__ import annotations

import json
from typing import Any

import pytest

from infra import config
from relay import schema
from relay.targets import TARGET_MODULES


def parse_with_target(name: str = "audit", **target: Any) -> config.StackConfig:
    raw = {
        "azure-native:tenantId": "00000000-0000-0000-0000-000000000000",
        "azuread:tenantId": "00000000-0000-0000-0000-000000000000",
        "azure-native:subscriptionId": "11111111-1111-1111-1111-111111111111",
        "azure-native:location": "westeurope",
        "secure-export:targets": json.dumps({name: {"kind": "dry_run", **target}}),
        "secure-export:routes": json.dumps([{"target": name}]),
        "secure-export:entra": json.dumps(
            {"clientId": "44444444-4444-4444-4444-444444444444", "objectId": "55555555-5555-5555-5555-555555555555"}
        ),
    }
    return config.parse(raw, stack="qa")


def test_infra_mirrors_exactly_the_relays_target_kinds() -> None:
    infra_kinds, relay_kinds = set(config.TARGET_AUTH), set(TARGET_MODULES)
    lacking = [
        f"{side} lacks {', '.join(sorted(kinds))}"
        for side, kinds in (
            ("infra's TARGET_AUTH (infra/config/model.py)", relay_kinds - infra_kinds),
            ("the relay's TARGET_MODULES (relay/targets/__init__.py)", infra_kinds - relay_kinds),
        )
        if kinds
    ]
    assert not lacking, "; ".join(lacking)


@pytest.mark.parametrize("name", ["snow", "Snow_EM", "rt-2", "9", "x" * 64])
def test_target_names_the_relay_accepts_are_accepted(name: str) -> None:
    assert [t.name for t in parse_with_target(name).targets] == [name]


@pytest.mark.parametrize("name", ["", "snow.em", "snow em", "x" * 65])
def test_target_names_the_relay_refuses_are_refused_with_its_rule(name: str) -> None:
    with pytest.raises(config.ConfigError) as caught:
        parse_with_target(name)
    assert caught.value.key == f"secure-export:targets.{name}", str(caught.value)
    assert str(caught.value).endswith(f"; allowed: {schema.TARGET_NAME_RULE}"), str(caught.value)


@pytest.mark.parametrize(
    ("key", "bound"),
    [
        ("timeout_seconds", schema.TIMEOUT_SECONDS),
        ("max_concurrency", schema.MAX_CONCURRENCY),
        ("rate_limit_per_second", schema.RATE_LIMIT_PER_SECOND),
    ],
)
def test_target_timeout_concurrency_and_rate_take_the_relays_bounds(key: str, bound: schema.Bound) -> None:
    for value in (bound.low, bound.high, str(int(bound.high))):
        accepted = getattr(parse_with_target(**{key: value}).targets[0], key)
        assert accepted == float(value), f"{key}: {value!r} is within the relay's bounds but read as {accepted!r}"
    for value in (bound.low - 0.05 if not bound.whole else bound.low - 1, bound.high + 1):
        with pytest.raises(config.ConfigError) as caught:
            parse_with_target(**{key: value})
        message = str(caught.value)
        assert caught.value.key == f"secure-export:targets.audit.{key}", message
        assert message.endswith(f"; allowed: {bound.describe()}"), (
            f"{key}: {value!r} refused without the bound: {message}"
        )
