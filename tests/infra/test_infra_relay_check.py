"""`make plan` runs the relay's own `relay check-config` on the relay YAML the stack would mount, so a
stack config the relay refuses fails the plan, not the new revision."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra import plan as infra_plan
from infra import relay_check


def stack_file_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **route_options: Any) -> None:
    """stacks/Pulumi.dev.yaml with `route_options` set on its first route, as the plan's stack file."""
    document = yaml.safe_load((infra_plan.STACKS_DIR / "Pulumi.dev.yaml").read_text())
    document["config"]["secure-export:routes"][0].update(route_options)
    (tmp_path / "Pulumi.dev.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    monkeypatch.setattr(infra_plan, "STACKS_DIR", tmp_path)


REFUSED = [
    pytest.param(
        {"on_refire": "renew"},
        "routes[0].on_refire: must be one of new, reopen, ignore (got 'renew')",
        "on_refire: renew",
        id="unknown-on_refire",
    ),
    pytest.param(
        {"summary": "{{ alert.essentials.alertRule "},
        "routes[0].summary: template syntax error on its line 1",
        "summary: '{{ alert.essentials.alertRule '",
        id="template-syntax-error",
    ),
]


@pytest.mark.parametrize(("options", "message", "offending_line"), REFUSED)
def test_plan_fails_with_the_relays_file_line_message_on_a_config_the_relay_refuses(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    options: dict[str, str],
    message: str,
    offending_line: str,
) -> None:
    stack_file_with(tmp_path, monkeypatch, **options)
    # The stack's own validation lets it through: only the relay's check can catch it.
    plan = infra_plan.run_stack("dev")
    mounted = relay_check.mounted_config(plan.one("azure-native:app:ContainerApp").inputs)
    numbered = [(n, text) for n, text in enumerate(mounted.splitlines(), 1) if text.strip() == offending_line]
    assert len(numbered) == 1, mounted
    ((line, source),) = numbered

    assert infra_plan.main(["dev"]) == 1, "the plan passed a relay config the relay refuses"
    out, err = capsys.readouterr()
    assert out == "", "a failed plan still printed its JSON"
    assert f"plan:   relay.yaml:{line}: {message}" in err, err
    assert f"plan:       {line:>4} | {source}" in err, f"the offending line is not shown:\n{err}"
    assert "plan:   relay.yaml: 1 problem" in err, err


def test_plan_of_the_example_stacks_reports_the_relays_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert infra_plan.main(["prod"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["stack"] == "prod"
    assert "plan: relay check-config: relay.yaml: OK: " in err, err


def test_the_check_reads_the_file_the_container_app_mounts() -> None:
    inputs = {
        "configuration": {
            "secrets": [
                {"name": "snow-password", "keyVaultUrl": "https://kv/secrets/snow-password"},
                {"name": "relay-config", "value": "targets: {}\n"},
            ]
        }
    }
    assert relay_check.mounted_config(inputs) == "targets: {}\n"
    with pytest.raises(LookupError, match="no secret 'relay-config'"):
        relay_check.mounted_config({"configuration": {"secrets": inputs["configuration"]["secrets"][:1]}})


def test_check_reports_every_problem_and_an_accepted_file() -> None:
    refused = relay_check.check("targets:\n  a:\n    kind: nonsense\nroutes:\n  - target: missing\n")
    assert not refused.ok
    assert any(line.startswith("relay.yaml:3: targets.a.kind: ") for line in refused.lines), refused.lines
    assert any(line.startswith("relay.yaml:5: ") and "missing" in line for line in refused.lines), refused.lines
    accepted = relay_check.check("targets:\n  audit:\n    kind: dry_run\nroutes:\n  - target: audit\n")
    assert accepted.ok, accepted.lines
    assert accepted.lines == ("relay.yaml: OK: 1 target(s): audit (dry_run); 1 route(s)",)


def test_report_shows_the_line_each_message_names_and_only_real_lines() -> None:
    text = "targets:\n  a:\n    kind: nonsense\n"
    verdict = relay_check.Verdict(
        False, ("relay.yaml:3: targets.a.kind: bad", "relay.yaml:99: x: beyond the file", "relay.yaml: 2 problems")
    )
    lines = relay_check.report(verdict, text)
    assert lines[0].startswith("the relay refuses the relay.yaml this stack would mount at /etc/relay/relay.yaml")
    assert lines[1:] == [
        "  relay.yaml:3: targets.a.kind: bad",
        "         3 |     kind: nonsense",
        "  relay.yaml:99: x: beyond the file",
        "  relay.yaml: 2 problems",
    ]
