"""Issue 15 in the stack: `secure-export:maintenance` and a route's `flapping` reach the relay's config
as they are, and the relay's own check accepts the rendered file (or names what is wrong)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infra import config, relay_config
from infra.plan import REPO_ROOT
from tests.infra.test_infra_config import minimal_raw

WINDOWS = [
    {"name": "sunday-patching", "scope": {"resource_group": "rg-prod-*"},
     "schedule": {"cron": "0 2 * * SUN", "duration_minutes": 180, "time_zone": "Europe/Berlin"}, "mode": "note"},
    {"name": "freeze", "schedule": {"start": "2026-12-24T22:00", "end": "2026-12-26T06:00"}},
]
FLAPPING = {"window_seconds": 600, "transitions": 4, "hold_resolve_seconds": 300}


def render(**project) -> str:
    cfg = config.parse(minimal_raw(**project), stack="qa")
    return relay_config.render(cfg.targets, cfg.routes, cfg.delivery, maintenance=cfg.maintenance)


def check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "relay.yaml"
    path.write_text(text)
    return subprocess.run([sys.executable, "-m", "relay", "check-config", str(path)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)


def test_maintenance_and_flapping_are_rendered_as_the_stack_sets_them(tmp_path: Path) -> None:
    text = render(maintenance=WINDOWS, routes=[{"target": "audit", "flapping": FLAPPING}])
    document = yaml.safe_load(text)
    assert document["maintenance"] == WINDOWS
    assert document["routes"][0]["flapping"] == FLAPPING
    result = check(tmp_path, text)
    assert result.returncode == 0, result.stderr
    assert "2 maintenance window(s)" in result.stdout


def test_no_maintenance_in_the_stack_renders_none() -> None:
    assert "maintenance" not in yaml.safe_load(render())


def test_a_bad_window_set_in_the_stack_is_named_by_the_relays_check(tmp_path: Path) -> None:
    bad = [{"name": "w", "schedule": {"start": "2026-12-25T06:00", "end": "2026-12-24T22:00"}}]
    result = check(tmp_path, render(maintenance=bad))
    assert result.returncode == 1
    assert "maintenance[0].schedule.end: ends before it starts" in result.stderr


def test_maintenance_must_be_a_list_of_windows() -> None:
    with pytest.raises(config.ConfigError, match="secure-export:maintenance"):
        config.parse(minimal_raw(maintenance={"name": "w"}), stack="qa")
