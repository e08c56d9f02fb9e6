"""`relay-dev issuer` and `relay-dev send-alert`: the console script, run for real against `relay serve`
(dry-run target), and the alert preparation and its errors unit by unit."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devtools.cli import DEFAULT_SAMPLE, UsageError, alerts_url, load_alert, main, prepare, sample_names
from relay.alerts import parse_alert
from tests.relay_process import ROOT, RelayProcess, free_port

RELAY_DEV = Path(sys.executable).parent / "relay-dev"
NOW = datetime(2026, 5, 1, 12, 30, 0, tzinfo=UTC)


def test_the_samples_are_the_common_schema_ones():
    names = sample_names()
    assert DEFAULT_SAMPLE in names and "metric-static-resolved" in names
    assert not any(n.startswith(("noncommon-", "context-")) for n in names), names


@pytest.mark.parametrize("name", sample_names())
def test_every_sample_prepared_is_an_alert_the_relay_parses(name):
    doc, guid = prepare(load_alert(name, None), "Fired", None, NOW)
    alert = parse_alert(doc)
    assert alert.essentials.alert_id.endswith("/" + guid) and alert.condition == "Fired"


@given(condition=st.sampled_from([None, "Fired", "Resolved"]), reuse=st.booleans())
def test_prepare_gives_a_fresh_id_unless_told_and_sets_the_condition(condition, reuse):
    original = load_alert("metric-static-resolved", None)
    given_guid = str(uuid.uuid4()) if reuse else None
    doc, guid = prepare(original, condition, given_guid, NOW)
    ess, before = doc["data"]["essentials"], original["data"]["essentials"]
    assert guid == given_guid if reuse else guid != before["alertId"].rsplit("/", 1)[-1]
    assert ess["alertId"] == before["alertId"].rsplit("/", 1)[0] + "/" + guid
    assert ess["firedDateTime"] == before["firedDateTime"], "the episode changed: a Resolved would not close it"
    if condition == "Resolved":
        assert ess["monitorCondition"] == "Resolved" and ess["resolvedDateTime"] == "2026-05-01T12:30:00.0000000Z"
    elif condition == "Fired":
        assert ess["monitorCondition"] == "Fired" and "resolvedDateTime" not in ess
    else:
        assert ess["monitorCondition"] == before["monitorCondition"]
    assert original["data"]["essentials"] == before, "prepare changed its input"


def test_two_sends_get_two_ids():
    doc = load_alert(None, None)
    assert prepare(doc, None, None, NOW)[1] != prepare(doc, None, None, NOW)[1]


@pytest.mark.parametrize("sample,file,content,message", [
    ("no-such-sample", None, None, "no common-schema sample named 'no-such-sample'; samples: "),
    ("noncommon-metric-static", None, None, "no common-schema sample named 'noncommon-metric-static'"),
    (None, "missing.json", None, "cannot read"),
    (None, "bad.json", "{not json", "is not JSON"),
    (None, "other.json", '{"data": {"x": 1}}', "has no data.essentials"),
])
def test_bad_alert_choices_are_named(tmp_path, sample, file, content, message):
    path = None
    if file is not None:
        path = tmp_path / file
        if content is not None:
            path.write_text(content)
    with pytest.raises(UsageError, match=re.escape(message)):
        load_alert(sample, str(path) if path else None)


@pytest.mark.parametrize("url,expected", [
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080/alerts"),
    ("http://127.0.0.1:8080/", "http://127.0.0.1:8080/alerts"),
    ("http://127.0.0.1:8080/alerts", "http://127.0.0.1:8080/alerts"),
    ("https://relay.example/custom/path", "https://relay.example/custom/path"),
])
def test_alerts_url(url, expected):
    assert alerts_url(url) == expected


def test_send_alert_without_an_issuer_says_how_to_start_one(capsys):
    port = free_port()
    code = main(["send-alert", "--url", f"http://127.0.0.1:{free_port()}", "--issuer", f"http://127.0.0.1:{port}"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"relay-dev: no dev issuer at http://127.0.0.1:{port}") and "relay-dev issuer" in err


def start_issuer(port: int) -> tuple[subprocess.Popen, dict[str, str]]:
    proc = subprocess.Popen([str(RELAY_DEV), "issuer", "--port", str(port)], stdout=subprocess.PIPE, text=True,
                            cwd=ROOT)
    env: dict[str, str] = {}
    token = ""
    deadline = time.monotonic() + 30
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("export "):
            name, _, value = line[len("export "):].strip().partition("=")
            env[name] = value.strip("'")
        elif line.count(".") == 2 and not line.startswith("#"):
            token = line.strip()
        if line.startswith("# Ctrl-C"):
            return proc, {**env, "TOKEN": token}
    proc.kill()
    raise AssertionError(f"relay-dev issuer did not start: {env}")


def test_issuer_and_send_alert_drive_a_real_relay(tmp_path):
    assert RELAY_DEV.exists(), "the relay-dev console script is not installed (pip install -e .[dev])"
    port = free_port()
    issuer, printed = start_issuer(port)
    relay = None
    try:
        token = printed.pop("TOKEN")
        assert set(printed) >= {"RELAY_TENANT_ID", "RELAY_AUDIENCES", "RELAY_OPENID_CONFIG_URL"}, printed
        assert printed["RELAY_OPENID_CONFIG_URL"].startswith(f"http://127.0.0.1:{port}/"), printed
        assert token, "the issuer printed no token"
        calls = tmp_path / "calls.jsonl"
        config = tmp_path / "relay.yaml"
        config.write_text(f"targets:\n  t:\n    kind: dry_run\n    path: {calls}\nroutes:\n  - target: t\n"
                          "delivery:\n  poll_seconds: 0.2\n")
        relay = RelayProcess({**printed, "RELAY_STORE": f"sqlite:///{tmp_path / 'relay.db'}",
                              "RELAY_CONFIG": str(config)}, tmp_path / "relay.log").start()
        issuer_url = f"http://127.0.0.1:{port}"

        def send(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([str(RELAY_DEV), "send-alert", "--url", relay.url, "--issuer", issuer_url, *args],
                                  capture_output=True, text=True, timeout=60, cwd=ROOT)

        fired = send("--sample", "testaction-metric-static-fired")
        assert fired.returncode == 0, fired.stdout + fired.stderr
        guid = re.search(r"\(alert ([0-9a-f-]{36})\)", fired.stdout).group(1)
        assert re.search(r'^202 \{"status": "accepted", "key": "[0-9a-f]{64}"\}$', fired.stdout, re.MULTILINE), \
            fired.stdout
        resolve_hint = re.search(r"^resolve it with: (.*)$", fired.stdout, re.MULTILINE).group(1)
        assert f"--alert-id {guid} --condition Resolved" in resolve_hint

        resolved = send("--sample", "testaction-metric-static-fired", "--alert-id", guid, "--condition", "Resolved")
        assert resolved.returncode == 0 and "\n202 " in resolved.stdout, resolved.stdout + resolved.stderr

        with_token = subprocess.run([str(RELAY_DEV), "send-alert", "--url", relay.url + "/alerts", "--token", token],
                                    capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert with_token.returncode == 0 and "\n202 " in with_token.stdout, with_token.stdout + with_token.stderr

        minted = subprocess.run([str(RELAY_DEV), "token", "--issuer", issuer_url, "--token-version", "1.0"],
                                capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert minted.returncode == 0 and minted.stdout.count(".") == 2, minted.stdout + minted.stderr
        v1 = subprocess.run([str(RELAY_DEV), "send-alert", "--url", relay.url, "--token", minted.stdout.strip()],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert v1.returncode == 0 and "\n202 " in v1.stdout, v1.stdout + v1.stderr

        bad = subprocess.run([str(RELAY_DEV), "send-alert", "--url", relay.url, "--token", token + "x"],
                             capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert bad.returncode == 1 and '\n401 {"error": "invalid_token"}' in bad.stdout, bad.stdout

        deadline = time.monotonic() + 30
        made: list[tuple[str, str]] = []
        while time.monotonic() < deadline:
            if calls.exists():
                lines = calls.read_text().splitlines()
                made = [(c["call"], c.get("correlation_key", "")) for c in map(json.loads, lines)]
                if ("resolve", guid) in made:
                    break
            time.sleep(0.2)
        assert ("create", guid) in made and ("resolve", guid) in made, made
    finally:
        if relay is not None:
            relay.stop()
        issuer.terminate()
        issuer.wait(10)


def test_issuer_on_a_busy_port_is_one_line():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = subprocess.run([str(RELAY_DEV), "issuer", "--port", str(port)], capture_output=True, text=True,
                              timeout=30, env={**os.environ}, cwd=ROOT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"relay-dev: cannot listen on 127.0.0.1:{port}"), proc.stderr
