"""The forward target: the original common-schema body, byte for byte, to an endpoint that understands it.

For a vendor's own Azure Monitor endpoint (ServiceNow's Event Management connector
`/api/sn_em_connector/em/inbound_event?source=azuremonitor`, a BMC Helix Integration Studio flow) or
any webhook. The receiver owns the incident lifecycle; the relay still owns token checks, durability,
per-alert order, retries and dead letters. Auth: none, basic, bearer, or a custom header.
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import aiohttp

from relay.targets import TargetError, is_retryable_status
from relay.targets.target_config import COMMON_KEYS, Options, is_loopback, option_keys, split_url
from relay.targets.vendor_api import RETRY_AFTER_STATUSES, parse_retry_after

log = logging.getLogger("relay.targets.forward")

AUTH_TYPES = ("none", "basic", "bearer", "header")
# Headers that must stay the relay's own: a custom auth header may not replace them.
RESERVED_HEADERS = frozenset({"content-type", "content-length", "host", "transfer-encoding"})
_DETAIL_CHARS = 300


@dataclass(frozen=True, slots=True)
class ForwardOptions:
    reject_html: bool = True  # a 2xx with an HTML page is a login page or a sleeping instance: retry


OPTION_KEYS = option_keys(ForwardOptions)


class ForwardTarget:
    kind: ClassVar[str] = "forward"
    limits: ClassVar[None] = None  # it sends the alert's own body, no ticket text
    severity_fields: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    options_class: ClassVar[type] = ForwardOptions

    def __init__(
        self,
        name: str,
        url: str,
        *,
        auth_header: tuple[str, str] | None,
        timeout_seconds: float,
        max_concurrency: int,
        reject_html: bool = True,
    ) -> None:
        self.name = name
        self.url = url
        self._auth_header = auth_header
        self.timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self.max_concurrency = max_concurrency
        self.reject_html = reject_html
        self._session: aiohttp.ClientSession | None = None

    async def forward(self, body: bytes) -> None:
        headers = {"Content-Type": "application/json", "User-Agent": "secure-export-relay"}
        if self._auth_header is not None:
            headers[self._auth_header[0]] = self._auth_header[1]
        try:
            async with self._get_session().post(self.url, data=body, headers=headers,
                                                allow_redirects=False) as resp:
                status = resp.status
                content_type = resp.content_type
                text = (await resp.read()).decode("utf-8", errors="replace")
                retry_after = resp.headers.get("Retry-After")
        except TimeoutError as exc:
            raise TargetError(f"{self.name}: POST timed out after {self.timeout.total:g}s", retryable=True) from exc
        except aiohttp.ClientError as exc:
            raise TargetError(f"{self.name}: POST failed: {type(exc).__name__}: {exc}", retryable=True) from exc
        detail = " ".join(text.split())[:_DETAIL_CHARS] or "(empty body)"
        if 200 <= status < 300:
            if self.reject_html and content_type == "text/html":
                # A login page or a hibernating instance answers 200 with HTML: nothing was received.
                raise TargetError(
                    f"{self.name}: POST answered HTTP {status} with an HTML page instead of an API answer "
                    "(instance asleep, or a proxy/login page in the way); will retry",
                    retryable=True, status=status,
                )
            return
        raise TargetError(
            f"{self.name}: POST answered HTTP {status}: {detail}",
            retryable=is_retryable_status(status),
            retry_after=parse_retry_after(retry_after) if status in RETRY_AFTER_STATUSES else None,
            status=status,
        )

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_concurrency), timeout=self.timeout
            )
        return self._session

    def __repr__(self) -> str:  # never show the credentials
        return f"ForwardTarget({self.name!r}, {self.url!r})"


TARGET_CLASS = ForwardTarget


def from_config(name: str, cfg: Mapping[str, Any], env: Mapping[str, str] = os.environ) -> ForwardTarget:
    """`base_url` is the full endpoint (a query string is kept); auth none, basic, bearer or header."""
    opts = Options(name, cfg)
    opts.reject_unknown(COMMON_KEYS | OPTION_KEYS)
    url = _endpoint(opts)
    options = opts.read(ForwardOptions)
    target = ForwardTarget(
        name,
        url,
        auth_header=_auth(opts, env),
        timeout_seconds=opts.timeout_seconds(),
        max_concurrency=opts.max_concurrency(),
        reject_html=options.reject_html,
    )
    opts.check()
    return target


def _endpoint(opts: Options) -> str:
    raw = opts.text("base_url")
    if not raw:
        return ""
    parts = split_url(raw)
    if parts is None or parts.scheme not in ("https", "http") or not parts.hostname or parts.fragment:
        opts.problem("base_url", f"must be an https URL without a #fragment (got {raw!r})")
    elif parts.scheme == "http" and not is_loopback(parts.hostname):
        opts.problem(
            "base_url",
            "must use https: the alert and credentials travel in it "
            f"(plain http is allowed only on loopback, got {raw!r})",
        )
    return raw


def _auth(opts: Options, env: Mapping[str, str]) -> tuple[str, str] | None:
    if not opts.has("auth"):
        return None
    auth = opts.section("auth")
    kind = auth.variant("type", AUTH_TYPES, "none")
    if kind is None:
        return None
    if kind == "none":
        auth.reject_unknown({"type"})
        return None
    if kind == "basic":
        auth.reject_unknown({"type", "username", "password_env"})
        raw = f"{auth.text('username')}:{auth.secret('password_env', env)}".encode()
        return "Authorization", "Basic " + base64.b64encode(raw).decode("ascii")
    if kind == "bearer":
        auth.reject_unknown({"type", "token_env"})
        return "Authorization", "Bearer " + auth.secret("token_env", env)
    auth.reject_unknown({"type", "name", "value_env"})
    header = auth.text("name", max_length=100)
    if header and (header.lower() in RESERVED_HEADERS or not header.replace("-", "").isalnum()):
        auth.problem("name", f"must be a header name like X-Api-Key (got {header!r})")
    return header, auth.secret("value_env", env)
