"""The storm's load generator, in a process of its own: `python -m bench.storm_sender URL BODIES_FILE`
(Authorization from the STORM_AUTHORIZATION environment variable, one JSON body per line) posts every
body, `SENDERS` at a time, and prints {"start": ..., "timings": [[sent, answered], ...]} (time.monotonic,
which is one clock for every process on the machine).

Apart from the relay and from the ServiceNow fake: in the benchmark's own process the fake's event loop
shared a GIL with the senders, so the fake's work showed up as intake latency.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import time

import aiohttp

SENDERS = 32


async def post_storm(url: str, auth: str, bodies: list[bytes]) -> tuple[float, list[tuple[float, float]]]:
    """Post every body, `SENDERS` at a time: (when the first went out, [(sent, answered)] per request)."""
    queue = list(reversed(bodies))
    timings: list[tuple[float, float]] = []
    headers = {"Authorization": auth, "Content-Type": "application/json"}

    async def sender(http: aiohttp.ClientSession) -> None:
        while queue:
            body = queue.pop()
            sent = time.monotonic()
            async with http.post(url, data=body, headers=headers) as resp:
                if resp.status != 202:
                    raise RuntimeError(f"POST answered {resp.status}: {await resp.text()}")
            timings.append((sent, time.monotonic()))

    connector = aiohttp.TCPConnector(limit=SENDERS)
    async with aiohttp.ClientSession(connector=connector) as http:
        start = time.monotonic()
        await asyncio.gather(*(sender(http) for _ in range(SENDERS)))
    return start, timings


def main() -> int:
    url, path = sys.argv[1:3]
    with open(path, "rb") as f:
        bodies = [line.rstrip(b"\n") for line in f if line.strip()]
    gc.collect()
    gc.disable()  # a load generator that pauses to collect would count its pauses as intake latency
    start, timings = asyncio.run(post_storm(url, os.environ["STORM_AUTHORIZATION"], bodies))
    json.dump({"start": start, "timings": timings}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
