"""The `relay` command's surface: --version, `serve --help` listing the environment, and start-up errors
that are one line, never a traceback."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from importlib import metadata

import pytest

from devtools.dev_issuer import DevIssuer
from relay.cli import main
from relay.settings import ENVIRONMENT
from tests.relay_process import ROOT, free_port


def relay(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relay", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def test_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"relay (secure-export) {metadata.version('secure-export')}"


def test_serve_help_lists_every_environment_variable_with_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    for variable in ENVIRONMENT:
        assert re.search(rf"^  {variable.name}\s", out, re.MULTILINE), f"{variable.name} missing from serve --help"
        assert f"default: {variable.default}" in out, f"{variable.name}'s default missing from serve --help"


def test_the_readme_configuration_table_names_exactly_the_variables_the_relay_reads():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| `RELAY_TENANT_ID`"):].split("\n\n", 1)[0]
    documented = set(re.findall(r"`(RELAY_[A-Z_]+)`", table))
    assert documented == {v.name for v in ENVIRONMENT}, documented ^ {v.name for v in ENVIRONMENT}


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_a_bad_log_level_is_one_line():
    env = {**DevIssuer().relay_env(), "RELAY_LOG_LEVEL": "LOUD", "PATH": "/usr/bin:/bin"}
    line = one_line_error(relay("serve", env=env))
    assert line.startswith("relay: configuration error: RELAY_LOG_LEVEL must be one of DEBUG, INFO"), line


def test_a_bad_log_format_is_one_line():
    env = {**DevIssuer().relay_env(), "RELAY_LOG_FORMAT": "xml", "PATH": "/usr/bin:/bin"}
    line = one_line_error(relay("serve", env=env))
    assert "RELAY_LOG_FORMAT must be json or text (got 'xml')" in line, line


def test_a_missing_relay_config_file_is_one_line(tmp_path):
    missing = tmp_path / "nope.yaml"
    env = {**DevIssuer().relay_env(), "RELAY_CONFIG": str(missing), "PATH": "/usr/bin:/bin",
           "RELAY_STORE": f"sqlite:///{tmp_path / 'relay.db'}", "RELAY_PORT": str(free_port()),
           "RELAY_OPENID_CONFIG_URL": "http://127.0.0.1:9/{tenant}/v2.0/.well-known/openid-configuration"}
    line = one_line_error(relay("serve", env=env))
    assert line == f"relay: configuration error: cannot read RELAY_CONFIG {missing}: No such file or directory", line


def test_on_a_terminal_the_log_is_text(tmp_path):
    """(Elsewhere it is JSON: tests/test_json_logs.py runs a relay whose log is a file, with no format set.)"""
    issuer = DevIssuer()
    with issuer.serving_in_thread():
        env = {**os.environ, **issuer.relay_env(), "RELAY_STORE": f"sqlite:///{tmp_path / 'relay.db'}",
               "RELAY_HOST": "127.0.0.1", "RELAY_PORT": str(free_port()), "RELAY_LOG_LEVEL": "INFO"}
        env.pop("RELAY_LOG_FORMAT", None)
        leader, follower = pty.openpty()
        proc = subprocess.Popen([sys.executable, "-m", "relay", "serve"], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                stdout=follower, stderr=follower)
        os.close(follower)
        seen = b""
        try:
            deadline = time.monotonic() + 30
            while b"relay listening on" not in seen and time.monotonic() < deadline:
                ready, _, _ = select.select([leader], [], [], 0.5)
                if ready:
                    try:
                        seen += os.read(leader, 65536)
                    except OSError:
                        break
        finally:
            proc.terminate()
            proc.wait(30)
            os.close(leader)
    lines = [line for line in seen.decode(errors="replace").splitlines() if line.strip()]
    listening = [line for line in lines if "relay listening on" in line]
    assert listening, lines
    assert not listening[0].startswith("{") and " INFO relay.app relay listening on " in listening[0], listening
