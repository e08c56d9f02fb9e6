"""What every benchmark needs: free ports, processes to start and measure, wrk, and the machine's name."""

from __future__ import annotations

import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} cores ({cpu}), {mem_gib:.0f} GiB, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")


def rss_mib(pid: int) -> float:
    """The resident set of a process and of its helper processes (the relay's delivery and commit
    processes are its children), summed."""
    return sum(_own_rss_mib(p) for p in [pid, *descendants(pid)])


def _own_rss_mib(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return 0.0  # ended since it was listed
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0  # a zombie has no VmRSS


def descendants(pid: int) -> list[int]:
    found = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return []
    for task in tasks:
        try:
            children = [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
        for child in children:
            found += [child, *descendants(child)]
    return found


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:  # noqa: S310 (loopback)
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready in {timeout}s")


class Process:
    """A server process for one measurement; stopped with SIGTERM, killed if it lingers."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> None:
        out = log.open("w") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(args, env={**os.environ, **(env or {})}, cwd=ROOT, stdout=out, stderr=out)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def relay_process(env: dict[str, str], port: int, log: Path | None = None) -> Process:
    return Process([sys.executable, "-m", "relay", "serve"],
                   {**env, "RELAY_HOST": "127.0.0.1", "RELAY_PORT": str(port)}, log)


@dataclass
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    errors: int


def require_wrk() -> str:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is not installed: `apt-get install wrk` (make bench does this when run as root)")
    return wrk


def run_wrk(url: str, script: Path, connections: int = 32, seconds: int = 10, threads: int = 1) -> WrkResult:
    out = subprocess.run(
        [require_wrk(), f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True, timeout=seconds + 60,
    ).stdout
    return wrk_result(out)


def start_wrk(url: str, script: Path, connections: int = 32, seconds: int = 10, threads: int = 1
              ) -> subprocess.Popen[str]:
    """wrk in the background, for a run that ends on a condition (stop_wrk) rather than at -d."""
    return subprocess.Popen(
        [require_wrk(), f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop_wrk(proc: subprocess.Popen[str]) -> WrkResult:
    """Stop a background wrk as Ctrl-C would (it then prints its figures for the run so far)."""
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    return wrk_result(out)


def wrk_result(out: str) -> WrkResult:

    def latency(pct: str) -> float:
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            raise RuntimeError(f"no {pct}% latency in wrk output:\n{out}")
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    non_2xx = int(m.group(1)) if (m := re.search(r"Non-2xx or 3xx responses: (\d+)", out)) else 0
    errors = 0
    if "Socket errors" in out:
        errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return WrkResult(rps, latency("50"), latency("99"), requests, non_2xx, errors)


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]
