"""The RELAY_CONFIG files the end-to-end tests give a relay in front of Request Tracker, filled in as
`relay_for_rt` fills them: each is one the relay accepts, with every target speaking to that RT. Checked
without RT, so that a broken template fails here in a second rather than after RT has started."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.delivery.config import parse_config
from tests.e2e import test_noise_request_tracker as noise
from tests.e2e import test_request_tracker_e2e as lifecycle
from tests.e2e import test_request_tracker_storm as storm
from tests.e2e.rt_relay import filled_in
from tests.rt_server import RunningRT

RT = RunningRT(url="http://127.0.0.1:8089", token="1-14-00000000000000000000000000000000",
               directory=Path("/nonexistent"), process=None)  # type: ignore[arg-type]


@pytest.mark.parametrize(("config", "fill"), [
    (lifecycle.RELAY_CONFIG, {}),
    (storm.STORM_CONFIG, {}),
    (noise.CONFIG, {"start": "2026-12-24T20:00:00+00:00", "end": "2026-12-24T21:00:00+00:00", "hold": 90}),
], ids=["lifecycle", "storm", "noise"])
def test_each_config_filled_in_for_an_rt_is_one_the_relay_accepts(config, fill):
    parsed = parse_config(filled_in(config, RT, **fill), source="relay.yaml", check_target_options=True)
    assert parsed.targets, "no target"
    for name, target in parsed.targets.items():
        assert target.kind == "request_tracker", name
        assert target.block["base_url"] == RT.url and target.block["queue"] == RT.queue, target.block
        assert target.block["custom_field"] == RT.custom_field and target.block["asset_catalog"] == RT.catalog
