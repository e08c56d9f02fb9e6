"""`relay serve` as the fault tests meet it: a real process on loopback and SQLite, trusting a
development issuer, delivering to the dry-run target."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from devtools.dev_issuer import DevIssuer
from tests import relay_log
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
        """Tracebacks in the log (JSON or text): exceptions nothing expected. aiohttp's own refusals of
        malformed HTTP (a 400 from its parser, which it logs with a traceback) are left out."""
        return relay_log.tracebacks(self.process.log_path)
