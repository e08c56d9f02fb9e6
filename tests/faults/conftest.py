"""Fixtures of the fault suite: a live `relay serve` per test module, and `fault_report`, through which
each test reports its counts; they are printed again in the terminal summary."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from devtools.dev_issuer import DevIssuer
from tests.faults.live_relay import LiveRelay
from tests.faults.reporting import REPORTED, report_fault
from tests.relay_process import RelayProcess


@pytest.fixture(scope="module")
def live_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveRelay]:
    tmp = tmp_path_factory.mktemp("live-relay")
    issuer = DevIssuer()
    with issuer.serving_in_thread():
        env = {**issuer.relay_env(), "RELAY_STORE": f"sqlite:///{tmp / 'relay.db'}", "RELAY_LOG_LEVEL": "WARNING"}
        process = RelayProcess(env, tmp / "relay.log").start()
        try:
            yield LiveRelay(issuer, process, tmp / "relay.db", issuer.authorization())
        finally:
            process.stop()


@pytest.fixture
def fault_report(request: pytest.FixtureRequest) -> Callable[[str, str], None]:
    """`fault_report(name, counts)`: see `tests.faults.reporting.report_fault`."""
    return lambda name, counts: report_fault(request.config, name, counts)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config) -> None:
    lines = config.stash.get(REPORTED, [])
    if lines:
        terminalreporter.section("fault suite counts")
        for line in lines:
            terminalreporter.write_line(line)
