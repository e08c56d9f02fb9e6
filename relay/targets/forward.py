"""The forward target: the original common-schema body, byte for byte, to an endpoint that understands it.

For a vendor's own Azure Monitor endpoint (ServiceNow's Event Management connector
`/api/sn_em_connector/em/inbound_event?source=azuremonitor`, a BMC Helix Integration Studio flow) or
any webhook. The receiver owns the incident lifecycle; the relay still owns token checks, durability,
per-alert order, retries and dead letters. Auth: none, basic, bearer, or a custom header. An events
endpoint cannot be read back: a body whose answer was lost is sent again, and the receiver's own
deduplication (the common schema's alert id and condition) must absorb it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from relay.targets import Finding, TargetError
from relay.targets.target_config import COMMON_KEYS, Options, option_keys
from relay.targets.vendor_api import Auth, StaticAuth, VendorHTTP, basic_auth

log = logging.getLogger("relay.targets.forward")

AUTH_TYPES = ("none", "basic", "bearer", "header")
# Headers that must stay the relay's own: a custom auth header may not replace them.
RESERVED_HEADERS = frozenset({"content-type", "content-length", "host", "transfer-encoding"})


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
        self, name: str, http: VendorHTTP, options: ForwardOptions, headers: Mapping[str, str] | None = None
    ) -> None:
        self.name = name
        self.http = http  # its base_url is the whole endpoint URL
        self.options = options
        self._headers = {"Content-Type": "application/json", **(headers or {})}  # + a custom auth header

    @property
    def url(self) -> str:
        return self.http.base_url

    async def check(self) -> list[Finding]:
        """Nothing can be checked: the endpoint takes only POSTs, and each one would deliver an alert."""
        return [Finding("endpoint", "unchecked", "not checked: the endpoint's only call delivers an alert")]

    async def forward(self, body: bytes) -> None:
        reply = await self.http.request("POST", "", data=body, headers=self._headers, accept=None)
        if not 200 <= reply.status < 300:
            raise self.http.failure(reply, "POST")
        if self.options.reject_html and reply.content_type == "text/html":
            # A login page or a hibernating instance answers 200 with HTML: nothing was received.
            raise TargetError(
                f"{self.name}: POST answered HTTP {reply.status} with an HTML page instead of an API answer "
                "(instance asleep, or a proxy/login page in the way); will retry",
                retryable=True, status=reply.status,
            )

    async def close(self) -> None:
        await self.http.close()

    def __repr__(self) -> str:  # never show the credentials
        return f"ForwardTarget({self.name!r}, {self.url!r})"


TARGET_CLASS = ForwardTarget


def from_config(name: str, cfg: Mapping[str, Any], env: Mapping[str, str] = os.environ) -> ForwardTarget:
    """`base_url` is the full endpoint (a query string is kept); auth none, basic, bearer or header."""
    opts = Options(name, cfg)
    opts.reject_unknown(COMMON_KEYS | OPTION_KEYS)
    url = opts.base_url(endpoint=True)
    options = opts.read(ForwardOptions)
    auth, headers = _auth(opts, env)
    http = VendorHTTP.from_options(opts, base_url=url, auth=auth, logger=log)
    opts.check()
    return ForwardTarget(name, http, options, headers)


def _auth(opts: Options, env: Mapping[str, str]) -> tuple[Auth | None, dict[str, str]]:
    """The Authorization header's source, or the custom header (`type: header`) to send on every call."""
    if not opts.has("auth"):
        return None, {}
    auth = opts.section("auth")
    kind = auth.variant("type", AUTH_TYPES, "none")
    if kind is None:
        return None, {}
    if kind == "none":
        auth.reject_unknown({"type"})
        return None, {}
    if kind == "basic":
        return basic_auth(auth, env), {}
    if kind == "bearer":
        auth.reject_unknown({"type", "token_env"})
        return StaticAuth("Bearer " + auth.secret("token_env", env)), {}
    auth.reject_unknown({"type", "name", "value_env"})
    header = auth.text("name", max_length=100)
    if header and (header.lower() in RESERVED_HEADERS or not header.replace("-", "").isalnum()):
        auth.problem("name", f"must be a header name like X-Api-Key (got {header!r})")
    return None, {header: auth.secret("value_env", env)}
