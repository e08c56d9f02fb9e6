"""The target check around the probes: the verdict (table and properties), timeouts and a probe's own
bugs as findings, what /readyz shows (and that a failing ITSM never makes the relay unready), the
relay_target_check gauge, the start-up log line, and `relay check-targets` as a command."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from relay.app import TARGET_CHECKS_KEY, create_app
from relay.delivery.target_check import (
    CHECK_TIMEOUT_SECONDS,
    RECHECK_INTERVAL_SECONDS,
    TargetCheck,
    TargetCheckMetrics,
    check_periodically,
    check_target,
    check_targets,
    readiness_details,
    report_lines,
    verdict,
)
from relay.settings import Settings
from relay.targets import FINDING_STATUSES, Finding, TargetError
from tests.conftest import scrape
from tests.fakes.servicenow import FakeServiceNow

REPO = Path(__file__).resolve().parents[1]


def f(status: str, check: str = "x") -> Finding:
    return Finding(check, status, "")


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ((), "unchecked"),
        (("ok",), "ok"),
        (("ok", "ok"), "ok"),
        (("unchecked",), "unchecked"),
        (("ok", "unchecked"), "unchecked"),
        (("failed",), "failed"),
        (("ok", "failed"), "failed"),
        (("unchecked", "failed", "ok"), "failed"),
    ],
)
def test_verdict_table(statuses, expected):
    assert verdict(f(s) for s in statuses) == expected


@given(st.lists(st.sampled_from(FINDING_STATUSES)))
def test_verdict_is_failed_exactly_when_one_failed_and_ok_only_when_all_are(statuses):
    got = verdict(f(s) for s in statuses)
    assert (got == "failed") == ("failed" in statuses)
    assert (got == "ok") == (bool(statuses) and set(statuses) == {"ok"})


@given(st.lists(st.sampled_from(FINDING_STATUSES)).flatmap(lambda xs: st.tuples(st.just(xs), st.permutations(xs))))
def test_verdict_does_not_depend_on_order(pair):
    statuses, shuffled = pair
    assert verdict(f(s) for s in statuses) == verdict(f(s) for s in shuffled)


def test_a_finding_with_an_unknown_status_is_refused():
    with pytest.raises(ValueError, match="one of ok, failed, unchecked"):
        Finding("credentials", "maybe")


class Probe:
    """A target whose probe does what the test says."""

    kind: ClassVar[str] = "probe"

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour

    async def check(self) -> list[Finding]:
        if self.behaviour == "slow":
            await asyncio.sleep(10)
        if self.behaviour == "unreachable":
            raise TargetError("probe: GET /x failed: ClientConnectorError", retryable=True)
        if self.behaviour == "bug":
            raise KeyError("items")
        return [Finding("credentials", "ok", "fine")]

    async def close(self) -> None:
        pass


class NoProbe:
    kind: ClassVar[str] = "legacy"


async def test_a_slow_probe_is_a_failed_finding_and_does_not_hold_up_the_others():
    checks = await check_targets({"slow": Probe("slow"), "fine": Probe("ok")}, limit_seconds=0.2)  # type: ignore[dict-item]
    assert checks["slow"].status == "failed" and "longer than 0.2s" in checks["slow"].findings[0].detail
    assert checks["fine"].status == "ok"
    assert list(checks) == ["slow", "fine"], "checks come back in the configuration's order"


async def test_an_unreachable_target_and_a_probe_bug_are_findings_not_errors(caplog):
    checks = await check_targets({"down": Probe("unreachable"), "bug": Probe("bug")})  # type: ignore[dict-item]
    assert checks["down"].findings == (Finding("reachable", "failed", "probe: GET /x failed: ClientConnectorError"),)
    assert checks["bug"].status == "failed" and "KeyError" in checks["bug"].findings[0].detail
    assert "failed unexpectedly" in caplog.text


async def test_a_kind_without_a_probe_is_unchecked():
    check = await check_target("old", NoProbe(), now=5.0)  # type: ignore[arg-type]
    assert check.status == "unchecked" and "has no probe" in check.findings[0].detail and check.checked_at == 5.0


class Flapping:
    """A target whose credentials work on every other check."""

    kind: ClassVar[str] = "flapping"

    def __init__(self) -> None:
        self.calls = 0

    async def check(self) -> list[Finding]:
        self.calls += 1
        return [Finding("credentials", "ok" if self.calls % 2 else "failed", f"check {self.calls}")]


async def test_the_periodic_check_runs_again_and_keeps_the_latest_result_and_gauge():
    target, results, registry = Flapping(), {}, CollectorRegistry()
    task = asyncio.create_task(check_periodically({"f": target}, results, TargetCheckMetrics(registry),  # type: ignore[dict-item]
                                                  every=0.02))
    try:
        for _ in range(200):
            if target.calls >= 3:
                break
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert target.calls >= 3
    latest = results["f"]
    assert latest.findings[0].detail in (f"check {target.calls}", f"check {target.calls - 1}")
    gauge = registry.get_sample_value("relay_target_check", {"target": "f"})
    assert gauge == (0 if latest.status == "failed" else 1)


def test_the_defaults_are_a_minute_per_target_and_a_quarter_hour_between_checks():
    assert CHECK_TIMEOUT_SECONDS == 60.0 and RECHECK_INTERVAL_SECONDS == 900.0


def test_report_lines_and_readiness_details():
    checks = {"snow": TargetCheck("snow", "servicenow", (Finding("credentials", "failed", "HTTP 401"),), 1.0)}
    assert report_lines(checks) == ["snow (servicenow): FAILED", "  failed    credentials: HTTP 401"]
    # /readyz is public: verdicts only, never a finding's detail.
    assert readiness_details(checks, ["snow", "rt"]) == {"snow": "failed", "rt": "pending"}
    assert readiness_details(None, ["rt"]) == {"rt": "pending"}


def test_the_gauge_is_one_unless_a_probe_failed():
    registry = CollectorRegistry()
    metrics = TargetCheckMetrics(registry)
    metrics.record({
        "a": TargetCheck("a", "k", (f("ok"),), 10.0),
        "b": TargetCheck("b", "k", (f("failed"),), 10.0),
        "c": TargetCheck("c", "k", (f("unchecked"),), 10.0),
    })
    assert registry.get_sample_value("relay_target_check", {"target": "a"}) == 1
    assert registry.get_sample_value("relay_target_check", {"target": "b"}) == 0
    assert registry.get_sample_value("relay_target_check", {"target": "c"}) == 1
    assert registry.get_sample_value("relay_target_check_timestamp_seconds", {"target": "b"}) == 10.0


# -- in the running relay --------------------------------------------------------------------------


def sn_config(path: Path, fake: FakeServiceNow, password_env: str = "SN_CHECK_PASSWORD") -> Path:
    path.write_text(
        "targets:\n"
        f"  snow: {{kind: servicenow, base_url: {json.dumps(fake.url)}, timeout_seconds: 5,\n"
        f"         auth: {{type: basic, username: {fake.username}, password_env: {password_env}}}}}\n"
        "routes:\n  - target: snow\n"
    )
    return path


async def test_serve_checks_targets_at_start_and_a_failure_never_makes_it_unready(
    aiohttp_client, issuer, tmp_path, monkeypatch, caplog
):
    fake = FakeServiceNow()
    await fake.start()
    try:
        monkeypatch.setenv("SN_CHECK_PASSWORD", "not-the-password")
        config = sn_config(tmp_path / "relay.yaml", fake)
        settings = Settings.from_env({**issuer.relay_env(), "RELAY_STORE": f"sqlite:///{tmp_path / 'r.db'}",
                                      "RELAY_CONFIG": str(config), "RELAY_METRICS_PORT": "0"})
        app = create_app(settings, deliver=True)
        client = await aiohttp_client(app)
        for _ in range(100):
            if app[TARGET_CHECKS_KEY]:
                break
            await asyncio.sleep(0.05)
        assert app[TARGET_CHECKS_KEY]["snow"].status == "failed"
        resp = await client.get("/readyz")
        body = await resp.json()
        assert resp.status == 200 and body["ready"] is True, body
        assert body["targets"] == {"snow": "failed"}
        assert "401" not in json.dumps(body), "/readyz carries verdicts only"
        assert "target check failed for snow (servicenow): credentials failed" in caplog.text
        assert "not-the-password" not in caplog.text
        metrics = await scrape(client)
        assert 'relay_target_check{target="snow"} 0.0' in metrics
    finally:
        await fake.stop()


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "check-targets", *args, cwd=REPO,
        env={**os.environ, **env}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_check_targets_command_exit_codes_and_report(tmp_path):
    fake = FakeServiceNow()
    await fake.start()
    try:
        config = sn_config(tmp_path / "relay.yaml", fake)
        code, out, err = await run_cli(str(config), env={"SN_CHECK_PASSWORD": fake.password})
        assert code == 0, out + err
        assert "snow (servicenow): OK" in out and "ok        field 'correlation_id' on 'incident'" in out

        code, out, err = await run_cli(str(config), env={"SN_CHECK_PASSWORD": "wrong"})
        assert code == 1, out + err
        assert "failed    credentials" in out and "unchecked table 'incident'" in out and "failed: snow" in out
        assert "wrong" not in out.replace("failed: snow", "")  # the password never shows

        # RELAY_CONFIG is the default file; a secret it names but the environment lacks is a config error.
        code, out, err = await run_cli(env={"RELAY_CONFIG": str(config), "SN_CHECK_PASSWORD": fake.password})
        assert code == 0, out + err
        clean = {k: v for k, v in os.environ.items() if k != "SN_CHECK_PASSWORD"}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay", "check-targets", str(config), cwd=REPO, env=clean,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err_b = await proc.communicate()
        assert proc.returncode == 2 and "SN_CHECK_PASSWORD" in err_b.decode(), err_b.decode()
    finally:
        await fake.stop()


async def test_check_targets_command_without_a_file_or_with_a_bad_one(tmp_path):
    env = {"RELAY_CONFIG": ""}
    code, _, err = await run_cli(env=env)
    assert code == 2 and "needs a file, or RELAY_CONFIG" in err
    code, _, err = await run_cli(str(tmp_path / "missing.yaml"), env=env)
    assert code == 2 and "cannot read" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text("targets:\n  x: {kind: nope}\nroutes:\n  - target: x\n")
    code, _, err = await run_cli(str(bad), env=env)
    assert code == 2 and "relay check-config" in err
