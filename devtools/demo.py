"""`make demo`: run the relay locally on embedded defaults and feed it Azure's official sample alerts.

It starts a development token issuer on loopback, starts `relay serve` on SQLite, posts every bundled
common-schema sample with a token shaped like Azure Monitor's, posts them again (Azure retries), shows
what the relay refuses, prints what was accepted, and exits 0. Nothing is left running.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from devtools.dev_issuer import DevIssuer

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "tests" / "samples"
WORKDIR = ROOT / ".demo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def full_samples() -> list[Path]:
    return sorted(
        p for p in SAMPLES.glob("*.json")
        if json.loads(p.read_text()).get("schemaId") == "azureMonitorCommonAlertSchema"
    )


async def wait_ready(base: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"relay exited with {proc.returncode} before it was ready")
            try:
                async with http.get(f"{base}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit("relay did not become ready in time")


async def post(http: aiohttp.ClientSession, url: str, body: bytes, auth: str | None,
               content_type: str = "application/json") -> tuple[int, dict]:
    headers = {"Content-Type": content_type}
    if auth:
        headers["Authorization"] = auth
    async with http.post(url, data=body, headers=headers) as resp:
        try:
            payload = await resp.json(content_type=None)
        except ValueError:
            payload = {}
        return resp.status, payload


async def drive(base: str, issuer: DevIssuer) -> int:
    url = f"{base}/alerts"
    auth = issuer.authorization("2.0")
    samples = full_samples()
    accepted = 0
    async with aiohttp.ClientSession() as http:
        print(f"\n1. Posting {len(samples)} official Azure Monitor sample alerts (v2 token from the dev issuer)")
        for path in samples:
            doc = json.loads(path.read_text())
            e = doc["data"]["essentials"]
            status, _ = await post(http, url, path.read_bytes(), auth)
            accepted += status == 202
            print(f"   {status}  {e.get('monitorCondition') or '-':9} {e['monitoringService']:30} {path.name}")

        print("\n2. Posting them again, as Azure does when it retries a delivery")
        statuses = [(await post(http, url, p.read_bytes(), auth))[0] for p in samples]
        print(f"   {statuses.count(200)} answered 200 (already seen), {statuses.count(202)} stored twice")

        print("\n3. What the relay refuses")
        sample = samples[0].read_bytes()
        noncommon = (SAMPLES / "noncommon-metric-static.json").read_bytes()
        checks = [
            ("no token", sample, None, "application/json"),
            ("token for another tenant", sample,
             "Bearer " + issuer.mint(overrides={"tid": "99999999-9999-4999-8999-999999999999"}), "application/json"),
            ("token without the app role", sample,
             "Bearer " + issuer.mint(overrides={"roles": []}), "application/json"),
            ("legacy (non-common) schema", noncommon, auth, "application/json"),
            ("not JSON", b"hello", auth, "text/plain"),
            ("malformed JSON", b"{", auth, "application/json"),
        ]
        for label, body, a, ctype in checks:
            status, payload = await post(http, url, body, a, ctype)
            detail = payload.get("field") or payload.get("error") or ""
            print(f"   {status}  {label:30} {detail}")

        async with http.get(f"{base}/metrics") as resp:
            metrics = await resp.text()
    pending = [line for line in metrics.splitlines() if line.startswith("relay_pending_deliveries")]
    print(f"\nAccepted {accepted} of {len(samples)} samples; duplicates were not stored twice.")
    if pending:
        print(f"Store: {WORKDIR / 'relay.db'} ({pending[0].split()[-1]} deliveries queued for the worker)")
    return 0 if accepted == len(samples) and statuses.count(200) == len(samples) else 1


def main() -> int:
    shutil.rmtree(WORKDIR, ignore_errors=True)
    WORKDIR.mkdir()
    issuer = DevIssuer()
    with issuer.serving_in_thread():
        port = free_port()
        env = {
            **os.environ,
            **issuer.relay_env(),
            "RELAY_STORE": f"sqlite:///{WORKDIR / 'relay.db'}",
            "RELAY_HOST": "127.0.0.1",
            "RELAY_PORT": str(port),
            "RELAY_LOG_LEVEL": "WARNING",
        }
        log = (WORKDIR / "relay.log").open("w")
        print(f"Starting the relay on http://127.0.0.1:{port} (SQLite store, log in {WORKDIR / 'relay.log'})")
        proc = subprocess.Popen([sys.executable, "-m", "relay", "serve"], env=env, stdout=log, stderr=log)
        try:
            base = f"http://127.0.0.1:{port}"
            asyncio.run(wait_ready(base, proc))
            code = asyncio.run(drive(base, issuer))
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
    return code


if __name__ == "__main__":
    sys.exit(main())
