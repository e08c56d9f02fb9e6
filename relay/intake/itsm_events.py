"""POST /itsm-events/{target}: an ITSM tool tells the relay that one of its tickets changed (two-way sync).

The push side of two-way sync, beside the poll (`changed_since`): a ServiceNow business rule or a Request
Tracker scrip posts `{"ticket_id", "correlation_key", "state", "changed_at", "changed_by"}`, signed with a
secret shared per target (`RELAY_ITSM_EVENTS_SECRET_<TARGET>`), and the change goes to the sink the app
registered under `TICKET_CHANGE_SINK_KEY` (the sync core). Inbound is off (404) for a target without a
secret, and for every target while no sink is registered.

Status contract: 202 `{"action": ...}` the sink took the change; 404 inbound off for this target (or no
such target; one answer for all three, so a caller learns nothing of the configuration); 401 a missing or
malformed `X-Relay-Signature`, a timestamp more than 300 s off, or a MAC that does not match (the body
says which, never the secret); 413 a body over 16 KiB; 400 not JSON; 422 a field that is missing or
wrong (the body names it); 503 the sink failed (with Retry-After: the sender retries). Counted in
`relay_itsm_events_total{target,outcome}`. Docs: docs/reconciliation.md,
"Two-way sync: the inbound endpoint".
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from aiohttp import web

from relay.intake.handler import METRICS_KEY, RETRY_AFTER_SECONDS, decode_json
from relay.settings import SettingsError
from relay.targets import TICKET_STATES, Ticket, TicketChange

log = logging.getLogger("relay.intake.itsm_events")

# The facts a sender must match, named once (docs/reconciliation.md repeats them for people).
ROUTE = "/itsm-events/{target}"
SIGNATURE_HEADER = "X-Relay-Signature"
SECRET_ENV_PREFIX = "RELAY_ITSM_EVENTS_SECRET_"
MAX_SKEW_SECONDS = 300  # |now - t| beyond this is a replay (or a clock to fix), refused
MAX_BODY_BYTES = 16 * 1024
# A secret shorter than this is refused at start: the MAC is only as strong as the secret.
MIN_SECRET_CHARS = 32
BODY_READ_TIMEOUT_SECONDS = 10
# What the relay writes as a correlation key (relay.targets: at most 64 of [A-Za-z0-9._-]).
_KEY = re.compile(r"[A-Za-z0-9._-]{1,64}")
# RFC 3339 date-time with its offset (Z or +hh:mm); seconds required, any fraction.
_RFC3339 = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})[Tt ](?P<time>\d{2}:\d{2}:\d{2})(?:\.(?P<fraction>\d{1,9}))?"
    r"(?P<zone>[Zz]|[+-]\d{2}:\d{2})"
)
FIELDS = ("ticket_id", "correlation_key", "state", "changed_at", "changed_by")
MAX_TEXT_CHARS = 256  # ticket_id and changed_by: ids and logins, never prose


class TicketChangeSink(Protocol):
    """Where an inbound ticket change goes (two-way sync's core). `apply` answers the action it took, for
    the sender and the log: e.g. "closed-alert", "nothing: the alert changed after the ticket"."""

    async def apply(self, target: str, change: TicketChange) -> str: ...


@dataclass(frozen=True, slots=True)
class InboundSecrets:
    """The shared secret of each target that takes inbound events (targets without one are absent), and
    the clock the timestamps are checked against (seconds since 1970)."""

    secrets: Mapping[str, bytes]
    clock: Callable[[], float] = time.time

    def __repr__(self) -> str:  # never the secrets, whatever prints this
        return f"InboundSecrets(targets={sorted(self.secrets)!r})"


TICKET_CHANGE_SINK_KEY = web.AppKey("ticket_change_sink", TicketChangeSink)
INBOUND_SECRETS_KEY = web.AppKey("itsm_event_secrets", InboundSecrets)


def secret_variable(target: str) -> str:
    """The environment variable holding a target's secret: `RELAY_ITSM_EVENTS_SECRET_` and the target's
    name upper-cased, every character other than A-Z and 0-9 as `_` (`sn-prod` -> `..._SN_PROD`)."""
    return SECRET_ENV_PREFIX + re.sub(r"[^A-Z0-9]", "_", target.upper())


def read_secrets(targets: Iterable[str], env: Mapping[str, str]) -> dict[str, bytes]:
    """The secret of each target whose variable is set and not empty. SettingsError for a secret under
    MIN_SECRET_CHARS, or for two targets whose names give one variable."""
    found: dict[str, bytes] = {}
    by_variable: dict[str, str] = {}
    for target in targets:
        variable = secret_variable(target)
        if variable in by_variable:
            raise SettingsError(f"targets {by_variable[variable]!r} and {target!r} would share {variable}; "
                                "rename one of them to take inbound ITSM events")
        by_variable[variable] = target
        value = env.get(variable, "")
        if not value:
            continue
        if len(value) < MIN_SECRET_CHARS:
            raise SettingsError(f"{variable} holds {len(value)} characters; use at least {MIN_SECRET_CHARS} "
                                "random ones (e.g. the output of `openssl rand -hex 32`)")
        found[target] = value.encode("utf-8")
    return found


# -- the signature: a pure check, time passed in --------------------------------------------------


class SignatureRefused(ValueError):
    """The request's signature does not hold; the message says why (never the secret or the MAC)."""


def mac_of(secret: bytes, timestamp: int, body: bytes) -> bytes:
    """HMAC-SHA256(secret, "<t>." + body): what `v1` carries, hex or base64."""
    return hmac.new(secret, str(timestamp).encode("ascii") + b"." + body, hashlib.sha256).digest()


def sign(secret: bytes, timestamp: int, body: bytes, *, encoding: str = "hex") -> str:
    """The X-Relay-Signature value for `body` (what a sender computes; tests and tools use it)."""
    mac = mac_of(secret, timestamp, body)
    text = mac.hex() if encoding == "hex" else base64.b64encode(mac).decode("ascii")
    return f"t={timestamp},v1={text}"


def _decode_mac(text: str) -> bytes:
    """A 32-byte MAC from hex (Perl's hmac_sha256_hex) or base64, padded or not (ServiceNow's generateMac
    gives padded base64; Perl's hmac_sha256_base64 leaves the padding off)."""
    if len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text):
        return bytes.fromhex(text)
    if re.fullmatch(r"[A-Za-z0-9+/]{43}=?", text):
        try:
            raw = base64.b64decode(text.rstrip("=") + "=", validate=True)
        except binascii.Error:
            raw = b""
        if len(raw) == 32:
            return raw
    raise SignatureRefused("v1 is not an HMAC-SHA256 in hex (64 digits) or base64 (44 characters)")


def parse_signature(header: str | None) -> tuple[int, list[bytes]]:
    """(t, the v1 MACs) of an `X-Relay-Signature: t=<unix seconds>,v1=<mac>` value; other keys are ignored,
    so a sender may add some. SignatureRefused naming what is wrong."""
    if header is None or not header.strip():
        raise SignatureRefused(f"no {SIGNATURE_HEADER} header: sign the body (t=<unix seconds>,v1=<HMAC-SHA256>)")
    timestamps: list[str] = []
    macs: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise SignatureRefused(f"{SIGNATURE_HEADER} is not a list of key=value pairs (t=...,v1=...)")
        if key == "t":
            timestamps.append(value.strip())
        elif key == "v1":
            macs.append(value.strip())
    if len(timestamps) != 1:
        raise SignatureRefused(f"{SIGNATURE_HEADER} needs exactly one t=<unix seconds> (found {len(timestamps)})")
    if not re.fullmatch(r"\d{1,12}", timestamps[0]):
        raise SignatureRefused("t is not a whole number of seconds since 1970")
    if not macs:
        raise SignatureRefused(f"{SIGNATURE_HEADER} carries no v1=<HMAC-SHA256>")
    return int(timestamps[0]), [_decode_mac(m) for m in macs]


def check_timestamp(timestamp: int, now: float, max_skew: float = MAX_SKEW_SECONDS) -> None:
    """SignatureRefused when `t` is more than `max_skew` seconds from `now`, either way (a replay, or a
    sender's clock to fix)."""
    off = now - timestamp
    if abs(off) > max_skew:
        when = "old" if off > 0 else "ahead"
        raise SignatureRefused(f"t is {abs(off):.0f} s {when}; at most {max_skew:.0f} s either way is taken "
                               "(a replay, or a clock to set right)")


def verify(header: str | None, body: bytes, secret: bytes, now: float) -> None:
    """Whether `header` signs `body` with `secret` at a time within MAX_SKEW_SECONDS of `now`: returns, or
    raises SignatureRefused saying which part failed. The MAC comparison takes constant time."""
    timestamp, macs = parse_signature(header)
    check_timestamp(timestamp, now)
    expected = mac_of(secret, timestamp, body)
    # Every candidate is compared (no early exit), so the time taken says nothing of which matched.
    matched = False
    for mac in macs:
        matched |= hmac.compare_digest(expected, mac)
    if not matched:
        raise SignatureRefused("the MAC does not match this body and t under this target's secret")


# -- the body -------------------------------------------------------------------------------------


class FieldRefused(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def parse_rfc3339(text: str) -> datetime | None:
    """An RFC 3339 date-time with its offset as an aware datetime (a fraction past microseconds is cut);
    None for anything else: no zone, no seconds, or no real time (month 13, 30 February, +99:99)."""
    m = _RFC3339.fullmatch(text)
    if m is None:
        return None
    fraction = (m["fraction"] or "")[:6]
    zone = "+00:00" if m["zone"] in ("Z", "z") else m["zone"]
    try:
        return datetime.fromisoformat(f"{m['date']}T{m['time']}{'.' + fraction if fraction else ''}{zone}")
    except ValueError:
        return None


def parse_change(doc: Any, now: float) -> TicketChange:
    """The TicketChange a body describes; FieldRefused naming the first field that is missing or wrong. A
    `changed_at` more than MAX_SKEW_SECONDS after `now` is refused: no change comes from the future."""
    if not isinstance(doc, dict):
        raise FieldRefused("body", "must be a JSON object")
    unknown = sorted(set(doc) - set(FIELDS))
    if unknown:
        raise FieldRefused(unknown[0][:40], f"is not a field of this body (the fields: {', '.join(FIELDS)})")

    def text(field: str, *, optional: bool = False) -> str | None:
        value = doc.get(field)
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value.strip():
            raise FieldRefused(field, "is required: a non-empty string" if value is None
                               else "must be a non-empty string")
        if len(value) > MAX_TEXT_CHARS:
            raise FieldRefused(field, f"is longer than {MAX_TEXT_CHARS} characters")
        return value

    ticket_id = text("ticket_id")
    key = doc.get("correlation_key")
    if not isinstance(key, str) or not _KEY.fullmatch(key):
        raise FieldRefused("correlation_key", "must be the relay's correlation key: at most 64 of A-Z a-z 0-9 . _ -")
    state = doc.get("state")
    if state not in TICKET_STATES:
        raise FieldRefused("state", f"must be one of {', '.join(TICKET_STATES)}")
    raw_time = doc.get("changed_at")
    changed_at = parse_rfc3339(raw_time) if isinstance(raw_time, str) else None
    if changed_at is None:
        raise FieldRefused("changed_at", "must be an RFC 3339 date-time with its offset, e.g. 2026-03-01T10:00:00Z")
    if changed_at.timestamp() > now + MAX_SKEW_SECONDS:
        raise FieldRefused("changed_at", "lies in the future")
    changed_by = text("changed_by", optional=True)
    assert ticket_id is not None  # text() raised otherwise
    return TicketChange(Ticket(id=ticket_id), key, str(state), changed_at.astimezone(UTC), changed_by)


# -- the endpoint ---------------------------------------------------------------------------------


def _json(status: int, body: dict[str, Any]) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


_OFF = {"error": "not found", "detail": "this relay takes no ITSM events for this target"}


async def post_itsm_event(request: web.Request) -> web.StreamResponse:
    resp, outcome, target = await _post_itsm_event(request)
    metrics = request.app.get(METRICS_KEY)
    if metrics is not None:
        metrics.itsm_events.labels(target, outcome).inc()
    return resp


async def _post_itsm_event(request: web.Request) -> tuple[web.StreamResponse, str, str]:
    """The answer, the outcome it is counted as, and the target label ("-" while inbound is off for it)."""
    target = request.match_info["target"]
    inbound = request.app.get(INBOUND_SECRETS_KEY)
    sink = request.app.get(TICKET_CHANGE_SINK_KEY)
    secret = inbound.secrets.get(target) if inbound is not None else None
    if sink is None or inbound is None or secret is None:
        log.info("ITSM event for %r refused: inbound is off for it (%s)", target[:64],
                 "two-way sync is off" if sink is None else "no such target or no secret set")
        return _json(404, _OFF), "off", "-"
    now = inbound.clock()
    header = request.headers.get(SIGNATURE_HEADER)
    try:
        check_timestamp(parse_signature(header)[0], now)  # before a byte of the body is read
    except SignatureRefused as exc:
        return _refuse(request, target, exc), "bad_signature", target
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return _too_large(), "too_large", target
    try:
        async with asyncio.timeout(BODY_READ_TIMEOUT_SECONDS):
            body = await _read_bounded(request)
    except TimeoutError:
        resp = _json(408, {"error": "request body not received in time"})
        resp.force_close()
        return resp, "body_timeout", target
    if body is None:
        return _too_large(), "too_large", target
    try:
        verify(header, body, secret, now)
    except SignatureRefused as exc:
        return _refuse(request, target, exc), "bad_signature", target
    try:
        doc = decode_json(body)
    except (ValueError, RecursionError) as exc:
        return _json(400, {"error": "malformed JSON", "detail": str(exc)[:200]}), "malformed_json", target
    try:
        change = parse_change(doc, now)
    except FieldRefused as exc:
        log.warning("ITSM event for %s refused: %s", target, exc, extra={"status": 422, "field": exc.field})
        return (_json(422, {"error": "not a ticket change", "field": exc.field, "detail": exc.message}),
                "invalid", target)
    try:
        action = await sink.apply(target, change)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # Azure or the store failed: the sender retries (the change names a state)
        log.warning("ITSM event for %s ticket %s not applied, answered 503: %s", target, change.ticket.id,
                    str(exc)[:300] or type(exc).__name__)
        resp = _json(503, {"error": "two-way sync unavailable, retry later"})
        resp.headers["Retry-After"] = RETRY_AFTER_SECONDS
        return resp, "unavailable", target
    log.info("ITSM event: %s ticket %s (%s) is %s, changed by %s at %s: %s", target, change.ticket.id,
             change.correlation_key, change.state, change.changed_by or "?", change.changed_at.isoformat(), action,
             extra={"alert_key": change.correlation_key, "outcome": "itsm_event"})
    return _json(202, {"action": action}), "applied", target


def _refuse(request: web.Request, target: str, exc: SignatureRefused) -> web.Response:
    log.warning("ITSM event for %s from %s refused: %s", target, request.remote, exc, extra={"status": 401})
    resp = _json(401, {"error": "bad signature", "detail": str(exc)})
    resp.force_close()  # an unread body may follow
    return resp


def _too_large() -> web.Response:
    resp = _json(413, {"error": "body too large", "detail": f"the limit is {MAX_BODY_BYTES} bytes"})
    resp.force_close()
    return resp


async def _read_bounded(request: web.Request) -> bytes | None:
    """The body, or None as soon as it passes MAX_BODY_BYTES (the rest is never read)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(MAX_BODY_BYTES)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)


def add_routes(app: web.Application, targets: Iterable[str], env: Mapping[str, str],
               clock: Callable[[], float] = time.time) -> None:
    """Serve POST /itsm-events/{target} on `app`, with the secrets of `targets` read from `env` now (a bad
    one stops the relay at start). The sink comes later, under TICKET_CHANGE_SINK_KEY; until then the
    endpoint answers 404."""
    secrets = read_secrets(targets, env)
    app[INBOUND_SECRETS_KEY] = InboundSecrets(secrets, clock)
    app.router.add_post(ROUTE, post_itsm_event)
    if secrets:
        log.info("inbound ITSM events signed for %s", ", ".join(sorted(secrets)))


__all__ = ["INBOUND_SECRETS_KEY", "MAX_BODY_BYTES", "MAX_SKEW_SECONDS", "ROUTE", "SECRET_ENV_PREFIX",
           "SIGNATURE_HEADER", "TICKET_CHANGE_SINK_KEY", "InboundSecrets", "SignatureRefused", "TicketChangeSink",
           "add_routes", "parse_change", "parse_signature", "secret_variable", "sign", "verify"]
