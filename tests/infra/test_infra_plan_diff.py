"""`make plan-diff BASE=<ref> STACK=<name>`: the declared resources of the working tree against BASE, per
resource and property, secrets masked, short enough for a pull-request comment."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infra import plan_diff
from infra.plan import REPO_ROOT, SECRET
from infra.plan_diff import Change


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"a": {"b": 1, "c": [1, 2]}}, {"a.b": 1, "a.c[0]": 1, "a.c[1]": 2}),
        ({"env": [{"name": "X", "value": "1"}, {"name": "Y", "secretRef": "y"}]},
         {"env[name=X].name": "X", "env[name=X].value": "1", "env[name=Y].name": "Y", "env[name=Y].secretRef": "y"}),
        # Names that repeat, or items without one, fall back to positions.
        ({"l": [{"name": "X"}, {"name": "X"}]}, {"l[0].name": "X", "l[1].name": "X"}),
        ({"l": [{"name": "X"}, "plain"]}, {"l[0].name": "X", "l[1]": "plain"}),
        ({"empty": {}, "none": [], "n": None}, {"empty": {}, "none": [], "n": None}),
    ],
)
def test_flatten_names_each_leaf_by_its_path(value: Any, expected: dict[str, Any]) -> None:
    assert plan_diff.flatten(value) == expected


def resource(type_: str, name: str, inputs: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": type_, "name": name, "inputs": inputs, "dependsOn": [], **extra}


GROUP = resource("azure-native:resources:ResourceGroup", "resource-group", {"resourceGroupName": "rg-a"})
ALERT = resource("azure-native:monitor:MetricAlert", "alerting-rule-cpu", {"ruleName": "cpu", "threshold": 90})
SECRET_RESOURCE = resource(
    "azure-native:keyvault:Secret",
    "relay-secret-x",
    {"properties": {"value": "old-value"}},
    secretInputs=["properties"],
)


def document(*resources: dict[str, Any], outputs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"project": "secure-export", "stack": "dev", "resources": list(resources), "outputs": outputs or {}}


def test_diff_lists_added_removed_and_changed_resources_per_property() -> None:
    changed_group = copy.deepcopy(GROUP)
    changed_group["inputs"]["tags"] = {"team": "ops"}
    changed_group["dependsOn"] = ["azure-native:monitor:MetricAlert::alerting-rule-cpu"]
    new_alert = resource("azure-native:monitor:MetricAlert", "alerting-rule-disk", {"ruleName": "disk"})
    result = plan_diff.diff(
        document(GROUP, ALERT, outputs={"url": "a"}), document(changed_group, new_alert, outputs={"url": "b"})
    )
    assert result.added == ["azure-native:monitor:MetricAlert::alerting-rule-disk"]
    assert result.removed == ["azure-native:monitor:MetricAlert::alerting-rule-cpu"]
    assert result.changed == {
        "azure-native:resources:ResourceGroup::resource-group": [
            Change("dependsOn[azure-native:monitor:MetricAlert::alerting-rule-cpu]", "added", None, True),
            Change("inputs.tags.team", "added", None, "ops"),
        ],
        "stack outputs": [Change("inputs.url", "changed", "a", "b")],
    }
    assert result.unchanged == 0


def test_a_changed_azure_name_is_flagged_as_a_replacement() -> None:
    renamed = copy.deepcopy(GROUP)
    renamed["inputs"]["resourceGroupName"] = "rg-b"
    (change,) = plan_diff.diff(document(GROUP), document(renamed)).changed[plan_diff._label(GROUP)]
    assert change == Change("inputs.resourceGroupName", "changed", "rg-a", "rg-b", replaces=True)
    text = plan_diff.render(plan_diff.diff(document(GROUP), document(renamed)), "dev", "main")
    assert "`inputs.resourceGroupName`: `rg-a` → `rg-b` **(Azure name: the resource is replaced)**" in text, text


def test_secret_inputs_are_masked() -> None:
    changed = copy.deepcopy(SECRET_RESOURCE)
    changed["inputs"]["properties"]["value"] = "new-value"
    changed["inputs"]["properties"]["contentType"] = "text/plain"
    result = plan_diff.diff(document(SECRET_RESOURCE), document(changed))
    changes = result.changed[plan_diff._label(SECRET_RESOURCE)]
    assert [(c.path, c.kind, c.before, c.after, c.secret) for c in changes] == [
        ("inputs.properties.contentType", "added", None, SECRET, True),
        ("inputs.properties.value", "changed", SECRET, SECRET, True),
    ]
    text = plan_diff.render(result, "dev", "main")
    assert "old-value" not in text and "new-value" not in text and "text/plain" not in text, text
    assert f"`inputs.properties.value` changed ({SECRET})" in text


def test_multi_line_values_show_as_a_line_diff() -> None:
    before = resource("azure-native:app:ContainerApp", "relay-app", {"yaml": "a: 1\nb: 2\nc: 3\n"})
    after = resource("azure-native:app:ContainerApp", "relay-app", {"yaml": "a: 1\nb: 20\nc: 3\n"})
    text = plan_diff.render(plan_diff.diff(document(before), document(after)), "dev", "main")
    assert "    -b: 2\n    +b: 20\n" in text, text
    assert "```diff" in text


def test_no_change_says_so_and_a_missing_base_stack_adds_everything() -> None:
    same = plan_diff.diff(document(GROUP, ALERT), document(GROUP, ALERT))
    assert same.empty and same.unchanged == 2
    assert "No declared resource or input changes (2 resources)." in plan_diff.render(same, "dev", "main")
    fresh = plan_diff.diff(None, document(GROUP, ALERT))
    assert fresh.added == sorted([plan_diff._label(GROUP), plan_diff._label(ALERT)]) and not fresh.changed
    assert "no stack file at `main`" in plan_diff.render(fresh, "dev", "main", base_missing=True)


def test_a_huge_diff_is_cut_to_fit_a_pull_request_comment() -> None:
    many = [resource("azure-native:monitor:MetricAlert", f"alerting-rule-{i:05d}", {"ruleName": str(i)})
            for i in range(5000)]
    text = plan_diff.render(plan_diff.diff(document(), document(*many)), "dev", "main")
    assert len(text) <= plan_diff.MAX_COMMENT_CHARS + 200
    assert "more lines: run `make plan-diff BASE=main STACK=dev` for all of it." in text


def test_a_long_value_is_shortened() -> None:
    before, after = resource("t:m:T", "x", {"v": "a" * 1000}), resource("t:m:T", "x", {"v": "b" * 1000})
    text = plan_diff.render(plan_diff.diff(document(before), document(after)), "dev", "main")
    assert "a" * plan_diff.MAX_VALUE_CHARS not in text and "…" in text


leaves = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text("ab\n", max_size=4))
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from("abc"), inner, max_size=3),
    max_leaves=8,
)
resources = st.builds(
    lambda name, inputs, deps: resource("t:m:T", name, inputs, dependsOn=deps),
    st.sampled_from(["r1", "r2", "r3"]),
    st.dictionaries(st.sampled_from(["x", "y", "name"]), values, max_size=3),
    st.lists(st.sampled_from(["t:m:T::r1", "t:m:T::r2"]), unique=True, max_size=2),
)
plans = st.lists(resources, max_size=3, unique_by=lambda r: r["name"]).map(lambda rs: document(*rs))


# No deadline and no generation-speed check: the suite runs on a shared, loaded machine.
loaded_machine = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@loaded_machine
@given(plans)
def test_a_plan_against_itself_has_no_changes(plan: dict[str, Any]) -> None:
    result = plan_diff.diff(plan, copy.deepcopy(plan))
    assert result.empty and result.unchanged == len(plan["resources"])


@loaded_machine
@given(plans, plans)
def test_swapping_base_and_head_swaps_every_change(base: dict[str, Any], head: dict[str, Any]) -> None:
    forward, backward = plan_diff.diff(base, head), plan_diff.diff(head, base)
    assert (forward.added, forward.removed) == (backward.removed, backward.added)
    opposite = {"added": "removed", "removed": "added", "changed": "changed"}
    assert {
        label: [(c.path, opposite[c.kind], c.after, c.before) for c in changes]
        for label, changes in forward.changed.items()
    } == {label: [(c.path, c.kind, c.before, c.after) for c in changes] for label, changes in backward.changed.items()}


# --- across two commits of a real repository --------------------------------------------------------


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    return subprocess.run(["git", "-C", str(repo), *args], env=env, check=True, capture_output=True, text=True,
                          timeout=60).stdout


@pytest.fixture
def project_repo(tmp_path: Path) -> Path:
    """A git repository holding this project's program, relay and stacks, committed once."""
    repo = tmp_path / "repo"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("infra", "relay", "stacks"):
        shutil.copytree(REPO_ROOT / folder, repo / folder, ignore=ignore)
    for name in ("Pulumi.yaml", "pyproject.toml"):
        shutil.copy2(REPO_ROOT / name, repo / name)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    return repo


def edit_stack(repo: Path, edit: Any) -> None:
    path = repo / "stacks" / "Pulumi.dev.yaml"
    document = yaml.safe_load(path.read_text())
    edit(document["config"])
    path.write_text(yaml.safe_dump(document, sort_keys=False))


def test_plan_diff_across_two_commits(project_repo: Path) -> None:
    def change(config: dict[str, Any]) -> None:
        alerts = config["secure-export:alerts"]
        cpu = next(a for a in alerts if a["name"] == "vm-cpu-high")
        cpu["threshold"] = 95
        alerts.append({**cpu, "name": "vm-cpu-critical", "threshold": 99, "severity": "Sev0"})
        config["secure-export:alerts"] = [a for a in alerts if a["name"] != "vm-deleted"]
        config["secure-export:routes"][0]["fields"]["assignment_group"] = "Platform Team"

    edit_stack(project_repo, change)
    git(project_repo, "commit", "-q", "-am", "head")

    text = plan_diff.plan_diff(project_repo, "HEAD~1", "dev")

    assert "### Declared resources of stack `dev`: `HEAD~1` → this change" in text, text
    assert "1 added, 1 removed, 2 changed, " in text, text
    assert "- **added** `azure-native:monitor:MetricAlert::alerting-rule-vm-cpu-critical`" in text, text
    assert "- **removed** `azure-native:monitor:ActivityLogAlert::alerting-rule-vm-deleted`" in text, text
    alert = text.split("- **changed** `azure-native:monitor:MetricAlert::alerting-rule-vm-cpu-high`\n", 1)[1]
    assert alert.startswith("  - `inputs.criteria.allOf[name=vm-cpu-high].threshold`: `90` → `95`\n"), text
    app = text.split("- **changed** `azure-native:app:ContainerApp::relay-app`\n", 1)[1]
    assert "  - `inputs.configuration.secrets[name=relay-config].value` changed:" in app, text
    assert "    -    assignment_group: Cloud Operations\n    +    assignment_group: Platform Team\n" in app, text
    assert "inputs.template.containers[name=relay].env[name=SECURE_EXPORT_CONFIG_SHA256].value" in app, text

    # Nothing committed since: the working tree against HEAD is empty.
    assert "No declared resource or input changes" in plan_diff.plan_diff(project_repo, "HEAD", "dev")


def test_plan_diff_names_a_base_it_cannot_read(project_repo: Path) -> None:
    with pytest.raises(plan_diff.PlanDiffError, match="cannot read 'no-such-branch'"):
        plan_diff.plan_diff(project_repo, "no-such-branch", "dev")
    with pytest.raises(plan_diff.PlanDiffError, match=r"no stack file stacks/Pulumi\.staging\.yaml"):
        plan_diff.plan_diff(project_repo, "HEAD", "staging")


def test_make_plan_diff_runs_the_module_with_base_and_stack() -> None:
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", "-o", ".venv/.all-installed", "plan-diff", "BASE=origin/main",
         "STACK=prod"],
        cwd=REPO_ROOT,
        env={k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ".venv/bin/python -m infra.plan_diff origin/main prod", result.stdout


def test_the_preview_job_posts_the_plan_diff_beside_pulumis_preview() -> None:
    document = yaml.safe_load((REPO_ROOT / ".github" / "workflows" / "pulumi.yml").read_text())
    (job,) = document["jobs"].values()
    steps = job["steps"]
    (diff_step,) = [s for s in steps if "infra.plan_diff" in s.get("run", "")]
    assert "inputs.command == 'preview'" in diff_step["if"], "the plan diff should run on previews only"
    assert diff_step["env"]["BASE_REF"] == "${{ github.base_ref }}", "the diff is not taken against the PR's base"
    assert '-m infra.plan_diff "origin/${BASE_REF}" "$STACK" > plan-diff.md' in diff_step["run"]
    (comment,) = [s for s in steps if str(s.get("uses", "")).startswith("marocchino/sticky-pull-request-comment@")]
    assert comment["with"]["path"] == "plan-diff.md" and "inputs.stack" in comment["with"]["header"], (
        "each stack's diff needs its own comment, edited in place on every push"
    )
    assert comment["if"] == diff_step["if"]
    pulumi = next(s for s in steps if str(s.get("uses", "")).startswith("pulumi/actions@"))
    assert pulumi["with"]["diff"] is True and steps.index(comment) < steps.index(pulumi), (
        "the offline diff should be posted before, and whatever happens to, the cloud preview"
    )
