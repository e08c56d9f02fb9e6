"""Fuzzed bodies against a running `relay serve`: Azure's samples mutated by hypothesis (fields replaced,
dropped, retyped, nested past the parser's depth, bytes cut or corrupted) never get a 5xx, and the relay,
its intake and its worker, never fails on them; then schemathesis checks the relay against openapi.yaml."""

from __future__ import annotations

import copy
import http.client
import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import full_sample_names, load_sample
from tests.faults.live_relay import LiveRelay
from tests.faults.reporting import report_fault

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTED = {200, 202, 400, 413, 415, 422}  # what a body alone can get (401 and 503 are about token and store)
FUZZED_BODIES = 400
SCHEMATHESIS_EXAMPLES = 150  # per operation; the three GETs take no input and stop after a few
SAMPLE_DOCS = [load_sample(name) for name in full_sample_names()]
ESSENTIALS = ("alertId", "alertRule", "severity", "signalType", "monitorCondition", "monitoringService",
              "alertTargetIDs", "configurationItems", "originAlertId", "firedDateTime", "resolvedDateTime",
              "description", "essentialsVersion", "alertContextVersion")

NESTED = "\u2063nested here\u2063"
# Any code point, lone UTF-16 surrogates too: JSON's \uXXXX escapes can carry them, though no valid
# Unicode text does (json.dumps writes them as such escapes).
LONE_SURROGATES = st.sampled_from("\ud800\udbff\udc00\udfff")
characters = st.characters(exclude_categories=()) | LONE_SURROGATES
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80) | st.floats()
    | st.text(characters, max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(characters, max_size=12), inner, max_size=4),
    max_leaves=12,
)


def paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in a JSON document a value sits (dict keys and list indexes)."""
    found = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        found.append((*prefix, key))
        found.extend(paths(child, (*prefix, key)))
    return found


def parent_of(doc: Any, path: tuple) -> Any:
    for key in path[:-1]:
        doc = doc[key]
    return doc


@st.composite
def mutated_bodies(draw: st.DrawFn) -> bytes:
    doc = copy.deepcopy(draw(st.sampled_from(SAMPLE_DOCS)))
    # A new alert id each time, so that what gets through is a new alert (202) and goes on to the worker.
    doc["data"]["essentials"]["alertId"] += f"-{draw(st.integers(0, 10**9))}"
    if draw(st.integers(1, 20)) == 20:
        doc = draw(json_values)  # not even an alert
    for _ in range(draw(st.integers(1, 4))):
        where = paths(doc)
        op = draw(st.sampled_from(["replace", "replace", "drop", "essential", "stringify", "surrogate"]))
        if not where:
            break
        if op == "essential" and isinstance(doc, dict) and isinstance(doc.get("data"), dict):
            essentials = doc["data"].setdefault("essentials", {})
            if isinstance(essentials, dict):
                essentials[draw(st.sampled_from(ESSENTIALS))] = draw(json_values)
            continue
        path = draw(st.sampled_from(where))
        parent = parent_of(doc, path)
        if op == "drop":
            del parent[path[-1]]
        elif op == "surrogate":  # into a string already there, so the rest of the alert stays valid
            if isinstance(parent[path[-1]], str):
                parent[path[-1]] += draw(LONE_SURROGATES)
        elif op == "stringify":
            parent[path[-1]] = json.dumps(parent[path[-1]])
        else:
            parent[path[-1]] = draw(json_values)
    nested = None
    where = paths(doc)
    if where and draw(st.integers(1, 6)) == 6:
        # One value wrapped in up to 3000 arrays: past the depth json.loads can parse. Spliced in as text, as
        # json.dumps cannot write it either.
        path = draw(st.sampled_from(where))
        parent = parent_of(doc, path)
        nested = (draw(st.integers(1, 3000)), json.dumps(parent[path[-1]]))
        parent[path[-1]] = NESTED
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()))
    if nested is not None:
        depth, inner = nested
        text = text.replace(json.dumps(NESTED), "[" * depth + inner + "]" * depth, 1)
    body = text.encode("utf-8", "surrogatepass")  # lone surrogates become invalid UTF-8: fine, it is fuzz
    cut = draw(st.sampled_from(["none"] * 5 + ["truncate", "insert", "flip"]))
    if cut != "none" and body:
        at = draw(st.integers(0, len(body) - 1))
        if cut == "truncate":
            body = body[:at]
        elif cut == "insert":
            body = body[:at] + draw(st.binary(min_size=1, max_size=8)) + body[at:]
        else:
            body = body[:at] + bytes([body[at] ^ draw(st.integers(1, 255))]) + body[at + 1:]
    return body


class Poster:
    """One keep-alive connection to the relay (reopened when the relay closes it)."""

    def __init__(self, relay: LiveRelay) -> None:
        self.relay = relay
        self.conn = http.client.HTTPConnection("127.0.0.1", relay.port, timeout=10)

    def post(self, body: bytes) -> int:
        headers = {"Authorization": self.relay.auth, "Content-Type": "application/json"}
        for attempt in (1, 2):
            try:
                self.conn.request("POST", "/alerts", body=body, headers=headers)
                resp = self.conn.getresponse()
                resp.read()
                if resp.getheader("Connection", "").lower() == "close":
                    self.conn.close()
                return resp.status
            except (ConnectionError, http.client.HTTPException):
                self.conn.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def relay_metric(relay: LiveRelay, name: str) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", relay.process.metrics_port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    match = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_mutated_common_schema_bodies_never_get_a_5xx_nor_break_the_relay(live_relay, fault_report):
    poster = Poster(live_relay)
    statuses: Counter[int] = Counter()

    @settings(max_examples=FUZZED_BODIES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(body=mutated_bodies())
    def post_one(body: bytes) -> None:
        status = poster.post(body)
        statuses[status] += 1
        assert status in DOCUMENTED, f"HTTP {status} for a {len(body)}-byte body starting {body[:200]!r}"

    try:
        post_one()
    finally:
        poster.conn.close()
    # What the intake accepted goes on to the worker (dry run): it must get through that too.
    deadline = time.monotonic() + 30
    while relay_metric(live_relay, "relay_pending_deliveries") > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert relay_metric(live_relay, "relay_pending_deliveries") == 0, "the worker did not drain the fuzzed alerts"
    assert live_relay.alive(), "the relay died"
    problems = live_relay.tracebacks()
    assert problems == [], "unexpected errors in the relay's log:\n" + "\n".join(problems)
    dead = relay_metric(live_relay, 'relay_dead_letters_total{reason="unparseable"}')
    assert dead == 0, f"{dead} accepted alerts could not be parsed again by the worker"
    fault_report(
        "payload fuzzing (hypothesis)",
        f"{sum(statuses.values())} mutated bodies: "
        + ", ".join(f"{n} x {s}" for s, n in sorted(statuses.items()))
        + "; 0 server errors, relay alive, 0 tracebacks, every accepted one delivered by the worker",
    )


# -- schemathesis against openapi.yaml --------------------------------------------------------------------

SCHEMA = schemathesis.openapi.from_path(ROOT / "openapi.yaml")
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
_CALLS: Counter[tuple[str, int]] = Counter()  # (operation, status): what schemathesis sent and got
_FAILED: list[str] = []


@pytest.fixture(scope="module")
def schemathesis_calls(request: pytest.FixtureRequest) -> Iterator[Counter[tuple[str, int]]]:
    yield _CALLS
    if not _CALLS:
        return
    by_operation: dict[str, list[str]] = {}
    for (operation, status), n in sorted(_CALLS.items()):
        by_operation.setdefault(operation, []).append(f"{n} x {status}")
    report_fault(request.config, "schemathesis against openapi.yaml",
                 "; ".join(f"{op}: {', '.join(counts)}" for op, counts in by_operation.items())
                 + f"; checks {', '.join(c.__name__ for c in CHECKS)}: {len(_FAILED)} failures")


@SCHEMA.parametrize()
@settings(max_examples=SCHEMATHESIS_EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
def test_relay_answers_as_its_openapi_document_says(case, live_relay, schemathesis_calls):
    documented = case.method.upper() == case.operation.method.upper()
    operation = f"{case.method.upper()} {case.path}" if documented else "methods not in the document"
    try:
        response = case.call_and_validate(base_url=live_relay.url, headers={"Authorization": live_relay.auth},
                                          checks=CHECKS, timeout=10)
    except Exception:
        _FAILED.append(operation)
        raise
    schemathesis_calls[operation, response.status_code] += 1
