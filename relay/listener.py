"""The relay's public listener under file-descriptor pressure: a cap on open connections (past it a new
connection gets a 503 and is closed at once, so the process keeps descriptors for its store, its targets
and /healthz), RLIMIT_NOFILE raised to its hard limit at start, and asyncio's accept errors logged at most
once per interval instead of once per failed accept (215 MB of log in 70 s at the limit, unbounded)."""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

log = logging.getLogger("relay.listener")

MAX_CONNECTIONS = 1024  # open client connections on the public port; lowered to fit RLIMIT_NOFILE
RESERVED_DESCRIPTORS = 128  # kept free for the store, the targets, key fetches and the metrics port
ACCEPT_ERROR_LOG_INTERVAL_SECONDS = 10.0
_OVER_CAP = (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Type: application/json\r\n"
             b"Content-Length: 36\r\nConnection: close\r\n\r\n{\"error\": \"too many connections\"}\n\n")


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (containers often start at 1024); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, target, exc)
    return soft


def connection_cap(open_files_limit: int, wanted: int = MAX_CONNECTIONS) -> int:
    """The connection cap that fits the open-files limit, keeping RESERVED_DESCRIPTORS free (at least 16)."""
    return max(16, min(wanted, open_files_limit - RESERVED_DESCRIPTORS))


class _Refused(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(_OVER_CAP)  # type: ignore[attr-defined]
        transport.close()


class CappedTCPSite(web.TCPSite):
    """A TCPSite that serves at most `max_connections` connections at once."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, *, max_connections: int, **kw: Any) -> None:
        super().__init__(runner, host, port, **kw)
        self.max_connections = max_connections
        self.refused = 0
        self._refusal_log = RateLimitedLog(ACCEPT_ERROR_LOG_INTERVAL_SECONDS)

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None

        def factory() -> asyncio.Protocol:
            if len(server.connections) >= self.max_connections:
                self.refused += 1
                if self._refusal_log.should_log(time.monotonic()):
                    log.warning("connection cap of %d reached: refusing new connections with 503 (%d so far)",
                                self.max_connections, self.refused)
                return _Refused()
            return server()

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            factory, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port,
        )
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port


class RateLimitedLog:
    """At most one line per `interval` seconds; `suppressed` counts what was left out since the last one."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last = float("-inf")
        self.suppressed = 0

    def should_log(self, now: float) -> bool:
        if now - self._last >= self.interval:
            self._last = now
            return True
        self.suppressed += 1
        return False


ExceptionHandler = Callable[[asyncio.AbstractEventLoop, dict], None]


def accept_error_handler(interval: float = ACCEPT_ERROR_LOG_INTERVAL_SECONDS,
                         clock: Callable[[], float] = time.monotonic) -> ExceptionHandler:
    """A loop exception handler that logs asyncio's accept errors ("socket.accept() out of system
    resource", EMFILE) once per interval, one line without a traceback; everything else as asyncio would."""
    limiter = RateLimitedLog(interval)

    def handle(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        message = str(context.get("message", ""))
        if message.startswith("socket.accept()"):
            if limiter.should_log(clock()):
                skipped, limiter.suppressed = limiter.suppressed, 0
                log.error("%s: %s (%d more since the last report)", message, context.get("exception"), skipped)
            return
        loop.default_exception_handler(context)

    return handle
