"""What every target that calls an endpoint shares: one pooled HTTP session, a timeout on every call,
one fresh login on 401, the answer to "is this failure worth retrying?" (with Retry-After), the guard
on the correlation key, and the CI references of an incident.

`VendorHTTP` is the relay's one HTTP client for targets: every session, timeout and error mapping is
here. What a vendor's body means stays in the vendor's module.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import functools
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import aiohttp
from multidict import CIMultiDictProxy

from relay.http_client import USER_AGENT, client_session
from relay.targets import Incident, TargetError, is_retryable_status
from relay.targets.target_config import Options

# Statuses whose Retry-After we honour (RFC 9110 §10.2.3 allows it on 3xx too; vendors send it on these).
RETRY_AFTER_STATUSES = (429, 503)
_DETAIL_CHARS = 300


@dataclass(frozen=True, slots=True)
class Reply:
    """A complete HTTP answer, read before the connection went back to the pool."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    method: str
    path: str

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";")[0].strip().lower()

    @property
    def is_json(self) -> bool:
        kind = self.content_type
        return kind == "application/json" or kind.endswith("+json")

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)

    def json_or_none(self) -> Any:
        """The body's JSON, or None when it is not JSON (vendors' error bodies are often HTML or empty)."""
        if not self.is_json:
            return None
        try:
            return self.json()
        except ValueError:
            return None


class Auth(Protocol):
    """Where the Authorization header comes from."""

    async def header(self, http: VendorHTTP) -> str:
        """The Authorization header value to send now (may log in first)."""
        ...

    def expired(self, header: str) -> bool:
        """A call sent with `header` got 401: forget it. True if asking again may get a fresh one."""
        ...


class StaticAuth:
    """Credentials that never change during a run: HTTP basic, or a fixed API token."""

    def __init__(self, value: str) -> None:
        self._value = value

    @classmethod
    def basic(cls, username: str, password: str) -> StaticAuth:
        raw = f"{username}:{password}".encode()
        return cls("Basic " + base64.b64encode(raw).decode("ascii"))

    async def header(self, http: VendorHTTP) -> str:
        return self._value

    def expired(self, header: str) -> bool:
        return False

    def __repr__(self) -> str:  # never show the secret
        return "StaticAuth(<redacted>)"


def basic_auth(auth: Options, env: Mapping[str, str]) -> StaticAuth:
    """HTTP basic credentials from an `auth` block: `username`, and the variable `password_env` names."""
    auth.reject_unknown({"type", "username", "password_env"})
    return StaticAuth.basic(auth.text("username"), auth.secret("password_env", env))


class TokenAuth:
    """A bearer-style token fetched by a login call, cached until it expires or the server says 401.

    Concurrent calls share one login; a 401 forgets only the token that call used, so a burst of
    401s on the same stale token leads to one new login, not one each.
    """

    def __init__(
        self,
        scheme: str,
        login: Callable[[VendorHTTP], Awaitable[tuple[str, float | None]]],
        *,
        default_lifetime: float,
        margin: float = 60.0,
    ) -> None:
        self._scheme = scheme
        self._login = login
        self._default_lifetime = default_lifetime
        self._margin = margin
        self._token: str | None = None
        self._good_until = 0.0
        self._lock = asyncio.Lock()
        self.logins = 0

    async def header(self, http: VendorHTTP) -> str:
        async with self._lock:
            if self._token is None or time.monotonic() >= self._good_until:
                token, lifetime = await self._login(http)
                self.logins += 1
                life = lifetime if lifetime and lifetime > 0 else self._default_lifetime
                self._token = token
                self._good_until = time.monotonic() + max(life - self._margin, life / 2)
            return f"{self._scheme} {self._token}"

    def expired(self, header: str) -> bool:
        if self._token is not None and header == f"{self._scheme} {self._token}":
            self._token = None
        return True

    def take(self) -> str | None:
        """Hand over the cached token (to log it out) and forget it."""
        token, self._token = self._token, None
        return token

    def __repr__(self) -> str:
        return f"TokenAuth({self._scheme}, <redacted>)"


class VendorHTTP:
    """One target's HTTP client: a lazily created pooled session and an explicit timeout per call.

    Calls go to `base_url + path`, `base_url` as given (`Options.base_url` has dropped a trailing
    slash; a forward endpoint is a whole URL, query string included, called with path "").
    """

    def __init__(
        self,
        *,
        target: str,
        base_url: str,
        timeout_seconds: float,
        max_connections: int,
        auth: Auth | None,
        logger: logging.Logger,
        user_agent: str = USER_AGENT,
    ) -> None:
        self.target = target
        self.base_url = base_url
        self.timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self.max_connections = max_connections
        self.auth = auth
        self.log = logger
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_options(
        cls, opts: Options, *, base_url: str, auth: Auth | None, logger: logging.Logger
    ) -> VendorHTTP:
        """The client for a target block: its `timeout_seconds`, and `max_concurrency` connections."""
        return cls(
            target=opts.target,
            base_url=base_url,
            timeout_seconds=opts.timeout_seconds(),
            max_connections=opts.max_concurrency(),
            auth=auth,
            logger=logger,
        )

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = client_session(
                timeout=self.timeout, max_connections=self.max_connections, headers={"User-Agent": self._user_agent}
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        form: Mapping[str, str] | None = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        accept: str | None = "application/json",
        authenticate: bool = True,
    ) -> Reply:
        """Send one call. A 401 makes the auth log in again and the call is sent once more.

        The body is `json_body`, `form` or raw bytes (`data`, with its Content-Type in `headers`);
        `accept=None` sends no Accept header, for a receiver whose answer the caller does not read.
        """
        hdrs = dict(headers or {})
        if accept is not None:
            hdrs.setdefault("Accept", accept)
        body: dict[str, Any] = {}
        if json_body is not None:
            body["json"] = json_body
        elif form is not None:
            body["data"] = dict(form)
        elif data is not None:
            body["data"] = data
        sent_with = await self.auth.header(self) if authenticate and self.auth else None
        reply = await self._send(method, path, params, body, hdrs, sent_with)
        if reply.status == 401 and sent_with is not None and self.auth and self.auth.expired(sent_with):
            self.log.info("%s: %s answered 401; logging in again once", self.target, _call(method, path))
            sent_with = await self.auth.header(self)
            reply = await self._send(method, path, params, body, hdrs, sent_with)
        return reply

    async def _send(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        body: Mapping[str, Any],
        headers: Mapping[str, str],
        authorization: str | None,
    ) -> Reply:
        hdrs = dict(headers)
        if authorization is not None:
            hdrs["Authorization"] = authorization
        kwargs: dict[str, Any] = {"headers": hdrs, "timeout": self.timeout, "allow_redirects": False, **body}
        if params:
            kwargs["params"] = dict(params)
        try:
            async with self._get_session().request(method, self.base_url + path, **kwargs) as resp:
                content = await resp.read()
                reply = Reply(resp.status, resp.headers, content, method, path)
        except TimeoutError as exc:
            raise TargetError(
                f"{self.target}: {_call(method, path)} timed out after {self.timeout.total:g}s",
                retryable=True,
                unanswered=True,
            ) from exc
        except aiohttp.ClientError as exc:
            # A connection that was never made (refused, DNS, TLS) sent nothing; any other failure
            # (reset, dropped, a truncated answer) may have reached the target.
            raise TargetError(
                f"{self.target}: {_call(method, path)} failed: {type(exc).__name__}: {exc}",
                retryable=True,
                unanswered=not isinstance(exc, aiohttp.ClientConnectorError),
            ) from exc
        self.log.debug("%s: %s -> %s", self.target, _call(method, path), reply.status)
        return reply

    def failure(self, reply: Reply, what: str, detail: str | None = None) -> TargetError:
        """The TargetError for a non-success reply: retryable or not, with Retry-After when given."""
        status = reply.status
        if 200 <= status < 300:  # a success we did not expect: a page in the way, or a changed API
            if not reply.is_json:
                return self.not_json(reply, what)
            return self.bad_answer(reply, what, "that status is not what this call answers")
        text = (detail if detail is not None else reply.text()).strip().replace("\n", " ")[:_DETAIL_CHARS]
        hint = ""
        if 300 <= status < 400:
            hint = f" (redirected to {reply.headers.get('Location', '?')}: wrong base_url, or a login page)"
        elif status == 401:
            hint = " (check the credentials)"
        elif status == 403:
            hint = " (the account lacks a role or the record is read-only)"
        retry_after = (
            parse_retry_after(reply.headers.get("Retry-After")) if status in RETRY_AFTER_STATUSES else None
        )
        return TargetError(
            f"{self.target}: {what} failed: HTTP {status}{hint}: {text or '(empty body)'}",
            retryable=is_retryable_status(status),
            retry_after=retry_after,
            status=status,
        )

    def parse_json(
        self, reply: Reply, what: str, error_text: Callable[[Reply], str], ok: tuple[int, ...] = (200,)
    ) -> Any:
        """The JSON of a reply whose status is in `ok`; otherwise the TargetError that says why not.

        `error_text` reads the vendor's own error message from a failed reply (each API words it
        differently).
        """
        if reply.status not in ok:
            raise self.failure(reply, what, error_text(reply))
        if not reply.is_json:
            raise self.not_json(reply, what)
        try:
            return reply.json()
        except ValueError:
            raise self.not_json(reply, what) from None

    def not_json(self, reply: Reply, what: str) -> TargetError:
        """A success status whose body is not JSON: a login page, a proxy, a hibernating instance."""
        return TargetError(
            f"{self.target}: {what} answered HTTP {reply.status} "
            f"with {reply.content_type or 'no content type'} "
            "instead of JSON (instance asleep, or a proxy/login page in the way); will retry",
            retryable=True,
            status=reply.status,
        )

    def bad_answer(self, reply: Reply, what: str, problem: str) -> TargetError:
        """A success reply we cannot use: the vendor changed, or something in between did."""
        return TargetError(
            f"{self.target}: {what} answered HTTP {reply.status} but {problem}",
            retryable=False,
            status=reply.status,
        )


def _call(method: str, path: str) -> str:
    """A call as messages name it: `GET /api/now/table/incident`, or just `POST` to a whole endpoint URL."""
    return f"{method} {path}" if path else method


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def checked_key(target: str, incident: Incident, *, max_length: int, forbidden: str = "") -> str:
    """The incident's correlation key, refused when a search on it could match the wrong tickets.

    An empty key matched unrelated incidents in a peer tool (and closed them); a key with the query
    language's separators would change the query. Neither is retryable.
    """
    key = incident.correlation_key
    if not key or not key.strip() or key != key.strip():
        raise TargetError(
            f"{target}: refusing an empty or padded correlation key {key!r}: a search on it would match "
            "unrelated tickets",
            retryable=False,
        )
    if len(key) > max_length:
        raise TargetError(
            f"{target}: correlation key is {len(key)} characters, over the {max_length} the field holds; "
            "use the alert GUID (or a hash) as the key",
            retryable=False,
        )
    bad = sorted(set(_refused_characters(forbidden).findall(key)))
    if bad:
        raise TargetError(
            f"{target}: correlation key {key!r} contains {bad!r}, which the search language would interpret",
            retryable=False,
        )
    return key


@functools.cache
def _refused_characters(forbidden: str) -> re.Pattern[str]:
    """One pattern for a target's forbidden characters and the control characters (every delivery asks;
    a target has one forbidden set, so the cache holds one pattern per target kind)."""
    return re.compile("[\x00-\x1f" + "".join(re.escape(c) for c in forbidden) + "]")


@dataclass(frozen=True, slots=True)
class CIRef:
    """One configuration item to look up in a CMDB: its ARM id when known, and the name it goes by."""

    arm_id: str | None
    name: str


def ci_references(incident: Incident) -> list[CIRef]:
    """The incident's configuration items, each paired with its ARM id when the alert carries one.

    `configuration_items` says which CIs this incident is about (names or ARM ids); a name takes the
    ARM id of the `resource_ids` entry it names. Duplicates (in any case) are dropped.
    """
    ids_by_name: dict[str, str] = {}
    for rid in incident.resource_ids:
        if is_arm_id(rid.strip()):
            ids_by_name.setdefault(arm_name(rid.strip()).lower(), rid.strip())
    refs: list[CIRef] = []
    seen: set[str] = set()
    for raw in incident.configuration_items:
        item = raw.strip()
        if not item:
            continue
        ref = CIRef(item, arm_name(item)) if is_arm_id(item) else CIRef(ids_by_name.get(item.lower()), item)
        identity = (ref.arm_id or ref.name).lower()
        if identity not in seen:
            seen.add(identity)
            refs.append(ref)
    return refs


def is_arm_id(value: str) -> bool:
    return value.lower().startswith("/subscriptions/")


def arm_name(arm_id: str) -> str:
    """The resource name: the last segment of an ARM id."""
    return [part for part in arm_id.split("/") if part][-1]
