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
