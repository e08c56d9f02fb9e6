"""The benchmark code's own pieces that can go wrong quietly: the page rendered from the committed figures,
and the memory figure's sum over a process's helpers. (The benchmarks themselves run under `make bench`,
never in the tests: they measure, they assert nothing.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.harness import descendants, rss_mib
from bench.run import RAW, render

ROOT = Path(__file__).resolve().parents[1]


def test_the_committed_figures_render_to_the_committed_page():
    """docs/benchmarks.md is what `bench.run` renders from docs/benchmarks.json (nobody edits figures by
    hand), and every section of the last run made it onto the page."""
    raw = json.loads(RAW.read_text())
    page = render(raw, raw["when"], raw["machine"])
    assert page == (ROOT / "docs" / "benchmarks.md").read_text()
    for heading in ("## 1. Intake", "## 2. Delivery", "## 3. Backlog", "## 3c. Storm", "## 5. Memory",
                    "## 6. Azure Storage operations per event", "## 7. Reconciliation"):
        assert heading in page


def test_the_resident_set_counts_a_process_and_its_helpers():
    # A parent and a child that each hold 64 MiB: the figure is both, not the parent's alone.
    hold = "import sys, time; block = bytearray(64 << 20); block[::4096] = b'x' * len(block[::4096]);"
    script = hold + ("import subprocess; c = subprocess.Popen([sys.executable, '-c', %r]);"
                     "print(c.pid, flush=True); time.sleep(60)") % (hold + "print('up', flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = None
    try:
        child = int(parent.stdout.readline())
        assert parent.stdout.readline().strip() == "up"
        time.sleep(0.2)
        assert child in descendants(parent.pid)
        assert rss_mib(parent.pid) >= 2 * 64
    finally:
        if child is not None:
            os.kill(child, signal.SIGKILL)
        parent.kill()
        parent.wait(10)
