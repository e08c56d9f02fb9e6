"""`relay-dev`: try a relay without Azure. `relay-dev issuer` plays Entra ID on loopback (prints the
environment that makes a relay trust it, and a token; serves more tokens at POST /token);
`relay-dev send-alert` posts an official Azure sample with a fresh alert id and a token from that issuer,
and prints the relay's answer. Installed with `pip install .[dev]`; never part of the relay's image.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from devtools.dev_issuer import TOKEN_PATH, DevIssuer

SAMPLES = Path(__file__).resolve().parent.parent / "tests" / "samples"
DEFAULT_SAMPLE = "testaction-metric-static-fired"
DEFAULT_ISSUER_PORT = 8765
DEFAULT_ISSUER = f"http://127.0.0.1:{DEFAULT_ISSUER_PORT}"


class UsageError(Exception):
    """A bad argument or an unreadable alert file: one line on stderr, exit 2."""


def sample_names() -> list[str]:
    """The bundled samples in the common alert schema (the ones a relay takes)."""
    if not SAMPLES.is_dir():
        return []
    return sorted(p.stem for p in SAMPLES.glob("*.json")
                  if json.loads(p.read_text()).get("schemaId") == "azureMonitorCommonAlertSchema")


def load_alert(sample: str | None, file: str | None) -> dict[str, Any]:
    if file is not None:
        try:
            doc = json.loads(Path(file).read_text(encoding="utf-8"))
        except OSError as exc:
            raise UsageError(f"cannot read {file}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise UsageError(f"{file} is not JSON: {exc}") from None
    else:
        name = (sample or DEFAULT_SAMPLE).removesuffix(".json")
        if name not in sample_names():
            known = ", ".join(sample_names()) or f"none: {SAMPLES} is missing (run from a source checkout, or --file)"
            raise UsageError(f"no common-schema sample named {name!r}; samples: {known}")
        doc = json.loads((SAMPLES / f"{name}.json").read_text())
    if not isinstance(doc, dict) or not isinstance(doc.get("data", {}).get("essentials"), dict):
        raise UsageError("the alert has no data.essentials: it is not a common alert schema payload")
    return doc


def prepare(doc: dict[str, Any], condition: str | None, alert_guid: str | None,
            now: datetime) -> tuple[dict[str, Any], str]:
    """The alert to send: its alertId ending in `alert_guid` (a fresh one when None) and, when `condition`
    is given, that monitorCondition (Resolved gets resolvedDateTime `now`; Fired loses it). firedDateTime
    stays, so a Resolved for the same GUID closes the episode a Fired opened. Returns (alert, GUID)."""
    doc = json.loads(json.dumps(doc))
    ess = doc["data"]["essentials"]
    guid = alert_guid or str(uuid.uuid4())
    alert_id = str(ess.get("alertId") or "/subscriptions/00000000-0000-0000-0000-000000000000/providers/"
                   "Microsoft.AlertsManagement/alerts/x")
    ess["alertId"] = alert_id.rstrip("/").rsplit("/", 1)[0] + "/" + guid
    if condition == "Resolved":
        ess["monitorCondition"] = "Resolved"
        ess["resolvedDateTime"] = now.strftime("%Y-%m-%dT%H:%M:%S.0000000Z")
    elif condition == "Fired":
        ess["monitorCondition"] = "Fired"
        ess.pop("resolvedDateTime", None)
    return doc, guid


def alerts_url(url: str) -> str:
    """The intake URL: a relay's base URL gets /alerts."""
    return url.rstrip("/") + "/alerts" if url.rstrip("/").count("/") <= 2 else url


async def fetch_token(issuer: str, version: str) -> str:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        try:
            async with http.post(f"{issuer.rstrip('/')}{TOKEN_PATH}", params={"version": version}) as resp:
                if resp.status != 200:
                    raise UsageError(f"the issuer at {issuer} answered {resp.status} for a token")
                return str((await resp.json())["access_token"])
        except aiohttp.ClientError as exc:
            raise UsageError(f"no dev issuer at {issuer} ({exc}): start one with `relay-dev issuer`") from None


async def send(url: str, body: bytes, token: str) -> tuple[int, str]:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        try:
            async with http.post(url, data=body, headers=headers) as resp:
                return resp.status, await resp.text()
        except aiohttp.ClientError as exc:
            raise UsageError(f"could not post to {url}: {exc}") from None


def send_alert(args: argparse.Namespace) -> int:
    doc, guid = prepare(load_alert(args.sample, args.file), args.condition, args.alert_id, datetime.now(UTC))
    url = alerts_url(args.url)
    token = args.token or asyncio.run(fetch_token(args.issuer, args.token_version))
    status, text = asyncio.run(send(url, json.dumps(doc).encode(), token))
    ess = doc["data"]["essentials"]
    print(f"POST {url}: {ess.get('monitorCondition')} {ess.get('alertRule') or ''} (alert {guid})")
    print(f"{status} {text}")
    if ess.get("monitorCondition") != "Resolved" and status in (200, 202):
        again = ["relay-dev", "send-alert", "--url", args.url, "--alert-id", guid, "--condition", "Resolved"]
        again += ["--file", args.file] if args.file else ["--sample", args.sample or DEFAULT_SAMPLE]
        print("resolve it with: " + shlex.join(again))
    return 0 if 200 <= status < 300 else 1


def issuer(args: argparse.Namespace) -> int:
    dev = DevIssuer()

    async def serve() -> None:
        await dev.start(args.host, args.port)
        print("# a development token issuer (a stand-in for Entra ID); point a relay at it with:")
        for name, value in dev.relay_env().items():
            print(f"export {name}={shlex.quote(value)}")
        print(f"# a token (v{args.token_version}, valid 1 h; more from POST {dev.base_url}{TOKEN_PATH}):")
        print(dev.mint(args.token_version))
        print(f"# then: relay serve, and relay-dev send-alert --url http://127.0.0.1:8080 --issuer {dev.base_url}")
        print("# Ctrl-C stops the issuer", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await dev.stop()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="relay-dev", description="try a relay locally: a dev token issuer and "
                                     "a test-alert sender (never for production)")
    sub = parser.add_subparsers(dest="command", required=True)
    iss = sub.add_parser("issuer", help="serve a local OpenID issuer, print the relay's environment and a token")
    iss.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1; a relay accepts "
                     "plain http only from a loopback issuer)")
    iss.add_argument("--port", type=int, default=DEFAULT_ISSUER_PORT, help=f"default {DEFAULT_ISSUER_PORT}")
    iss.add_argument("--token-version", choices=("1.0", "2.0"), default="2.0", help="the printed token's shape")
    snd = sub.add_parser("send-alert", help="post an official sample alert with a fresh id and a dev token")
    snd.add_argument("--url", required=True, help="the relay (http://127.0.0.1:8080) or its /alerts URL")
    which = snd.add_mutually_exclusive_group()
    which.add_argument("--sample", help=f"a sample from tests/samples without .json (default {DEFAULT_SAMPLE})")
    which.add_argument("--file", help="your own common-schema alert JSON")
    snd.add_argument("--condition", choices=("Fired", "Resolved"), help="set monitorCondition (default: the file's)")
    snd.add_argument("--alert-id", metavar="GUID", help="reuse an alert GUID (to resolve what you fired)")
    snd.add_argument("--issuer", default=DEFAULT_ISSUER,
                     help=f"the running `relay-dev issuer` (default {DEFAULT_ISSUER})")
    snd.add_argument("--token", help="a token to send instead of asking the issuer")
    snd.add_argument("--token-version", choices=("1.0", "2.0"), default="2.0")
    tok = sub.add_parser("token", help="print a fresh token from the running issuer (for curl: -H \"Authorization: "
                         "Bearer $(relay-dev token)\")")
    tok.add_argument("--issuer", default=DEFAULT_ISSUER, help=f"default {DEFAULT_ISSUER}")
    tok.add_argument("--token-version", choices=("1.0", "2.0"), default="2.0")
    sub.add_parser("samples", help="list the bundled common-schema samples")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "issuer":
            return issuer(args)
        if args.command == "send-alert":
            return send_alert(args)
        if args.command == "token":
            print(asyncio.run(fetch_token(args.issuer, args.token_version)))
            return 0
        print("\n".join(sample_names()))
        return 0
    except UsageError as exc:
        print(f"relay-dev: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
