"""Pulumi.yaml and the example stack files: what the Pulumi CLI reads before the program runs."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from infra.config import PROJECT
from infra.plan import REPO_ROOT, STACKS_DIR
from tests.infra.harness import STACKS

PLACEHOLDER_GUID = re.compile(r"^([0-9])\1{7}-\1{4}-\1{4}-\1{4}-\1{12}$")


def stack_file(stack: str) -> dict[str, Any]:
    return yaml.safe_load((STACKS_DIR / f"Pulumi.{stack}.yaml").read_text())["config"]


def test_project_file_runs_infra_with_python_and_reads_stacks_from_stacks_dir() -> None:
    project = yaml.safe_load((REPO_ROOT / "Pulumi.yaml").read_text())
    assert project["name"] == PROJECT, "config keys are namespaced by the project name"
    assert project["runtime"]["name"] == "python"
    assert project["runtime"]["options"]["virtualenv"] == ".venv", "the CLI would not use the Makefile's venv"
    assert project["main"].rstrip("/") == "infra" and (REPO_ROOT / "infra" / "__main__.py").is_file()
    assert project["stackConfigDir"] == "stacks" and STACKS_DIR == REPO_ROOT / "stacks"


def test_there_is_a_dev_and_a_prod_example_stack() -> None:
    assert {"dev", "prod"} <= set(STACKS), STACKS


@pytest.mark.parametrize("stack", STACKS)
def test_example_stack_uses_only_known_config_namespaces(stack: str) -> None:
    namespaces = {key.split(":", 1)[0] for key in stack_file(stack)}
    assert namespaces <= {PROJECT, "azure-native", "azuread"}, f"unexpected config namespaces {namespaces}"


@pytest.mark.parametrize("stack", STACKS)
def test_example_stack_holds_placeholder_ids_and_no_clear_text_secret(stack: str) -> None:
    cfg = stack_file(stack)
    for key in ("azure-native:tenantId", "azuread:tenantId", "azure-native:subscriptionId"):
        assert PLACEHOLDER_GUID.match(cfg[key]), f"{key} in Pulumi.{stack}.yaml is not a placeholder id"
    assert f"{PROJECT}:itsmSecrets" not in cfg, f"Pulumi.{stack}.yaml holds ITSM secrets: they belong in Key Vault"


def test_bootstrap_project_file_shares_the_venv_and_reads_stacks_bootstrap() -> None:
    from infra.config.bootstrap import BOOTSTRAP_PROJECT
    from infra.plan import BOOTSTRAP_DIR, BOOTSTRAP_STACKS_DIR

    project = yaml.safe_load((BOOTSTRAP_DIR / "Pulumi.yaml").read_text())
    assert project["name"] == BOOTSTRAP_PROJECT != PROJECT, "the bootstrap stack must be a project of its own"
    assert project["runtime"]["name"] == "python"
    assert (BOOTSTRAP_DIR / project["runtime"]["options"]["virtualenv"]).resolve() == REPO_ROOT / ".venv"
    assert (BOOTSTRAP_DIR / project["main"]).is_file()
    assert (BOOTSTRAP_DIR / project["stackConfigDir"]).resolve() == BOOTSTRAP_STACKS_DIR


@pytest.mark.parametrize("stack", STACKS)
def test_bootstrap_stack_file_holds_placeholder_ids_in_known_namespaces(stack: str) -> None:
    from infra.config.bootstrap import BOOTSTRAP_PROJECT
    from infra.plan import BOOTSTRAP_STACKS_DIR

    cfg = yaml.safe_load((BOOTSTRAP_STACKS_DIR / f"Pulumi.{stack}.yaml").read_text())["config"]
    assert {key.split(":", 1)[0] for key in cfg} <= {BOOTSTRAP_PROJECT, "azuread"}
    assert PLACEHOLDER_GUID.match(cfg["azuread:tenantId"])
    assert all(PLACEHOLDER_GUID.match(owner) for owner in cfg[f"{BOOTSTRAP_PROJECT}:owners"])
    assert cfg["azuread:tenantId"] == stack_file(stack)["azuread:tenantId"], "the two stacks name different tenants"
