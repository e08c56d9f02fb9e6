"""`make plan-diff BASE=<git ref> STACK=<name>`: what a change does to the resources a stack declares.

Runs the offline plan (`python -m infra.plan`, under mocks, no cloud) twice: in the working tree, and
in a scratch copy of the tree at BASE (`git archive`), each with its own infra/ and relay/ code and the
same installed SDKs. Then compares the two, per resource and per property: resources added and
removed, and for each changed one the properties added, removed or changed, with before and after.
Secret inputs (those Pulumi encrypts in state) are shown as `[secret]`. The result is Markdown short
enough for a pull-request comment; the preview workflow posts it beside `pulumi preview --diff`.

What this can and cannot show: the declared inputs and options, exactly (the relay YAML as a line
diff); not what Azure would do with them (provider defaults, replace versus update beyond a changed
Azure name, which it flags), which only `pulumi preview --diff` knows.

Usage: python -m infra.plan_diff <base ref> <stack>
"""

from __future__ import annotations

import difflib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.plan import REPO_ROOT, SECRET, azure_name_input

PLAN_TIMEOUT_SECONDS = 600
MAX_VALUE_CHARS = 160  # one value in a table cell
MAX_COMMENT_CHARS = 60_000  # GitHub refuses comments over 65,536 characters
STACK_OUTPUTS = "stack outputs"


class PlanDiffError(Exception):
    """A plan-diff that cannot be made; the message says which side and why."""


@dataclass(frozen=True)
class Change:
    """One property of one resource: `kind` is added, removed or changed."""

    path: str
    kind: str
    before: Any = None
    after: Any = None
    secret: bool = False
    replaces: bool = False  # the Azure name changes: the provider replaces the resource


@dataclass
class Diff:
    added: list[str] = field(default_factory=list)  # resource labels, type::name
    removed: list[str] = field(default_factory=list)
    changed: dict[str, list[Change]] = field(default_factory=dict)
    unchanged: int = 0

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)


# ---------------------------------------------------------------------------------------------------
# The comparison: pure functions over two plan documents (the JSON `python -m infra.plan` prints).


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Leaves by path: `a.b`, list items by index `[0]`, or by name `[name=x]` when every item of a
    list is an object with a distinct `name` (so inserting an env var does not renumber the rest)."""
    if isinstance(value, Mapping) and value:
        out: dict[str, Any] = {}
        for key in sorted(value):
            out.update(flatten(value[key], f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and value:
        names = [item.get("name") for item in value if isinstance(item, Mapping)]
        keyed = len(names) == len(value) and all(isinstance(n, str) for n in names) and len(set(names)) == len(names)
        out = {}
        for index, item in enumerate(value):
            out.update(flatten(item, f"{prefix}[name={item['name']}]" if keyed else f"{prefix}[{index}]"))
        return out
    return {prefix: value}


def _label(resource: Mapping[str, Any]) -> str:
    return f"{resource['type']}::{resource['name']}"


def _properties(resource: Mapping[str, Any]) -> dict[str, Any]:
    """What is compared of a resource: inputs, options, parent and each dependency."""
    props = flatten(resource.get("inputs", {}), "inputs")
    props.update(flatten(resource.get("options", {}), "options"))
    if resource.get("parent"):
        props["parent"] = resource["parent"]
    for dependency in resource.get("dependsOn", []):
        props[f"dependsOn[{dependency}]"] = True
    props.pop("inputs", None)  # a resource without inputs flattens to {"inputs": {}}
    props.pop("options", None)
    return props


def _resources(document: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    if document is None:
        return {}
    out: dict[str, Mapping[str, Any]] = {}
    for resource in document.get("resources", []):
        label = _label(resource)
        if label in out:
            raise PlanDiffError(f"two resources are labelled {label}; the diff cannot tell them apart")
        out[label] = resource
    if document.get("outputs"):
        out[STACK_OUTPUTS] = {"type": "", "name": STACK_OUTPUTS, "inputs": document["outputs"]}
    return out


def _is_secret(path: str, secret_inputs: set[str]) -> bool:
    return path.startswith("inputs.") and path.split(".", 2)[1].split("[", 1)[0] in secret_inputs


def _resource_changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[Change]:
    old, new = _properties(before), _properties(after)
    secret_inputs = {*before.get("secretInputs", []), *after.get("secretInputs", [])}
    name_input = azure_name_input(str(after.get("type", "")))
    changes = []
    for path in sorted(old.keys() | new.keys()):
        if path in old and path in new and old[path] == new[path]:
            continue
        kind = "changed" if path in old and path in new else ("added" if path in new else "removed")
        secret = _is_secret(path, secret_inputs)
        changes.append(
            Change(
                path=path,
                kind=kind,
                before=SECRET if secret and path in old else old.get(path),
                after=SECRET if secret and path in new else new.get(path),
                secret=secret,
                replaces=name_input is not None and path == f"inputs.{name_input}",
            )
        )
    return changes


def diff(base: Mapping[str, Any] | None, head: Mapping[str, Any]) -> Diff:
    """Base plan against head plan (`base` None: the stack does not exist at the base)."""
    old, new = _resources(base), _resources(head)
    result = Diff(added=sorted(new.keys() - old.keys()), removed=sorted(old.keys() - new.keys()))
    for label in sorted(old.keys() & new.keys()):
        changes = _resource_changes(old[label], new[label])
        if changes:
            result.changed[label] = changes
        elif label != STACK_OUTPUTS:
            result.unchanged += 1
    return result


# ---------------------------------------------------------------------------------------------------
# Markdown for a pull-request comment.


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True) if not isinstance(value, str) else value
    if len(text) > MAX_VALUE_CHARS:
        text = text[: MAX_VALUE_CHARS - 1] + "…"
    return "`" + text.replace("`", "'").replace("|", "\\|").replace("\n", "⏎") + "`"


def _text_diff(before: str, after: str) -> list[str]:
    lines = difflib.unified_diff(before.splitlines(), after.splitlines(), "base", "head", n=1, lineterm="")
    return [line for line in lines if not line.startswith(("---", "+++"))]


def _change_lines(change: Change) -> list[str]:
    flag = " **(Azure name: the resource is replaced)**" if change.replaces else ""
    if change.kind == "added":
        return [f"  - `{change.path}` added: {_short(change.after)}{flag}"]
    if change.kind == "removed":
        return [f"  - `{change.path}` removed (was {_short(change.before)}){flag}"]
    if change.secret:
        return [f"  - `{change.path}` changed ({SECRET})"]
    if isinstance(change.before, str) and isinstance(change.after, str) and "\n" in change.before + change.after:
        return [f"  - `{change.path}` changed:", "    ```diff", *(f"    {line}" for line in _text_diff(
            change.before, change.after)), "    ```"]
    return [f"  - `{change.path}`: {_short(change.before)} → {_short(change.after)}{flag}"]


def render(result: Diff, stack: str, base: str, base_missing: bool = False) -> str:
    counts = (
        f"{len(result.added)} added, {len(result.removed)} removed, {len(result.changed)} changed, "
        f"{result.unchanged} unchanged"
    )
    lines = [f"### Declared resources of stack `{stack}`: `{base}` → this change", ""]
    if base_missing:
        lines += [f"The stack has no stack file at `{base}`: everything is new.", ""]
    if result.empty:
        lines.append(f"No declared resource or input changes ({result.unchanged} resources).")
        return "\n".join(lines) + "\n"
    lines += [counts, ""]
    lines += [f"- **added** `{label}`" for label in result.added]
    lines += [f"- **removed** `{label}`" for label in result.removed]
    for label, changes in result.changed.items():
        lines.append(f"- **changed** `{label}`")
        for change in changes:
            lines += _change_lines(change)
    lines += ["", "From `make plan-diff` (offline, under mocks): declared inputs only; `pulumi preview --diff` "
              "shows what Azure would do."]
    text = "\n".join(lines) + "\n"
    if len(text) > MAX_COMMENT_CHARS:
        cut = text[:MAX_COMMENT_CHARS].rsplit("\n", 1)[0]
        rest = text[len(cut):].count("\n")
        text = f"{cut}\n\n… {rest} more lines: run `make plan-diff BASE={base} STACK={stack}` for all of it.\n"
    return text


# ---------------------------------------------------------------------------------------------------
# Running the plan at two trees.


def _plan_process(tree: Path, stack: str) -> subprocess.Popen[str]:
    # The tree's own infra/ and relay/ come first on the path; no credentials of any kind are passed.
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", str(tree)),
        "PYTHONPATH": str(tree),
        "PYTHONHASHSEED": "0",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "infra.plan", stack],
        cwd=tree,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _collect(process: subprocess.Popen[str], side: str) -> dict[str, Any]:
    try:
        out, err = process.communicate(timeout=PLAN_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise PlanDiffError(f"the plan at {side} took over {PLAN_TIMEOUT_SECONDS} s") from None
    if process.returncode != 0:
        raise PlanDiffError(f"the plan at {side} failed:\n{err.strip()}")
    return json.loads(out)


def _git(repo: Path, *args: str) -> bytes:
    result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, timeout=120, check=False)
    if result.returncode != 0:
        raise PlanDiffError(f"git {' '.join(args)}: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout


def export_tree(repo: Path, ref: str, into: Path) -> str:
    """The files of `ref` (a commit, branch or tag) written under `into`; returns the commit id."""
    commit = _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").decode().strip()
    archive = _git(repo, "archive", "--format=tar", commit)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        # git's own archive of a commit; the "data" filter (Python 3.11.4+) also refuses odd members.
        if hasattr(tarfile, "data_filter"):
            tar.extractall(into, filter="data")
        else:  # pragma: no cover - Python 3.11.0-3.11.3
            tar.extractall(into)  # noqa: S202
    return commit


def plan_diff(repo: Path, base: str, stack: str) -> str:
    """The Markdown diff of the stack's declared resources: the working tree of `repo` against `base`."""
    if not (repo / "stacks" / f"Pulumi.{stack}.yaml").is_file():
        raise PlanDiffError(f"no stack file stacks/Pulumi.{stack}.yaml in the working tree")
    with tempfile.TemporaryDirectory(prefix="plan-diff-") as scratch:
        tree = Path(scratch)
        try:
            export_tree(repo, base, tree)
        except PlanDiffError as error:
            raise PlanDiffError(f"cannot read {base!r}: {error}") from None
        base_missing = not (tree / "stacks" / f"Pulumi.{stack}.yaml").is_file()
        head_process = _plan_process(repo, stack)
        base_process = None if base_missing else _plan_process(tree, stack)
        try:
            base_document = None if base_process is None else _collect(base_process, base)
        finally:
            head_document = _collect(head_process, "the working tree")
    return render(diff(base_document, head_document), stack, base, base_missing)


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m infra.plan_diff <base git ref> <stack>", file=sys.stderr)
        return 2
    base, stack = argv
    print(f"plan-diff: planning stack {stack!r} at {base} and in the working tree", file=sys.stderr)
    try:
        sys.stdout.write(plan_diff(REPO_ROOT, base, stack))
    except PlanDiffError as error:
        print(f"plan-diff: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
