"""Infrastructure: time to evaluate the Pulumi program under mocks with 10, 100 and 1,000 alert rules.

Each run is a fresh process (`python -m infra.plan`'s code path, as `make plan` takes it), with the dev
stack's alert rules repeated to the count; reported is the wall time of the program run itself and
of the whole process (imports included).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from bench.harness import ROOT

COUNTS = (10, 100, 1000)

CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
from tests.infra.harness import stack_config, stack_value
from infra import plan
n = {n}
base = stack_value("dev", "alerts")
alerts = []
for i in range(n):
    rule = dict(base[i % len(base)])
    rule["name"] = f"{{rule['name']}}-{{i:04d}}"
    alerts.append(rule)
config, secrets = stack_config("dev", alerts=alerts)
start = time.perf_counter()
result = plan.run("dev", config, secrets)
print(json.dumps({{"seconds": time.perf_counter() - start, "resources": len(result.resources)}}))
"""


def run() -> dict:
    results = {}
    for n in COUNTS:
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), n=n)], cwd=ROOT,
                             capture_output=True, text=True, check=True, timeout=600).stdout
        wall = time.perf_counter() - start
        child = json.loads(out.strip().splitlines()[-1])
        results[str(n)] = {"program_seconds": round(child["seconds"], 2), "process_seconds": round(wall, 2),
                           "resources": child["resources"]}
    return results


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
