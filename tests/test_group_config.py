"""A route's `group:` in RELAY_CONFIG: parsed into a GroupSpec, and every mistake reported by `relay check-config`
with its file:line and dotted key."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.cli import main
from relay.delivery.config import parse_config
from relay.delivery.grouping import GroupSpec
from relay.schema import GroupChildren
from tests.test_check_config import problems

HEAD = """\
targets:
  snow:
    kind: servicenow
    base_url: https://contoso.service-now.com
    auth: {type: basic, username: svc, password_env: SNOW_PASSWORD}
  rt:
    kind: request_tracker
    base_url: https://rt.example.com
    auth: {type: token, token_env: RT_TOKEN}
  pd:
    kind: pagerduty
    routing_key_env: PD_KEY
  fwd:
    kind: forward
    base_url: https://hook.example.com/alerts
routes:
"""


def route(body: str, target: str = "snow") -> str:
    return HEAD + f"  - target: {target}\n" + "".join(f"    {line}\n" for line in body.splitlines())


def test_a_group_is_read_with_its_defaults():
    config = parse_config(route("group: {}"), check_target_options=True)
    assert config.routes[0].group == GroupSpec()
    assert parse_config(route("on_repeat: note"), check_target_options=True).routes[0].group is None


def test_every_group_key_is_read():
    config = parse_config(route(
        "group:\n  by: [alert_rule, resource_group, subscription]\n  window_seconds: 600\n"
        "  open_parent_after: 10\n  children: link\n  max_children: 7"), check_target_options=True)
    assert config.routes[0].group == GroupSpec(by=("alert_rule", "resource_group", "subscription"),
                                               window_seconds=600, open_parent_after=10,
                                               children=GroupChildren.LINK, max_children=7)


@pytest.mark.parametrize(("body", "target", "expected"), [
    ("group:\n  by: [alert_rule, resource_grp]", "snow",
     "FILE:19: routes[0].group.by[1]: unknown group key 'resource_grp'; expected one of alert_rule, resource_group"),
    ("group:\n  by: []", "snow", "FILE:19: routes[0].group.by: must be a non-empty list of alert_rule"),
    ("group:\n  by: [alert_rule, alert_rule]", "snow", "FILE:19: routes[0].group.by[1]: 'alert_rule' is listed"),
    ("group:\n  window: 60", "snow", "FILE:19: routes[0].group.window: unknown key; expected one of by, "
     "window_seconds, open_parent_after, children, max_children"),
    ("group:\n  window_seconds: 5", "snow", "FILE:19: routes[0].group.window_seconds: must be a number from 60 to"),
    ("group:\n  open_parent_after: 0", "snow", "FILE:19: routes[0].group.open_parent_after: must be a whole number "
     "from 1 to 100 (got 0)"),
    ("group:\n  open_parent_after: 2.5", "snow", "FILE:19: routes[0].group.open_parent_after: must be a whole"),
    ("group:\n  children: ticket", "snow", "FILE:19: routes[0].group.children: must be one of note, link"),
    ("group:\n  max_children: 3", "snow", "FILE:19: routes[0].group.max_children: applies only with children: link"),
    ("group: [alert_rule]", "snow", "FILE:18: routes[0].group: must be a mapping (got a list)"),
    ("incident_per: configuration_item\ngroup: {}", "snow", "FILE:19: routes[0].group: needs incident_per: alert"),
    ("group: {}", "pd", "FILE:18: routes[0].group: cannot apply to target 'pd' (pagerduty): a parent reopens"),
    ("group: {}", "fwd", "FILE:18: routes[0].group: cannot apply to target 'fwd' (forward)"),
])
def test_group_mistakes_are_reported_with_line_and_key(body, target, expected):
    found = problems(route(body, target))
    assert any(p.startswith(expected) for p in found), f"expected {expected!r} in {found}"


@pytest.mark.parametrize("target", ["snow", "rt"])
def test_the_targets_that_link_accept_linked_children(target):
    assert parse_config(route("group: {children: link}", target), check_target_options=True).routes[0].group


def test_check_config_exits_1_naming_the_unknown_group_key(tmp_path: Path, capsys):
    path = tmp_path / "relay.yaml"
    path.write_text(route("group:\n  by: [alert_rule, resourcegroup]"))
    assert main(["check-config", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:19: routes[0].group.by[1]: unknown group key 'resourcegroup'" in err


def test_linked_children_are_refused_for_a_kind_that_cannot_link():
    text = """\
targets:
  helix:
    kind: bmc_helix
    base_url: https://helix.example.com
    auth: {type: ar_jwt, username: relay, password_env: HELIX_PASSWORD}
routes:
  - target: helix
    group: {children: link}
"""
    assert problems(text) == ["FILE:8: routes[0].group.children: link cannot apply to target 'helix' (bmc_helix): "
                              "it cannot link tickets; use children: note (docs/targets.md)"]
    assert parse_config(text.replace("link}", "note}"), check_target_options=True).routes[0].group
