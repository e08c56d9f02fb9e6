"""The target registry: every kind declares its own facts, and a kind's module that does not is refused by name."""

from __future__ import annotations

import dataclasses
import sys
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from relay.alerts import parse_alert
from relay.delivery.rendering import render_incident
from relay.schema import SEVERITIES
from relay.targets import TARGET_MODULES, TargetModuleError, TextLimits, build_target, load_kind
from tests.conftest import MINIMAL_TARGET_BLOCKS, TARGET_ENV, load_sample


@pytest.mark.parametrize("kind", list(TARGET_MODULES))
def test_every_kind_builds_and_declares_its_limits_severity_fields_and_options(kind):
    assert kind in MINIMAL_TARGET_BLOCKS, f"add the smallest valid {kind} block to tests/conftest.py"
    target = build_target(kind, MINIMAL_TARGET_BLOCKS[kind], env=TARGET_ENV)
    assert isinstance(target, load_kind(kind).TARGET_CLASS)
    assert target.kind == kind
    assert target.limits is None or isinstance(target.limits, TextLimits), f"{kind}: limits {target.limits!r}"
    assert isinstance(target.severity_fields, Mapping)
    assert set(target.severity_fields) <= set(SEVERITIES), f"{kind}: {sorted(target.severity_fields)}"
    assert dataclasses.is_dataclass(target.options_class), f"{kind}: options_class is not a dataclass"


def test_only_a_kind_that_sends_no_ticket_text_declares_no_limits():
    without = [kind for kind in TARGET_MODULES if load_kind(kind).TARGET_CLASS.limits is None]
    assert without == ["forward"]


def test_a_target_without_limits_cannot_be_given_rendered_text():
    forward = build_target("fwd", MINIMAL_TARGET_BLOCKS["forward"], env=TARGET_ENV)
    alert = parse_alert(load_sample("testaction-metric-static-fired.json"))
    with pytest.raises(ValueError, match="'fwd' \\(forward\\) sends no ticket text"):
        render_incident(alert, target=forward, correlation_key="k", configuration_items=())


@dataclass(frozen=True)
class _FakeOptions:
    colour: str = "blue"


def _fake_kind_module(missing: str) -> types.ModuleType:
    facts: dict[str, Any] = {
        "kind": "fake",
        "limits": TextLimits(summary=10, description=100, note=100),
        "severity_fields": {},
        "options_class": _FakeOptions,
    }
    del facts[missing]
    module = types.ModuleType("tests.fake_kind")
    module.TARGET_CLASS = type("FakeKindTarget", (), facts)  # type: ignore[attr-defined]
    module.from_config = lambda name, cfg, env: module.TARGET_CLASS()  # type: ignore[attr-defined]
    return module


@pytest.mark.parametrize("missing", ["limits", "severity_fields", "options_class", "kind"])
def test_a_kind_module_that_does_not_declare_a_fact_is_refused_naming_the_kind_and_the_fact(monkeypatch, missing):
    monkeypatch.setitem(sys.modules, "tests.fake_kind", _fake_kind_module(missing))
    monkeypatch.setitem(TARGET_MODULES, "fake", "tests.fake_kind")
    with pytest.raises(TargetModuleError, match=f"target kind 'fake' \\(tests.fake_kind\\) does not declare {missing}"):
        build_target("f", {"kind": "fake"}, env={})


def test_a_kind_module_with_all_its_facts_is_built(monkeypatch):
    module = _fake_kind_module("kind")
    module.TARGET_CLASS.kind = "fake"
    monkeypatch.setitem(sys.modules, "tests.fake_kind", module)
    monkeypatch.setitem(TARGET_MODULES, "fake", "tests.fake_kind")
    assert isinstance(build_target("f", {"kind": "fake"}, env={}), module.TARGET_CLASS)
