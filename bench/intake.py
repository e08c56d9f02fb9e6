"""Intake: POST /alerts against the ceiling of a bare aiohttp handler, measured in the same run.

wrk, 32 connections, a 4 KB common-schema body with a new alert id per request (so every one is a
202 and a durable commit), SQLite with synchronous=FULL. Hot path: one token reused, as Azure does.
Cold path: a new token on every request (an RSA verify each). Memory: the relay's RSS idle and at
its peak under load.
"""

from __future__ import annotations

import json
import multiprocessing
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from bench.harness import ROOT, Process, free_port, relay_process, rss_mib, run_wrk, wait_http
from devtools.dev_issuer import DevIssuer

BODY_SAMPLE = ROOT / "tests" / "samples" / "testaction-log-v2-fired.json"  # 4,004 bytes
SECONDS = 10
COLD_SECONDS = 5
COLD_TOKENS = 25_000
# Before each server's figures: load it this long first. With 2 s, intake's first measured phase (hot)
# came out slower than the heavier cold phase after it: on this machine a fresh relay under load kept
# speeding up for its first ~20 s (warm 7,667, hot 7,509, cold 11,568, hot 9,983, cold 12,541, hot
# 11,609 req/s in one run of alternating phases, 2026-12-03), so the order, not the path, set them apart.
WARMUP_SECONDS = 10

LUA = """
local counter = 0
local body = [==[%(body)s]==]
local tokens = {}
local token_file = "%(tokens)s"
if token_file ~= "" then
  for line in io.lines(token_file) do tokens[#tokens + 1] = line end
end
local fixed = "%(token)s"
request = function()
  counter = counter + 1
  local b = string.gsub(body, "alerts/[%%w%%-]+\\"", "alerts/" .. counter .. "-" .. math.random(1, 1e9) .. "\\"", 1)
  local t = fixed
  if #tokens > 0 then t = tokens[(counter - 1) %% #tokens + 1] end
  return wrk.format("POST", "/alerts", {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. t}, b)
end
"""


def write_script(path: Path, token: str = "", tokens_file: str = "") -> Path:
    body = json.dumps(json.loads(BODY_SAMPLE.read_text()))
    path.write_text(LUA % {"body": body, "token": token, "tokens": tokens_file})
    return path


_ISSUER: DevIssuer | None = None  # handed to forked minting processes (RSA keys do not pickle)


def _mint(n: int) -> list[str]:
    assert _ISSUER is not None
    return [_ISSUER.mint() for _ in range(n)]


def mint_many(issuer: DevIssuer, n: int) -> list[str]:
    """n distinct signed tokens, minted on both cores (an RSA signature each)."""
    global _ISSUER
    _ISSUER = issuer
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
        return [t for chunk in pool.map(_mint, [n // 2, n - n // 2]) for t in chunk]


class PeakRss(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0.0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.2):
            self.peak = max(self.peak, rss_mib(self.pid))


def measure(issuer: DevIssuer, work: Path) -> dict:
    results: dict = {"seconds": SECONDS, "connections": 32, "body_bytes": BODY_SAMPLE.stat().st_size,
                     "rss_scope": "tree"}  # rss_mib sums the relay's helper processes
    hot = write_script(work / "hot.lua", token=issuer.mint(lifetime=7200))

    port = free_port()
    bare = Process([sys.executable, "-m", "bench.bare_server", str(port)])
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", bare.proc)
        run_wrk(f"http://127.0.0.1:{port}/alerts", hot, seconds=WARMUP_SECONDS)  # warm-up
        results["ceiling"] = run_wrk(f"http://127.0.0.1:{port}/alerts", hot, seconds=SECONDS).__dict__
    finally:
        bare.stop()

    def relay_env(db: str) -> dict[str, str]:
        return {**issuer.relay_env(), "RELAY_STORE": f"sqlite:///{work / db}", "RELAY_LOG_LEVEL": "WARNING"}

    port = free_port()
    intake = Process([sys.executable, "-m", "bench.intake_server"],
                     {**relay_env("intake.db"), "RELAY_HOST": "127.0.0.1", "RELAY_PORT": str(port)})
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", intake.proc)
        time.sleep(1)
        results["rss_idle_mib"] = rss_mib(intake.pid)
        run_wrk(f"http://127.0.0.1:{port}/alerts", hot, seconds=WARMUP_SECONDS)
        peak = PeakRss(intake.pid)
        peak.start()
        results["intake_hot"] = run_wrk(f"http://127.0.0.1:{port}/alerts", hot, seconds=SECONDS).__dict__
        peak.done.set()
        peak.join()
        results["rss_load_mib"] = peak.peak

        tokens = mint_many(issuer, COLD_TOKENS)
        (work / "tokens.txt").write_text("\n".join(tokens) + "\n")
        cold = write_script(work / "cold.lua", tokens_file=str(work / "tokens.txt"))
        results["intake_cold"] = run_wrk(f"http://127.0.0.1:{port}/alerts", cold, seconds=COLD_SECONDS).__dict__
        results["cold_tokens"] = len(tokens)
    finally:
        intake.stop()

    # The whole relay as deployed: intake plus the delivery worker (to a dry-run target).
    config = work / "relay.yaml"
    config.write_text(f"targets:\n  preview: {{kind: dry_run, path: {json.dumps(str(work / 'calls.jsonl'))}}}\n"
                      "routes:\n  - target: preview\n")
    port = free_port()
    relay = relay_process({**relay_env("relay.db"), "RELAY_CONFIG": str(config)}, port)
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", relay.proc)
        results["relay_rss_idle_mib"] = rss_mib(relay.pid)
        results["relay_hot"] = run_wrk(f"http://127.0.0.1:{port}/alerts", hot, seconds=SECONDS).__dict__
    finally:
        relay.stop()
    return results


def run() -> dict:
    issuer = DevIssuer()
    with issuer.serving_in_thread(), tempfile.TemporaryDirectory(prefix="bench-intake-") as tmp:
        return measure(issuer, Path(tmp))


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
