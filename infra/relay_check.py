"""The relay's own verdict on the relay YAML a stack would mount, for `make plan` and the preview job.

The file is taken from the declared Container App (the `relay-config` secret that hosting.py mounts at
/etc/relay/relay.yaml), so what is checked is what the new revision would read. `relay check-config`
runs as a subprocess: infra imports nothing of the relay runtime (the import-linter contracts in
pyproject.toml), and the relay's validator stays the one judge of its own file.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.hosting import CONFIG_DIR, CONFIG_FILE, CONFIG_SECRET

REPO_ROOT = Path(__file__).resolve().parents[1]
CHECK_TIMEOUT_SECONDS = 120
_LINE_REFERENCE = re.compile(rf"^{re.escape(CONFIG_FILE)}:(\d+):")


@dataclass(frozen=True)
class Verdict:
    """What `relay check-config` said: `ok`, and its lines (file:line: key: message, or the summary)."""

    ok: bool
    lines: tuple[str, ...]


def mounted_config(container_app_inputs: Mapping[str, Any]) -> str:
    """The relay YAML in a declared Container App's inputs (wire form, as infra.plan records them)."""
    secrets = (container_app_inputs.get("configuration") or {}).get("secrets") or []
    found = [s.get("value") for s in secrets if s.get("name") == CONFIG_SECRET]
    if len(found) != 1 or not isinstance(found[0], str):
        raise LookupError(f"the Container App declares no secret {CONFIG_SECRET!r} with the relay YAML")
    return found[0]


def check(relay_yaml: str) -> Verdict:
    """Run `relay check-config` on the text, written as relay.yaml in a scratch directory, so that the
    relay's messages read `relay.yaml:<line>: <key>: <message>`. Only PATH and HOME are passed on:
    the check needs no credentials, and gets none."""
    with tempfile.TemporaryDirectory(prefix="relay-check-") as scratch:
        (Path(scratch) / CONFIG_FILE).write_text(relay_yaml)
        env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", scratch)}
        env["PYTHONPATH"] = str(REPO_ROOT)
        result = subprocess.run(
            [sys.executable, "-m", "relay", "check-config", CONFIG_FILE],
            cwd=scratch,
            env=env,
            capture_output=True,
            text=True,
            timeout=CHECK_TIMEOUT_SECONDS,
            check=False,
        )
    lines = tuple(line for line in (result.stdout + result.stderr).splitlines() if line.strip())
    if result.returncode not in (0, 1):  # 2: unreadable file; anything else: the relay did not run
        return Verdict(False, (f"`relay check-config` exited with {result.returncode}", *lines[-5:]))
    return Verdict(result.returncode == 0, lines)


def report(verdict: Verdict, relay_yaml: str) -> list[str]:
    """The verdict for a reader: the relay's lines, and under each file:line message the line it names."""
    if verdict.ok:
        return [f"relay check-config: {line}" for line in verdict.lines]
    source = relay_yaml.splitlines()
    out = [
        f"the relay refuses the {CONFIG_FILE} this stack would mount at {CONFIG_DIR}/{CONFIG_FILE} "
        "(rendered from secure-export:targets, routes and delivery); `relay check-config` says:"
    ]
    for line in verdict.lines:
        out.append(f"  {line}")
        reference = _LINE_REFERENCE.match(line)
        if reference and 0 < int(reference.group(1)) <= len(source):
            out.append(f"      {int(reference.group(1)):>4} | {source[int(reference.group(1)) - 1]}")
    return out
