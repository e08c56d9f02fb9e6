"""The forward target against a local recording receiver: the body byte for byte, auth applied, and
every failure classified the way the worker needs (retry, with Retry-After, or dead letter)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from relay.alerts import parse_alert_json
from relay.delivery.routing import DeliverySettings, RelayConfig, Route, TargetConfig
from relay.delivery.worker import Worker
from relay.store import Event
from relay.store.sqlite import SqliteStore
from relay.targets import TargetError, build_target
from relay.targets.forward import ForwardTarget, from_config
from relay.targets.target_config import TargetConfigError
from tests.conftest import SAMPLES
from tests.fakes.receiver import RecordingReceiver

# As Azure sends it: indentation, key order and trailing newline kept.
BODY = (SAMPLES / "testaction-metric-static-fired.json").read_bytes()
ENV = {"FWD_PASSWORD": "s3cret-pw", "FWD_TOKEN": "tok-123", "FWD_KEY": "key-456"}
EM_PATH = "/api/sn_em_connector/em/inbound_event?source=azuremonitor"


@pytest.fixture
async def receiver() -> AsyncIterator[RecordingReceiver]:
    server = RecordingReceiver()
    await server.start()
    yield server
    await server.stop()


def make(receiver: RecordingReceiver, auth: dict[str, Any] | None = None, **options: Any) -> ForwardTarget:
    cfg: dict[str, Any] = {"kind": "forward", "base_url": receiver.url + EM_PATH, **options}
    if auth is not None:
        cfg["auth"] = auth
    return from_config("em", cfg, env=ENV)


async def send(target: ForwardTarget, body: bytes = BODY) -> None:
    try:
        await target.forward(body)
    finally:
        await target.close()


async def test_body_arrives_byte_identical_at_the_configured_path_and_query(receiver):
    await send(make(receiver))
    [call] = receiver.calls
    assert call.body == BODY
    assert call.path == "/api/sn_em_connector/em/inbound_event" and call.query == {"source": "azuremonitor"}
    assert call.headers["Content-Type"] == "application/json"
    assert "Authorization" not in call.headers


@pytest.mark.parametrize(("auth", "header", "value"), [
    ({"type": "basic", "username": "relay", "password_env": "FWD_PASSWORD"},
     "Authorization", "Basic " + base64.b64encode(b"relay:s3cret-pw").decode()),
    ({"type": "bearer", "token_env": "FWD_TOKEN"}, "Authorization", "Bearer tok-123"),
    ({"type": "header", "name": "X-Api-Key", "value_env": "FWD_KEY"}, "X-Api-Key", "key-456"),
])
async def test_the_targets_auth_is_applied(receiver, auth, header, value):
    await send(make(receiver, auth))
    assert receiver.calls[0].headers[header] == value


@pytest.mark.parametrize(("status", "retry_after", "retryable", "expected_after"), [
    (429, "12", True, 12.0),
    (503, "3", True, 3.0),
    (500, None, True, None),
    (408, None, True, None),
    (400, None, False, None),
    (401, None, False, None),
    (404, None, False, None),
])
async def test_failures_say_whether_a_retry_can_help_and_when(receiver, status, retry_after, retryable,
                                                              expected_after):
    receiver.inject("status", status=status, retry_after=retry_after)
    with pytest.raises(TargetError) as info:
        await send(make(receiver))
    err = info.value
    assert (err.status, err.retryable, err.retry_after) == (status, retryable, expected_after)
    assert f"HTTP {status}" in str(err)


async def test_html_page_with_status_200_is_a_retryable_failure(receiver):
    receiver.inject("html")
    with pytest.raises(TargetError, match="HTML page") as info:
        await send(make(receiver))
    assert info.value.retryable


async def test_html_check_can_be_turned_off_for_receivers_that_answer_html(receiver):
    receiver.inject("html")
    await send(make(receiver, reject_html=False))
    assert len(receiver.calls) == 1


async def test_connection_reset_is_retryable(receiver):
    receiver.inject("reset")
    with pytest.raises(TargetError) as info:
        await send(make(receiver))
    assert info.value.retryable


async def test_slow_receiver_times_out_as_retryable(receiver):
    receiver.inject("slow", delay=5)
    with pytest.raises(TargetError, match="timed out") as info:
        await send(make(receiver, timeout_seconds=0.2))
    assert info.value.retryable


async def test_unreachable_receiver_is_retryable():
    target = from_config("em", {"kind": "forward", "base_url": "http://127.0.0.1:9/hook"}, env={})
    with pytest.raises(TargetError) as info:
        await send(target)
    assert info.value.retryable


@pytest.mark.parametrize(("cfg", "key"), [
    ({"base_url": "http://example.com/hook"}, "base_url"),
    ({"base_url": "ftp://example.com/hook"}, "base_url"),
    ({"base_url": "https://example.com/hook", "auth": {"type": "oauth"}}, "auth.type"),
    ({"base_url": "https://example.com/hook", "auth": {"type": "basic", "username": "u"}}, "auth.password_env"),
    ({"base_url": "https://example.com/hook", "auth": {"type": "bearer", "token_env": "UNSET_VAR"}},
     "auth.token_env"),
    ({"base_url": "https://example.com/hook", "auth": {"type": "header", "name": "Content-Type",
                                                       "value_env": "FWD_KEY"}}, "auth.name"),
    ({"base_url": "https://example.com/hook", "close_code": "x"}, "close_code"),
])
def test_config_mistakes_name_the_key(cfg, key):
    with pytest.raises(TargetConfigError) as info:
        from_config("em", {"kind": "forward", **cfg}, env=ENV)
    assert f"target 'em': {key}" in str(info.value)


def test_secrets_never_show_in_the_targets_repr():
    target = from_config("em", {"kind": "forward", "base_url": "https://example.com/hook",
                                "auth": {"type": "bearer", "token_env": "FWD_TOKEN"}}, env=ENV)
    assert "tok-123" not in repr(target)


def test_registry_builds_the_forward_target():
    target = build_target("em", {"kind": "forward", "base_url": "https://example.com/x"}, env={})
    assert isinstance(target, ForwardTarget)


async def test_worker_forwards_each_event_once_in_order_byte_for_byte(receiver, tmp_path):
    store = SqliteStore(tmp_path / "relay.db")
    await store.open()
    fired = BODY
    doc = json.loads(BODY)
    doc["data"]["essentials"].update(monitorCondition="Resolved", resolvedDateTime="2025-04-15T18:30:00Z")
    resolved = json.dumps(doc).encode()
    for body in (fired, resolved):
        await store.accept(Event.from_alert(parse_alert_json(body), body))
    receiver.inject("status", status=503, retry_after="0")  # the first try fails; order must hold
    config = RelayConfig(
        targets={"em": TargetConfig(name="em", kind="forward", block={})},
        routes=(Route(target="em"),),
        delivery=DeliverySettings(poll_seconds=0.01, backoff_base_seconds=0.01, backoff_max_seconds=0.02),
    )
    target = make(receiver)
    worker = Worker(store, config, {"em": target})
    await worker.start()
    try:
        for _ in range(2000):
            if await store.pending() == 0:
                break
            await asyncio.sleep(0.005)
    finally:
        await worker.stop(grace_seconds=1)
        await store.close()
    assert receiver.bodies() == [fired, fired, resolved]
