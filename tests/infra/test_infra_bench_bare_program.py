"""bench/bare_program.py, the plan-time ceiling `make bench` measures our program against, declares the
same metric alerts as infra/alerting.py; otherwise the ratio would compare different resources."""

from __future__ import annotations

from infra import plan as infra_plan
from infra.plan import REPO_ROOT
from tests.infra.harness import stack_config, stack_value

BARE_PROGRAM = REPO_ROOT / "bench" / "bare_program.py"
METRIC_ALERT = "azure-native:monitor:MetricAlert"


def test_bare_program_declares_the_metric_alerts_our_program_declares() -> None:
    (cpu,) = [rule for rule in stack_value("dev", "alerts") if rule["name"] == "vm-cpu-high"]
    rules = [{**cpu, "name": f"vm-cpu-high-{i:04d}"} for i in range(3)]
    ours = [r for r in infra_plan.run("dev", *stack_config("dev", alerts=rules)).of_type(METRIC_ALERT)
            if r.name.startswith("alerting-")]  # not self-monitoring's rules
    config, secrets = stack_config("dev")
    bare = infra_plan.run("dev", {**config, "bench:rules": "3"}, secrets, program=BARE_PROGRAM)
    assert len(bare.resources) == 5, [r.name for r in bare.resources]  # resource group, action group, 3 alerts
    def by_rule(resources: list[infra_plan.Declared]) -> dict[str, dict]:
        return {r.inputs["ruleName"]: r.inputs for r in resources}  # the mocks see them in any order

    assert by_rule(bare.of_type(METRIC_ALERT)) == by_rule(ours), (
        "bench/bare_program.py no longer declares infra/alerting.py's metric alert: update it"
    )
    assert {r.type for r in bare.resources} == {
        "azure-native:resources:ResourceGroup", "azure-native:monitor:ActionGroup", METRIC_ALERT
    }
