"""`make demo` stays true: the demo runs the relay end to end and exits 0 only when all went as shown."""

from __future__ import annotations

import os
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
