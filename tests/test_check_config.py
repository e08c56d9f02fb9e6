"""`relay check-config FILE`: every problem reported with its line and dotted key, and the right exit code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from relay.cli import main
from relay.delivery.config import ConfigError, parse_config
from relay.schema import DELIVERY, DELIVERY_DERIVED

DOCS = Path(__file__).resolve().parent.parent / "docs"

GOOD = """\
targets:
  snow:
    kind: servicenow
    base_url: https://contoso.service-now.com
    auth: {type: basic, username: svc, password_env: SNOW_PASSWORD}
routes:
  - target: snow
"""


def check(tmp_path: Path, text: str, capsys) -> tuple[int, list[str], str]:
    path = tmp_path / "relay.yaml"
    path.write_text(text)
    code = main(["check-config", str(path)])
    out, err = capsys.readouterr()
    return code, [line.replace(str(path), "FILE") for line in err.splitlines()], out


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="FILE", check_target_options=True)
    return [p.format("FILE") for p in info.value.problems]


def test_valid_file_exits_0_and_names_what_it_found(tmp_path, capsys):
    code, err, out = check(tmp_path, GOOD, capsys)
    assert code == 0, err
    assert "OK: 1 target(s): snow (servicenow); 1 route(s)" in out


def test_documented_example_and_error_output_are_what_the_tool_does(tmp_path, capsys):
    text = (DOCS / "configuration.md").read_text()
    example = re.search(r"```yaml\n(.*?)```", text, re.DOTALL).group(1)
    assert check(tmp_path, example, capsys)[0] == 0


def test_inline_secret_is_refused_at_its_line(tmp_path, capsys):
    text = GOOD.replace("password_env: SNOW_PASSWORD", "password: hunter2")
    code, err, _ = check(tmp_path, text, capsys)
    assert code == 1
    assert err[0].startswith("FILE:5: targets.snow.auth.password: inline secrets are not allowed")
    assert "hunter2" not in "\n".join(err), "the secret itself must not be echoed"
    assert err[-1] == "FILE: 1 problem"


def test_inline_secret_outside_auth_is_refused_too():
    text = GOOD.replace("    auth:", "    api_key: abc\n    auth:")
    assert any(p.startswith("FILE:5: targets.snow.api_key: inline secrets") for p in problems(text))


def test_every_problem_is_listed_with_its_line_and_key():
    text = """\
targets:
  snow:
    kind: servicenow
    base_url: https://contoso.service-now.com
    auth: {type: basic, username: svc, password_env: SNOW_PASSWORD}
    max_concurrency: 0
  fwd:
    kind: forward
    base_url: http://example.com/hook
  odd:
    kind: jira
routes:
  - target: snow
    on_refire: renew
    on_repeat: shout
    incident_per: rule
    summary: "{{ essentials.alertRule }"
    fields: {assignment_group: [a, b]}
  - target: nowhere
    match: {severity: [Sev9], colour: red}
  - target: snow
    target: fwd
    continue: maybe
delivery: {max_attempts: 0, sleep: 1}
"""
    assert problems(text) == [
        "FILE:6: targets.snow.max_concurrency: must be a whole number from 1 to 256 (got 0)",
        "FILE:9: targets.fwd.base_url: must use https: the alert and credentials travel in it "
        "(plain http is allowed only on loopback, got http://example.com/...)",
        "FILE:11: targets.odd.kind: must be one of servicenow, bmc_helix, request_tracker, "
        "jira_service_management, pagerduty, forward, dry_run (got 'jira')",
        "FILE:14: routes[0].on_refire: must be one of new, reopen, ignore (got 'renew')",
        "FILE:15: routes[0].on_repeat: must be one of note, nothing (got 'shout')",
        "FILE:16: routes[0].incident_per: must be one of alert, configuration_item (got 'rule')",
        "FILE:17: routes[0].summary: template syntax error on its line 1: unexpected '}'",
        "FILE:18: routes[0].fields.assignment_group: must be a string, number or boolean (got a list)",
        "FILE:19: routes[1].target: no target named 'nowhere' (targets: snow, fwd)",
        "FILE:20: routes[1].match.colour: unknown key; expected one of severity, monitoring_service, "
        "alert_rule, signal_type, subscription, resource_group, custom_properties",
        "FILE:20: routes[1].match.severity: 'Sev9' is not a severity; use Sev0, Sev1, Sev2, Sev3, Sev4",
        "FILE:22: routes[2].target: duplicate key",
        "FILE:23: routes[2].continue: must be true or false",
        "FILE:24: delivery.max_attempts: must be a whole number from 1 to 1000 (got 0)",
        "FILE:24: delivery.sleep: unknown key; expected one of " + ", ".join([*DELIVERY, *DELIVERY_DERIVED]),
    ]


def test_adopt_after_seconds_is_checked_against_its_bounds_and_kept_when_valid():
    assert problems(GOOD + "delivery: {adopt_after_seconds: 0}\n") == [
        f"FILE:{GOOD.count(chr(10)) + 1}: delivery.adopt_after_seconds: must be a number from 0.001 to 86400 "
        "(got 0)"
    ]
    config = parse_config(GOOD + "delivery: {adopt_after_seconds: 45}\n")
    assert config.delivery.adopt_after_seconds == 45
    assert parse_config(GOOD).delivery.adopt_after_seconds is None, "absent: derived per target"


def test_a_target_modules_own_complaint_points_at_its_key():
    text = GOOD.replace("    auth: {type: basic, username: svc, password_env: SNOW_PASSWORD}\n",
                        "    auth: {type: basic, username: svc, password_env: SNOW_PASSWORD}\n    close_kode: x\n")
    [problem] = problems(text)
    assert problem.startswith("FILE:6: targets.snow.close_kode: is not a known option")


def test_a_target_block_with_two_independent_mistakes_reports_both_each_at_its_own_line():
    text = GOOD.replace("    auth: {type: basic, username: svc, password_env: SNOW_PASSWORD}\n",
                        "    ci_binding: always\n"
                        "    auth: {type: basic, username: svc, password_env: SNOW_PASSWORD}\n"
                        "    close_kode: x\n")
    found = problems(text)
    assert len(found) == 2, found
    assert found[0] == ("FILE:5: targets.snow.ci_binding: must be one of bind_if_found, create_if_missing, none "
                        "(got 'always')")
    assert found[1].startswith("FILE:7: targets.snow.close_kode: is not a known option")


def test_a_key_the_core_check_reported_is_not_reported_again_but_the_blocks_other_keys_are():
    text = GOOD.replace("    auth: {type: basic, username: svc, password_env: SNOW_PASSWORD}\n",
                        "    auth: {type: basic, username: svc, password_env: SNOW_PASSWORD}\n"
                        "    timeout_seconds: 0\n    close_kode: x\n")
    found = problems(text)
    assert [p.split(": ")[1] for p in found] == ["targets.snow.timeout_seconds", "targets.snow.close_kode"], found
    assert found[0] == "FILE:6: targets.snow.timeout_seconds: must be a number from 0.1 to 600 (got 0)"


def test_target_check_does_not_need_the_secrets_to_be_set(monkeypatch):
    monkeypatch.delenv("SNOW_PASSWORD", raising=False)
    assert parse_config(GOOD, check_target_options=True).targets["snow"].kind == "servicenow"


@pytest.mark.parametrize(("text", "expected"), [
    ("targets: [\n", "FILE:2: (document): not valid YAML"),
    ("", "FILE: (document): the file is empty"),
    ("- a\n- b\n", "FILE:1: (document): must be a mapping (got a list)"),
    ("routes:\n  - target: x\n", "FILE:1: targets: is required"),
    ("targets: {d: {kind: dry_run}}\nroutes: []\n", "FILE:2: routes: must be a non-empty list of routes"),
    ("targets: {d: {kind: dry_run}}\nroutes:\n  - {target: d}\nextra: 1\n", "FILE:4: extra: unknown key"),
])
def test_document_level_mistakes_are_explained(text, expected):
    assert problems(text)[0].startswith(expected)


def test_unreadable_file_exits_2(tmp_path, capsys):
    assert main(["check-config", str(tmp_path / "missing.yaml")]) == 2
    assert "cannot read" in capsys.readouterr().err


def serve_env(tmp_path, monkeypatch, config_text: str) -> None:
    path = tmp_path / "relay.yaml"
    path.write_text(config_text)
    monkeypatch.setenv("RELAY_TENANT_ID", "11111111-2222-4333-8444-555555555555")
    monkeypatch.setenv("RELAY_AUDIENCES", "api://relay")
    monkeypatch.setenv("RELAY_STORE", f"sqlite:///{tmp_path / 'relay.db'}")
    monkeypatch.setenv("RELAY_CONFIG", str(path))


def test_serve_refuses_to_start_with_a_bad_config_and_says_where(tmp_path, monkeypatch, capsys):
    serve_env(tmp_path, monkeypatch, GOOD.replace("target: snow", "target: snwo"))
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "relay: configuration error:" in err and ":7: routes[0].target: no target named 'snwo'" in err


def test_serve_refuses_to_start_when_a_named_secret_is_not_set(tmp_path, monkeypatch, capsys):
    serve_env(tmp_path, monkeypatch, GOOD)
    monkeypatch.delenv("SNOW_PASSWORD", raising=False)
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "auth.password_env" in err and "SNOW_PASSWORD" in err
