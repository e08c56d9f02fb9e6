"""`make demo` stays true: the demo runs the relay end to end and exits 0 only when all went as shown."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from tests.relay_process import ROOT


def test_demo_accepts_the_samples_and_plays_one_alert_life(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RT_URL", "RT_TOKEN")}
    proc = subprocess.run([sys.executable, "-m", "devtools.demo"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Accepted 10 of 10 samples" in proc.stdout
    assert "10 answered 200 (already seen)" in proc.stdout
    assert "create   de300000-0000-4000-8000-00000000d3e0.2" in proc.stdout
    assert "6. Tickets opened (9)" in proc.stdout and "preview: DRY0000005" in proc.stdout
    assert re.search(r"preview: DRY\d+  4 alerts of rule demo-storm-cpu in rg-web", proc.stdout), "no storm parent"
    assert "4 notes on DRY0000003, not new tickets" in proc.stdout, "the demo does not explain the notes"


def test_demo_runs_against_the_targets_relay_config_names(tmp_path):
    calls = tmp_path / "mine.jsonl"
    config = tmp_path / "mine.yaml"
    config.write_text(f"targets:\n  mine:\n    kind: dry_run\n    path: {calls}\nroutes:\n  - target: mine\n")
    env = {**{k: v for k, v in os.environ.items() if k not in ("RT_URL", "RT_TOKEN")}, "RELAY_CONFIG": str(config)}
    proc = subprocess.run([sys.executable, "-m", "devtools.demo"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"incidents to your targets (RELAY_CONFIG={config})" in proc.stdout
    opened = [line for line in proc.stdout.splitlines() if line.startswith("   mine: DRY")]
    assert len(opened) == 5, proc.stdout
    made = [json.loads(line)["call"] for line in calls.read_text().splitlines()]
    assert made.count("create") == 5 and made.count("note") == 4, made


def test_demo_with_a_relay_config_the_relay_refuses_shows_why(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("targets:\n  mine:\n    kind: nosuchkind\nroutes:\n  - target: mine\n")
    env = {**os.environ, "RELAY_CONFIG": str(config)}
    proc = subprocess.run([sys.executable, "-m", "devtools.demo"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode != 0
    assert "relay exited with 2 before it was ready" in proc.stderr and "nosuchkind" in proc.stderr, proc.stderr
