"""openapi.yaml describes the relay as it is: every route, and every status /alerts can answer."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from relay.app import create_app
from relay.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SPEC = yaml.safe_load((ROOT / "openapi.yaml").read_text())


def test_every_route_is_documented():
    app = create_app(Settings.from_env({"RELAY_TENANT_ID": "11111111-2222-4333-8444-555555555555",
                                        "RELAY_AUDIENCES": "api://x"}))
    routes = {(r.method.lower(), r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"}
    documented = {(m, p) for p, ops in SPEC["paths"].items() for m in ops}
    assert routes == documented


def test_every_status_the_intake_answers_is_documented():
    source = (ROOT / "relay" / "intake" / "handler.py").read_text() + (ROOT / "relay" / "app.py").read_text()
    answered = {int(s) for s in re.findall(r"_json\(\s*(\d{3})", source)} | {202, 200, 503}
    documented = {int(s) for s in SPEC["paths"]["/alerts"]["post"]["responses"]}
    assert answered <= documented, f"undocumented statuses: {answered - documented}"


def test_metrics_are_not_part_of_the_public_api():
    assert "/metrics" not in SPEC["paths"], "/metrics is served on the metrics port, never the public one"
    assert "RELAY_METRICS_PORT" in SPEC["info"]["description"]
