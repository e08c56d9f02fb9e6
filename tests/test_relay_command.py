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


# -- one reading of RELAY_CONFIG and one opening of a store, shared by the operating commands -------------

REFUSED_CONFIG = "targets:\n  rt: {kind: nope}\nroutes: []\n"
SAMPLE_ALERT = ROOT / "tests" / "samples" / "testaction-metric-static-fired.json"


@pytest.mark.parametrize(("argv", "code", "ending"), [
    (["check-config", "{file}"], 1, "{file}: 2 problems"),
    (["check-targets", "{file}"], 2, "{file}: fix it first (relay check-config {file})"),
    (["route", "{file}", str(SAMPLE_ALERT)], 2, None),
    (["maintenance", "list", "--config", "{file}"], 1, None),
], ids=lambda v: " ".join(v[:2]) if isinstance(v, list) else None)
def test_a_refused_relay_config_lists_each_problem_at_its_line_then_the_commands_ending(tmp_path, capsys, argv,
                                                                                         code, ending):
    path = tmp_path / "relay.yaml"
    path.write_text(REFUSED_CONFIG)
    assert main([a.format(file=path) for a in argv]) == code
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith(f"{path}:2: targets.rt.kind: must be one of servicenow"), lines
    assert lines[1] == f"{path}:3: routes: must be a non-empty list of routes", lines
    assert lines[2:] == ([ending.format(file=path)] if ending else []), lines


@pytest.mark.parametrize("argv", [
    ["check-config", "{file}"], ["check-targets", "{file}"], ["route", "{file}", str(SAMPLE_ALERT)],
    ["maintenance", "list", "--config", "{file}"],
], ids=lambda v: " ".join(v[:2]))
def test_an_unreadable_relay_config_is_one_line_and_exits_2(tmp_path, capsys, argv):
    missing = tmp_path / "nope.yaml"
    assert main([a.format(file=missing) for a in argv]) == 2
    assert capsys.readouterr().err == f"relay: cannot read {missing}: No such file or directory\n"


def test_read_config_gives_the_config_or_the_exit_code_once_it_said_why(tmp_path, capsys):
    from relay.cli import read_config

    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("targets:\n  rt: {kind: dry_run}\nroutes:\n  - target: rt\n")
    bad.write_text(REFUSED_CONFIG)
    config = read_config(str(good), refused=1)
    assert not isinstance(config, int) and list(config.targets) == ["rt"]
    assert capsys.readouterr().err == ""
    counted: list[int] = []
    assert read_config(str(bad), refused=7, then=lambda n: counted.append(n) or "after") == 7
    assert counted == [2] and capsys.readouterr().err.splitlines()[-1] == "after"


def test_on_existing_store_runs_the_command_on_the_opened_store_and_returns_its_code(empty_store, capsys):
    from relay.cli import on_existing_store

    seen: list[int] = []

    async def command(store) -> int:  # type: ignore[no-untyped-def]
        seen.append(await store.pending())
        return 7

    assert on_existing_store(f"sqlite:///{empty_store}", command) == 7
    assert seen == [0] and capsys.readouterr().err == ""


@pytest.mark.parametrize(("url", "said"), [
    ("sqlite:///{tmp}/typo/relay.db", "relay: no store at {tmp}/typo/relay.db (from --store or RELAY_STORE): "
                                      "nothing was created; name the relay's store"),
    ("mysql://x", "relay: unsupported store 'mysql://x': use sqlite:///path/to/relay.db"),
])
def test_on_existing_store_without_a_store_exits_2_and_never_runs_the_command(tmp_path, capsys, url, said):
    from relay.cli import on_existing_store

    ran: list[object] = []

    async def command(store) -> int:  # type: ignore[no-untyped-def]
        ran.append(store)
        return 0

    assert on_existing_store(url.format(tmp=tmp_path), command) == 2
    assert capsys.readouterr().err.startswith(said.format(tmp=tmp_path))
    assert ran == [] and not (tmp_path / "typo").exists()


def test_on_existing_store_reports_a_store_that_fails_mid_command_in_one_line(empty_store, capsys):
    from relay.cli import on_existing_store
    from relay.store import StoreUnavailable


    async def command(store) -> int:  # type: ignore[no-untyped-def]
        raise StoreUnavailable("sqlite: disk I/O error")

    assert on_existing_store(f"sqlite:///{empty_store}", command) == 2
    assert capsys.readouterr().err == "relay: store unavailable: sqlite: disk I/O error\n"
