"""relay/schema.py is the one definition of the configuration vocabulary: the models built on it agree."""

from __future__ import annotations

import ast
import dataclasses
import sys
from pathlib import Path

import pytest

from relay import schema
from relay.delivery.lifecycle import Policy
from relay.delivery.routing import DeliverySettings, Route, TargetConfig


def test_delivery_settings_are_exactly_the_schemas_keys_with_its_defaults():
    fields = {f.name: f.default for f in dataclasses.fields(DeliverySettings)}
    assert list(fields) == [*schema.DELIVERY, *schema.DELIVERY_DERIVED], (
        "DeliverySettings and schema.DELIVERY (+ DELIVERY_DERIVED) name different settings")
    for name, bound in schema.DELIVERY.items():
        assert fields[name] == bound.default, f"delivery.{name}: model default {fields[name]} != schema {bound.default}"
        assert bound.accepts(bound.default), f"delivery.{name}: its default is outside its own bounds"
    for name, bound in schema.DELIVERY_DERIVED.items():
        assert fields[name] is None, f"delivery.{name}: a derived setting must default to None (derived per target)"
        assert bound.accepts(bound.default), f"delivery.{name}: its documented default is outside its own bounds"


def test_adopt_after_defaults_to_six_timeouts_of_each_target_and_a_setting_overrides_it():
    slow = TargetConfig(name="slow", kind="dry_run", block={}, timeout_seconds=50)
    default = TargetConfig(name="t", kind="dry_run", block={})
    assert DeliverySettings().adopt_after(slow) == 300
    assert DeliverySettings().adopt_after(default) == schema.DELIVERY_DERIVED["adopt_after_seconds"].default == 180
    assert DeliverySettings(adopt_after_seconds=12).adopt_after(slow) == 12


def test_target_and_route_defaults_are_the_schemas():
    target = TargetConfig(name="t", kind="dry_run", block={})
    assert target.timeout_seconds == schema.TIMEOUT_SECONDS.default
    assert target.max_concurrency == schema.MAX_CONCURRENCY.default
    policy = Policy()
    assert (policy.on_repeat, policy.on_refire, policy.on_resolve) == (
        schema.ON_REPEAT[0], schema.ON_REFIRE[0], schema.ON_RESOLVE[0])
    assert Route(target="t").incident_per == schema.INCIDENT_PER[0]


@pytest.mark.parametrize(
    ("bound", "value", "accepted"),
    [
        (schema.TIMEOUT_SECONDS, 0.1, True),
        (schema.TIMEOUT_SECONDS, 600, True),
        (schema.TIMEOUT_SECONDS, 0.09, False),
        (schema.TIMEOUT_SECONDS, 600.5, False),
        (schema.TIMEOUT_SECONDS, True, False),
        (schema.TIMEOUT_SECONDS, "30", False),
        (schema.MAX_CONCURRENCY, 1, True),
        (schema.MAX_CONCURRENCY, 256, True),
        (schema.MAX_CONCURRENCY, 0, False),
        (schema.MAX_CONCURRENCY, 257, False),
        (schema.MAX_CONCURRENCY, 4.0, False),
    ],
)
def test_bounds_are_inclusive_and_typed(bound, value, accepted):
    assert bound.accepts(value) is accepted, f"{bound.describe()}: {value!r}"


def test_bounds_describe_themselves_for_error_messages():
    assert schema.TIMEOUT_SECONDS.describe() == "a number from 0.1 to 600"
    assert schema.MAX_CONCURRENCY.describe() == "a whole number from 1 to 256"


def test_the_schema_module_needs_nothing_but_the_standard_library():
    tree = ast.parse(Path(schema.__file__).read_text(encoding="utf-8"))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    outside = sorted(imported - set(sys.stdlib_module_names) - {"__future__"})
    assert not outside, f"relay/schema.py imports {outside}; infra/ imports this module, so it must stay stdlib-only"
