"""relay/Dockerfile: a slim Python base, a non-root user, the relay's runtime dependencies only (no
Pulumi SDK), and `relay serve` as the entry point. Docker does not run here; the file is read."""

from __future__ import annotations

import json
import re
import shlex
import tomllib

import pytest

from infra.plan import REPO_ROOT

DOCKERFILE = REPO_ROOT / "relay" / "Dockerfile"
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    result = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def requirement_name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower()


def test_every_stage_starts_from_a_slim_python_image() -> None:
    bases = [args.split()[0] for keyword, args in instructions() if keyword == "FROM"]
    assert bases, "no FROM line"
    for base in bases:
        assert re.fullmatch(r"python:3\.(\d+)-slim(-\w+)?", base), f"{base} is not a slim Python image"
        minimum = int(re.search(r">=\s*3\.(\d+)", PYPROJECT["project"]["requires-python"]).group(1))
        assert int(re.match(r"python:3\.(\d+)", base).group(1)) >= minimum, f"{base} is older than requires-python"


def test_final_stage_runs_as_a_non_root_user() -> None:
    users = [args for keyword, args in final_stage() if keyword == "USER"]
    assert users, "the image runs as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"USER {users[-1]} is root"
    entry = [i for i, (keyword, _) in enumerate(final_stage()) if keyword == "ENTRYPOINT"]
    last_user = max(i for i, (keyword, _) in enumerate(final_stage()) if keyword == "USER")
    assert entry and last_user < entry[0], "USER comes after the entry point"


def test_entry_point_is_relay_serve() -> None:
    entrypoints = [args for keyword, args in final_stage() if keyword == "ENTRYPOINT"]
    commands = [args for keyword, args in final_stage() if keyword == "CMD"]
    command = json.loads(entrypoints[-1]) + (json.loads(commands[-1]) if commands else [])
    assert command == ["relay", "serve"], command
    assert PYPROJECT["project"]["scripts"]["relay"], "pyproject has no `relay` console script"


# The one extra the image installs: the OpenTelemetry export (relay/telemetry.py), so that a stack's
# monitoring.openTelemetry alone turns it on. Never infra, test or smoke.
IMAGE_EXTRAS = {"otel"}


def test_image_installs_the_relay_with_only_the_otel_extra() -> None:
    pip_runs = [args for keyword, args in instructions() if keyword == "RUN" and re.search(r"\bpip\b", args)]
    assert pip_runs, "the image installs nothing with pip"
    for run in pip_runs:
        for command in run.split("&&"):
            words = shlex.split(command)
            if "pip" not in words or not {"install", "wheel"} & set(words):
                continue
            targets = [w for w in words[words.index("pip") + 2 :] if not w.startswith("-") and w != "/wheels"]
            bare = {t.split("[", 1)[0] for t in targets}
            assert targets and bare <= {".", PYPROJECT["project"]["name"]}, f"pip installs {targets}: {command}"
            extras = {e.strip() for t in targets if "[" in t for e in t.split("[", 1)[1].rstrip("]").split(",")}
            assert extras <= IMAGE_EXTRAS, f"the image installs extras {sorted(extras - IMAGE_EXTRAS)}: {command}"
            assert "-r" not in words and "--requirement" not in words, (
                f"the image installs a requirements file: {command}"
            )
    copied = {
        source
        for keyword, args in instructions()
        if keyword == "COPY" and "--from" not in args
        for source in args.split()[:-1]
    }
    assert copied <= {"pyproject.toml", "README.md", "relay"}, f"the image copies more than the relay: {copied}"


def test_image_dependency_set_has_no_pulumi_sdk() -> None:
    # The image installs the project without extras, so it gets exactly [project].dependencies.
    runtime = {requirement_name(r) for r in PYPROJECT["project"]["dependencies"]}
    assert runtime, "no runtime dependencies found in pyproject.toml"
    assert not {name for name in runtime if name.startswith("pulumi")}, f"Pulumi in the relay's dependencies: {runtime}"
    infra = {requirement_name(r) for r in PYPROJECT["project"]["optional-dependencies"]["infra"]}
    assert {"pulumi", "pulumi-azure-native", "pulumi-azuread", "pulumi-docker-build"} <= infra, (
        "the Pulumi SDKs should come with the `infra` extra, which the image does not install"
    )


@pytest.mark.parametrize("module", ["infra", "tests"])
def test_image_build_never_copies_the_pulumi_program_or_tests(module: str) -> None:
    copies = " ".join(args for keyword, args in instructions() if keyword in ("COPY", "ADD"))
    assert not re.search(rf"(^|\s){module}(/|\s|$)", copies), f"the image copies {module}/"


DOCKERIGNORE = REPO_ROOT / "relay" / "Dockerfile.dockerignore"


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(exclude?, pattern) in file order, with Docker's semantics: `*` stays within one path segment,
    `**` crosses segments, `!` re-includes, the last matching rule wins, and a rule matching a
    directory covers everything under it."""
    rules = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exclude = not line.startswith("!")
        pattern = line.removeprefix("!").strip("/")
        parts = re.split(r"(\*\*/?|\*|\?)", pattern)
        body = "".join(
            {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part)) for part in parts
        )
        rules.append((exclude, re.compile(rf"^{body}(?:/.*)?$")))
    return rules


def sent_to_docker(path: str) -> bool:
    excluded = False
    for exclude, pattern in dockerignore_rules():
        if pattern.match(path):
            excluded = exclude
    return not excluded


def test_dockerignore_is_an_allow_list() -> None:
    assert DOCKERIGNORE.is_file(), "relay/Dockerfile.dockerignore is missing: the whole repository is the build context"
    exclude, pattern = dockerignore_rules()[0]
    assert exclude and pattern.match("anything/at/all"), "the file must start by excluding everything (`*`)"


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        ".venv/bin/python",
        "node_modules/azurite/package.json",
        "tests/infra/conftest.py",
        "infra/hosting.py",
        "stacks/Pulumi.dev.yaml",
        "docs/deploy.md",
        "relay/__pycache__/app.cpython-312.pyc",
        ".rt/var/log",
    ],
)
def test_build_context_leaves_out_what_the_image_does_not_need(path: str) -> None:
    # pulumi-docker-build hashes every file it sends: any of these would rebuild the image (and roll
    # a new revision) on every commit, or on every CI run that creates .venv.
    assert DOCKERIGNORE.is_file(), "relay/Dockerfile.dockerignore is missing: the whole repository is the build context"
    assert not sent_to_docker(path), f"{path} is sent to Docker"


def test_build_context_carries_every_copy_source() -> None:
    copied = [
        source
        for keyword, args in instructions()
        if keyword == "COPY" and "--from" not in args
        for source in args.split()[:-1]
    ]
    relay_files = [
        str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "relay").rglob("*.py") if "__pycache__" not in p.parts
    ]
    for path in [*copied, *relay_files]:
        assert sent_to_docker(path), f"{path} is copied by relay/Dockerfile but left out of its build context"


def test_the_otel_extra_carries_no_pulumi_sdk_or_dev_tool() -> None:
    otel = {requirement_name(r) for r in PYPROJECT["project"]["optional-dependencies"]["otel"]}
    dev = {requirement_name(r) for extra in ("infra", "test", "smoke")
           for r in PYPROJECT["project"]["optional-dependencies"][extra]}
    assert otel and not otel & dev, f"the image's otel extra shares {otel & dev} with the dev extras"
    assert all(name.startswith("opentelemetry-") for name in otel), otel
