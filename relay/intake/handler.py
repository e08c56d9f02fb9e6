"""POST /alerts: check the token, then read, parse and durably commit the alert.

Status contract: 202 committed; 200 seen before; 401 any token failure (reason only in the log and
the metric; the connection closes, the body is never read, and `Expect: 100-continue` gets the 401
instead of the 100); 400 malformed JSON (not UTF-8, NaN/Infinity, a key twice in one object, a lone
surrogate); 415 not JSON or a charset other than utf-8; 413 over 256 KiB (reading stops); 422 JSON
that is not the common schema, or a fired/resolved time that is impossible or more than a day ahead;
403 an alert from a source outside RELAY_ALLOWED_SUBSCRIPTIONS / RELAY_ALLOWED_ALERT_RULES (not
stored); 503 when the store cannot commit, so that Azure retries. Never a 500.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from relay.alerts import SchemaError, check_times, parse_alert, subscription_of
from relay.intake.metrics import IntakeMetrics
from relay.intake.sources import SourcePolicy, source_refusal
from relay.intake.tokens import TokenRejected, TokenValidator
from relay.store.base import Event, Store, StoreUnavailable
from relay.telemetry import Tracing, traceparent

log = logging.getLogger("relay.intake")

MAX_BODY_BYTES = 256 * 1024  # Azure's cap on a common-schema payload
BODY_READ_TIMEOUT_SECONDS = 10
RETRY_AFTER_SECONDS = "5"

STORE_KEY = web.AppKey("store", Store)
VALIDATOR_KEY = web.AppKey("validator", TokenValidator)
METRICS_KEY = web.AppKey("metrics", IntakeMetrics)
SOURCE_POLICY_KEY = web.AppKey("source_policy", SourcePolicy)
# Called after each newly committed event (the delivery worker looks at once instead of at its next poll).
ON_ACCEPT_KEY = web.AppKey("on_accept", list)
# Present only with tracing on (relay/telemetry.py): then each request is a server span.
TRACING_KEY = web.AppKey("tracing", Tracing)



class InFlight:
    """Requests to POST /alerts being handled right now (the worker yields the loop while many are)."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> int:
        return self.count


IN_FLIGHT_KEY = web.AppKey("intake_in_flight", InFlight)

_UNAUTHORIZED_HEADERS = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
# A \uD800-\uDFFF escape, or the UTF-8-style bytes of a surrogate (ED A0-BF): the only ways into a lone one.
# Two patterns, each with a literal first byte: the regex engine then finds candidates with memchr, where
# one alternation (or `b"\\u" in body`, a byte-at-a-time search for a two-byte needle) scans every byte.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE_BYTES = re.compile(rb"\xed[\xa0-\xbf]")
_UTF8_BOM = b"\xef\xbb\xbf"


class _BadJSON(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _BadJSON(f"{name} is not JSON (RFC 8259 has no NaN or Infinity)")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        twice = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise _BadJSON(f"key {twice[:40]!r} appears twice in one object: its meaning would be ambiguous")
    return doc


# Made once: json.loads with hooks builds a new decoder (and its C scanner) on every call.
_DECODER = json.JSONDecoder(parse_constant=_no_constant, object_pairs_hook=_unique_keys)


def decode_json(body: bytes) -> Any:
    """The document in `body`: UTF-8 only (RFC 8259 §8.1; a leading BOM is ignored), no NaN/Infinity,
    no key twice in one object. ValueError (or RecursionError when nested too deep) otherwise."""
    if body.startswith(_UTF8_BOM):
        body = body[len(_UTF8_BOM):]
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _BadJSON(f"the body is not UTF-8 (byte {exc.start}); send UTF-8 JSON") from None
    if text.startswith("\ufeff"):  # a second BOM: what json.loads says of one
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    return _DECODER.decode(text)


def _json(status: int, body: dict, headers: dict | None = None) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json", headers=headers)


_KEYED_HEADERS = {"Content-Type": "application/json; charset=utf-8"}


def _keyed(status: int, word: str, key: str) -> web.Response:
    """The 202/200 answer, as _json would write it: the key is hex (a SHA-256 digest), so the bytes are
    put together without a JSON encoder on the hot path, and the Content-Type header is given whole
    (content_type= and charset= are parsed and put together again on every response)."""
    return web.Response(status=status, body=b'{"status": "%s", "key": "%s"}' % (word.encode(), key.encode()),
                        headers=_KEYED_HEADERS)


async def post_alert(request: web.Request) -> web.StreamResponse:
    # One coroutine in front of the handler's own, not one per concern: each is made, awaited and
    # resumed after the commit, on every request.
    app = request.app
    in_flight = app.get(IN_FLIGHT_KEY)
    tracing = app.get(TRACING_KEY)
    handling = _post_alert(request, None) if tracing is None else _traced(request, tracing)
    if in_flight is None:
        return await handling
    in_flight.count += 1
    try:
        return await handling
    finally:
        in_flight.count -= 1


async def _traced(request: web.Request, tracing: Tracing) -> web.StreamResponse:
    """With tracing on, each request is a server span (with tracing off, none: nothing is stored with
    the event). A caller's W3C trace context is honoured (the span joins its trace); the Authorization
    header never goes on the span."""
    with tracing.span("POST /alerts", "server", {"http.request.method": "POST", "url.path": "/alerts"},
                      parent=request.headers.get("traceparent"),
                      tracestate=request.headers.get("tracestate")) as span:
        resp = await _post_alert(request, span)
        span.set_attribute("http.response.status_code", resp.status)
        return resp


async def _post_alert(request: web.Request, span: Any) -> web.StreamResponse:
    app = request.app
    metrics = app[METRICS_KEY]

    def done(outcome: str, resp: web.StreamResponse) -> web.StreamResponse:
        metrics.outcome(outcome).inc()
        if span is not None:
            span.set_attribute("relay.intake.outcome", outcome)
        return resp

    # The token first: an unauthenticated caller gets nothing read and learns nothing.
    try:
        caller = await app[VALIDATOR_KEY].validate(request.headers.get("Authorization"))
    except TokenRejected as exc:
        return done("unauthorized", await _refuse_token(request, exc))

    if request.content_type != "application/json":
        return done("unsupported_media_type", _closing(_json(
            415, {"error": "unsupported media type", "detail": "send Content-Type: application/json"}
        )))
    charset = request.charset
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        return done("unsupported_media_type", _closing(_json(
            415, {"error": "unsupported charset", "detail": f"{charset[:20]} is not accepted: send UTF-8"}
        )))
    encoding = request.headers.get("Content-Encoding", "identity").lower()
    if encoding != "identity":
        return done("unsupported_media_type", _closing(_json(
            415, {"error": "unsupported content encoding", "detail": f"{encoding[:20]} is not accepted"}
        )))
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return done("too_large", _too_large())
    content = request.content
    if content.is_eof():
        # The whole body came with the headers (a few KiB usually do): nothing to wait for, so no timer.
        body = content.read_nowait()
        if len(body) > MAX_BODY_BYTES:
            return done("too_large", _too_large())
    else:
        try:
            async with asyncio.timeout(BODY_READ_TIMEOUT_SECONDS):
                body = await _read_bounded(request)
        except TimeoutError:
            return done("body_timeout", _closing(_json(408, {"error": "request body not received in time"})))
        if body is None:
            return done("too_large", _too_large())

    if body.startswith(_UTF8_BOM):
        body = body[len(_UTF8_BOM):]
    try:
        doc = decode_json(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        return done("malformed_json", _json(400, {"error": "malformed JSON", "detail": str(exc)[:200]}))
    if _lone_surrogate(body, doc):
        return done("malformed_json", _json(400, {
            "error": "malformed JSON", "detail": "a string holds a lone UTF-16 surrogate: it is not Unicode text",
        }))
    try:
        alert = parse_alert(doc)
        check_times(alert, datetime.now(UTC))
    except SchemaError as exc:
        log.warning("refused a body that is not a common alert schema payload: %s: %s", exc.field, exc.message,
                    extra={"status": 422, "outcome": "invalid_schema", "field": exc.field})
        return done("invalid_schema", _json(422, {
            "error": "not a common alert schema payload", "field": exc.field, "detail": exc.message,
        }))

    refusal = source_refusal(alert, app[SOURCE_POLICY_KEY])
    if refusal is not None:
        log.warning("refused alert %s from subscription %s, rule %s: %s", alert.correlation_key,
                    subscription_of(alert), alert.essentials.alert_rule_id or alert.essentials.alert_rule, refusal)
        return done("forbidden_source", _json(403, {"error": "forbidden source",
                                                    "detail": "this relay does not take alerts from this source"}))

    event = Event.from_alert(alert, body)
    if span is not None:
        span.set_attributes({"relay.alert.id": alert.essentials.alert_id, "relay.alert.condition": alert.condition,
                             "relay.event.key": event.key})
        event = replace(event, trace_context=traceparent(span))
    started = time.perf_counter()
    try:
        new = await app[STORE_KEY].accept(event)
    except StoreUnavailable as exc:
        log.error("store could not commit alert %s: %s", alert.correlation_key, exc,
                  extra={"alert_key": alert.correlation_key, "condition": alert.condition, "outcome": "unavailable"})
        return done("unavailable", _json(
            503, {"error": "store unavailable, retry later"}, {"Retry-After": RETRY_AFTER_SECONDS}
        ))
    metrics.commit_seconds.observe(time.perf_counter() - started)
    if new:
        for wake in app[ON_ACCEPT_KEY]:
            wake()
        if log.isEnabledFor(logging.INFO):  # the fields are built only for a line that is written
            log.info(
                "accepted %s %s (%s) from app %s",
                alert.condition, alert.correlation_key, alert.essentials.monitoring_service, caller.app_id,
                extra={"alert_key": alert.correlation_key, "event_key": event.key, "condition": alert.condition,
                       "outcome": "accepted", "latency_ms": round((time.perf_counter() - started) * 1000, 3)},
            )
        return done("accepted", _keyed(202, "accepted", event.key))
    return done("duplicate", _keyed(200, "duplicate", event.key))


async def _refuse_token(request: web.Request, exc: TokenRejected) -> web.StreamResponse:
    request.app[METRICS_KEY].auth_failures.labels(exc.reason).inc()
    log.warning("refused token from %s: %s", request.remote, exc)
    resp = _json(401, {"error": "invalid_token"}, _UNAUTHORIZED_HEADERS)
    resp.force_close()
    # Sent now, then the connection closes at once: an unauthenticated body is never read, not even to
    # discard it (aiohttp would otherwise linger up to 10 s reading whatever the caller still sends).
    await resp.prepare(request)
    await resp.write_eof()
    if request.protocol is not None:
        request.protocol.force_close()
    return resp


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """`Expect: 100-continue`: the token is checked before the 100 goes out, so a refused caller never
    sends its body. (The handler checks again; a verified token is then a cache hit.)"""
    expect = request.headers.get("Expect", "")
    if request.version != (1, 1):
        return None
    if expect.lower() != "100-continue":
        raise web.HTTPExpectationFailed(text=f"Unknown Expect: {expect[:40]}")
    try:
        await request.app[VALIDATOR_KEY].validate(request.headers.get("Authorization"))
    except TokenRejected as exc:
        request.app[METRICS_KEY].requests.labels("unauthorized").inc()
        return await _refuse_token(request, exc)
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # as aiohttp's own: the answer's body has not started
    return None


def _lone_surrogate(body: bytes, doc: object) -> bool:
    """Whether a string in `doc` holds a lone surrogate (from a \\ud800-\\udfff escape, or from surrogate
    bytes, which json.loads also lets through). No UTF-8 output can carry one: the store's key, a target's
    request or a log line would fail on it, so it is refused here. Only bodies that could hold one are
    re-encoded to find out."""
    # Two memchr-speed scans first: most bodies hold neither a surrogate escape nor an 0xED byte.
    if _SURROGATE_ESCAPE.search(body) is None and (b"\xed" not in body or _SURROGATE_BYTES.search(body) is None):
        return False
    try:
        json.dumps(doc, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, RecursionError):
        return True
    return False


async def _read_bounded(request: web.Request) -> bytes | None:
    """The body, or None as soon as it passes MAX_BODY_BYTES (the rest is never read)."""
    chunks = []
    size = 0
    while True:
        chunk = await request.content.read(64 * 1024)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)


def _too_large() -> web.Response:
    return _closing(_json(413, {"error": "body too large", "detail": f"the limit is {MAX_BODY_BYTES} bytes"}))


def _closing(resp: web.Response) -> web.Response:
    # Unread body bytes may follow: close the connection once they are discarded (aiohttp reads and drops
    # them for up to its lingering time, 10 s, so that the client sees this answer rather than a reset).
    resp.force_close()
    return resp
