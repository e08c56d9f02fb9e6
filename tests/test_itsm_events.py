"""POST /itsm-events/{target}: the signature check (a pure function: tables and hypothesis), the body's
fields, and the endpoint's status contract with a recording sink, on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from relay.app import create_app, never_500
from relay.intake import itsm_events
from relay.intake.handler import METRICS_KEY
from relay.intake.itsm_events import (
    MAX_BODY_BYTES,
    MAX_SKEW_SECONDS,
    SIGNATURE_HEADER,
    TICKET_CHANGE_SINK_KEY,
    FieldRefused,
    SignatureRefused,
    parse_change,
    parse_rfc3339,
    secret_variable,
    sign,
    verify,
)
from relay.intake.metrics import IntakeMetrics
from relay.settings import Settings, SettingsError
from relay.targets import TICKET_STATES, Ticket, TicketChange

SECRET = b"0123456789abcdef0123456789abcdef-sn"
NOW = 1_772_359_200  # 2026-03-01T10:00:00Z
KEY = "5b6c1c8e-0b7a-4a41-9f43-2d1f5a9f6c11"
BODY = json.dumps({"ticket_id": "46d44f0f2f0b1110a1c2b3c4d5e6f708", "correlation_key": KEY, "state": "resolved",
                   "changed_at": "2026-03-01T09:59:30Z", "changed_by": "jane.doe"}).encode()


# -- the signature ------------------------------------------------------------------------------------


def test_a_signature_in_hex_verifies():
    verify(sign(SECRET, NOW, BODY), BODY, SECRET, NOW)


def test_a_signature_in_base64_verifies_padded_or_not():
    padded = sign(SECRET, NOW, BODY, encoding="base64")
    assert padded.endswith("="), "ServiceNow's generateMac pads its base64"
    verify(padded, BODY, SECRET, NOW)
    verify(padded.rstrip("="), BODY, SECRET, NOW)  # Perl's hmac_sha256_base64 leaves the padding off


def test_the_mac_covers_the_timestamp_and_the_body_as_documented():
    """HMAC-SHA256(secret, "<t>." + raw body), computed here independently of the module."""
    mac = hmac.new(SECRET, f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    verify(f"t={NOW},v1={mac}", BODY, SECRET, NOW)


def test_perls_digest_sha_gives_a_mac_the_relay_takes():
    """What the documented RT scrip computes: Digest::SHA's hmac_sha256_hex($data, $key)."""
    script = 'use Digest::SHA qw(hmac_sha256_hex); local $/; my $d = <STDIN>; print hmac_sha256_hex($d, $ARGV[0]);'
    try:
        mac = subprocess.run(["perl", "-e", script, SECRET.decode()], input=f"{NOW}.".encode() + BODY,
                             capture_output=True, check=True, timeout=30).stdout.decode()
    except FileNotFoundError:
        pytest.skip("perl is not installed")
    verify(f"t={NOW},v1={mac}", BODY, SECRET, NOW)


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "no X-Relay-Signature header"),
        ("", "no X-Relay-Signature header"),
        ("sha256=abc", "exactly one t="),
        ("garbage", "key=value pairs"),
        (f"v1={'0' * 64}", "exactly one t="),
        (f"t={NOW},t={NOW},v1={'0' * 64}", "exactly one t="),
        (f"t=soon,v1={'0' * 64}", "t is not a whole number"),
        (f"t=-5,v1={'0' * 64}", "t is not a whole number"),
        (f"t={NOW}", "carries no v1"),
        (f"t={NOW},v1=abc", "not an HMAC-SHA256 in hex"),
        (f"t={NOW},v1={'g' * 64}", "not an HMAC-SHA256 in hex"),
        (f"t={NOW},v1={'0' * 63}", "not an HMAC-SHA256 in hex"),
        (f"t={NOW},v1={'A' * 42}==", "not an HMAC-SHA256 in hex"),
        (f"t={NOW - MAX_SKEW_SECONDS - 1},v1={'0' * 64}", "s old"),
        (f"t={NOW + MAX_SKEW_SECONDS + 1},v1={'0' * 64}", "s ahead"),
        (f"t={NOW},v1={'0' * 64}", "does not match"),
        (sign(b"another secret entirely, 32+ chars", NOW, BODY), "does not match"),
        (sign(SECRET, NOW - 1, BODY).replace(f"t={NOW - 1}", f"t={NOW}"), "does not match"),
    ],
)
def test_a_bad_signature_is_refused_with_a_reason_naming_what_is_wrong(header, reason):
    with pytest.raises(SignatureRefused, match=reason) as info:
        verify(header, BODY, SECRET, NOW)
    assert SECRET.decode() not in str(info.value)


@pytest.mark.parametrize("skew", [-MAX_SKEW_SECONDS, 0, MAX_SKEW_SECONDS])
def test_a_timestamp_within_the_skew_either_way_is_taken(skew):
    verify(sign(SECRET, NOW + skew, BODY), BODY, SECRET, NOW)


def test_other_keys_in_the_header_are_ignored_and_any_v1_may_match():
    good = sign(SECRET, NOW, BODY).split(",")[1]
    verify(f"t={NOW}, v0=legacy, v1={'0' * 64}, {good}", BODY, SECRET, NOW)


secrets_ = st.binary(min_size=32, max_size=80)
bodies = st.binary(max_size=2048)
offsets = st.integers(min_value=-MAX_SKEW_SECONDS, max_value=MAX_SKEW_SECONDS)


@given(secrets_, bodies, offsets, st.sampled_from(["hex", "base64"]))
def test_any_body_signed_with_the_secret_within_the_skew_verifies(secret, body, offset, encoding):
    verify(sign(secret, NOW + offset, body, encoding=encoding), body, secret, NOW)


@given(secrets_, bodies.filter(bool), st.data())
def test_changing_any_byte_of_the_body_breaks_the_signature(secret, body, data):
    header = sign(secret, NOW, body)
    i = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
    flip = data.draw(st.integers(min_value=1, max_value=255))
    tampered = body[:i] + bytes([body[i] ^ flip]) + body[i + 1:]
    with pytest.raises(SignatureRefused, match="does not match"):
        verify(header, tampered, secret, NOW)


@given(secrets_, bodies, st.integers(min_value=MAX_SKEW_SECONDS + 1, max_value=10**9))
def test_a_timestamp_beyond_the_skew_is_refused_however_well_signed(secret, body, off):
    for t in (NOW - off, NOW + off):
        with pytest.raises(SignatureRefused, match="at most 300 s"):
            verify(sign(secret, t, body), body, secret, NOW)


@given(secrets_, secrets_, bodies)
def test_another_secret_never_verifies(secret, other, body):
    if other != secret:
        with pytest.raises(SignatureRefused):
            verify(sign(other, NOW, body), body, secret, NOW)


# -- the secrets ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "variable"),
    [("servicenow", "RELAY_ITSM_EVENTS_SECRET_SERVICENOW"), ("sn-prod", "RELAY_ITSM_EVENTS_SECRET_SN_PROD"),
     ("rt_main", "RELAY_ITSM_EVENTS_SECRET_RT_MAIN"), ("Helix2", "RELAY_ITSM_EVENTS_SECRET_HELIX2")],
)
def test_each_target_reads_its_own_variable(target, variable):
    assert secret_variable(target) == variable


def test_only_targets_with_a_secret_take_events():
    env = {"RELAY_ITSM_EVENTS_SECRET_SN_PROD": SECRET.decode(), "RELAY_ITSM_EVENTS_SECRET_RT": ""}
    assert itsm_events.read_secrets(["sn-prod", "rt", "helix"], env) == {"sn-prod": SECRET}


def test_a_short_secret_stops_the_relay_naming_its_variable_but_not_its_value():
    with pytest.raises(SettingsError, match="RELAY_ITSM_EVENTS_SECRET_RT holds 6 characters") as info:
        itsm_events.read_secrets(["rt"], {"RELAY_ITSM_EVENTS_SECRET_RT": "s3cr3t"})
    assert "s3cr3t" not in str(info.value)


def test_two_targets_that_would_share_a_variable_are_refused():
    with pytest.raises(SettingsError, match="'sn-prod' and 'sn_prod' would share RELAY_ITSM_EVENTS_SECRET_SN_PROD"):
        itsm_events.read_secrets(["sn-prod", "sn_prod"], {})


def test_the_secrets_never_show_in_a_repr():
    assert SECRET.decode() not in repr(itsm_events.InboundSecrets({"sn": SECRET}))


# -- the body ------------------------------------------------------------------------------------------


def doc(**changes):
    base = json.loads(BODY)
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


def test_a_body_becomes_a_ticket_change_in_utc():
    change = parse_change(doc(changed_at="2026-03-01T11:59:30.1234567+02:00"), NOW)
    assert change == TicketChange(Ticket(id="46d44f0f2f0b1110a1c2b3c4d5e6f708"), KEY, "resolved",
                                  datetime(2026, 3, 1, 9, 59, 30, 123456, tzinfo=UTC), "jane.doe")


@pytest.mark.parametrize("changed_by", [None, ...])
def test_changed_by_is_optional(changed_by):
    assert parse_change(doc(changed_by=changed_by), NOW).changed_by is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([1, 2], "body"),
        ("text", "body"),
        (doc(ticket_id=...), "ticket_id"),
        (doc(ticket_id=""), "ticket_id"),
        (doc(ticket_id=42), "ticket_id"),
        (doc(ticket_id="x" * 257), "ticket_id"),
        (doc(correlation_key=...), "correlation_key"),
        (doc(correlation_key="has space"), "correlation_key"),
        (doc(correlation_key="k" * 65), "correlation_key"),
        (doc(state=...), "state"),
        (doc(state="Resolved"), "state"),
        (doc(state="canceled"), "state"),
        (doc(changed_at=...), "changed_at"),
        (doc(changed_at="2026-03-01T09:59:30"), "changed_at"),  # no zone
        (doc(changed_at="2026-03-01 09:59:30 UTC"), "changed_at"),
        (doc(changed_at="2026-02-30T09:59:30Z"), "changed_at"),
        (doc(changed_at="2026-03-01T09:59:30+99:99"), "changed_at"),
        (doc(changed_at=1772359170), "changed_at"),
        (doc(changed_at="2026-03-01T10:05:01Z"), "changed_at"),  # 301 s ahead of now
        (doc(changed_by=7), "changed_by"),
        (doc(changed_by=""), "changed_by"),
        (doc(chnaged_by="jane"), "chnaged_by"),
    ],
)
def test_a_bad_field_is_refused_by_name(body, field):
    with pytest.raises(FieldRefused) as info:
        parse_change(body, NOW)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("2026-03-01T10:00:00Z", datetime(2026, 3, 1, 10, tzinfo=UTC)),
        ("2026-03-01t10:00:00z", datetime(2026, 3, 1, 10, tzinfo=UTC)),
        ("2026-03-01 10:00:00+00:00", datetime(2026, 3, 1, 10, tzinfo=UTC)),
        ("2026-03-01T05:00:00-05:00", datetime(2026, 3, 1, 10, tzinfo=UTC)),
        ("2026-03-01T10:00:00.5Z", datetime(2026, 3, 1, 10, 0, 0, 500000, tzinfo=UTC)),
        ("2026-03-01T10:00Z", None),
        ("2026-13-01T10:00:00Z", None),
        ("2026-03-01T10:00:00+0000", None),
        ("yesterday", None),
    ],
)
def test_rfc3339_times_with_their_offset_only(text, parsed):
    assert parse_rfc3339(text) == parsed


# -- the endpoint -------------------------------------------------------------------------------------


class RecordingSink:
    def __init__(self, action: str = "closed-alert") -> None:
        self.applied: list[tuple[str, TicketChange]] = []
        self.action = action

    async def apply(self, target: str, change: TicketChange) -> str:
        self.applied.append((target, change))
        return self.action


class FailingSink:
    async def apply(self, target: str, change: TicketChange) -> str:
        raise RuntimeError("the store is down")


def relay_app(sink: object | None = None, env: dict[str, str] | None = None) -> web.Application:
    app = web.Application(middlewares=[never_500])  # as the public app
    env = {"RELAY_ITSM_EVENTS_SECRET_SN_PROD": SECRET.decode()} if env is None else env
    itsm_events.add_routes(app, ["sn-prod", "rt"], env, clock=lambda: float(NOW))
    app[METRICS_KEY] = IntakeMetrics()
    if sink is not None:
        app[TICKET_CHANGE_SINK_KEY] = sink  # type: ignore[misc]
    return app


async def post(client, body: bytes = BODY, header: str | None = "sign", target: str = "sn-prod", **headers):
    if header == "sign":
        header = sign(SECRET, NOW, body)
    if header is not None:
        headers[SIGNATURE_HEADER] = header
    return await client.post(f"/itsm-events/{target}", data=body,
                             headers={"Content-Type": "application/json", **headers})


async def test_a_signed_change_goes_to_the_sink_and_answers_202_with_its_action(aiohttp_client):
    sink = RecordingSink("closed-alert")
    client = await aiohttp_client(relay_app(sink))
    resp = await post(client)
    assert resp.status == 202, await resp.text()
    assert await resp.json() == {"action": "closed-alert"}
    [(target, change)] = sink.applied
    assert (target, change.correlation_key, change.state, change.changed_by) == ("sn-prod", KEY, "resolved",
                                                                                  "jane.doe")
    assert change.changed_at == datetime(2026, 3, 1, 9, 59, 30, tzinfo=UTC)


async def test_a_base64_signature_as_servicenow_sends_it_is_taken(aiohttp_client):
    sink = RecordingSink()
    client = await aiohttp_client(relay_app(sink))
    resp = await post(client, header=sign(SECRET, NOW, BODY, encoding="base64"))
    assert resp.status == 202 and len(sink.applied) == 1


@pytest.mark.parametrize("target", ["rt", "helix", "nope"])
async def test_a_target_without_a_secret_or_unknown_answers_404(aiohttp_client, target):
    sink = RecordingSink()
    client = await aiohttp_client(relay_app(sink))
    resp = await post(client, target=target)
    assert resp.status == 404 and sink.applied == []
    assert await resp.json() == itsm_events._OFF, "one answer whatever the reason: nothing to learn from it"


async def test_without_a_sink_two_way_sync_is_off_and_answers_404(aiohttp_client):
    client = await aiohttp_client(relay_app(None))
    assert (await post(client)).status == 404


@pytest.mark.parametrize(
    ("header", "reason"),
    [(None, "no X-Relay-Signature header"), (f"t={NOW - 301},v1={'0' * 64}", "s old"),
     (f"t={NOW},v1={'0' * 64}", "does not match"), ("t=1,v1=x", "not an HMAC")],
)
async def test_a_bad_signature_answers_401_saying_why_and_applies_nothing(aiohttp_client, caplog, header, reason):
    sink = RecordingSink()
    client = await aiohttp_client(relay_app(sink))
    with caplog.at_level(logging.WARNING, logger="relay.intake.itsm_events"):
        resp = await post(client, header=header)
    assert resp.status == 401
    body = await resp.json()
    assert body["error"] == "bad signature" and reason in body["detail"]
    assert sink.applied == []
    assert SECRET.decode() not in caplog.text and SECRET.decode() not in json.dumps(body)
    mac = header.split("v1=")[1] if header else ""
    if len(mac) >= 32:
        assert mac not in caplog.text, "the signature is never logged"


async def test_a_body_signed_for_another_body_is_refused(aiohttp_client):
    sink = RecordingSink()
    client = await aiohttp_client(relay_app(sink))
    other = BODY.replace(b"resolved", b"closed")
    resp = await post(client, body=other, header=sign(SECRET, NOW, BODY))
    assert resp.status == 401 and sink.applied == []


async def test_a_body_over_16_kib_answers_413(aiohttp_client):
    sink = RecordingSink()
    client = await aiohttp_client(relay_app(sink))
    big = BODY[:-1] + b', "pad": "' + b"x" * MAX_BODY_BYTES + b'"}'
    resp = await post(client, body=big)
    assert resp.status == 413 and sink.applied == []
    assert str(MAX_BODY_BYTES) in (await resp.json())["detail"]


async def test_a_chunked_body_over_16_kib_answers_413(aiohttp_client):
    sink = RecordingSink()
    client = await aiohttp_client(relay_app(sink))

    async def chunks():
        for _ in range(20):
            yield b"x" * 1024

    resp = await client.post("/itsm-events/sn-prod", data=chunks(),
                             headers={SIGNATURE_HEADER: sign(SECRET, NOW, b"")})
    assert resp.status == 413 and sink.applied == []


async def test_a_signed_body_that_is_not_json_answers_400(aiohttp_client):
    client = await aiohttp_client(relay_app(RecordingSink()))
    resp = await post(client, body=b"{not json")
    assert resp.status == 400


async def test_a_signed_body_with_a_bad_field_answers_422_naming_it(aiohttp_client):
    sink = RecordingSink()
    client = await aiohttp_client(relay_app(sink))
    body = json.dumps(doc(state="Resolved")).encode()
    resp = await post(client, body=body)
    assert resp.status == 422
    assert (await resp.json())["field"] == "state"
    assert sink.applied == []


async def test_a_failing_sink_answers_503_so_the_sender_retries(aiohttp_client, caplog):
    client = await aiohttp_client(relay_app(FailingSink()))
    with caplog.at_level(logging.WARNING, logger="relay.intake.itsm_events"):
        resp = await post(client)
    assert resp.status == 503 and resp.headers.get("Retry-After") == "5"
    assert "the store is down" in caplog.text and "Traceback" not in caplog.text


async def test_requests_are_counted_by_target_and_outcome_with_off_ones_under_a_dash(aiohttp_client):
    app = relay_app(RecordingSink())
    client = await aiohttp_client(app)
    await post(client)
    await post(client, header=None)
    await post(client, target="someone-elses")
    await post(client, target="rt")
    await post(client, body=json.dumps(doc(state="x")).encode())
    counted = {(s.labels["target"], s.labels["outcome"]): s.value
               for m in app[METRICS_KEY].registry.collect() if m.name == "relay_itsm_events"
               for s in m.samples if s.name == "relay_itsm_events_total"}
    assert counted == {("sn-prod", "applied"): 1, ("sn-prod", "bad_signature"): 1, ("-", "off"): 2,
                       ("sn-prod", "invalid"): 1}


async def test_the_public_app_serves_the_endpoint_beside_alerts(aiohttp_client, issuer, tmp_path, monkeypatch):
    """The relay's own app at its defaults (the dry-run target), with a secret set and a sink registered."""
    monkeypatch.setenv("RELAY_ITSM_EVENTS_SECRET_DRY_RUN", SECRET.decode())
    settings = Settings.from_env({**issuer.relay_env(), "RELAY_STORE": f"sqlite:///{tmp_path / 'relay.db'}"})
    app = create_app(settings, deliver=True)
    assert set(app[itsm_events.INBOUND_SECRETS_KEY].secrets) == {"dry_run"}
    sink = RecordingSink("nothing: no ticket record")
    app[TICKET_CHANGE_SINK_KEY] = sink
    client = await aiohttp_client(app)
    resp = await post(client, target="dry_run", header=sign(SECRET, int(time.time()), BODY))
    assert resp.status == 202, await resp.text()
    assert await resp.json() == {"action": "nothing: no ticket record"}
    assert resp.headers["Server"] == "secure-export-relay"
    assert [t for t, _ in sink.applied] == ["dry_run"]


# -- the document says what the code does ----------------------------------------------------------------

def test_openapi_documents_every_status_and_the_states_the_endpoint_takes():
    import re

    import yaml

    root = Path(__file__).resolve().parent.parent
    spec = yaml.safe_load((root / "openapi.yaml").read_text())
    operation = spec["paths"][itsm_events.ROUTE]["post"]
    source = (root / "relay" / "intake" / "itsm_events.py").read_text()
    answered = {int(s) for s in re.findall(r"_json\(\s*(\d{3})", source)} | {503}  # 503: never_500
    assert answered <= {int(s) for s in operation["responses"]}, "every status the endpoint answers is documented"
    schema = spec["components"]["schemas"]["TicketChange"]
    assert tuple(schema["properties"]["state"]["enum"]) == TICKET_STATES
    assert set(schema["properties"]) == set(itsm_events.FIELDS)
    assert spec["components"]["securitySchemes"]["itsmSignature"]["name"] == SIGNATURE_HEADER


# -- the documented sender examples, run against the endpoint ---------------------------------------------

DOCS = Path(__file__).resolve().parent.parent / "docs" / "reconciliation.md"


def documented_block(language: str, after: str) -> str:
    """The first ```language block after the heading `after` in docs/reconciliation.md."""
    text = DOCS.read_text()
    rest = text[text.index(after):]
    start = rest.index(f"```{language}\n") + len(f"```{language}\n")
    return rest[start:rest.index("```", start)]


# RT's objects, as far as the scrip uses them: a ticket 42 carrying the key, a Status transaction by jane.doe.
RT_STUBS = r"""
package RT::Stub; sub new { my ($c, %a) = @_; bless {%a}, $c }
our $AUTOLOAD; sub AUTOLOAD { my $s = shift; (my $n = $AUTOLOAD) =~ s/.*:://; return if $n eq 'DESTROY';
  my $v = $s->{$n}; ref $v eq 'CODE' ? $v->(@_) : $v }
package RT; sub Config { RT::Stub->new(Get => sub { $ENV{SECRET} }) }
sub Logger { RT::Stub->new(warning => sub { print STDERR "@_\n" }) }
package main;
my $self = RT::Stub->new(
  TicketObj => RT::Stub->new(id => 42, FirstCustomFieldValue => sub { $ENV{KEY} }),
  TransactionObj => RT::Stub->new(NewValue => 'resolved',
    CreatedObj => RT::Stub->new(W3CDTF => sub { '2026-03-01T09:59:30Z' }),
    CreatorObj => RT::Stub->new(Name => "jane.doe")));
$ENV{URL} or die;
"""


async def test_the_documented_rt_scrip_posts_a_change_the_relay_takes(aiohttp_client):
    sink = RecordingSink()
    app = web.Application(middlewares=[never_500])
    itsm_events.add_routes(app, ["rt"], {"RELAY_ITSM_EVENTS_SECRET_RT": SECRET.decode()})  # the real clock
    app[TICKET_CHANGE_SINK_KEY] = sink
    client = await aiohttp_client(app)
    url = f"http://127.0.0.1:{client.server.port}/itsm-events/rt"
    scrip = documented_block("perl", "### Request Tracker: a scrip")
    scrip = scrip.replace("'https://relay.example.com/itsm-events/rt'", "$ENV{URL}")
    assert "$ENV{URL}" in scrip, "the scrip's URL line changed: update this test"
    try:
        process = await asyncio.create_subprocess_exec(
            "perl", "-e", RT_STUBS + "sub run {" + scrip + "}\nrun();",
            env={"URL": url, "SECRET": SECRET.decode(), "KEY": KEY, "PATH": os.environ["PATH"]},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except FileNotFoundError:
        pytest.skip("perl is not installed")
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    assert "answered" not in err.decode(), err.decode()
    [(target, change)] = sink.applied
    assert (target, change.ticket.id, change.correlation_key, change.state, change.changed_by) == (
        "rt", "42", KEY, "resolved", "jane.doe")
    assert change.changed_at == datetime(2026, 3, 1, 9, 59, 30, tzinfo=UTC)


# The Glide APIs the business rule calls, as ServiceNow documents them: generateMac(base64 key, algorithm,
# data) answers base64; RESTMessageV2 here prints the request it would send instead of sending it.
GLIDE_STUBS = r"""
const crypto = require('crypto');
const gs = {getProperty: () => process.env.SECRET, warn: (m) => console.error(m)};
const GlideStringUtil = {base64Encode: (s) => Buffer.from(s, 'utf8').toString('base64')};
function GlideDateTime() { this.getNumericValue = () => Date.now(); }
function GlideCertificateEncryption() {
  this.generateMac = (key, algorithm, data) => {
    if (algorithm !== 'HmacSHA256') throw new Error(algorithm);
    return crypto.createHmac('sha256', Buffer.from(key, 'base64')).update(data, 'utf8').digest('base64');
  };
}
const sn_ws = {RESTMessageV2: function () {
  const sent = {headers: {}};
  this.setEndpoint = (u) => { sent.url = u; }; this.setHttpMethod = (m) => { sent.method = m; };
  this.setHttpTimeout = () => {}; this.setRequestHeader = (k, v) => { sent.headers[k] = v; };
  this.setRequestBody = (b) => { sent.body = b; };
  this.execute = () => { console.log(JSON.stringify(sent)); return {getStatusCode: () => 202, getBody: () => ''}; };
}};
const values = {sys_id: '46d44f0f2f0b1110a1c2b3c4d5e6f708', correlation_id: process.env.KEY, state: '7',
                sys_updated_on: '2026-03-01 09:59:30', sys_updated_by: 'jos\u00e9.garc\u00eda', number: 'INC0010001'};
const current = {getUniqueValue: () => values.sys_id, getValue: (f) => values[f]};
"""


async def test_the_documented_servicenow_business_rule_sends_a_change_the_relay_takes(aiohttp_client):
    sink = RecordingSink()
    app = web.Application(middlewares=[never_500])
    itsm_events.add_routes(app, ["servicenow"], {"RELAY_ITSM_EVENTS_SECRET_SERVICENOW": SECRET.decode()})
    app[TICKET_CHANGE_SINK_KEY] = sink
    client = await aiohttp_client(app)
    rule = documented_block("javascript", "### ServiceNow: a business rule")
    try:
        process = await asyncio.create_subprocess_exec(
            "node", "-e", GLIDE_STUBS + rule.replace("(current, previous);", "(current, null);"),
            env={"SECRET": SECRET.decode(), "KEY": KEY, "PATH": os.environ["PATH"]},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except FileNotFoundError:
        pytest.skip("node is not installed")
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    sent = json.loads(out)
    assert sent["url"].endswith("/itsm-events/servicenow") and sent["method"] == "post"
    resp = await client.post("/itsm-events/servicenow", data=sent["body"].encode(), headers=sent["headers"])
    assert resp.status == 202, await resp.text()
    [(_, change)] = sink.applied
    assert (change.ticket.id, change.correlation_key, change.state, change.changed_by) == (
        "46d44f0f2f0b1110a1c2b3c4d5e6f708", KEY, "closed", "jos\u00e9.garc\u00eda")
    assert change.changed_at == datetime(2026, 3, 1, 9, 59, 30, tzinfo=UTC)
