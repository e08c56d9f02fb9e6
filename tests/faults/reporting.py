"""How fault tests report their counts: one line printed now (seen with -s) and kept for the terminal
summary that tests/faults/conftest.py prints, so a plain `pytest` run still shows them."""

from __future__ import annotations

import pytest

REPORTED = pytest.StashKey[list[str]]()


def report_fault(config: pytest.Config, name: str, counts: str) -> None:
    line = f"fault: {name}: {counts}"
    print(f"\n{line}")
    config.stash.setdefault(REPORTED, []).append(line)
