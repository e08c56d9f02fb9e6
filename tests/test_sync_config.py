"""RELAY_CONFIG's two-way sync settings: a route's `sync:` (off by default) and the top-level `sync:` poll
interval, as `relay check-config` checks them."""

from __future__ import annotations

import pytest

from relay.delivery.config import ConfigError, parse_config
from relay.delivery.routing import RouteSync
from relay.schema import SYNC

TARGETS = """\
targets:
  rt:
    kind: request_tracker
    base_url: https://rt.example.com
    auth: {type: token, token_env: RT_TOKEN}
  pd:
    kind: pagerduty
    routing_key_env: PD_KEY
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config(text, source="FILE", check_target_options=True)
    return [f"{p.path}: {p.message}" for p in err.value.problems]


def test_sync_is_off_by_default_and_the_poll_runs_every_minute():
    config = parse_config(TARGETS + "routes:\n  - target: rt\n")
    assert config.routes[0].sync == RouteSync(close_alert=False, acknowledge_on_progress=False)
    assert not config.routes[0].sync.enabled
    assert config.sync.interval_seconds == SYNC["interval_seconds"].default == 60
    assert config.syncing_targets() == ()


def test_a_route_enables_closing_and_acknowledging_and_sets_the_interval():
    config = parse_config(TARGETS + "routes:\n  - target: rt\n"
                          "    sync: {close_alert: true, acknowledge_on_progress: true}\n"
                          "sync: {interval_seconds: 30}\n")
    assert config.routes[0].sync == RouteSync(close_alert=True, acknowledge_on_progress=True)
    assert config.sync.interval_seconds == 30
    assert config.syncing_targets() == ("rt",)


def test_sync_on_a_target_that_cannot_say_what_changed_is_refused_naming_it():
    found = problems(TARGETS + "routes:\n  - target: pd\n    sync: {close_alert: true}\n")
    assert len(found) == 1, found
    assert found[0].startswith("routes[0].sync: cannot apply to target 'pd' (pagerduty)")
    assert "request_tracker" in found[0]


def test_sync_switched_off_on_such_a_target_is_accepted():
    parse_config(TARGETS + "routes:\n  - target: pd\n    sync: {close_alert: false}\n", check_target_options=True)


@pytest.mark.parametrize(("section", "expected"), [
    ("routes:\n  - target: rt\n    sync: {close_alert: yes please}\n",
     "routes[0].sync.close_alert: must be true or false"),
    ("routes:\n  - target: rt\n    sync: {close: true}\n", "routes[0].sync.close: unknown key"),
    ("routes:\n  - target: rt\n    sync: true\n", "routes[0].sync: must be a mapping"),
    ("routes:\n  - target: rt\n    incident_per: configuration_item\n    sync: {close_alert: true}\n",
     "routes[0].sync: needs incident_per: alert"),
    ("routes:\n  - target: rt\nsync: {interval_seconds: 1}\n", "sync.interval_seconds: must be a number from 10"),
    ("routes:\n  - target: rt\nsync: {every: 60}\n", "sync.every: unknown key"),
])
def test_bad_sync_settings_name_the_key(section, expected):
    found = problems(TARGETS + section)
    assert any(p.startswith(expected) for p in found), found
