"""`relay serve` as the fault tests meet it: a real process on loopback and SQLite, trusting a
development issuer, delivering to the dry-run target."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from devtools.dev_issuer import DevIssuer
from tests.relay_process import RelayProcess


@dataclass
class LiveRelay:
    issuer: DevIssuer
    process: RelayProcess
    db: Path
    auth: str  # a valid Authorization header, reused as Azure reuses its token

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def metrics_url(self) -> str:
        return self.process.metrics_url

    @property
    def port(self) -> int:
        return self.process.port

    def alive(self) -> bool:
        return self.process.proc is not None and self.process.proc.poll() is None

    def tracebacks(self) -> list[str]:
        """Tracebacks in the log: exceptions nothing expected. aiohttp's own refusals of malformed HTTP
        (a 400 from its parser, which it logs with a traceback) are left out."""
        lines = self.process.log_path.read_text(errors="replace").splitlines()
        found = []
        for i, line in enumerate(lines):
            if not line.startswith("Traceback (most recent call last)"):
                continue
            end = next((j for j in range(i + 1, len(lines)) if lines[j][:1] not in (" ", "\t")), len(lines) - 1)
            if not lines[end].startswith("aiohttp.http_exceptions."):
                found.append("\n".join([*lines[max(0, i - 1):i + 1], "  ...", *lines[end - 2:end + 1]]))
        return found
