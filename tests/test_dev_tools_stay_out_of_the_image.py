"""The relay's image never carries the dev token issuer: the build stage of relay/Dockerfile is replayed on
exactly the context Dockerfile.dockerignore lets through, and the wheel it makes is opened."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.relay_process import ROOT

DOCKERFILE = ROOT / "relay" / "Dockerfile"
DOCKERIGNORE = ROOT / "relay" / "Dockerfile.dockerignore"


def allowed_in_context() -> list[str]:
    """The allow-list: everything is excluded (`*`), then `!name` lets a path back in."""
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*", "the dockerignore is no longer an allow-list: this test must learn the new form"
    return [line[1:] for line in lines if line.startswith("!")]


def build_stage_runs() -> list[str]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages = re.split(r"^FROM ", text, flags=re.MULTILINE)
    return [line[4:].strip() for line in stages[1].splitlines() if line.startswith("RUN ")]


def test_the_build_context_holds_no_devtools():
    allowed = allowed_in_context()
    assert not any(a.split("/")[0] == "devtools" for a in allowed), allowed
    assert (ROOT / "devtools" / "dev_issuer.py").exists(), "the dev issuer moved: point this test at it"


def test_the_image_wheel_has_neither_the_dev_issuer_nor_relay_dev(tmp_path):
    context = tmp_path / "context"
    context.mkdir()
    for name in allowed_in_context():
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, context / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(source, context / name)
    runs = build_stage_runs()
    for run in runs:
        if "pip wheel" not in run:  # the stage's own preparation of the context (dropping relay-dev)
            subprocess.run(["sh", "-c", run], cwd=context, check=True)
    assert any("pip wheel" in run for run in runs), runs
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--wheel-dir", str(tmp_path / "w"),
                           "."], cwd=context, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [wheel] = list(Path(tmp_path / "w").glob("secure_export-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        [entry_points] = [n for n in names if n.endswith("entry_points.txt")]
        scripts = zf.read(entry_points).decode()
    assert "relay/cli.py" in names, "the image wheel lost the relay itself"
    assert not [n for n in names if n.startswith("devtools/")], "the image wheel carries devtools/"
    assert not any("dev_issuer" in n for n in names)
    assert re.search(r"^relay = relay\.cli:main$", scripts, re.MULTILINE), scripts
    assert "relay-dev" not in scripts, f"the image would have a relay-dev script for code it lacks:\n{scripts}"
