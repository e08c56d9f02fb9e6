"""The GitOps workflows: schema-valid, a pull-request preview that comments the diff, and a deploy on
merge for every stack."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from infra.plan import REPO_ROOT, stack_names

WORKFLOWS = REPO_ROOT / ".github" / "workflows"


def workflow(name: str) -> dict[str, Any]:
    document = yaml.safe_load((WORKFLOWS / name).read_text())
    document["on"] = document.pop(True, document.get("on"))  # YAML 1.1 reads the key `on` as true
    return document


def check_jsonschema(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_workflows_match_the_github_workflow_schema() -> None:
    files = sorted(WORKFLOWS.glob("*.yml"))
    assert {f.name for f in files} >= {"preview.yml", "deploy.yml", "pulumi.yml"}, files
    result = check_jsonschema(*files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_rejects_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("name: broken\non: pull_request\njobs:\n  preview:\n    runs-on: ubuntu-latest\n    steps: run\n")
    result = check_jsonschema(broken)
    assert result.returncode != 0, "the schema check passed a workflow whose steps are not a list"


def pulumi_action(document: dict[str, Any]) -> dict[str, Any]:
    (job,) = document["jobs"].values()
    (step,) = [s for s in job["steps"] if str(s.get("uses", "")).startswith("pulumi/actions@")]
    return step


def test_pulumi_job_runs_the_requested_command_with_a_diff_and_comments_previews() -> None:
    document = workflow("pulumi.yml")
    assert set(document["on"]["workflow_call"]["inputs"]) == {"command", "stack"}
    step = pulumi_action(document)
    assert step["uses"] == "pulumi/actions@v6"
    inputs = step["with"]
    assert inputs["command"] == "${{ inputs.command }}"
    assert inputs["diff"] is True, "previews should show the detailed diff"
    assert "inputs.command == 'preview'" in inputs["comment-on-pr"], "previews must comment on the pull request"
    assert inputs["work-dir"] == ".", "Pulumi.yaml is at the repository root"
    (job,) = document["jobs"].values()
    installs = " ".join(str(s.get("run", "")) for s in job["steps"])
    assert "python -m venv .venv" in installs and '-e ".[infra]"' in installs, (
        "the program's SDKs must be installed into Pulumi.yaml's virtualenv"
    )
    assert job["env"]["ARM_USE_OIDC"] == "true", "the providers should sign in with OIDC, not a client secret"


def test_pull_requests_preview_every_stack() -> None:
    document = workflow("preview.yml")
    assert "pull_request" in document["on"]
    assert document["permissions"]["pull-requests"] == "write" and document["permissions"]["id-token"] == "write"
    job = document["jobs"]["preview"]
    assert job["uses"] == "./.github/workflows/pulumi.yml" and job["with"]["command"] == "preview"
    assert sorted(job["strategy"]["matrix"]["stack"]) == stack_names(), "a stack file has no pull-request preview"


def test_merges_to_main_deploy_every_stack_dev_first() -> None:
    document = workflow("deploy.yml")
    assert document["on"]["push"]["branches"] == ["main"]
    assert document["permissions"]["id-token"] == "write"
    deployed = {
        job["with"]["stack"]: job
        for job in document["jobs"].values()
        if job["uses"] == "./.github/workflows/pulumi.yml" and job["with"]["command"] == "up"
    }
    assert sorted(deployed) == stack_names(), "a stack file is never deployed"
    assert deployed["prod"].get("needs") == "dev", "prod should deploy only after dev succeeded"


def test_pulumi_cli_is_pinned_to_the_sdks_version() -> None:
    import tomllib

    pins = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["infra"]
    sdk = next(pin.split("==", 1)[1] for pin in pins if pin.startswith("pulumi=="))
    assert pulumi_action(workflow("pulumi.yml"))["with"].get("pulumi-version") == sdk, (
        "the action installs the newest 3.x CLI (its default ^3), not the one the SDK is pinned to"
    )


def test_a_preview_and_an_up_of_one_stack_share_one_concurrency_group() -> None:
    (job,) = workflow("pulumi.yml")["jobs"].values()
    assert job["concurrency"]["group"] == "pulumi-${{ inputs.stack }}", "a preview and an up would race for the lock"
    assert job["concurrency"]["cancel-in-progress"] is False, "a queued up must never cancel a running one"


def test_previews_get_no_passphrase_and_deploys_push_without_an_admin_password() -> None:
    (job,) = workflow("pulumi.yml")["jobs"].values()
    assert job["env"]["PULUMI_CONFIG_PASSPHRASE"].startswith("${{ inputs.command == 'up' && "), job["env"]
    steps = " ".join(str(s.get("run", "")) for s in job["steps"])
    assert "docker-credential-acr-entra" in steps and "credHelpers" in steps
    assert "listCredentials" not in (WORKFLOWS / "pulumi.yml").read_text()


def test_acr_credential_helper_answers_docker_with_an_entra_token(tmp_path: Path) -> None:
    # A stand-in `az` that records its arguments and prints a token, as `az acr login --expose-token
    # --output tsv --query accessToken` does.
    fake_az = tmp_path / "az"
    fake_az.write_text('#!/bin/sh\necho "$@" > "$(dirname "$0")/az-args"\necho acr-refresh-token-123\n')
    fake_az.chmod(0o755)
    helper = REPO_ROOT / ".github" / "docker-credential-acr-entra"
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin"}
    got = subprocess.run(
        [str(helper), "get"], input="crsecexpdev123.azurecr.io\n", env=env, capture_output=True, text=True, timeout=30
    )
    assert got.returncode == 0, got.stderr
    import json

    assert json.loads(got.stdout) == {
        "ServerURL": "crsecexpdev123.azurecr.io",
        "Username": "00000000-0000-0000-0000-000000000000",
        "Secret": "acr-refresh-token-123",
    }
    assert (tmp_path / "az-args").read_text().split() == [
        *("acr", "login", "--name", "crsecexpdev123", "--expose-token"),
        *("--output", "tsv", "--query", "accessToken"),
    ]
    listed = subprocess.run([str(helper), "list"], env=env, capture_output=True, text=True, timeout=30)
    assert listed.stdout.strip() == "{}"
    stored = subprocess.run([str(helper), "store"], input="{}", env=env, capture_output=True, text=True, timeout=30)
    assert stored.returncode == 0 and stored.stdout == "", "the helper stores nothing"
    assert subprocess.run([str(helper)], env=env, capture_output=True, timeout=30).returncode == 2


def test_deploys_end_with_the_smoke_test_and_previews_never_run_it() -> None:
    (job,) = workflow("pulumi.yml")["jobs"].values()
    names = [step.get("name", step.get("uses", "")) for step in job["steps"]]
    smoke = next(i for i, step in enumerate(job["steps"]) if "devtools.smoke" in str(step.get("run", "")))
    up = next(i for i, step in enumerate(job["steps"]) if step.get("uses") == "pulumi/actions@v6")
    assert smoke > up, f"the smoke test runs before the deploy: {names}"
    assert job["steps"][smoke]["if"] == "inputs.command == 'up'", "a preview must not send test notifications"
    installs = " ".join(str(s.get("run", "")) for s in job["steps"])
    assert '".[infra,smoke]"' in installs, "the smoke test's Azure SDK client is never installed"
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "smoke:" in makefile and "-m devtools.smoke $(STACK)" in makefile
