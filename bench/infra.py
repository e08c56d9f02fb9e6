"""Infrastructure: time to evaluate the Pulumi program under mocks.

Two measurements, each run a fresh process through `infra.plan.run` (the code path `make plan` takes):
- `by_rules`: the dev stack's alert rules (one of every kind) repeated to 10, 100 and 1,000; the wall
  time of the program run itself and of the whole process (imports included).
- `versus_bare`: 1,000 static metric alerts on one action group, declared by our program (the dev
  stack with its `vm-cpu-high` rule repeated) and by bench/bare_program.py, a bare program with no
  config model or components, under the same mocks. Each side runs `RUNS` times, alternating, and the
  fastest run counts (the machine is shared); reported are wall and CPU seconds and our/bare ratio.
  Before timing, the two programs' metric alerts are compared: they must declare the same inputs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from bench.harness import ROOT

COUNTS = (10, 100, 1000)
BARE_RULES = 1000
RUNS = 3
AIM_RATIO = 1.3

CHILD = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.infra.harness import stack_config, stack_value
from infra import plan
n, variant = {n}, {variant!r}
base = stack_value("dev", "alerts")
if variant == "ours-metric":
    base = [rule for rule in base if rule["name"] == "vm-cpu-high"]
alerts = []
for i in range(n):
    rule = dict(base[i % len(base)])
    rule["name"] = f"{{rule['name']}}-{{i:04d}}"
    alerts.append(rule)
kwargs = {{}}
if variant == "bare":
    config, secrets = stack_config("dev")
    config["bench:rules"] = str(n)
    kwargs["program"] = Path({root!r}) / "bench" / "bare_program.py"
else:
    config, secrets = stack_config("dev", alerts=alerts)
start, cpu = time.perf_counter(), time.process_time()
result = plan.run("dev", config, secrets, **kwargs)
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
first = next(r for r in result.resources  # the mocks see resources in any order
             if r.type == "azure-native:monitor:MetricAlert" and r.inputs["ruleName"].endswith("-0000"))
print(json.dumps({{"seconds": seconds, "cpu_seconds": cpu, "resources": len(result.resources),
                  "first_metric_alert": first.inputs}}, sort_keys=True))
"""


def _child(n: int, variant: str) -> tuple[dict, float]:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), n=n, variant=variant)], cwd=ROOT,
                         capture_output=True, text=True, check=True, timeout=900).stdout
    return json.loads(out.strip().splitlines()[-1]), time.perf_counter() - start


def by_rules() -> dict:
    results = {}
    for n in COUNTS:
        child, wall = _child(n, "ours-mixed")
        results[str(n)] = {"program_seconds": round(child["seconds"], 2), "process_seconds": round(wall, 2),
                           "resources": child["resources"]}
    return results


def versus_bare() -> dict:
    runs: dict[str, list[dict]] = {"ours": [], "bare": []}
    for _ in range(RUNS):
        for side, variant in (("ours", "ours-metric"), ("bare", "bare")):
            runs[side].append(_child(BARE_RULES, variant)[0])
    ours, bare = runs["ours"][0]["first_metric_alert"], runs["bare"][0]["first_metric_alert"]
    if ours != bare:
        raise RuntimeError(f"bench/bare_program.py no longer declares infra/alerting.py's metric alert:\n"
                           f"ours: {json.dumps(ours, sort_keys=True)}\nbare: {json.dumps(bare, sort_keys=True)}")
    best = {side: {"seconds": round(min(r["seconds"] for r in rs), 2),
                   "cpu_seconds": round(min(r["cpu_seconds"] for r in rs), 2),
                   "resources": rs[0]["resources"]} for side, rs in runs.items()}
    return {"rules": BARE_RULES, "runs": RUNS, "aim_ratio": AIM_RATIO, **best,
            "ratio": round(best["ours"]["seconds"] / best["bare"]["seconds"], 2),
            "cpu_ratio": round(best["ours"]["cpu_seconds"] / best["bare"]["cpu_seconds"], 2)}


def run() -> dict:
    return {"by_rules": by_rules(), "versus_bare": versus_bare()}


if __name__ == "__main__":
    only = sys.argv[1:]  # `python -m bench.infra versus_bare` runs one measurement
    print(json.dumps({name: globals()[name]() for name in only} if only else run(), indent=2))
