"""`make plan STACK=<name>`: sorted, stable JSON of what a stack declares, offline and without credentials."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra import plan as infra_plan
from infra.plan import REPO_ROOT


def run_plan_process(stack: str) -> subprocess.CompletedProcess[str]:
    # Only what a fresh shell has: no Azure, Pulumi or cloud credentials of any kind.
    bare_env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), "PYTHONHASHSEED": "random"}
    return subprocess.run(
        [sys.executable, "-m", "infra.plan", stack],
        cwd=REPO_ROOT,
        env=bare_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def dev_process() -> subprocess.CompletedProcess[str]:
    return run_plan_process("dev")


def test_plan_prints_only_json_on_stdout_and_progress_on_stderr(dev_process: subprocess.CompletedProcess[str]) -> None:
    assert dev_process.returncode == 0, dev_process.stderr
    document = json.loads(dev_process.stdout)  # nothing else on stdout, or this fails
    assert document["stack"] == "dev" and document["project"] == "secure-export"
    assert dev_process.stderr.strip(), "no progress on stderr"
    assert all(line.startswith("plan: ") for line in dev_process.stderr.splitlines()), dev_process.stderr


def test_plan_json_is_sorted(dev_process: subprocess.CompletedProcess[str]) -> None:
    document = json.loads(dev_process.stdout)
    assert dev_process.stdout == json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    order = [(r["type"], r["name"]) for r in document["resources"]]
    assert order == sorted(order), "resources are not sorted by type and name"
    for resource in document["resources"]:
        assert resource.get("dependsOn", []) == sorted(resource.get("dependsOn", []))


def test_plan_is_identical_across_processes(dev_process: subprocess.CompletedProcess[str]) -> None:
    in_process = infra_plan.run_stack("dev")
    assert in_process.to_json() == dev_process.stdout, "two runs of the same stack file printed different plans"


def test_plan_shows_encrypted_stack_values_as_placeholders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ciphertext = "v1:c2VjcmV0LWNpcGhlcnRleHQ="
    text = (infra_plan.STACKS_DIR / "Pulumi.dev.yaml").read_text()
    text += f"  secure-export:tags:\n    owner:\n      secure: {ciphertext}\n"
    (tmp_path / "Pulumi.dev.yaml").write_text(text)
    monkeypatch.setattr(infra_plan, "STACKS_DIR", tmp_path)
    assert infra_plan.main(["dev"]) == 0
    out, _ = capsys.readouterr()
    assert ciphertext not in out, "the plan printed the stack file's ciphertext"
    group = next(r for r in json.loads(out)["resources"] if r["type"] == "azure-native:resources:ResourceGroup")
    assert group["inputs"]["tags"]["owner"] == "[secret]"


def test_plan_reports_a_config_error_on_stderr_and_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (infra_plan.STACKS_DIR / "Pulumi.dev.yaml").read_text()
    (tmp_path / "Pulumi.dev.yaml").write_text(text.replace("SecExp-dev", "SecureExport-dev"))
    monkeypatch.setattr(infra_plan, "STACKS_DIR", tmp_path)
    assert infra_plan.main(["dev"]) == 1
    out, err = capsys.readouterr()
    assert out == "", "a failed plan still printed to stdout"
    assert "secure-export:actionGroupShortName: 'SecureExport-dev' is 16 characters long" in err, err


def test_plan_of_an_unknown_stack_lists_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert infra_plan.main(["staging"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "no stack file stacks/Pulumi.staging.yaml; stacks: dev, prod" in err, err


def test_make_plan_runs_the_plan_module_for_the_stack_given() -> None:
    # -n: print the recipe only; -o: take the install step as done.
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", "-o", ".venv/.all-installed", "plan", "STACK=prod"],
        cwd=REPO_ROOT,
        # Run as a top-level make even when the suite itself runs under `make test`.
        env={k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ".venv/bin/python -m infra.plan prod", result.stdout
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert "plan: $(VENV)/.all-installed" in makefile, "make plan does not install the SDKs first"
