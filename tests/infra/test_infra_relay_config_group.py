"""A route's storm grouping (`group:`) set in stack config reaches the rendered RELAY_CONFIG as written, and
the relay's own validator accepts it (or names the bad key at its line)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from infra import config, relay_config
from infra.plan import REPO_ROOT
from tests.infra.harness import stack_config, stack_value

GROUP = {"by": ["alert_rule", "resource_group"], "window_seconds": 600, "open_parent_after": 5,
         "children": "link", "max_children": 10}


def rendered_with(group: dict, tmp_path: Path) -> tuple[dict, subprocess.CompletedProcess]:
    routes = stack_value("dev", "routes")
    routes[0] = {**routes[0], "group": group}
    raw, secret_keys = stack_config("dev", routes=routes)
    cfg = config.parse(raw, stack="dev", secret_keys=secret_keys)
    text = relay_config.render(cfg.targets, cfg.routes, cfg.delivery)
    path = tmp_path / "relay.yaml"
    path.write_text(text)
    result = subprocess.run([sys.executable, "-m", "relay", "check-config", str(path)], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=60, check=False)
    return yaml.safe_load(text), result


def test_a_group_in_stack_config_is_rendered_and_accepted_by_the_relay(tmp_path):
    document, result = rendered_with(GROUP, tmp_path)
    assert document["routes"][0]["group"] == GROUP, "the route's group did not reach RELAY_CONFIG as written"
    assert result.returncode == 0, f"`relay check-config` rejects the rendered group:\n{result.stderr}"


def test_a_bad_group_key_in_stack_config_is_named_by_the_relay(tmp_path):
    _, result = rendered_with({**GROUP, "by": ["alert_rule", "rg"]}, tmp_path)
    assert result.returncode == 1
    assert "routes[0].group.by[1]: unknown group key 'rg'" in result.stderr, result.stderr
